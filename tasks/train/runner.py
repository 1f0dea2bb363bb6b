"""The one runner of both training stages, ``python -m tasks finetune`` and ``python -m tasks distill``, as its
steps (``run_holding``):

    load      the spec, the stage's Recipe (starting weights, loss), the snapshot's splits tokenized (cached)
    select    the rows the evaluations during training score (train.selection; selection.py)
    search    the learning rate: the spec's, the champion's recorded one, or a bounded search (defaults.py)
    train     the Trainer (stage_trainer.py), resumed from the newest complete checkpoint in storage on a retry
    evaluate  the best model on the holdout split (a warm start: checked for a collapse, fresh_start.py)
    write     model, exports, metrics.json, curve.png to storage (outputs.py), then the TrainResult

Fine-tuning and distillation differ only in their ``Recipe``: where the weights start (the packaged base
model or the champion's teacher; every k-th teacher layer or the champion's student) and the loss (the model's
cross-entropy; ``DistillTrainer``'s KD loss plus hidden-state MSE). Everything else, from TrainingArguments to
checkpoints, resume, DDP and outputs, is this file and the modules its steps call.

Under ``torchrun --standalone --nproc_per_node=N -m -- tasks finetune ...`` (the ``--`` keeps torchrun from
reading the stage's ``--run``) the Trainer runs DDP: every rank trains on its own slice of each step's batch;
rank 0 alone syncs checkpoints and writes the outputs and the result. docs/training.md has the details.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
from transformers import set_seed, Trainer

from tasks import results, storage
from tasks.contracts import TrainResult
from tasks.spec import PipelineSpec, load_spec
from tasks.train import (arguments, batch_plan, checkpoints, class_balance, decision_offsets, defaults, export,
                         fresh_start, modeling, outputs, replay, token_cache)
from tasks.train.batch_plan import BatchPlan
from tasks.train.paths import StagePaths, stage_paths
from tasks.train.progress import ProgressLogger, setup_logging
from tasks.train.selection import model_selection_rows
from tasks.train.stage_trainer import make_trainer
from tasks.train.train_data import train_data_report, train_data_warnings

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """What a stage hands the runner: the model training starts from, how it is trained, what it adds to the
    result."""

    model: Any  # the weights training starts from
    tokenizer_dir: Path
    init_from: str  # where those weights came from, for the log and the result
    epochs: float | None  # None: epochs auto, the runner derives them from the train rows (defaults.epochs_for)
    batch_size: int
    learning_rate: float | None  # None: learning_rate auto with no recorded rate, the runner searches one
    gpu_batch_size: int | str | None = None  # CUDA: "auto", a batch, or None = batch_size (batch_plan.plan_batches)
    trainer_cls: type | None = None  # None: transformers.Trainer, i.e. the model's own cross-entropy
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. DistillTrainer's teacher and alpha
    exports: Sequence[str] = ()  # CPU-serving exports of the trained model (tasks.train.export)
    result: dict[str, Any] = field(default_factory=dict)  # stage-specific TrainResult fields, each declared there
    note: str = ""  # one line for the log
    learning_rate_source: str = "spec"  # "spec", "champion <version>" (its recorded rate); "search" is the runner's
    # Called with the tokenized train split once the batch is planned (distill: the teacher cache), as
    # prepare(train_set, epochs=, batch_size=, world_size=, tokenizer=, snapshot=) -> Prepared (snapshot: the
    # token_cache.SnapshotIdentity the runner read).
    prepare: Callable[..., "Prepared"] | None = None


@dataclass
class Prepared:
    """What a Recipe's ``prepare`` gives back: the train split to train on, and additions to the Trainer's
    keyword arguments and to the result."""

    train_set: Any
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)  # TrainResult fields (declared there: teacher_cache, ...)


def run(stage: str, args: Any, recipe_of: Callable[[PipelineSpec, Any], Recipe]) -> int:
    """Run a training stage; ``args`` has ``run`` and ``snapshot``, ``recipe_of(spec, args)`` the rest."""
    try:
        with contextlib.ExitStack() as held:  # what the stage holds until it returns: a token cache hit's local copy
            return run_holding(stage, args, recipe_of, held)
    except fresh_start.Collapsed as collapsed:  # a warm start that collapsed: once more, from the base model
        log.info(f"[{stage}] {collapsed.reason}: training again from the base model")
        with contextlib.ExitStack() as held:
            return run_holding(stage, args, recipe_of, held, fresh=fresh_start.retry_reason(collapsed.reason))


def run_holding(stage: str, args: Any, recipe_of: Callable[[PipelineSpec, Any], Recipe],
                held: contextlib.ExitStack, fresh: str | None = None) -> int:
    """``run``'s body, as its steps; what must outlive the training (the tokenized splits' files) goes on
    ``held``. ``fresh``: why this is the fresh retry of a warm start that collapsed (it starts from the base
    model, with its own checkpoints)."""
    setup_logging()
    loaded = load(stage, args, recipe_of, held, fresh)
    selection_set, selection = select(loaded)
    train_data = report_train_data(loaded)
    class_weights = weigh_classes(loaded)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # processes under torchrun
    epochs = loaded.recipe.epochs if loaded.recipe.epochs is not None else defaults.epochs_for(len(loaded.train_set))
    rate = search(loaded, epochs=epochs, world_size=world_size)
    trained = train(loaded, selection_set, rate, epochs=epochs, class_weights=class_weights, world_size=world_size)
    decided = decision_offsets.apply(trained.trainer, loaded.holdout_set, loaded.hp.decision_offsets, class_weights,
                                     loaded.spec.data.labels)  # a balanced model's decision, set on the holdout
    if decided:
        class_weights["decision_offsets"] = decided
        trained.model_changed = bool(decided["folded"])  # not the model its logged evaluations scored
    outcome = evaluate(loaded, trained, selection_set)
    if not trained.trainer.is_world_process_zero():
        return 0
    write(loaded, trained, outcome, rate, selection=selection, train_data=train_data, class_weights=class_weights)
    return 0


# ---------------------------------------------------------------- load: the spec, the weights, the rows


@dataclass
class Loaded:
    """What ``load`` read: the stage's spec and paths, its Recipe, and the rows it trains and scores on."""

    stage: str
    spec: PipelineSpec
    paths: StagePaths
    snapshot_uri: str  # as the stage was given it (--snapshot)
    snapshot: token_cache.SnapshotIdentity
    recipe: Recipe
    tokenizer: Any
    splits: token_cache.TokenizedSplits  # the snapshot's whole train and holdout splits, tokenized
    train_set: Any  # the rows training runs on: the train split, or an incremental retrain's new + replayed rows
    training_kind: dict[str, Any]  # replay.training_rows' report: full or incremental
    fresh: str | None  # why this is the fresh retry of a collapsed warm start, or None

    @property
    def hp(self):
        return self.spec.train

    @property
    def holdout_set(self):
        return self.splits.holdout

    @property
    def n_classes(self) -> int:
        return len(self.spec.data.labels)


