"""Non-inferiority sized to the evidence (tasks/decide/power.py and gates.sized_non_inferiority_gate)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import metrics
from tasks.decide import gates, power, remedies
from tasks.spec import GatesSpec


def _paired(n: int, gains: int, losses: int, both_right: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    """Correct-or-not vectors of a candidate and a champion with these discordant counts."""
    cand = np.zeros(n, dtype=bool)
    champ = np.zeros(n, dtype=bool)
    cand[:gains] = True
    champ[gains:gains + losses] = True
    ties = int((n - gains - losses) * both_right)
    cand[gains + losses:gains + losses + ties] = True
    champ[gains + losses:gains + losses + ties] = True
    return cand, champ


def test_detectable_difference_and_rows_needed_agree():
    # 40 rows, 10% discordance, 95% two-sided, power 0.8: 2.80 * sqrt(0.1 / 40) - 0.01
    assert power.detectable_difference(40, 0.1, confidence=0.95, margin=0.01) == pytest.approx(0.130, abs=0.001)
    needed = power.rows_needed(0.05, 0.1, confidence=0.95, margin=0.01)
    assert power.detectable_difference(needed, 0.1, confidence=0.95, margin=0.01) <= 0.05
    assert power.detectable_difference(needed - 1, 0.1, confidence=0.95, margin=0.01) > 0.05
    assert needed == 219  # 0.1 * (2.8016 / 0.06) ** 2 = 218.03, rounded up
    # discordance is smoothed and never below the expected gain: no disagreement on 40 rows is not proof of none
    assert power.discordance(0, 0, 40, 0.05) == 0.05


def test_assess_flags_forty_rows_not_a_thousand():
    small = power.assess(*_paired(40, 4, 0), confidence=0.95, margin=0.01, expected_difference=0.05)
    assert small["underpowered"] and small["gains"] == 4 and small["losses"] == 0
    assert small["more_rows_needed"] == small["rows_needed"] - 40 > 0
    large = power.assess(*_paired(1000, 100, 20), confidence=0.95, margin=0.01, expected_difference=0.05)
    assert not large["underpowered"] and large["detectable_difference"] < 0.05


def test_posterior_is_seeded_and_orders_the_evidence():
    assert power.posterior_not_worse(3, 0, 40, margin=0.01) == power.posterior_not_worse(3, 0, 40, margin=0.01)
    assert (power.posterior_not_worse(4, 0, 40, margin=0.01) > power.posterior_not_worse(2, 1, 40, margin=0.01)
            > power.posterior_not_worse(0, 2, 40, margin=0.01))


def test_a_thousand_rows_keep_the_interval_test_unchanged():
    g = GatesSpec()
    cand, champ = _paired(1000, 60, 50)
    sized = gates.sized_non_inferiority_gate("ni", cand, champ, g)
    plain = gates.non_inferiority_gate("ni", cand, champ, margin=g.non_inferiority_margin,
                                       resamples=g.bootstrap_resamples, confidence=g.confidence, seed=g.seed)
    assert (sized.passed, sized.value, sized.reason) == (plain.passed, plain.value, plain.reason)
    assert sized.details["power"]["underpowered"] is False


def test_forty_rows_the_small_set_rule_promotes_a_clear_gain_and_blocks_a_loss():
    g = GatesSpec(small_set_min_rows=None)  # the rule itself, at any size
    better = gates.sized_non_inferiority_gate("ni", *_paired(40, 5, 2), g)
    old = gates.non_inferiority_gate("ni", *_paired(40, 5, 2), margin=0.01, resamples=1000)
    assert not old.passed  # 7.5 points better on 40 rows: the interval test cannot pass it (the case)
    assert better.passed and not better.skipped and better.threshold == g.small_set_probability
    assert better.details["underpowered"] == "bayes" and "posterior_not_worse" in better.details  # the small-set rule
    assert better.remedy.case == remedies.UNDERPOWERED and better.reason.endswith(better.remedy.action)
    worse = gates.sized_non_inferiority_gate("ni", *_paired(40, 0, 2), g)
    assert not worse.passed and worse.value < g.small_set_probability


def test_underpowered_actions_floors_and_require_rows_say_how_many_rows():
    cand, champ = _paired(40, 5, 2)
    floors = gates.sized_non_inferiority_gate("ni", cand, champ, GatesSpec(underpowered="floors"))
    needed = floors.details["power"]["more_rows_needed"]
    assert floors.passed and floors.skipped and floors.details["underpowered"] == "floors"
    assert floors.remedy.case == remedies.UNDERPOWERED and floors.reason.endswith(floors.remedy.action)
    assert floors.details["power"]["rows_needed"] == 40 + needed
    blocked = gates.sized_non_inferiority_gate("ni", cand, champ, GatesSpec(underpowered="require_rows"))
    assert not blocked.passed and blocked.remedy.case == remedies.UNDERPOWERED
    assert blocked.remedy.settings == ["gates.expected_difference", "gates.underpowered"]  # or decide by bayes
    off = gates.sized_non_inferiority_gate("ni", cand, champ, GatesSpec(expected_difference=None))
    assert not off.passed and "power" not in off.details  # the interval test whatever the size


def test_evaluate_gates_on_a_forty_row_golden_set_uses_the_rule():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    champ = y.copy()
    champ[:6] = 1 - y[:6]  # the champion wrong on 6 rows, the candidate on 2 of those only
    cand = y.copy()
    cand[:2] = 1 - y[:2]
    cand[10] = 1 - y[10]  # and wrong on one row the champion gets right: 4 gains, 1 loss

    def scores(pred):
        return gates.ModelScores(pred, metrics.accuracy(y, pred), metrics.macro_f1(y, pred, 2))

    passed, first_run, out = gates.evaluate_gates(GatesSpec(small_set_min_rows=None), ["n", "p"], y, teacher=scores(cand),
                                                  student=scores(cand), champion_teacher=scores(champ),
                                                  champion_student=scores(champ))
    by = {g.name: g for g in out}
    assert passed and not first_run, [g.reason for g in out if not g.passed]
    assert by["non_inferiority_teacher"].details["underpowered"] == "bayes"  # the small-set rule
    assert by["non_inferiority_teacher"].details["power"]["n"] == 40


def test_a_candidate_shown_worse_fails_the_interval_test_whatever_the_size():
    cand, champ = _paired(40, 0, 12)  # 30 points worse: the whole interval below -margin
    gate = gates.sized_non_inferiority_gate("ni", cand, champ, GatesSpec())
    assert not gate.passed and gate.threshold == -0.01 and gate.details["upper"] < -0.01
    assert gate.details["power"]["underpowered"] and "posterior_not_worse" not in gate.details


def test_below_small_set_min_rows_the_gate_fails_and_says_how_many_rows():
    assert GatesSpec().small_set_min_rows is None  # the default: the small-set rule at any size
    g = GatesSpec(small_set_min_rows=100)  # the opt-in (docs/registry.md)
    cand, champ = _paired(40, 5, 2)  # the clear gain the small-set rule passes on 40 rows at any size
    assert gates.sized_non_inferiority_gate("ni", cand, champ, GatesSpec()).passed
    blocked = gates.sized_non_inferiority_gate("ni", cand, champ, g)
    more = blocked.details["power"]["more_rows_needed"]
    assert not blocked.passed and not blocked.skipped and (blocked.value, blocked.threshold) == (40, 100)
    assert blocked.details["small_set_min_rows"] == 100 and blocked.remedy.case == remedies.UNDERPOWERED
    # the remedy's sentence is the product: the alert and the registry page show it
    assert f"add 60 golden rows (100 in all) for the small-set rule or {more:,} (" in blocked.reason
    assert blocked.remedy.settings == ["gates.small_set_min_rows", "gates.expected_difference"]
    assert blocked.reason.endswith(blocked.remedy.action)
    # at the minimum the rule decides again (120 rows, still underpowered), and a 1,000-row set never gets here
    decided = gates.sized_non_inferiority_gate("ni", *_paired(120, 15, 3), g)
    assert decided.passed and decided.details["underpowered"] == "bayes"  # the small-set rule
    assert decided.details["power"]["underpowered"]
    powered = gates.sized_non_inferiority_gate("ni", *_paired(1000, 60, 50), g)
    assert "small_set_min_rows" not in powered.details and not powered.details["power"]["underpowered"]
    # floors and require_rows act as before whatever the size
    assert gates.sized_non_inferiority_gate("ni", cand, champ, GatesSpec(small_set_min_rows=100,
                                                                          underpowered="floors")).skipped


def _holdout(n: int, gains: int, losses: int) -> gates.HoldoutEvidence:
    return gates.HoldoutEvidence(*_paired(n, gains, losses))


def test_an_underpowered_golden_set_adds_the_holdout_rows_neither_model_trained_on():
    g = GatesSpec()
    assert g.underpowered_evidence == "golden_and_holdout"  # the default
    cand, champ = _paired(40, 1, 1)  # a tie on 40 rows: the small-set rule alone cannot pass it
    assert not gates.sized_non_inferiority_gate("ni", cand, champ, g).passed
    better = gates.sized_non_inferiority_gate("ni", cand, champ, g, _holdout(600, 60, 12))
    assert better.passed and better.threshold == -g.non_inferiority_margin  # the interval test, on 640 rows
    assert better.details["n"] == 640 and better.details["holdout_rows"] == 600
    assert better.details["golden_power"]["underpowered"] and not better.details["power"]["underpowered"]
    assert "so the comparison adds 600 holdout rows neither model trained on" in better.reason
    # A holdout that shows the candidate worse blocks it, though the golden rows alone would have passed it.
    clear_gain = _paired(40, 5, 2)
    assert gates.sized_non_inferiority_gate("ni", *clear_gain, g).passed
    worse = gates.sized_non_inferiority_gate("ni", *clear_gain, g, _holdout(600, 12, 60))
    assert not worse.passed and worse.details["upper"] < 0 and worse.details["holdout_rows"] == 600
    assert worse.remedy.case == remedies.UNDERPOWERED and worse.reason.endswith(worse.remedy.action)
    assert better.remedy is None
    # Golden rows that show the candidate worse decide alone: the holdout cannot outvote them.
    shown_worse = gates.sized_non_inferiority_gate("ni", *_paired(40, 0, 12), g, _holdout(2000, 200, 20))
    assert not shown_worse.passed and "holdout_rows" not in shown_worse.details
    # Off, or a golden set that can decide: the holdout is not used.
    off = gates.sized_non_inferiority_gate("ni", *clear_gain, GatesSpec(underpowered_evidence="golden"),
                                           _holdout(600, 12, 60))
    assert off.passed and "holdout_rows" not in off.details
    large = _paired(1000, 60, 50)
    assert gates.sized_non_inferiority_gate("ni", *large, g, _holdout(600, 0, 60)).reason == \
        gates.sized_non_inferiority_gate("ni", *large, g).reason


def test_too_few_holdout_rows_leave_the_small_set_rule_to_decide_on_every_row():
    g = GatesSpec()
    gate = gates.sized_non_inferiority_gate("ni", *_paired(40, 1, 1), g, _holdout(30, 4, 0))
    assert gate.details["underpowered"] == "bayes" and gate.details["power"]["n"] == 70  # 40 golden + 30 holdout
    assert (gate.details["power"]["gains"], gate.details["power"]["losses"]) == (5, 1)
    assert "and 70 rows can detect" in gate.reason and gate.reason.endswith(gate.remedy.action)
    assert gate.passed == (gate.value >= g.small_set_probability)
    # gates.small_set_min_rows counts the rows compared, the holdout's included
    assert not gates.sized_non_inferiority_gate("ni", *_paired(40, 1, 1), GatesSpec(small_set_min_rows=100),
                                                _holdout(30, 4, 0)).passed
    assert gates.sized_non_inferiority_gate("ni", *_paired(40, 1, 1), GatesSpec(small_set_min_rows=60),
                                            _holdout(30, 4, 0)).details["underpowered"] == "bayes"


def test_evaluate_gates_hands_each_role_its_holdout_rows():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    pred = y.copy()

    def scores(p):
        return gates.ModelScores(p, metrics.accuracy(y, p), metrics.macro_f1(y, p, 2))

    holdout = {"teacher": _holdout(600, 60, 12), "student": _holdout(600, 12, 60)}
    passed, _, out = gates.evaluate_gates(GatesSpec(), ["n", "p"], y, teacher=scores(pred), student=scores(pred),
                                          champion_teacher=scores(pred), champion_student=scores(pred),
                                          holdout=holdout)
    by = {g.name: g for g in out}
    assert by["non_inferiority_teacher"].passed and by["non_inferiority_teacher"].details["holdout_rows"] == 600
    assert not by["non_inferiority_student"].passed and not passed


def _labels(n: int, positives: int) -> np.ndarray:
    y = np.zeros(n, dtype=int)
    y[:positives] = 1
    return y


def _wrong(y: np.ndarray, rows: int) -> np.ndarray:
    """``y`` with the first ``rows`` of each class flipped, about half from each class."""
    pred = y.copy()
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)[: (rows + 1 - cls) // 2]
        pred[idx] = 1 - cls
    return pred


def test_a_floor_forty_golden_rows_leave_open_is_judged_with_the_holdout_rows():
    g = GatesSpec()
    y = _labels(40, 13)  # 67.5% one class: an 80% model cannot show it beats always answering it
    pred = _wrong(y, 8)
    scores = gates.ModelScores(pred, metrics.accuracy(y, pred), metrics.macro_f1(y, pred, 2))
    alone = {gate.name: gate for gate in gates.baseline_gates(g, "teacher", ["n", "p"], y, scores)}
    assert not alone["baseline_accuracy_teacher"].passed  # the demo on a 40-row golden set: no first champion
    hy = _labels(400, 180)
    good = gates.HoldoutRows(hy, _wrong(hy, 48))  # 88% on 400 rows it never trained on
    out = {gate.name: gate for gate in gates.baseline_gates(g, "teacher", ["n", "p"], y, scores, good)}
    acc = out["baseline_accuracy_teacher"]
    assert acc.passed and acc.details["n"] == 440 and acc.details["holdout_rows"] == 400
    assert acc.details["golden"]["n"] == 40 and acc.details["golden"]["lower"] <= 0
    assert acc.reason.startswith("40 golden rows cannot show it (") and "400 holdout rows it never trained on" in acc.reason
    # a model no better than the majority on the holdout stays blocked, and the remedy still closes the reason
    flat = gates.HoldoutRows(hy, np.zeros_like(hy))
    blocked = {gate.name: gate for gate in gates.baseline_gates(g, "teacher", ["n", "p"], y, scores, flat)}
    assert not blocked["baseline_accuracy_teacher"].passed
    assert blocked["baseline_accuracy_teacher"].reason.endswith(remedies.below_baseline().action)
    # a floor the golden rows decide never looks at the holdout; nor does one with the setting off
    assert "holdout_rows" not in out["baseline_macro_f1_teacher"].details and out["baseline_macro_f1_teacher"].passed
    off = gates.baseline_gates(GatesSpec(underpowered_evidence="golden"), "teacher", ["n", "p"], y, scores, good)
    assert not off[0].passed and "holdout_rows" not in off[0].details
