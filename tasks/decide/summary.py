"""The run summary: what was decided, what was measured, where the artifacts are.

Built by the retrain DAG's notify task from the stages' results; stored as ``runs/<pipeline>/<run>/summary.json``
and printed at the end of the demo. Pure Python: no heavy imports.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tasks import cli, cost
from tasks.contracts import RESULT_OF_TASK, Outcome, Result, RunContext, TaskIds


class MalformedResult(ValueError):
    """A stage result (XCom) that does not match its contract in tasks.contracts: a bug to fix, not to hide."""


def validated(task_id: str, result: Result | dict | None) -> Result | None:
    """A stage's result as its contract model: raw JSON validated here, a model (already validated where it was
    read, e.g. stage_factory.pull_result) taken as it is; None for a stage that did not run (skipped, or failed
    early)."""
    model = RESULT_OF_TASK[task_id]
    if result is None or isinstance(result, model):
        return result
    try:
        return model.read(result)
    except ValidationError as exc:
        raise MalformedResult(f"the {task_id} result does not match {model.__name__}: {exc}") from exc


def _pick(result: Result | None, *keys: str) -> dict[str, Any]:
    data = result.dump() if result is not None else {}
    return {k: data[k] for k in keys if k in data}


# Evaluate's per-model metrics worth a line in the summary (golden set first: the gates judge on it).
EVALUATION_KEYS = ("golden_accuracy", "golden_accuracy_ci", "golden_macro_f1", "golden_macro_f1_ci",
                   "holdout_accuracy", "holdout_macro_f1", "latency_ms_p95", "throughput_batch32_per_s",
                   "size_weights_mb")


def _headline_metrics(metrics: dict | None) -> dict[str, Any]:
    """Evaluate's golden/holdout metrics, or a training stage's holdout metrics, as flat key=value pairs."""
    if not isinstance(metrics, dict):
        return {}
    found = {k: metrics[k] for k in EVALUATION_KEYS if k in metrics}
    return found or {f"holdout_{k}": metrics[k] for k in ("accuracy", "macro_f1") if k in metrics}


def _evaluation_lines(metrics: dict[str, Any]) -> dict[str, Any]:
    """Evaluate's metrics by model: teacher, student, and the champion's two (nested under "champion")."""
    out: dict[str, Any] = {}
    for role, m in metrics.items():
        if role == "champion" and isinstance(m, dict) and ("teacher" in m or "student" in m):
            out.update({f"champion_{sub}": _headline_metrics(m.get(sub)) for sub in ("teacher", "student")})
        else:
            out[role] = _headline_metrics(m)
    return out


def _left_out(evaluation: Result | None) -> dict[str, Any]:
    """Golden rows left out of the comparison with the champion (it trained on their texts), only when some
    were."""
    comparison = getattr(evaluation, "champion_comparison", None)
    if comparison is None or not comparison.excluded_rows:
        return {}
    return {"champion_comparison": {k: getattr(comparison, k) for k in (
        "golden_rows", "compared_rows", "excluded_rows", "too_few", "why")}}


def _approval(publish: Result | None) -> dict[str, Any]:
    """The person's answer (approved, rejected, overridden), only when the spec asked for one."""
    answer = getattr(publish, "approval", None)
    return {"approval": answer} if answer else {}


def build_summary(run: RunContext | dict, results: dict[str, Result | dict | None]) -> dict[str, Any]:
    """``run`` is prepare_run's RunContext, ``results`` each stage's result by task id (None when it did not run),
    as models or as raw JSON. Raises MalformedResult when raw JSON does not match its contract."""
    context = validated(TaskIds.PREPARE_RUN, run)
    r = {task: validated(task, results.get(task)) for task in (
        TaskIds.INGEST, TaskIds.DRIFT, TaskIds.DECIDE, TaskIds.FINETUNE, TaskIds.DISTILL, TaskIds.EVALUATE,
        TaskIds.PUBLISH)}
    decision, evaluation, publish = r[TaskIds.DECIDE], r[TaskIds.EVALUATE], r[TaskIds.PUBLISH]
    if decision is None:
        outcome = Outcome.FAILED_BEFORE_DECISION
    elif decision.stopped:
        outcome = Outcome.STOPPED
    elif not decision.retrain:
        outcome = Outcome.SKIPPED
    elif publish is not None and publish.promoted:
        outcome = Outcome.PROMOTED
    elif publish is not None:
        outcome = Outcome.PUBLISHED_NOT_PROMOTED
    elif evaluation is not None and not evaluation.passed:
        outcome = Outcome.BLOCKED
    else:
        outcome = Outcome.FAILED_IN_TRAINING
    finetune, distill = r[TaskIds.FINETUNE], r[TaskIds.DISTILL]
    return {
        "pipeline": context.pipeline,
        "run_key": context.run_key,
        "run_uri": context.run_uri,
        "run_type": context.run_type,
        "dry_run": context.dry_run,
        "outcome": outcome,
        "decision": _pick(decision, "retrain", "stopped", "reasons", "new_rows", "triggers",
                          "champion_snapshot_rows", "withdrawn"),
        "ingest": _pick(r[TaskIds.INGEST], "snapshot_id", "snapshot_uri", "changed", "total_rows", "new_rows",
                        "quarantined_rows", "duplicates_removed", "contaminated_removed"),
        "drift": _pick(r[TaskIds.DRIFT], "drift_detected", "summary", "report_uri"),
        "teacher": {**_headline_metrics(finetune.metrics if finetune else None),
                    **_pick(finetune, "model_uri", "train_rows", "train_seconds", "samples_processed")},
        "student": {**_headline_metrics(distill.metrics if distill else None),
                    **_pick(distill, "model_uri", "train_seconds", "samples_processed")},
        # Full or incremental (train.retrain_mode): what the decision chose and why, what each stage trained on.
        "training": training_summary(decision, finetune, distill),
        "gates": {**_pick(evaluation, "passed", "first_run", "failed_gates", "report_md_uri"),
                  **_left_out(evaluation)},
        "evaluation": _evaluation_lines(evaluation.metrics if evaluation else {}),
        "publish": _pick(publish, "version", "version_uri", "promoted", "champion_before", "champion_after",
                         "reason", "model_cards") | _approval(publish),
        "champion_before": cli.optional(context.champion_version),
        # What the night cost, stage by stage (tasks.cost): wall, GPU-seconds, GPU energy where NVML answers.
        "cost": cost.add_up({task: result.cost if result is not None else None for task, result in r.items()
                             if task != TaskIds.DECIDE}),
        # What the teacher's train rows were short of (training.train_data_warnings): only when there is some.
        **({"warnings": warnings} if (warnings := ((finetune.train_data or {}).get("warnings") if finetune
                                                    else None)) else {}),
    }


