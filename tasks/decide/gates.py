"""Promotion gates: pure functions over arrays and metric dicts, no I/O (unit-tested with plain numbers).

Every gate returns a ``Gate`` (a ``tasks.contracts.GateResult``): name, passed, the measured value, the threshold,
a one-line reason, and details (the numbers behind it: intervals, per-class recalls, p-values). ``evaluate_gates``
applies the whole set from ``spec.gates`` and says which apply on a first run (no champion): the floors only
(above the majority-class baseline, and any absolute floor). The champion comparisons are skipped, and the
student's retention and budgets are measured and reported but do not gate, stated as such.

The comparisons with the champion can be given fewer golden rows than the floors (``ChampionRows``: evaluate
leaves out the rows whose text the champion trained on); with too few left they are skipped, saying why.

Each gate that compares is a test, not a threshold on a point estimate: the floors and non-inferiority use
paired bootstrap intervals on the golden set; the per-class recall gate a one-sided paired test per class,
corrected for the number of classes (docs/registry.md: Gates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.stats import binomtest, false_discovery_control, norm

from tasks import metrics
from tasks.contracts import ChampionComparison, GateResult, Remedy
from tasks.decide import remedies


class Gate(GateResult):
    """A gate's verdict: the contract's GateResult, built by the functions below."""

    def to_dict(self) -> dict[str, Any]:
        return self.dump()


def make_gate(name: str, passed: bool, value: float | None, threshold: float | None, reason: str, *,
              skipped: bool = False, details: dict[str, Any] | None = None, remedy: Remedy | None = None) -> Gate:
    return Gate(name=name, passed=passed, value=value, threshold=threshold, reason=reason, skipped=skipped,
                details=details or {}, remedy=remedy)


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


def _replicates(y_true: np.ndarray, preds: Sequence[np.ndarray], k: int, *, resamples: int, seed: int,
                chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bootstrap replicates of (accuracy, macro-F1) of each prediction vector, all on the SAME resampled rows
    (so differences between them are paired). Each replicate's confusion counts come from one bincount."""
    n = y_true.shape[0]
    if n == 0:
        raise ValueError("no examples to bootstrap")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    cells = [y_true * k + np.asarray(p, dtype=np.int64) for p in preds]  # the confusion-matrix cell of each row
    rng = np.random.default_rng(seed)
    out = [(np.empty(resamples, dtype=np.float64), np.empty(resamples, dtype=np.float64)) for _ in preds]
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        offsets = (np.arange(size) * k * k)[:, None]
        for cell, (accuracy, macro_f1) in zip(cells, out):
            counts = np.bincount((cell[idx] + offsets).ravel(), minlength=size * k * k).reshape(size, k, k)
            tp = np.diagonal(counts, axis1=1, axis2=2).astype(np.float64)
            fp = counts.sum(axis=1) - tp  # predicted as the class, minus the hits
            fn = counts.sum(axis=2) - tp  # labelled as the class, minus the hits
            denom = 2 * tp + fp + fn
            f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
            accuracy[start:start + size] = tp.sum(axis=1) / n
            macro_f1[start:start + size] = f1.mean(axis=1)
    return out


def _check_labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"labels and predictions must have the same 1-d shape, got {y_true.shape}, {y_pred.shape}")
    return y_true, y_pred


def bootstrap_intervals(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int, *,
                        resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                        chunk: int = 200) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals of one model's accuracy and macro-F1 on one set (examples resampled).

    F1 per class is 2TP / (2TP + FP + FN), 0 when a class is absent from both labels and predictions, averaged
    over every declared class: the convention of ``tasks.metrics.macro_f1`` (a test pins the two to the same
    number).
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    [(accuracy, macro_f1)] = _replicates(y_true, [y_pred], n_classes, resamples=resamples, seed=seed, chunk=chunk)
    alpha = 1.0 - confidence
    out = {}
    for name, values in (("accuracy", accuracy), ("macro_f1", macro_f1)):
        lower, upper = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        out[name] = {"lower": float(lower), "upper": float(upper), "confidence": confidence,
                     "resamples": resamples, "seed": seed}
    return out


