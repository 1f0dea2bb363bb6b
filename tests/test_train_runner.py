"""The training runner's contract beyond a full run: its holdout metrics are tasks.metrics' (macro-F1 over every
declared class), and bad inputs fail with the right error kind before any training."""

from __future__ import annotations

import numpy as np
import pytest

from bench.common import make_run, read_tsv, write_snapshot
from tasks import metrics, storage
from tasks.errors import SpecInvalid


def test_holdout_metrics_average_over_every_declared_class():
    from transformers import EvalPrediction

    from tasks.train import training

    labels = np.array([0, 0, 1, 1, 1])
    logits = np.array([[2.0, 0, 0], [0, 1.0, 0], [0, 3.0, 0], [0, 1.0, 0], [1.0, 0, 0]])  # class 2 never occurs
    got = training.metrics_for(3)(EvalPrediction(predictions=logits, label_ids=labels))
    want = metrics.classification_metrics(labels, logits.argmax(-1), 3)
    assert got == want
    # F1 0.5 and 2/3 for the classes present, 0 for the declared class that never occurs (averaging over the
    # classes present only, as the Trainer's old metric did, gave 0.58).
    assert got["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)


@pytest.fixture
def run_and_snapshot(tmp_path, tiny_model_dir):
    root = storage.normalize(str(tmp_path / "store"))
    run = make_run(root, "bad-inputs", {"model.base": str(tiny_model_dir)})
    return run, write_snapshot(root, "sst2", read_tsv("train", limit=40))


def test_a_missing_snapshot_is_an_invalid_argument(run_and_snapshot, monkeypatch, tmp_path):
    from tasks.train import finetune

    run, snapshot = run_and_snapshot
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    with pytest.raises(SpecInvalid, match="--snapshot"):
        finetune.main(["--run", run, "--snapshot", snapshot + "-gone", "--champion", "none"])


def test_a_missing_teacher_is_an_invalid_argument(run_and_snapshot, monkeypatch, tmp_path):
    from tasks.train import distill

    run, snapshot = run_and_snapshot
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    with pytest.raises(SpecInvalid, match="--teacher"):
        distill.main(["--run", run, "--snapshot", snapshot, "--teacher", str(tmp_path / "no-teacher")])
    assert not storage.exists(storage.join(run, "distill", "result.json"))


def test_gradient_accumulation_trains_as_one_bigger_batch(tiny_model_dir, tmp_path, one_torch_thread):
    """Two accumulated batches of 4 make the optimizer step one batch of 8 makes: the same rows (the sampler
    buckets whole steps) and the mean of the two losses (a per-batch mean loss is divided by the steps)."""
    import torch
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, set_seed

    from tasks.train import modeling, training

    tokenizer = modeling.load_tokenizer(tiny_model_dir)
    rows = read_tsv("train", limit=32, offset=4000)
    data = training.tokenize(tokenizer, [t for t, _ in rows], [y for _, y in rows], 64)

    def train(batch_size: int, accumulation: int):
        args = training.training_arguments(
            tmp_path / f"out-{accumulation}", epochs=1, batch_size=batch_size, learning_rate=1e-3, weight_decay=0.0,
            warmup_ratio=0.0, gradient_accumulation_steps=accumulation, eval_steps=1000, checkpoint_steps=1000,
            seed=5, save_strategy="no", eval_strategy="no", load_best_model_at_end=False)
        set_seed(5)
        model = AutoModelForSequenceClassification.from_pretrained(  # no dropout: its masks would differ
            str(tiny_model_dir), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        trainer = training.quiet_trainer(Trainer, model=model, args=args, train_dataset=data,
                                         processing_class=tokenizer,
                                         data_collator=DataCollatorWithPadding(tokenizer))
        trainer.train()
        assert trainer.state.global_step == 4
        return trainer.model.state_dict()

    whole, accumulated = train(8, 1), train(4, 2)
    before = modeling.load_classifier(tiny_model_dir).state_dict()
    assert not torch.allclose(whole["classifier.weight"], before["classifier.weight"])
    differ = [k for k in whole if not torch.allclose(whole[k], accumulated[k], rtol=1e-3, atol=1e-5)]
    assert not differ, differ[:5]
