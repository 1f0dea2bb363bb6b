"""The DAGs of a pipeline spec, declared by the files in dags/ (``declare``): two for every spec in
include/pipelines/ (or $RETRAIN_PIPELINES_DIR):

- ``ingest_<name>``: every few minutes, ingest landed files into a new immutable snapshot; a new snapshot
  emits the pipeline's Asset event (snapshot id, total rows, new rows).
- ``retrain_<name>``: nightly cron OR that Asset OR a manual trigger with a Params form. It chains
  prepare_run → ingest → drift → decide → finetune → distill → evaluate → gate → publish → notify.

Which file declares which pipeline: ``dags/pipeline_<stem>.py`` declares the spec ``<stem>.yaml`` alone, so a
broken spec is that file's import error in the UI and no other pipeline's; ``dags/retrain_pipelines.py``
declares every spec without a file of its own, and stands a ``spec_error_<file>`` DAG in for a broken one (a
file's import error would hide all the pipelines it declares). docs/operations.md says when to use which.

DAG declarations only: no torch, transformers or pandas here; the stages run as ``python -m tasks ...``,
in a pod or as a local subprocess (plugins/stage_factory.py). Tasks hand each other typed results
(``tasks.contracts``): stage arguments are XComArgs of those results, and the Python tasks read them through
the models and hand them to their steps (``tasks.decide.steps``: plain functions, no Airflow), so
``build_retrain_dag`` is only the wiring. docs/triggers.md says what each trigger does.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout (or /opt/airflow): include/ is next to plugins/

# `tasks` is the installed package (pyproject.toml); the other two are siblings in Airflow's plugins folder.
_missing = [name for name in ("tasks", "stage_factory", "retrain_alerts") if importlib.util.find_spec(name) is None]
if _missing:
    raise ImportError(f"{Path(__file__).name}: cannot find {', '.join(_missing)}: install the project into "
                      "Airflow's Python (`pip install -e .` in the checkout; `make` does it for .venv) and make "
                      f"{Path(__file__).parent} Airflow's plugins folder (AIRFLOW__CORE__PLUGINS_FOLDER)")

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, TriggerRule, task  # noqa: E402
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException  # noqa: E402

import retrain_alerts  # noqa: E402
import retrain_lineage  # noqa: E402
from stage_factory import (  # noqa: E402
    apply_storage_env, build_stage, pull_result, skip_if_run_finished, stage_results,
)
from tasks.contracts import (  # noqa: E402
    DriftResult, EvaluateResult, IngestResult, PublishResult, RunContext, TaskIds,
)
from tasks.spec import PipelineSpec, SpecError, load_folder  # noqa: E402

OWN_FILE_PREFIX = "pipeline_"  # dags/pipeline_<stem>.py declares <stem>.yaml alone


def pipelines_dir() -> Path:
    """Read at each parse (not at import: this module is imported once per process, the env can change)."""
    return Path(os.environ.get("RETRAIN_PIPELINES_DIR", ROOT / "include" / "pipelines"))
START_DATE = datetime(2026, 1, 1)

# Manual-trigger form: field -> (spec path it overrides, JSON-schema bounds, description).
GATE_OVERRIDES = {
    "min_accuracy": ("gates.min_accuracy", 0.0, 1.0, "Absolute floor on golden-set accuracy (0-1)."),
    "min_macro_f1": ("gates.min_macro_f1", 0.0, 1.0, "Absolute floor on golden-set macro-F1 (0-1)."),
    "non_inferiority_margin": ("gates.non_inferiority_margin", 0.0, 0.2,
                               "Largest accuracy loss vs the champion tolerated at the CI's lower bound (0-0.2)."),
    "max_class_recall_drop": ("gates.max_class_recall_drop", 0.0, 1.0,
                              "Largest recall drop allowed for any class, in recall points (0-1)."),
    "min_retention": ("gates.min_retention", 0.0, 1.5, "Student accuracy / teacher accuracy must reach this (or the champion's, when lower)."),
}


def snapshot_asset(spec: PipelineSpec) -> Asset:
    return Asset(name=f"{spec.name}_snapshots", uri=spec.layout.snapshots, group="retrain")


def champion_asset(spec: PipelineSpec) -> Asset:
    """Every move of the champion pointer emits an event on it (tasks/decide/champion_events.py); deploy DAGs
    schedule on it (dags/deploy_champion.py)."""
    return Asset(name=f"{spec.name}_champion", uri=spec.layout.champion, group="retrain")


def run_key(kind: str, run_id: str) -> str:
    """A storage-safe, per-DAG key for a run: ``retrain``, ``manual__2026-11-23T10:00:00+00:00`` →
    ``retrain-manual__2026-11-23T10-00-00-00-00`` (ingest and retrain runs can share a run id)."""
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-")


def trigger_params() -> dict[str, Param]:
    params = {
        "force_retrain": Param(False, type="boolean", title="Force retrain",
                               description="Retrain even when there is no new data, no drift, or the snapshot "
                                           "was already trained on."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Train and evaluate, publish the version, but never move the champion."),
    }
    for name, (_path, low, high, description) in GATE_OVERRIDES.items():
        params[name] = Param(None, type=["null", "number"], minimum=low, maximum=high,
                             title=name.replace("_", " ").capitalize(),
                             description=f"{description} Empty = the spec's value.")
    return params


MAX_KEYS_NAMED = 10  # a conf with thousands of junk keys still fails with a message that fits an alert


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_conf(conf: dict | None, valid: list[str]) -> None:
    """Reject trigger conf keys that are not fields of the form. Airflow validates conf against the DAG's Params
    key by key and keeps unknown keys (apache/airflow#29018), so a typo would silently be ignored. The message
    names at most MAX_KEYS_NAMED keys, each clipped: a conf of junk keys still fits an alert."""
    unknown = sorted(set(conf or {}) - set(valid))
    if not unknown:
        return
    hints = [f"{_clip(repr(key))} (did you mean {close[0]!r}?)"
             if (close := difflib.get_close_matches(key[:100], valid, n=1)) else _clip(repr(key))
             for key in unknown[:MAX_KEYS_NAMED]]
    more = f" and {len(unknown) - MAX_KEYS_NAMED} more" if len(unknown) > MAX_KEYS_NAMED else ""
    raise AirflowFailException(f"unknown trigger conf key{'s' if len(unknown) > 1 else ''}: {', '.join(hints)}{more}; "
                               f"valid keys: {', '.join(sorted(valid)) or '(none: this DAG takes no conf)'}")


def default_args(spec: PipelineSpec) -> dict:
    return {
        "owner": spec.owner,
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "on_failure_callback": retrain_alerts.infra_failure_notifiers(spec),
    }


# ---------------------------------------------------------------- DAG docs, from the spec


def dag_doc(spec: PipelineSpec, kind: str) -> str:
    """The DAG's page in the UI: what this pipeline is, its data, schedule and gates, from its spec."""
    d, s, g, dec = spec.data, spec.schedule, spec.gates, spec.decide
    lines = [f"# {kind}_{spec.name}", "", spec.description or f"Pipeline {spec.name}.", ""]
    if kind == "ingest":
        lines += [f"Every {s.ingest_every_minutes} minutes: ingest files landed in `{spec.landing.uri}` "
                  f"({', '.join(spec.landing.formats)}) into an immutable snapshot under `{spec.layout.snapshots}`. "
                  f"A new snapshot emits the Asset `{spec.name}_snapshots`, which triggers `retrain_{spec.name}`."]
    else:
        deadline = (f"; alert if a run is still going {s.nightly_deadline_minutes} min after it was queued"
                    if s.nightly_deadline_minutes else "")
        lines += [
            "## Schedule",
            f"- nightly: cron `{s.cron}` ({s.timezone}){deadline}; unpausing never starts a run for a past slot",
            f"- a new snapshot from `ingest_{spec.name}` (Asset `{spec.name}_snapshots`)",
            "- manual, with the trigger form (force retrain, dry run, gate overrides); unknown keys are rejected",
            "",
            "## Decision",
            f"Retrain on a first run, when forced, on drift with at least {dec.min_new_rows} new rows, or at "
            f"{dec.retrain_every_rows} new rows since the champion's snapshot"
            + (f" or at {dec.retrain_every_fraction:g} of the rows in that snapshot (whichever comes first)"
               if dec.retrain_every_fraction is not None else "")
            + ". A snapshot a finished run already "
            "trained on (promoted, or blocked by its gates) is skipped unless forced (docs/triggers.md).",
            "",
            "## Gates (golden set)",
            "- above the majority-class baseline (CI lower bound): accuracy by "
            f"{g.min_accuracy_over_baseline}, macro-F1 by {g.min_macro_f1_over_baseline}"
            + (f"; absolute floors accuracy >= {g.min_accuracy}, macro-F1 >= {g.min_macro_f1}"
               if g.min_accuracy or g.min_macro_f1 else ""),
            f"- non-inferiority vs the champion: CI lower bound of the accuracy difference >= -{g.non_inferiority_margin}"
            f" ({g.confidence:.0%} paired bootstrap, {g.bootstrap_resamples} resamples)",
            f"- no class's recall drops by more than {g.max_class_recall_drop} (one-sided paired test per class with "
            f">= {g.class_recall_min_support} rows, {g.class_recall_correction} correction); "
            f"student retention >= {g.min_retention} (or, when the champion's student retained less, >= the "
            "champion's)",
        ]
        if spec.approval.policy != "never":
            lines.append(f"- approval ({spec.approval.policy}): "
                         + "; ".join(x for x in ("a candidate that passed waits for a person's Approve/Reject"
                                                 if spec.approval.on_pass else "",
                                                 "a failed gate waits for an override with a reason"
                                                 if spec.approval.on_fail else "") if x)
                         + f" in Required actions, for {spec.approval.timeout_minutes:g} min (docs/registry.md)")
        budgets = [f"student p95 latency <= {g.max_student_latency_ms_p95} ms" if g.max_student_latency_ms_p95 else "",
                   f"student size <= {g.max_student_size_mb} MB" if g.max_student_size_mb else ""]
        if any(budgets):
            lines.append("- " + "; ".join(b for b in budgets if b))
    lines += ["", "## Data",
              f"- labels: {', '.join(d.labels)} (text column `{d.text_column}`, label column `{d.label_column}`)",
              f"- a batch fails if more than {d.max_bad_fraction:.0%} of its rows are bad (quarantined with reasons)",
              f"- golden set: `{spec.golden.source_uri}`, frozen on first ingest, never trained on",
              f"- storage: `{spec.storage.uri}`; owner: {spec.owner}"]
    return "\n".join(lines)


# ---------------------------------------------------------------- shared tasks


def make_prepare_run(spec_path: Path, kind: str, valid_conf: list[str]):
    @task(task_id=TaskIds.PREPARE_RUN, multiple_outputs=True)
    def prepare_run(params: dict | None = None, dag_run=None) -> dict:
        """Reject unknown trigger keys, then freeze the run's effective spec (the file plus form overrides)."""
        check_conf(dag_run.conf, valid_conf)  # before any work: a typo must not start a run
        from tasks import storage
        from tasks.spec import SpecError, dump, load_spec, with_overrides

        params = params or {}
        overrides = {path: params.get(name) for name, (path, *_rest) in GATE_OVERRIDES.items()}
        try:  # a spec file broken since the DAG was parsed, or an override it refuses: the same on every retry
            spec = load_spec(spec_path)
            effective = with_overrides(spec, overrides)
        except SpecError as exc:
            raise AirflowFailException(str(exc)) from exc
        apply_storage_env(spec)
        key = run_key(kind, dag_run.run_id)
        run_uri = effective.layout.run(key)
        skip_if_run_finished(run_uri, TaskIds.PREPARE_RUN)  # a cleared finished run: nothing is redone
        spec_uri = storage.join(run_uri, "spec.json")
        try:  # create-only: a retried or cleared prepare_run keeps the spec the run's artifacts were made with
            storage.write_json(spec_uri, dump(effective), if_none_match=True)
        except storage.PreconditionFailed:
            frozen = load_spec(spec_uri)
            if dump(frozen) != dump(effective):
                print(f"{spec_uri} was frozen by an earlier try of this run and is kept; the spec file has changed "
                      "since: trigger a new run to use it", flush=True)
            effective = frozen
        champion = storage.read_json(effective.layout.champion) if storage.exists(effective.layout.champion) else None
        retrain_lineage.report(inputs=[str(spec_path), effective.layout.champion if champion else None],
                               outputs=[spec_uri])
        dry_run = bool(params.get("dry_run"))
        return RunContext(
            pipeline=spec.name,
            run_uri=run_uri,
            run_key=key,
            run_type=str(dag_run.run_type),
            champion=champion,
            champion_uri=champion["version_uri"] if champion else "none",
            champion_version=champion["version"] if champion else "none",
            force_retrain=bool(params.get("force_retrain")),
            dry_run=dry_run,
            overrides={k: v for k, v in overrides.items() if v is not None},
            evaluation_uri=storage.join(run_uri, TaskIds.EVALUATE, "result.json"),
            promote_flag="--no-promote" if dry_run else "--promote",
        ).dump()

    return prepare_run


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
        doc_md=dag_doc(spec, "ingest"),
    ) as dag:
        prepare = make_prepare_run(spec_path, "ingest", valid_conf=[])()
        ingest = build_stage(spec, TaskIds.INGEST, ["--run", prepare["run_uri"]])

        @task(task_id=TaskIds.ANNOUNCE_SNAPSHOT, outlets=[asset], retries=0)
        def announce_snapshot(result: dict, outlet_events=None) -> dict:
            """Emit the Asset event only for a new snapshot; an unchanged ingest emits nothing."""
            snapshot = IngestResult.read(result)
            if not snapshot.changed:
                raise AirflowSkipException(f"no new data: snapshot {snapshot.snapshot_id} is unchanged")
            outlet_events[asset].extra = {
                "snapshot_id": snapshot.snapshot_id,
                "snapshot_uri": snapshot.snapshot_uri,
                "total_rows": snapshot.total_rows,
                "new_rows": snapshot.new_rows,
            }
            return snapshot.dump()

        announce_snapshot(ingest.output)
    return dag