def majority_baseline(y_true: Sequence[int] | np.ndarray, n_classes: int) -> dict[str, float | int]:
    """The classifier that always predicts the golden set's most frequent class (ties: the lowest id), with its
    accuracy (that class's share) and macro-F1 (tasks.metrics: its one nonzero F1 over every declared class)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    counts = np.bincount(y_true, minlength=n_classes)
    majority = int(np.argmax(counts))
    constant = np.full_like(y_true, majority)
    return {"class_id": majority, "accuracy": metrics.accuracy(y_true, constant),
            "macro_f1": metrics.macro_f1(y_true, constant, n_classes)}


def paired_bootstrap_vs_baseline(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                                 n_classes: int, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                                 chunk: int = 200) -> dict[str, dict[str, float]]:
    """Paired bootstrap CIs of metric(model) - metric(majority-class baseline), accuracy and macro-F1.

    The baseline is a fixed classifier (always the golden set's majority class), scored on the same resampled
    rows as the model in every replicate.
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    base = majority_baseline(y_true, n_classes)
    constant = np.full_like(y_true, base["class_id"])
    model_reps, base_reps = _replicates(y_true, [y_pred, constant], n_classes, resamples=resamples, seed=seed,
                                        chunk=chunk)
    alpha = 1.0 - confidence
    point = {"accuracy": metrics.accuracy(y_true, y_pred), "macro_f1": metrics.macro_f1(y_true, y_pred, n_classes)}
    out = {}
    for i, name in enumerate(("accuracy", "macro_f1")):
        lower, upper = np.quantile(model_reps[i] - base_reps[i], [alpha / 2, 1 - alpha / 2])
        out[name] = {"model": point[name], "baseline": base[name], "diff": point[name] - base[name],
                     "lower": float(lower), "upper": float(upper), "confidence": confidence,
                     "resamples": resamples, "seed": seed, "n": int(y_true.shape[0]),
                     "baseline_class_id": base["class_id"]}
    return out


# Per-class recall drop: a one-sided paired test with a margin (Tango's score test for paired proportions).


def _score_z(losses: int, gains: int, n: int, margin: float) -> float:
    """Score statistic of H0: drop <= margin on n paired rows, where drop = P(champion right, candidate wrong)
    - P(candidate right, champion wrong) and losses/gains count those rows (Tango 1998; margin 0 gives McNemar's
    z). The variance is taken at the restricted maximum-likelihood estimate under drop == margin."""
    if margin < 0:  # mirror image: the roles of losses and gains swap
        return -_score_z(gains, losses, n, -margin)
    numerator = losses - gains - n * margin
    ties = n - losses - gains
    b = losses * (1 - margin) + gains * (1 - 3 * margin) - 2 * margin * ties
    c = gains * margin * (1 - margin)
    p_gain = (b + math.sqrt(max(b * b + 8 * n * c, 0.0))) / (4 * n)  # restricted MLE of P(gain)
    variance = n * (2 * p_gain + margin - margin * margin)
    if variance <= 1e-15:
        return 0.0 if abs(numerator) < 1e-12 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def recall_drop_test(champion_correct: Sequence[bool] | np.ndarray, candidate_correct: Sequence[bool] | np.ndarray,
                     *, margin: float, confidence: float = 0.95) -> dict[str, float]:
    """One class's golden rows, both models scored on them: is the candidate's recall lower than the champion's
    by more than ``margin``? One-sided score test (p-value) and the two-sided score interval of the drop
    (the test inverted), both from the discordant rows: the rows where exactly one of the two is right."""
    champ = np.asarray(champion_correct, dtype=bool)
    cand = np.asarray(candidate_correct, dtype=bool)
    if champ.shape != cand.shape or champ.ndim != 1 or champ.size == 0:
        raise ValueError("paired 1-d arrays with at least one row are required")
    n = int(champ.size)
    losses = int(np.sum(champ & ~cand))  # the champion right, the candidate wrong
    gains = int(np.sum(cand & ~champ))
    z = _score_z(losses, gains, n, margin)
    critical = float(norm.isf((1 - confidence) / 2))

    def bound(target: float, default: float) -> float:
        f = lambda d: _score_z(losses, gains, n, d) - target  # noqa: E731  decreasing in d
        lo, hi = -1 + 1e-9, 1 - 1e-9
        if f(lo) * f(hi) > 0:
            return default
        return float(brentq(f, lo, hi, xtol=1e-7))

    return {"n": n, "losses": losses, "gains": gains, "drop": (losses - gains) / n,
            "champion_recall": float(champ.mean()), "candidate_recall": float(cand.mean()),
            "lower": bound(critical, -1.0), "upper": bound(-critical, 1.0), "confidence": confidence,
            "z": z, "p_value": float(norm.sf(z))}


def adjust_p_values(p_values: Sequence[float], method: str) -> list[float]:
    """Multiple-testing adjusted p-values: ``holm`` (step-down, controls the family-wise error: the chance that
    any class is flagged by noise), ``bh`` (Benjamini-Hochberg via scipy, controls the false-discovery rate), or
    ``none``. A hypothesis is rejected when its adjusted p-value is <= alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0 or method == "none":
        return p.tolist()
    if method == "bh":

        return false_discovery_control(p, method="bh").tolist()
    if method != "holm":
        raise ValueError(f"unknown correction {method!r}")
    # scipy has no Holm and statsmodels is not a dependency; the step-down is five lines.
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted.tolist()


def mcnemar_exact(candidate_correct: Sequence[bool] | np.ndarray,
                  champion_correct: Sequence[bool] | np.ndarray) -> dict[str, float]:
    """Exact (binomial) McNemar test on the discordant pairs; reported next to the bootstrap interval."""
    cand = np.asarray(candidate_correct, dtype=bool)
    champ = np.asarray(champion_correct, dtype=bool)
    b = int(np.sum(cand & ~champ))   # candidate right, champion wrong
    c = int(np.sum(~cand & champ))   # candidate wrong, champion right
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"candidate_only_correct": b, "champion_only_correct": c, "p_value": p}


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


@dataclass
class HoldoutEvidence:
    """Rows of the snapshot's holdout split that neither the candidate nor the champion trained on (evaluate:
    holdout_evidence), for a comparison the golden set is too small to decide: one bool per row, whether the
    candidate is right and whether the champion is; ``why`` the rows qualify, a phrase after "N holdout rows"."""

    candidate_correct: np.ndarray
    champion_correct: np.ndarray
    why: str = "neither model trained on"

    def __len__(self) -> int:
        return int(np.asarray(self.candidate_correct).size)


@dataclass
class HoldoutRows:
    """One model's predictions on the snapshot's holdout rows it did not train on (evaluate: holdout_rows), for a
    floor over the majority baseline the golden set is too small to show: ``why`` the rows qualify, a phrase after
    "N holdout rows"."""

    y_true: np.ndarray
    y_pred: np.ndarray
    why: str = "it never trained on"

    def __len__(self) -> int:
        return int(np.asarray(self.y_true).size)


def sized_non_inferiority_gate(name: str, candidate_correct, champion_correct, g: Any,
                               holdout: HoldoutEvidence | None = None) -> Gate:
    """Non-inferiority sized to the evidence (tasks/decide/power.py): the bootstrap rule when the golden rows can
    detect ``g.expected_difference``, or when its whole interval lies below ``-margin`` (the candidate is shown
    worse whatever the size). Otherwise, with ``holdout`` rows and ``g.underpowered_evidence:
    golden_and_holdout``, the comparison adds them: the bootstrap rule decides on golden + holdout rows when
    those can detect the difference. Still underpowered: what ``g.underpowered`` says (a small-set rule, the
    floors alone, or a failure asking for more golden rows), on every row compared. Every reason on an
    underpowered golden set ends with what would change it."""
    from tasks.decide import power

    confidence = getattr(g, "confidence", 0.95)
    margin = g.non_inferiority_margin
    expected = getattr(g, "expected_difference", None)
    if expected is None:  # off: the bootstrap rule whatever the size
        return non_inferiority_gate(name, candidate_correct, champion_correct, margin=margin,
                                    resamples=g.bootstrap_resamples, confidence=confidence, seed=g.seed)

    def sized_on(cand: Any, champ: Any) -> tuple[dict[str, Any], Gate]:
        return (power.assess(cand, champ, confidence=confidence, margin=margin, expected_difference=expected),
                non_inferiority_gate(name, cand, champ, margin=margin, resamples=g.bootstrap_resamples,
                                     confidence=confidence, seed=g.seed))

    golden, interval = sized_on(candidate_correct, champion_correct)
    if not golden["underpowered"] or interval.details["upper"] < -margin:  # powered, or shown worse all the same
        return interval.model_copy(update={"details": {**interval.details, "power": golden}})
    n, action = golden["n"], g.underpowered
    size = (f"{n} golden rows can detect a gain of {golden['detectable_difference']:.3f} at best "
            f"({int(confidence * 100)}% confidence, power {power.POWER:g}, discordance {golden['discordance']:.3f}), "
            f"more than gates.expected_difference {expected:g}")
    remedy = remedies.underpowered(golden["more_rows_needed"], golden["rows_needed"],
                                   require_rows=action == "require_rows")
    sized, added = golden, {}
    if holdout is not None and len(holdout) and getattr(g, "underpowered_evidence", "golden") == "golden_and_holdout":
        # Rows neither model trained on are evidence too: the golden set is the team's yardstick, but 40 rows of
        # it cannot tell +8 points from -3 at the churn real retrains have (docs/registry.md); the holdout can.
        pooled, pooled_interval = sized_on(np.concatenate([np.asarray(candidate_correct, bool),
                                                           np.asarray(holdout.candidate_correct, bool)]),
                                           np.concatenate([np.asarray(champion_correct, bool),
                                                           np.asarray(holdout.champion_correct, bool)]))
        added = {"golden_power": golden, "holdout_rows": len(holdout), "underpowered_evidence": "golden_and_holdout"}
        with_holdout = (f"{size}, so the comparison adds {len(holdout)} holdout rows {holdout.why} "
                        f"(gates.underpowered_evidence: golden_and_holdout)")
        if not pooled["underpowered"]:
            gate = pooled_interval.model_copy(update={
                "reason": f"{with_holdout}: {pooled_interval.reason}",
                "details": {**pooled_interval.details, "power": pooled, **added}})
            return gate if gate.passed else with_remedy(gate, remedy)  # what would let the golden set decide
        size = (f"{with_holdout}, and {pooled['n']} rows can detect {pooled['detectable_difference']:.3f} at best, "
                f"still more than {expected:g}")
        sized, interval = pooled, pooled_interval
    ci = interval.details
    measured = (f"accuracy diff {ci['diff']:+.4f}, {int(confidence * 100)}% CI [{ci['lower']:+.4f}, "
                f"{ci['upper']:+.4f}] (n={sized['n']}); ")
    details: dict[str, Any] = {**ci, "power": sized, "underpowered": action, **added}
    if action == "floors":
        return make_gate(name, True, None, None, f"not compared with the champion: {measured}but {size}; the "
                         f"floors decide (gates.underpowered: floors). {remedy.action}", skipped=True,
                         details=details, remedy=remedy)
    if action == "require_rows":
        return make_gate(name, False, _r(golden["detectable_difference"]), expected,
                         f"{measured}but {size}; promotion needs a larger golden set (gates.underpowered: "
                         f"require_rows). {remedy.action}", details=details, remedy=remedy)
    min_rows = getattr(g, "small_set_min_rows", None)
    compared = sized["n"]  # golden rows, and the holdout's where they were added
    if min_rows and compared < min_rows:  # too few rows even for the small-set rule at the churn of real retrains
        remedy = remedies.too_few_for_small_set(compared, min_rows, golden["more_rows_needed"], golden["rows_needed"])
        return make_gate(name, False, compared, min_rows, f"{measured}but {size}, and {compared} rows are fewer than "
                         f"the small-set rule needs (gates.small_set_min_rows {min_rows}). {remedy.action}",
                         details={**details, "small_set_min_rows": min_rows}, remedy=remedy)
    probability = power.posterior_not_worse(sized["gains"], sized["losses"], sized["n"], margin=margin, seed=g.seed)
    needed = g.small_set_probability
    ok = probability >= needed
    details.update(posterior_not_worse=round(probability, 4), small_set_probability=needed,
                   rule="posterior P(acc diff > -margin), uniform Dirichlet prior on the paired outcomes")
    reason = (f"{measured}but {size}, so decided by the small-set rule (gates.underpowered: bayes): "
              f"{sized['gains']} rows only the candidate gets right, {sized['losses']} only the champion; "
              f"P(diff > -margin {-margin:+.4f}) = {probability:.3f} {'>=' if ok else '<'} "
              f"gates.small_set_probability {needed:g}. {remedy.action}")
    return make_gate(name, ok, _r(probability), needed, reason, details=details, remedy=remedy)


def baseline_gate(name: str, metric: str, y_true, y_pred, n_classes: int, labels: Sequence[str], *, margin: float,
                  resamples: int, confidence: float = 0.95, seed: int = 0,
                  bootstrap: dict[str, Any] | None = None) -> Gate:
    """Pass only if the lower bound of the paired-bootstrap CI of metric(model) - metric(majority-class
    baseline) is above ``margin``: the model demonstrably beats always predicting the most frequent class.
    ``bootstrap``: ``paired_bootstrap_vs_baseline``'s result for these predictions, when the caller has it (one
    bootstrap gives both metrics)."""
    if bootstrap is None:
        bootstrap = paired_bootstrap_vs_baseline(y_true, y_pred, n_classes, resamples=resamples,
                                                 confidence=confidence, seed=seed)
    ci = bootstrap[metric]
    ok = ci["lower"] > margin
    majority = labels[ci["baseline_class_id"]]
    shown = metric.replace("_", "-").replace("macro-f1", "macro-F1")
    reason = (f"{shown} {ci['model']:.4f} vs {ci['baseline']:.4f} always predicting {majority!r}: "
              f"diff {ci['diff']:+.4f}, {int(confidence * 100)}% CI [{ci['lower']:+.4f}, {ci['upper']:+.4f}] "
              f"(n={ci['n']}); lower bound {'>' if ok else '<='} margin {margin:+.4f}")
    details = {k: (_r(v, 6) if isinstance(v, float) else v) for k, v in ci.items()}
    details["baseline_class"] = majority
    return make_gate(name, ok, _r(ci["lower"]), margin, reason, details=details)


CLASS_RECALL_TEST = ("one-sided score test (Tango) of drop > margin on the class's golden rows, paired on the "
                     "rows where exactly one model is right")
REPORT_TOP = 5  # classes named in a class-recall gate's reason and markdown table


def class_recall_gate(name: str, y_true, candidate_pred, champion_pred, labels: Sequence[str], *, max_drop: float,
                      min_support: int = 20, alpha: float = 0.05, correction: str = "holm",
                      confidence: float = 0.95) -> Gate:
    """Block only a statistically clear drop of one class's recall: per class with at least ``min_support``
    golden rows, a one-sided paired test that recall(champion) - recall(candidate) > ``max_drop``, the p-values
    corrected for the number of classes tested (``correction``, family level ``alpha``). Classes below the
    support are reported (their drop and interval) but never block; a class absent from the golden set is
    left out."""
    y_true = np.asarray(y_true, dtype=np.int64)
    candidate_pred = np.asarray(candidate_pred, dtype=np.int64)
    champion_pred = np.asarray(champion_pred, dtype=np.int64)
    per_class: dict[str, dict[str, Any]] = {}
    for class_id, label in enumerate(labels):
        rows = y_true == class_id
        if not rows.any():
            continue
        test = recall_drop_test(champion_pred[rows] == class_id, candidate_pred[rows] == class_id,
                                margin=max_drop, confidence=confidence)
        test["gated"] = test["n"] >= min_support
        per_class[label] = test
    gated = [label for label, t in per_class.items() if t["gated"]]
    not_gated = [label for label, t in per_class.items() if not t["gated"]]
    for label, p_adjusted in zip(gated, adjust_p_values([per_class[k]["p_value"] for k in gated], correction)):
        per_class[label]["p_adjusted"] = p_adjusted
        per_class[label]["significant"] = p_adjusted <= alpha
    settings = {"test": CLASS_RECALL_TEST, "margin": max_drop, "alpha": alpha, "correction": correction,
                "min_support": min_support, "confidence": confidence}
    details: dict[str, Any] = {
        **settings, "classes_gated": len(gated), "below_min_support": not_gated,
        # p-values to 6 significant figures, not 6 decimals: a p of 2.4e-09 would be stored, and shown, as 0.
        "classes": {label: {k: (float(f"{v:.6g}") if k in ("p_value", "p_adjusted") else _r(v, 6))
                            if isinstance(v, float) else v for k, v in t.items()}
                    for label, t in per_class.items()}}
    if not gated:
        return make_gate(name, True, None, max_drop, f"no class has {min_support} golden rows (min_support); "
                         f"{len(not_gated)} reported, not gated", skipped=True, details=details)
    failing = sorted((k for k in gated if per_class[k]["significant"]), key=lambda k: per_class[k]["p_adjusted"])
    details["failing"] = failing
    family = (f"{len(gated)} classes tested, {correction} correction, family alpha {alpha:g}"
              + (f"; {len(not_gated)} below min_support {min_support} reported only" if not_gated else ""))

    def describe(label: str) -> str:
        t = per_class[label]
        adjusted = f", p_adj {t['p_adjusted']:.2g}" if "p_adjusted" in t else ""
        return (f"{label!r} {t['champion_recall']:.3f}->{t['candidate_recall']:.3f} (drop {t['drop']:+.3f}, "
                f"{int(confidence * 100)}% CI [{t['lower']:+.3f}, {t['upper']:+.3f}], n={t['n']}, "
                f"p {t['p_value']:.2g}{adjusted})")

    if failing:
        shown = "; ".join(describe(k) for k in failing[:3]) + (f"; and {len(failing) - 3} more" if len(failing) > 3
                                                                 else "")
        reason = (f"recall of {len(failing)} class(es) dropped by more than {max_drop:.3f} beyond noise ({family}): "
                  f"{shown}")
        return make_gate(name, False, _r(max(per_class[k]["drop"] for k in failing)), max_drop, reason,
                         details=details)
    worst = max(gated, key=lambda k: per_class[k]["drop"])
    reason = (f"no class's recall dropped significantly by more than {max_drop:.3f} ({family}); largest observed "
              f"drop: {describe(worst)}")
    return make_gate(name, True, _r(per_class[worst]["drop"]), max_drop, reason, details=details)


def retention_gate(student_accuracy: float, teacher_accuracy: float, *, min_ratio: float,
                   champion_ratio: float | None = None, compared_ratio: float | None = None,
                   compared_on: str = "") -> Gate:
    """Student accuracy / teacher accuracy >= ``min_ratio``, or, on a retrain whose champion's student retained
    less (``champion_ratio``: a first champion's retention is reported, not gated), >= the champion's: a
    student that keeps more of its teacher than the one serving now is not blocked for keeping too little. On a
    hard many-class pipeline a student may never reach the ratio; gating it absolutely would keep the first,
    weakest champion forever (docs/registry.md: Gates).

    ``compared_ratio``: the candidate's retention on the golden rows the champion's was measured on, when those
    are fewer than all (rows the champion trained on left out; ``compared_on`` says which): then the absolute
    ratio is checked on every row and the comparison with the champion on those rows only."""
    ratio = _ratio(student_accuracy, teacher_accuracy)
    details = {"min_retention": min_ratio, "champion_retention": _r(champion_ratio)}
    if compared_ratio is not None and champion_ratio is not None and champion_ratio < min_ratio <= ratio:
        champion_ratio = None  # the absolute ratio is met on every row; the champion's is not needed
    if compared_ratio is not None and champion_ratio is not None and champion_ratio < min_ratio:
        ok = compared_ratio >= champion_ratio
        reason = (f"student/teacher accuracy {student_accuracy:.4f}/{teacher_accuracy:.4f} = {ratio:.4f}, under "
                  f"gates.min_retention {min_ratio:.4f}, but the champion's retention is lower: {compared_on}, the "
                  f"candidate's {compared_ratio:.4f} {'>=' if ok else '<'} the champion's {champion_ratio:.4f}")
        details.update(retention=_r(ratio), compared_retention=_r(compared_ratio))
        return make_gate("student_retention", ok, _r(compared_ratio), _r(champion_ratio), reason, details=details)
    floor = min_ratio if champion_ratio is None else min(min_ratio, champion_ratio)
    ok = ratio >= floor
    reason = (f"student/teacher accuracy {student_accuracy:.4f}/{teacher_accuracy:.4f} = {ratio:.4f} "
              f"({'>=' if ok else '<'} {floor:.4f}")
    if floor < min_ratio:
        reason += f": the champion's retention {champion_ratio:.4f}, under gates.min_retention {min_ratio:.4f}"
    return make_gate("student_retention", ok, _r(ratio), _r(floor), reason + ")", details=details)


def _ratio(student_accuracy: float, teacher_accuracy: float) -> float:
    if teacher_accuracy > 0:
        return student_accuracy / teacher_accuracy
    return 1.0 if student_accuracy == 0 else math.inf


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
                     skipped=True, details=gate.details, remedy=gate.remedy)


# ---------------------------------------------------------------- the full set


@dataclass
class ModelScores:
    """What the gates need from one model on the golden set."""

    y_pred: np.ndarray
    accuracy: float
    macro_f1: float


@dataclass
class ChampionRows:
    """The golden rows the comparisons with the champion use: ``keep``, one bool per golden row (evaluate leaves
    out the rows whose text the champion trained on: its score there is optimistic), and ``why`` the others are
    left out, a phrase after "N golden rows ..." ("whose text the champion v1 trained on ...")."""

    keep: np.ndarray
    why: str


def champion_comparison(gates_spec: Any, golden_rows: int, champion_rows: ChampionRows | None,
                        **looked: Any) -> ChampionComparison:
    """How many golden rows the comparisons with the champion use, how many are left out and why, and whether too
    few remain to compare at all: fewer than ``gates.class_recall_min_support``, the fewest golden rows on which
    the gates let a paired comparison (one class's recall) decide anything; a golden set with no rows left out
    is compared whatever its size (non-inferiority sizes itself to it: tasks/decide/power.py). ``looked``: what
    evaluate read to know which rows the champion trained on (ChampionComparison's other fields)."""
    kept = golden_rows if champion_rows is None else int(np.count_nonzero(champion_rows.keep))
    excluded = golden_rows - kept
    minimum = int(gates_spec.class_recall_min_support)
    why = {"why": champion_rows.why} if excluded else {}
    return ChampionComparison(golden_rows=golden_rows, compared_rows=kept, excluded_rows=excluded,
                              min_compared_rows=minimum, too_few=bool(excluded and kept < minimum), **why, **looked)


def compared_on(comparison: ChampionComparison) -> str:
    """The phrase a champion comparison's reason starts with, when rows were left out of it ("" otherwise)."""
    if not comparison.excluded_rows:
        return ""
    return (f"on {comparison.compared_rows} of {comparison.golden_rows} golden rows (left out: "
            f"{comparison.excluded_rows} {comparison.why})")


def _on_kept_rows(gate: Gate, comparison: ChampionComparison) -> Gate:
    """A champion comparison made on fewer than all golden rows: its reason and details say so."""
    if not comparison.excluded_rows:
        return gate
    keys = ("golden_rows", "compared_rows", "excluded_rows", "why")
    return gate.model_copy(update={"reason": f"{compared_on(comparison)}: {gate.reason}",
                                   "details": {**gate.details, **{k: getattr(comparison, k) for k in keys}}})


def with_remedy(gate: Gate, remedy: Remedy) -> Gate:
    """The gate with ``remedy``, its reason ending with the remedy's sentence."""
    return gate.model_copy(update={"reason": remedies.ending(gate.reason, remedy), "remedy": remedy})


def skewed_golden(g: Any, y_true: np.ndarray, labels: Sequence[str]) -> str | None:
    """Why the accuracy floor over the majority baseline does not gate on this golden set (its majority class holds
    at least ``gates.skewed_golden_share`` of the rows: answering it alone scores that share, so a model that learns
    the minority classes can lose accuracy to it), or None."""
    share = getattr(g, "skewed_golden_share", None)
    if share is None or not len(y_true):
        return None
    counts = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=len(labels))
    top = int(np.argmax(counts))
    majority = counts[top] / counts.sum()
    if majority < share:
        return None
    return (f"the golden set is {majority:.0%} {labels[top]!r}, at least gates.skewed_golden_share {share:g}: "
            f"accuracy over the majority baseline is reported, not gated (macro-F1 over the baseline and per-class "
            f"recall gate)")


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_pred == y_true)) if y_true.size else 0.0


