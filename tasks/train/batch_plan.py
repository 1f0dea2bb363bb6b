"""The batch a stage trains with on a CUDA GPU (``train.gpu_batch_size``), and the learning rate and step counts
that go with it. On CPU, or with no GPU batch set, the spec's batch as it is."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


# The auto batch rule's reference point: batch 256 at max_length 128 on an 80 GiB GPU, where the bare loop on an
# H100 reaches its ceiling for MiniLM (docs/training.md, "The GPU profile"; bench/gpu_efficiency.py measures it)
# and a BERT-base-size model still fits with room to spare.
AUTO_BATCH_AT_80GIB_LEN128 = 256
AUTO_BATCH_MAX = 1024
AUTO_MIN_STEPS_PER_EPOCH = 50


@dataclass(frozen=True)
class BatchPlan:
    """Per-device batch, peak learning rate and step counts a stage trains with."""

    batch_size: int
    learning_rate: float
    eval_steps: int
    checkpoint_steps: int


def _power_of_two_at_most(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))


def auto_gpu_batch(total_memory_bytes: int, max_length: int, train_rows: int, batch_size: int) -> int:
    """The per-device batch for ``gpu_batch_size: auto``: the largest power of two at most
    256 x (GPU memory / 80 GiB) x (128 / max_length) (activation memory grows with batch x length), at most 1024,
    and small enough to leave at least 50 optimizer steps per epoch (evaluations, early stopping and warmup need
    steps); never below the spec's ``batch_size``."""
    by_memory = AUTO_BATCH_AT_80GIB_LEN128 * (total_memory_bytes / 80 / 2**30) * (128 / max_length)
    by_steps = train_rows / AUTO_MIN_STEPS_PER_EPOCH
    return max(batch_size, _power_of_two_at_most(min(by_memory, by_steps, AUTO_BATCH_MAX)))


def scaled_learning_rate(learning_rate: float, batch_size: int, reference_batch: int, rule: str) -> float:
    """The peak rate for ``batch_size`` given the spec's rate at ``reference_batch``: sqrt (the default; Adam's
    noise scale grows with the square root of the batch) or linear scaling; warmup stays ``train.warmup_ratio``."""
    ratio = batch_size / reference_batch
    return learning_rate * {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[rule]


def plan_batches(*, batch_size: int, learning_rate: float, eval_steps: int, checkpoint_steps: int,
                 gpu_batch_size: int | str | None, lr_scaling: str, max_length: int, train_rows: int,
                 total_memory_bytes: int | None) -> BatchPlan:
    """What a stage trains with. ``total_memory_bytes`` None (no CUDA GPU) or ``gpu_batch_size`` None: the spec
    as it is. Otherwise the GPU batch (``auto``: ``auto_gpu_batch``) and the learning rate scaled to it. Eval and
    checkpoint steps stay the spec's optimizer steps, so with a larger batch evaluations come every more rows:
    scaled down to the same rows (eval_steps 100 at batch 32 -> 12 at batch 256) they would score the whole
    holdout split every second or so of GPU training, and evaluation would take most of the stage's wall."""
    same = BatchPlan(batch_size, learning_rate, eval_steps, checkpoint_steps)
    if total_memory_bytes is None or gpu_batch_size is None:
        return same
    batch = (auto_gpu_batch(total_memory_bytes, max_length, train_rows, batch_size) if gpu_batch_size == "auto"
             else int(gpu_batch_size))
    if batch == batch_size:
        return same
    return BatchPlan(batch, scaled_learning_rate(learning_rate, batch, batch_size, lr_scaling), eval_steps,
                     checkpoint_steps)


def cuda_memory_bytes() -> int | None:
    """Total memory of the current CUDA device; None without one."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
