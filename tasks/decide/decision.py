"""Whether the nightly run retrains: a pure function over the ingest and drift results.

Imported by the DAG code, so it imports nothing heavy. Rule (docs/triggers.md):

* forced -> train;
* a finished run already trained on this snapshot (promoted, or blocked by its gates) -> skip, whichever trigger
  comes next (asset event, nightly cron, a manual run without force): one training per data change;
* no champion yet -> train (the first run trains);
* the champion disagrees with the batch's labels far more than with the reference's (drift's ``label_quality``:
  flipped or poisoned labels) -> stop: no training, the run fails with the reason (``stopped``), and the DAG
  withdraws ``withdraw_batches`` from the latest snapshot (tasks.data.withdraw);
* the snapshot is the champion's own, or fewer than ``decide.min_new_rows`` new rows -> skip;
* otherwise train if drift was detected, or the new rows reach ``decide.retrain_every_rows``, or they reach
  ``decide.retrain_every_fraction`` of the rows in the champion's snapshot (drift's ``reference_rows``; the
  relative trigger keeps a small pipeline from waiting forever below the absolute one); else skip, naming both
  thresholds. A drift result without ``reference_rows`` (0 or missing) leaves the absolute trigger only, and the
  reasons say so.

A retrain's decision also says which kind of training it does (``training``: full or incremental, and why;
``tasks/decide/retrain_policy.py``), and, when a class has rows for the first time, that the fine-tune starts
fresh and what setting would change that (``new_classes``, ``remedies``: tasks/decide/remedies.py).

:func:`decide_retrain` is the rule over typed values (tasks.contracts: IngestResult, DriftResult -> Decision);
:func:`decide` is the same rule over raw JSON dicts, as the stages' results are stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from tasks.contracts import Decision, DriftResult, IngestResult
from tasks.decide import remedies, retrain_policy


def _decide_settings(spec: Any) -> tuple[int, int, float | None]:
    section = spec["decide"] if isinstance(spec, dict) else spec.decide
    if isinstance(section, dict):  # a plain dict gets the spec's defaults and checks (pydantic only: light)
        from tasks.spec import DecideSpec

        section = DecideSpec.model_validate(section)
    fraction = section.retrain_every_fraction
    return int(section.min_new_rows), int(section.retrain_every_rows), None if fraction is None else float(fraction)


def _percent(share: float) -> str:
    """75% or 49.9%: rounded down to a tenth of a point, so a share just below a threshold never prints as it."""
    tenths = math.floor(share * 1000 + 1e-9)
    return f"{tenths // 10}%" if tenths % 10 == 0 else f"{tenths / 10:.1f}%"


def _trained_reason(snapshot_id: str, trained: dict[str, Any]) -> str:
    run = trained.get("run_key") or "an earlier run"
    outcome = trained.get("outcome") or "trained"
    version = f", version {trained['version']}" if trained.get("version") else ""
    return (f"Skipped: already trained on snapshot {snapshot_id} (run {run}: {outcome}{version}); "
            "land new data, or trigger with force_retrain to train on it again.")


def decide(spec: Any, ingest_result: dict[str, Any] | None, drift_result: dict[str, Any] | None,
           champion: dict[str, Any] | None, force: bool = False,
           trained: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`decide_retrain` over raw JSON: ``{retrain, reasons[], ...numbers}`` (a ``Decision`` dumped, without
    the keys left unset: ``training`` on a skip). A key whose value is None counts as absent (a stored result may
    carry nulls where the model has a default)."""
    decision = decide_retrain(spec, _typed(IngestResult, ingest_result), _typed(DriftResult, drift_result),
                              champion, force=force, trained=trained)
    unset = {key for key in ("training", "withdrawn", "cost") if getattr(decision, key) is None}
    return decision.model_dump(mode="json", exclude=unset)


def _typed(model: type, raw: dict[str, Any] | None) -> Any:
    return None if raw is None else model.read({k: v for k, v in raw.items() if v is not None})


@dataclass(frozen=True)
class _Night:
    """What the rule reads: the inputs and the settings, with the numbers worked out once."""

    drift: DriftResult
    champion: dict[str, Any] | None
    trained: dict[str, Any] | None
    force: bool
    min_new_rows: int
    every_rows: int
    every_fraction: float | None

    @property
    def fraction(self) -> str:
        """decide.retrain_every_fraction as written (10%), "" when off."""
        return f"{self.every_fraction * 100:g}%" if self.every_fraction is not None else ""


