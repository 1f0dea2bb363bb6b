"""A person's word before the champion moves: the decision logic of the ``approval`` spec section, without Airflow.

The retrain DAG's ``approve`` task (plugins/approval_gate.py, Airflow's HITLOperator) asks; this module says
*whether* to ask, what the question's body shows, what an answer (or its absence) means, and where the answer
is kept: ``RUN/approve/result.json``, which the publish stage reads (``--approval``) and copies into the
manifest, the model cards, the audit trail and the run summary.

Policy x gate outcome (dry runs never ask: they never promote)::

    policy                gates passed                      gates failed
    never                 promote                           fail the run (the default)
    always                ask Approve/Reject                fail the run
    override_failed_gate  promote                           ask: Approve = override (with a reason) / Reject
    always_and_override   ask Approve/Reject                ask: Approve = override / Reject

Answers: Approve on a passed candidate -> ``approved`` (published, promoted); Approve on a failed one with a
reason -> ``overridden`` (published, promoted, marked overridden everywhere); Reject on a passed candidate ->
``rejected`` (published as rejected, not promoted); Reject on a failed one -> ``declined`` (the gate failure
stands: the run fails as it does without approval); an override without a reason is ``declined`` too; no
answer within ``approval.timeout_minutes`` -> ``timed_out`` (nothing is published or promoted, on-call is told).
"""

from __future__ import annotations

from typing import Any

from tasks import storage
from tasks.contracts import DriftResult, EvaluateResult

APPROVE, REJECT = "Approve", "Reject"  # the HITL options (Airflow's ApprovalOperator uses the same two)
OPTIONS = [APPROVE, REJECT]
STEP = "approve"  # the DAG task and the run folder it writes to

# decisions
NOT_REQUIRED, APPROVED, OVERRIDDEN, REJECTED, DECLINED, TIMED_OUT = (
    "not_required", "approved", "overridden", "rejected", "declined", "timed_out")
PROMOTES = (APPROVED, OVERRIDDEN)
PUBLISHES = (NOT_REQUIRED, APPROVED, OVERRIDDEN, REJECTED)  # declined and timed_out fail the run before publish


def question(policy: Any, passed: bool, dry_run: bool = False) -> str | None:
    """What to ask a person: ``"approval"`` (a passed candidate), ``"override"`` (a failed one), or None (no one
    is asked: the gates decide, as without approval). ``policy`` is the spec's ``approval`` section."""
    if dry_run:
        return None
    if passed:
        return "approval" if policy.on_pass else None
    return "override" if policy.on_fail else None


def not_required(policy: str, passed: bool, why: str) -> dict[str, Any]:
    return {"policy": policy, "question": None, "decision": NOT_REQUIRED, "promote": passed,
            "gates_passed": passed, "responded_by": None, "reason": why, "responded_at": None}


def answer(policy: str, kind: str, chosen: list[str], reason: str | None, responded_by: dict[str, Any] | None,
           responded_at: str | None, asked_at: str | None = None) -> dict[str, Any]:
    """The decision a person's answer makes (``kind`` from ``question``)."""
    if len(chosen) != 1 or chosen[0] not in OPTIONS:
        raise ValueError(f"expected exactly one of {OPTIONS}, got {chosen}")
    reason = (reason or "").strip() or None
    approved = chosen[0] == APPROVE
    if kind == "approval":
        decision = APPROVED if approved else REJECTED
    elif kind == "override":
        decision = OVERRIDDEN if approved and reason else DECLINED
        if approved and not reason:
            reason = "override refused: overriding a failed gate needs a reason"
    else:
        raise ValueError(f"unknown question {kind!r}")
    return {"policy": policy, "question": kind, "decision": decision, "promote": decision in PROMOTES,
            "gates_passed": kind == "approval", "chosen": chosen[0], "responded_by": responded_by,
            "reason": reason, "responded_at": responded_at, "asked_at": asked_at}


def timed_out(policy: str, kind: str, timeout_minutes: float, asked_at: str | None = None) -> dict[str, Any]:
    return {"policy": policy, "question": kind, "decision": TIMED_OUT, "promote": False,
            "gates_passed": kind == "approval", "responded_by": None,
            "reason": f"no answer within {timeout_minutes:g} min", "responded_at": None, "asked_at": asked_at}


def responder(decision: dict[str, Any] | None) -> str | None:
    """``name (id)`` of whoever answered, or None."""
    who = (decision or {}).get("responded_by") or None
    if not who:
        return None
    name, uid = who.get("name"), who.get("id")
    return f"{name} ({uid})" if name and uid and name != uid else str(name or uid)


def headline(decision: dict[str, Any] | None) -> str:
    """One line for summaries, alerts, the registry page: ``approved by alice: looks good``."""
    if not decision or decision.get("decision") == NOT_REQUIRED:
        return "no approval asked"
    verb = {APPROVED: "approved", OVERRIDDEN: "failed gates OVERRIDDEN", REJECTED: "rejected",
            DECLINED: "override declined", TIMED_OUT: "approval timed out"}.get(decision["decision"],
                                                                               decision["decision"])
    who = responder(decision)
    reason = decision.get("reason")
    return verb + (f" by {who}" if who else "") + (f": {reason}" if reason else "")


