"""bench/gpu_efficiency.py --smoke, run the way the GPU measurement runs it: ``bench/gpu_measure.sh --dry-run``, the
script's plumbing on CPU, so that the one run a lent GPU gets does not fail on a typo, a flag that no longer exists
or a JSON line not extracted. Every step runs with its own flags plus --smoke (tiny random model) and
--peak-tflops 0.5 (the ceiling step has its flags checked against ../shared/gpu/ceiling.py, which needs CUDA) and
writes $OUT/<step>.json with the figures docs/benchmarks.md ("Not measured") says we will copy. The smoke runs
themselves are then read for what they mean: the real stages and the bare-loop ceiling, the teacher cache off,
on and reused from storage, the BERT-base path at its full length."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from bench.common import ROOT

SCRIPT = ROOT / "bench" / "gpu_measure.sh"
CEILING_PY = ROOT.parent / "shared" / "gpu" / "ceiling.py"  # what pack.sh copies to .gpu/ceiling.py
BENCH_STEPS = ["stage_full_sst2", "stage_bert_base_seq128", "distill_teacher_cache", "stage_sst2_bs32"]
# Per stage (the fine-tune stage at the top level, the distill stage under "distill").
STAGE_KEYS = ["samples_per_second", "tokens_per_second", "mfu", "stage_wall_s", "train_seconds", "eval_seconds",
              "checkpoint_seconds", "checkpoint_upload_seconds", "overhead_fraction", "global_step"]
RUN_KEYS = ["device", "batch_size", "learning_rate", "train_rows", "mean_tokens_per_row", "ceiling_samples_per_second",
            "ceiling_tokens_per_second", "ceiling_step_ms", "ceiling_mfu", "ratio_to_ceiling", "distill_over_finetune",
            "teacher_dev_accuracy", "student_dev_accuracy", "teacher_stopped_at_epoch", "teacher_epochs",
            "teacher_holdout_accuracy", "teacher_selection"]
TEACHER_CACHE_KEYS = ["teacher_cache", "teacher_cache_reused", "teacher_pass_seconds", "teacher_cache_store_seconds",
                      "teacher_cache_read_seconds", "samples_per_second_with_teacher_pass"]


def dry_run(out, **env) -> tuple[subprocess.CompletedProcess, dict[str, dict[str, str]]]:
    env = {**os.environ, "OUT": str(out), "GPU_MEASURE_PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=800)
    with open(out / "steps.tsv", newline="") as fh:
        steps = {row["step"]: row for row in csv.DictReader(fh, delimiter="\t")}
    return proc, steps


def read_json(path) -> dict:
    text = path.read_text().strip()
    assert text, f"{path.name} is empty"
    return json.loads(text)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-measure")
    t0 = time.monotonic()
    proc, steps = dry_run(out)
    print(f"gpu_measure.sh --dry-run: {time.monotonic() - t0:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc, steps


def test_smoke_run_reports_stage_and_ceiling_figures(measured):
    """The distill_teacher_cache step (--compare-teacher-cache): every figure the GPU run reports."""
    out_dir, _, steps = measured
    assert steps["distill_teacher_cache"]["exit"] == "0"
    lines = [json.loads(line) for line in (out_dir / "distill_teacher_cache.log").read_text().splitlines()
             if line.startswith("{")]
    out = lines[-1]

    assert out["bench"] == "gpu_efficiency" and out["smoke"] and out["train_rows"] > 0
    # Issue 12, item 3: the teacher's figures, first as soon as fine-tuning ends, then in the full line. The
    # shipped spec selects on holdout rows drawn like the golden set (dev.tsv, in the snapshot's manifest).
    partial = lines[0]
    assert partial["partial"] == "finetune"
    for key in ("teacher_dev_accuracy", "teacher_stopped_at_epoch", "teacher_selection"):
        assert partial[key] == out[key]
    assert 0 < out["teacher_stopped_at_epoch"] <= out["teacher_epochs"]
    assert out["teacher_selection"]["mode"] == "like_golden" and out["teacher_selection"]["rows"] > 0
    for stage in (out, out["distill"]):
        assert stage["samples_per_second"] > 0 and stage["global_step"] > 0
        assert stage["tokens_per_second"] == pytest.approx(stage["samples_per_second"] * out["mean_tokens_per_row"],
                                                           rel=1e-3)
        assert 0 < stage["mfu"] < 1  # against the 0.5 TFLOP/s peak given
        # Evaluations and checkpoints happen inside the stage's wall time, and take part of it.
        assert 0 < stage["eval_seconds"] + stage["checkpoint_seconds"] < stage["stage_wall_s"]
        assert stage["overhead_fraction"] == pytest.approx(
            (stage["eval_seconds"] + stage["checkpoint_seconds"]) / stage["stage_wall_s"], abs=2e-3)
        assert stage["train_seconds"] <= stage["stage_wall_s"]
    assert out["ceiling_samples_per_second"] > 0 and out["ceiling_step_ms"] > 0
    assert out["ratio_to_ceiling"] == pytest.approx(out["samples_per_second"] / out["ceiling_samples_per_second"],
                                                    abs=2e-3)
    assert out["ceiling_mfu"] == pytest.approx(
        out["mfu"] * out["ceiling_tokens_per_second"] / out["tokens_per_second"], rel=0.05)
    assert 0 <= out["teacher_dev_accuracy"] <= 1 and 0 <= out["student_dev_accuracy"] <= 1

    # Issue 12, item 4: distill rows/s over fine-tune rows/s, the teacher cache's pass counted when it ran (on
    # CPU the spec's auto leaves it off). Then the distill stage with the cache off and on.
    distill = out["distill"]
    assert distill["teacher_cache"] == "off: auto: off on CPU"
    assert distill["samples_per_second_with_teacher_pass"] == pytest.approx(distill["samples_per_second"], rel=1e-3)
    assert out["distill_over_finetune"] == pytest.approx(distill["samples_per_second"] / out["samples_per_second"],
                                                         abs=2e-3)
    off, on = out["teacher_cache_compare"]["off"], out["teacher_cache_compare"]["on"]
    assert off["teacher_cache"].startswith("off: student.teacher_cache: off") and off["teacher_pass_seconds"] is None
    assert on["teacher_cache"].startswith("on: ") and on["teacher_pass_seconds"] > 0
    assert on["samples_per_second_with_teacher_pass"] < on["samples_per_second"]
    assert out["teacher_cache_compare"]["on_over_off"] == pytest.approx(
        on["samples_per_second_with_teacher_pass"] / off["samples_per_second_with_teacher_pass"], abs=2e-3)
    # The rerun reads the copy the "on" run stored (a retried pod would), and makes no pass.
    reused = out["teacher_cache_compare"]["on_reused"]
    assert on["teacher_cache_reused"] is False and on["teacher_cache_store_seconds"] is not None
    assert reused["teacher_cache_reused"] is True and reused["teacher_pass_seconds"] is None
    assert reused["teacher_cache_read_seconds"] > 0 and reused["global_step"] == on["global_step"]
    assert out["teacher_cache_compare"]["reuse_over_pass"] == pytest.approx(
        reused["teacher_cache_read_seconds"] / (on["teacher_pass_seconds"] + on["teacher_cache_store_seconds"]),
        abs=2e-3)


def test_bert_base_mode_runs_stage_and_ceiling_at_the_full_length(measured):
    """--bert-base (the stage_bert_base_seq128 step, here with --smoke: the tiny model, length 64): train rows
    filled to model.max_length, so the stage and the bare loop both run at that sequence length, on the batch the
    stage trained with."""
    out_dir, _, steps = measured
    assert steps["stage_bert_base_seq128"]["exit"] == "0"
    out = read_json(out_dir / "stage_bert_base_seq128.json")
    assert out["bert_base"] and out["train_rows"] > 0
    assert out["mean_tokens_per_row"] == 64 and out["ceiling_seq"] == 64
    assert out["batch_size"] == 8  # CPU: the spec's batch (the smoke spec's 8), no GPU profile
    assert out["samples_per_second"] > 0 and out["ceiling_samples_per_second"] > 0
    assert out["checkpoint_upload_seconds"] <= out["checkpoint_seconds"]  # synchronous on CPU: inside it


def script_bench_flags() -> dict[str, list[str]]:
    """{step: flags} of the script's ``bench NAME SECONDS FLAGS...`` lines, as the GPU run passes them."""
    text = re.sub(r"\\\n\s*", "", SCRIPT.read_text())  # line continuations
    return {m.group(1): shlex.split(m.group(2)) for m in re.finditer(r"^bench (\S+) \d+ (.*)$", text, re.M)}