def evaluate_gates(gates_spec: Any, labels: Sequence[str], y_true: Sequence[int], *, teacher: ModelScores,
                   student: ModelScores, champion_teacher: ModelScores | None = None,
                   champion_student: ModelScores | None = None, student_latency_ms_p95: float | None = None,
                   student_size_mb: float | None = None, champion_rows: ChampionRows | None = None,
                   holdout: dict[str, HoldoutEvidence] | None = None,
                   holdout_rows: dict[str, HoldoutRows] | None = None) -> tuple[bool, bool, list[Gate]]:
    """Apply every gate. Returns (passed, first_run, gates). ``gates_spec`` is ``spec.gates``.

    ``champion_rows``: the golden rows the comparisons with the champion use (non-inferiority, per-class recall,
    the champion's retention), None = all; the floors, the baselines and the candidates' own retention always use
    every row. Too few rows left (champion_comparison): those comparisons are skipped, saying why. ``holdout``:
    per role ("teacher", "student"), holdout rows neither model trained on, which non-inferiority adds when the
    golden rows cannot decide (sized_non_inferiority_gate); ``holdout_rows``: per role, the holdout rows that model
    did not train on, which a floor over the majority baseline adds when the golden rows leave it open."""
    y_true = np.asarray(y_true)
    first_run = champion_teacher is None and champion_student is None
    compared = _Compared.of(gates_spec, y_true, None if first_run else champion_rows)
    out: list[Gate] = []
    for role, scores in (("teacher", teacher), ("student", student)):
        out += floor_gates(gates_spec, role, scores)
        out += baseline_gates(gates_spec, role, labels, y_true, scores, (holdout_rows or {}).get(role))
    for role, cand, champ in (("teacher", teacher, champion_teacher), ("student", student, champion_student)):
        out += champion_gates(gates_spec, role, labels, y_true, cand, champ, compared, (holdout or {}).get(role))
    out += student_checks(gates_spec, y_true, teacher, student, champion_teacher, champion_student, compared,
                          latency_ms_p95=student_latency_ms_p95, size_mb=student_size_mb, first_run=first_run)
    passed = all(gate.passed for gate in out)
    return passed, first_run, out


