"""What would change an outcome (tasks/decide/remedies.py): each case of issue 25 ends its gate's or its decision's
reason with a sentence naming the setting or the data, and carries it as a structured ``Remedy``."""

from __future__ import annotations

import numpy as np
import pytest

from data_helpers import make_spec
from tasks import metrics
from tasks.contracts import Decision, DriftResult, IngestResult
from tasks.decide import gates, remedies
from tasks.decide.decision import decide, decide_retrain
from tasks.spec import GatesSpec

LABELS = ["negative", "positive"]
CHAMPION = {"version": "v1", "snapshot_id": "aaaa"}


def _paired(n: int, gains: int, losses: int) -> tuple[np.ndarray, np.ndarray]:
    """Correct-or-not vectors of a candidate and a champion: ``gains`` rows only the candidate gets right,
    ``losses`` only the champion, 85% of the rest both."""
    cand, champ = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    cand[:gains] = True
    champ[gains:gains + losses] = True
    ties = int((n - gains - losses) * 0.85)
    cand[gains + losses:gains + losses + ties] = champ[gains + losses:gains + losses + ties] = True
    return cand, champ


def _scores(y: np.ndarray, pred: np.ndarray) -> gates.ModelScores:
    return gates.ModelScores(pred, metrics.accuracy(y, pred), metrics.macro_f1(y, pred, 2))


@pytest.mark.parametrize("action", ["bayes", "floors", "require_rows"])
def test_an_underpowered_golden_set_names_the_rows_and_the_setting(action):
    gate = gates.sized_non_inferiority_gate("non_inferiority_teacher", *_paired(40, 5, 2),
                                            GatesSpec(underpowered=action, small_set_min_rows=None))
    remedy = gate.remedy
    assert remedy.case == remedies.UNDERPOWERED and "gates.expected_difference" in remedy.settings
    more = gate.details["power"]["more_rows_needed"]
    assert more > 0 and f"add {more:,} golden rows" in remedy.action
    assert ("gates.underpowered" in remedy.settings) == (action == "require_rows")
    assert gate.reason.endswith(remedy.action)


def test_a_golden_set_that_can_tell_the_difference_needs_no_remedy():
    gate = gates.sized_non_inferiority_gate("non_inferiority_teacher", *_paired(1000, 60, 50), GatesSpec())
    assert gate.details["power"]["underpowered"] is False and gate.remedy is None


def test_a_model_below_the_majority_baseline_is_told_about_class_weights():
    y = np.array([0] * 970 + [1] * 30)
    majority = np.zeros_like(y)  # the 97/3 failure: the majority class for everything
    passed, _, out = gates.evaluate_gates(GatesSpec(), LABELS, y, teacher=_scores(y, majority),
                                          student=_scores(y, majority))
    by = {g.name: g for g in out}
    macro = by["baseline_macro_f1_teacher"]
    assert not passed and not macro.passed
    assert macro.remedy.case == remedies.BELOW_BASELINE and "train.class_weights" in macro.remedy.settings
    assert macro.reason.endswith(macro.remedy.action)
    accuracy = by["baseline_accuracy_teacher"]  # 97% one class: reported, not gated, and how to gate it anyway
    assert accuracy.skipped and accuracy.remedy.case == remedies.SKEWED_GOLDEN
    assert accuracy.remedy.settings == ["gates.skewed_golden_share"] and accuracy.reason.endswith(
        accuracy.remedy.action)
    assert by["floor_accuracy_teacher"].remedy is None  # gates outside these cases carry none


def test_a_model_that_beats_the_baseline_carries_no_remedy():
    y = np.array([0, 1] * 100)
    _, _, out = gates.evaluate_gates(GatesSpec(), LABELS, y, teacher=_scores(y, y), student=_scores(y, y))
    assert all(g.remedy is None for g in out)


