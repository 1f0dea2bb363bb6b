"""Two DAGs for every pipeline spec in include/pipelines/ (or $RETRAIN_PIPELINES_DIR):

- ``ingest_<name>``: every few minutes, ingest landed files into a new immutable snapshot; a new snapshot
  emits the pipeline's Asset event (snapshot id, total rows, new rows).
- ``retrain_<name>``: nightly cron OR that Asset OR a manual trigger with a Params form. It chains
  prepare_run → ingest → drift → decide → finetune → distill → evaluate → gate → publish → notify.

DAG declarations only: no torch, transformers or pandas here; the stages run as ``python -m tasks ...``,
in a pod or as a local subprocess (plugins/stage_factory.py).
"""

from __future__ import annotations

import os
import re
import sys
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "plugins"):  # the tasks package and our plugins modules, wherever dags/ is mounted
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, TriggerRule, task  # noqa: E402
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException  # noqa: E402

import retrain_alerts  # noqa: E402
from stage_factory import apply_storage_env, build_stage  # noqa: E402
from tasks.spec import PipelineSpec, load_specs  # noqa: E402

PIPELINES_DIR = Path(os.environ.get("RETRAIN_PIPELINES_DIR", ROOT / "include" / "pipelines"))
START_DATE = datetime(2026, 1, 1)

# Manual-trigger form: field -> (spec path it overrides, JSON-schema bounds, description).
GATE_OVERRIDES = {
    "min_accuracy": ("gates.min_accuracy", 0.0, 1.0, "Absolute floor on golden-set accuracy (0-1)."),
    "min_macro_f1": ("gates.min_macro_f1", 0.0, 1.0, "Absolute floor on golden-set macro-F1 (0-1)."),
    "non_inferiority_margin": ("gates.non_inferiority_margin", 0.0, 0.2,
                               "Largest accuracy loss vs the champion tolerated at the CI's lower bound (0-0.2)."),
    "max_class_recall_drop": ("gates.max_class_recall_drop", 0.0, 1.0,
                              "Largest recall drop allowed for any class, in recall points (0-1)."),
    "min_retention": ("gates.min_retention", 0.0, 1.5, "Student accuracy / teacher accuracy must reach this."),
}


def snapshot_asset(spec: PipelineSpec) -> Asset:
    return Asset(name=f"{spec.name}_snapshots", uri=spec.layout.snapshots, group="retrain")


def run_key(kind: str, run_id: str) -> str:
    """A storage-safe, per-DAG key for a run: ``retrain``, ``manual__2026-11-23T10:00:00+00:00`` →
    ``retrain-manual__2026-11-23T10-00-00-00-00`` (ingest and retrain runs can share a run id)."""
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-")