@dataclass
class _Compared:
    """The golden rows the champion comparisons use: ``comparison`` (champion_comparison), ``keep`` (None: all)
    and ``too_few``, why none are compared ("" when they are)."""

    comparison: ChampionComparison
    keep: np.ndarray | None
    too_few: str

    @classmethod
    def of(cls, g: Any, y_true: np.ndarray, champion_rows: ChampionRows | None) -> _Compared:
        comparison = champion_comparison(g, len(y_true), champion_rows)
        keep = champion_rows.keep if comparison.excluded_rows else None
        too_few = (f"only {comparison.compared_rows} of {comparison.golden_rows} golden rows left (left out: "
                   f"{comparison.excluded_rows} {comparison.why}), fewer than "
                   f"gates.class_recall_min_support ({comparison.min_compared_rows})"
                   if comparison.too_few else "")
        return cls(comparison, keep, too_few)

    def kept(self, values: np.ndarray) -> np.ndarray:
        return values if self.keep is None else np.asarray(values)[self.keep]


def floor_gates(g: Any, role: str, scores: ModelScores) -> list[Gate]:
    """A model's absolute floors (gates.min_accuracy, gates.min_macro_f1; 0 = none)."""
    out = []
    for metric, value, minimum in (("accuracy", scores.accuracy, g.min_accuracy),
                                   ("macro_f1", scores.macro_f1, g.min_macro_f1)):
        if minimum > 0:
            out.append(floor_gate(f"floor_{metric}_{role}", value, minimum))
        else:
            out.append(skipped(f"floor_{metric}_{role}", f"{value:.4f}; no absolute floor (gates.min_{metric} is 0)"))
    return out


