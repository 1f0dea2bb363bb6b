"""Incremental retrains (train.retrain_mode): the decision's choice of full or incremental training and why
(tasks/decide/retrain_policy.py), the replay sample (tasks/train/replay.py), and the training stages on real
ingested snapshots: new rows plus replay, never a withdrawn or golden row, samples processed in the result."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from conftest import read_sst2
from data_helpers import land, make_spec, put_golden, run_folder, tsv_bytes
from tasks import storage
from tasks.contracts import Decision
from tasks.decide.decision import decide
from tasks.decide.retrain_policy import training_kind
from tasks.train import replay

SPEC = make_spec("file:///tmp/unused", decide={"min_new_rows": 100, "retrain_every_rows": 1000},
                 train={"retrain_mode": "incremental", "replay_multiple": 1.0, "full_retrain_every": 4})
CHAMPION = {"version": "v3", "snapshot_id": "aaaa", "snapshot_uri": "s3://b/snapshots/sst2/aaaa",
            "training": {"mode": "incremental", "incremental_streak": 1}}


def ingest(new_rows: int = 1000, total_rows: int = 21_000, **extra) -> dict:
    return {"snapshot_id": "bbbb", "changed": True, "new_rows": new_rows, "total_rows": total_rows,
            "parent_snapshot_id": "aaaa", **extra}


def drift(new_rows: int = 1000, drifted: bool = False, reference=None, current=None) -> dict:
    out = {"new_rows": new_rows, "drift_detected": drifted, "reference_rows": 20_000,
           "checks": {"vocab_js": {"drifted": drifted}},
           "reference_label_counts": reference or {"negative": 9000, "positive": 11000}}
    if current is not None:
        out["current_label_counts"] = current
    return out


def test_a_night_small_against_the_history_trains_incrementally_and_says_why():
    out = decide(SPEC, ingest(), drift(), CHAMPION)
    assert out["retrain"] is True
    training = Decision.model_validate(out).training
    assert training["mode"] == "incremental" and training["incremental_streak"] == 2
    assert training["estimated_rows"] == {"incremental": 2000, "full": 21_000}
    assert "1,000 rows new since the champion's snapshot plus 1x as many older rows replayed" in \
        training["reasons"][0]
    assert "incremental retrain 2 in a row, a full one every 4" in training["reasons"][0]


def test_a_skip_has_no_training_kind():
    out = decide(SPEC, ingest(new_rows=10), drift(10), CHAMPION)
    assert out["retrain"] is False and "training" not in out


@pytest.mark.parametrize("case, args, why", [
    ("first run", dict(champion=None), "no champion to warm-start from"),
    ("drift", dict(drift_result=drift(drifted=True)), "drift was detected"),
    ("new class", dict(drift_result=drift(reference={"negative": 20_000, "positive": 0},
                                          current={"negative": 900, "positive": 100})),
     "class(es) ['positive'] have rows for the first time"),
    ("streak", dict(champion={**CHAMPION, "training": {"mode": "incremental", "incremental_streak": 3}}),
     "ends 3 incremental retrain(s) in a row; every 4th is full"),
    ("no cheaper", dict(ingest_result=ingest(new_rows=5000, total_rows=10_000),
                        drift_result=drift(new_rows=5000), spec_train={"max_train_rows": 4500}),
     "no fewer than the 4,500 of a full retrain"),
    ("blocked", dict(previous={"training_mode": "incremental", "outcome": "blocked by gates", "run_key": "r7"}),
     "the previous incremental candidate (run r7) was blocked by its gates"),
    ("policy", dict(spec_train={"retrain_mode": "full"}), "train.retrain_mode is full"),
    ("cold start", dict(spec_train={"init_from": "base"}), "train.init_from is base"),
])
def test_full_retrains_come_on_their_conditions(case, args, why):
    spec = make_spec("file:///tmp/unused", train={"retrain_mode": "incremental", "full_retrain_every": 4,
                                                  **args.pop("spec_train", {})})
    champion = args.pop("champion", CHAMPION)
    ingest_result, drift_result = args.pop("ingest_result", ingest()), args.pop("drift_result", drift())
    decision = {"retrain": True, "new_rows": drift_result["new_rows"],
                "drift_detected": drift_result["drift_detected"]}
    out = training_kind(spec, decision, ingest_result, drift_result, champion, **args)
    assert out["mode"] == "full" and out["incremental_streak"] == 0, case
    assert why in out["reasons"][0] and out["reasons"][0].startswith("Full retrain on the whole snapshot"), out


def test_the_demo_night_is_a_full_retrain():
    """make demo's run 2: 5,000 new rows over a 5,000-row history, max_train_rows 4,500 (the shipped defaults):
    incremental would train on no fewer rows, so it stays the full warm start it always was."""
    spec = make_spec("file:///tmp/unused", train={"max_train_rows": 4500})
    assert spec.train.retrain_mode == "incremental"  # the shipped default
    out = decide(spec, ingest(new_rows=5000, total_rows=10_000), drift(new_rows=5000),
                 {"version": "v1", "snapshot_id": "aaaa"})
    assert out["training"]["mode"] == "full" and "no fewer than the 4,500" in out["training"]["reasons"][0]


# ---------------------------------------------------------------- the replay sample


def test_the_replay_keeps_the_label_and_length_mix_and_is_seeded():
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=5000, p=[0.6, 0.3, 0.1])
    lengths = np.where(labels == 2, rng.integers(40, 120, 5000), rng.integers(3, 60, 5000))
    picked = replay.replay_sample(labels, lengths, 800, seed=1)
    assert len(picked) == 800 and len(set(picked)) == 800
    assert picked == replay.replay_sample(labels, lengths, 800, seed=1) != replay.replay_sample(labels, lengths,
                                                                                                800, seed=2)
    share = Counter(labels[picked].tolist())
    for label, want in zip(range(3), np.bincount(labels) / len(labels)):
        assert share[label] / 800 == pytest.approx(want, abs=0.003)
    quartiles = np.quantile(lengths, [0.25, 0.5, 0.75])
    assert np.quantile(lengths[picked], [0.25, 0.5, 0.75]) == pytest.approx(quartiles, abs=3)
    assert replay.replay_sample(labels, lengths, 6000, seed=1) == list(range(5000))


def test_select_takes_every_new_row_and_a_multiple_of_them_from_the_history():
    is_old = np.array([True] * 900 + [False] * 100)
    labels = np.array([0, 1] * 500)
    chosen = replay.select(is_old, labels, np.full(1000, 10), multiple=2.0, seed=0, names=["a", "b"])
    assert chosen.report["new_rows"] == 100 and chosen.report["replay_rows"] == 200
    assert set(range(900, 1000)) <= set(chosen.indices) and len(chosen.indices) == 300
    assert chosen.report["label_mix"]["replay"] == {"a": 0.5, "b": 0.5}
