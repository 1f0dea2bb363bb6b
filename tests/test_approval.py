"""Approval without Airflow: policy x gate outcome -> what happens (tasks/decide/approval.py), and what the publish
stage does with a person's answer (promote, publish as rejected, override on the record) on a real S3 API (moto
on 127.0.0.1). The live flow through Airflow's Required actions is tests/test_live_airflow.py."""

from __future__ import annotations

import logging

import pytest

from decision_support import make_spec, write_snapshot
from test_dags import PARSE_CPU, PARSE_CPU_LIMIT_S
from tasks import storage
from tasks.contracts import DriftResult, EvaluateResult, Outcome
from tasks.decide import approval, publish, registry
from tasks.manifests import VersionManifest
from tasks.spec import parse_spec

pytestmark = pytest.mark.timeout(80)

ALICE = {"id": "alice", "name": "alice"}


def policy(name: str):
    spec = make_spec("file:///unused")
    return spec.approval.model_copy(update={"policy": name})


@pytest.mark.parametrize("name, passed, dry_run, asked", [
    ("never", True, False, None), ("never", False, False, None),
    ("always", True, False, "approval"), ("always", False, False, None),
    ("override_failed_gate", True, False, None), ("override_failed_gate", False, False, "override"),
    ("always_and_override", True, False, "approval"), ("always_and_override", False, False, "override"),
    ("always_and_override", True, True, None), ("always_and_override", False, True, None),
])
def test_policy_and_gate_outcome_decide_whether_a_person_is_asked(name, passed, dry_run, asked):
    assert approval.question(policy(name), passed, dry_run) == asked


@pytest.mark.parametrize("kind, chosen, reason, decision, promotes", [
    ("approval", "Approve", "", approval.APPROVED, True),
    ("approval", "Reject", "latency too close to budget", approval.REJECTED, False),
    ("override", "Approve", "golden set mislabels the new slang; checked 40 rows", approval.OVERRIDDEN, True),
    ("override", "Approve", "  ", approval.DECLINED, False),  # an override needs a reason
    ("override", "Reject", "agree with the gate", approval.DECLINED, False),
])
def test_an_answer_is_a_decision_with_who_and_why(kind, chosen, reason, decision, promotes):
    answer = approval.answer("always_and_override", kind, [chosen], reason, ALICE, "2026-12-06T08:00:00+00:00")
    assert answer["decision"] == decision and answer["promote"] is promotes
    assert answer["responded_by"] == ALICE and approval.responder(answer) == "alice"
    assert ("by alice" in approval.headline(answer)) and (answer["reason"] or "") in approval.headline(answer)
    if decision == approval.DECLINED and chosen == "Approve":
        assert "needs a reason" in answer["reason"]


def test_an_answer_outside_the_options_is_an_error():
    with pytest.raises(ValueError):
        approval.answer("always", "approval", ["Maybe"], None, ALICE, None)
    with pytest.raises(ValueError):
        approval.answer("always", "approval", ["Approve", "Reject"], None, ALICE, None)


def test_publish_verdict_never_promotes_what_the_answer_does_not_cover():
    assert approval.publish_verdict(None, True) == (True, None)  # no approval step: the gates alone decide
    assert approval.publish_verdict(None, False) == (False, None)
    approved = approval.answer("always", "approval", ["Approve"], "ok", ALICE, None)
    overridden = approval.answer("override_failed_gate", "override", ["Approve"], "why", ALICE, None)
    assert approval.publish_verdict(approved, True)[0] is True
    assert approval.publish_verdict(approved, False)[0] is False  # an approval of a passed candidate only
    assert approval.publish_verdict(overridden, False)[0] is True
    assert approval.publish_verdict(approval.timed_out("always", "approval", 5), True)[0] is False


