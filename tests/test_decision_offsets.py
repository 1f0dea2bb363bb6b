"""The decision of a class-balanced model, set on held-out rows (tasks/train/decision_offsets.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.common import holdout_of, make_run, read_tsv, write_snapshot
from tasks.train import decision_offsets

LABELS = ["negative", "positive"]


def _drifted(n_major=300, n_minor=12, shift=2.0, seed=0):
    """Logits of a model that ranks the classes apart but whose boundary sits ``shift`` towards the majority: most
    minority rows fall just on the majority side of 0."""
    rng = np.random.default_rng(seed)
    y = np.array([0] * n_major + [1] * n_minor)
    margin = np.where(y == 1, rng.normal(1.0, 1.0, y.size), rng.normal(-2.0, 1.0, y.size)) - shift
    return np.stack([np.zeros(y.size), margin], axis=1), y


def test_choose_moves_a_drifted_boundary_back_and_leaves_a_good_one_alone():
    logits, y = _drifted()
    before = decision_offsets.score(y, logits.argmax(axis=1), 2, "balanced_recall")
    offsets = decision_offsets.choose(logits, y, 2, "balanced_recall")
    after = decision_offsets.score(y, (logits + offsets).argmax(axis=1), 2, "balanced_recall")
    assert offsets[1] - offsets[0] > 1.0 and after > before + 0.2  # the minority's logit raised, most of it found
    assert np.mean((logits + offsets).argmax(axis=1)[y == 1] == 1) >= 0.75
    f1_offsets = decision_offsets.choose(logits, y, 2, "macro_f1")
    assert decision_offsets.score(y, (logits + f1_offsets).argmax(axis=1), 2, "macro_f1") >= \
        decision_offsets.score(y, (logits + offsets).argmax(axis=1), 2, "macro_f1")

    separable = np.stack([np.zeros(8), np.array([-3, -2, -2, -1, -1, -3, 2, 3], dtype=float)], axis=1)
    y_sep = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    assert decision_offsets.choose(separable, y_sep, 2).tolist() == [0.0, 0.0]  # already perfect: nothing moves
    assert decision_offsets.choose(logits[:20], y[:20], 2).tolist() == [0.0, 0.0]  # one class held out: no recall
    # to balance


def test_choose_handles_more_classes_and_a_class_without_holdout_rows():
    rng = np.random.default_rng(1)
    y = np.array([0] * 200 + [1] * 60 + [2] * 10)
    logits = rng.normal(0, 0.5, (y.size, 4))
    logits[np.arange(y.size), y] += 1.5
    logits[:, 0] += 1.2  # the majority drifts up: classes 1 and 2 lose rows to it
    offsets = decision_offsets.choose(logits, y, 4, "balanced_recall")
    assert offsets[3] == 0.0  # class 3 has no holdout row: left alone
    assert decision_offsets.score(y, (logits + offsets).argmax(axis=1), 4, "balanced_recall") > \
        decision_offsets.score(y, logits.argmax(axis=1), 4, "balanced_recall") + 0.1


def test_fold_adds_the_offsets_to_the_head_bias(tiny_model_dir):
    import torch

    from tasks.train import modeling

    model = modeling.load_classifier(tiny_model_dir).eval()
    tokenizer = modeling.load_tokenizer(tiny_model_dir)
    batch = tokenizer(["a fine film", "a dull one"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        before = model(**batch).logits
    assert decision_offsets.fold(model, [0.5, -1.25])
    with torch.inference_mode():
        after = model(**batch).logits
    assert torch.allclose(after - before, torch.tensor([[0.5, -1.25]] * 2), atol=1e-5)
    assert not decision_offsets.fold(model, [0.1, 0.2, 0.3])  # the wrong number of classes: untouched
    with torch.inference_mode():
        assert torch.equal(model(**batch).logits, after)


def test_nothing_is_done_when_balancing_is_off():
    # trainer=None: any use of it would raise, so returning None proves nothing was predicted, chosen or folded.
    even = {"setting": "auto", "method": "none", "on": False}
    assert decision_offsets.apply(None, [1, 2, 3], "balanced_recall", even, LABELS) is None
    assert decision_offsets.apply(None, [1, 2, 3], "none", {"on": True}, LABELS) is None
    assert decision_offsets.apply(None, [1, 2, 3], "balanced_recall", None, LABELS) is None


def test_finetune_sets_a_balanced_models_decision_on_the_holdout(tmp_path, monkeypatch, tiny_model_dir,
                                                                  one_torch_thread):
    """The real fine-tune stage on a skewed mix records the offsets it chose, and the saved model decides with them:
    its argmax on the holdout rows scores what the record says. On an even mix it records none."""
    from tasks import storage
    from tasks.train import finetune, modeling

    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    root = storage.normalize(str(tmp_path / "store"))
    rows = read_tsv("train", min_words=5, limit=3000, offset=3000)
    skewed = [r for r in rows if r[1] == 0][:700] + [r for r in rows if r[1] == 1][:60]
    snapshot = write_snapshot(root, "sst2", skewed, holdout_fraction=0.4)
    settings = {"model.base": str(tiny_model_dir), "train.epochs": 1, "train.batch_size": 16,
                "train.learning_rate": 1e-3, "train.eval_steps": 50, "train.checkpoint_steps": 50,
                "train.selection": "holdout"}
    run = make_run(root, "skewed", settings)
    assert finetune.main(["--run", run, "--snapshot", snapshot]) == 0
    result = storage.read_json(storage.join(run, "finetune", "result.json"))
    decided = result["class_weights"]["decision_offsets"]
    # The default objective, macro-F1 (what the gates' floor scores); an offset moves only for a better score.
    assert decided["objective"] == "macro_f1" and set(decided["offsets"]) == set(LABELS)
    assert decided["folded"] and decided["holdout_after"]["macro_f1"] > decided["holdout_before"]["macro_f1"]
    # metrics.json is the saved model's: scored after the offsets were folded in
    assert result["metrics"]["macro_f1"] == pytest.approx(decided["holdout_after"]["macro_f1"], abs=1e-4)

    held = [r for r in skewed if holdout_of(r[0], 0.4)]  # the snapshot's holdout split
    y_held = np.array([label for _, label in held])
    assert decided["holdout_rows"] == len(held) and min(np.bincount(y_held)) >= decision_offsets.MIN_ROWS_PER_CLASS
    pred = modeling.predict_proba(storage.local_path(result["model_uri"]), [t for t, _ in held]).argmax(axis=1)
    assert decision_offsets.score(y_held, pred, 2, "macro_f1") == \
        pytest.approx(decided["holdout_after"]["macro_f1"], abs=1e-4)

    # a holdout with fewer than MIN_ROWS_PER_CLASS rows of a class: recorded, nothing folded
    few = [r for r in rows if r[1] == 0][:240] + [r for r in rows if r[1] == 1][:16]
    run = make_run(root, "few", settings)
    assert finetune.main(["--run", run, "--snapshot", write_snapshot(root, "sst2", few, holdout_fraction=0.3)]) == 0
    kept = storage.read_json(storage.join(run, "finetune", "result.json"))["class_weights"]["decision_offsets"]
    assert not kept["folded"] and set(kept["offsets"].values()) == {0.0} and "positive" in kept["not_set"]

    even = [r for r in rows if r[1] == 0][:60] + [r for r in rows if r[1] == 1][:60]
    run = make_run(root, "even", settings)
    assert finetune.main(["--run", run, "--snapshot", write_snapshot(root, "sst2", even)]) == 0
    plain = storage.read_json(storage.join(run, "finetune", "result.json"))["class_weights"]
    assert not plain["on"] and "decision_offsets" not in plain
