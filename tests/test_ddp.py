"""DDP on CPU: the finetune stage under ``torchrun --nproc_per_node=2`` (gloo). Each rank trains on its own half of
every batch, rank 0 alone writes checkpoints, outputs and the result, and two processes with batch b train the
model one process with batch 2b trains: the same batches (``LengthBucketSampler`` buckets global batches) and the
same averaged gradients, so the weights agree up to float summation order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import (
    ROOT, holdout_of, make_run, read_tsv, run_stage, run_stage_torchrun, stage_result, write_snapshot,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH = 8  # one process; 4 per process with two: the same global batch, the same steps
SETTINGS = {
    "train.epochs": 1,
    "train.eval_steps": 5,
    "train.checkpoint_steps": 5,
    "train.learning_rate": 1e-3,
    "model.max_length": 64,
}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_without_dropout(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny test BERT without dropout, whose random masks would differ between one process and two."""
    from transformers import AutoModelForSequenceClassification

    from tasks.train.modeling import load_tokenizer, save_model

    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    return save_model(model, load_tokenizer(tiny_model_dir), tmp_path_factory.mktemp("tiny-no-dropout"))


def _rows_seen(folder: Path, rank: int) -> list[tuple[int, ...]]:
    lines = (folder / f"rank-{rank}.jsonl").read_text().splitlines()
    return [tuple(row) for line in lines for row in json.loads(line)["rows"]]


def _weights(model_uri: str):
    from safetensors.torch import load_file

    from tasks import storage

    return load_file(str(storage.local_path(model_uri) / "model.safetensors"))


def test_two_processes_share_the_batches_and_rank0_alone_writes(tmp_path, tiny_without_dropout):
    import torch

    from tasks import storage
    from tasks.spec import load_spec
    from tasks.train import stage_trainer
    from tasks.train.checkpoints import remote_checkpoints
    from tasks.train.modeling import load_tokenizer

    # Distinct texts, and a whole number of batches of train rows: no rank gets a short or a repeated batch.
    rows = list({t: (t, y) for t, y in read_tsv("train", min_words=4, limit=110, offset=3000)}.values())
    train = [row for row in rows if not holdout_of(row[0])]
    rows = train[:len(train) // BATCH * BATCH] + [row for row in rows if holdout_of(row[0])]
    root = storage.normalize(str(tmp_path / "store"))
    snapshot = write_snapshot(root, "sst2", rows)
    settings = {**SETTINGS, "model.base": str(tiny_without_dropout)}

    single_run = make_run(root, "single", {**settings, "train.batch_size": BATCH})
    single = run_stage(["finetune", "--run", single_run, "--snapshot", snapshot],
                       env={**ONE_THREAD, "RETRAIN_SCRATCH_DIR": str(tmp_path / "scratch-1")}, timeout=300)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-2000:]
    single_result = stage_result(single.stdout)

    ddp_run = make_run(root, "ddp", {**settings, "train.batch_size": BATCH // 2})
    seen, logs = tmp_path / "seen", tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", **ONE_THREAD,
           "RETRAIN_SCRATCH_DIR": str(tmp_path / "scratch-2"), stage_trainer.ROWS_SEEN_ENV: str(seen)}
    # The very command the stage factory gives a 2-GPU pod, with torchrun run from this interpreter and its
    # per-rank logs kept for the assertions below.
    proc, stdout = run_stage_torchrun(load_spec(storage.join(ddp_run, "spec.json")), "finetune",
                                      ["--run", ddp_run, "--snapshot", snapshot], 2, logs, env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:] + stdout[0][-2000:]

    # Rank 0 alone uploaded checkpoints and wrote the result; rank 1 trained in silence.
    result = stage_result(stdout[0])
    assert result["world_size"] == 2 and single_result["world_size"] == 1
    assert "checkpoint checkpoint-" in stdout[0] and "checkpoint checkpoint-" not in stdout[1]
    assert "RESULT" not in stdout[1]
    assert storage.read_json(storage.join(ddp_run, "finetune", "result.json")) == result
    checkpoints = storage.join(load_spec(ddp_run + "/spec.json").layout.checkpoints, "ddp", "finetune")
    assert result["global_step"] in remote_checkpoints(checkpoints)

    # Each rank trained on its own half of the rows, the two together on every train row once.
    want = load_tokenizer(tiny_without_dropout)([t for t, _ in rows if not holdout_of(t)], truncation=True,
                                                 max_length=64)["input_ids"]
    rank0, rank1 = _rows_seen(seen, 0), _rows_seen(seen, 1)
    assert len(rank0) == len(rank1) == len(want) // 2
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == sorted(tuple(ids) for ids in want)

    # The same steps on the same batches as one process with the whole batch: the same model up to float
    # summation order (gloo sums the two halves' gradients), so the same holdout accuracy within one row.
    assert result["global_step"] == single_result["global_step"] == len(want) // BATCH
    got, ref = _weights(result["model_uri"]), _weights(single_result["model_uri"])
    start = _weights(storage.normalize(str(tiny_without_dropout)))
    moved = max(float((ref[k] - start[k]).abs().max()) for k in ref if k in start)
    assert moved > 1e-3  # training changed the weights, so agreeing below is not trivial
    differ = [k for k in ref if not torch.allclose(got[k], ref[k], rtol=1e-3, atol=1e-5)]
    assert not differ, differ[:5]
    holdout_rows = single_result["metrics"]["holdout_rows"]
    assert abs(result["metrics"]["accuracy"] - single_result["metrics"]["accuracy"]) <= 1 / holdout_rows + 1e-9


TIMED_RANKS = '''
import json, os, sys, time
import torch.distributed as dist
from tasks.__main__ import exit_now
from transformers import TrainerControl, TrainerState, TrainingArguments
from tasks.train import checkpoints

dist.init_process_group("gloo")
rank = dist.get_rank()
timed = checkpoints.TimedCheckpoints(minutes=1, ddp_check_every=2)
args = TrainingArguments(output_dir=sys.argv[1], use_cpu=True, report_to="none")
state = TrainerState()
timed.last_save = time.monotonic() - (120 if rank == 0 else 0)  # rank 0's clock says due, rank 1's not yet
saves = []
for step in (1, 2, 3):
    state.global_step, control = step, TrainerControl()
    timed.on_step_end(args, state, control)
    saves.append(control.should_save)
with open(os.path.join(sys.argv[1], f"rank-{rank}.json"), "w") as fh:
    json.dump(saves, fh)
dist.destroy_process_group()
exit_now(0)  # as the stages do: a native thread pool can abort at interpreter teardown (exit -6, seen in CI)
'''


def test_timed_checkpoints_save_on_the_same_step_on_every_rank(tmp_path):
    """Checkpoints by time under DDP: the ranks' clocks differ, and a save on one rank alone would hang the
    others at the save's barriers; rank 0's clock decides for all, on the steps it checks (every 2nd here)."""
    script = tmp_path / "timed_ranks.py"
    script.write_text(TIMED_RANKS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **ONE_THREAD}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    saves = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert saves[0] == saves[1] == [False, True, False]
