"""Alerts through real receivers on 127.0.0.1: an aiosmtpd SMTP server and a local HTTP server standing in for
Slack's incoming webhook. The notifiers are the providers' SmtpNotifier / SlackWebhookNotifier, with Airflow
connections from AIRFLOW_CONN_* environment variables."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("airflow")
pytest.importorskip("aiosmtpd")

import retrain_alerts  # noqa: E402  (plugins/ is on sys.path via conftest)
from decision_support import FakeTI, failure_context, make_spec  # noqa: E402
from tasks.decide import gates  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _evaluation() -> dict:
    """A real evaluate-style result: gates computed on arrays where the candidate is clearly worse."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    champ = np.where(rng.random(400) < 0.9, y, 1 - y)
    cand = np.where(rng.random(400) < 0.7, y, 1 - y)
    spec = make_spec("file:///unused")
    passed, first_run, gate_list = gates.evaluate_gates(
        spec.gates, ["negative", "positive"], y,
        teacher=gates.ModelScores(cand, float(np.mean(cand == y)), 0.7),
        student=gates.ModelScores(cand, float(np.mean(cand == y)), 0.7),
        champion_teacher=gates.ModelScores(champ, float(np.mean(champ == y)), 0.9),
        champion_student=gates.ModelScores(champ, float(np.mean(champ == y)), 0.9))
    assert not passed and not first_run
    return {"passed": passed, "first_run": first_run, "gates": [g.to_dict() for g in gate_list],
            "failed_gates": [g.name for g in gate_list if not g.passed],
            "metrics": {"teacher": {"golden_accuracy": float(np.mean(cand == y))}, "student": {}, "champion": None},
            "report_uri": "s3://ml-retrain/runs/sst2/r1/evaluate/gate_report.json",
            "report_md_uri": "s3://ml-retrain/runs/sst2/r1/evaluate/gate_report.md"}


def _xcoms(evaluation: dict) -> dict:
    return {
        ("prepare_run", None): {"pipeline": "sst2", "run_uri": "s3://ml-retrain/runs/sst2/r1",
                                "champion": {"version": "v20261101-020000-abc123",
                                             "version_uri": "s3://ml-retrain/models/sst2/v20261101-020000-abc123"},
                                "champion_version": "v20261101-020000-abc123"},
        ("decide", "decision"): {"retrain": True, "reasons": ["drift detected: label_psi, vocab_js",
                                                              "1200 new rows since the champion's snapshot"]},
        ("drift", None): {"drift_detected": True, "summary": "2 of 6 checks drifted",
                          "checks": {"label_psi": {"statistic": 0.31, "threshold": 0.2, "drifted": True},
                                     "length_ks": {"statistic": 0.02, "threshold": 0.01, "drifted": False}}},
        ("evaluate", None): evaluation,
    }


def test_gate_failure_alert_reaches_smtp_and_slack_with_numbers(receivers):
    smtp, hook = receivers
    evaluation = _evaluation()
    spec = make_spec("file:///unused")
    ti = FakeTI("gate", _xcoms(evaluation))
    from airflow.sdk.exceptions import AirflowFailException

    context = failure_context(ti, AirflowFailException("gates failed: non_inferiority_teacher"))
    notifiers = retrain_alerts.gate_failure_notifiers(spec)
    assert [type(n).__name__ for n in notifiers] == ["RetrainEmailNotifier", "RetrainSlackNotifier"]
    for notifier in notifiers:
        notifier(context)  # BaseNotifier.__call__: render templates, then notify(), as Airflow does

    assert len(smtp.messages) == 1 and len(hook.posts) == 1
    mail = smtp.messages[0]
    assert mail["to"] == ["oncall@example.com"]
    assert mail["subject"].startswith("[retrain:sst2] gate failed: ")
    ni = next(g for g in evaluation["gates"] if g["name"] == "non_inferiority_teacher")
    assert "non_inferiority_teacher" in mail["subject"]
    body = mail["body"]
    # each failed gate with its numbers and threshold
    for g in evaluation["gates"]:
        if not g["passed"]:
            assert g["name"] in body
    assert f"value {ni['value']:.4f}, threshold {ni['threshold']:.4f}" in body
    assert "CI [" in body                                   # the interval is in the reason
    assert "drift detected: label_psi, vocab_js" in body    # the decision's reasons
    assert "label_psi: statistic 0.3100 vs threshold 0.2000" in body  # the drift summary
    assert "Champion that stays in place: v20261101-020000-abc123" in body
    assert evaluation["report_md_uri"] in body
    assert "http://airflow.example:8080/dags/retrain_sst2/runs/scheduled__2026-11-23T02%3A00%3A00%2B00%3A00" in body
    slack = hook.posts[0]
    assert slack["path"] == "/services/T0/B0/X"
    assert "[retrain:sst2] gate failed:" in slack["json"]["text"]
    assert f"value {ni['value']:.4f}, threshold {ni['threshold']:.4f}" in slack["json"]["text"]


