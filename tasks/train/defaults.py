"""Hyperparameters a spec leaves to the data: ``train.learning_rate: auto`` (the default).

The rule (docs/training.md, "Learning rate: auto"):

- a number in the spec is used as is, and nothing is searched;
- ``auto`` with a champion whose teacher records the rate it was trained with (``hyperparameters.json`` in the
  model folder, published with it) reuses that rate: a retrain never searches;
- ``auto`` otherwise (the first run of a pipeline) runs a bounded search: each candidate rate (scaled by
  sqrt(effective batch / 32)) trains a copy of the starting model for a fixed number of steps on a seeded
  subsample of the train split and is scored by macro-F1 on a seeded subsample of the holdout split; the best
  one trains the real run. The search is bounded in candidates, rows, steps and seconds, and a retry of the
  same run reads the result it stored instead of searching again.

``search_learning_rate`` is the search itself, pure around a ``train_and_score(lr) -> float`` callable;
``trainer_scorer`` builds that callable from the runner's model, data and Trainer class.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch.distributed as dist
from transformers import DataCollatorWithPadding

from tasks import storage

AUTO = "auto"
EPOCH_ROWS = 50_000  # epochs: auto trains on about this many rows in all ...
EPOCH_RANGE = (1.0, 3.0)  # ... within these many epochs (BERT's fine-tuning advice: 2 to 4)
RECORD = "hyperparameters.json"  # in the model folder: it travels with the teacher into the registry
REFERENCE_BATCH = 32  # the candidates are the rates for this effective batch

logger = logging.getLogger(__name__)  # the default of the search's ``log`` argument


@dataclass
class Trial:
    learning_rate: float
    score: float
    seconds: float


@dataclass
class SearchResult:
    best: float
    trials: list[Trial]
    skipped: list[float] = field(default_factory=list)  # candidates not tried: the time budget ran out
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_summary(cls, data: dict[str, Any]) -> "SearchResult":
        return cls(best=float(data["best"]), trials=[Trial(**t) for t in data["trials"]],
                   skipped=[float(x) for x in data.get("skipped", [])], seconds=float(data.get("seconds", 0.0)))


def epochs_for(rows: int) -> float:
    """``epochs: auto``: about ``EPOCH_ROWS`` rows in all, clipped to ``EPOCH_RANGE``, to one decimal (14,400
    emotion train rows: 3; 200,000 rows: 1)."""
    low, high = EPOCH_RANGE
    return round(min(high, max(low, EPOCH_ROWS / max(1, rows))), 1)


def run_steps(train_rows: int, effective_batch: int, epochs: float) -> int:
    """The optimizer steps a run of ``epochs`` over ``train_rows`` takes at that effective batch."""
    return max(1, math.ceil(math.ceil(train_rows / max(1, effective_batch)) * epochs))


def scaled_candidates(candidates: Sequence[float], effective_batch: int) -> list[float]:
    """The candidates for an effective batch: square-root scaling from ``REFERENCE_BATCH`` (Adam's rule of thumb),
    so a spec with batch 128 searches twice the rates."""
    factor = math.sqrt(effective_batch / REFERENCE_BATCH)
    return [float(f"{lr * factor:.3g}") for lr in candidates]


def search_learning_rate(candidates: Sequence[float], train_and_score: Callable[[float], float], *,
                         max_seconds: float, log: Callable[[str], None] = logger.info,
                         clock: Callable[[], float] = time.monotonic) -> SearchResult:
    """Try each candidate in order with ``train_and_score(lr)`` (higher is better) and return the best.

    Bounded: at most ``len(candidates)`` calls, and no new call starts once ``max_seconds`` have passed (the
    first candidate always runs). Ties go to the earlier candidate; a score that is not a number counts as the
    worst (a diverged run)."""
    if not candidates:
        raise ValueError("no learning-rate candidates")
    start = clock()
    trials: list[Trial] = []
    for i, lr in enumerate(candidates):
        if trials and clock() - start >= max_seconds:
            skipped = [float(x) for x in candidates[i:]]
            log(f"[lr-search] time budget {max_seconds:.0f}s spent: skipping {skipped}")
            break
        t0 = clock()
        score = float(train_and_score(float(lr)))
        if math.isnan(score):
            score = float("-inf")
        trials.append(Trial(float(lr), score, round(clock() - t0, 2)))
        log(f"[lr-search] {i + 1}/{len(candidates)} lr {lr:.2e}: holdout macro-F1 {score:.4f} "
            f"({trials[-1].seconds:.0f}s)")
    else:
        skipped = []
    best = max(trials, key=lambda t: t.score)  # max keeps the first of equal scores
    result = SearchResult(best=best.learning_rate, trials=trials, skipped=skipped, seconds=round(clock() - start, 2))
    log(f"[lr-search] chose lr {result.best:.2e} (macro-F1 {best.score:.4f}) in {result.seconds:.0f}s")
    return result


def subsample(n: int, cap: int, seed: int) -> list[int]:
    """At most ``cap`` of ``range(n)``, seeded, in their original order."""
    if n <= cap:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=cap, replace=False).tolist())


def trainer_scorer(*, model: Any, trainer_cls: Any, trainer_kwargs: dict[str, Any], tokenizer: Any,
                   train_set: Any, holdout_set: Any, n_classes: int, steps: int,
                   args_of: Callable[..., Any]) -> Callable[[float], float]:
    """``train_and_score(lr)``: a fresh copy of ``model`` trained ``steps`` optimizer steps at ``lr`` on
    ``train_set`` (no evaluation, no checkpoints), then its macro-F1 on ``holdout_set`` (``tasks.metrics``).
    ``args_of(lr, steps)`` gives the TrainingArguments."""
    from tasks import metrics
    from tasks.train.stage_trainer import quiet_trainer

    def train_and_score(lr: float) -> float:
        trainer = quiet_trainer(
            trainer_cls, model=copy.deepcopy(model), args=args_of(lr, steps), processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer), train_dataset=train_set, **trainer_kwargs)
        trainer.train()
        out = trainer.predict(holdout_set)
        logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
        return metrics.macro_f1(np.asarray(out.label_ids), np.asarray(logits).argmax(-1), n_classes)

    return train_and_score


# ---------------------------------------------------------------- where an "auto" rate comes from


def recorded_learning_rate(model_uri: str) -> float | None:
    """The rate a trained model folder (a champion's teacher) records, or None (older models record none)."""
    uri = storage.join(storage.normalize(model_uri), RECORD)
    if not storage.exists(uri):
        return None
    value = storage.read_json(uri).get("learning_rate")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def record(model_uri: str, learning_rate: float, source: str, search: dict[str, Any] | None) -> None:
    """Write the rate a model was trained with into its folder."""
    storage.write_json(storage.join(model_uri, RECORD),
                       {"learning_rate": learning_rate, "learning_rate_source": source, "lr_search": search})


def search_for_run(hp: Any, *, model: Any, trainer_cls: Any, trainer_kwargs: dict[str, Any], tokenizer: Any,
                   train_set: Any, holdout_set: Any, n_classes: int, batch_size: int, world_size: int = 1,
                   run_steps: int | None = None, log: Callable[[str], None] = logger.info) -> SearchResult:
    """The search a first run with ``learning_rate: auto`` makes, bounded by the spec's ``lr_search_*`` fields
    (``hp`` is ``spec.train``): candidates scaled for the effective batch, each trained ``lr_search_steps``
    steps (at most ``run_steps``, the optimizer steps of the run itself) on at most ``lr_search_rows`` train
    rows and scored on at most ``lr_search_holdout_rows`` holdout rows, both seeded by ``hp.seed``."""
    from tasks.train import arguments

    effective = batch_size * hp.gradient_accumulation_steps * world_size
    candidates = scaled_candidates(hp.lr_search_candidates, effective)
    # A candidate trains no longer than the run will: on 150 rows the run is ~15 steps, and 100 steps a candidate
    # made the search (4 candidates) take 25 times the training it chose a rate for.
    steps = hp.lr_search_steps if run_steps is None else max(1, min(hp.lr_search_steps, run_steps))
    train_sub = train_set.select(subsample(len(train_set), hp.lr_search_rows, hp.seed))
    holdout_sub = holdout_set.select(subsample(len(holdout_set), hp.lr_search_holdout_rows, hp.seed + 1))
    log(f"[lr-search] learning_rate auto, first run: {len(candidates)} candidates {candidates} (effective batch "
        f"{effective}), {steps} steps each on {len(train_sub)} train rows, scored on "
        f"{len(holdout_sub)} holdout rows; budget {hp.lr_search_max_seconds:.0f}s")
    with tempfile.TemporaryDirectory(prefix="lr-search-") as tmp:
        def args_of(lr: float, steps: int):
            return arguments.training_arguments(
                Path(tmp), epochs=1, batch_size=batch_size, learning_rate=lr, weight_decay=hp.weight_decay,
                warmup_ratio=hp.warmup_ratio, gradient_accumulation_steps=hp.gradient_accumulation_steps,
                eval_steps=steps, checkpoint_steps=steps, seed=hp.seed, max_steps=steps, eval_strategy="no",
                save_strategy="no", load_best_model_at_end=False, logging_strategy="no")

        args_of(candidates[0], steps)  # under torchrun: sets up the process group shared_clock uses
        score = trainer_scorer(model=model, trainer_cls=trainer_cls, trainer_kwargs=trainer_kwargs,
                               tokenizer=tokenizer, train_set=train_sub, holdout_set=holdout_sub,
                               n_classes=n_classes, steps=steps,
                               args_of=args_of)
        return search_learning_rate(candidates, score, max_seconds=hp.lr_search_max_seconds, log=log,
                                    clock=shared_clock)


def shared_clock() -> float:
    """Rank 0's clock on every DDP rank: the ranks train each candidate together, so they must agree on when the
    time budget runs out (a rank starting one more candidate than the others would wait forever)."""
    now = [time.monotonic()]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(now, src=0)
    return now[0]


def resolve(recipe_rate: float | None, recipe_source: str, search: Callable[[], SearchResult],
            stored_uri: str) -> tuple[float, str, dict[str, Any] | None]:
    """(rate, source, search summary) for the run: the recipe's rate when it has one; else a search result this
    run already stored at ``stored_uri`` (a retry must train with the rate its checkpoints were trained with);
    else ``search()``, stored there before training starts."""
    if recipe_rate is not None:
        return float(recipe_rate), recipe_source, None
    if storage.exists(stored_uri):
        found = SearchResult.from_summary(storage.read_json(stored_uri))
        logger.info(f"[lr-search] reusing this run's earlier search: lr {found.best:.2e}")
        return found.best, "search", found.summary()
    found = search()
    if int(os.environ.get("RANK", "0")) == 0:  # every DDP rank searched alike; one writes
        storage.write_json(stored_uri, found.summary())
    return found.best, "search", found.summary()
