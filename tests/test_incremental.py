"""Incremental retrains (train.retrain_mode): the decision's choice of full or incremental training and why
(tasks/decide/retrain_policy.py), the replay sample (tasks/train/replay.py), and the training stages on real
ingested snapshots: new rows plus replay, never a withdrawn or golden row, samples processed in the result."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from conftest import read_sst2
from data_helpers import land, make_spec, put_golden, run_folder, tsv_bytes
from tasks import storage
from tasks.contracts import Decision
from tasks.spec import TrainSpec
from tasks.decide.decision import decide
from tasks.decide import retrain_policy
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
    assert training["new_rows"] == 1000 and training["replay_multiple"] == 1  # replayed: 1x the new rows


def test_a_skip_has_no_training_kind():
    out = decide(SPEC, ingest(new_rows=10), drift(10), CHAMPION)
    assert out["retrain"] is False and "training" not in out


@pytest.mark.parametrize("case, args, because", [
    ("first run", dict(champion=None), retrain_policy.FIRST_RUN),
    ("drift", dict(drift_result=drift(drifted=True)), retrain_policy.DRIFT),
    ("new class", dict(drift_result=drift(reference={"negative": 20_000, "positive": 0},
                                          current={"negative": 900, "positive": 100})),
     retrain_policy.NEW_CLASS),
    ("streak", dict(champion={**CHAMPION, "training": {"mode": "incremental", "incremental_streak": 3}}),
     retrain_policy.STREAK),
    ("no cheaper", dict(ingest_result=ingest(new_rows=5000, total_rows=10_000),
                        drift_result=drift(new_rows=5000), spec_train={"max_train_rows": 4500}),
     retrain_policy.NO_CHEAPER),
    ("blocked", dict(previous={"training_mode": "incremental", "outcome": "blocked by gates", "run_key": "r7"}),
     retrain_policy.PREVIOUS_BLOCKED),
    ("policy", dict(spec_train={"retrain_mode": "full"}), retrain_policy.BY_SETTING),
    ("cold start", dict(spec_train={"init_from": "base"}), retrain_policy.FROM_BASE),
])
def test_full_retrains_come_on_their_conditions(case, args, because):
    spec = make_spec("file:///tmp/unused", train={"retrain_mode": "incremental", "full_retrain_every": 4,
                                                  **args.pop("spec_train", {})})
    champion = args.pop("champion", CHAMPION)
    ingest_result, drift_result = args.pop("ingest_result", ingest()), args.pop("drift_result", drift())
    decision = {"retrain": True, "new_rows": drift_result["new_rows"],
                "drift_detected": drift_result["drift_detected"]}
    out = training_kind(spec, decision, ingest_result, drift_result, champion, **args)
    assert out["mode"] == "full" and out["incremental_streak"] == 0 and out["full_because"] == because, out
    assert out["reasons"][0].startswith("Full retrain on the whole snapshot"), out  # the model card's sentence


def test_the_demo_night_is_a_full_retrain():
    """make demo's run 2: 5,000 new rows over a 5,000-row history, max_train_rows 4,500 (the shipped defaults):
    incremental would train on no fewer rows, so it stays the full warm start it always was."""
    spec = make_spec("file:///tmp/unused", train={"max_train_rows": 4500})
    assert spec.train.retrain_mode == "incremental"  # the shipped default
    out = decide(spec, ingest(new_rows=5000, total_rows=10_000), drift(new_rows=5000),
                 {"version": "v1", "snapshot_id": "aaaa"})
    estimated = out["training"]["estimated_rows"]
    assert out["training"]["mode"] == "full" and estimated["incremental"] >= estimated["full"] == 4500
    assert out["training"]["full_because"] == retrain_policy.NO_CHEAPER


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


# ---------------------------------------------------------------- the training stages on real ingested snapshots


@pytest.fixture(scope="module")
def champion_models(tiny_model_dir, tmp_path_factory):
    """A tiny teacher with the spec's labels and its 3-layer student: what a champion warm-starts from."""
    from tasks.train import distill, modeling

    out = tmp_path_factory.mktemp("champion-models")
    teacher = modeling.load_classifier(tiny_model_dir, labels=["negative", "positive"])
    tokenizer = modeling.load_tokenizer(tiny_model_dir)
    modeling.save_model(teacher, tokenizer, out / "teacher")
    student, _ = distill.init_student(teacher, 3)
    modeling.save_model(student, tokenizer, out / "student")
    return out