def test_infra_failure_alert_has_a_different_subject(receivers):
    smtp, hook = receivers
    spec = make_spec("file:///unused")
    ti = FakeTI("finetune", _xcoms({}), try_number=3, max_tries=2)
    context = failure_context(ti, RuntimeError("pod finetune-abc OOMKilled"))
    for notifier in retrain_alerts.infra_failure_notifiers(spec):
        notifier(context)
    assert len(smtp.messages) == 1 and len(hook.posts) == 1
    subject = smtp.messages[0]["subject"]
    assert subject.startswith("[retrain:sst2] pipeline broken: finetune failed after 3 tries")
    assert "gate failed" not in subject
    body = smtp.messages[0]["body"]
    assert "RuntimeError: pod finetune-abc OOMKilled" in body
    assert "try 3 of 3" in body
    assert "/tasks/finetune?try_number=3" in body
    assert "Champion that stays in place: v20261101-020000-abc123" in body
    assert "pipeline broken: finetune" in hook.posts[0]["json"]["text"]


def test_unreachable_smtp_server_raises_instead_of_passing_silently(monkeypatch):
    """Nothing listens on the port: the notifier raises (Airflow logs the callback failure)."""
    from conftest import free_port

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TEST",
                       '{"conn_type": "smtp", "host": "127.0.0.1", "port": %d, "extra": {"disable_ssl": true, '
                       '"disable_tls": true, "from_email": "a@example.com", "timeout": 2, "retry_limit": 0}}'
                       % free_port())
    spec = make_spec("file:///unused")
    email = retrain_alerts.gate_failure_notifiers(spec)[0]
    with pytest.raises(OSError):
        email(failure_context(FakeTI("gate", _xcoms(_evaluation())), RuntimeError("x")))


def test_deadline_alert_definition_and_callback_send(receivers):
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    smtp, hook = receivers
    spec = make_spec("file:///unused")
    alert = retrain_alerts.deadline_alert(spec)
    assert isinstance(alert, DeadlineAlert)
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval.total_seconds() == spec.schedule.nightly_deadline_minutes * 60
    assert isinstance(alert.callback, AsyncCallback)
    assert alert.callback.path == "retrain_alerts.deadline_missed"
    # what the triggerer does: import the path, await it with the kwargs and the scheduler's simple context
    context = {"dag_run": {"dag_id": "retrain_sst2", "run_id": "scheduled__2026-11-23T02:00:00+00:00",
                           "state": "running", "queued_at": "2026-11-23T02:00:01Z"},
               "deadline": {"id": "d1", "deadline_time": "2026-11-23T05:00:01Z"}}
    subject = asyncio.run(retrain_alerts.deadline_missed(**alert.callback.kwargs, context=context))
    assert subject.startswith("[retrain:sst2] deadline missed: run scheduled__2026-11-23T02:00:00+00:00")
    assert len(smtp.messages) == 1 and len(hook.posts) == 1
    assert smtp.messages[0]["subject"] == subject
    assert "180 minutes" in smtp.messages[0]["body"] and "2026-11-23T05:00:01Z" in smtp.messages[0]["body"]
    assert "deadline missed" in hook.posts[0]["json"]["text"]


def test_no_targets_no_notifiers():
    spec = make_spec("file:///unused")
    spec.alerts.email = []
    spec.alerts.slack_conn_id = None
    assert retrain_alerts.gate_failure_notifiers(spec) == []
    assert retrain_alerts.deadline_alert(spec) is None