def baseline_gates(g: Any, role: str, labels: Sequence[str], y_true: np.ndarray, scores: ModelScores,
                   holdout: HoldoutRows | None = None) -> list[Gate]:
    """A model over the majority-class baseline, accuracy and macro-F1 (one bootstrap for both). Accuracy on a
    skewed golden set is reported, not gated; a failure ends with what would clear it. A floor the golden rows
    leave open (its interval straddles the margin) is judged again on golden + ``holdout`` rows, with
    ``gates.underpowered_evidence: golden_and_holdout``."""
    out: list[Gate] = []
    boot: dict[str, Any] = {}
    confidence = getattr(g, "confidence", 0.95)

    def floor(name: str, metric: str, margin: float, y: np.ndarray, pred: np.ndarray, key: str) -> Gate:
        if key not in boot:
            boot[key] = paired_bootstrap_vs_baseline(y, pred, len(labels), resamples=g.bootstrap_resamples,
                                                     confidence=confidence, seed=g.seed)
        return baseline_gate(name, metric, y, pred, len(labels), labels, margin=margin,
                             resamples=g.bootstrap_resamples, confidence=confidence, seed=g.seed,
                             bootstrap=boot[key])

    pool = (holdout is not None and len(holdout) > 0
            and getattr(g, "underpowered_evidence", "golden") == "golden_and_holdout")
    for metric, margin in (("accuracy", g.min_accuracy_over_baseline), ("macro_f1", g.min_macro_f1_over_baseline)):
        name = f"baseline_{metric}_{role}"
        if margin is None:
            out.append(skipped(name, f"off (gates.min_{metric}_over_baseline is null)"))
            continue
        gate = floor(name, metric, margin, y_true, scores.y_pred, "golden")
        if not gate.passed and pool and gate.details["upper"] > margin:
            # Not shown on the golden rows, nor shown below: on 40 rows an 80% model cannot prove it beats a 67.5%
            # majority. Rows the model never trained on settle it (docs/registry.md, "Holdout rows ...").
            pooled = floor(name, metric, margin, np.concatenate([np.asarray(y_true), np.asarray(holdout.y_true)]),
                           np.concatenate([np.asarray(scores.y_pred), np.asarray(holdout.y_pred)]), "pooled")
            gate = pooled.model_copy(update={
                "reason": f"{len(y_true)} golden rows cannot show it ({gate.reason}), so {len(holdout)} holdout rows "
                          f"{holdout.why} are added (gates.underpowered_evidence: golden_and_holdout): "
                          f"{pooled.reason}",
                "details": {**pooled.details, "golden": gate.details, "holdout_rows": len(holdout)}})
        skewed = skewed_golden(g, y_true, labels) if metric == "accuracy" else None
        if skewed:
            out.append(with_remedy(report_only(gate, skewed), remedies.skewed_golden()))
        else:
            out.append(gate if gate.passed else with_remedy(gate, remedies.below_baseline()))
    return out