def decide_retrain(spec: Any, ingest: IngestResult | None, drift: DriftResult | None,
                   champion: dict[str, Any] | None, *, force: bool = False,
                   trained: dict[str, Any] | None = None) -> Decision:
    """Retrain or skip, with reasons (sentences for the run summary and the alerts) and the numbers behind them.

    ``champion`` is the champion pointer (None: no champion yet); ``trained`` the record a finished run left for
    this run's snapshot (``Layout.trained``), or None. Steps, in order: measure, apply the first rule that ends the
    decision (forced, already trained, first run, bad labels, no new snapshot, too few rows) or else the routine
    triggers; on a retrain, say which training and whether a new class means a fresh start."""
    ingest, drift = ingest or IngestResult(), drift or DriftResult()
    min_new_rows, every_rows, every_fraction = _decide_settings(spec)
    night = _Night(drift, champion, trained, bool(force), min_new_rows, every_rows, every_fraction)
    decision = _measure(night, ingest)
    if not any(rule(decision, night) for rule in _ENDING_RULES):
        _routine_triggers(decision, night)
    if decision.retrain:
        decision.training = retrain_policy.training_kind(
            spec, decision.model_dump(), ingest.model_dump(), drift.model_dump(), champion,
            retrain_policy.previous_candidate(spec, ingest.model_dump()))
        _new_classes(decision, spec, ingest, night)
    return decision


def _measure(night: _Night, ingest: IngestResult) -> Decision:
    """The decision before any rule: the numbers the rules read, nothing decided yet."""
    drift, champion = night.drift, night.champion
    snapshot_id = ingest.snapshot_id
    champion_snapshot = (champion or {}).get("snapshot_id")
    # New rows since the champion's snapshot (drift counts them); the ingest's own new_rows is only this batch.
    if "new_rows" in drift.model_fields_set:
        new_rows = drift.new_rows
    else:
        new_rows = 0 if snapshot_id and snapshot_id == champion_snapshot else ingest.new_rows
    new_rows = int(new_rows or 0)
    drifted = _drifted_checks(drift.checks)
    champion_rows = (int(drift.reference_rows) or None) if champion is not None else None
    every_fraction = night.every_fraction
    # The relative trigger as a row count (rounded so that 0.1 * 30 is 3, not 3.0000000000000004).
    fraction_rows = (math.ceil(round(every_fraction * champion_rows, 6))
                     if every_fraction is not None and champion_rows else None)
    return Decision(
        retrain=False, reasons=[], first_run=champion is None, forced=night.force,
        new_rows=new_rows, min_new_rows=night.min_new_rows, retrain_every_rows=night.every_rows,
        drift_detected=bool(drift.drift_detected) or bool(drifted), drifted_checks=drifted,
        snapshot_id=snapshot_id, champion_snapshot_id=champion_snapshot,
        champion_version=(champion or {}).get("version"),
        retrain_every_fraction=every_fraction, champion_snapshot_rows=champion_rows,
        new_rows_share=round(new_rows / champion_rows, 4) if champion_rows else None,
        retrain_fraction_rows=fraction_rows,
        triggers=[],  # what asked for this retrain: forced, first_run, drift, retrain_every_rows/_fraction
        already_trained=bool(night.trained and snapshot_id))


def _drifted_checks(checks: dict[str, Any]) -> list[str]:
    return sorted(name for name, check in (checks or {}).items() if check.get("drifted"))


def _retrain(decision: Decision, trigger: str, reason: str) -> bool:
    decision.reasons.append(reason)
    decision.triggers.append(trigger)
    decision.retrain = True
    return True


def _skip(decision: Decision, reason: str) -> bool:
    decision.reasons.append(reason)
    return True


def _forced(d: Decision, night: _Night) -> bool:
    return night.force and _retrain(d, "forced", f"Retraining was forced by the operator ({d.new_rows:,} new rows "
                                                 "since the champion's snapshot).")


def _already_trained(d: Decision, night: _Night) -> bool:
    return d.already_trained and _skip(d, _trained_reason(d.snapshot_id, night.trained))


def _first_run(d: Decision, night: _Night) -> bool:
    return night.champion is None and _retrain(d, "first_run", "There is no champion model yet, so the first run "
                                                               "trains one.")