# ---------------------------------------------------------------- the retrain DAG's Python tasks
# Each wraps a step of tasks/decide/steps.py (plain functions over the typed results, tested without Airflow):
# it validates its XComArgs into their models, calls the step, and does what only Airflow can (skip, fail, emit
# an Asset event). The steps are imported when the task runs: parsing the DAG never pays for them.


def open_run(spec: PipelineSpec, run: dict, task_id: str) -> RunContext:
    """A task's start: storage credentials (each task is a fresh process), the run's context, and a skip when the
    run already has a verdict (a cleared finished run redoes nothing, alerts nobody twice)."""
    apply_storage_env(spec)
    run_ctx = RunContext.read(run)
    skip_if_run_finished(run_ctx.run_uri, task_id)
    return run_ctx


def decide_task(spec: PipelineSpec):
    @task.short_circuit(task_id=TaskIds.DECIDE, ignore_downstream_trigger_rules=False, do_xcom_push=False)
    def decide(run: dict, ingest_result: dict, drift_result: dict, ti=None) -> bool:
        """Retrain or skip, with reasons; on skip, the training stages never start. Its XCom is the Decision."""
        from tasks.decide import steps

        run_ctx = open_run(spec, run, TaskIds.DECIDE)
        snapshot, drift = IngestResult.read(ingest_result), DriftResult.read(drift_result)
        decision = steps.decide(steps.run_spec(run_ctx), run_ctx, snapshot, drift)
        retrain_lineage.report(inputs=[snapshot.snapshot_uri, drift.report_uri],
                               outputs=[retrain_lineage.join(run_ctx.run_uri, TaskIds.DECIDE, "result.json")])
        print(steps.verdict_line(decision))
        # The Decision is the task's return-value XCom, stored here: Airflow stores none for a short-circuit that
        # skips, nor for a failed task (a stop), and the approval question, the alerts and the summary read it.
        ti.xcom_push(key="return_value", value=decision.dump())
        if decision.stopped:  # bad labels: fail once, before any GPU stage, and alert with the reasons
            raise AirflowFailException("data rejected: " + " ".join(decision.reasons))
        return decision.retrain  # the short-circuit's condition

    return decide


