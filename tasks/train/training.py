"""The toolbox of the training runner (``tasks/train/runner.py``): where a stage reads and writes, data,
TrainingArguments, length-grouped batches, progress logging, the Trainer set up one way, training and outputs.

Both stages use the HF Trainer (README: "Training features", Trainer vs our own loop); checkpoints and resume
are in ``tasks/train/checkpoints.py``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tasks import storage
from tasks.errors import DataRejected, SpecInvalid

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("tasks.train.training")


# ---------------------------------------------------------------- where a stage reads and writes


@dataclass(frozen=True)
class StagePaths:
    run_uri: str
    stage: str
    run_key: str
    out_uri: str  # RUN/<stage>
    checkpoint_uri: str  # <storage>/checkpoints/<pipeline>/<run_key>/<stage>
    scratch: Path  # local working directory for Trainer checkpoints

    @property
    def model_uri(self) -> str:
        return storage.join(self.out_uri, "model")

    @property
    def metrics_uri(self) -> str:
        return storage.join(self.out_uri, "metrics.json")

    @property
    def curve_uri(self) -> str:
        return storage.join(self.out_uri, "curve.png")


def stage_paths(spec, run_uri: str, stage: str) -> StagePaths:
    run_uri = storage.normalize(run_uri).rstrip("/")
    run_key = run_uri.rsplit("/", 1)[-1]
    # A fixed local path per run and stage: the Trainer records the best checkpoint's absolute path in its
    # state, and a retry (a new pod) must find the restored checkpoint at that same path.
    scratch_root = Path(os.environ.get("RETRAIN_SCRATCH_DIR") or Path(tempfile.gettempdir()) / "retrain-scratch")
    return StagePaths(
        run_uri=run_uri,
        stage=stage,
        run_key=run_key,
        out_uri=storage.join(run_uri, stage),
        checkpoint_uri=storage.join(spec.layout.checkpoints, run_key, stage),
        scratch=scratch_root / spec.name / run_key / stage,
    )


# ---------------------------------------------------------------- data


def load_splits(snapshot_uri: str, max_train_rows: int | None,
                manifest: dict[str, Any] | None = None) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """(train, holdout) rows of a snapshot (``manifest``: its manifest, when already read). With a cap, the newest
    rows win: parts are stored oldest batch first, so the cap keeps the tail of the train split."""
    from tasks.data.snapshots import read_snapshot

    try:
        frame = read_snapshot(snapshot_uri, manifest)
    except storage.NotFound as exc:
        raise SpecInvalid(f"--snapshot {snapshot_uri}: no snapshot there ({exc})") from None
    train = frame[frame["split"] == "train"]
    holdout = frame[frame["split"] == "holdout"]
    if max_train_rows is not None and len(train) > max_train_rows:
        train = train.iloc[len(train) - max_train_rows:]
    if train.empty:
        raise DataRejected(f"snapshot {snapshot_uri} has no train rows")
    if holdout.empty:
        raise DataRejected(f"snapshot {snapshot_uri} has no holdout rows; early stopping needs them")
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def stratified_sample(labels: Sequence[int], size: int, seed: int) -> list[int]:
    """Indices (sorted) of a seeded sample of ``size`` rows with each label's share of ``labels``: per label
    round(size x share) rows, the rounding left over going to the largest remainders, at least one row of every
    label present. All indices when ``size`` covers them. Written here rather than sklearn's
    ``train_test_split(stratify=...)``, which refuses a label with a single row."""
    import numpy as np

    labels = np.asarray(labels)
    if size >= len(labels):
        return list(range(len(labels)))
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / len(labels)
    take = np.maximum(1, np.floor(exact)).astype(int)
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if take.sum() >= size:
            break
        take[i] = min(counts[i], take[i] + 1)
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, take)]
    return sorted(int(i) for i in np.concatenate(picked))


# ---------------------------------------------------------------- model selection rows drawn like the golden set

LENGTH_BINS = 8  # token-length bins, at the golden set's quantiles
MIN_LIKE_GOLDEN_ROWS = 200  # below this a like-golden sample fills scarce cells from nearby lengths instead


@dataclass
class LikeGoldenSample:
    """A holdout sample drawn like the golden set (``like_golden_sample``) and how close it came."""

    indices: list[int]  # into the holdout split, sorted
    edges: list[int]  # token-length bin edges: bin i holds lengths in [edges[i-1], edges[i])
    shortfalls: list[dict[str, Any]] = field(default_factory=list)  # cells the holdout could not fill
    histogram_distance: float = 0.0  # total variation distance of the sample's (length bin, label) mix to golden's

    def summary(self) -> dict[str, Any]:
        return {"mode": "like_golden", "rows": len(self.indices), "length_edges": self.edges,
                "histogram_distance": round(self.histogram_distance, 4), "shortfalls": self.shortfalls}


def length_edges(lengths: Sequence[int], bins: int = LENGTH_BINS) -> list[int]:
    """Inner bin edges at the quantiles of ``lengths`` (integers, distinct): ``bins`` bins of about equal golden
    counts, the first and last open-ended so every holdout row falls in one."""
    import numpy as np

    inner = np.quantile(np.asarray(lengths), np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({int(np.ceil(x)) for x in inner} - {int(min(lengths))})


def cell_counts(lengths: Sequence[int], labels: Sequence[int], edges: Sequence[int]) -> dict[tuple[int, int], int]:
    """Rows per (length bin, label)."""
    import numpy as np

    bins = np.searchsorted(np.asarray(edges), np.asarray(lengths), side="right")
    cells, counts = np.unique(np.stack([bins, np.asarray(labels)], axis=1), axis=0, return_counts=True)
    return {(int(b), int(y)): int(n) for (b, y), n in zip(cells, counts)}


def apportion(shares: dict[Any, float], size: int) -> dict[Any, int]:
    """``size`` split by ``shares`` (summing to 1): floors, then the largest remainders (ties by key order)."""
    keys = sorted(shares)
    exact = {k: size * shares[k] for k in keys}
    out = {k: int(exact[k]) for k in keys}
    for k in sorted(keys, key=lambda k: -(exact[k] - out[k]))[:size - sum(out.values())]:
        out[k] += 1
    return out


def like_golden_sample(holdout_lengths: Sequence[int], holdout_labels: Sequence[int], golden_lengths: Sequence[int],
                       golden_labels: Sequence[int], seed: int, max_rows: int | None = None,
                       bins: int = LENGTH_BINS, min_rows: int = MIN_LIKE_GOLDEN_ROWS) -> LikeGoldenSample:
    """A seeded sample of holdout rows whose (token-length bin, label) mix is the golden set's.

    Bins are the golden set's length quantiles (``length_edges``). The size is the largest sample with exactly
    the golden mix that the holdout rows allow, at most the golden set's size and ``max_rows``. When that is
    below ``min_rows`` (a holdout with few rows of some length and label, e.g. the long sentences of SST-2's
    phrase-heavy train file), the sample has ``min_rows`` rows (or all the holdout's) and a cell the holdout cannot
    fill takes what it has, the rest from the nearest length bins of the same label (shorter first on a tie), so
    the label mix stays the golden set's as long as the label has rows; those cells are in ``shortfalls``. The
    golden rows themselves are never sampled: only their lengths and labels are read."""
    import numpy as np

    h_len, h_lab = np.asarray(holdout_lengths), np.asarray(holdout_labels)
    edges = length_edges(golden_lengths, bins)
    golden = cell_counts(golden_lengths, golden_labels, edges)
    total = sum(golden.values())
    shares = {c: n / total for c, n in golden.items()}
    h_bins = np.searchsorted(np.asarray(edges), h_len, side="right")
    members = {c: np.flatnonzero((h_bins == c[0]) & (h_lab == c[1])) for c in golden}
    exact_fit = min(len(members[c]) / shares[c] for c in golden)
    cap = min(total, len(h_len), max_rows if max_rows is not None else len(h_len))
    size = int(min(cap, np.floor(exact_fit + 1e-9)))
    if size < min_rows:
        size = min(cap, min_rows)
    want = apportion(shares, size)
    take = {c: min(want[c], len(members[c])) for c in golden}
    # Scarce cells: the rest from the same label's nearest length bins that have rows to spare.
    shortfalls = []
    extra: dict[tuple[int, int], int] = {}
    all_cells = {(int(b), int(y)) for b, y in zip(h_bins, h_lab)}
    spare = {c: int(np.sum((h_bins == c[0]) & (h_lab == c[1]))) - take.get(c, 0) for c in all_cells}
    for cell in sorted(golden):
        missing = want[cell] - take[cell]
        if not missing:
            continue
        filled = 0
        near = sorted((c for c in all_cells if c[1] == cell[1] and c != cell), key=lambda c: (abs(c[0] - cell[0]), c[0]))
        for other in near:
            n = min(missing - filled, spare[other])
            if n > 0:
                extra[other] = extra.get(other, 0) + n
                spare[other] -= n
                filled += n
            if filled == missing:
                break
        low = edges[cell[0] - 1] if cell[0] > 0 else 0
        high = edges[cell[0]] if cell[0] < len(edges) else None
        shortfalls.append({"tokens": f"[{low}, {high if high is not None else 'inf'})", "label": cell[1],
                           "wanted": want[cell], "holdout_rows": take[cell], "from_nearby_lengths": filled})
    rng = np.random.default_rng(seed)
    picked = []
    for cell in sorted(all_cells):
        rows = np.flatnonzero((h_bins == cell[0]) & (h_lab == cell[1]))
        n = take.get(cell, 0) + extra.get(cell, 0)
        if n:
            picked.extend(int(i) for i in rng.permutation(rows)[:n])
    got = cell_counts(h_len[picked], h_lab[picked], edges) if picked else {}
    distance = 0.5 * sum(abs(got.get(c, 0) / max(1, len(picked)) - shares.get(c, 0.0))
                         for c in set(got) | set(shares))
    return LikeGoldenSample(sorted(picked), edges, shortfalls, float(distance))


def tokenize(tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int):
    """A datasets.Dataset of unpadded token ids; padding happens per batch (DataCollatorWithPadding)."""
    from datasets import Dataset

    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    columns = {key: enc[key] for key in enc.keys()}
    columns["labels"] = [int(label) for label in labels]
    return Dataset.from_dict(columns)


def metrics_for(n_classes: int):
    """The Trainer's ``compute_metrics``: accuracy and macro-F1 over the spec's ``n_classes`` classes, the same
    definitions evaluation and the gates use (``tasks.metrics``)."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        import numpy as np

        from tasks import metrics

        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        preds = np.asarray(logits).argmax(-1)
        return metrics.classification_metrics(np.asarray(eval_pred.label_ids), preds, n_classes)

    return compute_metrics


# ---------------------------------------------------------------- TrainingArguments


def cuda_bf16() -> bool:
    """Whether the CUDA GPU computes in bf16 natively (compute capability 8.0 and up). torch's
    ``is_bf16_supported()`` with its default ``including_emulation=True`` also says yes on a V100 or T4, where bf16
    is emulated (slow, no bf16 cuBLAS kernels): fp16 autocast is the fast path there."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def device_features() -> dict[str, Any]:
    """Speed settings by hardware: bf16 autocast, TF32 matmuls and fused AdamW on a CUDA GPU; fp32 and fused
    AdamW on CPU (CPU bf16 autocast is slower than fp32 on CPUs without AMX, and TF32 does not exist there)."""
    import torch

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


# ---------------------------------------------------------------- the GPU profile (CUDA only)

# The auto batch rule's reference point: batch 256 at max_length 128 on an 80 GiB GPU, where the bare loop on an
# H100 reached its ceiling for MiniLM (issue 12) and a BERT-base-size model still fits with room to spare.
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
    holdout split every second or so of GPU training, the overhead issue 12 is about."""
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
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


# On a CUDA GPU a checkpoint by steps every few seconds of training was 35-50% of the stage's wall (issue 12).
GPU_CHECKPOINT_MINUTES = 10.0


def checkpoint_minutes(spec_minutes: float | None) -> float | None:
    """``train.checkpoint_minutes``, or its device default: None (by steps) on CPU, 10 minutes on a CUDA GPU."""
    import torch

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
    from transformers import TrainingArguments

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
    import torch

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.fp32_precision == "tf32"
    torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.conv.fp32_precision == "tf32"


# ---------------------------------------------------------------- length-grouped batches in random order


class LengthBucketSampler:
    """Indices for batches of similar length, with the batches in random order.

    Written here because transformers' ``LengthGroupedSampler`` sorts every mega-batch longest first, so an epoch
    runs from long to short rows a few times over; in one-epoch SST-2 runs that ordering cost about 3 points of dev
    accuracy against random batches (README, Benchmarks). Here each mega-batch of ``mega_batches * batch_size``
    shuffled rows is sorted by length and cut into batches, and then the batches themselves are shuffled. The one
    short batch, if any, comes last, so every other batch stays whole. Seeded by ``seed + epoch`` alone, so a
    resumed run and every DDP rank see the same order. The stages pass the rows of one optimizer step as
    ``batch_size`` (per-device batch x processes x accumulation steps), so N processes with per-device batch b,
    or accumulation over N batches of b, train on the batches one process with batch N x b would.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega_batches: int = 50) -> None:
        self.lengths, self.batch_size, self.seed, self.mega_batches = list(lengths), batch_size, seed, mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer (through accelerate) at each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        size = self.mega_batches * self.batch_size
        full, short = [], []
        for start in range(0, len(order), size):
            mega = sorted(order[start:start + size], key=self.lengths.__getitem__)
            for i in range(0, len(mega), self.batch_size):
                batch = mega[i:i + self.batch_size]
                (full if len(batch) == self.batch_size else short).append(batch)
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return shuffled + short

    def __iter__(self):
        return iter([index for batch in self.batches() for index in batch])


# Set to a folder, every training process writes there (rank-R.jsonl) the token ids of the rows in each batch it
# trained on: which rows a model saw, and which DDP rank saw them (tests/test_ddp.py).
ROWS_SEEN_ENV = "RETRAIN_ROWS_SEEN_DIR"


def stage_trainer_class(trainer_cls):
    """``trainer_cls`` as the stages use it: ``group_by_length`` sampling through ``LengthBucketSampler``, losses
    treated as per-batch means, and the optional log of the rows seen (``ROWS_SEEN_ENV``)."""

    class StageTrainer(trainer_cls):
        # Our classifiers return a per-batch mean loss (BertForSequenceClassification ignores num_items_in_batch),
        # so it must be divided by the accumulation steps. transformers would skip that for any model whose
        # forward takes **kwargs. transformers >= 5.23 reads loss_is_scaled_for_ga; older ones (the GPU image's
        # 5.17) only model_accepts_loss_kwargs, which __init__ sets from the model.
        loss_is_scaled_for_ga = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = False

        def _get_train_sampler(self, train_dataset=None):
            # The Trainer's private hook, the one transformers offers for a custom sampler.
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or dataset is None \
                    or "input_ids" not in getattr(dataset, "column_names", ()):
                return super()._get_train_sampler(train_dataset)
            # Buckets of the rows of one optimizer step (per-device batch x processes x accumulation steps):
            # accelerate hands rank r every r-th per-device slice, and accumulation takes consecutive ones, so the
            # batches are the same for any split of the same effective batch.
            lengths = token_counts(dataset)
            rows_per_step = self.args.train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
            return LengthBucketSampler(lengths, rows_per_step,
                                       seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed)

        samples_trained = 0  # rows this process passed forward and backward (tasks.cost samples)
        samples_inferred = 0  # rows this process evaluated (forward only)

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            self.samples_inferred += len(inputs["input_ids"])
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.samples_trained += len(inputs["input_ids"])
            folder = os.environ.get(ROWS_SEEN_ENV)
            if folder:
                ids, mask = inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()
                rows = [[t for t, m in zip(row, keep) if m] for row, keep in zip(ids, mask)]
                Path(folder).mkdir(parents=True, exist_ok=True)
                with open(Path(folder) / f"rank-{self.args.process_index}.jsonl", "a") as fh:
                    fh.write(json.dumps({"step": self.state.global_step, "rows": rows}) + "\n")
            return super().training_step(model, inputs, num_items_in_batch)

    StageTrainer.__name__ = StageTrainer.__qualname__ = trainer_cls.__name__
    return StageTrainer



def train_data_report(dataset, labels: Sequence[str], max_length: int) -> dict[str, Any]:
    """What a user should know about the rows a stage trains on, and is told nowhere else: how many reach
    ``model.max_length`` (cut there: long documents), and which declared classes have no train row at all (the
    model cannot learn them; a class may arrive with a later batch)."""
    import numpy as np
    import pyarrow.compute as pc

    lengths = np.asarray(token_counts(dataset))
    ids = dataset.select_columns(["labels"]).with_format("arrow")["labels"]
    counts = np.bincount(pc.cast(ids, "int64").to_numpy(zero_copy_only=False), minlength=len(labels))
    at_max = int((lengths >= max_length).sum())
    return {"rows": int(lengths.size), "rows_at_max_length": at_max,
            "share_at_max_length": round(at_max / lengths.size, 4) if lengths.size else 0.0,
            "max_length": max_length, "median_tokens": int(np.median(lengths)) if lengths.size else 0,
            "classes_without_rows": [label for label, n in zip(labels, counts) if n == 0]}


def train_data_warnings(report: dict[str, Any]) -> list[str]:
    """The report's lines worth a warning: a quarter or more of the rows cut, or a class with no rows."""
    out = []
    if report["share_at_max_length"] >= 0.25:
        out.append(f"{report['rows_at_max_length']} of {report['rows']} train rows "
                   f"({report['share_at_max_length']:.0%}) reach model.max_length {report['max_length']} and are cut "
                   f"there (median {report['median_tokens']} tokens): raise model.max_length if their ends matter")
    if report["classes_without_rows"]:
        out.append(f"no train rows of {len(report['classes_without_rows'])} declared class(es) "
                   f"{report['classes_without_rows']}: the model cannot predict them until rows of them land")
    return out


def token_counts(dataset) -> list[int]:
    """Each row's number of tokens, from the Arrow column (a Python list of every row's ids would cost a read of
    the whole split into objects); a ``select``-ed split gives its selected rows."""
    import pyarrow.compute as pc

    column = dataset.select_columns(["input_ids"]).with_format("arrow")["input_ids"]
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).tolist()