def _emotion_spec(init_from: str = "champion"):
    return make_spec("file:///unused", train={"init_from": init_from},
                     decide={"min_new_rows": 10, "retrain_every_rows": 100})


def _night_two() -> tuple[IngestResult, DriftResult]:
    """Night 2: "positive" lands for the first time (as "fear" did on emotion's second night)."""
    ingest = IngestResult(snapshot_id="bbbb", new_rows=300, label_counts={"negative": 150, "positive": 150})
    drift = DriftResult(new_rows=300, reference_rows=1000, reference_label_counts={"negative": 1000},
                        current_label_counts={"negative": 150, "positive": 150})
    return ingest, drift


def test_a_new_class_is_a_fresh_start_said_in_the_decision():
    decision = decide_retrain(_emotion_spec(), *_night_two(), CHAMPION)
    assert isinstance(decision, Decision) and decision.retrain and decision.triggers == ["retrain_every_rows"]
    assert decision.new_classes == ["positive"]
    (remedy,) = decision.remedies
    assert remedy.case == remedies.NEW_CLASS and remedy.settings == ["train.init_from"]
    assert "['positive']" in remedy.action and "champion v1" in remedy.action
    assert decision.reasons[-1] == remedy.action


@pytest.mark.parametrize("case", ["init_from base", "first run", "no new class"])
def test_no_fresh_start_sentence_where_nothing_warm_starts_or_no_class_is_new(case):
    ingest, drift = _night_two()
    spec, champion = _emotion_spec(), CHAMPION
    if case == "init_from base":
        spec = _emotion_spec("base")
    elif case == "first run":
        champion = None
    else:
        drift = drift.model_copy(update={"reference_label_counts": {"negative": 5, "positive": 5}})
    decision = decide_retrain(spec, ingest, drift, champion)
    assert decision.retrain and decision.new_classes == [] and decision.remedies == []


def test_the_dict_adapter_is_the_typed_rule():
    ingest, drift = _night_two()
    typed = decide_retrain(_emotion_spec(), ingest, drift, CHAMPION)
    raw = decide(_emotion_spec(), ingest.dump(), drift.dump(), CHAMPION)
    assert Decision.model_validate(raw) == typed
    skipped = decide(_emotion_spec(), {"snapshot_id": "aaaa"}, {"new_rows": None}, CHAMPION)
    assert skipped["retrain"] is False and "training" not in skipped and skipped["remedies"] == []


def test_a_runs_remedies_are_gathered_once_each():
    ingest, drift = _night_two()
    decision = decide_retrain(_emotion_spec(), ingest, drift, CHAMPION).dump()
    y = np.array([0] * 970 + [1] * 30)
    majority = np.zeros_like(y)
    _, _, out = gates.evaluate_gates(GatesSpec(), LABELS, y, teacher=_scores(y, majority),
                                     student=_scores(y, majority))
    evaluation = {"gates": [g.dump() for g in out]}
    unseen = {"fresh_start": "fresh start from model.base: class(es) ['positive'] have rows now and had none in the "
                             "snapshot the champion v1 was trained on"}
    found = remedies.of_run(decision, evaluation, unseen)
    # the decision's new class, not again from the fine-tune; the teacher's and the student's identical baseline
    # sentences once
    assert [r.case for r in found] == [remedies.NEW_CLASS, remedies.SKEWED_GOLDEN, remedies.BELOW_BASELINE]
    collapsed = {"fresh_start": "the warm start from the champion collapsed: it predicts 'negative' for 97% of "
                                "the holdout rows, which are 50% 'negative'; retrained once from model.base in the same run "
                                "(train.epochs). To skip the warm start, set train.init_from: base"}
    (only,) = remedies.of_run(None, None, collapsed)
    assert only.case == remedies.COLLAPSED and only.settings == ["train.init_from"]
    assert only.action.startswith("The warm start") and only.action.endswith("set train.init_from: base.")
    assert remedies.of_run(None, None, None) == []