def gate_task(spec: PipelineSpec):
    @task(task_id=TaskIds.GATE, retries=0, on_failure_callback=retrain_alerts.gate_failure_notifiers(spec))
    def gate(evaluation: dict, run: dict) -> dict:
        """A failed gate fails the run once (no retries) and alerts on-call with the numbers; with
        approval.policy override_failed_gate (or always_and_override) it waits for a person instead."""
        from tasks.decide import steps
        from tasks.errors import GateFailed

        run_ctx = open_run(spec, run, TaskIds.GATE)
        result = EvaluateResult.read(evaluation)
        retrain_lineage.report(inputs=[run_ctx.evaluation_uri])
        try:
            verdict = steps.gate(result, spec.approval, run_ctx.dry_run)
        except GateFailed as exc:
            raise AirflowFailException(str(exc)) from exc
        if verdict.override_requested:
            print(f"gates failed ({', '.join(result.failed_gates)}): the approve task asks for an override")
        return verdict.dump()

    return gate


def announce_champion_task(spec: PipelineSpec, champion: Asset):
    @task(task_id=TaskIds.ANNOUNCE_CHAMPION, outlets=[champion], retries=0)
    def announce_champion(result: dict, outlet_events=None) -> dict:
        """The champion moved: an Asset event with the new version (deploy DAGs schedule on it). Nothing
        promoted: skipped, and no event."""
        from tasks.decide import steps

        published = PublishResult.read(result)
        if not published.promoted:
            raise AirflowSkipException(f"not promoted: {published.reason}")
        apply_storage_env(spec)
        outlet_events[champion].extra = steps.champion_event(spec, published)
        return outlet_events[champion].extra

    return announce_champion


