"""Alerts that explain themselves: e-mail and Slack on a failed gate, on a broken pipeline, and when a nightly
run overruns its deadline.

Three kinds, told apart by the subject so on-call knows at a glance whether the *model* got worse or the
*pipeline* broke:

* ``[retrain:<pipeline>] gate failed: <gates>``      the gate task failed (no retries); the body has the gate
  table, each failed gate's reason (with its confidence interval), the retrain decision's reasons, the drift
  summary, the champion that stays, and links to the Airflow run, the task and the registry page.
* ``[retrain:<pipeline>] pipeline broken: <task> failed after <n> tries``  any other task's final failure, with
  the reason from the exception (a deterministic failure fails on its first try). A stage that failed with a
  deterministic error kind says which instead of "pipeline broken": ``data rejected`` (exit 3), ``spec invalid``
  (exit 4), ``not promoted`` (exit 5: publish refused the candidate); see KIND_HEADLINES.
* ``[retrain:<pipeline>] approval needed: ...`` / ``override requested: ...``  the approve task waits for a
  person (spec ``approval``); the first link is the Required actions page. ``approval timed out: nothing
  promoted`` when no one answered in time (plugins/approval_gate.py).
* ``[retrain:<pipeline>] deadline missed: ...``       the run is still going ``schedule.nightly_deadline_minutes``
  after it was queued (Airflow 3.3 ``DeadlineAlert``; the callback runs in the triggerer).

Behaviour that keeps alerts quiet when they should be:

* ``alerts.enabled: false`` in the spec, or ``RETRAIN_ALERTS_ENABLED=false`` in the environment, turns every
  alert off (no notifier is attached at parse time; the env is checked again at send time, so a worker's env
  wins too).
* A missing Airflow connection is ONE warning line naming the connection to create, not a failed callback.
  A connection that exists but does not work (server down, bad credentials) still raises, loudly.
* The text is plain: ANSI colour codes (from stage logs in an exception message) are stripped.

The providers (SmtpNotifier, SlackWebhookNotifier) do the sending, imported at send time: importing them costs
about 0.4 s of DAG parse time, for every DAG file parse, and they are only needed when an alert goes out.

DAG wiring::

    default_args={"on_failure_callback": retrain_alerts.infra_failure_notifiers(spec)}
    @task(task_id=TaskIds.GATE, retries=0, on_failure_callback=retrain_alerts.gate_failure_notifiers(spec))
    DAG(..., deadline=retrain_alerts.deadline_alert(spec))

The message builders (``gate_failure_message``, ``infra_failure_message``, ``deadline_message``) are pure
functions of an ``AlertInfo``; ``collect_alert_info`` pulls it from a task's context through the stage
contracts (``tasks/contracts.py``), so a malformed or unreadable XCom fails the callback instead of sending an
alert with holes.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from airflow.sdk.bases.notifier import BaseNotifier

import registry_ui
from stage_factory import ANSI_ESCAPE
from tasks.contracts import Decision, DriftResult, EvaluateResult, GateResult, Result, RunContext, TaskIds
from tasks.spec import alerts_enabled

log = logging.getLogger("retrain_alerts")

_URL = re.compile(r"https?://[^\s<>\"]+")


def plain(text: str) -> str:
    """Text without ANSI escape sequences (stage output quoted in an exception may be coloured)."""
    return ANSI_ESCAPE.sub("", text)


@dataclass
class Message:
    subject: str
    text: str                                               # plain text, no markup
    links: list[tuple[str, str]] = field(default_factory=list)  # (label, URL), after the text

    def __post_init__(self) -> None:
        self.subject = plain(self.subject).replace("\n", " ")
        self.text = plain(self.text)

    @property
    def body(self) -> str:
        """The whole alert as plain text: the text, then one ``Label: URL`` line per link."""
        return self.text + ("\n\n" + "\n".join(f"{label}: {url}" for label, url in self.links) if self.links else "")

    @property
    def html(self) -> str:
        """The e-mail: the plain text in <pre> (the tables line up), links clickable."""
        escaped = html.escape(self.body, quote=False)
        linked = _URL.sub(lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>', escaped)
        return f'<pre style="font-family:monospace">{linked}</pre>'

    @property
    def slack(self) -> str:
        """Slack mrkdwn: bold subject, the text in a code block, links outside it (clickable there)."""
        links = "\n".join(f"<{url}|{label}>" for label, url in self.links)
        return f"*{self.subject}*\n```\n{self.text}\n```" + (f"\n{links}" if links else "")


# ---------------------------------------------------------------- context -> AlertInfo


@dataclass
class AlertInfo:
    """What an alert is about, read from a failure callback's context."""

    pipeline: str
    dag_id: str | None
    run_id: str | None
    base_url: str
    task_id: str | None = None
    try_number: int | None = None
    max_tries: int | None = None
    exception: str | None = None
    kind: str | None = None  # the failed stage's error kind (tasks.errors, from its exit code), when a stage failed
    prepare: RunContext | None = None
    decision: Decision | None = None
    drift: DriftResult | None = None
    evaluation: EvaluateResult | None = None

    @property
    def run_url(self) -> str:
        return run_url(self.base_url, self.dag_id, self.run_id)

    @property
    def task_url(self) -> str | None:
        if not self.task_id:
            return None
        url = f"{self.run_url}/tasks/{quote(str(self.task_id), safe='')}"
        return f"{url}?try_number={self.try_number}" if self.try_number else url

    @property
    def registry_url(self) -> str:
        return registry_ui.pipeline_url(self.base_url, self.pipeline)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def pull(ti: Any, task_id: str, model: type[Result]) -> Any:
    """A task's XCom as its contract model; None when the task left none (it did not run, or failed first).

    Errors are not swallowed: an XCom that cannot be read or does not match its contract fails the callback,
    which Airflow logs with the traceback."""
    if ti is None:
        return None
    value = ti.xcom_pull(task_ids=task_id)
    return None if value is None else model.read(value)