def test_summary_says_timed_out_and_declined_runs_for_what_they_are():
    summary = {"outcome": Outcome.FAILED_IN_TRAINING}
    approval.summarize(summary, approval.timed_out("always", "approval", 30))
    assert summary["outcome"] == Outcome.NOT_APPROVED and summary["approval"]["decision"] == "timed_out"
    summary = {"outcome": Outcome.FAILED_IN_TRAINING}
    approval.summarize(summary, approval.answer("override_failed_gate", "override", ["Reject"], "no", ALICE, None))
    assert summary["outcome"] == Outcome.BLOCKED
    untouched = {"outcome": Outcome.PROMOTED}
    assert approval.summarize(dict(untouched), None) == untouched


def test_the_question_body_carries_the_gate_report_intervals_drift_and_registry_link():
    evaluation = {
        "passed": True, "first_run": False, "failed_gates": [], "report_md_uri": "s3://b/runs/x/evaluate/gate_report.md",
        "gates": [{"name": "non_inferiority_teacher", "passed": True, "value": -0.004, "threshold": -0.01,
                   "reason": "CI lower bound -0.0040 >= -0.0100"}],
        "metrics": {"teacher": {"golden_accuracy": 0.91, "golden_accuracy_ci": [0.89, 0.93], "golden_macro_f1": 0.9},
                    "student": {"golden_accuracy": 0.9}, "champion": {"teacher": {"golden_accuracy": 0.905}}}}
    drift = {"drift_detected": True, "summary": "1 of 5 checks drifted",
             "checks": {"length_ks": {"drifted": True, "statistic": 0.12, "threshold": 0.1}}}
    text = approval.body(pipeline="sst2", kind="approval", evaluation=EvaluateResult.read(evaluation),
                         drift=DriftResult.read(drift),
                         reasons=["drift with 300 new rows"], champion="v1",
                         registry_url="http://af/retrain-registry/pipelines/sst2", timeout_minutes=60)
    assert "| non_inferiority_teacher | pass | -0.0040 | -0.0100 |" in text
    assert "0.9100 [0.8900, 0.9300]" in text and "champion teacher" in text
    assert "DETECTED - 1 of 5 checks drifted" in text and "length_ks: statistic 0.1200" in text
    assert "(http://af/retrain-registry/pipelines/sst2)" in text and "drift with 300 new rows" in text
    assert "Champion now: `v1`" in text and "60 min" in text
    override = approval.body(pipeline="sst2", kind="override", evaluation=EvaluateResult.read(
                             {**evaluation, "passed": False, "failed_gates": ["min_accuracy"]}), drift=None,
                             reasons=[], champion=None,
                             registry_url="http://af/r")
    assert "FAILED its gates** (min_accuracy)" in override and "reason is required" in override
    assert "no drift result" in override


def test_approval_defaults_to_never_and_rejects_unknown_policies():
    spec = make_spec("file:///unused")
    assert spec.approval.policy == "never" and not spec.approval.on_pass and not spec.approval.on_fail
    raw = spec.model_dump(mode="json")
    raw["approval"] = {"policy": "sometimes"}
    with pytest.raises(Exception, match="approval"):
        parse_spec(raw)


# ---------------------------------------------------------------- the publish stage with an answer


@pytest.fixture
def env(s3_env, tiny_model_dir):
    from conftest import read_sst2

    spec = make_spec(s3_env)
    snap = write_snapshot(spec, read_sst2("train", limit=20), read_sst2("dev", limit=10))
    model_uri = storage.join(s3_env, "scratch", "model")
    storage.upload_dir(tiny_model_dir, model_uri)
    return spec, snap, model_uri


def _answered_run(spec, key: str, passed: bool, answer: dict | None) -> str:
    from test_registry import _evaluated_run

    run = _evaluated_run(spec, key, passed)
    if answer is not None:
        approval.write(run, answer)
    return run


def _publish(spec, snap, model, run, expected=None):
    return publish.run(run, snap, model, model, storage.join(run, "evaluate", "result.json"), expected,
                       approval=True).dump()


