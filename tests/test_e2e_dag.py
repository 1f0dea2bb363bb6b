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
    raw["decide"].update(min_new_rows=50, retrain_every_rows=1000)
    # A random-init model only has to clear floors of zero on its first run.
    raw["gates"].update(min_accuracy=0.0, min_macro_f1=0.0, min_retention=0.0, max_class_recall_drop=1.0,
                        min_accuracy_over_baseline=None, min_macro_f1_over_baseline=None,
                        non_inferiority_margin=1.0)
    # Airflow 3.3.2's dag.test() breaks on a DAG with a DeadlineAlert once it has run before (it hands the
    # alert's definition to DeadlineAlertModel.get_by_id); the live-Airflow test covers the deadline instead.
    raw["schedule"]["nightly_deadline_minutes"] = 0
    raw["alerts"].update(email=["oncall@example.com"], smtp_conn_id="smtp_test", slack_conn_id="slack_test",
                         from_email="retrain@example.com")
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


def land(storage_uri: str, name: str, offset: int, count: int, positive_share: float | None = None) -> None:
    """Land SST-2 train rows; with positive_share, pick rows so the label mix is skewed (e.g. 90/10)."""
    from tasks import storage

    rows = read_sst2("train", limit=count * 4 if positive_share else count, offset=offset)
    if positive_share is not None:
        positives = [r for r in rows if r[1] == 1][: round(count * positive_share)]
        negatives = [r for r in rows if r[1] == 0][: count - len(positives)]
        rows = positives + negatives
    storage.write_text(f"{storage_uri}/landing/tiny/{name}",
                       "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))


def run_dag(dag_id: str, **conf):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    dag_run = bag.dags[dag_id].test(run_conf=conf or None)
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}
    return str(getattr(dag_run.state, "value", dag_run.state)), states


def summaries(storage_uri: str) -> list[dict]:
    from tasks import storage

    found = [(o.mtime, o.uri) for o in storage.list_objects(storage_uri + "/runs/tiny") if o.uri.endswith("/summary.json")]
    return [storage.read_json(uri) for _mtime, uri in sorted(found)]


def test_retrain_story_end_to_end_on_s3(pipeline, receivers):
    """First champion → unchanged data skips → a 90/10 label-skewed batch drifts and retrains (dry run) →
    a failed gate fails the run, keeps the champion and alerts over SMTP and the Slack webhook."""
    from tasks import storage

    smtp, hook = receivers
    champion_uri = pipeline + "/models/tiny/champion.json"

    # 1. The first batch makes the first champion.
    land(pipeline, "batch-1.tsv", 0, 300)
    state, tasks = run_dag("retrain_tiny")
    assert state == "success", tasks
    assert tasks["finetune"] == tasks["distill"] == tasks["publish"] == "success"
    assert tasks["fail_if_any_failed"] == "skipped"
    champion = storage.read_json(champion_uri)
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

    # 2. Unchanged data: the run decides to skip, and no training stage ever starts.
    state, tasks = run_dag("retrain_tiny")
    assert state == "success", tasks
    assert tasks["decide"] == "success"
    assert tasks["finetune"] == tasks["distill"] == tasks["evaluate"] == tasks["publish"] == "skipped"
    assert storage.read_json(champion_uri)["version"] == champion["version"]
    skipped = summaries(pipeline)[-1]
    assert skipped["outcome"] == "skipped" and "no new snapshot" in skipped["decision"]["reasons"][0]

    # 3. A batch skewed to 90/10: too few rows for a routine retrain, but the label drift triggers one.
    land(pipeline, "batch-2.tsv", 300, 150, positive_share=0.9)
    state, tasks = run_dag("retrain_tiny", dry_run=True)
    assert state == "success", tasks
    drifted = summaries(pipeline)[-1]
    assert drifted["drift"]["drift_detected"] is True, drifted
    assert drifted["decision"]["retrain"] is True
    assert any("Drift detected" in reason for reason in drifted["decision"]["reasons"]), drifted
    assert tasks["publish"] == "success" and drifted["publish"]["promoted"] is False  # dry run
    # The retrain warm-started from the champion's teacher (train.init_from: champion in the shipped spec).
    finetune = storage.read_json(drifted["run_uri"] + "/finetune/result.json")
    assert finetune["init_from"] == f"champion {champion['version']}"
    assert storage.read_json(champion_uri)["version"] == champion["version"]

    # 4. A floor no model can reach (set from the trigger form): the gate fails, the run fails, on-call hears.
    state, tasks = run_dag("retrain_tiny", force_retrain=True, min_accuracy=0.99)
    assert state == "failed", tasks
    assert tasks["gate"] == "failed" and tasks["publish"] == "upstream_failed"
    assert tasks["notify"] == "success" and tasks["fail_if_any_failed"] == "failed"
    assert storage.read_json(champion_uri)["version"] == champion["version"]
    assert len(smtp.messages) == 1 and len(hook.posts) == 1, (smtp.messages, hook.posts)
    mail = str(smtp.messages[0])
    assert "gate failed" in mail and "floor_accuracy_teacher" in mail and "0.99" in mail
    assert champion["version"] in mail  # the champion that stays in place
    assert "floor_accuracy_teacher" in json.dumps(hook.posts[0])
    blocked = summaries(pipeline)[-1]
    assert blocked["outcome"] == "blocked by gates"
