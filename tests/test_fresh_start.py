"""A new class is a reason for a fresh start, and a warm start that collapses is retrained once from the base model
(tasks/train/fresh_start.py, finetune.recipe, runner.run)."""

from __future__ import annotations

import logging
import pytest

from bench.common import make_run, read_tsv, write_snapshot

SETTINGS = {
    "train.init_from": "champion",
    "train.epochs": 1,
    "train.warm_start_epochs": 1,
    "train.batch_size": 8,
    "train.eval_steps": 50,
    "train.checkpoint_steps": 50,
    "train.learning_rate": 1e-3,
}


def test_collapse_is_one_class_for_nearly_everything_beyond_its_share():
    from tasks.train import fresh_start

    labels = ["negative", "positive"]
    assert fresh_start.predicted_top([1, 1, 1, 0], 2) == (1, 0.75)
    why = fresh_start.collapse(0, 1.0, [50, 50], labels)
    # the sentence is the product: it becomes the fresh start's reason in the decision and the model card
    assert why and "'negative' for 100% of the holdout rows, which are 50% 'negative'" in why
    assert fresh_start.collapse(0, 0.85, [50, 50], labels) is None  # not nearly everything
    assert fresh_start.collapse(0, 1.0, [97, 3], labels) is None  # a 97/3 split: the majority is right 97% of the time
    assert fresh_start.collapse(0, 0.95, [80, 20], labels)
    assert "train.init_from: base" in fresh_start.retry_reason(why)


def _with_label_counts(snapshot_uri: str, counts: dict[str, int]) -> str:
    from tasks import storage

    manifest = storage.read_json(storage.join(snapshot_uri, "manifest.json"))
    storage.write_json(storage.join(snapshot_uri, "manifest.json"), {**manifest, "label_counts": counts})
    return snapshot_uri


def _champion(root: str, model_dir, snapshot_uri: str) -> str:
    """A registry version by hand: teacher/ = the model, manifest.json naming the snapshot it was trained on."""
    from tasks import storage

    uri = storage.join(root, "models", "sst2", "v1")
    storage.upload_dir(model_dir, storage.join(uri, "teacher"))
    storage.write_json(storage.join(uri, "manifest.json"), {"version": "v1", "snapshot_uri": snapshot_uri})
    return uri


@pytest.fixture
def labelled_dir(tiny_model_dir, tmp_path):
    """The tiny model with the spec's label names in its config, as a trained teacher has."""
    from tasks.train import modeling

    out = tmp_path / "labelled"
    modeling.save_model(modeling.load_classifier(tiny_model_dir, labels=["negative", "positive"]),
                        modeling.load_tokenizer(tiny_model_dir), out)
    return out


@pytest.fixture
def root(tmp_path, monkeypatch):
    from tasks import storage

    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    return storage.normalize(str(tmp_path / "store"))


def test_a_class_the_champion_never_saw_starts_from_the_base_model(root, tiny_model_dir, labelled_dir):
    from tasks.train import finetune, fresh_start

    rows = read_tsv("train", limit=60, offset=3000)
    night1 = _with_label_counts(write_snapshot(root, "sst2", [r for r in rows if r[1] == 0]),
                                {"negative": 30, "positive": 0})
    night2 = _with_label_counts(write_snapshot(root, "sst2", rows), {"negative": 30, "positive": 30})
    champion = _champion(root, labelled_dir, night1)
    assert fresh_start.unseen_classes(champion, night2, ["negative", "positive"]) == ["positive"]
    assert fresh_start.unseen_classes(champion, night1, ["negative", "positive"]) == []
    assert fresh_start.unseen_classes(champion + "-missing", night2, ["negative", "positive"]) == []  # unknown

    run = make_run(root, "night2", {**SETTINGS, "model.base": str(tiny_model_dir)})
    from tasks.spec import load_spec

    spec = load_spec(run + "/spec.json")
    fresh = finetune.recipe(spec, finetune.FinetuneArgs(run=run, snapshot=night2, champion=champion))
    assert fresh.init_from == "base" and fresh.epochs == 1.0
    assert "['positive']" in fresh.result["fresh_start"] and "champion v1" in fresh.result["fresh_start"]
    warm = finetune.recipe(spec, finetune.FinetuneArgs(run=run, snapshot=night1, champion=champion))
    assert warm.init_from == "champion v1" and warm.result == {}