def test_approved_candidate_is_promoted_and_the_audit_and_card_name_the_responder(env):
    spec, snap, model = env
    answer = approval.answer("always", "approval", ["Approve"], "numbers look right", ALICE, "2026-12-06T08:00:00Z")
    result = _publish(spec, snap, model, _answered_run(spec, "r1", True, answer))
    assert result["promoted"] and approval.responder(result["approval"]) == "alice"
    assert result["approval"]["reason"] == "numbers look right"
    assert result["approval"]["decision"] == "approved"
    (record,) = registry.read_audit(spec)
    assert record["event"] == "promote-approved" and record["approved_by"] == "alice"
    assert record["approval"]["reason"] == "numbers look right"
    manifest = registry.read_manifest(spec, result["version"])
    assert manifest.approval["responded_by"] == ALICE
    card = storage.read_text(result["model_cards"]["student"])
    assert "## Approval" in card and "| answered by | alice |" in card and "numbers look right" in card
    assert registry.verify(spec, result["version"])["ok"]


def test_rejected_candidate_is_published_as_rejected_and_not_promoted(env):
    spec, snap, model = env
    answer = approval.answer("always", "approval", ["Reject"], "wait for the holiday data", ALICE, None)
    result = _publish(spec, snap, model, _answered_run(spec, "r1", True, answer))
    assert not result["promoted"] and result["approval"]["decision"] == approval.REJECTED
    assert approval.responder(result["approval"]) == "alice"
    assert registry.read_champion(spec) is None
    assert registry.read_manifest(spec, result["version"]).approval["decision"] == "rejected"
    (record,) = registry.read_audit(spec)
    assert record["event"] == "rejected" and record["actor"] == "alice" and record["version"] == result["version"]


def test_overridden_failed_gate_is_promoted_and_marked_overridden_everywhere(env):
    spec, snap, model = env
    answer = approval.answer("override_failed_gate", "override", ["Approve"], "gate set stale; signed off by ML lead",
                             ALICE, None)
    result = _publish(spec, snap, model, _answered_run(spec, "r1", False, answer))
    assert result["promoted"] and result["approval"]["decision"] == approval.OVERRIDDEN
    assert approval.responder(result["approval"]) == "alice"
    manifest = registry.read_manifest(spec, result["version"])
    assert manifest.evaluation["passed"] is False and manifest.approval["decision"] == "overridden"
    (record,) = registry.read_audit(spec)
    assert record["event"] == "promote-overridden" and record["approved_by"] == "alice"
    card = storage.read_text(result["model_cards"]["teacher"])
    assert "OVERRIDDEN" in card and "gate set stale" in card
    import registry_ui_app  # the registry page's data: the version carries the override and who made it

    view = registry_ui_app.version_view(spec, result["version"], result["version"])
    assert view["approval"]["decision"] == "overridden" and view["approval"]["by"] == "alice"
    assert "OVERRIDDEN by alice" in view["approval"]["headline"]


def test_publish_with_approval_but_no_answer_on_record_promotes_nothing(env):
    spec, snap, model = env
    result = _publish(spec, snap, model, _answered_run(spec, "r1", True, None))
    assert not result["promoted"] and "no answer" in result["reason"]
    assert registry.read_champion(spec) is None


def test_without_approval_publish_behaves_as_before(env):
    spec, snap, model = env
    from test_registry import _evaluated_run

    run = _evaluated_run(spec, "r1", True)
    result = publish.run(run, snap, model, model, storage.join(run, "evaluate", "result.json"), None).dump()
    assert result["promoted"] and result["approval"] is None
    assert "approval" not in registry.read_manifest(spec, result["version"]).dump()  # not stored at all
    assert "## Approval" not in storage.read_text(result["model_cards"]["student"])
    assert [r["event"] for r in registry.read_audit(spec)] == ["promote"]


# ---------------------------------------------------------------- the DAG, with and without approval


