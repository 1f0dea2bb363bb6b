"""One definition of each classification metric, used by training, evaluation, gates, drift and the benchmarks.

scikit-learn computes them; this module fixes the conventions once: macro-F1 averages over *every class the
pipeline declares* (``labels=range(n_classes)``), so a class missing from both predictions and labels counts
as F1 0 with ``zero_division=0`` rather than being silently dropped from the mean, and the number does not
depend on which classes a batch happens to contain.
"""

from __future__ import annotations

from typing import Sequence

from sklearn.metrics import f1_score
from sklearn.metrics import precision_recall_fscore_support
import numpy as np


def _ids(n_classes: int | None, labels, preds) -> list[int]:
    if n_classes is None:
        n_classes = int(max(np.max(labels, initial=-1), np.max(preds, initial=-1))) + 1
    return list(range(n_classes))


def accuracy(labels: Sequence[int], preds: Sequence[int]) -> float:
    labels, preds = np.asarray(labels), np.asarray(preds)
    return float(np.mean(labels == preds)) if len(labels) else 0.0


def macro_f1(labels: Sequence[int], preds: Sequence[int], n_classes: int | None = None) -> float:
    return float(f1_score(labels, preds, labels=_ids(n_classes, labels, preds), average="macro", zero_division=0))


def per_class(labels: Sequence[int], preds: Sequence[int], n_classes: int | None = None) -> dict[str, list[float]]:
    """Precision, recall and F1 of each class id 0..n-1 (index = class id)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=_ids(n_classes, labels, preds), average=None, zero_division=0)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": [int(s) for s in support]}


def classification_metrics(labels: Sequence[int], preds: Sequence[int], n_classes: int | None = None
                           ) -> dict[str, float]:
    return {"accuracy": accuracy(labels, preds), "macro_f1": macro_f1(labels, preds, n_classes)}
