"""``make run`` / ``make ingest`` for a pipeline other than the demo's: the shipped emotion spec (6 imbalanced
classes, ';'-separated .txt files), run small through scripts/local_run.py exactly as the Makefile runs it: its
real DAGs under Airflow's dag.test(), real stage subprocesses, a tiny random-init BERT, a fresh storage root that
gets its golden set from the spec's golden.seed_uri, and then a second call on the same storage ("the next
night") that sees the first one's snapshot and champion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import DATA, ROOT
from data_helpers import local_run
from lineage_helpers import lineage_graph, openlineage_file_env, path_between, read_events
from tasks.contracts import Outcome

EMOTION = ROOT / "include" / "pipelines" / "emotion.yaml"


def emotion_rows(split: str, limit: int, offset: int = 0) -> list[str]:
    lines = (DATA / "emotion" / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    return lines[1 + offset: 1 + offset + limit]


def small_emotion_spec(tmp: Path, model_dir: Path) -> Path:
    """The shipped spec, with a tiny model, a short training and floors a random-init model can clear."""
    raw = yaml.safe_load(EMOTION.read_text())
    golden_seed = tmp / "golden-seed.txt"
    golden_seed.write_text("text;label_name\n" + "\n".join(emotion_rows("test", 150)) + "\n", encoding="utf-8")
    raw["golden"]["seed_uri"] = str(golden_seed)
    raw["model"] = {"base": str(model_dir), "max_length": 32}
    raw["train"].update(epochs=1, batch_size=16, eval_steps=10, checkpoint_steps=10, learning_rate=1e-3)
    raw["student"].update(layers=2, epochs=1, batch_size=16)
    raw["drift"] = {"embedding_subsample": 40, "embedding_permutations": 50}
    raw["gates"].update(min_accuracy=0.0, min_macro_f1=0.0, min_retention=0.0, max_class_recall_drop=1.0,
                        min_accuracy_over_baseline=None, min_macro_f1_over_baseline=None,
                        non_inferiority_margin=1.0)
    raw["alerts"] = {"email": [], "slack_conn_id": None}
    path = tmp / "emotion.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path



# One fixture per call, each built on the one before: every call happens once, and pytest charges each to the
# first test that needs it.
@pytest.fixture(scope="module")
def first_ingest(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("emotion-run")
    spec = small_emotion_spec(tmp, tiny_model_dir)
    landing = tmp / "landing"
    landing.mkdir()
    (landing / "batch-1.txt").write_text("text;label_name\n" + "\n".join(emotion_rows("train", 300)) + "\n",
                                         encoding="utf-8")
    storage = tmp / "storage"
    # Both calls report to OpenLineage's file transport (docs/lineage.md): test_lineage_* read the events.
    lineage = {"events": tmp / "openlineage.jsonl"}
    lineage["env"] = openlineage_file_env(lineage["events"])
    code, result, log = local_run("ingest", spec, landing, storage, env=lineage["env"])
    return {"spec": spec, "landing": landing, "storage": storage, "code": code, "result": result, "log": log,
            "lineage": lineage}


@pytest.fixture(scope="module")
def first_night(first_ingest):
    code, summary, log = local_run("run", first_ingest["spec"], first_ingest["landing"], first_ingest["storage"],
                                   env=first_ingest["lineage"]["env"])
    return {**first_ingest, "code": code, "summary": summary, "log": log}


def test_make_ingest_snapshots_a_fresh_storage(first_ingest):
    result, storage = first_ingest["result"], first_ingest["storage"]
    assert first_ingest["code"] == 0, first_ingest["log"][-4000:]
    assert result["changed"] is True and result["files_ingested"] == ["batch-1.txt"]
    assert result["rows_read"] == 300
    assert result["new_rows"] + result["quarantined_rows"] + result["duplicates_removed"] \
        + result["contaminated_removed"] == 300
    assert sorted(result["label_counts"]) == sorted(yaml.safe_load(EMOTION.read_text())["data"]["labels"])
    # The golden set came from the spec's seed, frozen in the fresh storage root.
    assert (storage / "reference" / "emotion" / "golden.txt").read_text().startswith("text;label_name\n")
    assert list((storage / "golden" / "emotion").glob("*/manifest.json"))


def test_make_run_promotes_a_first_emotion_champion(first_night):
    summary, storage = first_night["summary"], first_night["storage"]
    assert first_night["code"] == 0, first_night["log"][-4000:]
    assert summary["pipeline"] == "emotion" and summary["outcome"] == Outcome.PROMOTED
    assert summary["ingest"]["snapshot_id"] == first_night["result"]["snapshot_id"]  # the same data, once
    champion = json.loads((storage / "models" / "emotion" / "champion.json").read_text())
    assert champion["version"] == summary["publish"]["version"]


def test_the_next_call_on_the_same_storage_is_the_next_night(first_night):
    assert first_night["code"] == 0, "the first night failed; see the other test"
    events = first_night["lineage"]["events"]
    emitted = events.stat().st_size
    code, result, log = local_run("ingest", first_night["spec"], first_night["landing"], first_night["storage"])
    assert code == 0, log[-4000:]
    # This call has no OpenLineage setting: nothing emitted, nothing said about it (docs/lineage.md).
    assert events.stat().st_size == emitted and "openlineage" not in log.lower(), log[-4000:]
    # Nothing new landed: the ingest DAG sees the first night's batch record and keeps its snapshot.
    assert result["changed"] is False
    assert result["snapshot_id"] == first_night["summary"]["ingest"]["snapshot_id"]


def test_hostile_landing_files_through_make_ingest(tmp_path, tiny_model_dir):
    """What the landing-zone guarantees look like from `make ingest`: a symlink out of the folder is not followed,
    odd file names are ingested, an empty file is reported as empty, and the counts add up."""
    import os

    import pandas as pd

    spec = small_emotion_spec(tmp_path, tiny_model_dir)
    landing, outside = tmp_path / "landing", tmp_path / "outside"
    landing.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("text;label_name\nthe secret row from outside the landing zone;joy\n")
    os.symlink(outside / "secret.txt", landing / "link.txt")
    rows = emotion_rows("train", 40, offset=1000)
    (landing / "plain.txt").write_text("text;label_name\n" + "\n".join(rows[:30]) + "\n")
    with open(os.path.join(os.fsencode(landing), b"caf\xe9-latin1.txt"), "w") as fh:  # a name that is not UTF-8
        fh.write("text;label_name\n" + "\n".join(rows[30:35]) + "\nno such label here;not-a-label\n")
    (landing / "new\nline.txt").write_text("text;label_name\n" + "\n".join(rows[35:40]) + "\n")
    (landing / "empty.txt").write_bytes(b"")

    code, result, log = local_run("ingest", spec, landing, tmp_path / "storage")
    assert code == 0, log[-4000:]
    assert result["files_count"] == 5 and result["empty_files"] == 1
    assert result["files_count"] == result["files_read"] + result["quarantined_files"] + result["empty_files"]
    assert result["rows_read"] == result["new_rows"] + result["quarantined_rows"] + result["duplicates_removed"] \
        + result["contaminated_removed"]
    assert result["quarantined_rows"] == 1 and result["quarantine_reasons"].get("unknown_label") == 1
    snapshot = pd.concat(pd.read_parquet(p) for p in (tmp_path / "storage" / "snapshots" / "emotion").rglob("*.parquet"))
    assert len(snapshot) == result["total_rows"] == 40 - result["duplicates_removed"] - result["contaminated_removed"]
    # Nothing from outside the landing folder, anywhere in storage.
    for path in (tmp_path / "storage").rglob("*"):
        if path.is_file():
            assert b"secret row from outside" not in path.read_bytes(), path


# ---------------------------------------------------------------- OpenLineage (docs/lineage.md)


def file_dataset(path: Path) -> str:
    """A local file's dataset as lineage_helpers.dataset_key spells it: namespace "file", name the absolute path."""
    return f"file:{path.resolve()}"


