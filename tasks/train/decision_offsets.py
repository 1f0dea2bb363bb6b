"""The decision of a class-balanced model, set on held-out rows (``train.decision_offsets``).

Logit adjustment (``train.class_weights: logit_adjusted``) makes the plain logits target the balanced error in
theory; in practice a fine-tune fits its few minority train rows within an epoch or two and the boundary drifts
back towards the majority (3 epochs on a 97/3 SST-2 cut: 41% of the dev positives found where 1.5 epochs found 82%,
docs/benchmarks.md). The holdout split is rows the model never trained on, so it sees that drift: after training,
:func:`choose` adds one offset per class to the logits (post-hoc logit adjustment, Menon et al. 2021, section 4,
with the offsets chosen on held-out rows rather than fixed at tau x log prior) so that the holdout's macro-F1 (the
default: what the gates' floor scores) or balanced recall (the mean of per-class recalls, what logit adjustment
targets; on a 97/3 SST-2 cut it found every golden positive and flagged 36% of the negatives, macro-F1 0.76 ->
0.46, docs/benchmarks.md) is the best it can be, and
:func:`fold` adds them to the classifier's bias. The saved model, its exports and everything that scores it
(evaluate, serving, the distillation's teacher) then decide with them, with no other code to know about it.

Only when class balancing is on (``class_balance.plan``'s ``on``): an even mix such as SST-2's or the demo's is
trained and saved bit for bit as without this module; and only when the holdout holds at least
``MIN_ROWS_PER_CLASS`` rows of every class (a decision set on 6 minority rows moved with the seed). Ties between
offsets with the same holdout score go to the middle of the best candidates (the widest margin on both sides).

Written here rather than taken from a library: scikit-learn's ``TunedThresholdClassifierCV`` wants an estimator to
refit and handles two classes only; what this module does is a search over a few hundred offsets on logits the
trainer already computed.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

OBJECTIVES = ("balanced_recall", "macro_f1")
CANDIDATES = 201  # offsets tried per class and round: quantiles of the holdout's margins
ROUNDS = 3  # coordinate-ascent rounds over the classes (two classes: the first round is exact)
# Fewest holdout rows of every class for an offset to be chosen at all. Measured on a 97/3 SST-2 cut (6 holdout
# positives): offsets chosen on 6 rows moved the golden minority recall +0.15 on one seed and 0 (towards the
# majority) on the other (docs/benchmarks.md); 20 is also the fewest rows a class's recall gates on.
MIN_ROWS_PER_CLASS = 20


def score(y: np.ndarray, pred: np.ndarray, n_classes: int, objective: str) -> float:
    """Balanced recall (mean recall over the classes with rows in ``y``) or macro-F1 over those classes."""
    present = [c for c in range(n_classes) if np.any(y == c)]
    recalls, f1s = [], []
    for c in present:
        hit = float(np.sum((pred == c) & (y == c)))
        recalls.append(hit / float(np.sum(y == c)))
        f1s.append(2 * hit / (float(np.sum(pred == c)) + float(np.sum(y == c))))
    return float(np.mean(recalls if objective == "balanced_recall" else f1s)) if present else 0.0


def choose(logits: Any, y: Any, n_classes: int, objective: str = "macro_f1") -> np.ndarray:
    """Per-class offsets to add to ``logits`` (rows x classes) that maximise ``objective`` on labels ``y``:
    coordinate ascent, each class's offset over quantiles of its margin over the best other class; an offset moves
    only for a strictly better score, so offsets of 0 stay unless the holdout says otherwise."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    offsets = np.zeros(n_classes)
    if len({int(c) for c in y}) < 2:
        return offsets
    best = score(y, np.argmax(z + offsets, axis=1), n_classes, objective)
    for _ in range(ROUNDS):
        moved = False
        for c in range(n_classes):
            if not np.any(y == c):
                continue
            others = z + offsets
            others[:, c] = -np.inf
            rival, rival_class = others.max(axis=1), others.argmax(axis=1)
            margin = z[:, c] - rival  # row predicted c iff margin + offset_c > 0
            # An offset just past each margin flips that row; quantiles keep a large holdout to CANDIDATES tries.
            cuts = np.unique(np.quantile(-margin, np.linspace(0, 1, min(CANDIDATES, len(margin)))))
            tries = np.concatenate([cuts - 1e-6, cuts + 1e-6, [offsets[c]]])
            scores = np.array([score(y, np.where(margin + t > 0, c, rival_class), n_classes, objective)
                               for t in tries])
            if scores.max() > best + 1e-12:
                winners = np.sort(tries[scores >= scores.max() - 1e-12])
                offsets[c], best, moved = float(winners[len(winners) // 2]), float(scores.max()), True
        if not moved:
            break
    return offsets


def fold(model: Any, offsets: Sequence[float]) -> bool:
    """Add ``offsets`` to the classifier head's bias (the final ``Linear`` of a sequence classifier, ``classifier``
    on BERT); False, and the model untouched, when it has no such head."""
    head = getattr(model, "classifier", None)
    head = getattr(head, "out_proj", head)  # RoBERTa-style heads end in out_proj
    if not isinstance(head, torch.nn.Linear) or head.bias is None or head.out_features != len(offsets):
        return False
    with torch.no_grad():
        head.bias.add_(torch.tensor(list(offsets), dtype=head.bias.dtype, device=head.bias.device))
    return True


def record(objective: str, offsets: np.ndarray, labels: Sequence[str], y: np.ndarray, logits: np.ndarray,
           folded: bool) -> dict[str, Any]:
    """What the result says: the objective, each class's offset, and the holdout's balanced recall and macro-F1
    before and after."""
    n = len(labels)
    before, after = np.argmax(logits, axis=1), np.argmax(logits + offsets, axis=1)
    return {"objective": objective, "folded": folded, "holdout_rows": int(len(y)),
            "offsets": {label: round(float(o), 6) for label, o in zip(labels, offsets)},
            "holdout_before": {k: round(score(y, before, n, k), 4) for k in OBJECTIVES},
            "holdout_after": {k: round(score(y, after, n, k), 4) for k in OBJECTIVES}}


def apply(trainer: Any, holdout_set: Any, setting: str, class_weights: dict[str, Any] | None,
          labels: Sequence[str]) -> dict[str, Any] | None:
    """``train.decision_offsets`` for a trained model: None (nothing done) unless class balancing is on and the
    setting is an objective; else the offsets chosen on the holdout split, folded into ``trainer.model`` (every
    DDP rank computes the same ones from the same gathered logits), and their record."""
    if setting == "none" or not (class_weights and class_weights.get("on")) or not len(holdout_set):
        return None
    predicted = trainer.predict(holdout_set, metric_key_prefix="offsets")
    logits = np.asarray(predicted.predictions[0] if isinstance(predicted.predictions, tuple)
                        else predicted.predictions, dtype=np.float64)
    y = np.asarray(predicted.label_ids, dtype=np.int64)
    counts = np.bincount(y, minlength=len(labels))
    if counts.min() < MIN_ROWS_PER_CLASS:  # too few held-out rows of a class to set its decision on
        few = {label: int(c) for label, c in zip(labels, counts) if c < MIN_ROWS_PER_CLASS}
        return {**record(setting, np.zeros(len(labels)), labels, y, logits, False),
                "not_set": f"the holdout holds fewer than {MIN_ROWS_PER_CLASS} rows of {few}: the trained logits "
                           "decide; more rows of those classes would let the holdout set the decision"}
    offsets = choose(logits, y, len(labels), setting)
    folded = bool(np.any(offsets)) and fold(trainer.model, offsets)
    return record(setting, offsets if folded else np.zeros(len(labels)), labels, y, logits, folded)
