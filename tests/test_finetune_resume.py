"""The fine-tune stage survives SIGKILL: a retry resumes from the newest complete checkpoint in storage (moto S3)
and ends with the same model as a run that was never interrupted (same seed, CPU) -- which also shows that the
optimizer, scheduler, RNG state and position in the epoch were restored, and that training is deterministic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.common import ROOT, make_run, read_tsv, run_stage, stage_result, write_snapshot

ROWS = 120
SETTINGS = {
    "train.epochs": 2,
    "train.batch_size": 4,  # 2 epochs of ~27 steps
    "train.eval_steps": 10,
    "train.checkpoint_steps": 10,  # not a divisor of the epoch length: checkpoints fall mid-epoch
    "train.early_stopping_patience": 100,  # let both runs go the full distance
    "train.learning_rate": 1e-3,
}


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _complete_steps(checkpoint_prefix: str) -> list[int]:
    from tasks.train.checkpoints import remote_checkpoints

    return sorted(remote_checkpoints(checkpoint_prefix))


# One thread per stage process: the test machine's 2 cores are shared, and OpenMP threads that spin-wait for
# each other are 10x slower than one thread on an oversubscribed machine.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def rows():
    return read_tsv("train", limit=ROWS, offset=1000)


def test_finetune_resumes_after_sigkill(s3_env, tmp_path, tiny_model_dir, rows, monkeypatch, one_torch_thread):
    from tasks import storage
    from tasks.train import finetune

    overrides = {**SETTINGS, "model.base": str(tiny_model_dir)}

    # Reference: one uninterrupted run on local storage, in this process (one process start fewer; one torch
    # thread, as the stage subprocesses below have).
    local_root = storage.normalize(str(tmp_path / "ref-store"))
    ref_run = make_run(local_root, "ref", overrides)
    ref_snapshot = write_snapshot(local_root, "sst2", rows)
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch-ref"))
    assert finetune.main(["--run", ref_run, "--snapshot", ref_snapshot]) == 0
    ref_result = storage.read_json(storage.join(ref_run, "finetune", "result.json"))
    assert ref_result["resumed_from_step"] == 0

    # The same training on S3, killed with SIGKILL once a mid-training checkpoint is complete in storage.
    run = make_run(s3_env, "killed", overrides)
    snapshot = write_snapshot(s3_env, "sst2", rows)
    from tasks.spec import load_spec

    checkpoints = storage.join(load_spec(run + "/spec.json").layout.checkpoints, "killed", "finetune")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
           "RETRAIN_SCRATCH_DIR": str(tmp_path / "scratch-1"), **ONE_THREAD}
    proc = subprocess.Popen([sys.executable, "-m", "tasks", "finetune", "--run", run, "--snapshot", snapshot],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not [s for s in _complete_steps(checkpoints)
                                                                       if s >= 20]:
        time.sleep(0.1)  # the moto server shares this process: a busy poll would slow its uploads
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == -signal.SIGKILL, f"finished before the kill: {output[-2000:]}"
    assert not storage.exists(storage.join(run, "finetune", "result.json"))
    complete = _complete_steps(checkpoints)
    assert complete and max(complete) >= 20
    total_steps = ref_result["global_step"]
    assert max(complete) < total_steps

    # The retry runs in a fresh scratch directory (a new pod): everything it resumes comes from S3.
    retry = run_stage(["finetune", "--run", run, "--snapshot", snapshot],
                      env={**ONE_THREAD, "RETRAIN_SCRATCH_DIR": str(tmp_path / "scratch-2")}, timeout=300)
    assert retry.returncode == 0, retry.stdout[-2000:] + retry.stderr[-2000:]
    result = stage_result(retry.stdout)
    resumed = result["resumed_from_step"]
    assert resumed == max(complete)  # the newest complete checkpoint
    assert f"resuming from {checkpoints}/checkpoint-{resumed}" in retry.stderr  # the stage's log lines
    # The step counter continued from the checkpoint instead of starting over...
    steps_logged = [int(line.split("[finetune] step ", 1)[1].split("/", 1)[0]) for line in retry.stderr.splitlines()
                    if "[finetune] step " in line]
    assert steps_logged and min(steps_logged) > resumed
    assert result["global_step"] == total_steps
    # ...and the end state is the uninterrupted run's, bit for bit (weights and holdout metrics).
    assert result["metrics"] == ref_result["metrics"]
    with storage.local_copy(result["model_uri"]) as got_dir:
        got = _weights(got_dir)
    want = _weights(storage.local_path(ref_result["model_uri"]))
    assert got.keys() == want.keys()
    mismatched = [k for k in want if not (got[k] == want[k]).all()]
    assert not mismatched, f"weights differ after resume: {mismatched[:5]}"
    stored = json.loads(storage.read_text(storage.join(run, "finetune", "result.json")))
    assert stored["resumed_from_step"] == resumed