SUMMARIZED = (TaskIds.INGEST, TaskIds.DRIFT, TaskIds.DECIDE, TaskIds.FINETUNE, TaskIds.DISTILL, TaskIds.EVALUATE,
              TaskIds.PUBLISH)


def notify_task(spec: PipelineSpec):
    @task(task_id=TaskIds.NOTIFY, trigger_rule=TriggerRule.ALL_DONE, retries=1)
    def notify(ti=None) -> dict:
        """The run summary: decisions, metrics, where the artifacts are; stored with the run and logged.
        After training and evaluation (promoted, or blocked by gates) it records the snapshot as trained on.

        It reads the results by task id rather than as arguments: it runs after failures and skips too, and an
        argument from decide would make it a direct downstream of the short-circuit, which skips those."""
        from tasks.decide import steps
        from tasks.decide.summary import format_summary

        run_ctx = pull_result(ti, TaskIds.PREPARE_RUN, required=False)
        if run_ctx is None:  # prepare_run failed (e.g. rejected conf): there is no run to summarize
            raise AirflowSkipException("no run context: prepare_run failed, or skipped itself (a cleared "
                                       "finished run); see its log")
        apply_storage_env(spec)
        skip_if_run_finished(run_ctx.run_uri, TaskIds.NOTIFY)  # its summary stays as written
        results, states, notes = stage_results(ti, SUMMARIZED)
        summary = steps.summarize(run_ctx, results, states, notes, with_approval=spec.approval.policy != "never")
        retrain_lineage.report(inputs=[summary["publish"].get("version_uri")],
                               outputs=[retrain_lineage.join(run_ctx.run_uri, "summary.json")])
        print(format_summary(summary) + "".join(f"\nnote: {n}" for n in notes))
        return summary

    return notify