def test_a_warm_start_that_collapses_is_retrained_once_from_the_base_model(root, tiny_model_dir, labelled_dir,
                                                                          tmp_path, one_torch_thread):
    import numpy as np
    import torch

    from bench.common import holdout_of
    from tasks import storage
    from tasks.train import finetune, modeling

    # Train rows all "negative", holdout rows of both classes: the warm start learns to answer "negative" alone.
    rows = read_tsv("train", limit=600, offset=1000)
    holdout = [r for r in rows if holdout_of(r[0])][:30]
    train = [r for r in rows if not holdout_of(r[0]) and r[1] == 0][:80]
    assert {y for _, y in holdout} == {0, 1}
    snapshot = _with_label_counts(write_snapshot(root, "sst2", train + holdout),
                                  {"negative": sum(1 for _, y in train + holdout if y == 0),
                                   "positive": sum(1 for _, y in holdout if y == 1)})
    # A champion that answers both classes on the holdout rows: the tiny model's head shifted to split them evenly.
    model = modeling.load_classifier(labelled_dir)
    probs = modeling.predict_proba(labelled_dir, [t for t, _ in holdout])
    shift = float(np.median(np.log(probs[:, 1]) - np.log(probs[:, 0])))
    with torch.no_grad():
        model.classifier.bias[1] -= shift
    champion_dir = tmp_path / "champion"
    modeling.save_model(model, modeling.load_tokenizer(labelled_dir), champion_dir)
    before = modeling.predict_proba(champion_dir, [t for t, _ in holdout]).argmax(axis=1)
    assert 0.3 <= before.mean() <= 0.7
    champion = _champion(root, champion_dir, snapshot)

    run = make_run(root, "warm", {**SETTINGS, "model.base": str(tiny_model_dir), "train.warm_start_epochs": 3})
    assert finetune.main(["--run", run, "--snapshot", snapshot, "--champion", champion]) == 0
    result = storage.read_json(storage.join(run, "finetune", "result.json"))
    assert result["init_from"] == "base"
    assert result["fresh_start"].startswith("the warm start from the champion collapsed: it predicts 'negative' "
                                            "for 100% of the holdout rows")
    assert "retrained once from model.base" in result["fresh_start"]
    assert result["fresh_start"] in result["train_data"]["warnings"]
    # The retry kept its own checkpoints: the warm start's are not resumed.
    assert result["resumed_from_step"] == 0


def test_a_champion_that_already_answers_one_class_is_not_blamed_on_the_warm_start(root, labelled_dir, tmp_path,
                                                                                   tiny_model_dir, caplog,
                                                                                   one_torch_thread):
    caplog.set_level(logging.INFO, logger="tasks.train")  # the stages' progress lines
    import torch

    from tasks import storage
    from tasks.train import finetune, modeling

    collapsed_dir = tmp_path / "collapsed"
    model = modeling.load_classifier(labelled_dir)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([50.0, -50.0]))  # "negative" for everything
    modeling.save_model(model, modeling.load_tokenizer(labelled_dir), collapsed_dir)
    rows = read_tsv("train", limit=120, offset=1000)
    snapshot = _with_label_counts(write_snapshot(root, "sst2", rows), {"negative": 60, "positive": 60})
    champion = _champion(root, collapsed_dir, snapshot)
    run = make_run(root, "weak", {**SETTINGS, "model.base": str(tiny_model_dir), "train.learning_rate": 1e-7})
    assert finetune.main(["--run", run, "--snapshot", snapshot, "--champion", champion]) == 0
    result = storage.read_json(storage.join(run, "finetune", "result.json"))
    assert result["init_from"] == "champion v1" and result["fresh_start"] is None
    # no fresh start, so no field: the progress line is what tells a person why
    assert "but so does the champion it started from" in caplog.text