def load(stage: str, args: Any, recipe_of: Callable[[PipelineSpec, Any], Recipe], held: contextlib.ExitStack,
         fresh: str | None) -> Loaded:
    """The spec, the weights and loss (``recipe_of``), and the data they train on: the snapshot's splits
    tokenized once per snapshot, tokenizer and length, and cached in storage (the next stage and every retry read
    them; token_cache.py)."""
    spec = load_spec(storage.join(storage.normalize(args.run), "spec.json"))
    paths = stage_paths(spec, args.run, stage)
    if fresh:
        spec.train.init_from, spec.student.init_from = "base", "teacher"
        paths = dataclasses.replace(paths, checkpoint_uri=f"{paths.checkpoint_uri}-fresh",
                                    scratch=paths.scratch.with_name(f"{paths.scratch.name}-fresh"))
    hp = spec.train
    snapshot = token_cache.snapshot_identity(args.snapshot)  # a missing snapshot fails here, before any model
    set_seed(hp.seed)  # a fresh classification head is initialized in recipe_of
    recipe = recipe_of(spec, args)
    tokenizer = modeling.load_tokenizer(recipe.tokenizer_dir)
    splits = held.enter_context(token_cache.tokenized_splits(
        spec.layout.token_cache, args.snapshot, tokenizer, spec.model.max_length, hp.max_train_rows, stage=stage,
        snapshot=snapshot))
    # train.retrain_mode: incremental: the new rows plus a replay sample of older ones, when the decision says so.
    train_set, training_kind = replay.training_rows(spec, paths.run_uri, snapshot, getattr(args, "champion", None),
                                                    splits.train, init_from=recipe.init_from, stage=stage)
    return Loaded(stage, spec, paths, args.snapshot, snapshot, recipe, tokenizer, splits, train_set, training_kind,
                  fresh)