# The CPU time of each file's parse, counted as tests/test_dags.py counts it (wall time depends on the load).
PROBE = """
import json, sys, time
import airflow.sdk  # Airflow's own import cost is not ours
from airflow.dag_processing.dagbag import DagBag
""" + PARSE_CPU + """
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags["retrain_sst2"]
print(json.dumps({"stats": {s.file.rsplit("/", 1)[-1]: s.duration.total_seconds() for s in bag.dagbag_stats},
                  "cpu": {f.rsplit("/", 1)[-1]: seconds for f, seconds in parse_cpu.items()},
                  "errors": list(bag.import_errors), "tasks": sorted(dag.task_dict),
                  "publish_upstream": sorted(dag.get_task("publish").upstream_task_ids),
                  "publish_args": [a for a in dag.get_task("publish").arguments if isinstance(a, str)],
                  "approve_type": type(dag.task_dict["approve"]).__mro__[1].__name__ if "approve" in dag.task_dict else None,
                  "timeout": dag.task_dict["approve"].response_timeout.total_seconds() if "approve" in dag.task_dict else None,
                  "hitl_imported": "airflow.providers.standard.operators.hitl" in sys.modules,
                  "deploy": sorted(d for d in bag.dag_ids if d.startswith("deploy_")),
                  "deploy_paused": [bag.dags[d].is_paused_upon_creation for d in bag.dag_ids if d.startswith("deploy_")]}))
"""


