"""Pipeline specs: validated on load with errors that name the file and field; one YAML = one pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SST2 = ROOT / "include" / "pipelines" / "sst2.yaml"


def write(tmp_path: Path, name: str, raw) -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def sst2_raw() -> dict:
    return yaml.safe_load(SST2.read_text())


def test_shipped_specs_validate():
    from tasks.spec import load_specs

    specs = dict((s.name, s) for _p, s in load_specs(ROOT / "include" / "pipelines"))
    assert sorted(specs) == ["emotion", "sst2"]
    assert len(specs["emotion"].data.labels) == 6 and specs["emotion"].data.csv_delimiter == ";"
    spec = specs["sst2"]
    assert spec.data.labels == ["negative", "positive"]
    assert spec.landing.uri == spec.storage.uri + "/landing/sst2"
    assert spec.layout.champion == spec.storage.uri + "/models/sst2/champion.json"


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["gates"].update(min_acuracy=0.9), "gates.min_acuracy: unknown field"),
    (lambda r: r["gates"].update(min_accuracy=1.5), "gates.min_accuracy: Input should be less than or equal to 1"),
    (lambda r: r["train"].update(epochs="many"), "train.epochs: Input should be a valid number"),
    (lambda r: r.pop("data"), "data: required field is missing"),
    (lambda r: r["data"].update(labels=["only"]), "data.labels: List should have at least 2 items"),
    (lambda r: r["data"].update(label_aliases={"0": "neutral"}), "label_aliases map to names not in labels"),
    (lambda r: r.update(name="SST 2"), "name: String should match pattern"),
    (lambda r: r["storage"].update(uri="ftp://x"), "storage.uri: Value error, must start with s3:// or file://"),
    (lambda r: r["stages"].update(mode="cloud"), "stages.mode: Input should be 'local' or 'kubernetes'"),
    (lambda r: r["stages"]["finetune"].update(gpus=-1), "stages.finetune.gpus"),
    (lambda r: r["data"].update(labels=["negative", "negative"]), "labels must be unique; repeated: ['negative']"),
    (lambda r: r["data"].update(labels=[True, False]), "data.labels: YAML read True as a boolean"),
    (lambda r: r["data"].update(csv_delimiter='"'), "data.csv_delimiter: a quote or a line break"),
    (lambda r: r["data"].update(text_column="label"), "text_column and label_column name the same column"),
    (lambda r: r["golden"].update(source_uri="{storage}/golden.txt"), "has no supported extension"),
    (lambda r: (r["data"].update(format="csv"), r.update(landing={"formats": ["tsv"]})), "data.format csv is not in"),
])
def test_bad_spec_gives_clear_error_naming_file_and_field(tmp_path, mutate, expected):
    from tasks.spec import SpecError, load_spec

    raw = sst2_raw()
    mutate(raw)
    path = write(tmp_path, "bad.yaml", raw)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_invalid_yaml_and_missing_env(tmp_path, monkeypatch):
    from tasks.spec import SpecError, load_spec

    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write(tmp_path, "broken.yaml", "name: [unclosed\n"))
    with pytest.raises(SpecError, match="top level must be a mapping"):
        load_spec(write(tmp_path, "list.yaml", "- a\n- b\n"))
    raw = sst2_raw()
    raw["storage"]["uri"] = "${RETRAIN_TEST_UNSET_VAR}"
    monkeypatch.delenv("RETRAIN_TEST_UNSET_VAR", raising=False)
    with pytest.raises(SpecError, match="RETRAIN_TEST_UNSET_VAR is not set"):
        load_spec(write(tmp_path, "env.yaml", raw))


def test_env_and_placeholders(tmp_path, monkeypatch):
    from tasks.spec import load_spec

    monkeypatch.setenv("RETRAIN_STORAGE_URI", "file:///srv/retrain")
    spec = load_spec(SST2)
    assert spec.storage.uri == "file:///srv/retrain"
    assert spec.golden.source_uri == "file:///srv/retrain/reference/sst2/golden.tsv"


def test_overrides_are_validated():
    from tasks.spec import SpecError, load_spec, with_overrides

    spec = load_spec(SST2)
    assert with_overrides(spec, {"gates.min_accuracy": 0.9, "gates.min_retention": None}).gates.min_accuracy == 0.9
    with pytest.raises(SpecError, match="gates.min_accuracy"):
        with_overrides(spec, {"gates.min_accuracy": 7})
    with pytest.raises(SpecError, match="no such field"):
        with_overrides(spec, {"gates.nope": 1})


@pytest.mark.slow  # parses the DAG folder twice under Airflow: ~15 s
def test_second_yaml_gives_second_pipeline(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    shutil.copy(SST2, tmp_path / "sst2.yaml")
    raw = sst2_raw()
    raw.update(name="emotion", description="dair-ai emotion")
    raw["data"].update(text_column="text", label_column="label_name",
                       labels=["sadness", "joy", "love", "anger", "fear", "surprise"], label_aliases={})
    write(tmp_path, "emotion.yaml", raw)
    monkeypatch.setenv("RETRAIN_PIPELINES_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert {"ingest_sst2", "retrain_sst2", "ingest_emotion", "retrain_emotion"} <= set(bag.dag_ids)


def test_a_bad_spec_in_its_own_dag_file_is_that_files_import_error(tmp_path, monkeypatch):
    """sst2 has dags/pipeline_sst2.py: its broken spec is that file's import error (what the UI lists), naming
    the file and field; the other pipelines, in their own files or the shared one, keep their DAGs."""
    from airflow.dag_processing.dagbag import DagBag

    raw = sst2_raw()
    raw["decide"]["min_new_rows"] = -5
    write(tmp_path, "sst2.yaml", raw)
    shutil.copy(ROOT / "include" / "pipelines" / "emotion.yaml", tmp_path / "emotion.yaml")
    other = sst2_raw()
    other.update(name="reviews")
    other["landing"]["uri"] = "file:///tmp/reviews-landing/"
    write(tmp_path, "reviews.yaml", other)  # no file of its own: dags/retrain_pipelines.py declares it
    monkeypatch.setenv("RETRAIN_PIPELINES_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert list(bag.import_errors) == [str(ROOT / "dags" / "pipeline_sst2.py")]
    error = bag.import_errors[str(ROOT / "dags" / "pipeline_sst2.py")]
    assert "decide.min_new_rows" in error and "sst2.yaml" in error
    assert {"ingest_emotion", "retrain_emotion", "ingest_reviews", "retrain_reviews"} <= set(bag.dag_ids)
    assert "retrain_sst2" not in bag.dag_ids and "ingest_sst2" not in bag.dag_ids
    assert not [d for d in bag.dag_ids if d.startswith("spec_error_")]


def test_a_bad_spec_without_a_dag_file_gets_a_stand_in(tmp_path, monkeypatch):
    """A spec declared by the shared dags/retrain_pipelines.py: an import error there would hide every pipeline
    it declares, so the broken one alone is replaced by a never-scheduled DAG that carries the error. A spec that
    collides with a pipeline in its own file (same name) refuses both."""
    from airflow.dag_processing.dagbag import DagBag

    shutil.copy(SST2, tmp_path / "sst2.yaml")
    shutil.copy(ROOT / "include" / "pipelines" / "emotion.yaml", tmp_path / "emotion.yaml")
    broken = sst2_raw()
    broken.update(name="reviews")
    broken["landing"]["uri"] = "file:///tmp/reviews-landing/"
    broken["decide"]["min_new_rows"] = -5
    write(tmp_path, "reviews.yaml", broken)
    monkeypatch.setenv("RETRAIN_PIPELINES_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert {"ingest_emotion", "retrain_emotion", "ingest_sst2", "retrain_sst2"} <= set(bag.dag_ids)
    assert "retrain_reviews" not in bag.dag_ids
    stand_in = bag.dags["spec_error_reviews"]
    assert "decide.min_new_rows" in stand_in.doc_md and "reviews.yaml" in stand_in.doc_md
    assert type(stand_in.timetable).__name__ == "NullTimetable"  # never scheduled

    twin = sst2_raw()  # the name sst2 again, another landing zone: which one was meant is unknown
    twin["landing"]["uri"] = "file:///tmp/twin-landing/"
    write(tmp_path, "sst2_copy.yaml", twin)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert "used by both" in bag.import_errors[str(ROOT / "dags" / "pipeline_sst2.py")]
    assert "used by both" in bag.dags["spec_error_sst2_copy"].doc_md
    assert "retrain_sst2" not in bag.dag_ids and "retrain_emotion" in bag.dag_ids


def test_validate_spec_cli(tmp_path, capsys):
    from tasks.validate_spec import main

    assert main([str(SST2)]) == 0
    raw = sst2_raw()
    raw["gates"]["bootstrap_resamples"] = 10
    assert main([str(write(tmp_path, "few.yaml", raw))]) == 1
    assert "gates.bootstrap_resamples" in capsys.readouterr().err


def test_numbers_as_label_names_and_alias_keys_are_their_digits():
    from tasks.spec import parse_spec

    raw = sst2_raw()
    raw["storage"]["uri"] = "file:///tmp/x"
    raw["data"].update(labels=[0, 1], label_aliases={0: 0, 1: 1})
    data = parse_spec(raw).data
    assert data.labels == ["0", "1"] and data.label_aliases == {"0": "0", "1": "1"}


def test_validate_spec_warns_of_a_missing_golden_seed(tmp_path, capsys):
    from tasks.validate_spec import main

    raw = sst2_raw()
    raw["golden"]["seed_uri"] = str(tmp_path / "nowhere.tsv")
    assert main([str(write(tmp_path, "seedless.yaml", raw))]) == 0  # production does not need the seed
    assert f"golden.seed_uri {tmp_path / 'nowhere.tsv'} does not exist" in capsys.readouterr().err


def test_validate_spec_checks_the_folder_as_a_whole(tmp_path, capsys):
    from tasks.validate_spec import main

    raw = sst2_raw()
    write(tmp_path, "a.yaml", raw)
    write(tmp_path, "b.yaml", raw)  # same name, same landing zone
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "pipeline name 'sst2' is used by both" in err and "landing zones overlap" in err

    other = sst2_raw()
    other["name"] = "sst2_nested"
    other["landing"] = {"uri": "{storage}/landing/sst2/nested"}  # inside sst2's landing zone
    write(tmp_path, "b.yaml", other)
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "landing zones overlap" in err and "used by both" not in err

    other["landing"] = {"uri": "{storage}/landing/sst2_nested"}  # a sibling prefix, not inside: fine
    write(tmp_path, "b.yaml", other)
    assert main([str(tmp_path)]) == 0


def test_load_folder_isolates_a_broken_or_colliding_file(tmp_path):
    from tasks.spec import load_folder

    write(tmp_path, "good.yaml", sst2_raw())
    broken = sst2_raw()
    broken["name"] = "broken"
    broken["landing"] = {"uri": "{storage}/landing/broken"}
    broken["gates"]["min_accuracy"] = 3
    write(tmp_path, "broken.yaml", broken)
    good, errors = load_folder(tmp_path)
    assert [spec.name for _path, spec in good] == ["sst2"]
    assert list(errors) == [tmp_path / "broken.yaml"] and "gates.min_accuracy" in errors[tmp_path / "broken.yaml"]

    twin = sst2_raw()
    twin["landing"] = {"uri": "{storage}/landing/twin"}
    write(tmp_path, "twin.yaml", twin)  # the name sst2 again: both files are refused, nothing else is
    good, errors = load_folder(tmp_path)
    assert good == [] and set(errors) == {tmp_path / "broken.yaml", tmp_path / "good.yaml", tmp_path / "twin.yaml"}
