"""The gates as pure functions over arrays."""

from __future__ import annotations

import numpy as np
import pytest

from decision_support import make_spec
from tasks.decide import gates


def _pair(n=500, cand_acc=0.85, champ_acc=0.85, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    champ = np.where(rng.random(n) < champ_acc, y, 1 - y)
    cand = np.where(rng.random(n) < cand_acc, y, 1 - y)
    return y, cand, champ


def test_paired_bootstrap_is_seeded_and_brackets_the_difference():
    y, cand, champ = _pair(cand_acc=0.8, champ_acc=0.9)
    a = gates.paired_bootstrap_diff(cand == y, champ == y, resamples=1000, seed=3)
    b = gates.paired_bootstrap_diff(cand == y, champ == y, resamples=1000, seed=3)
    assert a == b
    assert a["lower"] <= a["diff"] <= a["upper"] and a["diff"] == pytest.approx(np.mean(cand == y) - np.mean(champ == y))
    assert a["upper"] < 0  # 10 points worse on 500 examples: the whole interval is below zero
    c = gates.paired_bootstrap_diff(cand == y, champ == y, resamples=1000, seed=4)
    assert c != a


def test_non_inferiority_fails_when_worse_passes_when_equal_or_better():
    y, cand, champ = _pair(cand_acc=0.75, champ_acc=0.9)
    worse = gates.non_inferiority_gate("ni", cand == y, champ == y, margin=0.01, resamples=1000)
    assert not worse.passed and worse.value < -0.01 and worse.threshold == -0.01
    assert "CI [" in worse.reason and worse.details["resamples"] == 1000
    assert worse.details["p_value"] < 0.01  # McNemar agrees
    same = gates.non_inferiority_gate("ni", champ == y, champ == y, margin=0.01, resamples=1000)
    assert same.passed and same.details["lower"] == 0 and same.details["upper"] == 0
    better = gates.non_inferiority_gate("ni", y == y, champ == y, margin=0.0, resamples=1000)
    assert better.passed and better.value > 0


def test_class_recall_gate_catches_one_collapsed_class():
    y = np.array([0] * 50 + [1] * 50)
    champ = y.copy()
    cand = y.copy()
    cand[50:60] = 0  # positive recall 1.0 -> 0.8
    gate = gates.class_recall_gate("cr", gates.per_class_recall(y, cand, 2), gates.per_class_recall(y, champ, 2),
                                   ["negative", "positive"], max_drop=0.05)
    assert not gate.passed and gate.value == pytest.approx(0.2) and "positive" in gate.reason
    ok = gates.class_recall_gate("cr", gates.per_class_recall(y, cand, 2), gates.per_class_recall(y, champ, 2),
                                 ["negative", "positive"], max_drop=0.25)
    assert ok.passed


def test_retention_and_budgets():
    assert gates.retention_gate(0.90, 0.92, min_ratio=0.97).passed
    assert not gates.retention_gate(0.85, 0.92, min_ratio=0.97).passed
    assert gates.budget_gate("lat", 12.0, 20.0, "ms").passed
    assert not gates.budget_gate("lat", 25.0, 20.0, "ms").passed
    assert gates.budget_gate("lat", 25.0, None, "ms").skipped
    assert not gates.budget_gate("lat", None, 20.0, "ms").passed


def test_first_run_applies_floors_only_and_says_so():
    spec = make_spec("file:///unused", min_accuracy=0.8, min_macro_f1=0.8, min_retention=0.97)
    y, cand, _ = _pair(cand_acc=0.85)
    good = gates.ModelScores(cand, 0.85, 0.84)
    passed, first_run, out = gates.evaluate_gates(spec.gates, ["n", "p"], y, teacher=good, student=good)
    assert passed and first_run
    by = {g.name: g for g in out}
    assert by["non_inferiority_teacher"].skipped and "first run" in by["non_inferiority_teacher"].reason
    weak = gates.ModelScores(cand, 0.7, 0.84)
    passed, _, out = gates.evaluate_gates(spec.gates, ["n", "p"], y, teacher=good, student=weak)
    assert not passed
    assert {g.name for g in out if not g.passed} == {"floor_accuracy_student"}
    retention = {g.name: g for g in out}["student_retention"]
    assert retention.skipped and "not gated" in retention.reason and "would FAIL" in retention.reason
    md = gates.render_markdown("sst2", "s3://b/runs/x", passed, True, out, {})
    assert "first run: no champion" in md and "**FAIL**" in md


def test_spec_requires_at_least_1000_resamples():
    from tasks.spec import SpecError

    with pytest.raises(SpecError):
        make_spec("file:///unused", bootstrap_resamples=500)


def test_bootstrap_intervals_use_the_one_macro_f1_and_bracket_the_point():
    """Each replicate's macro-F1 is tasks.metrics.macro_f1 of the resampled rows (every declared class, a class
    absent from labels and predictions counting 0), so the interval is the quantiles of exactly those numbers."""
    from tasks import metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)  # class 2 is declared but absent
    pred = np.where(rng.random(120) < 0.8, y, 1 - y)
    out = gates.bootstrap_intervals(y, pred, 3, resamples=200, seed=7, chunk=200)
    idx = np.random.default_rng(7).integers(0, 120, size=(200, 120))
    f1 = [metrics.macro_f1(y[i], pred[i], 3) for i in idx]
    acc = [metrics.accuracy(y[i], pred[i]) for i in idx]
    assert [out["macro_f1"]["lower"], out["macro_f1"]["upper"]] == pytest.approx(np.quantile(f1, [0.025, 0.975]))
    assert [out["accuracy"]["lower"], out["accuracy"]["upper"]] == pytest.approx(np.quantile(acc, [0.025, 0.975]))
    point = metrics.accuracy(y, pred)
    assert out["accuracy"]["lower"] < point < out["accuracy"]["upper"]
    assert out == gates.bootstrap_intervals(y, pred, 3, resamples=200, seed=7)  # seeded
