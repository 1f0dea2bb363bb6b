"""Model selection during training (issue 12, item 3): holdout rows drawn like the golden set
(``train.selection: like_golden``) and early stopping that waits ``train.min_epochs``."""

from __future__ import annotations

import logging
import json
from collections import Counter

import numpy as np
import pytest

from bench.common import make_run, read_tsv, write_snapshot
from tasks import storage


def _cells(lengths, labels, edges):
    from tasks.train import selection

    return selection.cell_counts(lengths, labels, edges)


def _golden_and_holdout(long_rows_per_label: int):
    """A golden set of sentence-like lengths (10-40 tokens) and a phrase-heavy holdout: 2,000 short rows and
    ``long_rows_per_label`` of each label at 30-40 tokens."""
    rng = np.random.default_rng(0)
    g_len = rng.integers(10, 41, 400).tolist()
    g_lab = rng.choice([0, 1], 400, p=[0.45, 0.55]).tolist()
    h_len = rng.integers(2, 30, 2000).tolist() + list(np.tile(np.arange(30, 41), 50)[:2 * long_rows_per_label])
    h_lab = rng.integers(0, 2, 2000).tolist() + [0, 1] * long_rows_per_label
    return g_len, g_lab, h_len, h_lab


def test_a_like_golden_sample_has_the_golden_length_and_label_mix():
    from tasks.train import selection

    g_len, g_lab, h_len, h_lab = _golden_and_holdout(long_rows_per_label=200)
    sample = selection.like_golden_sample(h_len, h_lab, g_len, g_lab, seed=3)
    assert len(sample.indices) == 400 and sample.indices == sorted(set(sample.indices))  # the golden set's size
    assert not sample.shortfalls and sample.histogram_distance == 0.0
    picked_len = [h_len[i] for i in sample.indices]
    picked_lab = [h_lab[i] for i in sample.indices]
    assert _cells(picked_len, picked_lab, sample.edges) == _cells(g_len, g_lab, sample.edges)  # cell for cell
    assert len(sample.edges) == selection.LENGTH_BINS - 1
    assert abs(np.mean(picked_len) - np.mean(g_len)) < 1.5 < abs(np.mean(h_len) - np.mean(g_len))
    # Seeded: the same rows again, other rows with another seed; train.selection_rows caps the size.
    assert selection.like_golden_sample(h_len, h_lab, g_len, g_lab, seed=3).indices == sample.indices
    assert selection.like_golden_sample(h_len, h_lab, g_len, g_lab, seed=4).indices != sample.indices
    capped = selection.like_golden_sample(h_len, h_lab, g_len, g_lab, seed=3, max_rows=250)
    assert len(capped.indices) == 250 and capped.histogram_distance < 0.02


def test_a_holdout_short_of_long_rows_gives_what_it_has_and_says_so():
    from tasks.train import selection

    g_len, g_lab, h_len, h_lab = _golden_and_holdout(long_rows_per_label=6)
    sample = selection.like_golden_sample(h_len, h_lab, g_len, g_lab, seed=3)
    # An exact mix would allow only a few dozen rows: min_rows rows, the long cells taking every long row there is.
    assert len(sample.indices) == selection.MIN_LIKE_GOLDEN_ROWS
    long_idx = [i for i, n in enumerate(h_len) if n >= 30]  # the holdout's only rows of 30 tokens or more
    assert set(long_idx) <= set(sample.indices)
    assert sample.shortfalls and all(s["holdout_rows"] < s["wanted"] for s in sample.shortfalls)
    assert f"[{sample.edges[-1]}, inf)" in {s["tokens"] for s in sample.shortfalls}
    assert all(int(s["tokens"][1:].split(",")[0]) >= 30 for s in sample.shortfalls)  # only the long cells
    # The rest came from the nearest lengths of the same label: the label mix is the golden set's.
    golden_cells = _cells(g_len, g_lab, sample.edges)
    per_cell = selection.apportion({c: n / len(g_lab) for c, n in golden_cells.items()}, len(sample.indices))
    want = Counter()
    for (_, label), n in per_cell.items():
        want[label] += n
    assert Counter(h_lab[i] for i in sample.indices) == want
    assert sum(s["from_nearby_lengths"] + s["holdout_rows"] for s in sample.shortfalls) == \
        sum(s["wanted"] for s in sample.shortfalls)
    # As close as this holdout allows: the total variation distance to the golden mix is the share the scarce cells
    # could not fill, the least any sample of this size can reach; the holdout itself is much further off.
    def distance(cells):
        total = sum(cells.values())
        return 0.5 * sum(abs(cells.get(c, 0) / total - golden_cells.get(c, 0) / len(g_lab))
                         for c in set(cells) | set(golden_cells))

    picked = _cells([h_len[i] for i in sample.indices], [h_lab[i] for i in sample.indices], sample.edges)
    assert sample.histogram_distance == pytest.approx(distance(picked))
    missing = sum(s["wanted"] - s["holdout_rows"] for s in sample.shortfalls) / len(sample.indices)
    rounding = 0.5 * len(golden_cells) / len(sample.indices)  # each cell's count is a whole number of rows
    assert missing <= sample.histogram_distance <= missing + rounding
    assert distance(_cells(h_len, h_lab, sample.edges)) > sample.histogram_distance + 0.05


