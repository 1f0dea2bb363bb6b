"""The one runner of both training stages, ``python -m tasks finetune`` and ``python -m tasks distill``.

    spec + snapshot -> the stage's Recipe (starting weights, loss) -> tokenized splits (cached) -> Trainer
      -> restore checkpoints from storage -> train -> evaluate the best model on the holdout split
      -> model, exports, metrics.json, curve.png to storage -> the TrainResult

Fine-tuning and distillation differ only in their ``Recipe``: where the weights start (the packaged base
model or the champion's teacher; every k-th teacher layer or the champion's student) and the loss (the model's
cross-entropy; ``DistillTrainer``'s KD loss plus hidden-state MSE). Everything else, from TrainingArguments to
checkpoints, resume, DDP and outputs, is this file and ``training.py``/``checkpoints.py``.

Under ``torchrun --standalone --nproc_per_node=N -m -- tasks finetune ...`` (the ``--`` keeps torchrun from
reading the stage's ``--run``) the Trainer runs DDP: every rank trains on its own slice of each step's batch;
rank 0 alone syncs checkpoints and writes the outputs and the result. docs/training.md has the details.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tasks import results, storage
from tasks.contracts import TrainResult
from tasks.errors import SpecInvalid
from tasks.spec import PipelineSpec, load_spec


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
    gpu_batch_size: int | str | None = None  # CUDA: "auto", a batch, or None = batch_size (training.plan_batches)
    trainer_cls: type | None = None  # None: transformers.Trainer, i.e. the model's own cross-entropy
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. DistillTrainer's teacher and alpha
    exports: Sequence[str] = ()  # CPU-serving exports of the trained model (tasks.train.export)
    result: dict[str, Any] = field(default_factory=dict)  # stage-specific TrainResult fields
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
    result: dict[str, Any] = field(default_factory=dict)


def run(stage: str, args: Any, recipe_of: Callable[[PipelineSpec, Any], Recipe]) -> int:
    """Run a training stage; ``args`` has ``run`` and ``snapshot``, ``recipe_of(spec, args)`` the rest."""
    from tasks.train import fresh_start

    try:
        with contextlib.ExitStack() as held:  # what the stage holds until it returns: a token cache hit's local copy
            return run_holding(stage, args, recipe_of, held)
    except fresh_start.Collapsed as collapsed:  # a warm start that collapsed: once more, from the base model
        print(f"[{stage}] {collapsed.reason}: training again from the base model", flush=True)
        with contextlib.ExitStack() as held:
            return run_holding(stage, args, recipe_of, held, fresh=fresh_start.retry_reason(collapsed.reason))


def run_holding(stage: str, args: Any, recipe_of: Callable[[PipelineSpec, Any], Recipe],
                held: contextlib.ExitStack, fresh: str | None = None) -> int:
    """``run``'s body; what must outlive the training (the tokenized splits' files) goes on ``held``. ``fresh``:
    why this is the fresh retry of a warm start that collapsed (it starts from the base model, with its own
    checkpoints)."""
    import dataclasses

    from transformers import Trainer, set_seed

    from tasks.train import checkpoints, defaults, export, fresh_start, modeling, replay, token_cache, training

    training.setup_logging()
    spec = load_spec(storage.join(storage.normalize(args.run), "spec.json"))
    paths = training.stage_paths(spec, args.run, stage)
    if fresh:
        spec.train.init_from, spec.student.init_from = "base", "teacher"
        paths = dataclasses.replace(paths, checkpoint_uri=f"{paths.checkpoint_uri}-fresh",
                                    scratch=paths.scratch.with_name(f"{paths.scratch.name}-fresh"))
    hp = spec.train

    # The weights and loss, and the data they train on: the snapshot's splits tokenized once per snapshot,
    # tokenizer and length, and cached in storage (the next stage and every retry read them; token_cache.py).
    snapshot = token_cache.snapshot_identity(args.snapshot)  # a missing snapshot fails here, before any model
    set_seed(hp.seed)  # a fresh classification head is initialized in recipe_of
    recipe = recipe_of(spec, args)
    tokenizer = modeling.load_tokenizer(recipe.tokenizer_dir)
    splits = held.enter_context(token_cache.tokenized_splits(
        spec.layout.token_cache, args.snapshot, tokenizer, spec.model.max_length, hp.max_train_rows, stage=stage,
        snapshot=snapshot))
    train_set, holdout_set = splits.train, splits.holdout
    # train.retrain_mode: incremental: the new rows plus a replay sample of older ones, when the decision says so.
    train_set, training_kind = replay.training_rows(spec, paths.run_uri, snapshot, getattr(args, "champion", None),
                                                    train_set, init_from=recipe.init_from, stage=stage)
    # The rows evaluations during training score (train.selection): the holdout split, a stratified sample of it
    # (train.selection_rows), or holdout rows drawn like the golden set.
    selection_set, selection = model_selection_rows(hp, holdout_set, args.snapshot, tokenizer, spec.model.max_length,
                                                    stage, manifest=snapshot.manifest)

    train_data = training.train_data_report(train_set, spec.data.labels, spec.model.max_length)
    for warning in training.train_data_warnings(train_data):
        print(f"[{stage}] WARNING: {warning}", flush=True)
    # train.class_weights: a class-balanced cross-entropy for a skewed label mix (the fine-tune's loss, and the
    # distillation's CE term).
    class_weights = None
    if stage in ("finetune", "distill"):
        from tasks.train import class_balance

        class_weights = class_balance.plan(hp.class_weights, hp.class_weights_auto_ratio,
                                           class_balance.label_counts(train_set, len(spec.data.labels)),
                                           spec.data.labels, tau=hp.logit_adjustment_tau)
        print(f"[{stage}] {class_weights['reason']}", flush=True)
        if class_weights["on"]:
            recipe.trainer_kwargs.update(class_balance.trainer_kwargs(class_weights, distilling=stage == "distill"))

    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # processes under torchrun
    # learning_rate: auto with no recorded rate (a first run): a short, bounded search picks it (defaults.py), at
    # the spec's batch; on a CUDA GPU plan_batches then scales it with the GPU batch, like a rate from the spec.
    epochs = recipe.epochs if recipe.epochs is not None else defaults.epochs_for(len(train_set))
    learning_rate, lr_source, lr_search = defaults.resolve(
        recipe.learning_rate, recipe.learning_rate_source, stored_uri=storage.join(paths.out_uri, "lr_search.json"),
        search=lambda: defaults.search_for_run(
            hp, model=recipe.model, trainer_cls=recipe.trainer_cls or Trainer, trainer_kwargs=recipe.trainer_kwargs,
            tokenizer=tokenizer, train_set=train_set, holdout_set=holdout_set, n_classes=len(spec.data.labels),
            batch_size=recipe.batch_size, world_size=world_size,
            run_steps=defaults.run_steps(len(train_set), recipe.batch_size * hp.gradient_accumulation_steps
                                         * world_size, epochs),
            log=lambda line: print(line, flush=True)))

    min_epochs = min(hp.min_epochs, epochs)  # early stopping waits this long (a warm start's 1 epoch clips it)

    # The Trainer, set up one way for both stages. On a CUDA GPU: checkpoints by time, uploaded in the background.
    import torch

    minutes = training.checkpoint_minutes(hp.checkpoint_minutes)
    plan = training.plan_batches(
        batch_size=recipe.batch_size, learning_rate=learning_rate, eval_steps=hp.eval_steps,
        checkpoint_steps=hp.checkpoint_steps, gpu_batch_size=recipe.gpu_batch_size, lr_scaling=hp.gpu_lr_scaling,
        max_length=spec.model.max_length, train_rows=len(train_set), total_memory_bytes=training.cuda_memory_bytes())
    prepared = (recipe.prepare(train_set, epochs=epochs, batch_size=plan.batch_size, world_size=world_size,
                               tokenizer=tokenizer, snapshot=snapshot) if recipe.prepare else Prepared(train_set))
    targs = training.training_arguments(
        paths.scratch, epochs=epochs, batch_size=plan.batch_size, learning_rate=plan.learning_rate,
        weight_decay=hp.weight_decay, warmup_ratio=hp.warmup_ratio,
        gradient_accumulation_steps=hp.gradient_accumulation_steps, eval_steps=plan.eval_steps,
        checkpoint_steps=plan.checkpoint_steps, seed=hp.seed, checkpoint_minutes=minutes,
        **({"torch_compile": True} if hp.torch_compile else {}),
        # Weighted for a skewed mix: the best checkpoint by macro-F1, not by an accuracy the majority class wins.
        **({"metric_for_best_model": "macro_f1"} if class_weights and class_weights["on"] else {}),
    )
    if plan.batch_size != recipe.batch_size:
        print(f"[{stage}] GPU batch {plan.batch_size} (spec {recipe.batch_size}), lr {plan.learning_rate:.2e} "
              f"({hp.gpu_lr_scaling} scaling), eval every {plan.eval_steps} steps", flush=True)
    progress = training.ProgressLogger(stage, plan.batch_size * hp.gradient_accumulation_steps * targs.world_size)
    sync = checkpoints.CheckpointSync(paths, background=torch.cuda.is_available())
    timed = [checkpoints.TimedCheckpoints(minutes, ddp_check_every=targs.logging_steps)] if minutes else []
    trainer = training.make_trainer(
        recipe.trainer_cls or Trainer, args=targs, tokenizer=tokenizer, n_classes=len(spec.data.labels),
        patience=hp.early_stopping_patience, min_epochs=min_epochs,
        callbacks=[progress, *timed, sync],  # timed before sync: it sees the save
        model=recipe.model, train_dataset=prepared.train_set, eval_dataset=selection_set,
        **{**recipe.trainer_kwargs, **prepared.trainer_kwargs},
    )
    print(f"[{stage}] {len(train_set)} train rows, {len(holdout_set)} holdout rows; init from {recipe.init_from}"
          f"{'; ' + recipe.note if recipe.note else ''}; lr {learning_rate:.2e} ({lr_source}), {epochs:g} epochs"
          f"{f' (early stopping from epoch {min_epochs:g})' if min_epochs else ''}; "
          f"device {targs.device}, bf16={targs.bf16}, optim={targs.optim}, world_size={targs.world_size}", flush=True)

    # Train, resuming from the newest complete checkpoint in storage on a retry; then score the best model
    # (load_best_model_at_end) on the holdout split.
    resume = checkpoints.prepare_resume(targs, paths)
    trainer.train(resume_from_checkpoint=resume)
    stopped_at_epoch = round(float(trainer.state.epoch or 0.0), 3)
    print(f"[{stage}] training ended at epoch {stopped_at_epoch:g} of {epochs:g} (step {trainer.state.global_step}"
          f"/{trainer.state.max_steps}); best checkpoint {trainer.state.best_model_checkpoint}", flush=True)
    sync.wait()  # the last checkpoint's upload (on_train_end waits too; this re-raises an upload error)
    if stage == "finetune" and recipe.init_from.startswith("champion"):
        # A warm start: the holdout predictions too, to catch a collapse (one class for nearly every row).
        predicted = trainer.predict(holdout_set, metric_key_prefix="eval")
        holdout = predicted.metrics
        trainer.log(dict(holdout))
        fresh_start.raise_if_collapsed(
            predicted.predictions, holdout_set, spec.data.labels,
            champion_predictions=lambda: training.make_trainer(
                Trainer, args=targs, tokenizer=tokenizer, n_classes=len(spec.data.labels), patience=1,
                model=modeling.load_classifier(recipe.tokenizer_dir),  # the champion's teacher, as it was
                eval_dataset=holdout_set).predict(holdout_set).predictions)
    else:
        holdout = trainer.evaluate() if selection_set is holdout_set else trainer.evaluate(holdout_set)
    outcome = training.outcome_of(trainer, holdout, checkpoints.step_of(resume) if resume else 0, progress,
                                  sync.seconds, sync.upload_seconds, holdout_rows=len(holdout_set))
    if not trainer.is_world_process_zero():
        return 0
    samples = samples_processed(trainer, prepared, targs.world_size)

    # Outputs (rank 0): model and exports, metrics.json, curve.png; the result last.
    with tempfile.TemporaryDirectory(prefix=f"{stage}-export-") as tmp:
        folders = export.export_all(trainer.model, tokenizer, Path(tmp), recipe.exports, spec.model.max_length)
        exports = training.publish_outputs(trainer.model, tokenizer, paths, outcome, extra_dirs=folders)
    defaults.record(paths.model_uri, learning_rate, lr_source, lr_search)  # a retrain from this model reuses it
    # Why the stage did not warm-start (a new class, a collapse), and class weights auto turned on: warnings of the
    # run summary too.
    auto_weights = class_weights["reason"] if class_weights and class_weights["on"] and \
        class_weights["setting"] == "auto" else None
    notes = [note for note in (fresh or recipe.result.get("fresh_start"), auto_weights) if note]
    result = TrainResult(
        model_uri=paths.model_uri, metrics=outcome.metrics, metrics_uri=paths.metrics_uri, curve_uri=paths.curve_uri,
        train_rows=len(train_set), global_step=outcome.global_step, samples_per_second=outcome.samples_per_second,
        resumed_from_step=outcome.resumed_from_step, train_seconds=outcome.train_seconds,
        eval_seconds=outcome.eval_seconds, checkpoint_seconds=outcome.checkpoint_seconds,
        checkpoint_upload_seconds=outcome.checkpoint_upload_seconds, overhead_share=outcome.overhead_share,
        world_size=targs.world_size, batch_size=plan.batch_size, learning_rate=plan.learning_rate,
        learning_rate_source=lr_source, lr_search=lr_search, epochs=epochs,
        base_model=spec.model.base, init_from=recipe.init_from,
        parameters=sum(p.numel() for p in trainer.model.parameters()), exports=exports,
        token_cache="hit" if splits.hit else "miss", stopped_at_epoch=stopped_at_epoch, selection=selection,
        train_data={**train_data, "warnings": training.train_data_warnings(train_data) + notes},
        training=training_kind, samples=samples, samples_processed=samples["train"] + samples.get("teacher", 0),
        **{**recipe.result, **({"fresh_start": fresh} if fresh else {})}, **prepared.result,
        **({"class_weights": class_weights} if class_weights else {}),
    )
    results.emit(result, paths.out_uri)
    return 0


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


# ---------------------------------------------------------------- the rows model selection scores


def model_selection_rows(hp, holdout_set, snapshot_uri: str, tokenizer, max_length: int, stage: str,
                         manifest: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """(the rows the evaluations during training score, a summary for the result).

    ``train.selection: like_golden``: holdout rows sampled to the golden set's token-length x label mix
    (``training.like_golden_sample``; the golden set named by the snapshot's manifest, read for its lengths and
    labels only: no golden row is ever scored during training, so the golden metrics of evaluate and the gates stay
    an unbiased estimate). A snapshot without a golden set falls back to ``holdout``, and says so; so does a
    sample that falls short of the golden mix and has under half the split's rows. ``holdout``:
    the whole split, or a label-stratified sample of ``train.selection_rows``. ``manifest``: the snapshot's,
    when already read."""
    from tasks.data import snapshots
    from tasks.train import training

    if hp.selection == "like_golden":
        golden_uri = (manifest if manifest is not None else snapshots.read_manifest(snapshot_uri)).get("golden_uri")
        if not golden_uri:
            print(f"[{stage}] train.selection like_golden: snapshot {snapshot_uri} records no golden_uri; model "
                  "selection on the holdout split instead", flush=True)
        else:
            try:
                golden = snapshots.read_golden(golden_uri)
            except storage.NotFound as exc:
                raise SpecInvalid(f"train.selection like_golden: no golden set at {golden_uri} ({exc})") from None
            if golden.empty:
                raise SpecInvalid(f"train.selection like_golden: the golden set at {golden_uri} has no rows")
            lengths = [len(ids) for ids in tokenizer(list(golden["text"]), truncation=True,
                                                     max_length=max_length)["input_ids"]]
            sample = training.like_golden_sample(
                [len(ids) for ids in holdout_set["input_ids"]], holdout_set["labels"], lengths,
                golden["label"].astype(int).tolist(), seed=hp.seed, max_rows=hp.selection_rows)
            if sample.shortfalls:
                gaps = "; ".join(f"label {g['label']} with {g['tokens']} tokens: {g['holdout_rows']} of {g['wanted']}"
                                 for g in sample.shortfalls)
                if len(sample.indices) < len(holdout_set) / 2:
                    # Short of the golden mix and under half the split: a sample that is not quite like the golden
                    # set, scored with more noise than the whole split (make demo: 200 of 472 rows picked a
                    # student checkpoint 2 points worse on the golden set). The whole split it is.
                    print(f"[{stage}] model selection on all {len(holdout_set)} holdout rows: a sample like the "
                          f"golden set would be short ({gaps}) and only {len(sample.indices)} rows", flush=True)
                    return holdout_set, {"mode": "holdout", "rows": len(holdout_set), "golden_uri": golden_uri,
                                         "like_golden_fallback": sample.summary()}
                print(f"[{stage}] model selection: the holdout split has fewer rows than the golden mix asks for "
                      f"({gaps}); the rest taken from the nearest lengths of the same label", flush=True)
            print(f"[{stage}] model selection on {len(sample.indices)} of {len(holdout_set)} holdout rows drawn like "
                  f"the golden set ({len(golden)} rows; {len(sample.edges) + 1} token-length bins x labels, "
                  f"distance {sample.histogram_distance:.3f})", flush=True)
            return holdout_set.select(sample.indices), {**sample.summary(), "golden_uri": golden_uri}
    if hp.selection_rows is not None and hp.selection_rows < len(holdout_set):
        picked = training.stratified_sample(holdout_set["labels"], hp.selection_rows, hp.seed)
        print(f"[{stage}] model selection on a stratified {len(picked)} of {len(holdout_set)} holdout rows",
              flush=True)
        return holdout_set.select(picked), {"mode": "holdout", "rows": len(picked)}
    return holdout_set, {"mode": "holdout", "rows": len(holdout_set)}