def training_summary(decision: Result | None, finetune: Result | None, distill: Result | None) -> dict[str, Any]:
    """{mode, reasons, stages: {finetune|distill: {mode, train_rows, new_rows, replay_rows}}}; {} on a skip."""
    decided = getattr(decision, "training", None) or {}
    stages = {}
    for name, result in (("finetune", finetune), ("distill", distill)):
        kind = getattr(result, "training", None) or {}
        if kind:
            stages[name] = {k: kind[k] for k in ("mode", "train_rows", "new_rows", "replay_rows",
                                                 "snapshot_train_rows") if k in kind}
    if not decided and not stages:
        return {}
    mode = (stages.get("finetune") or {}).get("mode") or decided.get("mode")
    return {"mode": mode, "reasons": decided.get("reasons") or [], "stages": stages}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"== {summary['pipeline']} run {summary['run_key']}: {summary['outcome'].upper()} =="]
    decision = summary.get("decision") or {}
    if decision:
        lines.append(f"decision: {'retrain' if decision.get('retrain') else 'skip'} - "
                     + "; ".join(decision.get("reasons", [])))
    ingest = summary.get("ingest") or {}
    if ingest:
        since_champion = decision.get("new_rows", ingest.get("new_rows"))
        lines.append(f"data: snapshot {ingest.get('snapshot_id')} ({ingest.get('total_rows')} rows, "
                     f"{since_champion} new since the champion's, {ingest.get('quarantined_rows', 0)} quarantined "
                     "in this ingest)")
    if summary.get("drift"):
        lines.append(f"drift: {summary['drift'].get('summary')}")
    training = summary.get("training") or {}
    if training:
        rows = "; ".join(f"{stage} {k['mode']} on {k.get('train_rows')} rows"
                         + (f" ({k['new_rows']} new + {k['replay_rows']} replayed)" if k.get("mode") == "incremental"
                            else "") for stage, k in (training.get("stages") or {}).items())
        lines.append(f"training: {training.get('mode')}" + (f" - {rows}" if rows else "") + " - "
                     + " ".join(training.get("reasons") or []))
    lines += [f"warning: {warning}" for warning in summary.get("warnings") or []]
    for role in ("teacher", "student"):
        if summary.get(role):
            lines.append(f"{role}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in summary[role].items()))
    for role, metrics in (summary.get("evaluation") or {}).items():
        if metrics:
            lines.append(f"eval {role}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))
    gates = summary.get("gates") or {}
    if gates:
        verdict = "passed" if gates.get("passed") else f"FAILED ({', '.join(gates.get('failed_gates', []))})"
        lines.append(f"gates: {verdict}{' (first run: floors only)' if gates.get('first_run') else ''}; "
                     f"report {gates.get('report_md_uri')}")
        left_out = gates.get("champion_comparison")
        if left_out:
            rows = (f"{left_out['compared_rows']} of {left_out['golden_rows']} golden rows, "
                    f"{left_out['excluded_rows']} {left_out['why']} left out")
            lines.append(f"champion not compared: only {rows}, too few (the floors applied)" if left_out["too_few"]
                         else f"champion compared on {rows}")
    publish = summary.get("publish") or {}
    if publish:
        lines.append(f"publish: version {publish.get('version')} at {publish.get('version_uri')}; "
                     f"promoted={publish.get('promoted')}; champion {publish.get('champion_before')} -> "
                     f"{publish.get('champion_after')}" + (f" ({publish['reason']})" if publish.get("reason") else ""))
    total = (summary.get("cost") or {}).get("total")
    if total and total.get("wall_seconds"):
        energy = f", {total['energy_kwh']:.4f} kWh" if total.get("energy_kwh") is not None else ""
        samples = f", {total['samples_processed']:,} samples processed" if total.get("samples_processed") else ""
        lines.append(f"cost: {total['wall_seconds']:.0f} s in stages, {total['gpu_seconds']:.0f} GPU-seconds{energy}"
                     f"{samples}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):  # an interval
        return "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
    return str(value)
