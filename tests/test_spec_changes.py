"""A spec change between runs, at the stage level on moto S3: a label appended to ``data.labels`` after the
champion was trained. The evaluate stage scores the old two-output champion and a three-output candidate on a
golden set that has rows of the new label, and the gates judge them (tests/test_gates.py has the numbers)."""

from __future__ import annotations

import pytest

from decision_support import make_spec, write_run, write_snapshot
from tasks import storage
from tasks.__main__ import main as tasks_main
from tasks.spec import dump, parse_spec

pytestmark = pytest.mark.timeout(120)


def tiny_classifier(base_dir, out_dir, labels: list[str]):
    """The session's tiny random-init BERT with a head of len(labels) outputs and those label names."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(str(base_dir), num_labels=len(labels), id2label=dict(enumerate(labels)),
                                        label2id={name: i for i, name in enumerate(labels)})
    model = BertForSequenceClassification(config)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(out_dir))
    return out_dir


def test_evaluate_scores_a_champion_trained_before_a_label_was_appended(s3_env, tiny_model_dir, tmp_path,
                                                                         one_torch_thread):
    from conftest import read_sst2

    two = make_spec(s3_env)
    three = parse_spec({**dump(two), "data": {**dump(two)["data"], "labels": ["negative", "positive", "neutral"]}})
    rows = read_sst2("train", limit=60)
    golden = read_sst2("dev", limit=40) + [(f"{text} (neutral)", 2) for text, _ in read_sst2("dev", 20, 40)]
    snap = write_snapshot(three, rows, golden)
    champion = storage.join(s3_env, "models", "sst2", "v-two-labels")
    for role in ("teacher", "student"):
        storage.upload_dir(tiny_classifier(tiny_model_dir, tmp_path / f"champ-{role}", two.data.labels),
                           storage.join(champion, role))
    candidate = storage.join(s3_env, "cand")
    storage.upload_dir(tiny_classifier(tiny_model_dir, tmp_path / "cand", three.data.labels), candidate)

    run = write_run(three, "r-new-label")
    assert tasks_main(["evaluate", "--run", run, "--snapshot", snap, "--teacher", candidate, "--student", candidate,
                       "--champion", champion]) == 0
    result = storage.read_json(storage.join(run, "evaluate", "result.json"))
    assert not result["first_run"] and result["metrics"]["champion"]["teacher"]["golden_n"] == 60
    metrics = storage.read_json(storage.join(run, "evaluate", "metrics.json"))
    champ = metrics["models"]["champion_teacher"]["golden"]
    assert set(champ["per_class"]) == {"negative", "positive", "neutral"}
    assert champ["per_class"]["neutral"]["recall"] == 0.0 and len(champ["confusion_matrix"]) == 3
    assert {g["name"] for g in result["gates"]} >= {"non_inferiority_teacher", "class_recall_teacher"}
