"""student.epochs: auto (the default), the rule train.epochs uses: about 50,000 rows' worth within [1, 3].

A fixed single epoch left the student of a small many-class pipeline (Debian fortunes, 36 classes, 1,817 train
rows: 57 steps) 6 points behind its teacher, below the retention gate (docs/benchmarks.md, fortunes). The stage
test is a small synthetic many-class case: 12 classes on a tiny random teacher."""

from __future__ import annotations

import math

import pytest
import yaml

from bench.common import SPEC_YAML, make_run, read_tsv, run_stage, stage_result, write_snapshot
from tasks.spec import SpecError, load_spec, parse_spec
from tasks.train.defaults import epochs_for

LABELS = [f"topic {i}" for i in range(12)]


def spec_with_student(**student):
    raw = yaml.safe_load(SPEC_YAML.read_text())
    raw["student"] = {k: v for k, v in raw["student"].items() if k != "epochs"} | student
    return parse_spec(raw, "<test>")


def test_student_epochs_default_to_auto_and_take_a_number_or_auto():
    assert spec_with_student().student.epochs == "auto"
    assert spec_with_student(epochs=2).student.epochs == 2.0
    assert spec_with_student(epochs="auto").student.epochs == "auto"
    for bad, message in ((0, "greater than 0, or 'auto'"), ("many", "a valid number or 'auto'")):
        with pytest.raises(SpecError, match=message):
            spec_with_student(epochs=bad)
    assert load_spec(SPEC_YAML).student.epochs == 2.0  # a spec that names its epochs keeps them


@pytest.fixture(scope="module")
def twelve_class_teacher(tiny_model_dir, tmp_path_factory):
    """The tiny random BERT with a 12-class head (the tokenizer of the packaged model)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig.from_pretrained(str(tiny_model_dir), num_labels=len(LABELS))
    out = tmp_path_factory.mktemp("tiny-12-class")
    BertForSequenceClassification(config).save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


def test_distill_trains_auto_epochs_on_a_many_class_snapshot(tmp_path, twelve_class_teacher):
    from tasks import storage

    root = f"file://{tmp_path / 'store'}"
    teacher_uri = storage.join(root, "teacher-model")
    storage.upload_dir(twelve_class_teacher, teacher_uri)
    run = make_run(root, "auto-epochs", {
        "model.base": str(twelve_class_teacher), "data.labels": LABELS, "data.label_aliases": {},
        "train.eval_steps": 50, "train.checkpoint_steps": 50,
        "student.layers": 2, "student.epochs": "auto", "student.batch_size": 16, "student.export": [],
    })
    rows = [(text, i % len(LABELS)) for i, (text, _) in enumerate(read_tsv("train", limit=120, offset=7000))]
    snapshot = write_snapshot(root, "sst2", rows)
    proc = run_stage(["distill", "--run", run, "--snapshot", snapshot, "--teacher", teacher_uri],
                     env={"OMP_NUM_THREADS": "1", "RETRAIN_SCRATCH_DIR": str(tmp_path / "scratch")}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = stage_result(proc.stdout)
    assert result["epochs"] == epochs_for(result["train_rows"]) == 3.0
    assert result["global_step"] == 3 * math.ceil(result["train_rows"] / 16)