# ---------------------------------------------------------------- train.min_epochs


def _frozen_trainer(tiny_model_dir, tmp_path, *, patience: int, min_epochs: float, **arg_overrides):
    """The stages' Trainer on the tiny model with learning rate 0, so no evaluation ever improves on the first:
    32 rows, batch 2 -> 16 steps an epoch, 2 epochs, an evaluation and a checkpoint every 2 steps."""
    from transformers import Trainer, set_seed

    from tasks.train import arguments, modeling, stage_trainer, train_data

    tokenizer = modeling.load_tokenizer(tiny_model_dir)
    rows = read_tsv("train", limit=32, offset=4000)
    data = train_data.tokenize(tokenizer, [t for t, _ in rows], [y for _, y in rows], 64)
    args = arguments.training_arguments(
        tmp_path / "scratch", epochs=2, batch_size=2, learning_rate=0.0, weight_decay=0.0, warmup_ratio=0.0,
        gradient_accumulation_steps=1, eval_steps=2, checkpoint_steps=2, seed=5, **arg_overrides)
    set_seed(5)
    return stage_trainer.make_trainer(Trainer, args=args, tokenizer=tokenizer, n_classes=2, patience=patience,
                                      min_epochs=min_epochs, model=modeling.load_classifier(tiny_model_dir),
                                      train_dataset=data, eval_dataset=data.select(range(8)))


def test_early_stopping_waits_for_min_epochs_then_counts_patience(tiny_model_dir, tmp_path, one_torch_thread):
    # Without min_epochs: the evaluations at steps 4 and 6 do not improve on step 2's, patience 2 stops at 6.
    eager = _frozen_trainer(tiny_model_dir, tmp_path / "eager", patience=2, min_epochs=0)
    eager.train()
    assert eager.state.global_step == 6
    # min_epochs 1 (step 16): nothing stops before it; then 2 evaluations without improvement (16, 18) stop at 18.
    patient = _frozen_trainer(tiny_model_dir, tmp_path / "patient", patience=2, min_epochs=1)
    patient.train()
    assert patient.state.global_step == 18 and patient.state.epoch == pytest.approx(18 / 16)
    # The best checkpoint is still the first evaluation's (no later one improved on it).
    assert patient.state.best_model_checkpoint.endswith("checkpoint-2")


def test_a_resumed_run_keeps_the_patience_counted_after_min_epochs(tiny_model_dir, tmp_path, one_torch_thread):
    """The counter is in every checkpoint: resumed from step 16 (one evaluation without improvement counted), a
    run stops at step 18 as the uninterrupted one did; a fresh counter would run to step 20."""
    first = _frozen_trainer(tiny_model_dir, tmp_path, patience=2, min_epochs=1, save_total_limit=None)
    first.train()
    checkpoint = tmp_path / "scratch" / "checkpoint-16"
    state = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]
    saved = state["EarlyStoppingAfterMinEpochs"]
    assert saved["args"]["min_epochs"] == 1.0 and saved["attributes"]["early_stopping_patience_counter"] == 1
    resumed = _frozen_trainer(tiny_model_dir, tmp_path, patience=2, min_epochs=1, save_total_limit=None)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 18


# ---------------------------------------------------------------- the stage


