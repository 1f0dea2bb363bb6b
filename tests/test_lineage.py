"""OpenLineage (plugins/retrain_lineage.py, docs/lineage.md): dataset names per the naming spec, the datasets each
stage reports, and off-and-silent without configuration. The events of a real `make ingest` + `make run` are
checked in tests/test_local_run.py (test_lineage_events_lead_from_a_landed_file_to_the_champion)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import retrain_lineage
from conftest import ROOT
from lineage_helpers import OPENLINEAGE_ENV_PREFIXES


def test_dataset_names_match_the_providers_asset_converters():
    """Our names for s3:// and file:// URIs are the ones the Amazon and common-io providers give an Asset with the
    same URI (so lineage joins with Asset-based events), and follow OpenLineage's naming spec."""
    from airflow.providers.amazon.aws.assets.s3 import convert_asset_to_openlineage as s3_to_ol
    from airflow.providers.common.io.assets.file import convert_asset_to_openlineage as file_to_ol
    from airflow.sdk import Asset

    cases = [("s3://bucket/models/tiny/v1", s3_to_ol, ("s3://bucket", "models/tiny/v1")),
             ("s3://bucket/snapshots/tiny/s-1/part.parquet", s3_to_ol, ("s3://bucket", "snapshots/tiny/s-1/part.parquet")),
             ("file:///srv/retrain/models/tiny/champion.json", file_to_ol, ("file", "/srv/retrain/models/tiny/champion.json"))]
    for uri, convert, expected in cases:
        ours = retrain_lineage.dataset_name(uri)
        theirs = convert(Asset(uri=uri), None)
        assert ours == (theirs.namespace, theirs.name) == expected, uri
    assert retrain_lineage.dataset_name("s3://bucket/models/tiny/v1/") == ("s3://bucket", "models/tiny/v1")
    assert retrain_lineage.dataset_name("/srv/x/../retrain/landing") == ("file", "/srv/retrain/landing")


RUN = "s3://b/runs/tiny/retrain-manual__1"
ARGS = ["--run", RUN, "--snapshot", "s3://b/snapshots/tiny/s-2", "--teacher", f"{RUN}/finetune/model",
        "--student", f"{RUN}/distill/model", "--champion", "s3://b/models/tiny/v1", "--golden", "s3://b/golden/tiny/g-1",
        "--evaluation", f"{RUN}/evaluate/result.json"]


@pytest.mark.parametrize("stage, result, inputs, outputs", [
    ("ingest", {"changed": True, "landing_uri": "s3://b/landing/tiny", "files_ingested": ["a.tsv", "d/b.tsv"],
                "snapshot_uri": "s3://b/snapshots/tiny/s-2", "quarantine_uri": None},
     ["s3://b/landing/tiny/a.tsv", "s3://b/landing/tiny/d/b.tsv"], ["s3://b/snapshots/tiny/s-2"]),
    ("ingest", {"changed": False, "landing_uri": "s3://b/landing/tiny", "files_ingested": [],
                "snapshot_uri": "s3://b/snapshots/tiny/s-2"}, ["s3://b/snapshots/tiny/s-2"], []),
    ("drift", {"reference_snapshot_uri": "s3://b/snapshots/tiny/s-1", "report_uri": f"{RUN}/drift/report.json"},
     ["s3://b/snapshots/tiny/s-2", "s3://b/snapshots/tiny/s-1", "s3://b/models/tiny/v1"], [f"{RUN}/drift/report.json"]),
    ("finetune", {"model_uri": f"{RUN}/finetune/model", "init_from": "champion v1"},
     ["s3://b/snapshots/tiny/s-2", "s3://b/models/tiny/v1"], [f"{RUN}/finetune/model"]),
    ("finetune", {"model_uri": f"{RUN}/finetune/model", "init_from": "base"},
     ["s3://b/snapshots/tiny/s-2"], [f"{RUN}/finetune/model"]),
    ("distill", {"model_uri": f"{RUN}/distill/model", "teacher_uri": f"{RUN}/finetune/model",
                 "exports": {"onnx": f"{RUN}/distill/exports/onnx"}},
     ["s3://b/snapshots/tiny/s-2", f"{RUN}/finetune/model"], [f"{RUN}/distill/model", f"{RUN}/distill/exports/onnx"]),
    ("evaluate", {"passed": True, "report_uri": f"{RUN}/evaluate/gate_report.json"},
     [f"{RUN}/finetune/model", f"{RUN}/distill/model", "s3://b/models/tiny/v1", "s3://b/golden/tiny/g-1"],
     [f"{RUN}/evaluate/result.json", f"{RUN}/evaluate/gate_report.json"]),
    ("publish", {"version_uri": "s3://b/models/tiny/v2", "promoted": True, "champion_uri": "s3://b/models/tiny/champion.json"},
     ["s3://b/snapshots/tiny/s-2", f"{RUN}/finetune/model", f"{RUN}/distill/model", f"{RUN}/evaluate/result.json"],
     ["s3://b/models/tiny/v2", "s3://b/models/tiny/champion.json"]),
    ("publish", {"version_uri": "s3://b/models/tiny/v2", "promoted": False, "champion_uri": "s3://b/models/tiny/champion.json"},
     ["s3://b/snapshots/tiny/s-2", f"{RUN}/finetune/model", f"{RUN}/distill/model", f"{RUN}/evaluate/result.json"],
     ["s3://b/models/tiny/v2"]),  # not promoted: the pointer was read, not written
])
def test_stage_datasets_come_from_the_command_and_the_result(stage, result, inputs, outputs):
    assert retrain_lineage.stage_datasets(stage, ARGS, result) == (inputs, outputs)


