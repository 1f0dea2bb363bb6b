"""The run summary: what was decided, what was measured, where the artifacts are.

Built by the retrain DAG's notify task from the stages' results; stored as ``runs/<pipeline>/<run>/summary.json``
and printed at the end of the demo. Pure Python: no heavy imports.
"""

from __future__ import annotations

from typing import Any


def _pick(result: dict | None, *keys: str) -> dict[str, Any]:
    result = result or {}
    return {k: result[k] for k in keys if k in result}


# Evaluate's per-model metrics worth a line in the summary (golden set first: the gates judge on it).
EVALUATION_KEYS = ("golden_accuracy", "golden_macro_f1", "holdout_accuracy", "holdout_macro_f1", "latency_ms_p95",
                   "throughput_batch32_per_s", "size_weights_mb")


def _headline_metrics(metrics: dict | None) -> dict[str, Any]:
    """Evaluate's golden/holdout metrics, or a training stage's holdout metrics, as flat key=value pairs."""
    if not isinstance(metrics, dict):
        return {}
    found = {k: metrics[k] for k in EVALUATION_KEYS if k in metrics}
    return found or {f"holdout_{k}": metrics[k] for k in ("accuracy", "macro_f1") if k in metrics}


def build_summary(run: dict, results: dict[str, dict | None]) -> dict[str, Any]:
    decision = results.get("decide") or {}
    evaluation = results.get("evaluate") or {}
    publish = results.get("publish") or {}
    if not decision:
        outcome = "failed before the decision"
    elif not decision.get("retrain"):
        outcome = "skipped"
    elif publish.get("promoted"):
        outcome = "promoted"
    elif publish:
        outcome = "published, not promoted"
    elif evaluation and not evaluation.get("passed"):
        outcome = "blocked by gates"
    else:
        outcome = "failed during training or evaluation"
    return {
        "pipeline": run.get("pipeline"),
        "run_key": run.get("run_key"),
        "run_uri": run.get("run_uri"),
        "run_type": run.get("run_type"),
        "dry_run": run.get("dry_run"),
        "outcome": outcome,
        "decision": _pick(decision, "retrain", "reasons", "new_rows"),
        "ingest": _pick(results.get("ingest"), "snapshot_id", "snapshot_uri", "changed", "total_rows", "new_rows",
                        "quarantined_rows", "duplicates_removed", "contaminated_removed"),
        "drift": _pick(results.get("drift"), "drift_detected", "summary", "report_uri"),
        "teacher": {**_headline_metrics((results.get("finetune") or {}).get("metrics")),
                    **_pick(results.get("finetune"), "model_uri", "train_rows", "train_seconds")},
        "student": {**_headline_metrics((results.get("distill") or {}).get("metrics")),
                    **_pick(results.get("distill"), "model_uri", "train_seconds")},
        "gates": _pick(evaluation, "passed", "first_run", "failed_gates", "report_md_uri"),
        "evaluation": {role: _headline_metrics(m) for role, m in (evaluation.get("metrics") or {}).items()},
        "publish": _pick(publish, "version", "version_uri", "promoted", "champion_before", "champion_after",
                         "reason"),
        "champion_before": run.get("champion_version"),
    }


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
    publish = summary.get("publish") or {}
    if publish:
        lines.append(f"publish: version {publish.get('version')} at {publish.get('version_uri')}; "
                     f"promoted={publish.get('promoted')}; champion {publish.get('champion_before')} -> "
                     f"{publish.get('champion_after')}" + (f" ({publish['reason']})" if publish.get("reason") else ""))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
