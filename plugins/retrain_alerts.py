"""Alerts that explain themselves: e-mail (SmtpNotifier) and Slack (SlackWebhookNotifier) on a failed gate, on
a broken pipeline, and when a nightly run overruns its deadline.

Three kinds, told apart by the subject so on-call knows at a glance whether the *model* got worse or the
*pipeline* broke:

* ``[retrain:<pipeline>] gate failed: <gates>``      the gate task raised AirflowFailException (no retries);
  the body lists each failed gate with its value and threshold, the retrain decision's reasons, the drift
  summary, the champion that stays, the gate report's URIs and the link to the Airflow run.
* ``[retrain:<pipeline>] pipeline broken: <task> failed after <n> tries``  any other task that exhausted its
  retries (``on_failure_callback`` fires only on the final failure).
* ``[retrain:<pipeline>] deadline missed: ...``       the run is still going ``schedule.nightly_deadline_minutes``
  after it was queued (Airflow 3.3 ``DeadlineAlert``; the callback runs in the triggerer).

DAG wiring::

    default_args={"on_failure_callback": retrain_alerts.infra_failure_notifiers(spec)}
    @task(task_id="gate", retries=0, on_failure_callback=retrain_alerts.gate_failure_notifiers(spec))
    DAG(..., deadline=retrain_alerts.deadline_alert(spec))

The message builders (``gate_failure_message``, ``infra_failure_message``, ``deadline_message``) are pure
functions of plain dicts, so they are easy to test and reuse; ``collect_alert_info`` pulls those dicts from a
task's context (XComs of prepare_run, decide, drift and evaluate).
"""

from __future__ import annotations

import asyncio
import html
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
from airflow.providers.smtp.notifications.smtp import SmtpNotifier

# Task ids in dags/retrain_pipelines.py whose XComs the alerts read.
PREPARE_TASK = "prepare_run"
DECIDE_TASK = "decide"
DRIFT_TASK = "drift"
EVALUATE_TASK = "evaluate"


@dataclass
class Message:
    subject: str
    text: str  # plain text / Slack mrkdwn

    @property
    def html(self) -> str:
        return "<pre style=\"font-family:monospace\">" + html.escape(self.text) + "</pre>"


# ---------------------------------------------------------------- context -> plain dicts


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _pull(ti: Any, task_id: str, key: str | None = None) -> Any:
    if ti is None:
        return None
    try:
        return ti.xcom_pull(task_ids=task_id, key=key) if key else ti.xcom_pull(task_ids=task_id)
    except Exception:  # an alert must go out even when an XCom is missing or the API hiccups
        return None


def airflow_base_url(configured: str | None = None) -> str:
    if configured:
        return configured.rstrip("/")
    try:
        from airflow.configuration import conf

        return (conf.get("api", "base_url", fallback=None) or "http://localhost:8080").rstrip("/")
    except Exception:
        return "http://localhost:8080"


def run_url(base_url: str, dag_id: str | None, run_id: str | None) -> str:
    return f"{base_url}/dags/{quote(str(dag_id), safe='')}/runs/{quote(str(run_id), safe='')}"


