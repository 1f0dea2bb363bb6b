"""The retrain DAG's light steps, as plain functions over the typed results (``tasks.contracts``).

The DAG (plugins/pipeline_dags.py) runs each of these in a Python task whose wrapper only does the Airflow
part: it reads its inputs (XComArgs, validated into their models), calls the step, and turns the answer into
what Airflow needs (a short-circuit condition, an Asset event, a failed or skipped task). The steps themselves
know nothing of Airflow, so they are tested as functions (tests/test_steps.py):

- ``decide``: retrain, skip or stop, with reasons; a stop withdraws the batches with bad labels.
- ``gate``: the evaluation's verdict, or ``GateFailed`` with the failed gates' numbers.
- ``champion_event``: what the champion Asset's event says about a promotion.
- ``summarize``: the run summary, stored with the run, and the record that the snapshot was trained on.

Each writes what the run keeps to storage (decide/result.json, summary.json, the trained-on record) and returns
its result; logging the result is the wrapper's (it goes to the task's log).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks import storage
from tasks.contracts import (
    Decision, DriftResult, EvaluateResult, IngestResult, Outcome, PublishResult, Result, RunContext, TaskIds,
)
from tasks.data import withdraw
from tasks.decide import approval, champion_events, decision, registry
from tasks.decide.summary import build_summary
from tasks.errors import GateFailed
from tasks.spec import ApprovalSpec, Layout, PipelineSpec, load_spec


def run_spec(run: RunContext) -> PipelineSpec:
    """The spec ``prepare_run`` froze for the run (the file plus the trigger form's overrides)."""
    return load_spec(storage.join(run.run_uri, "spec.json"))


# ---------------------------------------------------------------- decide


def decide(spec: PipelineSpec, run: RunContext, snapshot: IngestResult, drift: DriftResult) -> Decision:
    """Retrain, skip or stop (``tasks.decide.decision``), stored as ``decide/result.json``. A stop on bad labels
    withdraws their batches from the latest snapshot first (``withdraw_bad_batches``)."""
    trained = trained_record(spec.layout, snapshot.snapshot_id) if snapshot.snapshot_id else None
    result = decision.decide_retrain(spec, snapshot, drift, run.champion, force=run.force_retrain, trained=trained)
    if result.stopped and result.withdraw_batches:
        result.withdrawn = withdraw_bad_batches(spec, run, result)
    storage.write_json(storage.join(run.run_uri, TaskIds.DECIDE, "result.json"), result.dump())
    return result


def verdict_line(result: Decision) -> str:
    """``RETRAIN|SKIP|STOP: reasons``, the decide task's log line."""
    verdict = "RETRAIN" if result.retrain else "STOP" if result.stopped else "SKIP"
    return f"{verdict}: " + "; ".join(result.reasons)


def withdraw_bad_batches(spec: PipelineSpec, run: RunContext, result: Decision) -> dict[str, Any]:
    """Take the batches with bad labels out of the latest snapshot (tasks.data.withdraw), so the next night does
    not stop on them again and a corrected file can land; a reason added to ``result`` says what was done and how
    to undo it."""
    done = withdraw.withdraw(spec, result.withdraw_batches, reason=" ".join(result.reasons), run_key=run.run_key)
    if done["withdrawn"]:
        files = sorted({key for keys in done["files"].values() for key in keys})
        ids = " ".join(done["withdrawn"])
        result.reasons.append(
            f"Withdrew batch {', '.join(done['withdrawn'])} (files: {', '.join(files) or 'unknown'}) from the latest "
            f"snapshot, now {done['snapshot_id']}: nothing trains on it. Land corrected files to replace it; if its "
            f"labels are right (a real concept shift), put it back with `python -m tasks withdraw --spec "
            f"{storage.join(run.run_uri, 'spec.json')} --readmit {ids} --reason ...`.")
    return done


def trained_record(layout: Layout, snapshot_id: str) -> dict[str, Any] | None:
    """The record a finished run left for a snapshot it trained on (``record_trained``), or None."""
    uri = layout.trained(snapshot_id)
    return storage.read_json(uri) if storage.exists(uri) else None


# ---------------------------------------------------------------- gate


class GateVerdict(BaseModel):
    """The gate task's result: passed, or failed with a person's override to be asked for (the approve task)."""

    model_config = ConfigDict(extra="forbid")

    passed: bool
    report_uri: str | None
    override_requested: bool = False

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True)  # {passed, report_uri}, as in XCom before


