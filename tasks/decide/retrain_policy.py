"""Which kind of training a retrain does: ``full`` (the whole snapshot) or ``incremental`` (the rows new since
the champion's snapshot plus a replay sample of older ones, ``tasks/train/replay.py``), and why.

The decision (``tasks/decide/decision.py``) records it as ``training`` on every retrain; the training stages read
it from the run's ``decide/result.json`` and the summary, the model card and the registry carry it. Pure and
light (imported by the DAG code): the only storage read is the previous candidate's record, through a spec that
has a layout.

With ``train.retrain_mode: incremental`` a warm start trains incrementally unless a full retrain is due
(docs/training.md, "Incremental retrains"):

* there is nothing to warm-start from: a first run, or ``train.init_from: base``;
* no rows are new (a forced retrain of the champion's own snapshot);
* a class has rows for the first time (none in the champion's snapshot): the model meets it on the whole history;
* drift was detected (``train.full_retrain_on_drift``);
* the previous retrain was incremental and its candidate was blocked by a gate;
* ``train.full_retrain_every``: the champion is the end of N-1 incremental retrains in a row;
* the incremental rows would be no fewer than a full retrain's (a night as large as the history, or a
  ``train.max_train_rows`` cap below them): the whole snapshot costs no more.
"""

from __future__ import annotations

import math
from typing import Any

from tasks.contracts import Outcome

FULL = "full"
INCREMENTAL = "incremental"

# Why a retrain is full (``training.full_because``), one per condition of the module doc, in its order.
BY_SETTING, FIRST_RUN, FROM_BASE, NO_NEW_ROWS = "retrain_mode", "first_run", "init_from_base", "no_new_rows"
NEW_CLASS, DRIFT, PREVIOUS_BLOCKED = "new_class", "drift", "previous_blocked"
STREAK, NO_CHEAPER = "full_retrain_every", "no_cheaper"


def train_settings(spec: Any) -> Any:
    section = spec.get("train", {}) if isinstance(spec, dict) else spec.train
    if isinstance(section, dict):
        from tasks.spec import TrainSpec

        section = TrainSpec.model_validate(section)
    return section


def champion_streak(champion: dict[str, Any] | None) -> int:
    """Incremental retrains in a row that led to the champion (0: it was a full retrain, or it does not say)."""
    training = (champion or {}).get("training") or {}
    return int(training.get("incremental_streak") or 0) if training.get("mode") == INCREMENTAL else 0


def first_time_classes(ingest: dict[str, Any], drift: dict[str, Any]) -> list[str]:
    """Classes with new rows and none in the champion's snapshot (drift's ``reference_label_counts``); [] when
    the drift result does not say what the reference held."""
    reference = drift.get("reference_label_counts")
    if not reference:
        return []
    new = drift.get("current_label_counts") or ingest.get("label_counts") or {}
    return sorted(name for name, n in new.items() if int(n or 0) > 0 and not int(reference.get(name) or 0))


def previous_candidate(spec: Any, ingest: dict[str, Any]) -> dict[str, Any] | None:
    """The finished run's record on the parent snapshot (the previous night's candidate), when the spec can say
    where records live; None otherwise."""
    parent = ingest.get("parent_snapshot_id")
    layout = getattr(spec, "layout", None)
    if not parent or layout is None:
        return None
    from tasks import storage

    uri = layout.trained(parent)
    return storage.read_json(uri) if storage.exists(uri) else None