def champion_gates(g: Any, role: str, labels: Sequence[str], y_true: np.ndarray, cand: ModelScores,
                   champ: ModelScores | None, compared: _Compared, holdout: HoldoutEvidence | None = None
                   ) -> list[Gate]:
    """Non-inferiority and per-class recall against the champion's model of the same role, on the compared rows
    (non-inferiority adds ``holdout`` rows when those cannot decide); both skipped, saying why, on a first run or
    with too few rows left."""
    if champ is None or compared.too_few:
        why = (f"not compared with the champion: {compared.too_few}; the floors apply" if compared.too_few
               else "first run: no champion, so only the floors apply")
        return [skipped(f"non_inferiority_{role}", why), skipped(f"class_recall_{role}", why)]
    y, cand_pred, champ_pred = compared.kept(y_true), compared.kept(cand.y_pred), compared.kept(champ.y_pred)
    return [
        _on_kept_rows(sized_non_inferiority_gate(f"non_inferiority_{role}", cand_pred == y, champ_pred == y, g,
                                                 holdout), compared.comparison),
        _on_kept_rows(class_recall_gate(
            f"class_recall_{role}", y, cand_pred, champ_pred, labels, max_drop=g.max_class_recall_drop,
            min_support=g.class_recall_min_support, alpha=g.class_recall_alpha,
            correction=g.class_recall_correction, confidence=getattr(g, "confidence", 0.95)), compared.comparison),
    ]