# ---------------------------------------------------------------- callbacks


def _transformers_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class ProgressLogger(_transformers_callback_base()):
    """One log line per logging step: step/total, loss, samples/s, ETA; and the figures for the result."""

    def __init__(self, stage: str, samples_per_step: int) -> None:
        self.stage = stage
        self.samples_per_step = samples_per_step
        self.start = 0.0
        self.first_step = 0
        self.eval_seconds = 0.0
        self.train_seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()
        self.first_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "eval_runtime" in logs:
            self.eval_seconds += float(logs["eval_runtime"])
            # After training, the one evaluation left is the best model's, not another step's.
            what = "best model" if self.train_seconds else f"eval step {state.global_step}"
            print(f"[{self.stage}] {what}: loss {logs.get('eval_loss', float('nan')):.4f} "
                  f"accuracy {logs.get('eval_accuracy', float('nan')):.4f} ({logs['eval_runtime']:.1f}s)", flush=True)
            return
        if "loss" not in logs:
            return
        done = state.global_step - self.first_step
        elapsed = max(1e-9, time.monotonic() - self.start - self.eval_seconds)
        rate = done * self.samples_per_step / elapsed
        eta = (state.max_steps - state.global_step) * elapsed / done if done else float("nan")
        print(f"[{self.stage}] step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.2f} "
              f"loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.2e} "
              f"{rate:.1f} samples/s ETA {eta:.0f}s", flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        self.train_seconds = time.monotonic() - self.start

    def samples_per_second(self, global_step: int) -> float:
        """Training throughput of this process: samples / (wall time - evaluation time)."""
        busy = max(1e-9, self.train_seconds - self.eval_seconds)
        return (global_step - self.first_step) * self.samples_per_step / busy


def _early_stopping_base():
    from transformers import EarlyStoppingCallback

    return EarlyStoppingCallback


class EarlyStoppingAfterMinEpochs(_early_stopping_base()):
    """transformers' EarlyStoppingCallback that cannot end training before ``min_epochs``: evaluations before
    then still update the best checkpoint but do not count towards the patience, so patience evaluations after
    ``min_epochs`` are what stops a run. Its counter and arguments are part of every checkpoint (``state()``,
    restored by the Trainer with ``restore_callback_states_from_checkpoint``), so a resumed run stops where the
    uninterrupted one would."""

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float | None = 0.0,
                 min_epochs: float = 0.0) -> None:
        super().__init__(early_stopping_patience=early_stopping_patience,
                         early_stopping_threshold=early_stopping_threshold)
        self.min_epochs = float(min_epochs)

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if (state.epoch or 0.0) < self.min_epochs - 1e-9:
            self.early_stopping_patience_counter = 0
            control.should_training_stop = False

    def state(self) -> dict:
        saved = super().state()
        saved["args"]["min_epochs"] = self.min_epochs
        return saved


