"""The training runner's contract beyond a full run: its holdout metrics are tasks.metrics' (macro-F1 over every
declared class), and bad inputs fail with the right error kind before any training."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bench.common import make_run, read_tsv, write_snapshot
from tasks import metrics, storage
from tasks.errors import SpecInvalid


def test_holdout_metrics_average_over_every_declared_class():
    from transformers import EvalPrediction

    from tasks.train import stage_trainer

    labels = np.array([0, 0, 1, 1, 1])
    logits = np.array([[2.0, 0, 0], [0, 1.0, 0], [0, 3.0, 0], [0, 1.0, 0], [1.0, 0, 0]])  # class 2 never occurs
    got = stage_trainer.metrics_for(3)(EvalPrediction(predictions=logits, label_ids=labels))
    want = metrics.classification_metrics(labels, logits.argmax(-1), 3)
    assert got == want
    # F1 0.5 and 2/3 for the classes present, 0 for the declared class that never occurs (averaging over the
    # classes present only, as the Trainer's old metric did, gave 0.58).
    assert got["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)


@pytest.fixture
def run_and_snapshot(tmp_path, tiny_model_dir):
    root = storage.normalize(str(tmp_path / "store"))
    run = make_run(root, "bad-inputs", {"model.base": str(tiny_model_dir)})
    return run, write_snapshot(root, "sst2", read_tsv("train", limit=40))


def test_a_missing_snapshot_is_an_invalid_argument(run_and_snapshot, monkeypatch, tmp_path):
    from tasks.train import finetune

    run, snapshot = run_and_snapshot
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    with pytest.raises(SpecInvalid, match="--snapshot"):
        finetune.main(["--run", run, "--snapshot", snapshot + "-gone", "--champion", "none"])


def test_a_missing_teacher_is_an_invalid_argument(run_and_snapshot, monkeypatch, tmp_path):
    from tasks.train import distill

    run, snapshot = run_and_snapshot
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    with pytest.raises(SpecInvalid, match="--teacher"):
        distill.main(["--run", run, "--snapshot", snapshot, "--teacher", str(tmp_path / "no-teacher")])
    assert not storage.exists(storage.join(run, "distill", "result.json"))


def test_gradient_accumulation_trains_as_one_bigger_batch(tiny_model_dir, tmp_path, one_torch_thread):
    """Two accumulated batches of 4 make the optimizer step one batch of 8 makes: the same rows (the sampler
    buckets whole steps) and the mean of the two losses (a per-batch mean loss is divided by the steps)."""
    import torch
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, set_seed

    from tasks.train import arguments, modeling, stage_trainer, train_data

    tokenizer = modeling.load_tokenizer(tiny_model_dir)
    rows = read_tsv("train", limit=32, offset=4000)
    data = train_data.tokenize(tokenizer, [t for t, _ in rows], [y for _, y in rows], 64)

    def train(batch_size: int, accumulation: int):
        args = arguments.training_arguments(
            tmp_path / f"out-{accumulation}", epochs=1, batch_size=batch_size, learning_rate=1e-3, weight_decay=0.0,
            warmup_ratio=0.0, gradient_accumulation_steps=accumulation, eval_steps=1000, checkpoint_steps=1000,
            seed=5, save_strategy="no", eval_strategy="no", load_best_model_at_end=False)
        set_seed(5)
        model = AutoModelForSequenceClassification.from_pretrained(  # no dropout: its masks would differ
            str(tiny_model_dir), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        trainer = stage_trainer.quiet_trainer(Trainer, model=model, args=args, train_dataset=data,
                                              processing_class=tokenizer,
                                              data_collator=DataCollatorWithPadding(tokenizer))
        trainer.train()
        assert trainer.state.global_step == 4
        return trainer.model.state_dict()

    whole, accumulated = train(8, 1), train(4, 2)
    before = modeling.load_classifier(tiny_model_dir).state_dict()
    assert not torch.allclose(whole["classifier.weight"], before["classifier.weight"])
    differ = [k for k in whole if not torch.allclose(whole[k], accumulated[k], rtol=1e-3, atol=1e-5)]
    assert not differ, differ[:5]


def _tiny_trainer(tiny_model_dir, tmp_path, callbacks, **arg_overrides):
    """The stages' Trainer (stage_trainer.make_trainer) on the tiny model: 32 rows, batch 2 -> 16 steps."""
    from transformers import Trainer, set_seed

    from tasks.train import arguments, modeling, stage_trainer, train_data

    tokenizer = modeling.load_tokenizer(tiny_model_dir)
    rows = read_tsv("train", limit=32, offset=4000)
    data = train_data.tokenize(tokenizer, [t for t, _ in rows], [y for _, y in rows], 64)
    args = arguments.training_arguments(
        tmp_path / "scratch", epochs=1, batch_size=2, learning_rate=1e-3, weight_decay=0.0, warmup_ratio=0.0,
        gradient_accumulation_steps=1, seed=5, **arg_overrides)
    set_seed(5)
    return stage_trainer.make_trainer(Trainer, args=args, tokenizer=tokenizer, n_classes=2, patience=100,
                                      callbacks=callbacks, model=modeling.load_classifier(tiny_model_dir),
                                      train_dataset=data, eval_dataset=data.select(range(8)))


