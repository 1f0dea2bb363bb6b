"""Class weighting for skewed label mixes (``train.class_weights``).

On a 97/3 split the plain cross-entropy is minimised early by answering the majority class for everything; the
fine-tune then never learns the minority class (the new-user trial: the majority class for every golden row).
``balanced`` weights each class's loss by n / (k * n_c) (scikit-learn's "balanced": every class contributes the
same total weight, and the weights average 1 over the training rows, so the loss keeps its scale and the learning
rate its meaning). ``auto`` turns them on when the largest class has at least ``train.class_weights_auto_ratio``
times the rows of the smallest present one; ``none`` keeps the plain loss. A class without train rows gets weight
0 (it has no rows to weight; training_data_warnings already names it).

The weights apply to the fine-tune's cross-entropy (``compute_loss_func`` of the Trainer); the student learns from
the weighted teacher's outputs (distillation keeps its own loss).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


def label_counts(dataset: Any, n_classes: int) -> list[int]:
    """Train rows per class id of a tokenized split (its ``labels`` column)."""
    import numpy as np
    import pyarrow.compute as pc

    ids = dataset.select_columns(["labels"]).with_format("arrow")["labels"]
    return np.bincount(pc.cast(ids, "int64").to_numpy(zero_copy_only=False), minlength=n_classes).tolist()


def balanced_weights(counts: Sequence[int]) -> list[float]:
    """n / (k * n_c) for each class present (k = classes present), 0 for a class with no rows."""
    present = [c for c in counts if c > 0]
    total, k = sum(present), len(present)
    return [total / (k * c) if c > 0 else 0.0 for c in counts]


def plan(setting: str, auto_ratio: float, counts: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """What ``train.class_weights`` resolves to on these train rows: ``{"setting", "on", "ratio", "reason",
    "weights" ({label: weight} when on)}``."""
    present = [c for c in counts if c > 0]
    ratio = max(present) / min(present) if present else 1.0
    biggest, smallest = (labels[counts.index(max(present))], labels[counts.index(min(present))]) if present \
        else (None, None)
    mix = f"largest class {biggest!r} has {ratio:.1f}x the rows of the smallest, {smallest!r}"
    if setting == "balanced":
        on, reason = True, f"train.class_weights: balanced ({mix})"
    elif setting == "none":
        on, reason = False, f"train.class_weights: none ({mix})"
    elif ratio >= auto_ratio:
        on, reason = True, (f"train.class_weights: auto turned class weights on: the {mix}, at least "
                            f"train.class_weights_auto_ratio ({auto_ratio:g}); set train.class_weights: none to "
                            f"train unweighted")
    else:
        on, reason = False, (f"train.class_weights: auto left the loss unweighted: the {mix}, under "
                             f"train.class_weights_auto_ratio ({auto_ratio:g})")
    out: dict[str, Any] = {"setting": setting, "on": on, "ratio": round(ratio, 3), "reason": reason}
    if on:
        out["weights"] = {label: round(w, 6) for label, w in zip(labels, balanced_weights(counts))}
    return out


def weighted_loss(weights: Sequence[float]) -> Callable[..., Any]:
    """The Trainer's ``compute_loss_func``: class-weighted cross-entropy on the model's logits, summed and divided
    by the batch's label count when the Trainer gives one (``num_items_in_batch``: gradient accumulation stays
    exact), else averaged over the batch."""
    import torch

    table = torch.tensor(list(weights), dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        per_row = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        weighted = per_row * table.to(logits.device)[labels]
        if num_items_in_batch is not None:
            return weighted.sum() / num_items_in_batch
        return weighted.mean()

    return loss
