"""The retrain DAG's light steps (tasks/decide/steps.py) as plain functions over the typed results, on local
storage and without Airflow: decide (retrain, skip on a snapshot already trained on, stop and withdraw a batch
with bad labels), the gate's verdict, the champion's Asset event, and the run summary with its trained-on record.
The DAG wiring around them is tested by test_dags.py and, end to end, test_e2e_dag.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, read_sst2
from data_helpers import land, make_spec, put_golden, run_folder, tsv_bytes
from tasks import storage
from tasks.contracts import (
    Decision, DriftResult, EvaluateResult, GateResult, IngestResult, Outcome, PublishResult, RunContext, TaskIds,
)
from tasks.decide import steps
from tasks.errors import GateFailed
from tasks.spec import ApprovalSpec


@pytest.fixture
def spec(tmp_path):
    return make_spec("file://" + str(tmp_path / "store"))


def run_context(spec, key: str = "retrain-r1", **fields) -> RunContext:
    return RunContext(pipeline=spec.name, run_uri=run_folder(spec, key), run_key=key, run_type="manual", **fields)


def stored_decision(run: RunContext) -> dict:
    return storage.read_json(storage.join(run.run_uri, TaskIds.DECIDE, "result.json"))


# ---------------------------------------------------------------- decide


def test_decide_returns_the_decision_and_stores_it_with_the_run(spec):
    run = run_context(spec)
    snapshot = IngestResult(snapshot_id="s1", changed=True, new_rows=500, total_rows=500)
    decision = steps.decide(spec, run, snapshot, DriftResult(first_run=True, new_rows=500))
    assert isinstance(decision, Decision)
    assert decision.retrain and decision.triggers == ["first_run"] and not decision.stopped
    assert stored_decision(run) == decision.dump()
    assert steps.verdict_line(decision) == "RETRAIN: " + "; ".join(decision.reasons)


def test_decide_skips_a_snapshot_a_finished_run_trained_on(spec):
    storage.write_json(spec.layout.trained("s1"), {"snapshot_id": "s1", "run_key": "retrain-r0",
                                                   "outcome": Outcome.BLOCKED, "version": None})
    run = run_context(spec)
    decision = steps.decide(spec, run, IngestResult(snapshot_id="s1", new_rows=500),
                            DriftResult(first_run=True, new_rows=500))
    assert not decision.retrain and decision.triggers == []
    assert decision.already_trained and decision.snapshot_id == "s1"
    assert steps.verdict_line(decision) == "SKIP: " + "; ".join(decision.reasons)
    forced = steps.decide(spec, run_context(spec, force_retrain=True), IngestResult(snapshot_id="s1", new_rows=500),
                          DriftResult(first_run=True, new_rows=500))
    assert forced.retrain and forced.triggers == ["forced"]


def test_a_stop_withdraws_the_batch_with_bad_labels_and_says_how_to_undo_it(spec):
    """A real ingest of two batches; the drift result flags the second one's labels."""
    from tasks.data import snapshots, withdraw
    from tasks.data.ingest import run_ingest

    put_golden(spec)
    land(spec, "day1.tsv", tsv_bytes(read_sst2("train", limit=120)))
    first = run_ingest(spec, run_folder(spec, "ingest-1"))
    land(spec, "day2.tsv", tsv_bytes([(t, 1 - label) for t, label in read_sst2("train", limit=80, offset=120)]))
    second = IngestResult.model_validate(run_ingest(spec, run_folder(spec, "ingest-2")))
    champion = {"version": "v1", "version_uri": spec.layout.version("v1"), "snapshot_id": first["snapshot_id"]}
    run = run_context(spec, champion=champion)
    drift = DriftResult(new_rows=80, label_quality={"flagged": True, "flagged_batches": [second.batch_id],
                                                    "verdict": "the new labels disagree with the champion"})

    decision = steps.decide(spec, run, second, drift)
    assert decision.stopped and not decision.retrain and decision.withdraw_batches == [second.batch_id]
    assert decision.withdrawn["withdrawn"] == [second.batch_id]
    assert decision.withdrawn["snapshot_id"] == first["snapshot_id"]  # the snapshot before the bad batch
    assert snapshots.read_latest(spec.layout.snapshots)[0]["snapshot_id"] == first["snapshot_id"]
    assert storage.exists(withdraw.withdrawn_uri(spec.layout.snapshots, second.batch_id))
    undo = decision.reasons[-1]
    assert undo.startswith(f"Withdrew batch {second.batch_id} (files: day2.tsv)")
    assert f"--readmit {second.batch_id}" in undo and storage.join(run.run_uri, "spec.json") in undo
    assert stored_decision(run) == decision.dump()
    assert steps.verdict_line(decision).startswith("STOP: Stopped before training: the new labels disagree")


# ---------------------------------------------------------------- gate


FAILED = EvaluateResult(
    passed=False, failed_gates=["non_inferiority_teacher"], report_uri="file:///r/report.json",
    report_md_uri="file:///r/report.md",
    gates=[GateResult(name="non_inferiority_teacher", passed=False, value=-0.0412, threshold=-0.02),
           GateResult(name="class_recall", passed=False, skipped=True),
           GateResult(name="min_accuracy", passed=True, value=0.9, threshold=0.5)])


def test_a_passed_gate_returns_the_report():
    verdict = steps.gate(EvaluateResult(passed=True, report_uri="file:///r/report.json"), ApprovalSpec(), False)
    assert verdict.passed and not verdict.override_requested
    assert verdict.dump() == {"passed": True, "report_uri": "file:///r/report.json"}