def select(loaded: Loaded) -> tuple[Any, dict[str, Any]]:
    """The rows evaluations during training score (train.selection): the holdout split, a stratified sample of
    it (train.selection_rows), or holdout rows drawn like the golden set; and a summary for the result."""
    return model_selection_rows(loaded.hp, loaded.holdout_set, loaded.snapshot_uri, loaded.tokenizer,
                                loaded.spec.model.max_length, loaded.stage, manifest=loaded.snapshot.manifest)


def report_train_data(loaded: Loaded) -> dict[str, Any]:
    """``train_data_report`` of the rows to train on; its warnings logged."""
    report = train_data_report(loaded.train_set, loaded.spec.data.labels, loaded.spec.model.max_length)
    for warning in train_data_warnings(report):
        log.warning(f"[{loaded.stage}] {warning}")
    return report


def weigh_classes(loaded: Loaded) -> dict[str, Any] | None:
    """train.class_weights: a class-balanced cross-entropy for a skewed label mix (the fine-tune's loss, and the
    distillation's CE term): ``class_balance.plan``'s decision, its loss set on the recipe when on."""
    stage, hp, recipe = loaded.stage, loaded.hp, loaded.recipe
    class_weights = None
    if stage in ("finetune", "distill"):
        class_weights = class_balance.plan(hp.class_weights, hp.class_weights_auto_ratio,
                                           class_balance.label_counts(loaded.train_set, loaded.n_classes),
                                           loaded.spec.data.labels, tau=hp.logit_adjustment_tau)
        log.info(f"[{stage}] {class_weights['reason']}")
        if class_weights["on"]:
            recipe.trainer_kwargs.update(class_balance.trainer_kwargs(class_weights, distilling=stage == "distill"))
    return class_weights


# ---------------------------------------------------------------- search: the learning rate


class LearningRate(NamedTuple):
    value: float
    source: str  # "spec", "champion <version>" or "search"
    search: dict[str, Any] | None  # the search's summary, when one ran (or this run stored one)


def search(loaded: Loaded, *, epochs: float, world_size: int) -> LearningRate:
    """The rate to train with (``defaults.resolve``): the recipe's; with ``learning_rate: auto`` and no recorded
    rate (a first run), a short, bounded search (``search_run``) at the spec's batch. On a CUDA GPU
    ``batch_plan.plan_batches`` then scales it with the GPU batch, like a rate from the spec."""
    recipe = loaded.recipe
    return LearningRate(*defaults.resolve(
        recipe.learning_rate, recipe.learning_rate_source,
        stored_uri=storage.join(loaded.paths.out_uri, "lr_search.json"),
        search=functools.partial(search_run, loaded, epochs=epochs, world_size=world_size)))


def search_run(loaded: Loaded, *, epochs: float, world_size: int) -> defaults.SearchResult:
    """The learning-rate search's training runs (``defaults.search_for_run``): copies of the recipe's model
    trained with its loss on subsamples of the rows, no longer than the run itself will train."""
    hp, recipe = loaded.hp, loaded.recipe
    return defaults.search_for_run(
        hp, model=recipe.model, trainer_cls=recipe.trainer_cls or Trainer, trainer_kwargs=recipe.trainer_kwargs,
        tokenizer=loaded.tokenizer, train_set=loaded.train_set, holdout_set=loaded.holdout_set,
        n_classes=loaded.n_classes, batch_size=recipe.batch_size, world_size=world_size,
        run_steps=defaults.run_steps(len(loaded.train_set), recipe.batch_size * hp.gradient_accumulation_steps
                                     * world_size, epochs),
        log=log.info)


