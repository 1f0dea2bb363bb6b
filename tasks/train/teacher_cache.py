"""The frozen teacher's outputs over the train rows, computed in one pass before distillation
(``student.teacher_cache``), so that training steps run the student alone; stored, so that a retry reads them.

What is kept (host memory): the logits of every train row (float32), and, when ``student.hidden_mse_weight > 0``,
the hidden states of the mapped teacher layers for the real tokens only, ragged: one ``[tokens of all rows,
hidden]`` block per layer, row r's tokens at ``offsets[r]:offsets[r + 1]``. On a CUDA GPU the pass runs the teacher
with bf16 weights under ``torch.inference_mode``, rows sorted by length, and the hidden states are kept in bf16
(2 bytes a value); on CPU it stays fp32.

The train rows are read once (``read_rows``: one Arrow read per input column); the size estimate, the key, the
pass's batches and the rows' fingerprints all come from that read.

Under torchrun the pass is sharded: process r of N runs the teacher on every N-th row of the longest-first
order (shares of near-equal tokens), and the shares are exchanged with ``torch.distributed.all_gather`` over a
gloo group (the default group under gloo, a gloo group beside NCCL on GPUs: the outputs live in host memory), so
every process ends with all the outputs after 1/N of the pass.

Stored (write-once, like the token cache)::

    key = sha256(teacher model URI + sha256 of its config and weights, snapshot id, sha256 of the train rows'
                 token ids, mapped layers, dtype, model.max_length, classes, format)
    <storage>/cache/<pipeline>/teacher/<key>/<attempt>/   outputs.safetensors, manifest.json (written last)

``outputs.safetensors`` holds ``logits``, ``offsets``, ``row_crc`` and (with hidden-state MSE) ``hidden``. A reader
takes the oldest attempt whose manifest matches the key and whose file matches the manifest's size and sha256,
and whose offsets and row fingerprints equal the rows being trained on; anything else (a partial upload, a
corrupt copy) is logged and skipped, and the pass runs again and is written as a new attempt. Nothing stored is
replaced. Under DDP every process reads, and the stored copy is used only when every process found it; rank 0
alone writes. Only caches up to ``STORE_MAX_BYTES`` are stored: every logits-only cache (full SST-2: 1.5 MiB),
hidden states of small snapshots; full SST-2 with MiniLM's 3 mapped layers (about 2 GB in bf16) is not, since a
GPU remakes the pass faster than it would download that much (docs/training.md).

How a training batch finds its rows: the distill stage adds a ``row_index`` column to the train split, and
``CachedTeacherCollator`` (in the DataLoader, on the host) pads the batch as before, checks each row's token ids
against the crc32 recorded for that index, gathers the row's logits and hidden states into the batch's padded
shape (``teacher_logits [B, classes]``, ``teacher_hidden [layers, B, L, hidden]``, zeros at padding) and drops
``row_index``; the Trainer moves them to the device with the rest of the batch. The Trainer's
``remove_unused_columns`` would drop ``row_index`` before the collator (it keeps only the model's ``forward``
arguments), so ``DistillTrainer`` turns it off when it has a cache; the train split has no other columns.
Evaluation batches (the holdout split has no ``row_index``) use the live teacher.

When it is used (``decide``): ``off`` never; ``on`` whenever it fits the memory budget; ``auto`` (the default) on a
CUDA GPU when the student trains at least ``AUTO_MIN_EPOCHS`` (3) epochs (the pass, the store and the gather cost
each process more than half an epoch; measured on an H100) and it fits; on CPU ``auto`` is off, so CPU runs train exactly as before. Budget:
``HOST_SHARE`` of the machine's memory (or the container's cgroup limit, when lower), divided among the processes
on the machine; the estimate is tokens x mapped layers x hidden x bytes per value, plus the logits. Otherwise the
live teacher, and the log says why.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tasks import storage

HOST_SHARE = 0.25  # of the host's (or container's) memory, split among the processes on the machine
STORE_MAX_BYTES = 512 * 2**20  # larger caches stay in memory only: a retry makes the pass again
FORMAT = 1  # bump when what is stored changes: old entries then stop matching
OUTPUTS, MANIFEST = "outputs.safetensors", "manifest.json"
INPUTS = ("input_ids", "token_type_ids", "attention_mask")
DDP_TIMEOUT_S = 1800  # TrainingArguments.ddp_timeout's default: the Trainer reuses the group set up here


def row_crc(input_ids: Sequence[int]) -> int:
    """A row's fingerprint: crc32 of its token ids as int64."""
    return zlib.crc32(np.asarray(input_ids, dtype=np.int64).tobytes())


