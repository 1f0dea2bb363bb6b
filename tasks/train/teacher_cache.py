"""The frozen teacher's outputs over the train rows, computed in one pass before distillation
(``student.teacher_cache``), so that training steps run the student alone.

What is kept (host memory): the logits of every train row (float32), and, when ``student.hidden_mse_weight > 0``,
the hidden states of the mapped teacher layers for the real tokens only, ragged: one ``[tokens of all rows,
hidden]`` block per layer, row r's tokens at ``offsets[r]:offsets[r + 1]``. On a CUDA GPU the pass runs the teacher
with bf16 weights under ``torch.inference_mode``, rows sorted by length, and the hidden states are kept in bf16
(2 bytes a value); on CPU it stays fp32.

How a training batch finds its rows: the distill stage adds a ``row_index`` column to the train split, and
``CachedTeacherCollator`` (in the DataLoader, on the host) pads the batch as before, checks each row's token ids
against the crc32 recorded for that index, gathers the row's logits and hidden states into the batch's padded
shape (``teacher_logits [B, classes]``, ``teacher_hidden [layers, B, L, hidden]``, zeros at padding) and drops
``row_index``; the Trainer moves them to the device with the rest of the batch. The Trainer's
``remove_unused_columns`` would drop ``row_index`` before the collator (it keeps only the model's ``forward``
arguments), so ``DistillTrainer`` turns it off when it has a cache; the train split has no other columns.
Evaluation batches (the holdout split has no ``row_index``) use the live teacher.

When it is used (``decide``): ``off`` never; ``on`` whenever it fits the memory budget; ``auto`` (the default) on a
CUDA GPU when the student trains more epochs than there are processes (each process makes the whole pass, which
costs about one epoch of the live teacher's forward passes on that process) and it fits; on CPU ``auto`` is off, so
CPU runs train exactly as before. Budget: ``HOST_SHARE`` of the machine's memory (or the container's cgroup limit,
when lower), divided among the processes on the machine; the estimate is tokens x mapped layers x hidden x bytes
per value, plus the logits. Otherwise the live teacher, and the log says why.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

HOST_SHARE = 0.25  # of the host's (or container's) memory, split among the processes on the machine


def row_crc(input_ids: Sequence[int]) -> int:
    """A row's fingerprint: crc32 of its token ids as int64."""
    return zlib.crc32(np.asarray(input_ids, dtype=np.int64).tobytes())