def promote_by_hand(spec, ingested: dict, models, version: str = "v1") -> str:
    """A champion trained on ``ingested``'s snapshot: the version folder and the champion pointer."""
    uri = spec.layout.version(version)
    for role in ("teacher", "student"):
        storage.upload_dir(models / role, storage.join(uri, role))
    named = {k: ingested[k] for k in ("snapshot_id", "snapshot_uri")}
    storage.write_json(storage.join(uri, "manifest.json"), {"version": version, **named})
    pointer = {"version": version, "version_uri": uri, **named}
    storage.write_json(spec.layout.champion, pointer)
    return uri


def token_rows(tokenizer, texts, max_length: int = 128) -> set[tuple[int, ...]]:
    return {tuple(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]}


def seen_rows(folder) -> list[tuple[int, ...]]:
    return [tuple(row) for path in sorted(folder.glob("rank-*.jsonl")) for line in path.read_text().splitlines()
            for row in json.loads(line)["rows"]]


def test_an_incremental_night_trains_on_new_rows_and_replay_never_on_withdrawn_or_golden_rows(
        tmp_path, monkeypatch, champion_models, one_torch_thread):
    """History: batch 1 (300 rows) and batch 2 (60 rows); the champion trained on both. Then batch 2 is withdrawn
    (its labels were bad), the golden set is re-frozen with 5 stored texts of batch 1 in it, and batch 3 lands:
    80 new rows, 5 golden texts, 3 history texts relabelled. Both stages train on batch 3's train rows plus as many
    replayed rows of batch 1: none withdrawn, none golden, the relabelled texts with their stored labels."""
    from tasks.data import golden, snapshots, withdraw
    from tasks.data.ingest import run_ingest
    from tasks.data.validation import normalize_text
    from tasks.train import distill, finetune, modeling, stage_trainer

    root = "file://" + str(tmp_path / "store")
    spec = make_spec(root, model={"base": str(champion_models / "teacher")}, decide={"min_new_rows": 10, "retrain_every_rows": 50},
                     train={"epochs": 1, "warm_start_epochs": 1, "min_epochs": 0, "batch_size": 16,
                            "learning_rate": 1e-4, "selection": "holdout", "eval_steps": 1000,
                            "checkpoint_steps": 1000, "replay_multiple": 1.0},
                     student={"epochs": 1, "batch_size": 16, "export": []})
    first_golden = put_golden(spec)
    history, bad, new = (read_sst2("train", limit=300, offset=1000), read_sst2("train", limit=60, offset=1300),
                         read_sst2("train", limit=80, offset=1400))
    land(spec, "b1.tsv", tsv_bytes(history))
    run_ingest(spec, run_folder(spec, "r1"))
    land(spec, "b2.tsv", tsv_bytes(bad))
    before_bad = run_ingest(spec, run_folder(spec, "r2"))
    champion_uri = promote_by_hand(spec, before_bad, champion_models)
    withdrawn = withdraw.withdraw(spec, [before_bad["batch_id"]], reason="labels flipped")
    assert withdrawn["withdrawn"] == [before_bad["batch_id"]]
    refrozen = first_golden[:30] + history[:5]
    source = storage.join(root, "reference", "sst2", "golden-v2.tsv")
    storage.write_bytes(source, tsv_bytes(refrozen))
    golden.refreeze(spec, source)
    relabelled = [(text, 1 - label) for text, label in history[100:103]]
    land(spec, "b3.tsv", tsv_bytes(new + first_golden[:5] + relabelled))
    night = run_ingest(spec, run_folder(spec, "r3"))
    assert night["new_rows"] == 80 and night["contaminated_removed"] == 5
    assert night["quarantine_reasons"] == {"conflicting_labels": 3}

    current, champion_rows = (snapshots.read_snapshot(night["snapshot_uri"]),
                              snapshots.read_snapshot(before_bad["snapshot_uri"]))
    new_rows = current[~current["text"].isin(champion_rows["text"])]
    drift_result = {"new_rows": len(new_rows), "reference_rows": len(champion_rows), "checks": {},
                    "reference_label_counts": snapshots.label_counts(champion_rows["label"], spec.data.labels)}
    run = run_folder(spec, "r4")
    decision = decide(spec, night, drift_result, storage.read_json(spec.layout.champion))
    assert decision["training"]["mode"] == "incremental", decision
    storage.write_json(storage.join(run, "decide", "result.json"), decision)

    seen = tmp_path / "seen"
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv(stage_trainer.ROWS_SEEN_ENV, str(seen / "finetune"))
    assert finetune.main(["--run", run, "--snapshot", night["snapshot_uri"], "--champion", champion_uri]) == 0
    teacher = storage.read_json(storage.join(run, "finetune", "result.json"))
    monkeypatch.setenv(stage_trainer.ROWS_SEEN_ENV, str(seen / "distill"))
    assert distill.main(["--run", run, "--snapshot", night["snapshot_uri"], "--teacher", teacher["model_uri"],
                         "--champion", champion_uri]) == 0
    student = storage.read_json(storage.join(run, "distill", "result.json"))

    new_train = new_rows[new_rows["split"] == "train"]
    tokenizer = modeling.load_tokenizer(champion_models / "teacher")
    withdrawn_rows = snapshots.read_snapshot(before_bad["snapshot_uri"])
    withdrawn_rows = withdrawn_rows[withdrawn_rows["batch"] == before_bad["batch_id"]]
    golden_now = snapshots.read_golden(golden.ensure_golden(spec)["golden_uri"])
    for result, stage in ((teacher, "finetune"), (student, "distill")):
        training_kind = result["training"]
        assert training_kind["mode"] == "incremental" and training_kind["new_rows"] == len(new_train)
        assert training_kind["replay_rows"] == len(new_train)
        assert training_kind["history_rows"] == int((current["split"] == "train").sum()) - len(new_train)
        assert result["train_rows"] == 2 * len(new_train) == training_kind["train_rows"]
        rows = seen_rows(seen / stage)
        assert len(rows) == result["samples"]["train"] == result["train_rows"]  # one epoch
        assert token_rows(tokenizer, new_train["text"]) <= set(rows)
        assert not set(rows) & token_rows(tokenizer, withdrawn_rows["text"]), "a withdrawn row was trained on"
        assert not set(rows) & token_rows(tokenizer, golden_now["text"]), "a golden row was trained on"
        assert result["samples_processed"] == result["samples"]["train"] + result["samples"].get("teacher", 0)
        assert result["samples"]["inference"] > 0
    # The live teacher (no cache on CPU) ran on every training row. Inference: both stages evaluated the holdout
    # at the same steps in training; then the teacher's stage scored its best model again (a warm start's collapse check), and
    # the student's ran the frozen teacher on the holdout once (distill.teacher_eval_logits) and reused the logged
    # evaluation of its best step (runner.best_evaluation).
    assert student["samples"]["teacher"] == student["samples"]["train"]
    assert student["samples"]["inference"] == teacher["samples"]["inference"]
    # The relabelled texts kept their stored labels: the labels any replay of them trains on.
    stored = current.set_index("text")["label"]
    assert [int(stored[normalize_text(t)]) for t, _ in relabelled] == [label for _, label in history[100:103]]


