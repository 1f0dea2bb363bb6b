"""``train.learning_rate: auto``: the bounded search (tasks/train/defaults.py) and where the fine-tune stage gets
its rate from -- the search on a first run, the champion's recorded rate on a retrain, the spec's number as is."""

from __future__ import annotations

import logging
import math

import pytest

from bench.common import make_run, read_tsv, write_snapshot
from tasks import storage
from tasks.errors import SpecInvalid
from tasks.spec import TrainSpec, load_spec, with_overrides
from tasks.train import defaults


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_search_picks_the_best_candidate_and_logs_each():
    scores = {5e-5: 0.40, 1e-4: 0.55, 3e-4: 0.81, 1e-3: 0.62}
    calls, lines = [], []

    def train_and_score(lr):
        calls.append(lr)
        return scores[lr]

    found = defaults.search_learning_rate(list(scores), train_and_score, max_seconds=1e9, log=lines.append)
    assert found.best == 3e-4
    assert calls == list(scores)  # each candidate once, in order
    assert [t.learning_rate for t in found.trials] == list(scores) and found.skipped == []
    assert [t.score for t in found.trials] == list(scores.values())
    assert sum("lr-search" in line for line in lines) == len(scores) + 1  # one line per trial, one for the choice


def test_ties_go_to_the_earlier_candidate_and_a_diverged_run_loses():
    found = defaults.search_learning_rate([1e-4, 3e-4, 1e-3], {1e-4: 0.5, 3e-4: 0.5, 1e-3: math.nan}.__getitem__,
                                          max_seconds=1e9, log=lambda _: None)
    assert found.best == 1e-4
    assert found.trials[-1].score == -math.inf


def test_the_search_is_bounded_in_time_and_count():
    clock = FakeClock()
    calls = []

    def slow(lr):  # each candidate takes 10 "seconds"
        calls.append(lr)
        clock.now += 10
        return lr  # higher rate scores higher

    found = defaults.search_learning_rate([1e-5, 1e-4, 1e-3, 1e-2], slow, max_seconds=15, log=lambda _: None,
                                          clock=clock)
    assert calls == [1e-5, 1e-4]  # the third would start after 20 s > 15 s
    assert found.skipped == [1e-3, 1e-2] and found.best == 1e-4
    # the first candidate always runs, however small the budget
    assert defaults.search_learning_rate([1e-3, 1e-2], slow, max_seconds=0.001, log=lambda _: None,
                                         clock=clock).best == 1e-3
    with pytest.raises(ValueError):
        defaults.search_learning_rate([], slow, max_seconds=10)


def test_candidates_scale_with_the_square_root_of_the_effective_batch():
    assert defaults.scaled_candidates([1e-4, 3e-4], 32) == [1e-4, 3e-4]
    assert defaults.scaled_candidates([1e-4, 3e-4], 128) == [2e-4, 6e-4]


def test_epochs_auto_trains_on_about_50k_rows_within_one_to_three_epochs():
    assert defaults.epochs_for(14_400) == 3.0  # emotion's train split (its spec sets 3)
    assert defaults.epochs_for(20_000) == 2.5
    assert defaults.epochs_for(200_000) == 1.0
    assert defaults.epochs_for(30) == 3.0


def test_learning_rate_and_epochs_default_to_auto_and_accept_a_number():
    assert TrainSpec().learning_rate == "auto" and TrainSpec().epochs == "auto"
    assert TrainSpec(learning_rate=3e-4).learning_rate == 3e-4 and TrainSpec(epochs=2).epochs == 2.0
    for bad in (0, -1e-4, "fast", True):
        with pytest.raises(ValueError):
            TrainSpec(learning_rate=bad)
        with pytest.raises(ValueError):
            TrainSpec(epochs=bad)
    with pytest.raises(ValueError):
        TrainSpec(lr_search_candidates=[])
    # the shipped specs set explicit rates (make demo trains as before; emotion at the rate the search measured)
    from bench.common import ROOT

    for name, rate, epochs in (("sst2", 1e-4, 2), ("emotion", 3e-4, 3)):
        train = load_spec(ROOT / "include" / "pipelines" / f"{name}.yaml").train
        assert (train.learning_rate, train.epochs) == (rate, epochs)
    with pytest.raises(SpecInvalid):
        with_overrides(load_spec(ROOT / "include" / "pipelines" / "sst2.yaml"), {"train.learning_rate": "fast"})


# ---------------------------------------------------------------- the fine-tune stage

CANDIDATES = [1e-4, 1e-3]
TINY = {"train.epochs": 1, "train.batch_size": 8, "train.eval_steps": 5, "train.checkpoint_steps": 5,
        "train.lr_search_candidates": CANDIDATES, "train.lr_search_steps": 2, "train.lr_search_rows": 32,
        "train.lr_search_holdout_rows": 16}


@pytest.fixture
def store(tmp_path, monkeypatch, tiny_model_dir, one_torch_thread):
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    root = storage.normalize(str(tmp_path / "store"))
    return root, write_snapshot(root, "sst2", read_tsv("train", limit=48, offset=2000), holdout_fraction=0.3)


