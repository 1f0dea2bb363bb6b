"""What would change an outcome: the sentence that ends a reason on small, skewed or changing data.

Each case of docs/registry.md ("What would change it") is a :class:`tasks.contracts.Remedy`: the case, the spec
settings it names, and one sentence. The gates put it on the gate (``GateResult.remedy``, its sentence ending the
gate's reason, so the gate report, the alert and the registry page carry it as they carry any reason); the decision
puts it in ``Decision.remedies`` and ends its reasons with it; evaluate gathers the gates' and the teacher's fresh
start (``EvaluateResult.remedies``: the gate-failure alert lists those no reason of it says); publish gathers a
run's remedies into the version manifest (``remedies``), which the registry page lists.

Pure and light (imported by the DAG code through the decision): pydantic models and strings only.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from tasks.contracts import Remedy

UNDERPOWERED = "underpowered_golden"
BELOW_BASELINE = "below_baseline"
SKEWED_GOLDEN = "skewed_golden"
NEW_CLASS = "new_class"
COLLAPSED = "collapsed"


def underpowered(more_rows: int, rows_needed: int, *, require_rows: bool = False) -> Remedy:
    """A golden set too small to tell the expected difference (gates.underpowered, tasks/decide/power.py)."""
    action = (f"To compare with the interval test, add {more_rows:,} golden rows ({rows_needed:,} in all), or raise "
              "gates.expected_difference")
    settings = ["gates.expected_difference"]
    if require_rows:
        action += ", or set gates.underpowered: bayes to decide on these rows"
        settings.append("gates.underpowered")
    return Remedy(case=UNDERPOWERED, settings=settings, action=action + ".")


def too_few_for_small_set(n: int, min_rows: int, more_rows: int, rows_needed: int) -> Remedy:
    """An underpowered golden set below gates.small_set_min_rows: too few rows even for the small-set rule."""
    return Remedy(case=UNDERPOWERED, settings=["gates.small_set_min_rows", "gates.expected_difference"],
                  action=f"To decide, add {min_rows - n:,} golden rows ({min_rows:,} in all) for the small-set rule "
                         f"or {more_rows:,} ({rows_needed:,} in all) for the interval test, or lower "
                         "gates.small_set_min_rows to decide on these rows.")


# A failed floor over the majority baseline: the model does not beat answering the most frequent class.
BELOW_BASELINE_ACTION = ("To clear it: land more train rows of the classes the model misses, or on a skewed label mix "
                         "set train.class_weights: logit_adjusted (what auto picks past a "
                         "train.class_weights_auto_ratio class ratio; balanced weights the loss instead)")


def below_baseline() -> Remedy:
    return Remedy(case=BELOW_BASELINE, settings=["train.class_weights", "train.class_weights_auto_ratio"],
                  action=BELOW_BASELINE_ACTION)


def skewed_golden() -> Remedy:
    """Accuracy over the majority baseline reported, not gated, on a golden set dominated by one class."""
    return Remedy(case=SKEWED_GOLDEN, settings=["gates.skewed_golden_share"],
                  action="Set gates.skewed_golden_share: null to gate accuracy over the baseline anyway.")


def new_class(classes: Sequence[str], champion_version: str | None) -> Remedy:
    """A class with rows now and none in the champion's snapshot: the fine-tune starts from model.base."""
    return Remedy(case=NEW_CLASS, settings=["train.init_from"], action=(
        f"Class(es) {list(classes)} have rows for the first time (none in the snapshot champion "
        f"{champion_version or '?'} was trained on): the fine-tune starts from model.base with train.epochs, not a "
        "warm start from a head that never predicts them; nothing to set. Warm starts resume once the champion has "
        "seen every class; to start every retrain fresh, set train.init_from: base."))


def from_fresh_start(sentence: str) -> Remedy:
    """The fine-tune's ``fresh_start`` (tasks/train/fresh_start.py) as a remedy: a warm start that collapsed and was
    retrained from model.base, or a class the champion never saw."""
    case = COLLAPSED if "collapsed" in sentence else NEW_CLASS
    action = sentence[:1].upper() + sentence[1:]
    return Remedy(case=case, settings=["train.init_from"], action=action if action.endswith(".") else action + ".")


def ending(reason: str, remedy: Remedy) -> str:
    """A reason that ends with the remedy's sentence."""
    return f"{reason}. {remedy.action}"


def of_run(decision: dict[str, Any] | None, evaluation: dict[str, Any] | None,
           finetune: dict[str, Any] | None) -> list[Remedy]:
    """A run's remedies, once each, from its stage results (raw JSON): the decision's, the fine-tune's fresh start,
    and the gates'."""
    found: list[Remedy] = [Remedy.model_validate(r) for r in (decision or {}).get("remedies") or []]
    fresh = (finetune or {}).get("fresh_start")
    if fresh:
        fresh_start = from_fresh_start(fresh)
        if not any(r.case == fresh_start.case == NEW_CLASS for r in found):  # the decision said it already
            found.append(fresh_start)
    for gate in (evaluation or {}).get("gates") or []:
        if gate.get("remedy"):
            found.append(Remedy.model_validate(gate["remedy"]))
    return _once(found)


def _once(remedies: Iterable[Remedy]) -> list[Remedy]:
    seen, out = set(), []
    for r in remedies:
        if r.action not in seen:
            seen.add(r.action)
            out.append(r)
    return out