# ---------------------------------------------------------------- training and outputs


@dataclass
class TrainOutcome:
    """What one training run produced: the figures for metrics.json and the stage's result."""

    global_step: int
    resumed_from_step: int
    train_seconds: float  # trainer.train() wall time, evaluations and checkpoints included
    samples_per_second: float  # training rows per second, evaluation time excluded
    eval_seconds: float
    checkpoint_seconds: float  # what checkpoints cost the training loop: local saves plus uploads waited for
    metrics: dict[str, float]  # the best model on the holdout split
    checkpoint_upload_seconds: float = 0.0  # the uploads' own wall time (in the background on a GPU)
    overhead_share: float = 0.0  # (eval_seconds + checkpoint_seconds) / train_seconds
    log_history: list[dict[str, Any]] = field(default_factory=list)


def outcome_of(trainer, holdout: dict[str, float], resumed_from_step: int, progress: "ProgressLogger",
               checkpoint_seconds: float, checkpoint_upload_seconds: float = 0.0,
               holdout_rows: int | None = None) -> TrainOutcome:
    metrics = {k.removeprefix("eval_"): float(v) for k, v in holdout.items()
               if k in ("eval_accuracy", "eval_macro_f1", "eval_loss")}
    metrics["holdout_rows"] = len(trainer.eval_dataset) if holdout_rows is None else holdout_rows
    return TrainOutcome(
        global_step=trainer.state.global_step,
        resumed_from_step=resumed_from_step,
        train_seconds=round(progress.train_seconds, 2),
        samples_per_second=round(progress.samples_per_second(trainer.state.global_step), 2),
        eval_seconds=round(progress.eval_seconds, 2),
        checkpoint_seconds=round(checkpoint_seconds, 2),
        metrics=metrics,
        checkpoint_upload_seconds=round(checkpoint_upload_seconds, 2),
        overhead_share=round((progress.eval_seconds + checkpoint_seconds) / max(1e-9, progress.train_seconds), 4),
        log_history=list(trainer.state.log_history),
    )