def test_every_step_ran_with_its_flags_and_exit_0(measured):
    out, proc, steps = measured
    gpu_flags = script_bench_flags()
    assert sorted(gpu_flags) == sorted(BENCH_STEPS)
    assert list(steps) == ["ceiling_minilm_bs256", *BENCH_STEPS]
    for name in BENCH_STEPS:
        assert steps[name]["exit"] == "0", (out / f"{name}.log").read_text()[-3000:]
        # The GPU run's command line as the script writes it, with --smoke --peak-tflops 0.5 appended.
        line = next(line for line in proc.stdout.splitlines() if line.startswith(f"== {name} (at most"))
        ran = shlex.split(line.split("): ", 1)[1])
        assert ran == [sys.executable, "bench/gpu_efficiency.py", *gpu_flags[name], "--smoke", "--peak-tflops", "0.5"]
        assert "exit 0 after" in (out / f"{name}.log").read_text()
    assert "dry run on CPU" in (out / "device.txt").read_text()
    if CEILING_PY.exists():
        assert steps["ceiling_minilm_bs256"]["exit"] == "0"
        ceiling = read_json(out / "ceiling_minilm_bs256.json")
        assert ceiling["dry_run"] and ceiling["flags_checked"] == ["--model", "minilm", "--bs", "256", "--seq", "32"]
    else:  # a clone without ../shared/gpu: said so, not counted as a failure
        assert steps["ceiling_minilm_bs256"]["exit"] == "skipped"
        assert "is absent" in (out / "ceiling_minilm_bs256.log").read_text()