def student_checks(g: Any, y_true: np.ndarray, teacher: ModelScores, student: ModelScores,
                   champion_teacher: ModelScores | None, champion_student: ModelScores | None, compared: _Compared,
                   *, latency_ms_p95: float | None,
                   size_mb: float | None, first_run: bool) -> list[Gate]:
    """The student's retention of its teacher (or of the champion's, when that was lower), latency and size;
    reported, not gated, on a first run."""
    champion_ratio = compared_ratio = None
    if champion_teacher is not None and champion_student is not None and not compared.too_few:
        if compared.keep is None:
            champion_ratio = _ratio(champion_student.accuracy, champion_teacher.accuracy)
        else:  # both retentions on the rows the champion did not train on
            y = compared.kept(y_true)
            champion_ratio = _ratio(_accuracy(y, compared.kept(champion_student.y_pred)),
                                    _accuracy(y, compared.kept(champion_teacher.y_pred)))
            compared_ratio = _ratio(_accuracy(y, compared.kept(student.y_pred)),
                                    _accuracy(y, compared.kept(teacher.y_pred)))
    retention = retention_gate(student.accuracy, teacher.accuracy, min_ratio=g.min_retention,
                               champion_ratio=champion_ratio, compared_ratio=compared_ratio,
                               compared_on=compared_on(compared.comparison))
    if compared.too_few and not first_run:
        retention = retention.model_copy(update={
            "reason": f"{retention.reason}; the champion's retention is not used: {compared.too_few}"})
    checks = [
        retention,
        budget_gate("student_latency_p95", latency_ms_p95, g.max_student_latency_ms_p95, "ms"),
        budget_gate("student_size", size_mb, g.max_student_size_mb, "MB"),
    ]
    if first_run:  # floors only: the student's own checks are reported, not gated
        checks = [report_only(gate, "first run: reported, not gated") for gate in checks]
    return checks