def airflow_base_url(configured: str | None = None) -> str:
    if configured:
        return configured.rstrip("/")
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback=None) or "http://localhost:8080").rstrip("/")


def run_url(base_url: str, dag_id: str | None, run_id: str | None) -> str:
    return f"{base_url}/dags/{quote(str(dag_id), safe='')}/runs/{quote(str(run_id), safe='')}"


def describe(exception: BaseException | str) -> str:
    """``Type: message``, whatever the exception does when printed (an alert must go out regardless)."""
    if isinstance(exception, str):
        return exception
    try:
        text = str(exception)
    except Exception:  # a broken __str__ must not silence the alert
        text = object.__repr__(exception)
    return f"{type(exception).__name__}: {text}"


def collect_alert_info(context: dict[str, Any], pipeline: str, base_url: str | None = None) -> AlertInfo:
    """Everything an alert needs, from a task callback's context (XComs read through the stage contracts)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exception = context.get("exception")
    return AlertInfo(
        pipeline=pipeline,
        dag_id=_get(dag_run, "dag_id") or _get(ti, "dag_id") or _get(context.get("dag"), "dag_id"),
        run_id=_get(dag_run, "run_id") or context.get("run_id") or _get(ti, "run_id"),
        base_url=airflow_base_url(base_url),
        task_id=_get(ti, "task_id"),
        try_number=_get(ti, "try_number"),
        max_tries=_get(ti, "max_tries"),
        exception=None if exception is None else describe(exception),
        kind=_get(exception, "kind") if isinstance(_get(exception, "kind"), str) else None,
        prepare=pull(ti, TaskIds.PREPARE_RUN, RunContext),
        decision=pull(ti, TaskIds.DECIDE, Decision),
        drift=pull(ti, TaskIds.DRIFT, DriftResult),
        evaluation=pull(ti, TaskIds.EVALUATE, EvaluateResult),
    )


# ---------------------------------------------------------------- messages


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def _verdict(gate: GateResult) -> str:
    return "skipped" if gate.skipped else ("pass" if gate.passed else "FAIL")


def gate_table(gates: list[GateResult]) -> list[str]:
    """Every gate as a fixed-width row: name, verdict, value, threshold (reasons follow for the failed ones)."""
    rows = [("gate", "verdict", "value", "threshold")]
    rows += [(g.name, _verdict(g), _fmt(g.value), _fmt(g.threshold)) for g in gates]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = []
    for n, row in enumerate(rows):
        out.append("  " + "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                                    for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return out


def _champion_line(info: AlertInfo) -> str:
    prepare = info.prepare
    champion = (prepare.champion if prepare else None) or {}
    version = champion.get("version") or (prepare.champion_version if prepare and prepare.champion_version != "none"
                                          else None)
    if version:
        uri = champion.get("version_uri") or (prepare.champion_uri if prepare else "") or ""
        return f"Champion that stays in place: {version} {uri if uri != 'none' else ''}".rstrip()
    return "Champion that stays in place: none (no model has been promoted yet; nothing is served from this run)"


def drift_lines(drift: DriftResult | None) -> list[str]:
    if drift is None:
        return ["Drift: no drift result for this run"]
    lines = [f"Drift: {'DETECTED' if drift.drift_detected else 'not detected'}"
             + (f" - {drift.summary}" if drift.summary else "")]
    for name, check in sorted(drift.checks.items()):
        if isinstance(check, dict) and check.get("drifted"):
            lines.append(f"  - {name}: statistic {_fmt(check.get('statistic'))} vs threshold "
                         f"{_fmt(check.get('threshold'))}")
    if drift.report_uri:
        lines.append(f"  drift report: {drift.report_uri}")
    return lines


def _links(info: AlertInfo) -> list[tuple[str, str]]:
    links = [("Airflow run", info.run_url)]
    if info.task_url:
        links.append((f"Task {info.task_id} (log)", info.task_url))
    links.append(("Model registry", info.registry_url))
    return links


def gate_failure_message(info: AlertInfo) -> Message:
    evaluation = info.evaluation
    gates = evaluation.gates if evaluation else []
    failed = [g for g in gates if not g.passed]
    names = [g.name for g in failed] or list(evaluation.failed_gates if evaluation else [])
    subject = f"[retrain:{info.pipeline}] gate failed: {', '.join(names) or 'see report'} (run {info.run_id})"
    lines = [
        f"Pipeline: {info.pipeline}",
        f"Run: {info.dag_id} / {info.run_id}",
        "Verdict: the candidate is NOT promoted; the model got worse (or missed a budget), the pipeline works.",
        "",
    ]
    if gates:
        lines += ["Gates:", *gate_table(gates), "", "Failed gates:"]
        lines += [f"  - {g.name}: value {_fmt(g.value)}, threshold {_fmt(g.threshold)} - {g.reason}" for g in failed]
    else:
        lines += ["Gates: no gate results in the evaluate XCom", f"  {info.exception or ''}".rstrip()]
    metrics = evaluation.metrics if evaluation else {}
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
    lines += ["", "Why this run retrained:"]
    lines += [f"  - {r}" for r in (info.decision.reasons if info.decision else ["(no decision recorded)"])]
    said = "\n".join(lines)  # what would change the outcome (a fresh start's), where no reason above says it
    unsaid = [r.action for r in (evaluation.remedies if evaluation else []) if r.action not in said]
    lines += ["", "What would change it:", *[f"  - {action}" for action in unsaid]] if unsaid else []
    lines += ["", *drift_lines(info.drift), "", _champion_line(info), "",
              f"Gate report: {(evaluation.report_md_uri if evaluation else None) or '-'}",
              f"Gate report (JSON): {(evaluation.report_uri if evaluation else None) or '-'}"]
    return Message(subject, "\n".join(lines), _links(info))


def required_actions_url(context: dict[str, Any]) -> str | None:
    """The "Required actions" page of the waiting approve task (plugins/approval_gate.py sets it)."""
    task = context.get("task")
    url = getattr(task, "required_actions_url", None)
    if url:
        return url
    ti = context.get("ti") or context.get("task_instance")
    return ti.xcom_pull(task_ids=ti.task_id, key="required_actions_url") if ti is not None else None


def approval_waiting_message(info: AlertInfo, url: str | None, timeout_minutes: float) -> Message:
    """The approve task is waiting for a person: what for, and the link to answer it."""
    evaluation = info.evaluation
    passed = bool(evaluation and evaluation.passed)
    if passed:
        subject = f"[retrain:{info.pipeline}] approval needed: the candidate passed its gates (run {info.run_id})"
        verdict = "Verdict: the gates PASSED; the candidate waits for a person to Approve (promote) or Reject."
    else:
        names = ", ".join(evaluation.failed_gates) if evaluation else "see report"
        subject = f"[retrain:{info.pipeline}] override requested: gate failed: {names} (run {info.run_id})"
        verdict = ("Verdict: the gates FAILED; a person may override them (Approve, with a reason) or Reject "
                   "(the failure stands).")
    lines = [f"Pipeline: {info.pipeline}", f"Run: {info.dag_id} / {info.run_id}", verdict,
             f"No answer within {timeout_minutes:g} min: nothing is promoted and you get another alert.", ""]
    if evaluation and evaluation.gates:
        lines += ["Gates:", *gate_table(evaluation.gates), ""]
    lines += [*drift_lines(info.drift), "", _champion_line(info)]
    links = ([("Answer in Required actions", url)] if url else []) + _links(info)
    return Message(subject, "\n".join(lines), links)


def approval_failure_message(info: AlertInfo) -> Message:
    """The approve task failed: no answer in time, a failed gate that stands, or a broken task."""
    exception = info.exception or ""
    if exception.startswith("ApprovalTimedOut"):
        subject = f"[retrain:{info.pipeline}] approval timed out: nothing promoted (run {info.run_id})"
        lines = [f"Pipeline: {info.pipeline}", f"Run: {info.dag_id} / {info.run_id}",
                 "Verdict: no one answered the approval request in time; the candidate is neither published nor "
                 "promoted. Trigger the run again (force retrain) to ask again.", "", exception, "",
                 _champion_line(info)]
        return Message(subject, "\n".join(lines), _links(info))
    if exception.startswith("GateFailureStands"):
        message = gate_failure_message(info)
        message.text += "\n\n" + exception
        return message
    return infra_failure_message(info)


def labels_stopped_message(info: AlertInfo) -> Message:
    """decide stopped the run on the label-quality check: a data verdict, not a broken pipeline."""
    decision = info.decision
    withdrawn = (decision.withdrawn or {}).get("withdrawn") or [] if decision else []
    subject = (f"[retrain:{info.pipeline}] run stopped: the new labels failed the quality check"
               + (f", batch {', '.join(withdrawn)} withdrawn" if withdrawn else "") + f" (run {info.run_id})")
    quality = (info.drift.label_quality or {}) if info.drift else {}
    lines = [
        f"Pipeline: {info.pipeline}",
        f"Run: {info.dag_id} / {info.run_id}",
        "Verdict: nothing was trained; the champion keeps serving. The pipeline works: the data needs a look.",
        "",
        "Why:",
        *[f"  - {r}" for r in (decision.reasons if decision else [])],
    ]
    for batch, result in sorted((quality.get("batches") or {}).items()):
        if not result.get("skipped"):
            lines.append(f"  batch {batch}: agreement {_fmt(result.get('current_agreement'))} vs "
                         f"{_fmt(result.get('expected_agreement'))} expected (p = {_fmt(result.get('p_value'))})"
                         + (" - BAD LABELS" if result.get("flagged") else ""))
    lines += ["", *drift_lines(info.drift), "", _champion_line(info)]
    return Message(subject, "\n".join(lines), _links(info))


# A failed stage's error kind (tasks.errors) -> the alert's headline and what it means for the model. Kinds not
# here (infrastructure, killed, unexpected) and failures that are not a stage's are "pipeline broken".
KIND_HEADLINES = {
    "data_rejected": ("data rejected", "The landed data was rejected (quarantined with its reasons): the pipeline "
                                       "works, the data needs a look. Nothing was trained; no model was judged."),
    "spec_invalid": ("spec invalid", "The pipeline spec or a stage argument is invalid: fix it (python -m tasks "
                                     "validate-spec), then trigger again. Nothing was trained or promoted."),
    "gate_failed": ("not promoted", "Nothing was promoted: the stage refused the candidate (a version whose files "
                                    "fail verification, or a champion that moved since the candidate was gated: "
                                    "trigger a new run to gate against the current champion)."),
}
BROKEN = ("pipeline broken", "This is an infrastructure/pipeline failure, not a model-quality verdict: no model "
                             "was judged.")


def infra_failure_message(info: AlertInfo) -> Message:
    task = info.task_id or "a task"
    tries = info.try_number
    allowed = (info.max_tries or 0) + 1
    headline, meaning = KIND_HEADLINES.get(info.kind or "", BROKEN)
    subject = (f"[retrain:{info.pipeline}] {headline}: {task} failed after {tries if tries else '?'} "
               f"tr{'y' if tries == 1 else 'ies'} (run {info.run_id})")
    if tries and tries < allowed:
        how = (f"Task: {task} failed on try {tries} of {allowed} and is not retried: the failure is deterministic "
               f"(bad input or configuration), so a retry cannot help.")
    else:
        how = f"Task: {task} exhausted its retries (try {tries or '?'} of {allowed if tries else '?'})."
    lines = [
        f"Pipeline: {info.pipeline}",
        f"Run: {info.dag_id} / {info.run_id}",
        how,
        meaning + (f" (error kind: {info.kind})" if info.kind else ""),
        f"Error: {(info.exception or 'unknown')[:2000]}",
        "",
        *drift_lines(info.drift),
        "",
        _champion_line(info),
    ]
    return Message(subject, "\n".join(lines), _links(info))


def deadline_message(pipeline: str, deadline_minutes: int, context: dict[str, Any] | None,
                     base_url: str | None = None) -> Message:
    context = context or {}
    dag_run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    dag_id, run_id = _get(dag_run, "dag_id"), _get(dag_run, "run_id")
    base = airflow_base_url(base_url)
    subject = f"[retrain:{pipeline}] deadline missed: run {run_id} still running after {deadline_minutes} min"
    lines = [
        f"Pipeline: {pipeline}",
        f"Run: {dag_id} / {run_id} (state {_get(dag_run, 'state')}, queued at {_get(dag_run, 'queued_at')})",
        f"Budget: {deadline_minutes} minutes from queueing (schedule.nightly_deadline_minutes); "
        f"deadline was {deadline.get('deadline_time')}.",
        "The run has not failed; it is slow. Check queued pods, GPU capacity and the training stages' progress.",
    ]
    links = [("Airflow run", run_url(base, dag_id, run_id)), ("Model registry", registry_ui.pipeline_url(base, pipeline))]
    return Message(subject, "\n".join(lines), links)


# ---------------------------------------------------------------- notifiers


def connection_exists(conn_id: str, kind: str) -> bool:
    """False, after ONE warning line naming the connection to create, when Airflow has no such connection."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        log.warning("retrain alerts: no Airflow connection %r; create it to get %s alerts", conn_id, kind)
        return False
    return True


