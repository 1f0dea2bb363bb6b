"""The retrain decision: a pure function of the ingest result, the drift result and the champion."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT
from data_helpers import make_spec
from tasks.decide.decision import decide

SPEC = make_spec("file:///tmp/unused", decide={"min_new_rows": 100, "retrain_every_rows": 1000})
CHAMPION = {"version": "v3", "snapshot_id": "aaaa", "snapshot_uri": "s3://b/snapshots/sst2/aaaa"}


def ingest(snapshot_id: str = "bbbb", new_rows: int = 0) -> dict:
    return {"snapshot_id": snapshot_id, "changed": new_rows > 0, "new_rows": new_rows}


def drift(new_rows: int, drifted: tuple[str, ...] = ()) -> dict:
    checks = {name: {"drifted": name in drifted, "statistic": 1.0, "threshold": 0.5, "verdict": "x"}
              for name in ("label_psi", "vocab_js", "embedding_mmd")}
    return {"new_rows": new_rows, "drift_detected": bool(drifted), "checks": checks,
            "summary": "Drift detected." if drifted else "No drift detected."}


def test_first_run_always_trains():
    out = decide(SPEC, ingest(new_rows=5), {"first_run": True, "new_rows": 5, "checks": {}}, None)
    assert out["retrain"] is True and out["first_run"] is True
    assert "no champion" in out["reasons"][0]


def test_no_new_snapshot_since_champion_skips():
    out = decide(SPEC, ingest("aaaa"), drift(0), CHAMPION)
    assert out["retrain"] is False
    assert out["reasons"] == ["Skipped: no new snapshot since the champion's (snapshot aaaa)."]


def test_too_few_new_rows_skip_even_with_drift():
    out = decide(SPEC, ingest(new_rows=99), drift(99, ("vocab_js",)), CHAMPION)
    assert out["retrain"] is False and "only 99 new rows" in out["reasons"][0]


def test_drift_with_enough_rows_retrains_and_names_checks():
    out = decide(SPEC, ingest(), drift(100, ("vocab_js", "embedding_mmd")), CHAMPION)
    assert out["retrain"] is True and out["drifted_checks"] == ["embedding_mmd", "vocab_js"]
    assert "embedding_mmd, vocab_js" in out["reasons"][0]


def test_enough_new_rows_retrain_without_drift():
    out = decide(SPEC, ingest(), drift(1000), CHAMPION)
    assert out["retrain"] is True and "retrain_every_rows (1000)" in out["reasons"][0]


def test_no_drift_and_below_routine_size_skips():
    out = decide(SPEC, ingest(), drift(500), CHAMPION)
    assert out["retrain"] is False and "no drift detected" in out["reasons"][0]
    assert out["new_rows"] == 500


def test_force_overrides_a_skip():
    out = decide(SPEC, ingest("aaaa"), drift(0), CHAMPION, force=True)
    assert out["retrain"] is True and out["forced"] is True and "forced" in out["reasons"][0]


def test_accepts_a_plain_dict_spec():
    out = decide({"decide": {"min_new_rows": 1, "retrain_every_rows": 2}}, ingest(), drift(2), CHAMPION)
    assert out["retrain"] is True


def test_decide_module_imports_nothing_heavy():
    code = ("import sys, tasks.decide.decision, tasks.spec; "
            "heavy = [m for m in ('pandas', 'numpy', 'torch', 'transformers') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


TRAINED = {"snapshot_id": "bbbb", "run_key": "retrain-asset_triggered__2026-11-23T01-10-00", "outcome": "blocked by gates",
           "version": None}


def test_a_snapshot_already_trained_on_is_skipped_whatever_the_trigger():
    """One landed file, three triggers (asset event, nightly, a past slot): only the first run trains on it."""
    out = decide(SPEC, ingest(new_rows=2000), drift(2000, ("vocab_js",)), CHAMPION, trained=TRAINED)
    assert out["retrain"] is False and out["already_trained"] is True
    assert out["reasons"] == [
        "Skipped: already trained on snapshot bbbb (run retrain-asset_triggered__2026-11-23T01-10-00: blocked by "
        "gates); land new data, or trigger with force_retrain to train on it again."]


def test_already_trained_applies_before_a_first_champion_exists():
    """A first run blocked by its floors leaves no champion; the next trigger must not retrain the same data."""
    out = decide(SPEC, ingest(new_rows=300), {"first_run": True, "new_rows": 300, "checks": {}}, None,
                 trained=dict(TRAINED, outcome="blocked by gates"))
    assert out["retrain"] is False and "already trained on snapshot bbbb" in out["reasons"][0]


def test_force_retrains_an_already_trained_snapshot():
    out = decide(SPEC, ingest(new_rows=300), drift(300), CHAMPION, force=True, trained=TRAINED)
    assert out["retrain"] is True and out["forced"] is True and out["already_trained"] is True


def test_promoted_record_names_the_version():
    out = decide(SPEC, ingest("aaaa"), drift(0), CHAMPION,
                 trained={"snapshot_id": "aaaa", "run_key": "retrain-r1", "outcome": "promoted", "version": "v3"})
    assert out["reasons"][0].startswith("Skipped: already trained on snapshot aaaa (run retrain-r1: promoted, "
                                        "version v3)")


def test_a_batch_whose_labels_fail_the_quality_check_stops_before_training():
    drift = {"new_rows": 6000, "drift_detected": True, "checks": {},
             "label_quality": {"flagged": True, "verdict": "the champion agrees with 61% of the new labels, "
                                                          "against 93% on the reference."}}
    out = decide(SPEC, {"snapshot_id": "s2"}, drift, CHAMPION)
    assert out["retrain"] is False and out["stopped"] is True
    assert out["reasons"][0].startswith("Stopped before training: the champion agrees with 61%")
    forced = decide(SPEC, {"snapshot_id": "s2"}, drift, CHAMPION, force=True)
    assert forced["retrain"] is True  # the operator may still insist
    clean = decide(SPEC, {"snapshot_id": "s2"}, {**drift, "label_quality": {"flagged": False}}, CHAMPION)
    assert clean["retrain"] is True and clean["stopped"] is False