def training_kind(spec: Any, decision: dict[str, Any], ingest: dict[str, Any] | None,
                  drift: dict[str, Any] | None, champion: dict[str, Any] | None,
                  previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{mode, reasons[], incremental_streak, replay_multiple, new_rows, estimated_rows}`` for a retrain, and on a
    full one ``full_because``: which condition made it full (the constants above)."""
    hp = train_settings(spec)
    ingest, drift = ingest or {}, drift or {}
    new_rows = int(decision.get("new_rows") or 0)
    streak = champion_streak(champion)
    out: dict[str, Any] = {"mode": FULL, "reasons": [], "policy": hp.retrain_mode,
                           "replay_multiple": hp.replay_multiple, "new_rows": new_rows, "incremental_streak": 0}
    reasons: list[str] = out["reasons"]

    def full(because: str, reason: str) -> dict[str, Any]:
        out["full_because"] = because
        reasons.append(f"Full retrain on the whole snapshot: {reason}.")
        return out

    if hp.retrain_mode == FULL:
        return full(BY_SETTING, "train.retrain_mode is full")
    if champion is None:
        return full(FIRST_RUN, "there is no champion to warm-start from (first run)")
    if hp.init_from != "champion":
        return full(FROM_BASE, "train.init_from is base, so every retrain starts from the base model")
    if new_rows <= 0:
        return full(NO_NEW_ROWS, "no rows are new since the champion's snapshot")
    added = first_time_classes(ingest, drift)
    if added:
        return full(NEW_CLASS, f"class(es) {added} have rows for the first time")
    if hp.full_retrain_on_drift and decision.get("drift_detected"):
        return full(DRIFT, "drift was detected (train.full_retrain_on_drift)")
    if previous and previous.get("training_mode") == INCREMENTAL and previous.get("outcome") == Outcome.BLOCKED:
        return full(PREVIOUS_BLOCKED, f"the previous incremental candidate (run {previous.get('run_key') or '?'}) "
                                      "was blocked by its gates")
    if hp.full_retrain_every is not None and streak + 1 >= hp.full_retrain_every:
        return full(STREAK, f"the champion ends {streak} incremental retrain(s) in a row; every "
                            f"{hp.full_retrain_every}th is full (train.full_retrain_every)")
    total = ingest.get("total_rows")
    incremental_rows = new_rows + math.floor(hp.replay_multiple * new_rows)
    full_rows = int(total) if total else None
    if full_rows is not None and hp.max_train_rows is not None:
        full_rows = min(full_rows, hp.max_train_rows)
    out["estimated_rows"] = {"incremental": incremental_rows, "full": full_rows}
    if full_rows is not None and incremental_rows >= full_rows:
        return full(NO_CHEAPER, f"{new_rows:,} new rows plus {hp.replay_multiple:g}x as many replayed would be "
                                f"{incremental_rows:,} rows, no fewer than the {full_rows:,} of a full retrain")
    out["mode"] = INCREMENTAL
    out["incremental_streak"] = streak + 1
    reasons.append(f"Incremental retrain: the {new_rows:,} rows new since the champion's snapshot plus "
                   f"{hp.replay_multiple:g}x as many older rows replayed (same label and length mix), warm-started "
                   f"from champion {(champion or {}).get('version') or '?'}; incremental retrain "
                   f"{streak + 1} in a row"
                   + (f", a full one every {hp.full_retrain_every}" if hp.full_retrain_every else "") + ".")
    return out


def run_training(run_uri: str) -> dict[str, Any] | None:
    """What a run's teacher was trained on, for the version manifest, the champion pointer and the model card:
    ``{mode, reasons, incremental_streak, rows}`` from the fine-tune stage's result (the kind it did) and the
    decision (why); None when neither says (a run whose results record no training kind)."""
    from tasks import storage

    def read(stage: str) -> dict[str, Any]:
        uri = storage.join(run_uri, stage, "result.json")
        return storage.read_json(uri) if storage.exists(uri) else {}

    decided = read("decide").get("training") or {}
    trained = read("finetune").get("training") or {}
    if not decided and not trained:
        return None
    mode = trained.get("mode") or decided.get("mode") or FULL
    return {"mode": mode, "reasons": trained.get("reasons") or decided.get("reasons") or [],
            "incremental_streak": int(decided.get("incremental_streak") or 0) if mode == INCREMENTAL else 0,
            "rows": {k: trained[k] for k in ("train_rows", "new_rows", "replay_rows", "snapshot_train_rows")
                     if k in trained}}


def stage_training(run_uri: str) -> dict[str, Any]:
    """{teacher|student: {training, samples, samples_processed}} from the run's fine-tune and distill results,
    for the model cards."""
    from tasks import storage

    out = {}
    for role, stage in (("teacher", "finetune"), ("student", "distill")):
        uri = storage.join(run_uri, stage, "result.json")
        if storage.exists(uri):
            result = storage.read_json(uri)
            out[role] = {k: result.get(k) for k in ("training", "samples", "samples_processed")}
    return out