def _bad_labels(d: Decision, night: _Night) -> bool:
    """The champion disagrees with the new labels far more than with the reference's: stop, withdraw them."""
    quality = night.drift.label_quality or {}
    if not quality.get("flagged"):
        return False
    d.stopped = True
    d.withdraw_batches = list(quality.get("flagged_batches") or [])
    return _skip(d, f"Stopped before training: {quality.get('verdict') or 'the labels of the new rows look wrong'}")


def _no_new_snapshot(d: Decision, night: _Night) -> bool:
    return (bool(d.snapshot_id) and d.snapshot_id == d.champion_snapshot_id
            and _skip(d, f"Skipped: no new snapshot since the champion's (snapshot {d.snapshot_id})."))


def _too_few_rows(d: Decision, night: _Night) -> bool:
    return d.new_rows < night.min_new_rows and _skip(
        d, f"Skipped: only {d.new_rows:,} new rows since the champion's snapshot, fewer than the "
           f"{night.min_new_rows:,} needed (decide.min_new_rows).")


# The rules that end the decision on their own, first match wins (the module docstring's order).
_ENDING_RULES: tuple[Callable[[Decision, _Night], bool], ...] = (
    _forced, _already_trained, _first_run, _bad_labels, _no_new_snapshot, _too_few_rows)


def _routine_triggers(d: Decision, night: _Night) -> None:
    """Drift, decide.retrain_every_rows, decide.retrain_every_fraction: any of them retrains; none, a skip that
    names both thresholds."""
    new_rows, champion_rows = d.new_rows, d.champion_snapshot_rows
    if d.drift_detected:
        summary = night.drift.summary or ""
        checks = ", ".join(d.drifted_checks) or "see drift report"
        _retrain(d, "drift", f"Drift detected on {new_rows:,} new rows ({checks})."
                 + (f" {summary}" if summary else ""))
    if new_rows >= night.every_rows:
        _retrain(d, "retrain_every_rows", f"{new_rows:,} new rows since the champion's snapshot reach "
                                          f"decide.retrain_every_rows ({night.every_rows:,}).")
    if d.retrain_fraction_rows is not None and new_rows >= d.retrain_fraction_rows:
        _retrain(d, "retrain_every_fraction", f"{new_rows:,} new rows are {_percent(new_rows / champion_rows)} of the "
                                              f"{champion_rows:,} rows in the champion's snapshot, at least "
                                              f"decide.retrain_every_fraction ({night.fraction}).")
    unknown_size = (f"decide.retrain_every_fraction ({night.fraction}) was not applied: the drift result does not "
                    "say how many rows the champion's snapshot holds, so only decide.retrain_every_rows counts")
    if d.retrain:
        if night.every_fraction is not None and d.retrain_fraction_rows is None:
            d.reasons.append(f"The relative trigger {unknown_size}.")
        return
    d.reasons.append(_skip_reason(d, night, unknown_size))


def _skip_reason(d: Decision, night: _Night, unknown_size: str) -> str:
    skipped = f"Skipped: {d.new_rows:,} new rows and no drift detected"
    every_rows = night.every_rows
    if night.every_fraction is None:
        return (f"{skipped}, fewer than decide.retrain_every_rows ({every_rows:,} new rows); "
                "decide.retrain_every_fraction is off (null).")
    if d.retrain_fraction_rows is None:
        return f"{skipped}, fewer than decide.retrain_every_rows ({every_rows:,} new rows); {unknown_size}."
    champion_rows = d.champion_snapshot_rows
    return (f"{skipped}, below both routine triggers: decide.retrain_every_rows ({every_rows:,} new rows) "
            f"and decide.retrain_every_fraction ({night.fraction} of the {champion_rows:,} rows in the "
            f"champion's snapshot, {d.retrain_fraction_rows:,} new rows; these are "
            f"{_percent(d.new_rows / champion_rows)}).")


def _new_classes(d: Decision, spec: Any, ingest: IngestResult, night: _Night) -> None:
    """A retrain on rows of a class the champion never saw: the fine-tune starts from model.base rather than warm
    (tasks/train/finetune.recipe); the reasons end with what would change that."""
    if night.champion is None or retrain_policy.train_settings(spec).init_from != "champion":
        return
    classes = retrain_policy.first_time_classes(ingest.model_dump(), night.drift.model_dump())
    if not classes:
        return
    remedy = remedies.new_class(classes, night.champion.get("version"))
    d.new_classes = classes
    d.remedies.append(remedy)
    d.reasons.append(remedy.action)
