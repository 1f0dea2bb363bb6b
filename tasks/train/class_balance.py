"""Class balancing for skewed label mixes (``train.class_weights``).

On a 97/3 split the plain cross-entropy is minimised early by answering the majority class for everything; the
fine-tune then never learns the minority class (the new-user trial: the majority class for every golden row).

* ``logit_adjusted`` (what ``auto`` turns on): cross-entropy on ``logits + tau * log(prior)`` (Menon et al. 2021),
  the model used with its plain logits, whose argmax then targets the balanced error (every class's recall counts
  the same). Measured on a 97/3 SST-2 cut it finds the minority class where per-class weights leave the decision
  with the majority (docs/benchmarks.md).
* ``balanced``: each class's loss weighted by n / (k * n_c) (scikit-learn's "balanced": every class contributes
  the same total weight, and the weights average 1 over the training rows, so the loss keeps its scale and the
  learning rate its meaning). Weights act on the gradient only while the minority rows are still misfit; once a
  network fits those few rows their effect fades (Byrd & Lipton 2019, "What is the effect of importance weighting
  in deep learning?").
* ``auto`` turns ``AUTO_METHOD`` on when the largest class has at least ``train.class_weights_auto_ratio`` times
  the rows of the smallest present one, and otherwise leaves the Trainer's own loss untouched (SST-2, emotion: bit
  for bit as without this module); ``none`` keeps the plain loss.

Both stages: the fine-tune's loss (``compute_loss_func`` of the Trainer) and the distillation's CE term on the
labels (``DistillTrainer``'s ``label_loss``; its KL term follows the balanced teacher). Written here rather than
taken from a library: the losses are a line of torch each; what this module adds is the spec's plan and record.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence
import math

import numpy as np
import pyarrow.compute as pc
import torch

# What train.class_weights: auto turns on for a skewed mix (docs/benchmarks.md, "A 97/3 split").
AUTO_METHOD = "logit_adjusted"


def label_counts(dataset: Any, n_classes: int) -> list[int]:
    """Train rows per class id of a tokenized split (its ``labels`` column)."""
    ids = dataset.select_columns(["labels"]).with_format("arrow")["labels"]
    return np.bincount(pc.cast(ids, "int64").to_numpy(zero_copy_only=False), minlength=n_classes).tolist()


def balanced_weights(counts: Sequence[int]) -> list[float]:
    """n / (k * n_c) for each class present (k = classes present), 0 for a class with no rows."""
    present = [c for c in counts if c > 0]
    total, k = sum(present), len(present)
    return [total / (k * c) if c > 0 else 0.0 for c in counts]


def plan(setting: str, auto_ratio: float, counts: Sequence[int], labels: Sequence[str],
         tau: float = 1.0) -> dict[str, Any]:
    """What ``train.class_weights`` resolves to on these train rows: ``{"setting", "method" (balanced,
    logit_adjusted or none), "on", "ratio", "reason", "counts" ({label: rows}), "weights" ({label: weight}, with
    balanced) or "offsets" ({label: tau * log prior}, with logit_adjusted)}``."""
    present = [c for c in counts if c > 0]
    ratio = max(present) / min(present) if present else 1.0
    biggest, smallest = (labels[counts.index(max(present))], labels[counts.index(min(present))]) if present \
        else (None, None)
    mix = f"largest class {biggest!r} has {ratio:.1f}x the rows of the smallest, {smallest!r}"
    if setting in ("balanced", "logit_adjusted"):
        method, reason = setting, f"train.class_weights: {setting} ({mix})"
    elif setting == "none":
        method, reason = "none", f"train.class_weights: none ({mix})"
    elif ratio >= auto_ratio:
        method, reason = AUTO_METHOD, (
            f"train.class_weights: auto turned class balancing on ({AUTO_METHOD}): the {mix}, at least "
            f"train.class_weights_auto_ratio ({auto_ratio:g}); set train.class_weights: none to train unweighted")
    else:
        method, reason = "none", (f"train.class_weights: auto left the loss unweighted: the {mix}, under "
                                  f"train.class_weights_auto_ratio ({auto_ratio:g})")
    out: dict[str, Any] = {"setting": setting, "method": method, "on": method != "none", "ratio": round(ratio, 3),
                           "reason": reason, "counts": dict(zip(labels, (int(c) for c in counts)))}
    if method == "balanced":
        out["weights"] = {label: round(w, 6) for label, w in zip(labels, balanced_weights(counts))}
    elif method == "logit_adjusted":
        out["tau"] = tau
        out["offsets"] = {label: round(tau * p, 6) for label, p in zip(labels, log_priors(counts))}
    return out


def row_losses(planned: dict[str, Any]) -> Callable[..., Any] | None:
    """``f(logits, labels)``: each row's cross-entropy as a ``plan`` balances it (per-class weights, or logit
    adjustment); None when the plan leaves the loss plain."""
    method = planned["method"]
    if method == "none":
        return None
    if method == "balanced":
        table = torch.tensor(list(planned["weights"].values()), dtype=torch.float32)

        def weighted(logits, labels):
            per_row = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
            return per_row * table.to(logits.device)[labels]
        return weighted
    # logit_adjusted (Menon et al. 2021, "Long-tail learning via logit adjustment", eq. 10): cross-entropy on
    # logits + tau * log(prior), the model used with its plain logits. Unlike per-class weights, whose effect
    # fades once the few minority rows are fitted (Byrd & Lipton 2019), the offset asks the rarer class for a
    # larger margin for as long as training runs, and the plain logits estimate the equal-prior posterior (the
    # loss is Fisher-consistent for the balanced error).
    offsets = planned["tau"] * torch.tensor(log_priors(list(planned["counts"].values())), dtype=torch.float32)

    def adjusted(logits, labels):
        return torch.nn.functional.cross_entropy(logits.float() + offsets.to(logits.device), labels,
                                                 reduction="none")
    return adjusted


def loss_for(planned: dict[str, Any]) -> Callable[..., Any] | None:
    """The Trainer's ``compute_loss_func`` for a ``plan`` (None when it leaves the loss plain): the balanced row
    losses summed and divided by the batch's label count when the Trainer gives one (``num_items_in_batch``:
    gradient accumulation stays exact), else averaged over the batch."""
    rows = row_losses(planned)
    if rows is None:
        return None

    def loss(outputs, labels, num_items_in_batch=None):
        per_row = rows(outputs["logits"] if isinstance(outputs, dict) else outputs[0], labels)
        return per_row.sum() / num_items_in_batch if num_items_in_batch is not None else per_row.mean()
    return loss


def trainer_kwargs(planned: dict[str, Any], distilling: bool) -> dict[str, Any]:
    """The trainer's arguments for a plan that is on: the fine-tune Trainer's ``compute_loss_func``, or
    DistillTrainer's ``label_loss`` (its CE term; the KL to the teacher is left as it is)."""
    return {"label_loss": label_loss(planned)} if distilling else {"compute_loss_func": loss_for(planned)}


def label_loss(planned: dict[str, Any]) -> Callable[..., Any] | None:
    """The distillation's CE term, ``f(student_logits, labels)``, balanced as the fine-tune's loss (a batch
    mean); None when the plan leaves it plain."""
    rows = row_losses(planned)
    return None if rows is None else (lambda logits, labels: rows(logits, labels).mean())


def weighted_loss(weights: Sequence[float]) -> Callable[..., Any]:
    """``loss_for`` a balanced plan with these per-class weights."""
    return loss_for({"method": "balanced", "weights": dict(enumerate(weights))})


def log_priors(counts: Sequence[int]) -> list[float]:
    """log(n_c / n) for each class; a class with no train rows gets the rarest present class's (it has no prior of
    its own, and -inf would make the adjusted loss undefined)."""
    present = [c for c in counts if c > 0]
    total, rarest = sum(present), min(present) if present else 1
    return [math.log((c if c > 0 else rarest) / (total or 1)) for c in counts]
