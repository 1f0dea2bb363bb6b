"""When a retrain must not warm-start from the champion.

* **A class the champion never saw** (:func:`unseen_classes`): the snapshot holds rows of a declared class that
  the champion's snapshot held none of. A warm start (train.warm_start_epochs, often 1 epoch at the champion's rate)
  begins from a head that learned to never predict that class; on emotion with "fear" arriving on night 2 it
  collapsed. The fine-tune starts from model.base instead, with train.epochs (a champion trained on other labels
  already does: finetune.recipe).
* **A warm start that collapsed** (:func:`collapse`): after training, the holdout predictions put nearly every row
  (``COLLAPSE_SHARE``) in one class, far more than that class's share of the labels, and the champion it started
  from did not (:func:`raise_if_collapsed`). The stage then trains once more from the base model in the same run
  (runner.run), and says so in the result (``fresh_start``) and the run summary's warnings.

Light: storage and the snapshot manifests only.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from tasks import storage
from tasks.manifests import read_version_manifest

log = logging.getLogger(__name__)
COLLAPSE_SHARE = 0.9  # one class predicted for this share of the holdout rows or more ...
COLLAPSE_EXCESS = 0.1  # ... and for this much more than its share of the labels


class Collapsed(Exception):
    """A warm-started model collapsed on the holdout split; ``reason`` is the sentence for the result."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _label_counts(snapshot_uri: str) -> dict[str, int] | None:
    from tasks.data import snapshots

    try:
        manifest = snapshots.read_manifest(storage.normalize(snapshot_uri))
    except storage.NotFound:
        return None
    # None (unknown) for a manifest that never recorded its label counts, not {} (no rows of any class).
    return dict(manifest.label_counts) if "label_counts" in manifest.model_fields_set else None


def champion_snapshot(champion_uri: str) -> str | None:
    """The snapshot the champion version was trained on (its version manifest's snapshot_uri), or None."""
    try:
        version = read_version_manifest(storage.normalize(champion_uri))
    except storage.NotFound:
        return None
    return version.snapshot_uri


def unseen_classes(champion_uri: str, snapshot_uri: str, labels: Sequence[str]) -> list[str]:
    """Declared classes with rows in this snapshot and none in the champion's; [] when either is unknown."""
    before_uri = champion_snapshot(champion_uri)
    before = _label_counts(before_uri) if before_uri else None
    now = _label_counts(snapshot_uri)
    if before is None or now is None:
        return []
    return [label for label in labels if now.get(label, 0) > 0 and before.get(label, 0) == 0]


def unseen_reason(unseen: Sequence[str], version: str | None) -> str:
    return (f"fresh start from model.base: class(es) {list(unseen)} have rows now and had none in the snapshot the "
            f"champion {version or ''} was trained on, so a warm start would begin from a head that never predicts "
            f"them; to warm-start anyway, land rows of every class before the first champion")


def predicted_top(predictions: Sequence[int], n_classes: int) -> tuple[int, float]:
    """(the most predicted class, its share of the predictions)."""
    counts = np.bincount(np.asarray(predictions, dtype=np.int64), minlength=n_classes)
    top = int(np.argmax(counts))
    return top, float(counts[top] / max(1, counts.sum()))


def collapse(top_class: int, top_share: float, label_counts: Sequence[int], labels: Sequence[str]) -> str | None:
    """Why the predictions count as collapsed (one class for nearly every row, well beyond its share of the
    labels), or None. A 97/3 dataset whose model predicts the majority class 97% of the time is not collapsed."""
    total = sum(label_counts)
    if not total:
        return None
    label_share = label_counts[top_class] / total
    if top_share < COLLAPSE_SHARE or top_share < label_share + COLLAPSE_EXCESS:
        return None
    return (f"the warm start from the champion collapsed: it predicts {labels[top_class]!r} for {top_share:.0%} of "
            f"the holdout rows, which are {label_share:.0%} {labels[top_class]!r}")


def _argmax(predictions: Any) -> Any:
    logits = predictions[0] if isinstance(predictions, tuple) else predictions
    return logits.argmax(-1)


def raise_if_collapsed(predictions: Any, holdout_set: Any, labels: Sequence[str],
                       champion_predictions: Callable[[], Any]) -> None:
    """Raise :class:`Collapsed` when a warm start's holdout ``predictions`` (logits) collapsed and the champion's
    own (``champion_predictions()``, computed only then) did not: a champion that already answered one class for
    nearly everything (a weak or tiny one) was not broken by the warm start, and a fresh start would not help it."""
    counts = holdout_label_counts(holdout_set, len(labels))
    why = collapse(*predicted_top(_argmax(predictions), len(labels)), counts, labels)
    if not why:
        return
    before = collapse(*predicted_top(_argmax(champion_predictions()), len(labels)), counts, labels)
    if before:
        log.info(f"[finetune] {why}, but so does the champion it started from ({before.split(': ', 1)[1]}): not the "
                 f"warm start's doing, so no fresh retry")
        return
    raise Collapsed(why)


def retry_reason(why: str) -> str:
    return (f"{why}; retrained once from model.base in the same run (train.epochs). To skip the warm start, set "
            f"train.init_from: base")


def holdout_label_counts(holdout_set: Any, n_classes: int) -> list[int]:
    return np.bincount(np.asarray(holdout_set["labels"], dtype=np.int64), minlength=n_classes).tolist()