class _RetrainNotifier(BaseNotifier):
    """Builds the message from the context at send time (after the XComs exist), then hands it to a provider."""

    channel = "?"

    def __init__(self, *, kind: str, pipeline: str, base_url: str | None = None, deadline_minutes: int = 0,
                 enabled: bool = True):
        super().__init__()
        self.kind, self.pipeline, self.base_url = kind, pipeline, base_url
        self.deadline_minutes, self.enabled = deadline_minutes, enabled

    def build(self, context: dict[str, Any]) -> Message:
        if self.kind == "deadline":
            return deadline_message(self.pipeline, self.deadline_minutes, context, self.base_url)
        info = collect_alert_info(context, self.pipeline, self.base_url)
        if self.kind == "gate":
            return gate_failure_message(info)
        if self.kind == "approval_waiting":
            return approval_waiting_message(info, required_actions_url(context), self.deadline_minutes)
        if self.kind == "approval":
            return approval_failure_message(info)
        if info.decision is not None and info.decision.stopped and info.task_id == TaskIds.DECIDE:
            return labels_stopped_message(info)
        return infra_failure_message(info)

    def notify(self, context: dict[str, Any]) -> None:
        if not alerts_enabled(self.enabled):
            log.info("retrain alerts: off (alerts.enabled / RETRAIN_ALERTS_ENABLED); no %s alert sent", self.channel)
            return
        if not connection_exists(self.conn_id, self.channel):
            return
        self.send(self.build(context), context)

    @property
    def conn_id(self) -> str:
        raise NotImplementedError

    def send(self, message: Message, context: dict[str, Any]) -> None:
        raise NotImplementedError


