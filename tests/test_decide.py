"""The retrain decision: a pure function of the ingest result, the drift result and the champion."""

from __future__ import annotations

import subprocess
import sys

import pydantic
import pytest

from conftest import ROOT
from data_helpers import make_spec
from tasks.decide.decision import decide

SPEC = make_spec("file:///tmp/unused", decide={"min_new_rows": 100, "retrain_every_rows": 1000})
CHAMPION = {"version": "v3", "snapshot_id": "aaaa", "snapshot_uri": "s3://b/snapshots/sst2/aaaa"}


def ingest(snapshot_id: str = "bbbb", new_rows: int = 0) -> dict:
    return {"snapshot_id": snapshot_id, "changed": new_rows > 0, "new_rows": new_rows}


def drift(new_rows: int, drifted: tuple[str, ...] = (), reference_rows: int | None = 100_000) -> dict:
    """A drift result; ``reference_rows`` (the champion's snapshot) defaults to a large pipeline's, where 50% of it
    is far above any new-row count below, so only the absolute trigger can fire; None leaves the key out."""
    checks = {name: {"drifted": name in drifted, "statistic": 1.0, "threshold": 0.5, "verdict": "x"}
              for name in ("label_psi", "vocab_js", "embedding_mmd")}
    out = {"new_rows": new_rows, "drift_detected": bool(drifted), "checks": checks,
           "summary": "Drift detected." if drifted else "No drift detected."}
    if reference_rows is not None:
        out["reference_rows"] = reference_rows
    return out


def test_first_run_always_trains():
    out = decide(SPEC, ingest(new_rows=5), {"first_run": True, "new_rows": 5, "checks": {}}, None)
    assert out["retrain"] is True and out["first_run"] is True
    assert out["triggers"] == ["first_run"]


def test_no_new_snapshot_since_champion_skips():
    out = decide(SPEC, ingest("aaaa"), drift(0), CHAMPION)
    assert out["retrain"] is False
    assert out["reasons"] == ["Skipped: no new snapshot since the champion's (snapshot aaaa)."]


def test_too_few_new_rows_skip_even_with_drift():
    out = decide(SPEC, ingest(new_rows=99), drift(99, ("vocab_js",)), CHAMPION)
    assert out["retrain"] is False and out["triggers"] == [] and out["drift_detected"] is True
    assert (out["new_rows"], out["min_new_rows"]) == (99, 100)


def test_drift_with_enough_rows_retrains_and_names_checks():
    out = decide(SPEC, ingest(), drift(100, ("vocab_js", "embedding_mmd")), CHAMPION)
    assert out["retrain"] is True and out["drifted_checks"] == ["embedding_mmd", "vocab_js"]
    assert out["triggers"] == ["drift"]


def test_enough_new_rows_retrain_without_drift():
    out = decide(SPEC, ingest(), drift(1000), CHAMPION)
    assert out["retrain"] is True and out["triggers"] == ["retrain_every_rows"]
    assert (out["new_rows"], out["retrain_every_rows"], out["drift_detected"]) == (1000, 1000, False)


def test_no_drift_and_below_routine_size_skips():
    out = decide(SPEC, ingest(), drift(500), CHAMPION)
    assert out["retrain"] is False and out["drift_detected"] is False
    assert out["new_rows"] == 500 and out["triggers"] == []


def test_force_overrides_a_skip():
    out = decide(SPEC, ingest("aaaa"), drift(0), CHAMPION, force=True)
    assert out["retrain"] is True and out["forced"] is True and out["triggers"] == ["forced"]


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
    assert out["retrain"] is False and out["already_trained"] is True and out["snapshot_id"] == "bbbb"


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


# ---------------------------------------------------------------- the relative routine trigger

# The shipped default (tasks/spec.py: decide.retrain_every_fraction 0.5) with the shipped absolute trigger.
DEFAULTS = make_spec("file:///tmp/unused", decide={"min_new_rows": 100, "retrain_every_rows": 5000})


def test_the_shipped_default_fraction_is_one_half():
    assert DEFAULTS.decide.retrain_every_fraction == 0.5


def test_a_small_pipeline_retrains_on_the_relative_trigger():
    """2,000 rows in the champion's snapshot, 1,500 new a night: far below 5,000, yet the data grew by 75%."""
    out = decide(DEFAULTS, ingest(), drift(1500, reference_rows=2000), CHAMPION)
    assert out["retrain"] is True and out["triggers"] == ["retrain_every_fraction"]
    assert out["reasons"] == ["1,500 new rows are 75% of the 2,000 rows in the champion's snapshot, at least "
                              "decide.retrain_every_fraction (50%)."]
    assert (out["champion_snapshot_rows"], out["retrain_fraction_rows"], out["new_rows_share"]) == (2000, 1000, 0.75)
    assert out["retrain_every_rows"] == 5000 and out["retrain_every_fraction"] == 0.5  # the keys there were, kept


def test_the_relative_trigger_fires_at_its_threshold_not_below():
    at = decide(DEFAULTS, ingest(), drift(1000, reference_rows=2000), CHAMPION)
    below = decide(DEFAULTS, ingest(), drift(999, reference_rows=2000), CHAMPION)
    assert at["retrain"] is True and below["retrain"] is False
    # A skip names both thresholds, with the numbers; 49.95% must not print as the 50% it missed.
    assert below["reasons"] == [
        "Skipped: 999 new rows and no drift detected, below both routine triggers: decide.retrain_every_rows "
        "(5,000 new rows) and decide.retrain_every_fraction (50% of the 2,000 rows in the champion's snapshot, "
        "1,000 new rows; these are 49.9%)."]