def publish_verdict(approval: dict[str, Any] | None, evaluation_passed: bool) -> tuple[bool, str | None]:
    """(promote?, why not / how) for the publish stage. None = no approval step: the gates alone decide."""
    if approval is None or approval.get("decision") == NOT_REQUIRED:
        return evaluation_passed, None
    decision = approval.get("decision")
    if decision == APPROVED and evaluation_passed:
        return True, headline(approval)
    if decision == OVERRIDDEN and not evaluation_passed:
        return True, headline(approval)
    if decision in (APPROVED, OVERRIDDEN):  # the answer does not match the evaluation it is about
        return False, f"approval {decision} does not match the evaluation (passed={evaluation_passed}); not promoted"
    return False, headline(approval)


# ---------------------------------------------------------------- where the answer is kept


def result_uri(run_uri: str) -> str:
    return storage.join(run_uri, STEP, "result.json")


def write(run_uri: str, decision: dict[str, Any]) -> str:
    """Create-only: a retried publish or a cleared task never rewrites a person's answer."""
    uri = result_uri(run_uri)
    try:
        storage.write_json(uri, decision, if_none_match=True)
    except storage.PreconditionFailed:
        pass
    return uri


def read(run_uri: str) -> dict[str, Any] | None:
    uri = result_uri(run_uri)
    return storage.read_json(uri) if storage.exists(uri) else None


def summarize(summary: dict[str, Any], decision: dict[str, Any] | None) -> dict[str, Any]:
    """The run summary with the person's answer; a declined override is a gate failure (blocked), an unanswered
    request ends the run as not approved (the snapshot is not counted as trained on: the next run asks again)."""
    from tasks.contracts import Outcome

    if not decision or decision.get("decision") == NOT_REQUIRED:
        return summary
    summary["approval"] = decision
    if decision["decision"] == DECLINED:
        summary["outcome"] = Outcome.BLOCKED
    elif decision["decision"] == TIMED_OUT:
        summary["outcome"] = Outcome.NOT_APPROVED
    return summary


# ---------------------------------------------------------------- the question's body (Markdown)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x).replace("|", "/")


def _ci(m: dict[str, Any], key: str) -> str:
    value, ci = m.get(key), m.get(f"{key}_ci")
    if value is None:
        return "-"
    return _fmt(value) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci and len(ci) == 2 else "")


def body(*, pipeline: str, kind: str, evaluation: EvaluateResult, drift: DriftResult | None,
         reasons: list[str], champion: str | None, registry_url: str, run_url: str | None = None,
         confidence: float = 0.95, timeout_minutes: float | None = None) -> str:
    """What the person reads in Required actions: the gate table, the metrics with their intervals, the drift
    summary, why the run retrained, and the links to the registry page and the run."""
    passed = evaluation.passed
    level = f"{confidence:.0%}"
    lines = []
    if kind == "override":
        lines += [f"**The candidate of `{pipeline}` FAILED its gates** "
                  f"({', '.join(evaluation.failed_gates) or 'see the table'}). "
                  "**Approve** overrides them and promotes it, recorded as *overridden* on the version, its model "
                  "card, the registry page and the audit trail: **a reason is required** (without one the override "
                  "is refused). **Reject** keeps the gate failure: nothing is promoted.", ""]
    else:
        lines += [f"**The candidate of `{pipeline}` passed its gates**"
                  + (" (first run: floors only)" if evaluation.first_run else "") + ". "
                  "**Approve** publishes and promotes it. **Reject** publishes it as *rejected*; the champion stays. "
                  "Your name and reason go into the audit trail and the model card.", ""]
    lines += [f"Champion now: `{champion or 'none'}`"
              + (f" · no answer within {timeout_minutes:g} min: nothing is promoted and on-call is alerted"
                 if timeout_minutes else ""), ""]
    lines += ["| gate | verdict | value | threshold | note |", "|---|---|---|---|---|"]
    for g in evaluation.gates:
        verdict = "skipped" if g.skipped else ("pass" if g.passed else "**FAIL**")
        lines.append(f"| {g.name} | {verdict} | {_fmt(g.value)} | {_fmt(g.threshold)} | {_fmt(g.reason)} |")
    metrics = evaluation.metrics
    rows = [("candidate teacher", metrics.get("teacher")), ("candidate student", metrics.get("student"))]
    champion_metrics = metrics.get("champion") or {}
    rows += [(f"champion {role}", champion_metrics.get(role)) for role in ("teacher", "student")]
    rows = [(name, m) for name, m in rows if isinstance(m, dict) and m]
    if rows:
        lines += ["", f"| model | golden accuracy [{level} CI] | golden macro-F1 [{level} CI] |", "|---|---|---|"]
        lines += [f"| {name} | {_ci(m, 'golden_accuracy')} | {_ci(m, 'golden_macro_f1')} |" for name, m in rows]
    lines.append("")
    if drift is None:
        lines.append("**Drift:** no drift result for this run")
    else:
        lines.append(f"**Drift:** {'DETECTED' if drift.drift_detected else 'not detected'}"
                     + (f" - {drift.summary}" if drift.summary else ""))
        for name, check in sorted(drift.checks.items()):
            if isinstance(check, dict) and check.get("drifted"):
                lines.append(f"- {name}: statistic {_fmt(check.get('statistic'))} vs threshold "
                             f"{_fmt(check.get('threshold'))}")
    if reasons:
        lines += ["", "**Why this run retrained:**", *[f"- {r}" for r in reasons]]
    lines += ["", f"[Model registry page]({registry_url})"]
    if run_url:
        lines.append(f" · [Airflow run]({run_url})")
    if evaluation.report_md_uri:
        lines += ["", f"Gate report: `{evaluation.report_md_uri}`"]
    if not passed and kind == "approval":  # cannot happen through question(); said plainly if it ever does
        lines += ["", "Note: the evaluation did not pass."]
    return "\n".join(lines)