def finetune(root, snapshot, run_key, overrides, champion="none", tiny_model_dir=None):
    from tasks.train import finetune as stage

    run = make_run(root, run_key, {**TINY, "model.base": str(tiny_model_dir), **overrides})
    assert stage.main(["--run", run, "--snapshot", snapshot, "--champion", champion]) == 0
    return run, storage.read_json(storage.join(run, "finetune", "result.json"))


def test_auto_searches_on_a_first_run_and_a_retrain_reuses_the_champions_rate(store, tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="tasks.train")  # the stages' progress lines
    root, snapshot = store
    run, first = finetune(root, snapshot, "first", {"train.learning_rate": "auto", "train.epochs": "auto"},
                          tiny_model_dir=tiny_model_dir)
    assert first["learning_rate_source"] == "search"
    assert first["epochs"] == 3.0 and first["global_step"] == 12  # 30 rows: the most epochs, 4 steps each
    # the grid is for batch 32: batch 8 searches half the rates
    assert [t["learning_rate"] for t in first["lr_search"]["trials"]] == defaults.scaled_candidates(CANDIDATES, 8)
    assert defaults.scaled_candidates(CANDIDATES, 8) == [5e-5, 5e-4]
    best = max(first["lr_search"]["trials"], key=lambda t: t["score"])
    assert first["learning_rate"] == first["lr_search"]["best"] == best["learning_rate"]
    assert "[lr-search] chose lr" in caplog.text
    caplog.clear()
    # the rate travels with the model: publish copies RUN/finetune/model/ into the version's teacher/
    recorded = storage.read_json(storage.join(run, "finetune", "model", defaults.RECORD))
    assert recorded["learning_rate"] == first["learning_rate"] and recorded["learning_rate_source"] == "search"

    champion = storage.join(root, "registry", "sst2", "v0001")
    for info in storage.list_objects(storage.join(run, "finetune", "model")):
        storage.copy(info.uri, storage.join(champion, "teacher", info.uri.rsplit("/model/", 1)[1]))
    _, retrain = finetune(root, snapshot, "retrain", {"train.learning_rate": "auto"}, champion=champion,
                          tiny_model_dir=tiny_model_dir)
    assert retrain["init_from"] == "champion v0001"
    assert retrain["learning_rate"] == first["learning_rate"]
    assert retrain["learning_rate_source"] == "champion v0001" and retrain["lr_search"] is None
    assert "[lr-search]" not in caplog.text


def test_a_candidate_trains_no_longer_than_the_run_itself(store, tiny_model_dir, caplog):
    """On a tiny pipeline the run is a few steps; 100 steps a candidate made the search cost many times the
    training whose rate it picks (a 150-row trial: 458 s for the first candidate of four)."""
    caplog.set_level(logging.INFO, logger="tasks.train")  # the stages' progress lines
    assert defaults.run_steps(30, 8, 1.0) == 4 and defaults.run_steps(30, 8, 2.5) == 10
    assert defaults.run_steps(4500, 32, 2.0) == 282  # make demo's first run: the search would keep its 100 steps
    root, snapshot = store
    _, result = finetune(root, snapshot, "short", {"train.learning_rate": "auto", "train.lr_search_steps": 100},
                         tiny_model_dir=tiny_model_dir)
    assert result["learning_rate_source"] == "search" and result["global_step"] == 4  # 30 rows, batch 8, 1 epoch
    # the steps per trial are in the progress line only (lr_search.json keeps the trials)
    assert "2 candidates [5e-05, 0.0005] (effective batch 8), 4 steps each" in caplog.text


def test_an_explicit_rate_is_used_as_is_without_a_search(store, tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="tasks.train")  # the stages' progress lines
    root, snapshot = store
    _, result = finetune(root, snapshot, "fixed", {"train.learning_rate": 2e-3}, tiny_model_dir=tiny_model_dir)
    assert result["learning_rate"] == 2e-3 and result["learning_rate_source"] == "spec"
    assert result["lr_search"] is None and result["epochs"] == 1.0
    assert "[lr-search]" not in caplog.text


def test_a_retry_of_a_run_reuses_its_stored_search(tmp_path):
    """A killed first run resumes from checkpoints trained at the searched rate: the retry must not search again
    (and could pick another rate on a busy machine's time budget)."""
    stored = storage.normalize(str(tmp_path / "run" / "finetune" / "lr_search.json"))
    searches = []

    def search():
        searches.append(1)
        return defaults.search_learning_rate([1e-4, 3e-4], {1e-4: 0.2, 3e-4: 0.7}.__getitem__, max_seconds=60,
                                             log=lambda _: None)

    first = defaults.resolve(None, "search", search, stored)
    again = defaults.resolve(None, "search", search, stored)
    assert first == again and first[:2] == (3e-4, "search") and len(searches) == 1
    assert defaults.resolve(2e-5, "spec", search, stored) == (2e-5, "spec", None) and len(searches) == 1