# ---------------------------------------------------------------- the train rows, read once


@dataclass
class TrainRows:
    """The train split's model inputs, flat: row r's values of each column at ``offsets[r]:offsets[r + 1]``."""

    columns: dict[str, np.ndarray]  # input_ids (and token_type_ids, attention_mask when the split has them)
    offsets: np.ndarray  # [rows + 1], int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    @functools.cached_property
    def crc(self) -> np.ndarray:
        """``row_crc`` of every row, [rows], int64."""
        ids, bounds = self.columns["input_ids"].astype(np.int64), self.offsets
        return np.fromiter((zlib.crc32(ids[a:b].tobytes()) for a, b in zip(bounds[:-1], bounds[1:])),
                           dtype=np.int64, count=len(self))

    @functools.cached_property
    def sha256(self) -> str:
        """The rows' identity for the stored cache's key: every input column's values and the row bounds."""
        digest = hashlib.sha256(self.offsets.astype(np.int64).tobytes())
        for name in sorted(self.columns):
            digest.update(name.encode() + b"\0" + self.columns[name].astype(np.int64).tobytes())
        return digest.hexdigest()

    def features(self, rows: Sequence[int]) -> list[dict[str, list[int]]]:
        """The rows as a collator's features (unpadded)."""
        bounds = self.offsets
        return [{name: values[bounds[r]:bounds[r + 1]].tolist() for name, values in self.columns.items()}
                for r in rows]


