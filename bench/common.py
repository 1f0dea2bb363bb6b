"""Helpers the model benchmarks and the model-stage tests share: SST-2 rows, a snapshot and a run in storage,
and running a stage command as a subprocess."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RETRAIN_DATA_DIR", ROOT.parent / "shared" / "data"))
SPEC_YAML = ROOT / "include" / "pipelines" / "sst2.yaml"


def read_tsv(split: str, min_words: int = 0, limit: int | None = None, offset: int = 0) -> list[tuple[str, int]]:
    """SST-2 rows (``sentence<TAB>label``); ``min_words`` keeps only rows with at least that many words."""
    rows: list[tuple[str, int]] = []
    with open(DATA / "sst2" / f"{split}.tsv", newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)):
            if i < offset or len(row["sentence"].split()) < min_words:
                continue
            rows.append((row["sentence"].strip(), int(row["label"])))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def holdout_of(text: str, fraction: float = 0.1) -> bool:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def write_golden(root_uri: str, pipeline: str, rows: list[tuple[str, int]]) -> str:
    """A golden set where ingest freezes one (``golden/<pipeline>/<id>/data.parquet``: text, label); its URI."""
    import pandas as pd

    from tasks import storage
    from tasks.data.snapshots import content_hash, parquet_bytes

    frame = pd.DataFrame({"text": [t for t, _ in rows], "label": pd.Series([int(y) for _, y in rows], dtype="int64")})
    uri = storage.join(root_uri, "golden", pipeline, content_hash(frame)[:16])
    storage.write_bytes(storage.join(uri, "data.parquet"), parquet_bytes(frame))
    return uri


def write_snapshot(root_uri: str, pipeline: str, rows: list[tuple[str, int]], holdout_fraction: float = 0.1,
                   golden_rows: list[tuple[str, int]] | None = None) -> str:
    """A snapshot in the format tasks.data.snapshots reads (one part), with a hash-based holdout split; with
    ``golden_rows``, a golden set its manifest names (``golden_uri``), as ingest's snapshots do."""
    import pandas as pd

    from tasks import storage
    from tasks.data.snapshots import parquet_bytes

    frame = pd.DataFrame({
        "text": [t for t, _ in rows],
        "label": [int(y) for _, y in rows],
        "split": ["holdout" if holdout_of(t, holdout_fraction) else "train" for t, _ in rows],
        "batch": "b0001",
    })
    base = storage.join(root_uri, "snapshots", pipeline)
    snapshot_id = hashlib.sha256(parquet_bytes(frame)).hexdigest()[:16]
    storage.write_bytes(storage.join(base, "parts", f"{snapshot_id}.parquet"), parquet_bytes(frame))
    snapshot = storage.join(base, snapshot_id)
    manifest = {"snapshot_id": snapshot_id, "parts": [f"parts/{snapshot_id}.parquet"], "rows": len(frame)}
    if golden_rows is not None:
        manifest["golden_uri"] = write_golden(root_uri, pipeline, golden_rows)
    storage.write_json(storage.join(snapshot, "manifest.json"), manifest)
    return snapshot


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set dotted.path=VALUE`` flags -> spec overrides (VALUE as JSON, else the string)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def with_set_overrides(spec, overrides: dict[str, Any]):
    """``tasks.spec.with_overrides`` with a None value setting the field to null: with_overrides skips None (a
    trigger form's field left empty), so ``--set train.gpu_batch_size=null`` would otherwise be dropped without a
    word, and a typo in its key would go unnoticed."""
    from tasks.spec import with_overrides

    return with_overrides(spec, overrides, keep_none=True)


def make_run(root_uri: str, run_key: str, overrides: dict[str, Any] | None = None) -> str:
    """RUN_URI with a frozen spec.json: the sst2 spec, stored at root_uri, with dotted-path overrides (a None
    value sets the field to null: ``with_set_overrides``)."""
    from tasks import storage
    from tasks.spec import dump, load_spec

    before = os.environ.get("RETRAIN_STORAGE_URI")
    os.environ["RETRAIN_STORAGE_URI"] = root_uri
    try:
        spec = with_set_overrides(load_spec(SPEC_YAML), overrides or {})
    finally:
        if before is None:
            del os.environ["RETRAIN_STORAGE_URI"]
        else:
            os.environ["RETRAIN_STORAGE_URI"] = before
    run = spec.layout.run(run_key)
    storage.write_json(storage.join(run, "spec.json"), dump(spec))
    return run


def run_stage(args: list[str], env: dict[str, str] | None = None, timeout: float = 1800,
              log: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m tasks ARGS`` as a subprocess; with ``log``, its output also streams to that file."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    if log is None:
        return subprocess.run([sys.executable, "-m", "tasks", *args], cwd=ROOT, env=full_env, capture_output=True,
                              text=True, timeout=timeout)
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "tasks", *args], cwd=ROOT, env=full_env, stdout=fh,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, Path(log).read_text(), "")


def run_stage_torchrun(spec, stage: str, args: list[str], gpus: int, logs: Path, env: dict[str, str],
                       timeout: float) -> tuple[subprocess.CompletedProcess, dict[int, str]]:
    """The stage as the pod runs it with ``stages.<stage>.gpus: gpus`` (the stage factory's torchrun command,
    through this interpreter), each rank's output kept under ``logs``: (the process, {rank: its stdout and stderr})."""
    from stage_factory import stage_command
    from tasks.spec import with_overrides

    cmds, stage_args = stage_command(with_overrides(spec, {f"stages.{stage}.gpus": gpus}), stage, args)
    assert cmds[0] == "torchrun" and f"--nproc_per_node={gpus}" in cmds, cmds
    torchrun = [sys.executable, "-m", "torch.distributed.run", *cmds[1:-3], "--log-dir", str(logs),
                "--redirects", "3", *cmds[-3:], *stage_args]
    proc = subprocess.run(torchrun, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    # A rank's output: its stdout (the result), then its stderr (the log lines, tasks.train's progress included).
    stdout = {rank: "".join(next(logs.rglob(f"attempt_0/{rank}/{name}.log")).read_text()
                            for name in ("stdout", "stderr")) for rank in range(gpus)}
    return proc, stdout


def stage_result(stdout: str) -> dict[str, Any]:
    """The result JSON a stage printed (``RESULT {...}``)."""
    return json.loads(stdout.split("RESULT ", 1)[1].splitlines()[0])


def print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)
