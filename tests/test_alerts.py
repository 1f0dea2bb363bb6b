"""Alerts through real receivers on 127.0.0.1: an aiosmtpd SMTP server and a local HTTP server standing in for
Slack's incoming webhook. The notifiers are the providers' SmtpNotifier / SlackWebhookNotifier, with Airflow
connections from AIRFLOW_CONN_* environment variables."""

from __future__ import annotations

import asyncio
import html
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("airflow")
pytest.importorskip("aiosmtpd")

import retrain_alerts  # noqa: E402  (plugins/ is on sys.path: pytest.ini pythonpath)
from decision_support import FakeTI, failure_context, make_spec  # noqa: E402
from tasks.contracts import TaskIds  # noqa: E402
from tasks.decide import gates  # noqa: E402
from tasks.spec import SpecError  # noqa: E402

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


def _xcoms(evaluation: dict | None, drift_summary: str = "2 of 6 checks drifted") -> dict:
    """The XComs of a retrain run as the real tasks push them (each matches its tasks.contracts model)."""
    return {
        (TaskIds.PREPARE_RUN, None): {
            "pipeline": "sst2", "run_uri": "s3://ml-retrain/runs/sst2/r1", "run_key": "retrain-r1",
            "run_type": "scheduled",
            "champion": {"version": "v20261101-020000-abc123",
                         "version_uri": "s3://ml-retrain/models/sst2/v20261101-020000-abc123"},
            "champion_uri": "s3://ml-retrain/models/sst2/v20261101-020000-abc123",
            "champion_version": "v20261101-020000-abc123"},
        (TaskIds.DECIDE, None): {"retrain": True, "reasons": ["drift detected: label_psi, vocab_js",
                                                                  "1200 new rows since the champion's snapshot"]},
        (TaskIds.DRIFT, None): {"drift_detected": True, "summary": drift_summary,
                                "report_uri": "s3://ml-retrain/runs/sst2/r1/drift/report.json",
                                "checks": {"label_psi": {"statistic": 0.31, "threshold": 0.2, "drifted": True},
                                           "length_ks": {"statistic": 0.02, "threshold": 0.01, "drifted": False}}},
        (TaskIds.EVALUATE, None): evaluation,
    }


def text_of(mail_body: str) -> str:
    """What a reader sees in the HTML e-mail: the <pre> text without tags."""
    return html.unescape(re.sub(r"<[^>]+>", "", mail_body))


RUN_URL = "http://airflow.example:8080/dags/retrain_sst2/runs/scheduled__2026-11-23T02%3A00%3A00%2B00%3A00"
REGISTRY_URL = "http://airflow.example:8080/retrain-registry/pipelines/sst2"


def test_gate_failure_alert_reaches_smtp_and_slack_with_numbers(receivers):
    smtp, hook = receivers
    evaluation = _evaluation()
    spec = make_spec("file:///unused")
    ti = FakeTI(TaskIds.GATE, _xcoms(evaluation))
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
    body = text_of(mail["body"])
    # the gate table: one row per gate with its verdict, value and threshold
    rows = {line.split()[0]: line.split() for line in body.splitlines()
            if line.startswith("  ") and line.split() and line.split()[0] in {g["name"] for g in evaluation["gates"]}}
    for g in evaluation["gates"]:
        verdict = "skipped" if g["skipped"] else ("pass" if g["passed"] else "FAIL")
        assert rows[g["name"]][1] == verdict, rows[g["name"]]
    assert rows["non_inferiority_teacher"][2:] == [f"{ni['value']:.4f}", f"{ni['threshold']:.4f}"]
    # each failed gate's reason, with its confidence interval
    assert f"non_inferiority_teacher: value {ni['value']:.4f}, threshold {ni['threshold']:.4f}" in body
    assert "CI [" in body
    assert "drift detected: label_psi, vocab_js" in body    # the decision's reasons
    assert "Drift: DETECTED - 2 of 6 checks drifted" in body  # the drift summary
    assert "label_psi: statistic 0.3100 vs threshold 0.2000" in body
    assert "Champion that stays in place: v20261101-020000-abc123" in body
    assert evaluation["report_md_uri"] in body
    # links: the run, the task, the registry page (clickable in the e-mail)
    assert f"Airflow run: {RUN_URL}" in body
    assert f"{RUN_URL}/tasks/gate?try_number=1" in body
    assert f"Model registry: {REGISTRY_URL}" in body
    assert f'<a href="{REGISTRY_URL}">' in mail["body"]
    slack = hook.posts[0]
    assert slack["path"] == "/services/T0/B0/X"
    text = slack["json"]["text"]
    assert "[retrain:sst2] gate failed:" in text
    assert f"non_inferiority_teacher: value {ni['value']:.4f}, threshold {ni['threshold']:.4f}" in text
    assert f"<{REGISTRY_URL}|Model registry>" in text and f"<{RUN_URL}|Airflow run>" in text


