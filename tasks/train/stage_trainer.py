"""The stages' Trainer, set up one way for both: length-grouped batches, losses as per-batch means, holdout accuracy
and macro-F1, early stopping not before ``train.min_epochs``, and log lines from ``progress.ProgressLogger``
only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from transformers import DataCollatorWithPadding, EarlyStoppingCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from tasks.train.length_buckets import LengthBucketSampler
from tasks.train.train_data import token_counts


def metrics_for(n_classes: int):
    """The Trainer's ``compute_metrics``: accuracy and macro-F1 over the spec's ``n_classes`` classes, the same
    definitions evaluation and the gates use (``tasks.metrics``)."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        from tasks import metrics

        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        preds = np.asarray(logits).argmax(-1)
        return metrics.classification_metrics(np.asarray(eval_pred.label_ids), preds, n_classes)

    return compute_metrics


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


class EarlyStoppingAfterMinEpochs(EarlyStoppingCallback):
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


def quiet_trainer(trainer_cls, **kwargs):
    """A ``stage_trainer_class(trainer_cls)`` whose log lines come from ProgressLogger only (the default printer
    dumps raw dicts)."""
    trainer = stage_trainer_class(trainer_cls)(**kwargs)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def make_trainer(trainer_cls, *, args, tokenizer, n_classes: int, patience: int, callbacks: Sequence[Any] = (),
                 min_epochs: float = 0.0, **kwargs):
    """The stages' Trainer, set up one way for both: dynamic padding, holdout accuracy and macro-F1, early
    stopping (not before ``min_epochs``), length-grouped batches, quiet logs; ``callbacks`` (progress, checkpoint
    sync) come first."""
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