# ---------------------------------------------------------------- train


@dataclass
class Trained:
    """The Trainer after ``train``, and what was set up around it."""

    trainer: Any
    args: Any  # its TrainingArguments
    plan: BatchPlan
    prepared: Prepared
    progress: ProgressLogger
    sync: Any  # checkpoints.CheckpointSync
    epochs: float
    resume: str | None = None  # the checkpoint training resumed from
    stopped_at_epoch: float = 0.0
    model_changed: bool = False  # changed after training (decision offsets folded in)


def train(loaded: Loaded, selection_set: Any, rate: LearningRate, *, epochs: float,
          class_weights: dict[str, Any] | None, world_size: int) -> Trained:
    """Train, resuming from the newest complete checkpoint in storage on a retry; the best model
    (load_best_model_at_end) is the Trainer's model after."""
    trained = set_up_trainer(loaded, selection_set, rate, epochs=epochs, class_weights=class_weights,
                             world_size=world_size)
    trainer = trained.trainer
    trained.resume = checkpoints.prepare_resume(trained.args, loaded.paths)
    trainer.train(resume_from_checkpoint=trained.resume)
    trained.stopped_at_epoch = round(float(trainer.state.epoch or 0.0), 3)
    log.info(f"[{loaded.stage}] training ended at epoch {trained.stopped_at_epoch:g} of {epochs:g} (step "
             f"{trainer.state.global_step}/{trainer.state.max_steps}); best checkpoint "
             f"{trainer.state.best_model_checkpoint}")
    trained.sync.wait()  # the last checkpoint's upload (on_train_end waits too; this re-raises an upload error)
    return trained


def set_up_trainer(loaded: Loaded, selection_set: Any, rate: LearningRate, *, epochs: float,
                   class_weights: dict[str, Any] | None, world_size: int) -> Trained:
    """The Trainer, set up one way for both stages: the batch plan, the recipe's ``prepare``, TrainingArguments,
    progress lines, checkpoint sync (on a CUDA GPU: checkpoints by time, uploaded in the background) and early
    stopping."""
    stage, hp, recipe = loaded.stage, loaded.hp, loaded.recipe
    min_epochs = min(hp.min_epochs, epochs)  # early stopping waits this long (a warm start's 1 epoch clips it)
    minutes = arguments.checkpoint_minutes(hp.checkpoint_minutes)
    plan = batch_plan.plan_batches(
        batch_size=recipe.batch_size, learning_rate=rate.value, eval_steps=hp.eval_steps,
        checkpoint_steps=hp.checkpoint_steps, gpu_batch_size=recipe.gpu_batch_size, lr_scaling=hp.gpu_lr_scaling,
        max_length=loaded.spec.model.max_length, train_rows=len(loaded.train_set),
        total_memory_bytes=batch_plan.cuda_memory_bytes())
    prepared = (recipe.prepare(loaded.train_set, epochs=epochs, batch_size=plan.batch_size, world_size=world_size,
                               tokenizer=loaded.tokenizer, snapshot=loaded.snapshot)
                if recipe.prepare else Prepared(loaded.train_set))
    targs = arguments.training_arguments(
        loaded.paths.scratch, epochs=epochs, batch_size=plan.batch_size, learning_rate=plan.learning_rate,
        weight_decay=hp.weight_decay, warmup_ratio=hp.warmup_ratio,
        gradient_accumulation_steps=hp.gradient_accumulation_steps, eval_steps=plan.eval_steps,
        checkpoint_steps=plan.checkpoint_steps, seed=hp.seed, checkpoint_minutes=minutes,
        **({"torch_compile": True} if hp.torch_compile else {}),
        # Weighted for a skewed mix: the best checkpoint by macro-F1, not by an accuracy the majority class wins.
        **({"metric_for_best_model": "macro_f1"} if class_weights and class_weights["on"] else {}),
    )
    if plan.batch_size != recipe.batch_size:
        log.info(f"[{stage}] GPU batch {plan.batch_size} (spec {recipe.batch_size}), lr {plan.learning_rate:.2e} "
                 f"({hp.gpu_lr_scaling} scaling), eval every {plan.eval_steps} steps")
    progress = ProgressLogger(stage, plan.batch_size * hp.gradient_accumulation_steps * targs.world_size)
    sync = checkpoints.CheckpointSync(loaded.paths, background=torch.cuda.is_available())
    timed = [checkpoints.TimedCheckpoints(minutes, ddp_check_every=targs.logging_steps)] if minutes else []
    trainer = make_trainer(
        recipe.trainer_cls or Trainer, args=targs, tokenizer=loaded.tokenizer, n_classes=loaded.n_classes,
        patience=hp.early_stopping_patience, min_epochs=min_epochs,
        callbacks=[progress, *timed, sync],  # timed before sync: it sees the save
        model=recipe.model, train_dataset=prepared.train_set, eval_dataset=selection_set,
        **{**recipe.trainer_kwargs, **prepared.trainer_kwargs},
    )
    log.info(f"[{stage}] {len(loaded.train_set)} train rows, {len(loaded.holdout_set)} holdout rows; init from "
             f"{recipe.init_from}{'; ' + recipe.note if recipe.note else ''}; lr {rate.value:.2e} ({rate.source}), "
             f"{epochs:g} epochs{f' (early stopping from epoch {min_epochs:g})' if min_epochs else ''}; "
             f"device {targs.device}, bf16={targs.bf16}, optim={targs.optim}, world_size={targs.world_size}")
    return Trained(trainer, targs, plan, prepared, progress, sync, epochs)