def gate(evaluation: EvaluateResult, policy: ApprovalSpec, dry_run: bool) -> GateVerdict:
    """Passed; or failed and, with approval.policy override_failed_gate (or always_and_override) on a run that
    may promote, waiting for a person's override; otherwise GateFailed, naming each failed gate with its value
    and threshold, and the report."""
    if evaluation.passed:
        return GateVerdict(passed=True, report_uri=evaluation.report_uri)
    if policy.on_fail and not dry_run:
        return GateVerdict(passed=False, report_uri=evaluation.report_uri, override_requested=True)
    failed = [g for g in evaluation.gates if not g.passed and not g.skipped]
    detail = "; ".join(f"{g.name}: {_number(g.value)} vs threshold {_number(g.threshold)}" for g in failed)
    names = ", ".join(g.name for g in failed) or ", ".join(evaluation.failed_gates) or "unknown"
    raise GateFailed(f"gates failed: {names}" + (f" ({detail})" if detail else "")
                     + f"; report: {evaluation.report_md_uri}")


def _number(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


# ---------------------------------------------------------------- the champion's Asset event


def champion_event(spec: PipelineSpec, published: PublishResult) -> dict[str, Any]:
    """The extra of the champion Asset's event for a promotion (tasks/decide/champion_events.py): the pointer
    as it is, or, when it moved again since (a rollback), as publish left it."""
    pointer = registry.read_champion(spec) or {}
    if pointer.get("version") != published.version:
        pointer = {"version": published.version, "version_uri": published.version_uri,
                   "previous": published.champion_before, "promoted_at": None}
    answer = (published.approval or {}).get("decision")
    event = f"promote-{answer}" if answer in ("approved", "overridden") else "promote"
    return champion_events.extra_for(spec, pointer, event)


# ---------------------------------------------------------------- the run summary


def summarize(run: RunContext, results: dict[str, Result | None], states: dict[str, str | None],
              notes: list[str], with_approval: bool) -> dict[str, Any]:
    """The run summary (tasks.decide.summary) from each stage's result by task id (None: it did not run) and
    the tasks' states, with the person's answer when the pipeline asks for one; stored as ``summary.json``.
    After a verdict on the snapshot (promoted, or blocked by gates) it is recorded as trained on first, so a
    summary with a verdict means the record exists."""
    results = dict(results)
    if results.get(TaskIds.PUBLISH) is None and states.get(TaskIds.PUBLISH) == "failed":
        results[TaskIds.PUBLISH] = refused_publish(run.run_uri)
    summary = build_summary(run, results)
    if with_approval:  # a declined override or an unanswered request ends the run before publish
        approval.summarize(summary, approval.read(run.run_uri))
    summary["task_states"] = states
    if notes:
        summary["notes"] = notes
    record_trained(run, summary)
    write_summary(run.run_uri, summary)
    return summary


def refused_publish(run_uri: str) -> PublishResult | None:
    """The result a failed publish stored before it raised (a refused promotion: the champion moved since the
    candidate was gated; a version that failed verification): published, not promoted, with the reason. None
    when publish failed before that (storage down): the run failed during publishing and may be redone."""
    uri = storage.join(run_uri, TaskIds.PUBLISH, "result.json")
    return PublishResult.read(storage.read_json(uri)) if storage.exists(uri) else None


def record_trained(run: RunContext, summary: dict[str, Any]) -> None:
    """After a verdict on a snapshot (``Outcome.TRAINED``: promoted, or blocked by gates), record it as trained
    on (docs/triggers.md); the first run that trained on it stays on record (nothing is overwritten)."""
    snapshot_id = (summary.get("ingest") or {}).get("snapshot_id")
    if summary["outcome"] not in Outcome.TRAINED or not snapshot_id:
        return
    layout = run_spec(run).layout
    if trained_record(layout, snapshot_id) is None:
        storage.write_json(layout.trained(snapshot_id), {
            "snapshot_id": snapshot_id, "run_key": run.run_key, "run_uri": run.run_uri,
            "run_type": run.run_type, "outcome": summary["outcome"],
            "version": (summary.get("publish") or {}).get("version"),
            "training_mode": (summary.get("training") or {}).get("mode"),  # a blocked incremental: next is full
            "overrides": run.overrides, "recorded_at": datetime.now().astimezone().isoformat(),
        })


def write_summary(run_uri: str, summary: dict[str, Any]) -> None:
    """summary.json; the summary of an earlier try that failed before a verdict (the run was cleared and redone)
    is kept under previous/ first. A run with a verdict is never summarized again (the DAG's tasks skip)."""
    uri = storage.join(run_uri, "summary.json")
    if storage.exists(uri):
        earlier = len(storage.list_objects(storage.join(run_uri, "previous") + "/"))
        storage.copy(uri, storage.join(run_uri, "previous", f"summary-{earlier + 1}.json"), if_none_match=True)
    storage.write_json(uri, summary)