def test_infra_failure_alert_has_a_different_subject(receivers):
    smtp, hook = receivers
    spec = make_spec("file:///unused")
    ti = FakeTI(TaskIds.FINETUNE, _xcoms(None), try_number=3, max_tries=2)
    context = failure_context(ti, RuntimeError("pod finetune-abc OOMKilled"))
    for notifier in retrain_alerts.infra_failure_notifiers(spec):
        notifier(context)
    assert len(smtp.messages) == 1 and len(hook.posts) == 1
    subject = smtp.messages[0]["subject"]
    assert subject.startswith("[retrain:sst2] pipeline broken: finetune failed after 3 tries")
    assert "gate failed" not in subject
    body = text_of(smtp.messages[0]["body"])
    assert "RuntimeError: pod finetune-abc OOMKilled" in body
    assert "try 3 of 3" in body
    assert f"{RUN_URL}/tasks/finetune?try_number=3" in body
    assert f"Model registry: {REGISTRY_URL}" in body
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
        email(failure_context(FakeTI(TaskIds.GATE, _xcoms(_evaluation())), RuntimeError("x")))


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


def test_deterministic_failure_says_it_is_not_retried(receivers):
    smtp, _hook = receivers
    spec = make_spec("file:///unused")
    ti = FakeTI(TaskIds.INGEST, _xcoms(None), try_number=1, max_tries=2)
    for notifier in retrain_alerts.infra_failure_notifiers(spec):
        notifier(failure_context(ti, RuntimeError("DataRejected: 41% of batch b7 is bad (max 20%)")))
    mail = smtp.messages[0]
    assert mail["subject"].startswith("[retrain:sst2] pipeline broken: ingest failed after 1 try")
    assert "failed on try 1 of 3 and is not retried" in text_of(mail["body"])
    assert "41% of batch b7 is bad (max 20%)" in text_of(mail["body"])


def test_missing_connections_give_one_warning_each_and_no_error(receivers, caplog):
    """The spec names connections that do not exist: one line per channel naming it, nothing raised or sent."""
    smtp, hook = receivers
    spec = make_spec("file:///unused")
    spec.alerts.smtp_conn_id = "smtp_missing"
    spec.alerts.slack_conn_id = "slack_missing"
    context = failure_context(FakeTI(TaskIds.GATE, _xcoms(_evaluation())), RuntimeError("gates failed"))
    with caplog.at_level(logging.WARNING):
        for notifier in retrain_alerts.gate_failure_notifiers(spec):
            notifier(context)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "retrain alerts: no Airflow connection 'smtp_missing'; create it to get e-mail alerts",
        "retrain alerts: no Airflow connection 'slack_missing'; create it to get Slack alerts",
    ]
    assert smtp.messages == [] and hook.posts == []


def test_deadline_callback_with_missing_connections_warns_and_returns(caplog):
    spec = make_spec("file:///unused")
    spec.alerts.smtp_conn_id = "smtp_missing"
    spec.alerts.slack_conn_id = "slack_missing"
    alert = retrain_alerts.deadline_alert(spec)
    with caplog.at_level(logging.WARNING):
        subject = asyncio.run(retrain_alerts.deadline_missed(**alert.callback.kwargs, context={}))
    assert "deadline missed" in subject
    assert sum("no Airflow connection" in r.getMessage() for r in caplog.records) == 2


def test_alerts_disabled_in_spec_or_env_send_nothing(receivers, monkeypatch):
    smtp, hook = receivers
    spec = make_spec("file:///unused")
    context = failure_context(FakeTI(TaskIds.GATE, _xcoms(_evaluation())), RuntimeError("gates failed"))
    # attached while enabled, turned off on the worker: checked again at send time
    notifiers = retrain_alerts.gate_failure_notifiers(spec) + retrain_alerts.infra_failure_notifiers(spec)
    assert len(notifiers) == 4
    monkeypatch.setenv("RETRAIN_ALERTS_ENABLED", "false")
    for notifier in notifiers:
        notifier(context)
    deadline = retrain_alerts.deadline_alert(make_spec("file:///unused"))
    assert deadline is None  # off at parse time: nothing attached at all
    assert retrain_alerts.gate_failure_notifiers(spec) == [] == retrain_alerts.infra_failure_notifiers(spec)
    assert smtp.messages == [] and hook.posts == []

    monkeypatch.delenv("RETRAIN_ALERTS_ENABLED")
    spec.alerts.enabled = False
    assert retrain_alerts.gate_failure_notifiers(spec) == [] and retrain_alerts.deadline_alert(spec) is None
    monkeypatch.setenv("RETRAIN_ALERTS_ENABLED", "true")  # the env overrides the spec both ways
    assert len(retrain_alerts.gate_failure_notifiers(spec)) == 2
    monkeypatch.setenv("RETRAIN_ALERTS_ENABLED", "nope")
    with pytest.raises(SpecError, match="RETRAIN_ALERTS_ENABLED"):
        retrain_alerts.gate_failure_notifiers(spec)