def test_finetune_selects_on_holdout_rows_drawn_like_the_golden_set(tiny_model_dir, tmp_path, monkeypatch, caplog,
                                                                    one_torch_thread):
    caplog.set_level(logging.INFO, logger="tasks.train")  # the stages' progress lines
    from tasks.train import finetune

    root = storage.normalize(str(tmp_path / "store"))
    run = make_run(root, "like-golden", {
        "model.base": str(tiny_model_dir), "train.selection": "like_golden", "train.min_epochs": 0.5,
        "train.batch_size": 16, "train.eval_steps": 4, "train.checkpoint_steps": 4, "train.epochs": 1,
        "train.early_stopping_patience": 1, "model.max_length": 64})
    rows = read_tsv("train", limit=2500)  # phrases and sentences: ~250 holdout rows, few of them long
    golden = read_tsv("dev", limit=300)
    snapshot = write_snapshot(root, "sst2", rows, golden_rows=golden)
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    manifest_reads = []
    read_bytes = storage.read_bytes

    def counting(uri):
        if storage.normalize(uri) == storage.join(storage.normalize(snapshot), "manifest.json"):
            manifest_reads.append(uri)
        return read_bytes(uri)

    monkeypatch.setattr(storage, "read_bytes", counting)
    assert finetune.main(["--run", run, "--snapshot", snapshot, "--champion", "none"]) == 0
    # A token cache miss and like_golden: the splits, the cache key and the golden set all came from one read.
    assert len(manifest_reads) == 1
    out = caplog.text
    result = storage.read_json(storage.join(run, "finetune", "result.json"))
    selection = result["selection"]
    holdout = result["metrics"]["holdout_rows"]
    assert selection["mode"] == "like_golden" and selection["golden_uri"].startswith(root)
    assert 0 < selection["rows"] < holdout
    # the progress lines are the product here (the fields are checked above)
    assert f"model selection on {selection['rows']} of {holdout} holdout rows drawn like the golden set" in out
    assert selection["shortfalls"]  # ~230 holdout rows, few of them long: the log names the scarce cells
    assert all(f"label {s['label']} with {s['tokens']} tokens: {s['holdout_rows']} of {s['wanted']}" in out
               for s in selection["shortfalls"])
    # Early stopping held off until half an epoch; the evaluations during training scored the sample, the final
    # one the whole holdout split.
    assert result["stopped_at_epoch"] >= 0.5
    history = storage.read_json(result["metrics_uri"])["log_history"]
    evals = [e["eval_accuracy"] for e in history if "eval_accuracy" in e]
    n = selection["rows"]
    assert all(abs(a * n - round(a * n)) < 1e-6 for a in evals[:-1])
    assert evals[-1] == pytest.approx(result["metrics"]["accuracy"])


def test_a_snapshot_without_a_golden_set_selects_on_the_holdout_split(tiny_model_dir, tmp_path, monkeypatch, caplog,
                                                                      one_torch_thread):
    caplog.set_level(logging.INFO, logger="tasks.train")  # the stages' progress lines
    from tasks.train import finetune

    root = storage.normalize(str(tmp_path / "store"))
    run = make_run(root, "no-golden", {"model.base": str(tiny_model_dir), "train.selection": "like_golden",
                                       "train.batch_size": 16, "train.eval_steps": 5, "train.checkpoint_steps": 5,
                                       "train.epochs": 1, "model.max_length": 32})
    snapshot = write_snapshot(root, "sst2", read_tsv("train", limit=120))
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    assert finetune.main(["--run", run, "--snapshot", snapshot, "--champion", "none"]) == 0
    # the fallback is said in the progress lines (the docstring's "and says so"); the field is checked below
    assert "records no golden_uri; model selection on the holdout split instead" in caplog.text
    result = storage.read_json(storage.join(run, "finetune", "result.json"))
    assert result["selection"] == {"mode": "holdout", "rows": result["metrics"]["holdout_rows"]}


def test_a_short_sample_under_half_the_split_falls_back_to_the_whole_holdout(tiny_model_dir, tmp_path, caplog):
    """The demo's case: a holdout of full sentences a little short of the golden mix, where the like-golden
    sample (200 rows) would be under half the split: the whole split scores model selection, with less noise."""
    caplog.set_level(logging.INFO, logger="tasks.train")  # the stages' progress lines
    from tasks.spec import load_spec
    from tasks.train import modeling, train_data
    from tasks.train.selection import model_selection_rows

    root = storage.normalize(str(tmp_path / "store"))
    run = make_run(root, "fallback", {"model.base": str(tiny_model_dir), "train.selection": "like_golden"})
    rows = [r for r in read_tsv("train", limit=40000) if len(r[0].split()) >= 10][:4000]
    snapshot = write_snapshot(root, "sst2", rows, golden_rows=read_tsv("dev"))
    from tasks.data import snapshots

    frame = snapshots.read_snapshot(snapshot)
    holdout = frame[frame["split"] == "holdout"]
    tokenizer = modeling.load_tokenizer(tiny_model_dir)
    holdout_set = train_data.tokenize(tokenizer, holdout["text"].tolist(), holdout["label"].tolist(), 128)
    hp = load_spec(storage.join(run, "spec.json")).train
    chosen, summary = model_selection_rows(hp, holdout_set, snapshot, tokenizer, 128, "finetune")
    assert summary["like_golden_fallback"]["shortfalls"] and summary["like_golden_fallback"]["rows"] < len(holdout) / 2
    assert chosen is holdout_set and summary["mode"] == "holdout" and summary["rows"] == len(holdout)
    # the progress line says so
    assert f"model selection on all {len(holdout)} holdout rows" in caplog.text
