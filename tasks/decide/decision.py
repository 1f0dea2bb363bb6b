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
``tasks/decide/retrain_policy.py``).
"""

from __future__ import annotations

import math
from typing import Any

from tasks.decide import retrain_policy


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


def _champion_rows(drift: dict[str, Any]) -> int | None:
    """Rows in the champion's snapshot, as drift read them; None when the drift result does not say."""
    rows = drift.get("reference_rows")
    return int(rows) if rows else None


def _drifted_checks(drift: dict[str, Any]) -> list[str]:
    return sorted(name for name, check in (drift.get("checks") or {}).items() if check.get("drifted"))


def _trained_reason(snapshot_id: str, trained: dict[str, Any]) -> str:
    run = trained.get("run_key") or "an earlier run"
    outcome = trained.get("outcome") or "trained"
    version = f", version {trained['version']}" if trained.get("version") else ""
    return (f"Skipped: already trained on snapshot {snapshot_id} (run {run}: {outcome}{version}); "
            "land new data, or trigger with force_retrain to train on it again.")


@retrain_policy.annotate  # a retrain's decision says which kind of training: full or incremental, and why
def decide(spec: Any, ingest_result: dict[str, Any] | None, drift_result: dict[str, Any] | None,
           champion: dict[str, Any] | None, force: bool = False,
           trained: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{retrain, reasons[], ...numbers}``; ``reasons`` are sentences for the run summary and alerts.

    ``trained`` is the record a finished run left for this run's snapshot (``Layout.trained``), or None."""
    min_new_rows, every_rows, every_fraction = _decide_settings(spec)
    ingest_result = ingest_result or {}
    drift_result = drift_result or {}
    snapshot_id = ingest_result.get("snapshot_id")
    champion_snapshot = (champion or {}).get("snapshot_id")
    # New rows since the champion's snapshot (drift counts them); the ingest's own new_rows is only this batch.
    new_rows = drift_result.get("new_rows")
    if new_rows is None:
        new_rows = 0 if snapshot_id and snapshot_id == champion_snapshot else ingest_result.get("new_rows", 0)
    new_rows = int(new_rows or 0)
    drifted = _drifted_checks(drift_result)
    drift_detected = bool(drift_result.get("drift_detected")) or bool(drifted)
    champion_rows = _champion_rows(drift_result) if champion is not None else None
    # The relative trigger as a row count (rounded so that 0.1 * 30 is 3, not 3.0000000000000004).
    fraction_rows = (math.ceil(round(every_fraction * champion_rows, 6))
                     if every_fraction is not None and champion_rows else None)

    out: dict[str, Any] = {
        "retrain": False, "reasons": [], "first_run": champion is None, "forced": bool(force),
        "new_rows": new_rows, "min_new_rows": min_new_rows, "retrain_every_rows": every_rows,
        "drift_detected": drift_detected, "drifted_checks": drifted,
        "snapshot_id": snapshot_id, "champion_snapshot_id": champion_snapshot,
        "champion_version": (champion or {}).get("version"),
        "retrain_every_fraction": every_fraction, "champion_snapshot_rows": champion_rows,
        "new_rows_share": round(new_rows / champion_rows, 4) if champion_rows else None,
        "retrain_fraction_rows": fraction_rows,
        "triggers": [],  # what asked for this retrain: forced, first_run, drift, retrain_every_rows/_fraction
    }
    triggers: list[str] = out["triggers"]
    reasons: list[str] = out["reasons"]

    out["already_trained"] = bool(trained and snapshot_id)
    if force:
        reasons.append(f"Retraining was forced by the operator ({new_rows:,} new rows since the champion's snapshot).")
        out["retrain"] = True
        triggers.append("forced")
        return out
    if trained and snapshot_id:
        reasons.append(_trained_reason(snapshot_id, trained))
        return out
    if champion is None:
        reasons.append("There is no champion model yet, so the first run trains one.")
        out["retrain"] = True
        triggers.append("first_run")
        return out
    quality = drift_result.get("label_quality") or {}
    out["stopped"] = bool(quality.get("flagged"))
    if out["stopped"]:
        out["withdraw_batches"] = list(quality.get("flagged_batches") or [])
        reasons.append(f"Stopped before training: {quality.get('verdict') or 'the labels of the new rows look wrong'}")
        return out
    if snapshot_id and snapshot_id == champion_snapshot:
        reasons.append(f"Skipped: no new snapshot since the champion's (snapshot {snapshot_id}).")
        return out
    if new_rows < min_new_rows:
        reasons.append(f"Skipped: only {new_rows:,} new rows since the champion's snapshot, fewer than the "
                       f"{min_new_rows:,} needed (decide.min_new_rows).")
        return out
    if drift_detected:
        summary = drift_result.get("summary") or ""
        reasons.append(f"Drift detected on {new_rows:,} new rows ({', '.join(drifted) or 'see drift report'})."
                       + (f" {summary}" if summary else ""))
        triggers.append("drift")
    if new_rows >= every_rows:
        reasons.append(f"{new_rows:,} new rows since the champion's snapshot reach decide.retrain_every_rows "
                       f"({every_rows:,}).")
        triggers.append("retrain_every_rows")
    fraction = f"{every_fraction * 100:g}%" if every_fraction is not None else ""  # the setting, as written
    if fraction_rows is not None and new_rows >= fraction_rows:
        reasons.append(f"{new_rows:,} new rows are {_percent(new_rows / champion_rows)} of the {champion_rows:,} "
                       f"rows in the champion's snapshot, at least decide.retrain_every_fraction ({fraction}).")
        triggers.append("retrain_every_fraction")
    out["retrain"] = bool(triggers)
    unknown_size = (f"decide.retrain_every_fraction ({fraction}) was not applied: the drift result does not say how "
                    "many rows the champion's snapshot holds, so only decide.retrain_every_rows counts")
    if out["retrain"]:
        if every_fraction is not None and fraction_rows is None:
            reasons.append(f"The relative trigger {unknown_size}.")
        return out
    skipped = f"Skipped: {new_rows:,} new rows and no drift detected"
    if every_fraction is None:
        reasons.append(f"{skipped}, fewer than decide.retrain_every_rows ({every_rows:,} new rows); "
                       "decide.retrain_every_fraction is off (null).")
    elif fraction_rows is None:
        reasons.append(f"{skipped}, fewer than decide.retrain_every_rows ({every_rows:,} new rows); {unknown_size}.")
    else:
        reasons.append(f"{skipped}, below both routine triggers: decide.retrain_every_rows ({every_rows:,} new rows) "
                       f"and decide.retrain_every_fraction ({fraction} of the {champion_rows:,} rows in the "
                       f"champion's snapshot, {fraction_rows:,} new rows; these are "
                       f"{_percent(new_rows / champion_rows)}).")
    return out