def test_a_large_pipeline_still_needs_the_absolute_trigger():
    """1,000,000 rows: 3,000 new ones are 0.3%; 5,000 reach retrain_every_rows long before half the snapshot."""
    skip = decide(DEFAULTS, ingest(), drift(3000, reference_rows=1_000_000), CHAMPION)
    assert skip["retrain"] is False and skip["retrain_fraction_rows"] == 500_000
    assert skip["triggers"] == [] and (skip["retrain_every_rows"], skip["champion_snapshot_rows"]) == (5000, 1_000_000)
    train = decide(DEFAULTS, ingest(), drift(5000, reference_rows=1_000_000), CHAMPION)
    assert train["retrain"] is True and train["triggers"] == ["retrain_every_rows"]
    # Or the fraction, if the large pipeline lands half its size at once: both triggers say so.
    both = decide(DEFAULTS, ingest(), drift(600_000, reference_rows=1_000_000), CHAMPION)
    assert both["triggers"] == ["retrain_every_rows", "retrain_every_fraction"] and len(both["reasons"]) == 2
    assert both["new_rows_share"] == 0.6


def test_drift_and_the_relative_trigger_are_both_reported():
    out = decide(DEFAULTS, ingest(), drift(1500, ("vocab_js",), reference_rows=2000), CHAMPION)
    assert out["retrain"] is True and out["triggers"] == ["drift", "retrain_every_fraction"]
    assert out["drifted_checks"] == ["vocab_js"] and out["new_rows"] == 1500


def test_null_switches_the_relative_trigger_off():
    spec = make_spec("file:///tmp/unused", decide={"min_new_rows": 100, "retrain_every_rows": 5000,
                                                   "retrain_every_fraction": None})
    out = decide(spec, ingest(), drift(1500, reference_rows=2000), CHAMPION)
    assert out["retrain"] is False and out["retrain_fraction_rows"] is None and out["retrain_every_fraction"] is None
    assert out["triggers"] == [] and out["new_rows"] == 1500
    assert decide(spec, ingest(), drift(5000, reference_rows=2000), CHAMPION)["triggers"] == ["retrain_every_rows"]


def test_a_drift_result_without_the_champions_size_falls_back_to_the_absolute_trigger():
    """An older drift result (or one with reference_rows 0) cannot size the relative trigger: absolute only."""
    for result in (drift(1500, reference_rows=None), drift(1500, reference_rows=0)):
        out = decide(DEFAULTS, ingest(), result, CHAMPION)
        assert out["retrain"] is False and out["champion_snapshot_rows"] is None and out["new_rows_share"] is None
        assert out["reasons"] == [
            "Skipped: 1,500 new rows and no drift detected, fewer than decide.retrain_every_rows (5,000 new rows); "
            "decide.retrain_every_fraction (50%) was not applied: the drift result does not say how many rows the "
            "champion's snapshot holds, so only decide.retrain_every_rows counts."]
    trained = decide(DEFAULTS, ingest(), drift(6000, reference_rows=None), CHAMPION)
    assert trained["retrain"] is True and trained["triggers"] == ["retrain_every_rows"]
    assert trained["champion_snapshot_rows"] is None and trained["retrain_fraction_rows"] is None


def test_min_new_rows_wins_below_the_relative_trigger():
    """A tiny champion (100 rows): 60 new rows are 60% of it, but fewer than min_new_rows (100) never train."""
    out = decide(DEFAULTS, ingest(), drift(60, reference_rows=100), CHAMPION)
    assert out["retrain"] is False and out["triggers"] == [] and out["retrain_fraction_rows"] == 50
    assert (out["new_rows"], out["min_new_rows"]) == (60, 100)


def test_the_relative_threshold_is_a_whole_row_count():
    """0.1 * 30 is 3.0000000000000004 in floating point; 3 new rows must still reach it."""
    spec = {"decide": {"min_new_rows": 0, "retrain_every_rows": 5000, "retrain_every_fraction": 0.1}}
    out = decide(spec, ingest(), drift(3, reference_rows=30), CHAMPION)
    assert out["retrain"] is True and out["retrain_fraction_rows"] == 3
    assert out["triggers"] == ["retrain_every_fraction"] and out["new_rows_share"] == 0.1


def test_a_plain_dict_spec_gets_the_default_fraction_and_its_checks():
    out = decide({"decide": {"min_new_rows": 1, "retrain_every_rows": 5000}}, ingest(), drift(60, reference_rows=100),
                 CHAMPION)
    assert out["retrain_every_fraction"] == 0.5 and out["triggers"] == ["retrain_every_fraction"]
    with pytest.raises(pydantic.ValidationError):
        decide({"decide": {"min_new_rows": 1, "retrain_every_rows": 5000, "retrain_every_fraction": 0}},
               ingest(), drift(60, reference_rows=100), CHAMPION)


def test_the_decision_contract_and_the_summary_carry_the_new_numbers():
    from tasks.contracts import Decision
    from tasks.decide.summary import build_summary

    out = Decision.model_validate(decide(DEFAULTS, ingest(), drift(1500, reference_rows=2000), CHAMPION)).dump()
    assert out["retrain_every_rows"] == 5000 and out["retrain_fraction_rows"] == 1000
    run = {"pipeline": "p", "run_uri": "file:///tmp/unused/runs/p/r1", "run_key": "r1", "run_type": "manual",
           "champion_version": "v3"}
    summary = build_summary(run, {"decide": out})
    assert summary["decision"]["triggers"] == ["retrain_every_fraction"]
    assert summary["decision"]["champion_snapshot_rows"] == 2000