def render_markdown(pipeline: str, run_uri: str, passed: bool, first_run: bool, gates: Sequence[Gate],
                    metrics_summary: dict[str, Any], champion_comparison: ChampionComparison | None = None) -> str:
    lines = [f"# Gate report: {pipeline}", "", f"- run: `{run_uri}`",
             f"- verdict: **{'PASSED' if passed else 'FAILED'}**"]
    if first_run:
        lines.append("- **first run: no champion.** Only the floors apply (above the majority-class baseline, and any "
                     "absolute floor); non-inferiority and per-class recall are skipped, and the student's "
                     "retention, latency and size are reported, not gated.")
    lines += comparison_lines(champion_comparison)
    failed = [gt.name for gt in gates if not gt.passed]
    if failed:
        lines.append(f"- failed gates: {', '.join(failed)}")
    lines += ["", "| gate | verdict | value | threshold | reason |", "|---|---|---|---|---|"]
    for gt in gates:
        verdict = "skipped" if gt.skipped else ("pass" if gt.passed else "**FAIL**")
        value = "" if gt.value is None else f"{gt.value:g}"
        threshold = "" if gt.threshold is None else f"{gt.threshold:g}"
        lines.append(f"| {gt.name} | {verdict} | {value} | {threshold} | {gt.reason.replace('|', '/')} |")
    lines += class_recall_tables(gates)
    lines += ["", "## Metrics (golden set with bootstrap intervals / holdout)", "",
              "| model | golden acc | golden macro-F1 | holdout acc | holdout macro-F1 |", "|---|---|---|---|---|"]
    for name, m in metrics_summary.items():
        if not m:
            continue
        cells = [with_interval(m, "golden_accuracy"), with_interval(m, "golden_macro_f1"),
                 with_interval(m, "holdout_accuracy"), with_interval(m, "holdout_macro_f1")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_lines(comparison: ChampionComparison | dict[str, Any] | None) -> list[str]:
    """The gate report's line on golden rows left out of the champion comparison (none when none were); a dict
    is a stored one (the model card reads it from the evaluate result's JSON)."""
    if isinstance(comparison, dict):
        comparison = ChampionComparison.read(comparison)
    if comparison is None or not comparison.excluded_rows:
        return []
    n, kept, excluded = comparison.golden_rows, comparison.compared_rows, comparison.excluded_rows
    left_out = f"{excluded} golden rows {comparison.why}"
    if comparison.too_few:
        line = (f"- **champion not compared:** once the {left_out} are left out, only {kept} of {n} remain, fewer "
                f"than gates.class_recall_min_support ({comparison.min_compared_rows}); non-inferiority, "
                f"per-class recall and the champion's retention are skipped. The floors, the baselines and the "
                f"candidates' own checks use all {n} rows.")
    else:
        line = (f"- **champion compared on {kept} of {n} golden rows:** the {left_out} are left out of "
                f"non-inferiority, per-class recall and the champion's retention (its score on them is "
                f"optimistic). The floors, the baselines and the candidates' own checks use all {n} rows.")
    accuracy = comparison.compared_accuracy or {}
    if accuracy:
        line += f" Accuracy on the {kept} compared rows: " + ", ".join(
            f"{name} {value:.4f}" for name, value in accuracy.items()) + "."
    return [line]


def class_recall_tables(gates: Sequence[Gate]) -> list[str]:
    """Per class-recall gate: its failing classes, or if none failed its largest observed drops, top few only."""
    lines: list[str] = []
    for gt in gates:
        classes = gt.details.get("classes") if gt.name.startswith("class_recall") else None
        if not classes:
            continue
        if not gt.details.get("classes_gated"):  # no class has min_support rows: nothing was tested
            lines += ["", f"## {gt.name}: not gated", "", f"{gt.reason}."]
            continue
        failing = gt.details.get("failing") or []
        if failing:
            title, shown = f"failing classes ({len(failing)})", failing[:REPORT_TOP]
        else:
            gated = [k for k, t in classes.items() if t.get("gated")]
            title, shown = "no class failed; largest observed drops", sorted(
                gated, key=lambda k: -classes[k]["drop"])[:min(3, REPORT_TOP)]
        below = gt.details.get("below_min_support") or []
        lines += ["", f"## {gt.name}: {title}", "",
                  f"{gt.details['test']}; margin {gt.details['margin']:g}, {gt.details['correction']} correction over "
                  f"{gt.details['classes_gated']} classes, family alpha {gt.details['alpha']:g}"
                  + (f"; {len(below)} class(es) under {gt.details['min_support']} rows reported, not gated"
                     if below else "") + ".", "",
                  "| class | support | champion recall | candidate recall | drop | interval | p | p adjusted |",
                  "|---|---|---|---|---|---|---|---|"]
        for label in shown:
            t = classes[label]
            lines.append(f"| {label} | {t['n']} | {t['champion_recall']:.3f} | {t['candidate_recall']:.3f} | "
                         f"{t['drop']:+.3f} | [{t['lower']:+.3f}, {t['upper']:+.3f}] | {t['p_value']:.2g} | "
                         f"{t.get('p_adjusted', float('nan')):.2g} |")
        if len(failing) > len(shown):
            lines.append(f"\n{len(failing) - len(shown)} more failing class(es) in gate_report.json.")
    return lines


def with_interval(summary: dict[str, Any], key: str) -> str:
    """``0.8512 [0.8274, 0.8739]`` from evaluate's per-model summary (``key`` and ``key_ci``); "" if absent."""
    value = summary.get(key)
    if value is None:
        return ""
    ci = summary.get(f"{key}_ci")
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
