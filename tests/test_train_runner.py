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