def test_each_step_json_has_the_figures_the_docs_copy(measured):
    out, _, _ = measured
    for name in BENCH_STEPS:
        result = read_json(out / f"{name}.json")
        assert "partial" not in result, f"{name}: the step ended before its full line"
        for key in RUN_KEYS:
            assert key in result, f"{name}: no {key}"
        for stage in (result, result["distill"]):
            for key in STAGE_KEYS:
                assert key in stage, f"{name}: no {key}"
            assert stage["samples_per_second"] > 0 and stage["global_step"] > 0
            assert 0 <= stage["overhead_fraction"] < 1 and stage["stage_wall_s"] > 0
            assert stage["mfu"] > 0  # against the dry run's --peak-tflops 0.5
        for key in TEACHER_CACHE_KEYS:
            assert key in result["distill"], f"{name}: no distill.{key}"
        assert result["ratio_to_ceiling"] > 0 and result["distill_over_finetune"] > 0 and result["ceiling_mfu"] > 0
        assert 0 <= result["teacher_dev_accuracy"] <= 1 and 0 <= result["student_dev_accuracy"] <= 1
        assert 0 < result["teacher_stopped_at_epoch"] <= result["teacher_epochs"]
        assert result["teacher_selection"]["rows"] > 0

    # stage_sst2_bs32's --set ...=null reach the spec (the GPU profile's batch off); the other steps keep auto.
    for name in BENCH_STEPS:
        result, profile = read_json(out / f"{name}.json"), None if name == "stage_sst2_bs32" else "auto"
        assert result["gpu_batch_size"] == profile and result["student_gpu_batch_size"] == profile, name

    bert = read_json(out / "stage_bert_base_seq128.json")
    assert bert["bert_base"] and bert["ceiling_seq"] == bert["mean_tokens_per_row"]

    compare = read_json(out / "distill_teacher_cache.json")["teacher_cache_compare"]
    assert compare["off"]["teacher_pass_seconds"] is None and compare["on"]["teacher_pass_seconds"] > 0
    assert compare["on"]["teacher_cache_store_seconds"] is not None  # stored: under the step's 4 GiB limit
    reused = compare["on_reused"]
    assert reused["teacher_cache_reused"] is True and reused["teacher_cache_read_seconds"] > 0
    assert compare["on_over_off"] > 0 and compare["reuse_over_pass"] > 0
    # A line after each of the three runs, so a step that runs out of time keeps the runs done.
    partials = [json.loads(line) for line in (out / "distill_teacher_cache.log").read_text().splitlines()
                if line.startswith("{") and '"partial": "teacher_cache_compare"' in line]
    assert [sorted(p["teacher_cache_compare"]) for p in partials] == [
        ["off"], ["off", "on"], ["off", "on", "on_reused"]]


