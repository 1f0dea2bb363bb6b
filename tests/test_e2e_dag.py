"""The whole retrain DAG under real Airflow (dag.test() on SQLite), real S3 over HTTP (moto on 127.0.0.1),
real stage subprocesses, a tiny random-init BERT with the packaged tokenizer, and a few hundred SST-2 rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, read_sst2

pytestmark = pytest.mark.usefixtures("airflow_db")


def tiny_spec(storage_uri: str, model_dir: Path) -> dict:
    raw = yaml.safe_load((ROOT / "include" / "pipelines" / "sst2.yaml").read_text())
    raw.update(name="tiny")
    raw["storage"]["uri"] = storage_uri
    raw["golden"]["source_uri"] = storage_uri + "/reference/tiny/golden.tsv"
    raw["model"] = {"base": str(model_dir), "max_length": 64}
    raw["train"].update(epochs=1, batch_size=16, eval_steps=10, checkpoint_steps=10, max_train_rows=400,
                        learning_rate=1e-3)
    raw["student"].update(layers=2, epochs=1, batch_size=16, export=[])
    raw["drift"].update(embedding_subsample=40, embedding_permutations=50)
    raw["decide"].update(min_new_rows=50, retrain_every_rows=200)
    # A random-init model only has to clear floors of zero on its first run.
    raw["gates"].update(min_accuracy=0.0, min_macro_f1=0.0, min_retention=0.0, max_class_recall_drop=1.0,
                        non_inferiority_margin=1.0)
    raw["alerts"].update(email=[], slack_conn_id=None)
    return raw


@pytest.fixture
def pipeline(tmp_path, s3_env, tiny_model_dir, monkeypatch):
    from tasks import storage

    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "tiny.yaml").write_text(yaml.safe_dump(tiny_spec(s3_env, tiny_model_dir)))
    monkeypatch.setenv("RETRAIN_PIPELINES_DIR", str(pipelines))
    monkeypatch.setenv("RETRAIN_STAGE_MODE", "local")
    golden = "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in read_sst2("dev", limit=120))
    storage.write_text(s3_env + "/reference/tiny/golden.tsv", golden)
    return s3_env


def land(storage_uri: str, name: str, offset: int, count: int) -> None:
    from tasks import storage

    rows = read_sst2("train", limit=count, offset=offset)
    storage.write_text(f"{storage_uri}/landing/tiny/{name}",
                       "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))


def run_dag(dag_id: str, **conf):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    dag_run = bag.dags[dag_id].test(run_conf=conf or None)
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}
    return str(getattr(dag_run.state, "value", dag_run.state)), states


def test_retrain_dag_end_to_end_on_s3(pipeline):
    from tasks import storage

    land(pipeline, "batch-1.tsv", 0, 300)
    state, tasks = run_dag("retrain_tiny")
    assert state == "success", tasks
    assert tasks["finetune"] == tasks["distill"] == tasks["publish"] == "success"
    assert tasks["fail_if_any_failed"] == "skipped"

    champion = storage.read_json(pipeline + "/models/tiny/champion.json")
    version_uri = champion["version_uri"]
    assert version_uri == f"{pipeline}/models/tiny/{champion['version']}"
    manifest = storage.read_json(version_uri + "/manifest.json")
    assert manifest["snapshot_id"] == champion["snapshot_id"]
    assert manifest.get("parent_champion") in (None, "none")
    # Every file of the version is in the manifest with its sha256, and the bytes in S3 match.
    files = manifest["files"]
    assert any(path.startswith("teacher/") and path.endswith("model.safetensors") for path in files)
    assert any(path.startswith("student/") and path.endswith("model.safetensors") for path in files)
    assert any(path.endswith("tokenizer.json") for path in files)
    for rel, digest in files.items():
        expected = digest["sha256"] if isinstance(digest, dict) else digest
        assert hashlib.sha256(storage.read_bytes(f"{version_uri}/{rel}")).hexdigest() == expected, rel

    # Unchanged data: the nightly-style run decides to skip, and no training stage ever starts.
    state, tasks = run_dag("retrain_tiny")
    assert state == "success", tasks
    assert tasks["decide"] == "success"
    assert tasks["finetune"] == tasks["distill"] == tasks["evaluate"] == tasks["publish"] == "skipped"
    assert storage.read_json(pipeline + "/models/tiny/champion.json")["version"] == champion["version"]
    summaries = [storage.read_json(o.uri) for o in storage.list_objects(pipeline + "/runs/tiny")
                 if o.uri.endswith("/summary.json")]
    skipped = [s for s in summaries if s["outcome"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["decision"]["reasons"], summaries


def test_dry_run_trains_but_never_promotes(pipeline):
    from tasks import storage

    land(pipeline, "batch-1.tsv", 0, 300)
    state, tasks = run_dag("retrain_tiny", dry_run=True, force_retrain=True)
    assert state == "success", tasks
    assert tasks["publish"] == "success"
    assert not storage.exists(pipeline + "/models/tiny/champion.json")
    (summary,) = [storage.read_json(o.uri) for o in storage.list_objects(pipeline + "/runs/tiny")
                  if o.uri.endswith("/summary.json")]
    assert summary["dry_run"] is True and summary["publish"]["promoted"] is False
    print(json.dumps(summary, indent=1))
