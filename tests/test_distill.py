"""Distillation on tiny models: layer mapping and initialization, the loss, a frozen teacher, determinism, and
the distill stage end to end on moto S3 with int8 and ONNX exports."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from bench.common import make_run, read_tsv, run_stage, stage_result, write_snapshot
from tasks.errors import SpecInvalid
from tasks.train.distill import DistillTrainer, distillation_loss, init_student, layer_map


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return tiny_teacher


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def test_layer_map_takes_every_kth_layer_ending_at_the_top():
    assert layer_map(6, 3) == [1, 3, 5]
    assert layer_map(12, 6) == [1, 3, 5, 7, 9, 11]
    assert layer_map(6, 2) == [2, 5]
    assert layer_map(4, 4) == [0, 1, 2, 3]
    assert layer_map(6, 1) == [5]
    for bad in (0, 7):
        with pytest.raises(SpecInvalid, match="student.layers"):
            layer_map(6, bad)


def test_student_warm_starts_from_the_champions_student_only_when_it_fits(teacher, tokenizer, tmp_path):
    from tasks import storage
    from tasks.train.distill import starting_student
    from tasks.train.modeling import save_model
    from tasks.spec import load_spec, with_overrides

    from bench.common import SPEC_YAML

    spec = load_spec(SPEC_YAML)
    champion_student, _ = init_student(teacher, 2)
    champion_student.config.id2label = dict(enumerate(spec.data.labels))  # as the finetune stage saves them
    champion_student.config.label2id = {label: i for i, label in enumerate(spec.data.labels)}
    with torch.no_grad():  # make it differ from a fresh teacher-layer copy
        champion_student.classifier.weight.add_(1.0)
    save_model(champion_student, tokenizer, tmp_path / "v1" / "student")
    champion_uri = storage.normalize(str(tmp_path / "v1"))

    warm, mapping, how = starting_student(with_overrides(spec, {"student.layers": 2, "student.init_from": "champion"}),
                                          teacher, champion_uri)
    assert how == "champion v1" and mapping == [1, 3]
    assert all(torch.equal(v, champion_student.state_dict()[k]) for k, v in warm.state_dict().items())

    # A champion from another base model (a different width), with the spec's layers and labels.
    from transformers import BertConfig, BertForSequenceClassification

    wider = BertForSequenceClassification(BertConfig(
        vocab_size=teacher.config.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=2, id2label=dict(enumerate(spec.data.labels)),
        label2id={label: i for i, label in enumerate(spec.data.labels)}))
    save_model(wider, tokenizer, tmp_path / "v2" / "student")
    other_base = storage.normalize(str(tmp_path / "v2"))

    # Another layer count, no champion, init_from: teacher, other labels or another base model: every k-th
    # teacher layer.
    other_labels = {"data.labels": ["neg", "pos"], "data.label_aliases": {}}
    for overrides, champion in (({"student.layers": 2, "student.init_from": "champion", **other_labels}, champion_uri),
                                ({"student.layers": 3, "student.init_from": "champion"}, champion_uri),
                                ({"student.layers": 2, "student.init_from": "champion"}, "none"),
                                ({"student.layers": 2, "student.init_from": "teacher"}, champion_uri),
                                ({"student.layers": 2, "student.init_from": "champion"}, other_base)):
        cold, mapping, how = starting_student(with_overrides(spec, overrides), teacher, champion)
        assert how == "teacher layers" and mapping == layer_map(4, overrides["student.layers"])
        assert torch.equal(cold.classifier.weight, teacher.classifier.weight)


def test_student_is_initialized_from_the_mapped_teacher_layers(teacher):
    student, mapping = init_student(teacher, 2)
    assert mapping == [1, 3]
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for s_idx, t_idx in enumerate(mapping):
        prefix = f"bert.encoder.layer.{s_idx}."
        keys = [k for k in s_state if k.startswith(prefix)]
        assert keys
        for key in keys:
            assert torch.equal(s_state[key], t_state[key.replace(prefix, f"bert.encoder.layer.{t_idx}.")]), key
    for key in ("bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight"):
        assert torch.equal(s_state[key], t_state[key])
    # A layer the student skipped really is absent: its layer 0 differs from the teacher's layer 0.
    assert not torch.equal(s_state["bert.encoder.layer.0.attention.self.query.weight"],
                           t_state["bert.encoder.layer.0.attention.self.query.weight"])


def test_loss_is_alpha_ce_plus_t2_kl():
    import torch.nn.functional as F

    torch.manual_seed(0)
    s, t = torch.randn(8, 3), torch.randn(8, 3)
    y = torch.randint(0, 3, (8,))
    assert torch.allclose(distillation_loss(s, t, y, alpha=1.0, temperature=3.0)["loss"], F.cross_entropy(s, y))
    p_t = torch.softmax(t / 3.0, -1)
    manual_kl = (p_t * (p_t.log() - torch.log_softmax(s / 3.0, -1))).sum(-1).mean() * 9.0
    mixed = distillation_loss(s, t, y, alpha=0.25, temperature=3.0)
    assert torch.allclose(mixed["kl"], manual_kl, atol=1e-6)
    assert torch.allclose(mixed["loss"], 0.25 * F.cross_entropy(s, y) + 0.75 * manual_kl, atol=1e-6)
    # A student equal to the teacher has no soft-target or hidden-state loss left.
    same = distillation_loss(t, t, y, alpha=0.0, temperature=2.0, student_hidden=[t], teacher_hidden=[t],
                             hidden_weight=1.0)
    assert same["loss"].abs() < 1e-6
    far = distillation_loss(t, t, y, alpha=0.0, temperature=2.0, student_hidden=[t + 1], teacher_hidden=[t],
                            hidden_weight=0.5)
    assert torch.allclose(far["loss"], torch.tensor(0.5), atol=1e-6)


def _train_student(teacher, tokenizer, tmp_path, steps: int = 4, seed: int = 7):
    from transformers import DataCollatorWithPadding, set_seed

    from tasks.train import arguments, train_data

    rows = read_tsv("train", limit=48, offset=3000)
    data = train_data.tokenize(tokenizer, [t for t, _ in rows], [y for _, y in rows], 64)
    args = arguments.training_arguments(tmp_path, epochs=1, batch_size=8, learning_rate=5e-3, weight_decay=0.0,
                                        warmup_ratio=0.0, gradient_accumulation_steps=1, eval_steps=100,
                                        checkpoint_steps=100, seed=seed, max_steps=steps, load_best_model_at_end=False,
                                        save_strategy="no", eval_strategy="no")
    set_seed(seed)
    student, mapping = init_student(teacher, 2)
    trainer = DistillTrainer(model=student, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
                             teacher=teacher, alpha=0.5, temperature=2.0, hidden_weight=1.0, mapping=mapping)
    trainer.train()
    return trainer


def test_gradients_reach_the_student_only_and_training_is_deterministic(teacher, tokenizer, tmp_path):
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before, _ = init_student(teacher, 2)
    first = _train_student(teacher, tokenizer, tmp_path / "a")
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    moved = [k for k, v in first.model.state_dict().items() if not torch.equal(v, student_before.state_dict()[k])]
    assert any(".layer." in k for k in moved) and "classifier.weight" in moved
    # Same seed, same data, CPU: the same student, bit for bit; another seed: a different one.
    second = _train_student(teacher, tokenizer, tmp_path / "b")
    other = _train_student(teacher, tokenizer, tmp_path / "c", seed=8)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert any(not torch.equal(v, other.model.state_dict()[k]) for k, v in first.model.state_dict().items())


def test_the_teacher_runs_once_per_evaluation_batch_and_later_evaluations_score_the_same(teacher, tokenizer,
                                                                                          tmp_path):
    """DistillTrainer.teacher_eval_logits: the frozen teacher's logits on the holdout are computed on the first
    evaluation and reused; a second evaluation runs the student only and gives the same loss, and only the passes
    that ran count as inference samples."""
    from tasks.train import train_data

    trainer = _train_student(teacher, tokenizer, tmp_path)
    rows = read_tsv("dev", limit=150)
    holdout = train_data.tokenize(tokenizer, [t for t, _ in rows], [y for _, y in rows], 64)
    calls: list[int] = []
    forward = trainer.teacher.forward
    trainer.teacher.forward = lambda *a, **k: (calls.append(len(k["input_ids"])), forward(*a, **k))[1]

    first = trainer.evaluate(holdout)
    ran_first = sum(calls)
    second = trainer.evaluate(holdout)
    assert ran_first == len(holdout) and sum(calls) == ran_first  # every row once, then never again
    assert trainer.teacher_eval_samples == len(holdout)
    assert second["eval_loss"] == pytest.approx(first["eval_loss"], abs=1e-6)
    # A batch never seen (other rows) runs the teacher.
    trainer.evaluate(holdout.select(range(10)))
    assert sum(calls) == ran_first + 10


def test_distill_stage_on_s3_with_int8_and_onnx_exports(s3_env, tmp_path, tiny_model_dir):
    import numpy as np

    from tasks.train import export
    from tasks import storage
    from tasks.train.modeling import load_classifier, load_tokenizer

    teacher_uri = storage.join(s3_env, "teacher-model")
    storage.upload_dir(tiny_model_dir, teacher_uri)
    run = make_run(s3_env, "distill-run", {
        "model.base": str(tiny_model_dir), "train.eval_steps": 5, "train.checkpoint_steps": 5,
        "student.layers": 2, "student.epochs": 1, "student.batch_size": 16, "student.export": ["int8", "onnx", "onnx_int8"],
        "student.hidden_mse_weight": 0.5,
    })
    snapshot = write_snapshot(s3_env, "sst2", read_tsv("train", limit=96, offset=5000))
    proc = run_stage(["distill", "--run", run, "--snapshot", snapshot, "--teacher", teacher_uri],
                     env={"OMP_NUM_THREADS": "1", "RETRAIN_SCRATCH_DIR": str(tmp_path / "scratch")}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = stage_result(proc.stdout)
    assert result["model_uri"] == f"{run}/distill/model" and result["layer_map"] == [1, 3]
    assert set(result["exports"]) == {"int8", "onnx", "onnx_int8"}
    assert storage.read_json(f"{run}/distill/result.json") == result
    assert storage.exists(f"{run}/distill/curve.png") and storage.exists(f"{run}/distill/metrics.json")
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0 and result["global_step"] > 0

    texts = [t for t, _ in read_tsv("dev", limit=40)]
    with storage.local_copy(result["model_uri"]) as model_dir:
        student = load_classifier(model_dir).eval()
        assert student.config.num_hidden_layers == 2
        enc = load_tokenizer(model_dir)(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.inference_mode():
            want = student(**enc).logits.numpy()
    with storage.local_copy(result["exports"]["onnx"]) as onnx_dir:
        got_onnx = export.OnnxClassifier(onnx_dir, threads=1).logits(texts)
    assert np.allclose(got_onnx, want, atol=1e-4)
    with storage.local_copy(result["exports"]["int8"]) as int8_dir:
        int8 = export.load_int8(int8_dir)
        with torch.inference_mode():
            got_int8 = int8(**enc).logits.numpy()
    # int8 weights are an approximation: close to, but not the same as, the fp32 logits.
    assert np.abs(got_int8 - want).max() < 0.1 and not np.array_equal(got_int8, want)
    with storage.local_copy(result["exports"]["onnx_int8"]) as q_dir, storage.local_copy(result["exports"]["onnx"]) as f_dir:
        got_q = export.OnnxClassifier(q_dir, threads=1).logits(texts)
        q_size, f_size = (Path(d, export.ONNX_FILE).stat().st_size for d in (q_dir, f_dir))
    assert np.abs(got_q - want).max() < 0.1 and not np.array_equal(got_q, want)
    assert q_size < 0.5 * f_size  # int8 weights, embedding tables included