def collect_alert_info(context: dict[str, Any], base_url: str | None = None) -> dict[str, Any]:
    """Everything an alert needs, from a task callback's context."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag_id = _get(dag_run, "dag_id") or _get(ti, "dag_id") or _get(context.get("dag"), "dag_id")
    run_id = _get(dag_run, "run_id") or context.get("run_id") or _get(ti, "run_id")
    base = airflow_base_url(base_url)
    task_id = _get(ti, "task_id")
    try_number = _get(ti, "try_number")
    exception = context.get("exception")
    url = run_url(base, dag_id, run_id)
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "run_url": url,
        "task_id": task_id,
        "try_number": try_number,
        "max_tries": _get(ti, "max_tries"),
        "log_url": f"{url}/tasks/{quote(str(task_id), safe='')}?try_number={try_number}" if task_id else None,
        "exception": None if exception is None else f"{type(exception).__name__}: {exception}",
        "prepare": _pull(ti, PREPARE_TASK) or {},
        "decision": _pull(ti, DECIDE_TASK, key="decision") or {},
        "drift": _pull(ti, DRIFT_TASK) or {},
        "evaluation": _pull(ti, EVALUATE_TASK) or {},
    }


# ---------------------------------------------------------------- messages


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def _champion_line(info: dict[str, Any]) -> str:
    prepare = info.get("prepare") or {}
    champion = prepare.get("champion") or {}
    version = champion.get("version") or (prepare.get("champion_version") if prepare.get("champion_version") not in
                                          (None, "none") else None)
    if version:
        uri = champion.get("version_uri") or prepare.get("champion_uri") or ""
        return f"Champion that stays in place: {version} {uri}".rstrip()
    return "Champion that stays in place: none (no model has been promoted yet; nothing is served from this run)"


def _drift_lines(drift: dict[str, Any]) -> list[str]:
    if not drift:
        return ["Drift: no drift result for this run"]
    lines = [f"Drift: {'DETECTED' if drift.get('drift_detected') else 'not detected'}"
             + (f" - {drift['summary']}" if drift.get("summary") else "")]
    for name, check in sorted((drift.get("checks") or {}).items()):
        if isinstance(check, dict) and check.get("drifted"):
            lines.append(f"  - {name}: statistic {_fmt(check.get('statistic'))} vs threshold "
                         f"{_fmt(check.get('threshold'))}")
    return lines


def gate_failure_message(pipeline: str, info: dict[str, Any]) -> Message:
    evaluation = info.get("evaluation") or {}
    gates = evaluation.get("gates") or []
    failed = [g for g in gates if not g.get("passed")]
    names = [g.get("name") for g in failed] or list(evaluation.get("failed_gates") or [])
    subject = f"[retrain:{pipeline}] gate failed: {', '.join(names) or 'see report'} (run {info.get('run_id')})"
    lines = [
        f"Pipeline: {pipeline}",
        f"Run: {info.get('dag_id')} / {info.get('run_id')}",
        "Verdict: the candidate is NOT promoted; the model got worse (or missed a budget), the pipeline works.",
        "",
        "Failed gates:",
    ]
    for g in failed:
        lines.append(f"  - {g.get('name')}: value {_fmt(g.get('value'))}, threshold {_fmt(g.get('threshold'))}"
                     f" - {g.get('reason')}")
    if not failed:
        lines.append(f"  - (no gate details in XCom) {info.get('exception') or ''}".rstrip())
    metrics = evaluation.get("metrics") or {}
    if metrics:
        lines += ["", "Golden-set accuracy / macro-F1:"]
        for role in ("teacher", "student"):
            m = metrics.get(role) or {}
            lines.append(f"  - candidate {role}: {_fmt(m.get('golden_accuracy'))} / {_fmt(m.get('golden_macro_f1'))}")
        champion = metrics.get("champion") or {}
        for role in ("teacher", "student"):
            m = champion.get(role) or {}
            if m:
                lines.append(f"  - champion {role}: {_fmt(m.get('golden_accuracy'))} / {_fmt(m.get('golden_macro_f1'))}")
    decision = info.get("decision") or {}
    lines += ["", "Why this run retrained:"]
    lines += [f"  - {r}" for r in decision.get("reasons") or ["(no decision recorded)"]]
    lines += _drift_lines(info.get("drift") or {})
    lines += ["", _champion_line(info), "",
              f"Gate report: {evaluation.get('report_md_uri') or '-'}",
              f"Gate report (JSON): {evaluation.get('report_uri') or '-'}",
              f"Airflow run: {info.get('run_url')}"]
    return Message(subject, "\n".join(lines))


def infra_failure_message(pipeline: str, info: dict[str, Any]) -> Message:
    task = info.get("task_id") or "a task"
    tries = info.get("try_number")
    subject = (f"[retrain:{pipeline}] pipeline broken: {task} failed after {tries if tries else '?'} "
               f"tr{'y' if tries == 1 else 'ies'} (run {info.get('run_id')})")
    lines = [
        f"Pipeline: {pipeline}",
        f"Run: {info.get('dag_id')} / {info.get('run_id')}",
        f"Task: {task} exhausted its retries (try {tries} of {(info.get('max_tries') or 0) + 1 if tries else '?'}).",
        "This is an infrastructure/pipeline failure, not a model-quality verdict: no model was judged.",
        f"Error: {(info.get('exception') or 'unknown')[:1000]}",
        "",
        _champion_line(info),
        "",
        f"Task log: {info.get('log_url') or '-'}",
        f"Airflow run: {info.get('run_url')}",
    ]
    return Message(subject, "\n".join(lines))


def deadline_message(pipeline: str, deadline_minutes: int, context: dict[str, Any] | None,
                     base_url: str | None = None) -> Message:
    context = context or {}
    dag_run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    dag_id, run_id = _get(dag_run, "dag_id"), _get(dag_run, "run_id")
    subject = (f"[retrain:{pipeline}] deadline missed: run {run_id} still running after {deadline_minutes} min")
    lines = [
        f"Pipeline: {pipeline}",
        f"Run: {dag_id} / {run_id} (state {_get(dag_run, 'state')}, queued at {_get(dag_run, 'queued_at')})",
        f"Budget: {deadline_minutes} minutes from queueing (schedule.nightly_deadline_minutes); "
        f"deadline was {deadline.get('deadline_time')}.",
        "The run has not failed; it is slow. Check queued pods, GPU capacity and the training stages' progress.",
        f"Airflow run: {run_url(airflow_base_url(base_url), dag_id, run_id)}",
    ]
    return Message(subject, "\n".join(lines))


# ---------------------------------------------------------------- notifiers


class _Builds:
    """Mixin: the message is built from the context at notify time (after the XComs exist)."""

    kind: str
    pipeline: str
    base_url: str | None

    def build(self, context: dict[str, Any]) -> Message:
        if self.kind == "deadline":
            return deadline_message(self.pipeline, self.deadline_minutes, context, self.base_url)  # type: ignore[attr-defined]
        info = collect_alert_info(context, self.base_url)
        if self.kind == "gate":
            return gate_failure_message(self.pipeline, info)
        return infra_failure_message(self.pipeline, info)


class RetrainEmailNotifier(_Builds, SmtpNotifier):
    def __init__(self, *, kind: str, pipeline: str, to: list[str], smtp_conn_id: str, from_email: str | None = None,
                 base_url: str | None = None, deadline_minutes: int = 0, **kwargs: Any):
        # subject/html are set in notify(); "" (not None) keeps the provider from loading its default templates.
        super().__init__(to=to, from_email=from_email, smtp_conn_id=smtp_conn_id, subject="", html_content="",
                         **kwargs)
        self.kind, self.pipeline, self.base_url, self.deadline_minutes = kind, pipeline, base_url, deadline_minutes

    def notify(self, context):
        message = self.build(context)
        self.subject, self.html_content = message.subject, message.html
        super().notify(context)


class RetrainSlackNotifier(_Builds, SlackWebhookNotifier):
    def __init__(self, *, kind: str, pipeline: str, slack_webhook_conn_id: str, base_url: str | None = None,
                 deadline_minutes: int = 0, timeout: int | None = 30, **kwargs: Any):
        super().__init__(slack_webhook_conn_id=slack_webhook_conn_id, text="", timeout=timeout, **kwargs)
        self.kind, self.pipeline, self.base_url, self.deadline_minutes = kind, pipeline, base_url, deadline_minutes

    def notify(self, context):
        message = self.build(context)
        self.text = f"*{message.subject}*\n```\n{message.text}\n```"
        super().notify(context)


def _notifiers(spec: Any, kind: str, **extra: Any) -> list:
    alerts = spec.alerts
    base = alerts.airflow_base_url
    out: list = []
    if alerts.email:
        out.append(RetrainEmailNotifier(kind=kind, pipeline=spec.name, to=list(alerts.email),
                                        smtp_conn_id=alerts.smtp_conn_id, from_email=alerts.from_email,
                                        base_url=base, **extra))
    if alerts.slack_conn_id:
        out.append(RetrainSlackNotifier(kind=kind, pipeline=spec.name, slack_webhook_conn_id=alerts.slack_conn_id,
                                        base_url=base, **extra))
    return out


def gate_failure_notifiers(spec: Any) -> list:
    """For the gate task's on_failure_callback: subject ``[retrain:<pipeline>] gate failed: ...``."""
    return _notifiers(spec, "gate")