def _parse(tmp_path, policy: str | None) -> dict:
    import json
    import os
    import subprocess
    import sys

    import yaml

    from conftest import ROOT

    folder = tmp_path / (policy or "none")
    folder.mkdir()
    raw = yaml.safe_load((ROOT / "include" / "pipelines" / "sst2.yaml").read_text())
    if policy:
        raw["approval"] = {"policy": policy, "timeout_minutes": 90, "approvers": ["alice"]}
    (folder / "sst2.yaml").write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "dags")], capture_output=True, text=True,
                         timeout=180, check=True, env={**os.environ, "RETRAIN_PIPELINES_DIR": str(folder)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_dag_asks_between_gate_and_publish_only_when_configured(tmp_path):
    """Without approval: no approve task, publish as before, the HITL operator not even imported; with it: the
    approve task (Airflow's HITLOperator) sits between gate and publish, and publish reads the answer. Both parse
    within the house budget (figures in docs/benchmarks.md)."""
    plain = _parse(tmp_path, None)
    asked = _parse(tmp_path, "always_and_override")
    for result in (plain, asked):
        assert result["errors"] == []
        assert sorted(result["cpu"]) == sorted(result["stats"]), result
        for seconds in result["cpu"].values():
            assert seconds < PARSE_CPU_LIMIT_S, result["cpu"]
    assert "approve" not in plain["tasks"] and "--approval" not in plain["publish_args"]
    assert "gate" in plain["publish_upstream"] and plain["hitl_imported"] is False
    assert set(asked["tasks"]) == set(plain["tasks"]) | {"approve"}
    assert "approve" in asked["publish_upstream"] and "--approval" in asked["publish_args"]
    assert asked["approve_type"] == "HITLOperator" and asked["timeout"] == 90 * 60
    assert plain["deploy"] == ["deploy_sst2"] and plain["deploy_paused"] == [True]  # opt-in: paused on creation
    print(f"\nparse seconds without approval: {plain['stats']} (CPU {plain['cpu']})\n"
          f"with approval: {asked['stats']} (CPU {asked['cpu']})")


# ---------------------------------------------------------------- champion events and alerts, without a running Airflow


def test_a_champion_event_says_what_moved_with_metrics_approval_and_an_idempotency_key():
    from tasks.decide import champion_events

    pointer = {"version": "v2", "version_uri": "s3://b/models/sst2/v2", "previous": "v1",
               "promoted_at": "2026-12-06T08:00:00Z", "snapshot_id": "s1"}
    manifest = VersionManifest(
        evaluation={"metrics": {"student": {"golden_accuracy": 0.9, "golden_accuracy_ci": [0.88, 0.92],
                                            "holdout_loss": 0.3}}},
        approval=approval.answer("always", "approval", ["Approve"], "ok", ALICE, None))
    extra = champion_events.event_extra("sst2", pointer, "promote-approved", manifest)
    assert extra["version"] == "v2" and extra["previous"] == "v1" and extra["version_uri"].endswith("/v2")
    assert extra["metrics"] == {"student": {"golden_accuracy": 0.9, "golden_accuracy_ci": [0.88, 0.92]}}
    assert extra["approval"] == {"decision": "approved", "responded_by": ALICE, "reason": "ok"}
    assert extra["idempotency_key"] == "sst2:v2:2026-12-06T08:00:00Z"
    rollback = champion_events.event_extra("sst2", {**pointer, "version": "v1", "previous": None,
                                                    "rolled_back_from": "v2"}, "rollback", actor="bob")
    assert rollback["previous"] == "v2" and rollback["actor"] == "bob" and "approval" not in rollback


def test_a_cli_move_without_an_airflow_api_says_no_event_was_sent(monkeypatch, caplog):
    from tasks.decide import champion_events

    caplog.set_level(logging.INFO, logger=champion_events.__name__)
    monkeypatch.delenv(champion_events.API_URL_ENV, raising=False)
    spec = make_spec("file:///unused")
    assert champion_events.announce_from_cli(spec, {"version": "v1"}, "rollback") is False
    assert "no champion Asset event sent" in caplog.text
    caplog.clear()
    # configured but unreachable: a warning, never an exception (the move is done and audited)
    monkeypatch.setenv(champion_events.API_URL_ENV, "http://127.0.0.1:9")
    monkeypatch.setenv(champion_events.TOKEN_ENV, "t")
    assert champion_events.announce_from_cli(spec, {"version": "v1"}, "rollback") is False
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "was not sent" in caplog.text


def test_waiting_and_timed_out_alerts_carry_the_link_to_act_on():
    import retrain_alerts
    from approval_gate import ApprovalTimedOut
    from decision_support import FakeTI, failure_context

    evaluation = {"passed": True, "gates": [{"name": "min_accuracy", "passed": True, "value": 0.9, "threshold": 0.5}],
                  "failed_gates": [], "metrics": {}}
    url = "http://af:8080/dags/retrain_sst2/runs/r1/tasks/approve/required_actions?map_index=-1"
    ti = FakeTI("approve", {("evaluate", None): evaluation, ("approve", "required_actions_url"): url}, run_id="r1")
    context = failure_context(ti, ApprovalTimedOut("no answer within 30 min"))
    waiting = retrain_alerts.approval_waiting_message(
        retrain_alerts.collect_alert_info(context, "sst2", "http://af:8080"), retrain_alerts.required_actions_url(context), 30)
    assert "approval needed" in waiting.subject and "r1" in waiting.subject
    assert f"Answer in Required actions: {url}" in waiting.body and "min_accuracy" in waiting.body
    timed_out = retrain_alerts.approval_failure_message(retrain_alerts.collect_alert_info(context, "sst2", "http://af:8080"))
    assert "approval timed out: nothing promoted" in timed_out.subject and "no answer within 30 min" in timed_out.body


def test_the_webhook_is_signed_so_a_receiver_can_check_it_and_drop_duplicates():
    from tasks.decide import champion_events

    extra = {"version": "v2", "idempotency_key": "sst2:v2:2026-12-06T08:00:00Z"}
    body, headers = champion_events.webhook_request("s3cret", extra, now=1_765_000_000)
    assert headers[champion_events.IDEMPOTENCY_HEADER] == extra["idempotency_key"]
    timestamp, signature = headers[champion_events.TIMESTAMP_HEADER], headers[champion_events.SIGNATURE_HEADER]
    assert timestamp == "1765000000" and signature.startswith("sha256=")
    assert champion_events.verify_signature("s3cret", timestamp, body, signature)
    assert not champion_events.verify_signature("other", timestamp, body, signature)
    assert not champion_events.verify_signature("s3cret", timestamp, body.replace(b"v2", b"v3"), signature)
    assert not champion_events.verify_signature("s3cret", "1765000001", body, signature)  # a replayed body