# ---------------------------------------------------------------- evaluate


def evaluate(loaded: Loaded, trained: Trained, selection_set: Any) -> outputs.TrainOutcome:
    """The best model's metrics on the holdout split (``holdout_metrics``), with the run's figures."""
    holdout = holdout_metrics(loaded, trained, selection_set)
    return outputs.outcome_of(trained.trainer, holdout, checkpoints.step_of(trained.resume) if trained.resume else 0,
                              trained.progress, trained.sync.seconds, trained.sync.upload_seconds,
                              holdout_rows=len(loaded.holdout_set))


def holdout_metrics(loaded: Loaded, trained: Trained, selection_set: Any) -> dict[str, float]:
    """The best model's metrics on the holdout split. A warm start scores the holdout predictions too, to catch
    a collapse (one class for nearly every row; ``fresh_start.raise_if_collapsed`` raises for a retry from the
    base model)."""
    trainer, holdout_set = trained.trainer, loaded.holdout_set
    if not (loaded.stage == "finetune" and loaded.recipe.init_from.startswith("champion")):
        if selection_set is holdout_set and not trained.model_changed \
                and (logged := best_evaluation(trainer, loaded.stage)) is not None:
            return logged
        return trainer.evaluate() if selection_set is holdout_set else trainer.evaluate(holdout_set)
    predicted = trainer.predict(holdout_set, metric_key_prefix="eval")
    holdout = predicted.metrics
    trainer.log(dict(holdout))

    def champion_predictions():  # the champion's teacher, as it was, on the same rows
        return make_trainer(
            Trainer, args=trained.args, tokenizer=loaded.tokenizer, n_classes=loaded.n_classes, patience=1,
            model=modeling.load_classifier(loaded.recipe.tokenizer_dir),
            eval_dataset=holdout_set).predict(holdout_set).predictions

    fresh_start.raise_if_collapsed(predicted.predictions, holdout_set, loaded.spec.data.labels,
                                   champion_predictions=champion_predictions)
    return holdout


def best_evaluation(trainer, stage: str) -> dict[str, float] | None:
    """The holdout evaluation the Trainer logged at the best checkpoint's step, where model selection ran on the
    whole holdout split: the model loaded at the end (load_best_model_at_end) is that checkpoint's, so evaluating
    it again would repeat the same pass (5-9 s per stage on CPU at 1,000 holdout rows). None where no such entry
    is in the log."""
    best = trainer.state.best_model_checkpoint
    if not best:
        return None
    step = checkpoints.step_of(best)
    logged = next((e for e in reversed(trainer.state.log_history)
                   if e.get("step") == step and "eval_accuracy" in e), None)
    if logged is not None:
        log.info(f"[{stage}] best model (step {step}): loss {logged.get('eval_loss', float('nan')):.4f} accuracy "
                 f"{logged['eval_accuracy']:.4f}, as evaluated at that step")
    return logged


