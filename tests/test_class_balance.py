"""Class weighting for skewed label mixes (tasks/train/class_balance.py) and the floors on a skewed golden set."""

from __future__ import annotations

import numpy as np
import pytest

from bench.common import make_run, read_tsv, write_snapshot
from tasks import metrics
from tasks.decide import gates, remedies
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
    assert "set train.class_weights: none" in skewed["reason"] and skewed["offsets"]["positive"] < -3
    assert class_balance.plan("balanced", 10, [970, 30], LABELS)["weights"]["positive"] > 16
    even = class_balance.plan("auto", 10, [444, 428], LABELS)  # SST-2 dev: as the demo's data
    assert not even["on"] and "weights" not in even and even["method"] == "none"
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


def test_logit_adjusted_plan_offsets_are_tau_log_priors_and_the_loss_adds_them():
    import math

    import torch

    planned = class_balance.plan("logit_adjusted", 10, [970, 30], LABELS, tau=1.0)
    assert planned["on"] and planned["method"] == "logit_adjusted" and "weights" not in planned
    assert planned["offsets"] == pytest.approx({"negative": math.log(0.97), "positive": math.log(0.03)}, abs=1e-6)
    assert planned["counts"] == {"negative": 970, "positive": 30}
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    shifted = logits + torch.log(torch.tensor([0.97, 0.03]))
    expected = torch.nn.functional.cross_entropy(shifted, labels)
    assert class_balance.loss_for(planned)({"logits": logits}, labels, num_items_in_batch=6) == \
        pytest.approx(expected.item())
    assert class_balance.label_loss(planned)(logits, labels) == pytest.approx(expected.item())
    # A class with no train rows takes the rarest present class's prior: the loss stays finite.
    assert class_balance.log_priors([90, 0, 10]) == pytest.approx([math.log(0.9), math.log(0.1), math.log(0.1)])


def test_auto_resolves_to_the_measured_method_and_leaves_an_even_mix_plain():
    skewed = class_balance.plan("auto", 10, [970, 30], LABELS)
    assert skewed["method"] == class_balance.AUTO_METHOD and skewed["setting"] == "auto"
    assert class_balance.loss_for(skewed) is not None
    even = class_balance.plan("auto", 10, [444, 428], LABELS)  # the demo's mix: the Trainer's own loss, untouched
    assert even["method"] == "none" and class_balance.loss_for(even) is None
    assert class_balance.label_loss(even) is None
    assert set(class_balance.trainer_kwargs(skewed, distilling=True)) == {"label_loss"}
    assert set(class_balance.trainer_kwargs(skewed, distilling=False)) == {"compute_loss_func"}


def _linear_fit(x, y, loss_fn, steps=300):
    """A logistic regression trained full-batch by ``loss_fn(logits, labels)``: its plain-logit predictions."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model(x).argmax(dim=1)


def test_each_balanced_loss_finds_the_minority_class_a_plain_loss_gives_up(one_torch_thread):
    """Two overlapping classes, 97/3: the plain cross-entropy's boundary sits past most minority rows, the balanced
    losses' near the equal-prior one (what each minority recall must show on the training rows themselves)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(970, 2, generator=gen), torch.randn(30, 2, generator=gen) + 2.0])
    y = torch.tensor([0] * 970 + [1] * 30)
    minority_recall = {}
    for setting in ("none", "balanced", "logit_adjusted"):
        rows = class_balance.row_losses(class_balance.plan(setting, 10, [970, 30], LABELS))
        loss = torch.nn.functional.cross_entropy if rows is None else (lambda lg, lb, r=rows: r(lg, lb).mean())
        pred = _linear_fit(x, y, loss)
        minority_recall[setting] = (pred[y == 1] == 1).float().mean().item()
    assert minority_recall["none"] < 0.5
    assert minority_recall["balanced"] > 0.8 and minority_recall["logit_adjusted"] > 0.8


def test_distillation_ce_term_takes_the_balanced_label_loss():
    import torch

    from tasks.train.distill import distillation_loss

    torch.manual_seed(0)
    s, t, y = torch.randn(8, 2), torch.randn(8, 2), torch.tensor([0] * 6 + [1] * 2)
    planned = class_balance.plan("logit_adjusted", 10, [970, 30], LABELS)
    parts = distillation_loss(s, t, y, alpha=1.0, temperature=2.0, label_loss=class_balance.label_loss(planned))
    assert parts["loss"] == pytest.approx(class_balance.label_loss(planned)(s, y).item())
    assert parts["loss"] != pytest.approx(torch.nn.functional.cross_entropy(s, y).item())


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
    assert accuracy.skipped and accuracy.passed and accuracy.value <= accuracy.threshold  # would fail: reported
    assert accuracy.details["baseline_class"] == "negative" and accuracy.details["baseline"] == pytest.approx(0.97)
    assert accuracy.remedy.case == remedies.SKEWED_GOLDEN and accuracy.remedy.settings == ["gates.skewed_golden_share"]
    assert not by["baseline_macro_f1_teacher"].skipped and by["baseline_macro_f1_teacher"].passed
    assert passed
    majority = np.zeros_like(y)  # always the majority class: the macro-F1 floor still fails it
    passed, _, out = gates.evaluate_gates(GatesSpec(), LABELS, y, teacher=_scores(y, majority),
                                          student=_scores(y, majority))
    macro = {g.name: g for g in out}["baseline_macro_f1_teacher"]
    assert not passed and not macro.passed
    assert macro.remedy.case == remedies.BELOW_BASELINE and macro.reason.endswith(macro.remedy.action)
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
    assert weights["setting"] == "auto" and weights["on"] and weights["method"] == class_balance.AUTO_METHOD
    assert weights["offsets"]["positive"] == pytest.approx(np.log(weights["counts"]["positive"] / result["train_rows"]),
                                                           abs=1e-5)
    assert "auto turned class balancing on" in weights["reason"]
    assert weights["reason"] in result["train_data"]["warnings"]  # the run summary says so

    # The student's CE term is balanced the same way (the KL term follows the balanced teacher), and its best
    # checkpoint is chosen on macro-F1.
    from tasks.train import distill

    seen = {}
    original = distill.distillation_loss

    def spy(*args, **kwargs):
        seen["label_loss"] = kwargs.get("label_loss")
        return original(*args, **kwargs)

    monkeypatch.setattr(distill, "distillation_loss", spy)
    run = make_run(root, "skewed-student", {**settings, "student.layers": 2, "student.epochs": 1})
    assert distill.main(["--run", run, "--snapshot", snapshot, "--teacher", result["model_uri"]]) == 0
    student = storage.read_json(storage.join(run, "distill", "result.json"))
    assert student["class_weights"]["method"] == class_balance.AUTO_METHOD
    assert seen["label_loss"] is not None