def trigger_params() -> dict[str, Param]:
    params = {
        "force_retrain": Param(False, type="boolean", title="Force retrain",
                               description="Retrain even when there is no new data and no drift."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Train and evaluate, publish the version, but never move the champion."),
    }
    for name, (_path, low, high, description) in GATE_OVERRIDES.items():
        params[name] = Param(None, type=["null", "number"], minimum=low, maximum=high,
                             title=name.replace("_", " ").capitalize(),
                             description=f"{description} Empty = the spec's value.")
    return params


def default_args(spec: PipelineSpec) -> dict:
    return {
        "owner": spec.owner,
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "on_failure_callback": retrain_alerts.infra_failure_notifiers(spec),
    }


def make_prepare_run(spec_path: Path, kind: str):
    @task(task_id="prepare_run")
    def prepare_run(params: dict | None = None, dag_run=None) -> dict:
        """Freeze the run's effective spec (the file plus form overrides) into storage for every stage."""
        from tasks import storage
        from tasks.spec import dump, load_spec, with_overrides

        spec = load_spec(spec_path)
        apply_storage_env(spec)
        params = params or {}
        overrides = {path: params.get(name) for name, (path, *_rest) in GATE_OVERRIDES.items()}
        effective = with_overrides(spec, overrides)
        key = run_key(kind, dag_run.run_id)
        run_uri = effective.layout.run(key)
        storage.write_json(storage.join(run_uri, "spec.json"), dump(effective))
        champion = storage.read_json(effective.layout.champion) if storage.exists(effective.layout.champion) else None
        return {
            "pipeline": spec.name,
            "run_uri": run_uri,
            "run_key": key,
            "run_type": str(dag_run.run_type),
            "champion": champion,
            "champion_uri": champion["version_uri"] if champion else "none",
            "champion_version": champion["version"] if champion else "none",
            "force_retrain": bool(params.get("force_retrain")),
            "dry_run": bool(params.get("dry_run")),
            "overrides": {k: v for k, v in overrides.items() if v is not None},
        }

    return prepare_run


RUN = "{{ ti.xcom_pull(task_ids='prepare_run')['run_uri'] }}"
CHAMPION = "{{ ti.xcom_pull(task_ids='prepare_run')['champion_uri'] }}"
SNAPSHOT = "{{ ti.xcom_pull(task_ids='ingest')['snapshot_uri'] }}"
TEACHER = "{{ ti.xcom_pull(task_ids='finetune')['model_uri'] }}"
STUDENT = "{{ ti.xcom_pull(task_ids='distill')['model_uri'] }}"
GOLDEN = "{{ ti.xcom_pull(task_ids='ingest')['golden_uri'] }}"


def build_ingest_dag(spec_path: Path, spec: PipelineSpec) -> DAG:
    asset = snapshot_asset(spec)
    with DAG(
        dag_id=f"ingest_{spec.name}",
        description=f"Ingest landed files for {spec.name} into immutable snapshots",
        schedule=timedelta(minutes=spec.schedule.ingest_every_minutes),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(spec),
        tags=["retrain", "ingest", spec.name, *spec.tags],
        doc_md=__doc__,
    ) as dag:
        prepare = make_prepare_run(spec_path, "ingest")()
        ingest = build_stage(spec, "ingest", ["--run", RUN])

        @task(task_id="announce_snapshot", outlets=[asset], retries=0)
        def announce_snapshot(result: dict, outlet_events=None) -> dict:
            """Emit the Asset event only for a new snapshot; an unchanged ingest emits nothing."""
            if not result.get("changed"):
                raise AirflowSkipException(f"no new data: snapshot {result.get('snapshot_id')} is unchanged")
            outlet_events[asset].extra = {
                "snapshot_id": result["snapshot_id"],
                "snapshot_uri": result["snapshot_uri"],
                "total_rows": result["total_rows"],
                "new_rows": result["new_rows"],
            }
            return result

        prepare >> ingest
        announce_snapshot(ingest.output)
    return dag


def build_retrain_dag(spec_path: Path, spec: PipelineSpec) -> DAG:
    asset = snapshot_asset(spec)
    pipeline_spec = spec  # as parsed; tasks read the run's frozen spec.json for everything else
    with DAG(
        dag_id=f"retrain_{spec.name}",
        description=f"Retrain, distill, gate and promote the {spec.name} classifier",
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(spec.schedule.cron, timezone=spec.schedule.timezone), assets=[asset]
        ),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        params=trigger_params(),
        default_args=default_args(spec),
        tags=["retrain", spec.name, *spec.tags],
        doc_md=__doc__,
        deadline=retrain_alerts.deadline_alert(spec),
    ) as dag:
        prepare = make_prepare_run(spec_path, "retrain")()
        ingest = build_stage(spec, "ingest", ["--run", RUN])
        drift = build_stage(spec, "drift", ["--run", RUN, "--snapshot", SNAPSHOT, "--champion", CHAMPION])

        @task.short_circuit(task_id="decide", ignore_downstream_trigger_rules=False)
        def decide(run: dict, ingest_result: dict, drift_result: dict, ti=None) -> bool:
            """Retrain or skip, with reasons; on skip, the training stages never start."""
            from tasks import storage
            from tasks.decide.decision import decide as decide_retrain
            from tasks.spec import load_spec

            apply_storage_env(pipeline_spec)  # credentials first: each task is a fresh process
            run_spec = load_spec(storage.join(run["run_uri"], "spec.json"))
            decision = decide_retrain(run_spec, ingest_result, drift_result, run["champion"],
                                      force=run["force_retrain"])
            storage.write_json(storage.join(run["run_uri"], "decide", "result.json"), decision)
            ti.xcom_push(key="decision", value=decision)
            verdict = "RETRAIN" if decision["retrain"] else "SKIP"
            print(f"{verdict}: " + "; ".join(decision["reasons"]))
            return bool(decision["retrain"])

        finetune = build_stage(spec, "finetune", ["--run", RUN, "--snapshot", SNAPSHOT, "--champion", CHAMPION])
        distill = build_stage(spec, "distill", ["--run", RUN, "--snapshot", SNAPSHOT, "--teacher", TEACHER,
                                                "--champion", CHAMPION])
        evaluate = build_stage(spec, "evaluate", ["--run", RUN, "--snapshot", SNAPSHOT, "--teacher", TEACHER,
                                                  "--student", STUDENT, "--champion", CHAMPION, "--golden", GOLDEN])

        @task(task_id="gate", retries=0, on_failure_callback=retrain_alerts.gate_failure_notifiers(spec))
        def gate(evaluation: dict) -> dict:
            """A failed gate fails the run (no retries) and alerts on-call with the numbers."""
            if not evaluation.get("passed"):
                failed = ", ".join(evaluation.get("failed_gates", [])) or "unknown"
                raise AirflowFailException(f"gates failed: {failed}; report: {evaluation.get('report_md_uri')}")
            return {"passed": True, "report_uri": evaluation.get("report_uri")}

        publish = build_stage(spec, "publish", [
            "--run", RUN, "--snapshot", SNAPSHOT, "--teacher", TEACHER, "--student", STUDENT,
            "--evaluation", RUN + "/evaluate/result.json",
            "--expected-champion", "{{ ti.xcom_pull(task_ids='prepare_run')['champion_version'] }}",
            "{{ '--no-promote' if ti.xcom_pull(task_ids='prepare_run')['dry_run'] else '--promote' }}",
        ])

        @task(task_id="notify", trigger_rule=TriggerRule.ALL_DONE, retries=1)
        def notify(run: dict, ti=None) -> dict:
            """The run summary: decisions, metrics, where the artifacts are; stored with the run and logged."""
            from tasks import storage
            from tasks.decide.summary import build_summary, format_summary

            apply_storage_env(pipeline_spec)
            pulled = {name: ti.xcom_pull(task_ids=name) for name in
                      ("ingest", "drift", "finetune", "distill", "evaluate", "publish")}
            pulled["decide"] = ti.xcom_pull(task_ids="decide", key="decision")
            summary = build_summary(run, pulled)
            storage.write_json(storage.join(run["run_uri"], "summary.json"), summary)
            print(format_summary(summary))
            return summary

        @task(task_id="fail_if_any_failed", trigger_rule=TriggerRule.ONE_FAILED, retries=0,
              on_failure_callback=None)
        def fail_if_any_failed() -> None:
            """notify runs after failures too; this keeps a failed stage or gate from ending as a green run."""
            raise AirflowFailException("an upstream task failed; see the gate report or the failed task's log")

        prepare >> ingest >> drift
        decision = decide(prepare, ingest.output, drift.output)
        evaluation = evaluate.output
        decision >> finetune >> distill >> evaluate
        gate_task = gate(evaluation)
        gate_task >> publish
        summary = notify(prepare)
        publish >> summary
        [prepare, ingest, drift, decision, finetune, distill, evaluate, gate_task, publish, summary] >> fail_if_any_failed()
    return dag


for _spec_path, _spec in load_specs(PIPELINES_DIR):
    globals()[f"ingest_{_spec.name}"] = build_ingest_dag(_spec_path, _spec)
    globals()[f"retrain_{_spec.name}"] = build_retrain_dag(_spec_path, _spec)