@task(task_id=TaskIds.FAIL_IF_ANY_FAILED, trigger_rule=TriggerRule.ONE_FAILED, retries=0, on_failure_callback=None)
def fail_if_any_failed() -> None:
    """notify runs after failures too; this keeps a failed stage or gate from ending as a green run."""
    raise AirflowFailException("an upstream task failed; see the gate report or the failed task's log")


# ---------------------------------------------------------------- the retrain DAG


def build_retrain_dag(spec_path: Path, spec: PipelineSpec) -> DAG:
    params = trigger_params()
    approval_on = spec.approval.policy != "never"  # approval: a person's word between gate and publish
    with DAG(
        dag_id=f"retrain_{spec.name}",
        description=f"Retrain, distill, gate and promote the {spec.name} classifier",
        # Unpausing never starts a run for a past cron slot: no start_date (with one, Airflow 3.3 runs the latest
        # past slot on unpause even with catchup off), and run_immediately=timedelta(0) (False still runs a slot
        # that passed less than 10% of the cron period ago, e.g. 2.4 h for a daily cron).
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(spec.schedule.cron, timezone=spec.schedule.timezone,
                                           run_immediately=timedelta(0)),
            assets=[snapshot_asset(spec)],
        ),
        catchup=False,
        max_active_runs=1,
        params=params,
        default_args=default_args(spec),
        tags=["retrain", spec.name, *spec.tags],
        doc_md=dag_doc(spec, "retrain"),
        deadline=retrain_alerts.deadline_alert(spec),
    ) as dag:
        prepare = make_prepare_run(spec_path, "retrain", valid_conf=list(params))()
        run_uri, champion_uri = prepare["run_uri"], prepare["champion_uri"]
        ingest = build_stage(spec, TaskIds.INGEST, ["--run", run_uri])
        snapshot_uri = ingest.output["snapshot_uri"]
        drift = build_stage(spec, TaskIds.DRIFT, ["--run", run_uri, "--snapshot", snapshot_uri,
                                                  "--champion", champion_uri])
        decision = decide_task(spec)(prepare, ingest.output, drift.output)
        finetune = build_stage(spec, TaskIds.FINETUNE, ["--run", run_uri, "--snapshot", snapshot_uri,
                                                        "--champion", champion_uri])
        teacher_uri = finetune.output["model_uri"]
        distill = build_stage(spec, TaskIds.DISTILL, ["--run", run_uri, "--snapshot", snapshot_uri,
                                                      "--teacher", teacher_uri, "--champion", champion_uri])
        student_uri = distill.output["model_uri"]
        evaluate = build_stage(spec, TaskIds.EVALUATE, [
            "--run", run_uri, "--snapshot", snapshot_uri, "--teacher", teacher_uri, "--student", student_uri,
            "--champion", champion_uri, "--golden", ingest.output["golden_uri"]])
        gate = gate_task(spec)(evaluate.output, prepare)
        publish = build_stage(spec, TaskIds.PUBLISH, [
            "--run", run_uri, "--snapshot", snapshot_uri, "--teacher", teacher_uri, "--student", student_uri,
            "--evaluation", prepare["evaluation_uri"], "--expected-champion", prepare["champion_version"],
            prepare["promote_flag"], *(["--approval"] if approval_on else []),
        ])
        decision >> finetune
        approve = []
        if approval_on:
            from approval_gate import approval_task  # the HITL operator's import, only for pipelines that ask

            approve = [approval_task(spec)]
            gate >> approve[0] >> publish
        else:
            gate >> publish
        announce_champion_task(spec, champion_asset(spec))(publish.output)
        summary = notify_task(spec)()
        [prepare, publish] >> summary
        [prepare, ingest, drift, decision, finetune, distill, evaluate, gate, *approve, publish,
         summary] >> fail_if_any_failed()
    return dag