def test_alert_text_has_no_ansi_codes(receivers):
    smtp, hook = receivers
    spec = make_spec("file:///unused")
    coloured = "\x1b[31mERROR\x1b[0m stage exited 1: \x1b[1;33mCUDA out of memory\x1b[0m"
    ti = FakeTI(TaskIds.FINETUNE, _xcoms(None, drift_summary="\x1b[32m2 of 6\x1b[0m checks drifted"), try_number=3,
                max_tries=2)
    for notifier in retrain_alerts.infra_failure_notifiers(spec):
        notifier(failure_context(ti, RuntimeError(coloured)))
    body, text = text_of(smtp.messages[0]["body"]), hook.posts[0]["json"]["text"]
    for out in (body, text, smtp.messages[0]["subject"]):
        assert "\x1b" not in out and "[0m" not in out
    assert "RuntimeError: ERROR stage exited 1: CUDA out of memory" in body
    assert "Drift: DETECTED - 2 of 6 checks drifted" in body


def test_malformed_xcom_fails_loudly():
    """An XCom that does not match its contract is an error in the callback, not an alert with holes."""
    spec = make_spec("file:///unused")
    xcoms = _xcoms(_evaluation())
    xcoms[(TaskIds.EVALUATE, None)] = {"gates": "not a list"}
    email = retrain_alerts.gate_failure_notifiers(spec)[0]
    with pytest.raises(Exception, match="validation error"):
        email.build(failure_context(FakeTI(TaskIds.GATE, xcoms), RuntimeError("x")))


def test_importing_the_alerts_does_not_import_the_providers():
    """The providers cost ~0.4 s of every DAG parse; they are imported only when an alert is sent."""
    code = ("import sys, retrain_alerts; print([m for m in sys.modules if m.startswith(tuple("
            "f'airflow.providers.{p}.{part}' for p in ('smtp', 'slack') for part in ('notifications', 'hooks')))])")
    from conftest import ROOT

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("code, headline, says", [
    (3, "data rejected", "the data needs a look"),
    (4, "spec invalid", "python -m tasks validate-spec"),
    (5, "not promoted", "Nothing was promoted"),
    (75, "pipeline broken", "not a model-quality verdict"),
    (137, "pipeline broken", "not a model-quality verdict"),
])
def test_a_failed_stage_alert_names_its_error_kind(receivers, code, headline, says):
    """The exception a stage operator raises for each exit code (stage_factory.stage_failure, the one mapping),
    through the real notifiers: the subject names the kind, the body says what it means for the model. Before,
    every kind was "pipeline broken ... no model was judged", also for a rejected batch or a refused promotion.
    The stage's output is coloured and 5000 characters long: the alert is plain and clipped, and still sent."""
    from stage_factory import stage_failure

    smtp, hook = receivers
    stage = "publish" if code == 5 else "ingest"
    exc = stage_failure(stage, code, ["\x1b[33mworking\x1b[0m", f"error (x): \x1b[31m{'very long reason ' * 300}"])
    ti = FakeTI(stage, _xcoms(None), try_number=1 if code in (3, 4, 5) else 3, max_tries=2)
    for notifier in retrain_alerts.infra_failure_notifiers(make_spec("file:///unused")):
        notifier(failure_context(ti, exc))
    (mail,), (post,) = smtp.messages, hook.posts
    assert mail["subject"].startswith(f"[retrain:sst2] {headline}: {stage} failed after ")
    body = text_of(mail["body"])
    assert says in body and f"exit code {code}" in body
    assert "\x1b" not in body + post["json"]["text"] and len(body) < 6000
    assert post["json"]["text"].startswith(f"*[retrain:sst2] {headline}: {stage}")


def test_an_exception_that_cannot_be_printed_still_alerts(receivers):
    smtp, _hook = receivers

    class Unprintable(Exception):
        def __str__(self):
            raise ValueError("no")

    for notifier in retrain_alerts.infra_failure_notifiers(make_spec("file:///unused")):
        notifier(failure_context(FakeTI(TaskIds.DRIFT, _xcoms(None), try_number=3, max_tries=2), Unprintable()))
    (mail,) = smtp.messages
    assert "pipeline broken: drift failed after 3 tries" in mail["subject"]
    assert "Error: Unprintable: <" in text_of(mail["body"])