def test_finetune_partial_line_comes_apart(measured):
    """stage_full_sst2_finetune.json: issue 12's item 3 and the fine-tune stage's rate, kept even when the step
    runs out of time in distill; the same figures as in the full line."""
    out, _, _ = measured
    partial = read_json(out / "stage_full_sst2_finetune.json")
    full = read_json(out / "stage_full_sst2.json")
    assert partial["partial"] == "finetune"
    for key in ("teacher_dev_accuracy", "teacher_stopped_at_epoch", "teacher_epochs", "teacher_holdout_accuracy",
                "teacher_selection", "batch_size", "learning_rate", "samples_per_second", "eval_seconds",
                "checkpoint_seconds", "checkpoint_upload_seconds", "train_seconds"):
        assert partial[key] == full[key], key
    assert partial["samples_per_second"] > 0 and partial["finetune_wall_s"] > 0


def test_a_flag_ceiling_py_lacks_fails_its_step(tmp_path):
    """The dry run's ceiling check can fail: a ceiling.py without --seq. GPU_MEASURE_STEPS runs that step alone."""
    bad = tmp_path / "ceiling.py"
    bad.write_text('import argparse\np = argparse.ArgumentParser()\np.add_argument("--model")\n'
                   'p.add_argument("--bs", type=int)\ndef make(name):\n    return name == "minilm"\n')
    out = tmp_path / "out"
    proc, steps = dry_run(out, GPU_CEILING_PY=str(bad), GPU_MEASURE_STEPS="ceiling_minilm_bs256")
    assert proc.returncode == 1
    assert steps["ceiling_minilm_bs256"]["exit"] == "1"
    assert "defines no --seq" in (out / "ceiling_minilm_bs256.log").read_text()
    assert all(steps[name]["exit"] == "not run" for name in BENCH_STEPS)


def test_set_null_sets_the_field_and_checks_its_key():
    """``--set key=null`` (parse_overrides gives None) sets the field to null; tasks.spec.with_overrides alone skips a
    None value (a trigger form's empty field), which dropped stage_sst2_bs32's batch override without a word."""
    from bench.common import SPEC_YAML, parse_overrides, with_set_overrides
    from tasks.spec import SpecError, load_spec

    spec = load_spec(SPEC_YAML)
    assert spec.train.gpu_batch_size == "auto"
    overrides = parse_overrides(["train.gpu_batch_size=null", "student.export=[]", "train.batch_size=16"])
    changed = with_set_overrides(spec, overrides)
    assert changed.train.gpu_batch_size is None and changed.student.export == [] and changed.train.batch_size == 16
    assert changed.student.gpu_batch_size == "auto"
    with pytest.raises(SpecError, match="gpu_batch_sise"):
        with_set_overrides(spec, parse_overrides(["train.gpu_batch_sise=null"]))


def test_the_gpu_branch_sources_setup_and_passes_the_flags_alone(tmp_path):
    """The script as it runs on the GPU machine (no --dry-run), with stand-ins: a setup.sh that puts a fake
    nvidia-smi and a python3 that prints its argv as JSON first on PATH. Each step's command is then its JSON:
    .gpu/ceiling.py and bench/gpu_efficiency.py with the script's flags and nothing added (an empty --smoke array
    under set -u, a path or quoting slip would show here, not on the GPU)."""
    bin_dir, gpu_dir, out = tmp_path / "bin", tmp_path / "gpu", tmp_path / "out"
    bin_dir.mkdir()
    gpu_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text('#!/usr/bin/env bash\necho "NVIDIA H200, 143771 MiB, 570.00"\n')
    (bin_dir / "python3").write_text(
        f'#!/usr/bin/env bash\nexec {sys.executable} -c '
        '\'import json, sys; print(json.dumps({"argv": sys.argv[1:]}))\' "$@"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (gpu_dir / "setup.sh").write_text(f'export PATH={bin_dir}:$PATH\necho "stand-in setup.sh"\n')
    env = {**os.environ, "OUT": str(out), "GPU_MEASURE_GPU_DIR": str(gpu_dir)}
    env.pop("GPU_MEASURE_DRY_RUN", None)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stand-in setup.sh" in (out / "setup.log").read_text()
    assert "NVIDIA H200" in (out / "device.txt").read_text()
    with open(out / "steps.tsv", newline="") as fh:
        steps = {row["step"]: row["exit"] for row in csv.DictReader(fh, delimiter="\t")}
    assert steps == {name: "0" for name in ["ceiling_minilm_bs256", *BENCH_STEPS]}
    assert read_json(out / "ceiling_minilm_bs256.json")["argv"] == [
        str(gpu_dir / "ceiling.py"), "--model", "minilm", "--bs", "256", "--seq", "32"]
    for name, flags in script_bench_flags().items():
        assert read_json(out / f"{name}.json")["argv"] == ["bench/gpu_efficiency.py", *flags], name