def build_spec_error_dag(spec_path: Path, error: str) -> DAG:
    """Stands in for the two DAGs of a spec that is broken, or collides with another (same name, overlapping
    landing zone), in ``dags/retrain_pipelines.py``: ``spec_error_<file>``, never scheduled, its doc and its one
    task carry the error.

    Airflow records import errors per DAG *file*, and that file serves every spec without a file of its own;
    raising there would hide all of them, so the broken pipeline alone is replaced and every other one keeps
    running. A pipeline in its own ``dags/pipeline_<stem>.py`` gets a real import error instead (``declare``).
    The error is also logged by the DAG processor, and ``python -m tasks validate-spec include/pipelines``
    reports it before deploy.
    """
    with DAG(
        dag_id="spec_error_" + re.sub(r"[^A-Za-z0-9_]+", "_", spec_path.stem),
        description=f"INVALID pipeline spec {spec_path.name}: its DAGs are not loaded",
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        tags=["retrain", "spec-error"],
        doc_md=f"## Invalid pipeline spec `{spec_path}`\n\nIts ingest and retrain DAGs are not loaded until it is "
               f"fixed; the other pipelines are unaffected.\n\n```\n{error}\n```\n",
    ) as dag:
        @task(task_id="spec_invalid", retries=0)
        def spec_invalid() -> None:
            raise AirflowFailException(error)

        spec_invalid()
    return dag