class RetrainEmailNotifier(_RetrainNotifier):
    channel = "e-mail"

    def __init__(self, *, to: list[str], smtp_conn_id: str, from_email: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.to, self.smtp_conn_id, self.from_email = list(to), smtp_conn_id, from_email

    @property
    def conn_id(self) -> str:
        return self.smtp_conn_id

    def send(self, message: Message, context: dict[str, Any]) -> None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        # notify() directly: our text is final, never a Jinja template (a "{{" in an error message stays as is).
        SmtpNotifier(to=self.to, from_email=self.from_email, smtp_conn_id=self.smtp_conn_id,
                     subject=message.subject, html_content=message.html).notify(context)


class RetrainSlackNotifier(_RetrainNotifier):
    channel = "Slack"

    def __init__(self, *, slack_webhook_conn_id: str, timeout: int | None = 30, **kwargs: Any):
        super().__init__(**kwargs)
        self.slack_webhook_conn_id, self.timeout = slack_webhook_conn_id, timeout

    @property
    def conn_id(self) -> str:
        return self.slack_webhook_conn_id

    def send(self, message: Message, context: dict[str, Any]) -> None:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        SlackWebhookNotifier(slack_webhook_conn_id=self.slack_webhook_conn_id, text=message.slack,
                             timeout=self.timeout).notify(context)


def _channels(*, pipeline: str, email: list[str], smtp_conn_id: str | None, from_email: str | None,
              slack_conn_id: str | None, base_url: str | None, kind: str, deadline_minutes: int = 0,
              enabled: bool = True) -> list[_RetrainNotifier]:
    common = {"kind": kind, "pipeline": pipeline, "base_url": base_url, "deadline_minutes": deadline_minutes,
              "enabled": enabled}
    out: list[_RetrainNotifier] = []
    if email and smtp_conn_id:
        out.append(RetrainEmailNotifier(to=email, smtp_conn_id=smtp_conn_id, from_email=from_email, **common))
    if slack_conn_id:
        out.append(RetrainSlackNotifier(slack_webhook_conn_id=slack_conn_id, **common))
    return out


def _notifiers(spec: Any, kind: str) -> list:
    alerts = spec.alerts
    if not alerts.active:
        return []
    return _channels(pipeline=spec.name, email=list(alerts.email), smtp_conn_id=alerts.smtp_conn_id,
                     from_email=alerts.from_email, slack_conn_id=alerts.slack_conn_id,
                     base_url=alerts.airflow_base_url, kind=kind, enabled=alerts.enabled)


def gate_failure_notifiers(spec: Any) -> list:
    """For the gate task's on_failure_callback: subject ``[retrain:<pipeline>] gate failed: ...``."""
    return _notifiers(spec, "gate")


def approval_waiting_notifiers(spec: Any) -> list:
    """For the approve task's HITL ``notifiers`` (sent when it starts waiting): subject ``approval needed`` or
    ``override requested``, with the Required actions link."""
    alerts = spec.alerts
    if not alerts.active:
        return []
    return _channels(pipeline=spec.name, email=list(alerts.email), smtp_conn_id=alerts.smtp_conn_id,
                     from_email=alerts.from_email, slack_conn_id=alerts.slack_conn_id,
                     base_url=alerts.airflow_base_url, kind="approval_waiting",
                     deadline_minutes=spec.approval.timeout_minutes, enabled=alerts.enabled)


def approval_failure_notifiers(spec: Any) -> list:
    """For the approve task's on_failure_callback: ``approval timed out``, a gate failure that stands, or
    ``pipeline broken``."""
    return _notifiers(spec, "approval")


def infra_failure_notifiers(spec: Any) -> list:
    """For default_args on_failure_callback: subject ``[retrain:<pipeline>] pipeline broken: ...``."""
    return _notifiers(spec, "infra")


# ---------------------------------------------------------------- deadline alert


async def deadline_missed(*, pipeline: str, deadline_minutes: int, email: list[str] | None = None,
                          smtp_conn_id: str | None = None, from_email: str | None = None,
                          slack_conn_id: str | None = None, base_url: str | None = None, enabled: bool = True,
                          context: dict[str, Any] | None = None) -> str:
    """The DeadlineAlert callback (runs in the triggerer): e-mail and Slack, each attempted independently."""
    context = context or {}
    notifiers = _channels(pipeline=pipeline, email=list(email or []), smtp_conn_id=smtp_conn_id,
                          from_email=from_email, slack_conn_id=slack_conn_id, base_url=base_url, kind="deadline",
                          deadline_minutes=deadline_minutes, enabled=enabled)
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
    was queued. None when alerts are off, neither e-mail nor Slack is configured, or the budget is 0."""
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    alerts = spec.alerts
    minutes = int(spec.schedule.nightly_deadline_minutes)
    if minutes == 0 or not alerts.active or (not alerts.email and not alerts.slack_conn_id):
        return None
    kwargs = {"pipeline": spec.name, "deadline_minutes": minutes, "email": list(alerts.email),
              "smtp_conn_id": alerts.smtp_conn_id, "from_email": alerts.from_email,
              "slack_conn_id": alerts.slack_conn_id, "base_url": alerts.airflow_base_url,
              "enabled": alerts.enabled}
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(minutes=minutes),
                         callback=AsyncCallback(deadline_missed, kwargs=kwargs),
                         name=f"retrain_{spec.name}_deadline")