def test_the_model_card_and_the_version_manifest_say_what_the_model_trained_on(tmp_path):
    from tasks.decide import model_card
    from tasks.decide.retrain_policy import run_training, stage_training

    run = "file://" + str(tmp_path / "run")
    why = "Incremental retrain: the 1,000 rows new since the champion's snapshot plus 1x as many older rows replayed."
    storage.write_json(storage.join(run, "decide", "result.json"), {"retrain": True, "training": {
        "mode": "incremental", "reasons": [why], "incremental_streak": 3}})
    kind = {"mode": "incremental", "new_rows": 900, "replay_rows": 900, "history_rows": 9000, "train_rows": 1800,
            "snapshot_train_rows": 9900, "reasons": [why]}
    storage.write_json(storage.join(run, "finetune", "result.json"), {
        "model_uri": "x", "training": kind, "samples": {"train": 1800, "inference": 100}, "samples_processed": 1900})
    recorded = run_training(run)
    assert recorded == {"mode": "incremental", "reasons": [why], "incremental_streak": 3,
                        "rows": {"train_rows": 1800, "new_rows": 900, "replay_rows": 900,
                                 "snapshot_train_rows": 9900}}
    lines = model_card.training_lines(stage_training(run)["teacher"])
    assert lines == [f"| training | incremental: 900 new rows + 900 replayed of 9000 older train rows (1800 of the "
                     f"snapshot's 9900). {why} |", "| samples processed | 1900 (inference 100, train 1800) |"]
    # A full retrain counts no streak; a run from before the setting records nothing.
    storage.write_json(storage.join(run, "finetune", "result.json"), {"model_uri": "x", "training": {
        "mode": "full", "train_rows": 9900, "reasons": ["Full retrain on the whole snapshot: drift was detected."]}})
    assert run_training(run)["mode"] == "full" and run_training(run)["incremental_streak"] == 0
    assert run_training("file://" + str(tmp_path / "old-run")) is None