def test_lineage_events_lead_from_a_landed_file_to_the_champion(first_night):
    """`make ingest` then `make run` with the file transport: the events' inputs and outputs form one graph in which
    a directed path leads from the landed file through the snapshot, the teacher and the student to the version and
    the champion pointer."""
    assert first_night["code"] == 0, first_night["log"][-4000:]
    events = read_events(first_night["lineage"]["events"])
    graph = lineage_graph(events)
    storage, summary = first_night["storage"], first_night["summary"]
    models = storage / "models" / "emotion"
    version = json.loads((models / "champion.json").read_text())["version"]
    landed = file_dataset(first_night["landing"] / "batch-1.txt")
    run = summary["run_uri"][len("file://"):]
    chain = [(landed, "ingest_emotion.ingest"),  # make ingest: the landed file into the snapshot
             ("file:" + summary["ingest"]["snapshot_uri"][len("file://"):], "retrain_emotion.finetune"),
             (f"file:{run}/finetune/model", "retrain_emotion.distill"),  # the teacher
             (f"file:{run}/distill/model", "retrain_emotion.publish"),  # the student
             (file_dataset(models / version), None)]
    for (source, job), (target, _) in zip(chain, chain[1:]):
        step = path_between(graph, source, target)
        assert step == [source, f"job:retrain-test/{job}", target], (
            f"{job} does not lead from {source} to {target} (path: {step}); edges: {json.dumps(sorted(graph))}")
    # One connected graph: the landed file leads to the champion version and the pointer that names it.
    path = path_between(graph, landed, file_dataset(models / version))
    assert path and path[0] == landed, path
    pointer = file_dataset(models / "champion.json")
    assert pointer in graph["job:retrain-test/retrain_emotion.publish"], graph["job:retrain-test/retrain_emotion.publish"]
    # Each task reports its own datasets: gate read the evaluation and wrote nothing; the ingest DAG's
    # announce_snapshot has its outlet, the snapshots Asset (not what a task before it reported).
    completed = {e["job"]["name"]: e for e in events if e.get("eventType") == "COMPLETE"}
    gate = completed["retrain_emotion.gate"]
    assert [d["name"] for d in gate["inputs"]] == [f"{run}/evaluate/result.json"] and gate["outputs"] == [], gate
    announce = completed["ingest_emotion.announce_snapshot"]
    assert announce["inputs"] == [] and [d["name"] for d in announce["outputs"]] == [
        str((storage / "snapshots" / "emotion").resolve())], announce
    # Every task of the retrain run that reads or writes storage reported what it did.
    reported = {e["job"]["name"].split(".", 1)[1] for e in events if e.get("eventType") == "COMPLETE"
                and e["job"]["name"].startswith("retrain_emotion.") and (e.get("inputs") or e.get("outputs"))}
    assert {"prepare_run", "ingest", "drift", "decide", "finetune", "distill", "evaluate", "gate", "publish",
            "notify"} <= reported, reported