def plot_curve(log_history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Training loss, holdout loss and holdout accuracy against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"], e.get("eval_accuracy")) for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="holdout loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    accs = [(e[0], e[2]) for e in evals if e[2] is not None]
    if accs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*accs), "s--", label="holdout accuracy", color="tab:green")
        ax2.set_ylabel("accuracy")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def publish_outputs(model, tokenizer, paths: StagePaths, outcome: TrainOutcome,
                    extra_dirs: dict[str, Path] | None = None) -> dict[str, str]:
    """Rank 0: model (safetensors + config + tokenizer), metrics.json, curve.png and extra folders to storage.
    Returns {name: uri} of the extra folders."""
    from tasks.train.modeling import save_model

    uris: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=f"{paths.stage}-out-") as tmp:
        out = Path(tmp)
        save_model(model, tokenizer, out / "model")
        storage.upload_dir(out / "model", paths.model_uri)
        figures = {k: v for k, v in vars(outcome).items() if k not in ("metrics", "log_history")}
        history = [e for e in outcome.log_history if "loss" in e or "eval_loss" in e]
        storage.write_json(paths.metrics_uri, {"holdout": outcome.metrics, **figures, "log_history": history})
        plot_curve(outcome.log_history, out / "curve.png", f"{paths.stage} ({paths.run_key})")
        storage.upload_file(out / "curve.png", paths.curve_uri)
        for name, folder in (extra_dirs or {}).items():
            uris[name] = storage.join(paths.out_uri, name)
            storage.upload_dir(folder, uris[name])
    return uris


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import transformers

    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()


def quiet_trainer(trainer_cls, **kwargs):
    """A ``stage_trainer_class(trainer_cls)`` whose log lines come from ProgressLogger only (the default printer
    dumps raw dicts)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = stage_trainer_class(trainer_cls)(**kwargs)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def make_trainer(trainer_cls, *, args, tokenizer, n_classes: int, patience: int, callbacks: Sequence[Any] = (),
                 min_epochs: float = 0.0, **kwargs):
    """The stages' Trainer, set up one way for both: dynamic padding, holdout accuracy and macro-F1, early
    stopping (not before ``min_epochs``), length-grouped batches, quiet logs; ``callbacks`` (progress, checkpoint
    sync) come first."""
    from transformers import DataCollatorWithPadding

    return quiet_trainer(
        trainer_cls,
        args=args,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if args.bf16 or args.fp16 else None),
        compute_metrics=metrics_for(n_classes),
        callbacks=[*callbacks, EarlyStoppingAfterMinEpochs(early_stopping_patience=patience,
                                                          min_epochs=min_epochs)],
        **kwargs,
    )