def test_the_benchmark_runs_both_nights_and_prints_one_json_line(tiny_model_dir, tmp_path):
    """bench/incremental.py --quick on the tiny model: the stages' own sample counts, a full night on every train
    row of the snapshot and an incremental one on the night's new train rows plus replay_multiple x as many; at the
    doubled history (--champion-once --full-seeds-last 0, as --two-cores runs it) one incremental night from the
    same champion weights, its samples unchanged."""
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run(
        [sys.executable, "bench/incremental.py", "--quick", "--history", "300", "600", "--champion-once",
         "--full-seeds-last", "0", "--set",
         f"model.base={tiny_model_dir}", "--storage", "file://" + str(tmp_path / "store")],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout[-2000:]
    out = json.loads(lines[0])
    size = out["history"]["300"]
    full, incremental = size["full"]["nights"][0], size["incremental"]["nights"][0]
    assert full["training"]["finetune"]["mode"] == "full"
    kind = incremental["training"]["finetune"]
    multiple = TrainSpec().replay_multiple  # the spec's default: the bench sets none
    assert kind["mode"] == "incremental" and kind["new_rows"] > 0
    assert kind["replay_rows"] == math.floor(multiple * kind["new_rows"])
    # one warm-start epoch over the new and the replayed rows
    assert incremental["samples_detail"]["finetune"]["train"] == kind["new_rows"] + kind["replay_rows"]
    assert full["samples_detail"]["finetune"]["train"] == full["train_rows"] > incremental["train_rows"]
    assert size["samples_ratio"] == pytest.approx(incremental["samples"] / full["samples"], abs=1e-4)
    for night in (full, incremental):
        lower, upper = night["golden"]["teacher"]["ci"]
        assert lower <= night["golden"]["teacher"]["accuracy"] <= upper
    doubled = out["history"]["600"]
    assert doubled["champion_trained_on"] == 300 and doubled["full"]["nights"] == []
    assert "samples_ratio" not in doubled  # no full night to compare with at this size
    (night,) = doubled["incremental"]["nights"]
    assert night["training"]["finetune"]["new_rows"] == kind["new_rows"]  # the same night's rows, twice the history
    assert out["bars"]["incremental_samples_growth_on_doubling"] == round(night["samples"] / incremental["samples"] - 1, 4)
    assert out["bars"]["incremental_growth_at_most_10pct"] and out["bars"]["full_samples_growth"] is None


def test_inference_passes_count_as_the_stage_samples(tiny_model_dir, monkeypatch):
    """The evaluate stage scores models with modeling.predict_proba: its rows are the stage's inference samples,
    listed in its cost, and not added to samples_processed (what training costs)."""
    from tasks import cost
    from tasks.train import modeling

    monkeypatch.setattr(cost, "_meter", None)  # the process's meter as it was, after the test
    monkeypatch.setattr(cost, "_samples", {})
    cost.start()
    texts = [text for text, _ in read_sst2("dev", limit=12)]
    modeling.predict_proba(tiny_model_dir, texts)
    modeling.predict_proba(tiny_model_dir, texts[:5])
    assert cost.reading()["samples"] == {"inference": 17} and cost.reading()["samples_processed"] == 0
    cost.count_samples("train", 30)
    cost.count_samples("teacher", 30)
    assert cost.reading()["samples_processed"] == 60
