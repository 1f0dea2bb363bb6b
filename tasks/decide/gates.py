"""Promotion gates: pure functions over arrays and metric dicts, no I/O (unit-tested with plain numbers).

Every gate returns a ``Gate`` (a ``tasks.contracts.GateResult``): name, passed, the measured value, the threshold,
a one-line reason, and details (the numbers behind it: intervals, per-class recalls, p-values). ``evaluate_gates``
applies the whole set from ``spec.gates`` and says which apply on a first run (no champion): the floors only. The
champion comparisons are skipped, and the student's retention and budgets are measured and reported but do not
gate, stated as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tasks import metrics
from tasks.contracts import GateResult


class Gate(GateResult):
    """A gate's verdict: the contract's GateResult, built by the functions below."""

    def to_dict(self) -> dict[str, Any]:
        return self.dump()


def make_gate(name: str, passed: bool, value: float | None, threshold: float | None, reason: str, *,
              skipped: bool = False, details: dict[str, Any] | None = None) -> Gate:
    return Gate(name=name, passed=passed, value=value, threshold=threshold, reason=reason, skipped=skipped,
                details=details or {})


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


# ---------------------------------------------------------------- statistics


def paired_bootstrap_diff(candidate_correct: Sequence[bool] | np.ndarray, champion_correct: Sequence[bool] | np.ndarray,
                          *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                          chunk: int = 200) -> dict[str, float]:
    """Paired bootstrap CI of accuracy(candidate) - accuracy(champion) on the same examples.

    Both models are scored on the same resampled indices in each replicate, so the interval reflects the
    paired difference, not two independent noises. Seeded: the same inputs give the same interval.
    """
    cand = np.asarray(candidate_correct, dtype=np.float64)
    champ = np.asarray(champion_correct, dtype=np.float64)
    if cand.shape != champ.shape or cand.ndim != 1:
        raise ValueError(f"paired arrays must have the same 1-d shape, got {cand.shape} and {champ.shape}")
    n = cand.shape[0]
    if n == 0:
        raise ValueError("no examples to bootstrap")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    per_example = cand - champ
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        diffs[start:start + size] = per_example[idx].mean(axis=1)
    alpha = 1.0 - confidence
    lower, upper = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(per_example.mean()), "lower": float(lower), "upper": float(upper),
            "confidence": confidence, "resamples": resamples, "n": n, "seed": seed}


def bootstrap_intervals(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int, *,
                        resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                        chunk: int = 200) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals of one model's accuracy and macro-F1 on one set (examples resampled).

    Each replicate's confusion counts come from one bincount, so 1000 replicates cost milliseconds; F1 per class
    is 2TP / (2TP + FP + FN), 0 when a class is absent from both labels and predictions, averaged over every
    declared class: the convention of ``tasks.metrics.macro_f1`` (a test pins the two to the same number).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"labels and predictions must have the same 1-d shape, got {y_true.shape}, {y_pred.shape}")
    n, k = y_true.shape[0], n_classes
    if n == 0:
        raise ValueError("no examples to bootstrap")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    cell = y_true * k + y_pred  # the confusion-matrix cell of each example
    rng = np.random.default_rng(seed)
    accuracy = np.empty(resamples, dtype=np.float64)
    macro_f1 = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        offsets = (np.arange(size) * k * k)[:, None]
        counts = np.bincount((cell[idx] + offsets).ravel(), minlength=size * k * k).reshape(size, k, k)
        tp = np.diagonal(counts, axis1=1, axis2=2).astype(np.float64)
        fp = counts.sum(axis=1) - tp  # predicted as the class, minus the hits
        fn = counts.sum(axis=2) - tp  # labelled as the class, minus the hits
        denom = 2 * tp + fp + fn
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        accuracy[start:start + size] = tp.sum(axis=1) / n
        macro_f1[start:start + size] = f1.mean(axis=1)
    alpha = 1.0 - confidence
    out = {}
    for name, values in (("accuracy", accuracy), ("macro_f1", macro_f1)):
        lower, upper = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        out[name] = {"lower": float(lower), "upper": float(upper), "confidence": confidence,
                     "resamples": resamples, "seed": seed}
    return out


def mcnemar_exact(candidate_correct: Sequence[bool] | np.ndarray,
                  champion_correct: Sequence[bool] | np.ndarray) -> dict[str, float]:
    """Exact (binomial) McNemar test on the discordant pairs; reported next to the bootstrap interval."""
    from scipy.stats import binomtest

    cand = np.asarray(candidate_correct, dtype=bool)
    champ = np.asarray(champion_correct, dtype=bool)
    b = int(np.sum(cand & ~champ))   # candidate right, champion wrong
    c = int(np.sum(~cand & champ))   # candidate wrong, champion right
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"candidate_only_correct": b, "champion_only_correct": c, "p_value": p}


def per_class_recall(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> list[float | None]:
    """Recall of each class (tasks.metrics.per_class); None for a class absent from the labels, which the
    class-recall gate then leaves out instead of counting a drop to 0."""
    per = metrics.per_class(y_true, y_pred, num_classes)
    return [recall if support else None for recall, support in zip(per["recall"], per["support"])]


# ---------------------------------------------------------------- gates


def floor_gate(name: str, value: float, minimum: float) -> Gate:
    ok = value >= minimum
    verb = ">=" if ok else "<"
    return make_gate(name, ok, _r(value), minimum, f"{value:.4f} {verb} floor {minimum:.4f}")


def non_inferiority_gate(name: str, candidate_correct, champion_correct, *, margin: float, resamples: int,
                         confidence: float = 0.95, seed: int = 0) -> Gate:
    """Pass only if the lower bound of the paired-bootstrap CI of (candidate - champion) is >= -margin."""
    ci = paired_bootstrap_diff(candidate_correct, champion_correct, resamples=resamples, confidence=confidence,
                               seed=seed)
    ci.update(mcnemar_exact(candidate_correct, champion_correct))
    ok = ci["lower"] >= -margin
    reason = (f"accuracy diff {ci['diff']:+.4f}, {int(confidence * 100)}% CI [{ci['lower']:+.4f}, {ci['upper']:+.4f}]"
              f" (n={ci['n']}, {resamples} paired resamples); lower bound {'>=' if ok else '<'} -margin {-margin:+.4f}")
    details = {k: (_r(v, 6) if isinstance(v, float) else v) for k, v in ci.items()}
    return make_gate(name, ok, _r(ci["lower"]), -margin, reason, details=details)


def class_recall_gate(name: str, candidate_recall: Sequence[float | None], champion_recall: Sequence[float | None],
                      labels: Sequence[str], *, max_drop: float) -> Gate:
    drops: dict[str, float] = {}
    for label, cand, champ in zip(labels, candidate_recall, champion_recall):
        if cand is None or champ is None:
            continue
        drops[label] = float(champ - cand)
    if not drops:
        return make_gate(name, True, None, max_drop, "no class present in the golden set for both models",
                         skipped=True)
    worst = max(drops, key=lambda k: drops[k])
    ok = drops[worst] <= max_drop + 1e-12
    reason = (f"largest recall drop {drops[worst]:+.4f} on class {worst!r} "
              f"({'<=' if ok else '>'} {max_drop:.4f})")
    details = {"drops": {k: _r(v) for k, v in drops.items()},
               "candidate_recall": dict(zip(labels, map(_r, candidate_recall))),
               "champion_recall": dict(zip(labels, map(_r, champion_recall)))}
    return make_gate(name, ok, _r(drops[worst]), max_drop, reason, details=details)


def retention_gate(student_accuracy: float, teacher_accuracy: float, *, min_ratio: float) -> Gate:
    ratio = student_accuracy / teacher_accuracy if teacher_accuracy > 0 else (1.0 if student_accuracy == 0 else math.inf)
    ok = ratio >= min_ratio
    return make_gate("student_retention", ok, _r(ratio), min_ratio,
                     f"student/teacher accuracy {student_accuracy:.4f}/{teacher_accuracy:.4f} = {ratio:.4f} "
                     f"({'>=' if ok else '<'} {min_ratio:.4f})")


def budget_gate(name: str, value: float | None, budget: float | None, unit: str) -> Gate:
    shown = "not measured" if value is None else f"{value:.3f} {unit}"
    if budget is None:
        return make_gate(name, True, _r(value, 3), None, f"{shown}; no budget set", skipped=True)
    if value is None:
        return make_gate(name, False, None, budget, f"{shown}, but a budget of {budget:g} {unit} is set")
    ok = value <= budget
    return make_gate(name, ok, _r(value, 3), budget,
                     f"{shown} ({'<=' if ok else '>'} budget {budget:g} {unit})")


def skipped(name: str, reason: str) -> Gate:
    return make_gate(name, True, None, None, reason, skipped=True)


def report_only(gate: Gate, why: str) -> Gate:
    """The same measurement, shown with its verdict in the reason, but not gating."""
    verdict = "would pass" if gate.passed else "would FAIL"
    return make_gate(gate.name, True, gate.value, gate.threshold, f"{why}; {verdict}: {gate.reason}",
                     skipped=True, details=gate.details)


# ---------------------------------------------------------------- the full set


@dataclass
class ModelScores:
    """What the gates need from one model on the golden set."""

    y_pred: np.ndarray
    accuracy: float
    macro_f1: float


def evaluate_gates(gates_spec: Any, labels: Sequence[str], y_true: Sequence[int], *, teacher: ModelScores,
                   student: ModelScores, champion_teacher: ModelScores | None = None,
                   champion_student: ModelScores | None = None, student_latency_ms_p95: float | None = None,
                   student_size_mb: float | None = None) -> tuple[bool, bool, list[Gate]]:
    """Apply every gate. Returns (passed, first_run, gates). ``gates_spec`` is ``spec.gates``."""
    g = gates_spec
    y_true = np.asarray(y_true)
    first_run = champion_teacher is None and champion_student is None
    out: list[Gate] = []
    for role, scores in (("teacher", teacher), ("student", student)):
        out.append(floor_gate(f"floor_accuracy_{role}", scores.accuracy, g.min_accuracy))
        out.append(floor_gate(f"floor_macro_f1_{role}", scores.macro_f1, g.min_macro_f1))
    confidence = getattr(g, "confidence", 0.95)
    for role, cand, champ in (("teacher", teacher, champion_teacher), ("student", student, champion_student)):
        if champ is None:
            why = "first run: no champion, so only the floors apply"
            out.append(skipped(f"non_inferiority_{role}", why))
            out.append(skipped(f"class_recall_{role}", why))
            continue
        out.append(non_inferiority_gate(f"non_inferiority_{role}", cand.y_pred == y_true, champ.y_pred == y_true,
                                        margin=g.non_inferiority_margin, resamples=g.bootstrap_resamples,
                                        confidence=confidence, seed=g.seed))
        out.append(class_recall_gate(f"class_recall_{role}", per_class_recall(y_true, cand.y_pred, len(labels)),
                                     per_class_recall(y_true, champ.y_pred, len(labels)), labels,
                                     max_drop=g.max_class_recall_drop))
    student_checks = [
        retention_gate(student.accuracy, teacher.accuracy, min_ratio=g.min_retention),
        budget_gate("student_latency_p95", student_latency_ms_p95, g.max_student_latency_ms_p95, "ms"),
        budget_gate("student_size", student_size_mb, g.max_student_size_mb, "MB"),
    ]
    if first_run:  # floors only: the student's own checks are reported, not gated
        student_checks = [report_only(gate, "first run: reported, not gated") for gate in student_checks]
    out.extend(student_checks)
    passed = all(gate.passed for gate in out)
    return passed, first_run, out


def render_markdown(pipeline: str, run_uri: str, passed: bool, first_run: bool, gates: Sequence[Gate],
                    metrics_summary: dict[str, Any]) -> str:
    lines = [f"# Gate report: {pipeline}", "", f"- run: `{run_uri}`",
             f"- verdict: **{'PASSED' if passed else 'FAILED'}**"]
    if first_run:
        lines.append("- **first run: no champion.** Only the absolute floors apply; non-inferiority and per-class "
                     "recall are skipped, and the student's retention, latency and size are reported, not gated.")
    failed = [gt.name for gt in gates if not gt.passed]
    if failed:
        lines.append(f"- failed gates: {', '.join(failed)}")
    lines += ["", "| gate | verdict | value | threshold | reason |", "|---|---|---|---|---|"]
    for gt in gates:
        verdict = "skipped" if gt.skipped else ("pass" if gt.passed else "**FAIL**")
        value = "" if gt.value is None else f"{gt.value:g}"
        threshold = "" if gt.threshold is None else f"{gt.threshold:g}"
        lines.append(f"| {gt.name} | {verdict} | {value} | {threshold} | {gt.reason.replace('|', '/')} |")
    lines += ["", "## Metrics (golden set with bootstrap intervals / holdout)", "",
              "| model | golden acc | golden macro-F1 | holdout acc | holdout macro-F1 |", "|---|---|---|---|---|"]
    for name, m in metrics_summary.items():
        if not m:
            continue
        cells = [with_interval(m, "golden_accuracy"), with_interval(m, "golden_macro_f1"),
                 with_interval(m, "holdout_accuracy"), with_interval(m, "holdout_macro_f1")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def with_interval(summary: dict[str, Any], key: str) -> str:
    """``0.8512 [0.8274, 0.8739]`` from evaluate's per-model summary (``key`` and ``key_ci``); "" if absent."""
    value = summary.get(key)
    if value is None:
        return ""
    ci = summary.get(f"{key}_ci")
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