def test_a_first_run_and_a_failed_stage_report_what_they_were_told_to_read():
    first = [a if a != "s3://b/models/tiny/v1" else "none" for a in ARGS]  # no champion yet
    assert retrain_lineage.stage_datasets("drift", first, {"report_uri": "r"}) == (["s3://b/snapshots/tiny/s-2"], ["r"])
    # A failed stage has no result: the provider's on-failure hook reports its inputs and no output.
    assert retrain_lineage.stage_datasets("publish", ARGS, None)[1] == []
    assert retrain_lineage.stage_datasets("evaluate", ARGS, None) == (
        [f"{RUN}/finetune/model", f"{RUN}/distill/model", "s3://b/models/tiny/v1", "s3://b/golden/tiny/g-1"], [])


def test_the_stage_operators_answer_the_providers_hook(tmp_path):
    """What the provider's DefaultExtractor gets from a stage task after it ran: OpenLineage datasets."""
    from airflow.providers.openlineage.extractors.base import DefaultExtractor
    from stage_factory import LocalStageOperator

    op = LocalStageOperator(task_id="distill", stage="distill", cmds=["python", "-m", "tasks"], arguments=["distill", *ARGS])
    op.keep_result({"model_uri": f"{RUN}/distill/model", "teacher_uri": f"{RUN}/finetune/model"})
    lineage = DefaultExtractor(op).extract_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://b", "snapshots/tiny/s-2"),
                                                               ("s3://b", "runs/tiny/retrain-manual__1/finetune/model")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://b", "runs/tiny/retrain-manual__1/distill/model")]


def test_a_python_task_reports_through_the_same_hook(monkeypatch):
    """report() from a running @task answers the provider's hook for that task instance, and only for it."""
    from types import SimpleNamespace

    import airflow.sdk
    from airflow.providers.openlineage.extractors.manager import ExtractorManager
    from airflow.sdk import DAG, task
    from airflow.utils.state import TaskInstanceState

    with DAG("lineage_probe", schedule=None):
        @task(task_id="gate")
        def gate() -> None: ...

        op = gate().operator
    ti = SimpleNamespace(task=op, run_id="night-1", dag_id="lineage_probe", task_id="gate", map_index=-1)
    monkeypatch.setattr(retrain_lineage, "enabled", lambda: True)
    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: {"ti": ti})
    retrain_lineage.report(inputs=[f"{RUN}/evaluate/result.json", None, "none"])
    lineage = ExtractorManager().extract_metadata(SimpleNamespace(run_id="night-1"), op, TaskInstanceState.SUCCESS, ti)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://b", "runs/tiny/retrain-manual__1/evaluate/result.json")]
    assert lineage.outputs == []
    # The same operator object in a later run (dag.test() reuses it) that reported nothing reports nothing.
    assert op.get_openlineage_facets_on_complete(SimpleNamespace(run_id="night-2")).inputs == []


# A fresh interpreter with no OpenLineage setting at all, as a deployment that never configured it: load Airflow's
# plugins (the provider's included) and listeners, parse the DAG folder, and ask our reporting hook to report.
OFF_PROBE = textwrap.dedent("""
    import json, logging, sys
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(f"{record.name} {record.levelname}: {record.getMessage()}")

    logging.getLogger().addHandler(Keep(level=logging.WARNING))
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.listener import get_listener_manager
    from airflow.sdk import lineage
    sys.path.insert(0, sys.argv[2])
    import retrain_lineage

    bag = DagBag(dag_folder=sys.argv[1])
    listeners = [type(p).__name__ for p in get_listener_manager().pm.get_plugins()]
    retrain_lineage.report(inputs=["s3://b/in"], outputs=["s3://b/out"])  # outside a task: must return at once
    print(json.dumps({"errors": list(bag.import_errors), "listeners": listeners,
                      "enabled": retrain_lineage.enabled(),
                      "collector_created": lineage.get_hook_lineage_collector.cache_info().currsize,
                      "warnings": records}))
""")


def test_without_openlineage_configured_nothing_is_emitted_or_logged():
    """Provider installed, nothing configured: no listener is registered (so no event can be emitted), our hook
    never creates the lineage collector, and nothing is logged at WARNING or above while the DAGs load."""
    import airflow.providers.openlineage  # noqa: F401  (installed: the case this test is about)

    env = {k: v for k, v in os.environ.items() if not k.startswith(OPENLINEAGE_ENV_PREFIXES)}
    out = subprocess.run([sys.executable, "-c", OFF_PROBE, str(ROOT / "dags"), str(ROOT / "plugins")],
                         capture_output=True, text=True, timeout=180, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == []
    assert not [name for name in result["listeners"] if "lineage" in name.lower()], result["listeners"]
    assert result["enabled"] is False and result["collector_created"] == 0
    assert result["warnings"] == []
    assert "openlineage" not in out.stderr.lower(), out.stderr[-3000:]


def test_with_openlineage_configured_the_listener_is_registered(tmp_path):
    """The other side of the probe above, so it cannot pass by not looking: the same probe with the file transport
    configured finds the provider's listener and our hook enabled."""
    from lineage_helpers import openlineage_file_env

    env = {k: v for k, v in os.environ.items() if not k.startswith(OPENLINEAGE_ENV_PREFIXES)}
    env.update(openlineage_file_env(tmp_path / "events.jsonl"))
    out = subprocess.run([sys.executable, "-c", OFF_PROBE, str(ROOT / "dags"), str(ROOT / "plugins")],
                         capture_output=True, text=True, timeout=180, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert any("lineage" in name.lower() for name in result["listeners"]), result["listeners"]
    assert result["enabled"] is True