def read_rows(dataset) -> TrainRows:
    """One read of a tokenized, unpadded split's input columns: Arrow, flattened to numpy (zero-copy where the
    split is memory-mapped, as the token cache's is); a ``select``-ed split reads its selected rows."""
    import pyarrow.compute as pc

    names = [c for c in INPUTS if c in dataset.column_names]
    table = dataset.select_columns(names).with_format("arrow")[:]
    columns, lengths = {}, None
    for name in names:
        column = table.column(name).combine_chunks()
        if lengths is None:
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        columns[name] = column.flatten().to_numpy(zero_copy_only=False)
    return TrainRows(columns, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


# ---------------------------------------------------------------- the outputs


@dataclass
class TeacherOutputs:
    logits: torch.Tensor  # [rows, classes], float32
    hidden: torch.Tensor | None  # [layers, tokens of all rows, hidden]; None without hidden-state MSE
    offsets: np.ndarray  # [rows + 1], int64
    row_crc: np.ndarray  # [rows], int64
    seconds: float = 0.0  # the pass's wall time (0 when read from storage)
    rows_computed: np.ndarray | None = None  # the rows this process ran the teacher on (its share under DDP)
    reused: bool = False  # read from the stored cache
    uri: str | None = None  # the stored copy read or written
    io_seconds: float = 0.0  # reading (reused) or writing the stored copy

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


# On an H100 (MiniLM-L6 teacher, 3-layer student) the cached steps ran 1.24x faster than live-teacher ones, but the
# pass, the store and the host-side gather cost about 0.6 of an epoch: 2 epochs came out 0.90x (20,000 rows) and
# the break-even was ~3 epochs (docs/benchmarks.md, "Measured on an H100").
AUTO_MIN_EPOCHS = 3


def estimate_bytes(tokens: int, rows: int, layers: int, hidden: int, classes: int, value_bytes: int) -> int:
    """tokens x mapped layers x hidden x bytes per value, plus the float32 logits and the row index arrays."""
    return tokens * layers * hidden * value_bytes + rows * (classes * 4 + 16)


def decide(setting: str, *, cuda: bool, epochs: float, need_bytes: int, budget_bytes: int) -> tuple[bool, str]:
    """(use the cache?, why), for ``student.teacher_cache`` = auto | on | off."""
    size = f"{need_bytes / 2**20:.1f} MiB of a {budget_bytes / 2**20:.0f} MiB budget"
    if setting == "off":
        return False, "student.teacher_cache: off"
    if setting == "auto" and not cuda:
        return False, "auto: off on CPU"
    if setting == "auto" and epochs < AUTO_MIN_EPOCHS:
        return False, (f"auto: {epochs:g} epoch(s), fewer than {AUTO_MIN_EPOCHS}; the pass, the store and the "
                       "gather cost about what the cached steps save (docs/benchmarks.md, H100)")
    if need_bytes > budget_bytes:
        return False, f"does not fit: {size} ({HOST_SHARE:.0%} of host memory per process on the machine)"
    return True, f"{setting}: {size}"


# ---------------------------------------------------------------- the pass, sharded under DDP


def for_device(teacher, device: torch.device):
    """The frozen teacher on ``device``: bf16 weights on a CUDA GPU that has bf16 (cast once, so no step casts
    weights under autocast), fp32 elsewhere. The teacher is not under accelerate's autocast (only the student
    is prepared), so without the cast it would run in fp32 on the GPU."""
    from tasks.train.training import cuda_bf16

    teacher = teacher.eval().requires_grad_(False)
    if device.type == "cuda" and cuda_bf16():
        return teacher.to(device=device, dtype=torch.bfloat16)
    return teacher.to(device)


def process_group() -> tuple[int, int, Any]:
    """(rank, world size, the gloo group for exchanging host tensors) under torchrun; (0, 1, None) alone. Sets up
    the default group the way the Trainer's TrainingArguments does (accelerate's PartialState), when it is not
    yet: the Trainer then finds it and uses it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=DDP_TIMEOUT_S))
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size(), group


def shares(rows: TrainRows, world_size: int) -> list[np.ndarray]:
    """Each process's rows: every world_size-th row of the longest-first order."""
    order = np.argsort(-rows.lengths, kind="stable")
    return [np.ascontiguousarray(order[r::world_size]) for r in range(world_size)]


def token_index(rows: TrainRows, share: np.ndarray) -> np.ndarray:
    """Where the tokens of ``share``'s rows, in that order, sit in the ragged [tokens of all rows] layout."""
    lengths = rows.lengths[share]
    local_start = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(rows.offsets[share] - local_start, lengths)


def run_teacher(teacher, rows: TrainRows, share: np.ndarray, tokenizer, *, layers: Sequence[int], batch_size: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher's outputs for ``share``'s rows, in that order: logits [rows, classes] and hidden states
    [layers, their tokens, hidden] (their tokens one row after the other)."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if device.type == "cuda" else None)
    dtype = next(teacher.parameters()).dtype
    lengths = rows.lengths[share]
    logits = torch.empty(len(share), teacher.config.num_labels, dtype=torch.float32)
    hidden = (torch.empty(len(layers), int(lengths.sum()), teacher.config.hidden_size, dtype=dtype)
              if layers else None)
    token = 0
    with torch.inference_mode():
        for start in range(0, len(share), batch_size):
            batch = collate(rows.features(share[start:start + batch_size]))
            batch = {k: v.to(device) for k, v in batch.items()}
            out = teacher(**batch, output_hidden_states=bool(layers))
            logits[start:start + len(batch["input_ids"])] = out.logits.float().cpu()
            if hidden is not None:
                mask = batch["attention_mask"].bool()
                count = int(mask.sum())
                for j, layer in enumerate(layers):
                    hidden[j, token:token + count] = out.hidden_states[layer][mask].to("cpu", dtype)
                token += count
    return logits, hidden


def exchange(tensor: torch.Tensor, sizes: Sequence[int], dim: int, group) -> list[torch.Tensor]:
    """Every process's ``tensor`` (its size along ``dim`` is ``sizes[rank]``), by all_gather on ``group``: padded to
    the largest, sent as bytes (exact, whatever the dtype: gloo has no bf16 on every build)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    shape = list(tensor.shape)
    shape[dim] = max(sizes)
    padded = torch.zeros(shape, dtype=tensor.dtype)
    padded.narrow(dim, 0, sizes[rank]).copy_(tensor)
    wire = padded.view(torch.uint8)
    received = [torch.empty_like(wire) for _ in sizes]
    dist.all_gather(received, wire, group=group)
    return [r.view(tensor.dtype).narrow(dim, 0, n) for r, n in zip(received, sizes)]


def compute(teacher, rows, tokenizer, *, layers: Sequence[int], batch_size: int, device: torch.device,
            rank: int = 0, world_size: int = 1, group=None) -> TeacherOutputs:
    """One pass of ``teacher`` (already ``for_device``) over ``rows`` (``TrainRows``, or a tokenized unpadded
    split), longest rows first. ``layers``: the ``hidden_states`` indices to keep (empty: logits only). With
    ``world_size`` > 1 (under torchrun), this process runs its share and gets the others' over ``group``."""
    t0 = time.monotonic()
    if not isinstance(rows, TrainRows):
        rows = read_rows(rows)
    parts = shares(rows, world_size)
    logits_mine, hidden_mine = run_teacher(teacher, rows, parts[rank], tokenizer, layers=layers,
                                           batch_size=batch_size, device=device)
    if world_size > 1:
        logits_all = exchange(logits_mine, [len(p) for p in parts], 0, group)
        hidden_all = (exchange(hidden_mine, [int(rows.lengths[p].sum()) for p in parts], 1, group)
                      if hidden_mine is not None else [None] * world_size)
    else:
        logits_all, hidden_all = [logits_mine], [hidden_mine]
    logits = torch.empty(len(rows), logits_mine.shape[1], dtype=torch.float32)
    hidden = (torch.empty(len(layers), rows.tokens, hidden_mine.shape[2], dtype=hidden_mine.dtype)
              if hidden_mine is not None else None)
    for part, part_logits, part_hidden in zip(parts, logits_all, hidden_all):
        logits[torch.as_tensor(part)] = part_logits
        if hidden is not None:
            hidden[:, torch.as_tensor(token_index(rows, part))] = part_hidden
    return TeacherOutputs(logits, hidden, rows.offsets, rows.crc, seconds=time.monotonic() - t0,
                          rows_computed=parts[rank])


# ---------------------------------------------------------------- stored: the key, read, write


def model_identity(model_uri: str, folder: Path) -> dict[str, str]:
    """The teacher's URI and a sha256 over its config and weight files (what its outputs depend on)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and (path.name == "config.json" or path.suffix in (".safetensors", ".bin")):
            digest.update(f"{path.name}\0{storage.sha256_file(path)}\n".encode())
    return {"uri": storage.normalize(model_uri).rstrip("/"), "sha256": digest.hexdigest()}


def key_fields(*, teacher: dict[str, str], snapshot_id: str, rows: TrainRows, layers: Sequence[int], dtype: str,
               max_length: int, classes: int) -> dict[str, Any]:
    return {"format": FORMAT, "teacher_uri": teacher["uri"], "teacher_sha256": teacher["sha256"],
            "snapshot_id": snapshot_id, "rows": len(rows), "tokens": rows.tokens, "rows_sha256": rows.sha256,
            "layers": list(layers), "dtype": dtype, "max_length": max_length, "classes": classes}


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


class CacheCorrupt(Exception):
    """A stored copy that does not match its manifest or the rows."""


def read_stored(key_uri: str, fields: dict[str, Any], rows: TrainRows, *, stage: str) -> TeacherOutputs | None:
    """The oldest good copy under ``key_uri``, or None; copies that fail verification are logged and skipped."""
    objects = storage.list_objects(key_uri)
    sizes = {o.uri: o.size for o in objects}
    attempts = sorted({o.uri[len(key_uri) + 1:].split("/", 1)[0] for o in objects if o.uri.endswith("/" + MANIFEST)})
    for attempt in attempts:
        attempt_uri = storage.join(key_uri, attempt)
        try:
            return load_attempt(attempt_uri, fields, rows, sizes)
        except storage.StorageUnavailable:
            raise
        except Exception as exc:  # a corrupt or partial copy, whatever the library says about it
            print(f"[{stage}] teacher cache: skipping {attempt_uri}: {type(exc).__name__}: {exc}", flush=True)
    return None


def load_attempt(attempt_uri: str, fields: dict[str, Any], rows: TrainRows, sizes: dict[str, int]) -> TeacherOutputs:
    from safetensors.torch import load_file

    manifest = storage.read_json(storage.join(attempt_uri, MANIFEST))
    if manifest.get("fields") != fields:
        raise CacheCorrupt(f"manifest is for {manifest.get('fields')}, not this key")
    meta, uri = manifest["files"][OUTPUTS], storage.join(attempt_uri, OUTPUTS)
    if sizes.get(uri) != meta["size"]:  # from the listing: a short file is caught without a read
        raise CacheCorrupt(f"{OUTPUTS}: size {sizes.get(uri)}, manifest {meta['size']}")
    with tempfile.TemporaryDirectory(prefix="teacher-cache-") as tmp:
        path = storage.download_file(uri, Path(tmp) / OUTPUTS)
        if storage.sha256_file(path) != meta["sha256"]:
            raise CacheCorrupt(f"{OUTPUTS}: sha256 differs from the manifest")
        tensors = load_file(str(path))
    logits, hidden = tensors["logits"], tensors.get("hidden")
    offsets, crc = tensors["offsets"].numpy(), tensors["row_crc"].numpy()
    if not (np.array_equal(offsets, rows.offsets) and np.array_equal(crc, rows.crc)):
        raise CacheCorrupt("the stored rows' offsets or token fingerprints differ from the train split's")
    if tuple(logits.shape) != (len(rows), fields["classes"]):
        raise CacheCorrupt(f"logits {tuple(logits.shape)}, want ({len(rows)}, {fields['classes']})")
    layers = len(fields["layers"])
    if (hidden is None) != (layers == 0) or (hidden is not None and (
            hidden.shape[:2] != (layers, rows.tokens) or str(hidden.dtype).removeprefix("torch.") != fields["dtype"])):
        raise CacheCorrupt(f"hidden states {None if hidden is None else (tuple(hidden.shape), hidden.dtype)} do not "
                           f"fit {layers} layers x {rows.tokens} tokens in {fields['dtype']}")
    return TeacherOutputs(logits, hidden, offsets, crc, reused=True, uri=attempt_uri)


def store(key_uri: str, fields: dict[str, Any], outputs: TeacherOutputs) -> str:
    """Write ``outputs`` as a new attempt folder under ``key_uri``, create-only, its manifest last."""
    from safetensors.torch import save_file

    attempt = f"{storage.utcnow().replace('-', '').replace(':', '')}-{uuid.uuid4().hex[:8]}"
    attempt_uri = storage.join(key_uri, attempt)
    tensors = {"logits": outputs.logits.contiguous(), "offsets": torch.from_numpy(outputs.offsets),
               "row_crc": torch.from_numpy(outputs.row_crc)}
    if outputs.hidden is not None:
        tensors["hidden"] = outputs.hidden.contiguous()
    with tempfile.TemporaryDirectory(prefix="teacher-cache-") as tmp:
        path = Path(tmp) / OUTPUTS
        save_file(tensors, str(path))
        meta = {"size": path.stat().st_size, "sha256": storage.sha256_file(path)}
        storage.upload_file(path, storage.join(attempt_uri, OUTPUTS), if_none_match=True)
    storage.write_json(storage.join(attempt_uri, MANIFEST), {
        "fields": fields, "files": {OUTPUTS: meta}, "pass_seconds": round(outputs.seconds, 3),
        "created": storage.utcnow()}, if_none_match=True)
    return attempt_uri


def stored_or_computed(teacher, rows: TrainRows, tokenizer, *, cache_uri: str, fields: dict[str, Any],
                       layers: Sequence[int], batch_size: int, device: torch.device,
                       stage: str = "distill") -> TeacherOutputs:
    """The teacher's outputs over ``rows``: a good stored copy when every process finds one, else the (sharded)
    pass, which rank 0 then stores when it is at most ``STORE_MAX_BYTES``. A failed write is logged, not fatal."""
    rank, world_size, group = process_group()
    key_uri = storage.join(cache_uri, cache_key(fields))
    t0 = time.monotonic()
    found = read_stored(key_uri, fields, rows, stage=stage)
    if world_size > 1:  # all read the stored copy or all make the pass: the pass is collective
        import torch.distributed as dist

        everyone = torch.tensor([int(found is not None)])
        dist.all_reduce(everyone, op=dist.ReduceOp.MIN, group=group)
        found = found if everyone.item() else None
    if found is not None:
        found.io_seconds = time.monotonic() - t0
        return found
    outputs = compute(teacher, rows, tokenizer, layers=layers, batch_size=batch_size, device=device, rank=rank,
                      world_size=world_size, group=group)
    if rank != 0:
        return outputs
    if outputs.nbytes > STORE_MAX_BYTES:
        print(f"[{stage}] teacher cache not stored: {outputs.nbytes / 2**20:.0f} MiB is over "
              f"{STORE_MAX_BYTES / 2**20:.0f} MiB (a retry makes the pass again)", flush=True)
        return outputs
    t0 = time.monotonic()
    try:
        outputs.uri = store(key_uri, fields, outputs)
    except storage.StorageError as exc:  # the stored copy saves a retry's pass; a failed write must not fail the stage
        print(f"[{stage}] teacher cache not stored to {key_uri}: {type(exc).__name__}: {exc}", flush=True)
    outputs.io_seconds = time.monotonic() - t0
    return outputs


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