def infra_failure_notifiers(spec: Any) -> list:
    """For default_args on_failure_callback: subject ``[retrain:<pipeline>] pipeline broken: ...``."""
    return _notifiers(spec, "infra")


# ---------------------------------------------------------------- deadline alert


async def deadline_missed(*, pipeline: str, deadline_minutes: int, email: list[str] | None = None,
                          smtp_conn_id: str | None = None, from_email: str | None = None,
                          slack_conn_id: str | None = None, base_url: str | None = None,
                          context: dict[str, Any] | None = None) -> str:
    """The DeadlineAlert callback (runs in the triggerer): e-mail and Slack, each attempted independently."""
    context = context or {}
    notifiers: list = []
    if email and smtp_conn_id:
        notifiers.append(RetrainEmailNotifier(kind="deadline", pipeline=pipeline, to=list(email),
                                              smtp_conn_id=smtp_conn_id, from_email=from_email, base_url=base_url,
                                              deadline_minutes=deadline_minutes))
    if slack_conn_id:
        notifiers.append(RetrainSlackNotifier(kind="deadline", pipeline=pipeline, slack_webhook_conn_id=slack_conn_id,
                                              base_url=base_url, deadline_minutes=deadline_minutes))
    errors = []
    for notifier in notifiers:
        try:
            await asyncio.to_thread(notifier.notify, context)  # the providers' sync path, off the event loop
        except Exception as exc:  # one channel down must not silence the other
            errors.append(f"{type(notifier).__name__}: {exc}")
    if errors:
        raise RuntimeError("deadline alert partly failed: " + "; ".join(errors))
    return deadline_message(pipeline, deadline_minutes, context, base_url).subject


def deadline_alert(spec: Any):
    """A DeadlineAlert for the retrain DAG: alert when a run is still going ``nightly_deadline_minutes`` after it
    was queued. Returns None when neither e-mail nor Slack is configured, or the budget is 0 (off)."""
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    alerts = spec.alerts
    minutes = int(spec.schedule.nightly_deadline_minutes)
    if minutes == 0 or (not alerts.email and not alerts.slack_conn_id):
        return None
    kwargs = {"pipeline": spec.name, "deadline_minutes": minutes, "email": list(alerts.email),
              "smtp_conn_id": alerts.smtp_conn_id, "from_email": alerts.from_email,
              "slack_conn_id": alerts.slack_conn_id, "base_url": alerts.airflow_base_url}
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(minutes=minutes),
                         callback=AsyncCallback(deadline_missed, kwargs=kwargs),
                         name=f"retrain_{spec.name}_deadline")
