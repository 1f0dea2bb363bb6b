"""The teacher cache under ``torchrun --nproc_per_node=2`` on CPU (gloo): each process runs the teacher on its own
share of the train rows, the shares are exchanged, and both processes end with the outputs one process makes
alone; rank 0 alone stores them, and the Trainer's TrainingArguments then runs DDP on the group the pass set up."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bench.common import ROOT, read_tsv
from tasks import storage
from tasks.train import teacher_cache, train_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = [2, 4]  # hidden_states indices kept: a 2-layer student of the 4-layer tiny teacher
ROWS = dict(limit=30, offset=4100)

RANKS = '''
import json, os, sys
import numpy as np, torch
from safetensors.torch import save_file
from tasks.train import arguments, modeling, teacher_cache
from tests.test_teacher_cache_ddp import LAYERS, fields_for, train_split

torch.set_num_threads(1)
model_dir, store, out = sys.argv[1:4]
teacher = modeling.load_classifier(model_dir)
tokenizer = modeling.load_tokenizer(model_dir)
rows = teacher_cache.read_rows(train_split(tokenizer))
got = teacher_cache.stored_or_computed(
    teacher_cache.for_device(teacher, torch.device("cpu")), rows, tokenizer, cache_uri=store,
    fields=fields_for(model_dir, rows), layers=LAYERS, batch_size=4, device=torch.device("cpu"))
rank = int(os.environ["RANK"])
save_file({"logits": got.logits, "hidden": got.hidden, "computed": torch.from_numpy(got.rows_computed)},
          os.path.join(out, f"rank-{rank}.safetensors"))
# The stage's next step: the Trainer's arguments find the group the pass set up and run DDP on it.
args = arguments.training_arguments(os.path.join(out, f"scratch-{rank}"), epochs=1, batch_size=4,
    learning_rate=1e-3, weight_decay=0.0, warmup_ratio=0.0, gradient_accumulation_steps=1, eval_steps=10,
    checkpoint_steps=10, seed=0)
import torch.distributed as dist
summed = torch.tensor([rank + 1])
dist.all_reduce(summed)
with open(os.path.join(out, f"rank-{rank}.json"), "w") as fh:
    json.dump({"world_size": args.world_size, "process_index": args.process_index, "sum": summed.item(),
               "uri": got.uri, "reused": got.reused}, fh)
dist.destroy_process_group()
'''


@pytest.fixture(scope="module")
def spread_teacher_dir(tiny_model_dir, tmp_path_factory):
    """The tiny teacher with its random head scaled up: a random-init head gives near-equal logits for every row."""
    from tasks.train.modeling import load_classifier, load_tokenizer, save_model

    model = load_classifier(tiny_model_dir)
    with torch.no_grad():
        model.classifier.weight.mul_(100.0)
    return save_model(model, load_tokenizer(tiny_model_dir), tmp_path_factory.mktemp("spread-teacher"))


def train_split(tokenizer):
    rows = read_tsv("train", **ROWS)
    return train_data.tokenize(tokenizer, [t for t, _ in rows], [y for _, y in rows], 48)


def fields_for(model_dir, rows) -> dict:
    return teacher_cache.key_fields(teacher=teacher_cache.model_identity(str(model_dir), model_dir),
                                    snapshot_id="test", rows=rows, layers=LAYERS, dtype="float32", max_length=48,
                                    classes=2)


def test_two_processes_share_the_pass_and_end_with_the_single_process_cache(tmp_path, spread_teacher_dir,
                                                                           tiny_tokenizer):
    import json

    from safetensors.torch import load_file

    from tasks.train.modeling import load_classifier

    tiny_model_dir, tiny_teacher = spread_teacher_dir, load_classifier(spread_teacher_dir)

    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    store = storage.normalize(str(tmp_path / "store"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tiny_model_dir), store, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank-{r}.safetensors")) for r in (0, 1)]
    info = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]

    # Each process ran the teacher on its own half of the rows, the two halves together on every row once.
    rows = teacher_cache.read_rows(train_split(tiny_tokenizer))
    computed = [set(r["computed"].tolist()) for r in ranks]
    assert not computed[0] & computed[1] and computed[0] | computed[1] == set(range(len(rows)))
    assert abs(len(computed[0]) - len(computed[1])) <= 1
    # Both ended with the same full cache, that of one process making the whole pass (float tolerance: the
    # batches group other rows, so padding differs).
    single = teacher_cache.compute(teacher_cache.for_device(tiny_teacher, torch.device("cpu")), rows, tiny_tokenizer,
                                   layers=LAYERS, batch_size=4, device=torch.device("cpu"))
    assert set(single.rows_computed.tolist()) == set(range(len(rows)))
    for r in ranks:
        assert torch.equal(r["logits"], ranks[0]["logits"]) and torch.equal(r["hidden"], ranks[0]["hidden"])
        assert torch.allclose(r["logits"], single.logits, rtol=1e-4, atol=1e-4)
        assert r["hidden"].shape == single.hidden.shape == (len(LAYERS), rows.tokens, 32)
        assert torch.allclose(r["hidden"], single.hidden, atol=1e-5)
    # The rows' logits differ by far more than that tolerance, so matching them row by row is not trivial.
    assert single.logits.std(0).min() > 2e-3

    # Rank 0 alone stored one copy, which a later single process reads instead of making the pass.
    assert info[0]["uri"] and info[1]["uri"] is None and not info[0]["reused"]
    assert len([o for o in storage.list_objects(store) if o.uri.endswith("/manifest.json")]) == 1
    again = teacher_cache.stored_or_computed(tiny_teacher, rows, tiny_tokenizer, cache_uri=store,
                                             fields=fields_for(tiny_model_dir, rows), layers=LAYERS, batch_size=4,
                                             device=torch.device("cpu"))
    assert again.reused and again.uri == info[0]["uri"] and torch.equal(again.hidden, ranks[0]["hidden"])
    assert np.array_equal(again.row_crc, rows.crc)

    # The Trainer's arguments ran DDP on the group the pass set up.
    assert [i["world_size"] for i in info] == [2, 2] and [i["process_index"] for i in info] == [0, 1]
    assert info[0]["sum"] == info[1]["sum"] == 3


def test_the_distill_stage_under_torchrun_shares_the_pass_and_stores_it_once(tmp_path, spread_teacher_dir):
    """The very command the stage factory gives a 2-GPU distill pod, on CPU: each rank makes half the pass, both
    train on the full cache (DDP set up by the pass, then used by the Trainer), rank 0 stores it and writes the
    result; a single-process rerun reads the stored copy."""
    from bench.common import make_run, run_stage, run_stage_torchrun, stage_result, write_snapshot
    from tasks.spec import load_spec

    root = storage.normalize(str(tmp_path / "store"))
    snapshot = write_snapshot(root, "sst2", read_tsv("train", limit=72, offset=5200))
    settings = {"model.max_length": 32, "train.eval_steps": 5, "train.checkpoint_steps": 5, "student.layers": 2,
                "student.epochs": 2, "student.batch_size": 8, "student.learning_rate": 1e-3,
                "student.hidden_mse_weight": 0.5, "student.export": [], "student.teacher_cache": "on"}
    run = make_run(root, "ddp", settings)
    args = ["--run", run, "--snapshot", snapshot, "--teacher", str(spread_teacher_dir)]
    logs = tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "RETRAIN_SCRATCH_DIR": str(tmp_path / "scratch")}
    proc, stdout = run_stage_torchrun(load_spec(storage.join(run, "spec.json")), "distill", args, 2, logs, env,
                                      timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:] + stdout[0][-3000:]

    result = stage_result(stdout[0])
    train_rows = result["train_rows"]
    assert result["world_size"] == 2 and result["global_step"] > 0
    assert result["teacher_cache"].startswith(f"on: {train_rows} rows") and not result["teacher_cache_reused"]
    assert result["teacher_cache_uri"] and result["teacher_pass_seconds"] > 0
    for rank in (0, 1):
        share = (train_rows + 1 - rank) // 2  # every 2nd row of the longest-first order, from row `rank`
        assert f"({share} rows on this process of 2)" in stdout[rank]
    assert "stored to" in stdout[0] and "stored to" not in stdout[1] and "RESULT" not in stdout[1]
    manifests = [o for o in storage.list_objects(storage.join(root, "cache", "sst2", "teacher"))
                 if o.uri.endswith("/manifest.json")]
    assert len(manifests) == 1

    rerun = make_run(root, "rerun", settings)
    single = run_stage(["distill", "--run", rerun, "--snapshot", snapshot, "--teacher", str(spread_teacher_dir)],
                       env={"OMP_NUM_THREADS": "1", "RETRAIN_SCRATCH_DIR": str(tmp_path / "scratch-1")}, timeout=240)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-2000:]
    again = stage_result(single.stdout)
    assert again["teacher_cache_reused"] and again["teacher_cache_uri"] == result["teacher_cache_uri"]
    assert again["teacher_pass_seconds"] is None and again["train_rows"] == train_rows