# ---------------------------------------------------------------- which file declares what


def pipeline_dags(spec_path: Path, spec: PipelineSpec) -> dict[str, DAG]:
    dags = {f"ingest_{spec.name}": build_ingest_dag(spec_path, spec),
             f"retrain_{spec.name}": build_retrain_dag(spec_path, spec)}
    if spec.events.webhook_conn_id:  # the signed webhook of the champion's moves, only when configured
        from champion_webhook import build_webhook_dag

        dags[f"champion_webhook_{spec.name}"] = build_webhook_dag(spec, champion_asset(spec))
    return dags


def declare(dag_file: str | Path) -> dict[str, DAG]:
    """The DAGs the DAG file ``dag_file`` declares, by its name (put them in its globals):

    - ``pipeline_<stem>.py``: the pipeline of ``<stem>.yaml`` (or .yml) alone. A spec that is broken, or that
      collides with another file (same name, overlapping landing zone), raises SpecError: Airflow shows it as
      this file's import error and the other files' pipelines keep running. No such spec in the folder (tests and
      ``make run`` point $RETRAIN_PIPELINES_DIR at another one): nothing, with a warning.
    - any other name: every spec that has no ``pipeline_<stem>.py`` next to ``dag_file``; a broken one gets a
      ``spec_error_<file>`` stand-in DAG that carries its error.
    """
    dag_file = Path(dag_file)
    good, errors = load_folder(pipelines_dir())
    if dag_file.stem.startswith(OWN_FILE_PREFIX):
        stem = dag_file.stem[len(OWN_FILE_PREFIX):]
        for spec_path, error in errors.items():
            if spec_path.stem == stem:
                raise SpecError(f"pipeline spec {spec_path} is invalid, so {dag_file.name} declares no DAG "
                                f"(the other pipelines are not affected):\n{error}")
        for spec_path, spec in good:
            if spec_path.stem == stem:
                return pipeline_dags(spec_path, spec)
        logging.getLogger(__name__).warning("%s: no spec %s.yaml in %s; no DAG declared", dag_file.name, stem,
                                            pipelines_dir())
        return {}
    own = {path.stem[len(OWN_FILE_PREFIX):] for path in dag_file.parent.glob(f"{OWN_FILE_PREFIX}*.py")}
    dags: dict[str, DAG] = {}
    for spec_path, spec in good:
        if spec_path.stem not in own:
            dags.update(pipeline_dags(spec_path, spec))
    for spec_path, error in errors.items():
        if spec_path.stem not in own:
            logging.getLogger(__name__).error("pipeline spec %s is invalid; its DAGs are not loaded:\n%s",
                                              spec_path, error)
            dags[f"spec_error_{spec_path.stem}"] = build_spec_error_dag(spec_path, error)
    return dags
