"""The stages' TrainingArguments, and the speed settings they take from the hardware (bf16 or fp16, TF32, fused
AdamW, data loader workers)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

log = logging.getLogger(__name__)


def cuda_bf16() -> bool:
    """Whether the CUDA GPU computes in bf16 natively (compute capability 8.0 and up). torch's
    ``is_bf16_supported()`` with its default ``including_emulation=True`` also says yes on a V100 or T4, where bf16
    is emulated (slow, no bf16 cuBLAS kernels): fp16 autocast is the fast path there."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def device_features() -> dict[str, Any]:
    """Speed settings by hardware: bf16 autocast, TF32 matmuls and fused AdamW on a CUDA GPU; fp32 and fused
    AdamW on CPU (CPU bf16 autocast is slower than fp32 on CPUs without AMX, and TF32 does not exist there)."""
    if torch.cuda.is_available():
        bf16 = cuda_bf16()
        major, _ = torch.cuda.get_device_capability()
        # logging_nan_inf_filter off: it checks every step's loss on the host (a sync per step).
        return {"bf16": bf16, "fp16": not bf16, "tf32": major >= 8, "optim": "adamw_torch_fused",
                "dataloader_num_workers": min(4, os.cpu_count() or 1), "dataloader_pin_memory": True,
                "dataloader_persistent_workers": True, "logging_nan_inf_filter": False}
    # Fused AdamW has a CPU kernel too: 7x faster optimizer steps than the foreach one (0.02 s vs 0.15 s for
    # MiniLM's 22.7M parameters on one core), which matters when short SST-2 batches make steps cheap.
    # use_cpu: without it, accelerate does not set up DDP over gloo under torchrun on a CPU-only machine (each
    # rank would train alone on all the data, and each would write the outputs).
    return {"bf16": False, "fp16": False, "tf32": None, "optim": "adamw_torch_fused", "use_cpu": True,
            "dataloader_num_workers": 0, "dataloader_pin_memory": False}


# On a CUDA GPU, checkpoints by steps come a few seconds of training apart and cost 35-50% of the stage's wall
# (docs/training.md, "On a CUDA GPU: checkpoints by time").
GPU_CHECKPOINT_MINUTES = 10.0


def checkpoint_minutes(spec_minutes: float | None) -> float | None:
    """``train.checkpoint_minutes``, or its device default: None (by steps) on CPU, 10 minutes on a CUDA GPU."""
    if spec_minutes is not None:
        return spec_minutes
    return GPU_CHECKPOINT_MINUTES if torch.cuda.is_available() else None


def training_arguments(output_dir: Path, *, epochs: float, batch_size: int, learning_rate: float,
                       weight_decay: float, warmup_ratio: float, gradient_accumulation_steps: int,
                       eval_steps: int, checkpoint_steps: int, seed: int, group_by_length: bool = True,
                       checkpoint_minutes: float | None = None, **overrides: Any):
    """The stages' TrainingArguments. With ``checkpoint_minutes`` the Trainer saves on each new best evaluation
    (``save_strategy="best"``, what ``load_best_model_at_end`` needs) and ``checkpoints.TimedCheckpoints``
    adds a save every that many minutes; otherwise it saves every ``checkpoint_steps``."""
    # load_best_model_at_end needs checkpoints on evaluation steps.
    save_steps = eval_steps * max(1, math.ceil(checkpoint_steps / eval_steps))
    if save_steps != checkpoint_steps and checkpoint_minutes is None:
        log.warning("checkpoint_steps=%d rounded up to %d, a multiple of eval_steps=%d",
                    checkpoint_steps, save_steps, eval_steps)
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(64, batch_size * 2),
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup_steps=warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers v5
        lr_scheduler_type="linear",
        gradient_accumulation_steps=gradient_accumulation_steps,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,  # the newest and the best; the Trainer never deletes the best one
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=max(1, min(50, eval_steps // 2)),
        logging_first_step=True,
        disable_tqdm=True,  # ProgressLogger prints one line per log step instead
        report_to="none",
        seed=seed,
        data_seed=seed,
        ddp_find_unused_parameters=False,
        # Under DDP, transformers multiplies the loss by the number of processes, for losses normalized by the
        # items summed over all ranks; ours is a per-batch mean, which DDP's gradient averaging already handles.
        average_tokens_across_devices=False,
        restore_callback_states_from_checkpoint=True,  # the early-stopping patience counter survives a retry
    )
    if checkpoint_minutes is not None:
        kwargs.update(save_strategy="best")
        del kwargs["save_steps"]
    kwargs.update(device_features())
    kwargs.update(overrides)
    args = TrainingArguments(**kwargs)
    if args.tf32 is not None or args.torch_compile:
        mirror_tf32_to_legacy_flags()
    return args


def mirror_tf32_to_legacy_flags() -> None:
    """Write TF32's state again through torch's legacy flags. TrainingArguments sets TF32 (``tf32``, and always
    under ``torch_compile`` on an Ampere or newer GPU) through the new ``fp32_precision`` API; after that, reading
    a legacy flag raises ("mix of the legacy and new APIs"), and torch.compile's inductor still reads them
    (pytorch#166387 in torch 2.11; the autotune cache's ``get_float32_matmul_precision()`` in 2.13). A legacy
    write last makes both readable, with the same state."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.fp32_precision == "tf32"
    torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.conv.fp32_precision == "tf32"
