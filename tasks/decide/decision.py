"""Whether the nightly run retrains: a pure function over the ingest and drift results.

Imported by the DAG code, so it imports nothing heavy. Rule (README: Decision rule):

* forced -> train;
* a finished run already trained on this snapshot (promoted, or blocked by its gates) -> skip, whichever trigger
  comes next (asset event, nightly cron, a manual run without force): one training per data change;
* no champion yet -> train (the first run trains);
* the champion disagrees with the batch's labels far more than with the reference's (drift's ``label_quality``:
  flipped or poisoned labels) -> stop: no training, the run fails with the reason (``stopped``), and the DAG
  withdraws ``withdraw_batches`` from the latest snapshot (tasks.data.withdraw);
* the snapshot is the champion's own, or fewer than ``decide.min_new_rows`` new rows -> skip;
* otherwise train if drift was detected or the new rows reach ``decide.retrain_every_rows``; else skip.
"""

from __future__ import annotations

from typing import Any


def _decide_settings(spec: Any) -> tuple[int, int]:
    section = spec["decide"] if isinstance(spec, dict) else spec.decide
    get = section.get if isinstance(section, dict) else lambda key: getattr(section, key)
    return int(get("min_new_rows")), int(get("retrain_every_rows"))


def _drifted_checks(drift: dict[str, Any]) -> list[str]:
    return sorted(name for name, check in (drift.get("checks") or {}).items() if check.get("drifted"))


def _trained_reason(snapshot_id: str, trained: dict[str, Any]) -> str:
    run = trained.get("run_key") or "an earlier run"
    outcome = trained.get("outcome") or "trained"
    version = f", version {trained['version']}" if trained.get("version") else ""
    return (f"Skipped: already trained on snapshot {snapshot_id} (run {run}: {outcome}{version}); "
            "land new data, or trigger with force_retrain to train on it again.")


def decide(spec: Any, ingest_result: dict[str, Any] | None, drift_result: dict[str, Any] | None,
           champion: dict[str, Any] | None, force: bool = False,
           trained: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{retrain, reasons[], ...numbers}``; ``reasons`` are sentences for the run summary and alerts.

    ``trained`` is the record a finished run left for this run's snapshot (``Layout.trained``), or None."""
    min_new_rows, every_rows = _decide_settings(spec)
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

    out: dict[str, Any] = {
        "retrain": False, "reasons": [], "first_run": champion is None, "forced": bool(force),
        "new_rows": new_rows, "min_new_rows": min_new_rows, "retrain_every_rows": every_rows,
        "drift_detected": drift_detected, "drifted_checks": drifted,
        "snapshot_id": snapshot_id, "champion_snapshot_id": champion_snapshot,
        "champion_version": (champion or {}).get("version"),
    }
    reasons: list[str] = out["reasons"]

    out["already_trained"] = bool(trained and snapshot_id)
    if force:
        reasons.append(f"Retraining was forced by the operator ({new_rows} new rows since the champion's snapshot).")
        out["retrain"] = True
        return out
    if trained and snapshot_id:
        reasons.append(_trained_reason(snapshot_id, trained))
        return out
    if champion is None:
        reasons.append("There is no champion model yet, so the first run trains one.")
        out["retrain"] = True
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
        reasons.append(f"Skipped: only {new_rows} new rows since the champion's snapshot, fewer than the "
                       f"{min_new_rows} needed (decide.min_new_rows).")
        return out
    if drift_detected:
        summary = drift_result.get("summary") or ""
        reasons.append(f"Drift detected on {new_rows} new rows ({', '.join(drifted) or 'see drift report'})."
                       + (f" {summary}" if summary else ""))
        out["retrain"] = True
    if new_rows >= every_rows:
        reasons.append(f"{new_rows} new rows since the champion's snapshot reach decide.retrain_every_rows "
                       f"({every_rows}).")
        out["retrain"] = True
    if not out["retrain"]:
        reasons.append(f"Skipped: {new_rows} new rows, no drift detected, and fewer than the {every_rows} new rows "
                       f"that trigger a routine retrain (decide.retrain_every_rows).")
    return out
