"""Helpers for the decision-side tests: a tiny pipeline spec, snapshot and golden set in storage, and tiny
BERT classifiers trained in seconds on real SST-2 rows (optionally with poisoned labels)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tasks import snapshots, storage
from tasks.spec import dump, parse_spec


def make_spec(root: str, **gates: Any):
    raw = {
        "name": "sst2",
        "storage": {"uri": root},
        "data": {"labels": ["negative", "positive"]},
        "golden": {"source_uri": "{storage}/reference/{name}/golden.tsv"},
        "model": {"max_length": 48},
        "gates": {"min_accuracy": 0.0, "min_macro_f1": 0.0, "min_retention": 0.0, "latency_samples": 5, **gates},
        "alerts": {"email": ["oncall@example.com"], "smtp_conn_id": "smtp_test", "slack_conn_id": "slack_test",
                   "from_email": "airflow@example.com", "airflow_base_url": "http://airflow.example:8080"},
    }
    return parse_spec(raw)


def write_run(spec, run_key: str) -> str:
    run = spec.layout.run(run_key)
    storage.write_json(storage.join(run, "spec.json"), dump(spec))
    return run


def write_snapshot(spec, rows: list[tuple[str, int]], golden_rows: list[tuple[str, int]],
                   snapshot_id: str = "snap-0001") -> str:
    import pandas as pd

    golden_uri = storage.join(spec.layout.golden, "g1")
    storage.write_bytes(storage.join(golden_uri, "data.parquet"), snapshots.parquet_bytes(
        pd.DataFrame({"text": [t for t, _ in golden_rows], "label": [l for _, l in golden_rows]})))
    frame = pd.DataFrame({"text": [t for t, _ in rows], "label": [l for _, l in rows],
                          "split": ["holdout" if i % 5 == 0 else "train" for i in range(len(rows))],
                          "batch": ["b1"] * len(rows)})
    storage.write_bytes(storage.join(spec.layout.snapshots, "parts", "b1.parquet"), snapshots.parquet_bytes(frame))
    snap = storage.join(spec.layout.snapshots, snapshot_id)
    storage.write_json(snapshots.manifest_uri(snap), {"snapshot_id": snapshot_id, "parts": ["parts/b1.parquet"],
                                                      "golden_uri": golden_uri, "golden_id": "g1"})
    return snap


def poison(rows: list[tuple[str, int]], fraction: float, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    idx = set(rng.sample(range(len(rows)), int(round(fraction * len(rows)))))
    return [(t, 1 - l) if i in idx else (t, l) for i, (t, l) in enumerate(rows)]


def train_tiny(base_dir: Path, rows: list[tuple[str, int]], out_dir: Path, *, epochs: int = 3, seed: int = 0,
               lr: float = 3e-3, batch_size: int = 16, max_length: int = 48) -> Path:
    """Fine-tune the tiny random-init BERT on (text, label) rows; a few seconds on one CPU core."""
    import torch

    from tasks import modeling

    torch.manual_seed(seed)
    model = modeling.load_classifier(base_dir)
    tokenizer = modeling.load_tokenizer(base_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    model.train()
    for _ in range(epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start:start + batch_size]]
            enc = tokenizer([t for t, _ in batch], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([l for _, l in batch])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return modeling.save_model(model, tokenizer, out_dir)