class _SaveLog:
    """The steps the Trainer saved at, and a fake clock that moves one minute per optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        log = self
        self.saved, self.minute = [], 0

        class Recorder(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                log.minute += 1

            def on_save(self, args, state, control, **kwargs):
                log.saved.append(state.global_step)

        self.callback = Recorder()

    def monotonic(self) -> float:
        return self.minute * 60.0


def _timed_trainer(tiny_model_dir, tmp_path, clock):
    """A tiny Trainer checkpointing every 3 (fake-clock) minutes, uploaded in the background to local storage."""
    from tasks.train import checkpoints
    from tasks.train.paths import StagePaths

    store = storage.normalize(str(tmp_path / "store"))
    paths = StagePaths(run_uri=store, stage="finetune", run_key="r", out_uri=store,
                       checkpoint_uri=storage.join(store, "checkpoints"), scratch=tmp_path / "scratch")
    sync = checkpoints.CheckpointSync(paths, background=True)
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, [clock.callback, checkpoints.TimedCheckpoints(3), sync],
                            eval_steps=1000, checkpoint_steps=1, checkpoint_minutes=3)
    return store, paths, sync, trainer


def test_checkpoints_by_time_upload_in_the_background(tiny_model_dir, tmp_path, monkeypatch, one_torch_thread):
    """checkpoint_minutes=3 with a clock that moves a minute per step: saves at steps 3, 6, 9, ... and none by
    step count (step 16: the evaluation at the end, the first and so a new best); each upload runs in a thread,
    COMPLETE comes last, and storage ends as a mirror of the newest and the best local checkpoints."""
    from tasks.train import checkpoints

    clock = _SaveLog()
    monkeypatch.setattr(checkpoints.time, "monotonic", clock.monotonic)
    store, paths, sync, trainer = _timed_trainer(tiny_model_dir, tmp_path, clock)
    assert trainer.args.save_strategy == "best"
    trainer.train()
    sync.wait()
    assert trainer.state.global_step == 16
    assert clock.saved == [3, 6, 9, 12, 15, 16]
    remote = checkpoints.remote_checkpoints(paths.checkpoint_uri)  # complete ones only
    local = sorted(checkpoints.step_of(p) for p in (tmp_path / "scratch").glob("checkpoint-*"))
    assert sorted(remote) == local == [15, 16]
    every = checkpoints.remote_checkpoints(paths.checkpoint_uri, complete_only=False)
    assert every == remote
    sent = {o.uri.rsplit("/", 1)[-1] for o in storage.list_objects(remote[16])}
    assert sent == {p.name for p in (tmp_path / "scratch" / "checkpoint-16").iterdir()} | {"COMPLETE"}
    assert sync.upload_seconds >= 0 and sync.seconds >= 0


def test_checkpoints_by_time_still_save_every_new_best(tiny_model_dir, tmp_path, monkeypatch, one_torch_thread):
    """With saves by time far apart, the Trainer still saves each new best evaluation, so
    load_best_model_at_end finds the best model; on CPU by default the saving stays by step count."""
    from tasks.train import arguments, checkpoints

    clock = _SaveLog()
    monkeypatch.setattr(checkpoints.time, "monotonic", clock.monotonic)
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, [clock.callback, checkpoints.TimedCheckpoints(1000)],
                            eval_steps=4, checkpoint_steps=4, checkpoint_minutes=1000)
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    assert [e["step"] for e in evals] == [4, 8, 12, 16]
    best_so_far, new_bests = -1.0, []
    for e in evals:
        if e["eval_accuracy"] > best_so_far:
            best_so_far, new_bests = e["eval_accuracy"], new_bests + [e["step"]]
    assert clock.saved == new_bests
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{new_bests[-1]}")
    assert arguments.checkpoint_minutes(None) is None  # CPU: by steps, as before
    assert arguments.checkpoint_minutes(5.0) == 5.0


def test_auto_gpu_batch_follows_memory_length_and_rows():
    from tasks.train import batch_plan

    gib = 2**30
    assert batch_plan.auto_gpu_batch(80 * gib, 128, 1_000_000, 32) == 256  # the H100 reference point
    assert batch_plan.auto_gpu_batch(141 * gib, 128, 1_000_000, 32) == 256  # H200: 451 -> the power of two below
    assert batch_plan.auto_gpu_batch(80 * gib, 512, 1_000_000, 32) == 64  # 4x the length, a quarter of the batch
    assert batch_plan.auto_gpu_batch(24 * gib, 128, 1_000_000, 32) == 64  # 76.8 -> 64
    assert batch_plan.auto_gpu_batch(640 * gib, 64, 1_000_000, 32) == 1024  # capped
    assert batch_plan.auto_gpu_batch(80 * gib, 128, 4000, 32) == 64  # >= 50 steps per epoch: 4000 / 50 = 80 -> 64
    assert batch_plan.auto_gpu_batch(8 * gib, 512, 1_000_000, 32) == 32  # never below the spec's batch


def test_batch_plan_scales_the_learning_rate_and_steps_on_a_gpu_only():
    from tasks.train import batch_plan

    spec = dict(batch_size=32, learning_rate=5e-5, eval_steps=200, checkpoint_steps=400, lr_scaling="sqrt",
                max_length=128, train_rows=67_000)
    cpu = batch_plan.plan_batches(**spec, gpu_batch_size="auto", total_memory_bytes=None)
    assert cpu == batch_plan.BatchPlan(32, 5e-5, 200, 400)
    assert batch_plan.plan_batches(**spec, gpu_batch_size=None, total_memory_bytes=80 * 2**30) == cpu
    gpu = batch_plan.plan_batches(**spec, gpu_batch_size="auto", total_memory_bytes=80 * 2**30)
    assert gpu.batch_size == 256
    assert gpu.learning_rate == pytest.approx(5e-5 * 8**0.5)  # sqrt(256 / 32)
    assert (gpu.eval_steps, gpu.checkpoint_steps) == (200, 400)  # the spec's optimizer steps
    pinned = batch_plan.plan_batches(**{**spec, "lr_scaling": "linear"}, gpu_batch_size=128,
                                     total_memory_bytes=80 * 2**30)
    assert (pinned.batch_size, pinned.learning_rate) == (128, pytest.approx(2e-4))
    assert batch_plan.plan_batches(**{**spec, "lr_scaling": "none"}, gpu_batch_size=128,
                                   total_memory_bytes=80 * 2**30).learning_rate == 5e-5


def test_cpu_training_arguments_are_as_before_the_gpu_profile(monkeypatch):
    """tests/cpu_training_arguments.json: the stage's TrainingArguments on CPU (spec defaults) from the code before
    the GPU profile (time-based checkpoints, auto batch, background upload) was added; CPU runs must not change.
    The machine is made to look GPU-less, so the comparison runs (and means the same) on any machine."""
    import json
    from pathlib import Path

    import torch

    from tasks.spec import TrainSpec
    from tasks.train import arguments, batch_plan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    hp = TrainSpec(learning_rate=5e-5, epochs=1.0)  # the numbers that were the defaults before `auto`
    minutes = arguments.checkpoint_minutes(hp.checkpoint_minutes)
    plan = batch_plan.plan_batches(
        batch_size=hp.batch_size, learning_rate=hp.learning_rate, eval_steps=hp.eval_steps,
        checkpoint_steps=hp.checkpoint_steps, gpu_batch_size=hp.gpu_batch_size, lr_scaling=hp.gpu_lr_scaling,
        max_length=128, train_rows=67_000, total_memory_bytes=batch_plan.cuda_memory_bytes())
    args = arguments.training_arguments(
        "/tmp/OUT", epochs=hp.epochs, batch_size=plan.batch_size, learning_rate=plan.learning_rate,
        weight_decay=hp.weight_decay, warmup_ratio=hp.warmup_ratio,
        gradient_accumulation_steps=hp.gradient_accumulation_steps, eval_steps=plan.eval_steps,
        checkpoint_steps=plan.checkpoint_steps, seed=hp.seed, checkpoint_minutes=minutes)
    now = json.loads(json.dumps(args.to_dict(), default=str))
    before = json.loads((Path(__file__).parent / "cpu_training_arguments.json").read_text())
    assert {k: v for k, v in now.items() if before.get(k) != v} == {}
    # The file was recorded under the pinned transformers; another release (the GPU image's 5.17) has other
    # fields, whose values the line above still compares.
    import transformers
    pinned = re.search(r"^transformers==(\S+)", (Path(__file__).parents[1] / "requirements.txt").read_text(), re.M)
    if transformers.__version__ == pinned.group(1):
        assert now.keys() == before.keys()


def test_gpu_features_use_fp16_where_bf16_is_only_emulated(monkeypatch):
    """A V100 or T4 (compute capability 7.x): torch.cuda.is_bf16_supported() with its default
    including_emulation=True says yes there; the stages train in fp16 instead, with no TF32. An H100 (9.0): bf16
    and TF32. The CUDA queries are faked (no GPU here); the rule is what is checked."""
    import torch

    from tasks.train import arguments

    def machine(major: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (major, 0))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: major >= 8 or including_emulation)

    machine(7)
    features = arguments.device_features()
    assert not arguments.cuda_bf16()
    assert (features["bf16"], features["fp16"], features["tf32"]) == (False, True, False)
    machine(9)
    features = arguments.device_features()
    assert arguments.cuda_bf16()
    assert (features["bf16"], features["fp16"], features["tf32"]) == (True, False, True)
    assert features["optim"] == "adamw_torch_fused" and features["dataloader_pin_memory"]


def test_a_background_upload_that_dies_leaves_no_complete_checkpoint(tiny_model_dir, tmp_path, monkeypatch,
                                                                      one_torch_thread):
    """The upload of checkpoint-6 fails half-way in its thread: training stops with that error at the next
    save, storage holds checkpoint-6 without COMPLETE, and a retry's restore resumes from checkpoint-3 and
    deletes the half upload (what a process killed mid-upload leaves behind, too)."""
    from pathlib import Path

    from tasks.train import checkpoints

    clock = _SaveLog()
    monkeypatch.setattr(checkpoints.time, "monotonic", clock.monotonic)
    real_sync_dir = storage.sync_dir

    def dies_half_way(local_dir, prefix_uri):
        if Path(local_dir).name != "checkpoint-6":
            return real_sync_dir(local_dir, prefix_uri)
        first = sorted(p for p in Path(local_dir).iterdir() if p.is_file())[0]
        storage.upload_file(first, storage.join(prefix_uri, first.name))
        raise OSError("connection reset during the upload")

    monkeypatch.setattr(storage, "sync_dir", dies_half_way)
    store, paths, sync, trainer = _timed_trainer(tiny_model_dir, tmp_path, clock)
    with pytest.raises(OSError, match="connection reset"):
        trainer.train()
    assert trainer.state.global_step == 9  # the next save waited for the upload and got its error
    assert sorted(checkpoints.remote_checkpoints(paths.checkpoint_uri)) == [3]
    assert sorted(checkpoints.remote_checkpoints(paths.checkpoint_uri, complete_only=False)) == [3, 6]

    listed = []
    list_objects = storage.list_objects
    monkeypatch.setattr(storage, "list_objects", lambda prefix: listed.append(prefix) or list_objects(prefix))
    newest = checkpoints.restore(paths)
    assert newest == str(paths.scratch / "checkpoint-3")
    assert listed == [paths.checkpoint_uri]  # one listing serves the deletes and the downloads
    monkeypatch.setattr(storage, "list_objects", list_objects)
    assert sorted(checkpoints.remote_checkpoints(paths.checkpoint_uri, complete_only=False)) == [3]


def test_stratified_sample_keeps_each_label_share():
    from collections import Counter

    from tasks.train import selection

    labels = [0] * 60 + [1] * 30 + [2] * 9 + [3]  # 60/30/9/1 %
    picked = selection.stratified_sample(labels, 20, seed=1)
    assert len(picked) == 20 and picked == sorted(set(picked))
    assert Counter(labels[i] for i in picked) == {0: 12, 1: 6, 2: 1, 3: 1}  # 1.8 -> 1 and the lone row of 3
    assert picked == selection.stratified_sample(labels, 20, seed=1)  # seeded
    assert picked != selection.stratified_sample(labels, 20, seed=2)
    assert selection.stratified_sample(labels, 500, seed=1) == list(range(100))


def test_model_selection_on_a_stratified_holdout_sample(tiny_model_dir, tmp_path, monkeypatch, one_torch_thread):
    """train.selection_rows: the evaluations during training run on a stratified sample of the holdout split;
    the final metrics on the whole split."""
    from tasks.train import finetune

    root = storage.normalize(str(tmp_path / "store"))
    run = make_run(root, "selection", {"model.base": str(tiny_model_dir), "train.selection_rows": 10,
                                       "train.batch_size": 16, "train.eval_steps": 5, "train.checkpoint_steps": 5,
                                       "train.epochs": 1, "model.max_length": 32})
    rows = read_tsv("train", limit=300)
    snapshot = write_snapshot(root, "sst2", rows)
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    assert finetune.main(["--run", run, "--snapshot", snapshot, "--champion", "none"]) == 0
    result = storage.read_json(storage.join(run, "finetune", "result.json"))
    holdout = result["metrics"]["holdout_rows"]
    assert holdout == 300 - result["train_rows"] and holdout > 10
    assert result["selection"] == {"mode": "holdout", "rows": 10}  # a 10-row sample of the split
    history = storage.read_json(result["metrics_uri"])["log_history"]
    assert [e["step"] for e in history if "eval_accuracy" in e][:2] == [5, 10]
    # Each evaluation during training scored 10 rows: its accuracy is a multiple of 1/10; the last entry is the
    # final evaluation, on the whole split.
    evals = [e["eval_accuracy"] for e in history if "eval_accuracy" in e]
    assert all(abs(a * 10 - round(a * 10)) < 1e-9 for a in evals[:-1])
    assert evals[-1] == pytest.approx(result["metrics"]["accuracy"])


def test_tf32_set_by_transformers_stays_readable_for_torch_compile():
    """What TrainingArguments does on an Ampere GPU (TF32 through torch's new fp32_precision API), then
    arguments.mirror_tf32_to_legacy_flags: the legacy readers torch.compile's inductor uses no longer raise, and both
    APIs say TF32. In a subprocess: TF32 state is process-wide."""
    import subprocess
    import sys

    from conftest import ROOT

    code = """
import torch
from tasks.train import arguments, train_data
torch.backends.fp32_precision = "tf32"  # transformers.utils.import_utils.enable_tf32(True) on torch >= 2.9
try:
    torch.get_float32_matmul_precision()
except RuntimeError as exc:
    assert "mix of the legacy and new APIs" in str(exc), exc
else:
    raise SystemExit("this torch reads the legacy flag after a new-API write: the mirror is not needed")
arguments.mirror_tf32_to_legacy_flags()
print(torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
      torch.backends.cuda.matmul.fp32_precision)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["high", "True", "True", "tf32"]


def test_the_train_data_report_names_cut_rows_and_classes_without_rows(tiny_model_dir):
    """Long documents cut at model.max_length, and a declared class with no train row: both go unseen otherwise
    (a man-page corpus had every row cut at 128 of a median 991 tokens; a first night without any 'fear' row
    promoted a model that cannot predict it)."""
    from tasks.train import modeling, train_data

    tokenizer = modeling.load_tokenizer(tiny_model_dir)
    long_text = " ".join(["a rather long sentence about nothing in particular"] * 8)
    data = train_data.tokenize(tokenizer, [long_text] * 3 + ["short one"], [0, 1, 0, 1], 16)
    report = train_data.train_data_report(data, ["joy", "sadness", "fear"], 16)
    assert report["rows"] == 4 and report["rows_at_max_length"] == 3 and report["share_at_max_length"] == 0.75
    assert report["classes_without_rows"] == ["fear"]
    warnings = train_data.train_data_warnings(report)
    assert len(warnings) == 2 and "3 of 4 train rows (75%) reach model.max_length 16" in warnings[0]
    assert "['fear']" in warnings[1]
    short = train_data.tokenize(tokenizer, ["short one", "another short one", long_text], [0, 1, 1], 16)
    fine = train_data.train_data_report(short.select([0, 1]), ["joy", "sadness"], 16)  # a select-ed split too
    assert (fine["rows"], fine["rows_at_max_length"], fine["classes_without_rows"]) == (2, 0, [])
    assert train_data.train_data_warnings(fine) == []


def test_the_best_models_holdout_metrics_are_those_logged_at_its_step():
    """runner.best_evaluation: with model selection on the whole holdout split, the best checkpoint's metrics are
    the evaluation logged at its step (not a second pass over the same rows); None where the log lacks it."""
    from types import SimpleNamespace

    from tasks.train.runner import best_evaluation

    log_history = [{"loss": 0.6, "step": 100}, {"eval_loss": 0.5, "eval_accuracy": 0.8, "step": 100},
                   {"eval_loss": 0.4, "eval_accuracy": 0.9, "eval_macro_f1": 0.89, "step": 200},
                   {"eval_loss": 0.45, "eval_accuracy": 0.85, "step": 250}]

    def trainer(best):
        return SimpleNamespace(state=SimpleNamespace(best_model_checkpoint=best, log_history=log_history))

    assert best_evaluation(trainer("/scratch/finetune/checkpoint-200"), "finetune") == log_history[2]
    assert best_evaluation(trainer("/scratch/finetune/checkpoint-300"), "finetune") is None  # not in this log
    assert best_evaluation(trainer(None), "finetune") is None  # no checkpoint: evaluate the model as it is