@dataclass
class TeacherOutputs:
    logits: torch.Tensor  # [rows, classes], float32
    hidden: torch.Tensor | None  # [layers, tokens of all rows, hidden]; None without hidden-state MSE
    offsets: np.ndarray  # [rows + 1], int64
    row_crc: np.ndarray  # [rows], int64
    seconds: float = 0.0  # the pass's wall time

    @property
    def nbytes(self) -> int:
        hidden = self.hidden.numel() * self.hidden.element_size() if self.hidden is not None else 0
        return hidden + self.logits.numel() * self.logits.element_size() + self.offsets.nbytes + self.row_crc.nbytes

    def gather(self, rows: np.ndarray, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``teacher_logits`` and (with hidden states) ``teacher_hidden`` for ``rows``, padded as ``attention_mask``
        (real tokens in order, any padding side; zeros at padding)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        out = {"teacher_logits": self.logits.index_select(0, index)}
        if self.hidden is not None:
            mask = attention_mask.to(torch.long)
            position = (mask.cumsum(1) - 1).clamp(min=0)  # the token's place among its row's real tokens
            token = torch.as_tensor(self.offsets[rows], dtype=torch.long)[:, None] + position
            layers, _, width = self.hidden.shape
            picked = self.hidden.index_select(1, token.flatten()).view(layers, *token.shape, width)
            out["teacher_hidden"] = picked * mask[None, :, :, None].to(picked.dtype)
        return out


# ---------------------------------------------------------------- when to use it


def host_memory_bytes() -> int:
    """The machine's memory, or the container's cgroup limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def memory_budget_bytes(processes_on_machine: int = 1) -> int:
    return int(HOST_SHARE * host_memory_bytes() / max(1, processes_on_machine))


def estimate_bytes(tokens: int, rows: int, layers: int, hidden: int, classes: int, value_bytes: int) -> int:
    """tokens x mapped layers x hidden x bytes per value, plus the float32 logits and the row index arrays."""
    return tokens * layers * hidden * value_bytes + rows * (classes * 4 + 16)


def decide(setting: str, *, cuda: bool, epochs: float, world_size: int, need_bytes: int,
           budget_bytes: int) -> tuple[bool, str]:
    """(use the cache?, why), for ``student.teacher_cache`` = auto | on | off."""
    size = f"{need_bytes / 2**20:.1f} MiB of a {budget_bytes / 2**20:.0f} MiB budget"
    if setting == "off":
        return False, "student.teacher_cache: off"
    if setting == "auto" and not cuda:
        return False, "auto: off on CPU"
    if setting == "auto" and epochs <= world_size:
        return False, (f"auto: {epochs:g} epochs on {world_size} process(es); the pass would cost each process as "
                       "much as it saves")
    if need_bytes > budget_bytes:
        return False, f"does not fit: {size} ({HOST_SHARE:.0%} of host memory per process on the machine)"
    return True, f"{setting}: {size}"


# ---------------------------------------------------------------- the pass


def for_device(teacher, device: torch.device):
    """The frozen teacher on ``device``: bf16 weights on a CUDA GPU that has bf16 (cast once, so no step casts
    weights under autocast), fp32 elsewhere. The teacher is not under accelerate's autocast (only the student
    is prepared), so without the cast it would run in fp32 on the GPU."""
    teacher = teacher.eval().requires_grad_(False)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return teacher.to(device=device, dtype=torch.bfloat16)
    return teacher.to(device)


def compute(teacher, dataset, tokenizer, *, layers: Sequence[int], batch_size: int,
            device: torch.device) -> TeacherOutputs:
    """One pass of ``teacher`` (already ``for_device``) over ``dataset`` (tokenized, unpadded), longest rows first.
    ``layers``: the ``hidden_states`` indices to keep (empty: logits only)."""
    from transformers import DataCollatorWithPadding

    t0 = time.monotonic()
    inputs = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in dataset.column_names]
    view = dataset.select_columns(inputs)  # batches are read from it by index: the split is never all in RAM
    lengths, crc = [], []
    for row in dataset["input_ids"]:
        lengths.append(len(row))
        crc.append(row_crc(row))
    lengths, crc = np.array(lengths, dtype=np.int64), np.array(crc, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if device.type == "cuda" else None)
    dtype = next(teacher.parameters()).dtype
    logits = torch.empty(len(lengths), teacher.config.num_labels, dtype=torch.float32)
    hidden = (torch.empty(len(layers), int(offsets[-1]), teacher.config.hidden_size, dtype=dtype)
              if layers else None)
    order = np.argsort(-lengths, kind="stable")
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            chunk = view[rows.tolist()]  # {column: the rows' values}
            batch = collate([{c: chunk[c][i] for c in inputs} for i in range(len(rows))])
            batch = {k: v.to(device) for k, v in batch.items()}
            out = teacher(**batch, output_hidden_states=bool(layers))
            logits[torch.as_tensor(rows)] = out.logits.float().cpu()
            if hidden is not None:
                mask = batch["attention_mask"].bool()
                dest = torch.as_tensor(np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows]))
                for j, layer in enumerate(layers):
                    hidden[j, dest] = out.hidden_states[layer][mask].to("cpu", dtype)
    return TeacherOutputs(logits, hidden, offsets, crc, seconds=time.monotonic() - t0)


class CachedTeacherCollator:
    """Pads a batch with ``collator``; for train rows (with ``row_index``) adds the cached teacher outputs."""

    def __init__(self, collator, outputs: TeacherOutputs) -> None:
        self.collator, self.outputs = collator, outputs

    def __call__(self, features: list[dict[str, Any]]):
        if not features or "row_index" not in features[0]:
            return self.collator(features)
        rows = np.array([f["row_index"] for f in features], dtype=np.int64)
        got = np.array([row_crc(f["input_ids"]) for f in features], dtype=np.int64)
        wrong = np.flatnonzero(self.outputs.row_crc[rows] != got)
        if wrong.size:
            raise RuntimeError(f"teacher cache: rows {rows[wrong][:5].tolist()} of this batch are not the rows the "
                               "cache was computed for (token ids differ)")
        batch = dict(self.collator([{k: v for k, v in f.items() if k != "row_index"} for f in features]))
        batch.update(self.outputs.gather(rows, batch["attention_mask"]))
        return batch
