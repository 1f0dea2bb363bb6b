"""Helpers for the data-side tests (ingest, drift): a spec on any storage root, landing uploads, a fake champion,
and ``make run`` / ``make ingest`` as the Makefile runs them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from conftest import ROOT, read_sst2
from tasks import storage
from tasks.spec import PipelineSpec, dump, parse_spec

SPEC_FILE = ROOT / "include" / "pipelines" / "sst2.yaml"


def make_spec(root_uri: str, **overrides: dict[str, Any]) -> PipelineSpec:
    """The sst2 pipeline spec pointed at ``root_uri``; ``overrides`` merge into sections (``data={...}``)."""
    raw = yaml.safe_load(SPEC_FILE.read_text())
    raw["storage"]["uri"] = root_uri
    raw["golden"]["source_uri"] = "{storage}/reference/{name}/golden.tsv"
    raw["train"]["max_train_rows"] = None
    raw["alerts"]["email"] = []
    raw["stages"]["kubernetes"]["image"] = "test"
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return parse_spec(raw, "<test>")


def tsv_bytes(rows: list[tuple[str, Any]], header: str = "sentence\tlabel") -> bytes:
    lines = [header] + [f"{text}\t{label}" for text, label in rows]
    return ("\n".join(lines) + "\n").encode("utf-8")


def put(uri: str, data: bytes | str) -> str:
    return storage.write_bytes(uri, data.encode("utf-8") if isinstance(data, str) else data)


def land(spec: PipelineSpec, key: str, data: bytes | str) -> str:
    return put(storage.join(spec.layout.landing, key), data)


def put_golden(spec: PipelineSpec, rows: list[tuple[str, int]] | None = None) -> list[tuple[str, int]]:
    rows = rows if rows is not None else read_sst2("dev", limit=40)
    put(spec.golden.source_uri, tsv_bytes(rows))
    return rows


def run_folder(spec: PipelineSpec, key: str = "run1") -> str:
    uri = spec.layout.run(key)
    storage.write_json(storage.join(uri, "spec.json"), dump(spec))
    return uri


def fake_champion(spec: PipelineSpec, snapshot: dict[str, Any], model_dir: Path, version: str = "v1") -> str:
    """A registry version folder by hand: manifest.json naming the snapshot, and teacher/ = a model directory."""
    uri = spec.layout.version(version)
    storage.upload_dir(model_dir, storage.join(uri, "teacher"))
    storage.write_json(storage.join(uri, "manifest.json"),
                       {"version": version, "snapshot_id": snapshot["snapshot_id"],
                        "snapshot_uri": snapshot["snapshot_uri"]})
    return uri


def parquet_bytes(columns: dict[str, list[Any]]) -> bytes:
    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame(columns).to_parquet(buf, index=False)
    return buf.getvalue()


def local_run(command: str, spec: Path, landing: Path, storage_dir: Path,
              env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """scripts/local_run.py COMMAND (what ``make run`` / ``make ingest`` call): (exit code, the JSON its last line
    prints, the whole output)."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "local_run.py"), command, "--spec", str(spec),
                           "--landing", str(landing), "--storage", str(storage_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    return proc.returncode, json.loads(lines[-1]), proc.stdout + proc.stderr