def test_a_failed_gate_raises_with_each_failed_gates_numbers():
    with pytest.raises(GateFailed) as failed:
        steps.gate(FAILED, ApprovalSpec(policy="never"), False)
    assert str(failed.value) == ("gates failed: non_inferiority_teacher (non_inferiority_teacher: -0.0412 vs "
                                 "threshold -0.0200); report: file:///r/report.md")


def test_a_failed_gate_waits_for_an_override_only_where_the_policy_allows_and_the_run_may_promote():
    for policy in ("override_failed_gate", "always_and_override"):
        verdict = steps.gate(FAILED, ApprovalSpec(policy=policy), False)
        assert verdict.dump() == {"passed": False, "report_uri": "file:///r/report.json", "override_requested": True}
    for policy, dry_run in (("always", False), ("override_failed_gate", True)):
        with pytest.raises(GateFailed):
            steps.gate(FAILED, ApprovalSpec(policy=policy), dry_run)


# ---------------------------------------------------------------- the champion's Asset event


def test_the_champion_event_names_the_promoted_version_and_the_answer(spec):
    storage.write_json(spec.layout.champion, {"version": "v2", "version_uri": spec.layout.version("v2"),
                                              "previous": "v1", "promoted_at": "2026-12-06T01:00:00+00:00"})
    published = PublishResult(version="v2", version_uri=spec.layout.version("v2"), promoted=True,
                              champion_before="v1")
    extra = steps.champion_event(spec, published)
    assert (extra["event"], extra["version"], extra["previous"]) == ("promote", "v2", "v1")
    assert extra["promoted_at"] == "2026-12-06T01:00:00+00:00"
    approved = published.model_copy(update={"approval": {"decision": "approved"}})
    assert steps.champion_event(spec, approved)["event"] == "promote-approved"
    # Rolled back since: the event still says what publish did.
    storage.write_json(spec.layout.champion, {"version": "v1", "version_uri": spec.layout.version("v1")})
    moved = steps.champion_event(spec, published)
    assert (moved["version"], moved["previous"], moved["promoted_at"]) == ("v2", "v1", None)


# ---------------------------------------------------------------- the run summary


SUMMARIZED = (TaskIds.INGEST, TaskIds.DRIFT, TaskIds.DECIDE, TaskIds.FINETUNE, TaskIds.DISTILL, TaskIds.EVALUATE,
              TaskIds.PUBLISH)
STATES = {task: "success" for task in SUMMARIZED}


def blocked_results() -> dict:
    return {TaskIds.INGEST: IngestResult(snapshot_id="s2", new_rows=600),
            TaskIds.DRIFT: DriftResult(drift_detected=True),
            TaskIds.DECIDE: Decision(retrain=True, reasons=["drift"], triggers=["drift"]),
            TaskIds.FINETUNE: None, TaskIds.DISTILL: None,
            TaskIds.EVALUATE: FAILED, TaskIds.PUBLISH: None}


def test_a_skip_is_summarized_and_stored_but_not_recorded_as_trained(spec):
    run = run_context(spec)
    results = {task: None for task in STATES} | {
        TaskIds.INGEST: IngestResult(snapshot_id="s1"),
        TaskIds.DECIDE: Decision(retrain=False, reasons=["Skipped: no new snapshot."])}
    states = STATES | {task: "skipped" for task in (TaskIds.FINETUNE, TaskIds.DISTILL, TaskIds.EVALUATE,
                                                    TaskIds.PUBLISH)}
    summary = steps.summarize(run, results, states, [], with_approval=False)
    assert summary["outcome"] == Outcome.SKIPPED and summary["task_states"] == states and "notes" not in summary
    assert storage.read_json(storage.join(run.run_uri, "summary.json")) == summary
    assert steps.trained_record(spec.layout, "s1") is None


def test_a_blocked_run_records_its_snapshot_as_trained_once(spec):
    first = run_context(spec, "retrain-r1", overrides={"gates.min_accuracy": 0.99})
    states = STATES | {TaskIds.PUBLISH: "skipped"}
    summary = steps.summarize(first, blocked_results(), states, ["a note"], with_approval=False)
    assert summary["outcome"] == Outcome.BLOCKED and summary["notes"] == ["a note"]
    record = steps.trained_record(spec.layout, "s2")
    assert (record["run_key"], record["outcome"], record["overrides"]) == (
        "retrain-r1", Outcome.BLOCKED, {"gates.min_accuracy": 0.99})
    second = run_context(spec, "retrain-r2")
    steps.summarize(second, blocked_results(), states, [], with_approval=False)
    assert steps.trained_record(spec.layout, "s2")["run_key"] == "retrain-r1"  # the first stays on record


def test_a_redone_run_keeps_its_earlier_summary_and_reads_a_refused_publish(spec):
    run = run_context(spec)
    failed_early = {task: None for task in STATES}
    steps.summarize(run, failed_early, STATES | {TaskIds.INGEST: "failed"}, [], with_approval=False)
    refused = PublishResult(version="v3", version_uri=spec.layout.version("v3"), promoted=False,
                            reason="the champion moved since the candidate was gated")
    storage.write_json(storage.join(run.run_uri, TaskIds.PUBLISH, "result.json"), refused.dump())
    results = blocked_results() | {TaskIds.EVALUATE: EvaluateResult(passed=True)}
    summary = steps.summarize(run, results, STATES | {TaskIds.PUBLISH: "failed"}, [], with_approval=False)
    assert summary["outcome"] == Outcome.PUBLISHED_NOT_PROMOTED
    assert summary["publish"]["reason"] == refused.reason
    earlier = storage.read_json(storage.join(run.run_uri, "previous", "summary-1.json"))
    assert earlier["outcome"] == Outcome.FAILED_BEFORE_DECISION


def test_the_steps_import_no_airflow():
    code = "import sys, tasks.decide.steps; sys.exit(1 if any(m.startswith('airflow') for m in sys.modules) else 0)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