# ---------------------------------------------------------------- write: model, exports, metrics, result (rank 0)


def write(loaded: Loaded, trained: Trained, outcome: outputs.TrainOutcome, rate: LearningRate, *,
          selection: dict[str, Any], train_data: dict[str, Any], class_weights: dict[str, Any] | None) -> None:
    """Rank 0's outputs: model and exports, metrics.json, curve.png, the rate the model was trained with; the
    result last."""
    spec, paths, recipe, trainer = loaded.spec, loaded.paths, loaded.recipe, trained.trainer
    samples = samples_processed(trainer, trained.prepared, trained.args.world_size)
    with tempfile.TemporaryDirectory(prefix=f"{loaded.stage}-export-") as tmp:
        folders = export.export_all(trainer.model, loaded.tokenizer, Path(tmp), recipe.exports,
                                    spec.model.max_length)
        exports = outputs.publish_outputs(trainer.model, loaded.tokenizer, paths, outcome, extra_dirs=folders)
    defaults.record(paths.model_uri, rate.value, rate.source, rate.search)  # a retrain from this model reuses it
    # Why the stage did not warm-start (a new class, a collapse), and class weights auto turned on: warnings of the
    # run summary too.
    auto_weights = class_weights["reason"] if class_weights and class_weights["on"] and \
        class_weights["setting"] == "auto" else None
    fresh = loaded.fresh
    notes = [note for note in (fresh or recipe.result.get("fresh_start"), auto_weights) if note]
    result = TrainResult(
        model_uri=paths.model_uri, metrics=outcome.metrics, metrics_uri=paths.metrics_uri, curve_uri=paths.curve_uri,
        train_rows=len(loaded.train_set), global_step=outcome.global_step,
        samples_per_second=outcome.samples_per_second,
        resumed_from_step=outcome.resumed_from_step, train_seconds=outcome.train_seconds,
        eval_seconds=outcome.eval_seconds, checkpoint_seconds=outcome.checkpoint_seconds,
        checkpoint_upload_seconds=outcome.checkpoint_upload_seconds, overhead_share=outcome.overhead_share,
        world_size=trained.args.world_size, batch_size=trained.plan.batch_size,
        learning_rate=trained.plan.learning_rate,
        learning_rate_source=rate.source, lr_search=rate.search, epochs=trained.epochs,
        base_model=spec.model.base, init_from=recipe.init_from,
        parameters=sum(p.numel() for p in trainer.model.parameters()), exports=exports,
        token_cache="hit" if loaded.splits.hit else "miss", stopped_at_epoch=trained.stopped_at_epoch,
        selection=selection,
        train_data={**train_data, "warnings": train_data_warnings(train_data) + notes},
        training=loaded.training_kind, samples=samples,
        samples_processed=samples["train"] + samples.get("teacher", 0),
        **{**recipe.result, **({"fresh_start": fresh} if fresh else {})}, **trained.prepared.result,
        **({"class_weights": class_weights} if class_weights else {}),
    )
    results.emit(result, paths.out_uri)


def samples_processed(trainer, prepared: Prepared, world_size: int) -> dict[str, int]:
    """The stage's samples by kind, all processes together (each counted its own share; DDP shares are equal):
    ``train`` forward and backward, ``inference`` evaluations (a distillation's teacher passes in them included),
    ``teacher`` distillation teacher passes (the cache's one pass, or the live teacher's on every training
    batch). Added to the stage's cost (tasks.cost) too."""
    from tasks import cost

    out = {"train": trainer.samples_trained * world_size,
           "inference": (trainer.samples_inferred + getattr(trainer, "teacher_eval_samples", 0)) * world_size}
    teacher = int(prepared.result.get("teacher_pass_rows") or 0) + getattr(trainer, "teacher_samples", 0) * world_size
    if teacher or hasattr(trainer, "teacher"):
        out["teacher"] = teacher
    for kind, rows in out.items():
        cost.count_samples(kind, rows)
    return out
