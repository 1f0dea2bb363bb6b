"""The retrain DAG's ``approve`` task: a person's word between the gate and publish, through Airflow 3.3's
human-in-the-loop operator (``HITLOperator``, standard provider), so the question shows in the UI's "Required
actions" and is answered there or through
``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails``.

While it waits, the task is parked in Airflow's ``awaiting_input`` state: no worker slot and no triggerer are
held; the scheduler enforces ``approval.timeout_minutes``. The decision logic (whether to ask, what an answer
means) is ``tasks.decide.approval``, without Airflow; this module only asks and records.

Only imported by plugins/pipeline_dags.py for a spec whose ``approval.policy`` is not ``never``: a pipeline
without approval pays nothing for the HITL operator at parse time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException

import retrain_alerts
import registry_ui
from stage_factory import apply_storage_env
from tasks.contracts import Decision, DriftResult, EvaluateResult, RunContext, TaskIds
from tasks.decide import approval as approvals
from tasks.spec import PipelineSpec

URL_XCOM_KEY = "required_actions_url"


class ApprovalTimedOut(AirflowFailException):
    """No answer within approval.timeout_minutes: nothing is published or promoted (alerted as such)."""


class GateFailureStands(AirflowFailException):
    """A failed gate that was not overridden (Reject, no reason, or no one may override on this run)."""


def gate_failure_text(evaluation: EvaluateResult, why: str) -> str:
    failed = ", ".join(evaluation.failed_gates) or "unknown"
    return f"gates failed: {failed}; {why}; report: {evaluation.report_md_uri}"


class CandidateApprovalOperator(HITLOperator):
    """Asks Approve/Reject (with a reason) about the run's candidate when ``tasks.decide.approval.question`` says
    so; otherwise records ``not_required`` and returns at once. Returns the decision (also written create-only
    to ``RUN/approve/result.json``, which ``python -m tasks publish --approval`` reads)."""

    def __init__(self, *, pipeline_spec: PipelineSpec, **kwargs: Any) -> None:
        self.pipeline_spec = pipeline_spec
        approval = pipeline_spec.approval
        kwargs.pop("params", None)  # the DAG's trigger form: not fields of this question (HITL drops them too)
        super().__init__(
            subject=f"Promote the {pipeline_spec.name} candidate?",
            options=list(approvals.OPTIONS),
            multiple=False,
            params={"reason": Param("", type="string", title="Reason",
                                    description="Why. Required to override a failed gate; goes into the audit trail "
                                                "and the model card.")},
            notifiers=retrain_alerts.approval_waiting_notifiers(pipeline_spec),
            assigned_users=[{"id": user, "name": user} for user in approval.approvers] or None,
            response_timeout=timedelta(minutes=approval.timeout_minutes),
            **kwargs,
        )

    # ---- what the run is about, read through the stage contracts

    def _inputs(self, context: Any) -> tuple[RunContext, EvaluateResult, Any]:
        from tasks import storage
        from tasks.spec import load_spec

        ti = context["ti"]
        apply_storage_env(self.pipeline_spec)
        run = RunContext.read(ti.xcom_pull(task_ids=TaskIds.PREPARE_RUN))
        evaluation = EvaluateResult.read(ti.xcom_pull(task_ids=TaskIds.EVALUATE))
        run_spec = load_spec(storage.join(run.run_uri, "spec.json"))  # the run's frozen spec decides
        return run, evaluation, run_spec

    def execute(self, context: Any) -> Any:
        run, evaluation, run_spec = self._inputs(context)
        earlier = approvals.read(run.run_uri)
        if earlier is not None:  # a cleared task: a person's answer is never asked twice, nor rewritten
            return self._conclude(earlier, evaluation)
        policy = run_spec.approval
        kind = approvals.question(policy, evaluation.passed, run.dry_run)
        if kind is None:
            if not evaluation.passed:
                raise GateFailureStands(gate_failure_text(evaluation, "no override on this run"))
            decision = approvals.not_required(policy.policy, evaluation.passed,
                                              "dry run" if run.dry_run else f"policy {policy.policy}")
            approvals.write(run.run_uri, decision)
            return decision

        ti = context["ti"]
        base_url = retrain_alerts.airflow_base_url(run_spec.alerts.airflow_base_url)
        self.required_actions_url = self.generate_link_to_ui(task_instance=ti, base_url=base_url)
        ti.xcom_push(key=URL_XCOM_KEY, value=self.required_actions_url)
        drift = ti.xcom_pull(task_ids=TaskIds.DRIFT)
        decision = ti.xcom_pull(task_ids=TaskIds.DECIDE)
        champion = run.champion_version if run.champion_version != "none" else None
        self.subject = (f"Promote the {run.pipeline} candidate? Its gates passed" if kind == "approval" else
                        f"Override the failed gates of the {run.pipeline} candidate? "
                        f"({', '.join(evaluation.failed_gates)})")
        self.body = approvals.body(
            pipeline=run.pipeline, kind=kind, evaluation=evaluation,
            drift=DriftResult.read(drift) if drift else None,
            reasons=Decision.read(decision).reasons if decision else [],
            champion=champion, registry_url=registry_ui.pipeline_url(base_url, run.pipeline),
            run_url=retrain_alerts.run_url(base_url, ti.dag_id, ti.run_id),
            confidence=run_spec.gates.confidence, timeout_minutes=policy.timeout_minutes)
        self.log.info("waiting for a person (%s): %s", kind, self.required_actions_url)
        return super().execute(context)  # writes the request, then parks the task in awaiting_input

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        run, evaluation, run_spec = self._inputs(context)
        policy = run_spec.approval
        kind = approvals.question(policy, evaluation.passed, run.dry_run) or "approval"
        if event.get("error_type") == "timeout":
            decision = approvals.timed_out(policy.policy, kind, policy.timeout_minutes)
            approvals.write(run.run_uri, decision)
            raise ApprovalTimedOut(f"no answer within {policy.timeout_minutes:g} min to "
                                   f"{'approve' if kind == 'approval' else 'override the failed gates of'} the "
                                   f"candidate: nothing is published or promoted; {run.champion_version} stays")
        payload = super().execute_complete(context, event)  # validates the options and the form
        responded_at = payload["responded_at"]
        decision = approvals.answer(policy.policy, kind, list(payload["chosen_options"]),
                                    (payload["params_input"] or {}).get("reason"),
                                    dict(payload["responded_by_user"] or {}) or None,
                                    responded_at.isoformat() if hasattr(responded_at, "isoformat") else responded_at)
        approvals.write(run.run_uri, decision)
        return self._conclude(approvals.read(run.run_uri) or decision, evaluation)

    def _conclude(self, decision: dict[str, Any], evaluation: EvaluateResult) -> dict[str, Any]:
        self.log.info("%s", approvals.headline(decision))
        if decision["decision"] == approvals.TIMED_OUT:
            raise ApprovalTimedOut(approvals.headline(decision))
        if decision["decision"] == approvals.DECLINED:
            raise GateFailureStands(gate_failure_text(evaluation, approvals.headline(decision)))
        return decision


def approval_task(spec: PipelineSpec) -> CandidateApprovalOperator:
    """The ``approve`` task: no retries (a retry would ask again), its own alerts (timed out, gate failure
    stands, broken)."""
    return CandidateApprovalOperator(task_id=approvals.STEP, pipeline_spec=spec, retries=0,
                                     on_failure_callback=retrain_alerts.approval_failure_notifiers(spec))
