"""Class weighting for skewed label mixes (tasks/train/class_balance.py) and the floors on a skewed golden set."""

from __future__ import annotations

import numpy as np
import pytest

from bench.common import make_run, read_tsv, write_snapshot
from tasks import metrics
from tasks.decide import gates
from tasks.spec import GatesSpec
from tasks.train import class_balance

LABELS = ["negative", "positive"]


def test_balanced_weights_average_one_over_the_rows_and_skip_absent_classes():
    weights = class_balance.balanced_weights([97, 3])
    assert weights == pytest.approx([100 / (2 * 97), 100 / (2 * 3)])
    assert (97 * weights[0] + 3 * weights[1]) / 100 == pytest.approx(1.0)
    assert class_balance.balanced_weights([10, 0, 30]) == pytest.approx([2.0, 0.0, 40 / 60])


def test_auto_turns_on_for_a_skewed_mix_only():
    skewed = class_balance.plan("auto", 10, [970, 30], LABELS)
    assert skewed["on"] and skewed["ratio"] == pytest.approx(32.333, abs=1e-3)
    assert "set train.class_weights: none" in skewed["reason"] and skewed["weights"]["positive"] > 16
    even = class_balance.plan("auto", 10, [444, 428], LABELS)  # SST-2 dev: as the demo's data
    assert not even["on"] and "weights" not in even and "unweighted" in even["reason"]
    assert class_balance.plan("balanced", 10, [444, 428], LABELS)["on"]
    assert not class_balance.plan("none", 10, [970, 30], LABELS)["on"]


def test_weighted_loss_is_the_weighted_cross_entropy():
    import torch

    torch.manual_seed(0)
    logits = torch.randn(6, 2)
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    loss = class_balance.weighted_loss([0.5, 2.0])
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (per_row * torch.tensor([0.5, 0.5, 0.5, 0.5, 2.0, 2.0])).sum() / 6
    assert loss({"logits": logits}, labels, num_items_in_batch=6) == pytest.approx(expected.item())
    assert loss({"logits": logits}, labels) == pytest.approx(expected.item())
    unweighted = class_balance.weighted_loss([1.0, 1.0])({"logits": logits}, labels)
    assert unweighted == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())


def _scores(y, pred):
    return gates.ModelScores(pred, metrics.accuracy(y, pred), metrics.macro_f1(y, pred, 2))


def test_a_skewed_golden_set_reports_the_accuracy_floor_and_gates_macro_f1():
    y = np.array([0] * 970 + [1] * 30)
    pred = y.copy()
    pred[:40] = 1  # learned the minority class (25 of 30), at the cost of 40 majority rows: accuracy 0.955 < 0.97
    pred[970:975] = 0
    passed, _, out = gates.evaluate_gates(GatesSpec(), LABELS, y, teacher=_scores(y, pred), student=_scores(y, pred))
    by = {g.name: g for g in out}
    accuracy = by["baseline_accuracy_teacher"]
    assert accuracy.skipped and accuracy.passed and "would FAIL" in accuracy.reason
    assert "97% 'negative', at least gates.skewed_golden_share 0.9" in accuracy.reason
    assert "gates.skewed_golden_share: null" in accuracy.reason
    assert not by["baseline_macro_f1_teacher"].skipped and by["baseline_macro_f1_teacher"].passed
    assert passed
    majority = np.zeros_like(y)  # always the majority class: the macro-F1 floor still fails it
    passed, _, out = gates.evaluate_gates(GatesSpec(), LABELS, y, teacher=_scores(y, majority),
                                          student=_scores(y, majority))
    macro = {g.name: g for g in out}["baseline_macro_f1_teacher"]
    assert not passed and not macro.passed
    assert macro.reason.endswith("on a skewed label mix set train.class_weights: balanced (auto weights from a "
                                 "train.class_weights_auto_ratio class ratio)")  # what would change the outcome
    strict = GatesSpec(skewed_golden_share=None)
    _, _, out = gates.evaluate_gates(strict, LABELS, y, teacher=_scores(y, pred), student=_scores(y, pred))
    assert not {g.name: g for g in out}["baseline_accuracy_teacher"].passed  # gated as before


def test_finetune_weights_a_skewed_mix_and_says_so(tmp_path, monkeypatch, tiny_model_dir, one_torch_thread):
    from tasks import storage
    from tasks.train import finetune

    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    root = storage.normalize(str(tmp_path / "store"))
    rows = read_tsv("train", limit=400, offset=5000)
    skewed = [r for r in rows if r[1] == 0][:90] + [r for r in rows if r[1] == 1][:6]
    snapshot = write_snapshot(root, "sst2", skewed)
    settings = {"model.base": str(tiny_model_dir), "train.epochs": 1, "train.batch_size": 16,
                "train.learning_rate": 1e-3, "train.eval_steps": 50, "train.checkpoint_steps": 50}
    run = make_run(root, "skewed", settings)
    assert finetune.main(["--run", run, "--snapshot", snapshot]) == 0
    result = storage.read_json(storage.join(run, "finetune", "result.json"))
    weights = result["class_weights"]
    assert weights["setting"] == "auto" and weights["on"] and weights["weights"]["positive"] > 5
    assert "auto turned class weights on" in weights["reason"]
    assert weights["reason"] in result["train_data"]["warnings"]  # the run summary says so
