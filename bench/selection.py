"""Model selection during fine-tuning: where training stops and what the selected checkpoint scores on the golden
set, for each ``train.selection`` mode and ``train.min_epochs``. Prints one JSON line per setting, then a summary.

Runs the real fine-tune stage (``tasks.train.finetune.main``, in this process, on file:// storage) on the first
``--rows`` SST-2 train rows, phrases included (``--min-words 0``: SST-2's train file holds every sub-phrase of its
sentences, so its holdout split is mostly short phrases) with a golden set of dev.tsv named by the snapshot's
manifest, as ingest writes it. For each setting: the epoch training ended at (``stopped_at_epoch``), the best
evaluation during training and its step, the selected checkpoint's accuracy on the whole holdout split and on
dev.tsv, and the rows model selection scored.

    python bench/selection.py --rows 6000 --settings holdout:0 like_golden:0 like_golden:1 \\
        --set train.eval_steps=20 --set train.checkpoint_steps=20      # CPU, ~3 min a setting on one thread
    python bench/selection.py --rows 67349 --settings holdout:0 like_golden:1    # full SST-2 (a GPU)

A setting is ``SELECTION:MIN_EPOCHS``; ``spec`` is the shipped spec as it is. ``--set`` overrides apply to every
setting.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_run, parse_overrides, print_json, read_tsv, write_snapshot  # noqa: E402


def dev_accuracy(model_uri: str, rows: list[tuple[str, int]], max_length: int) -> float:
    import numpy as np

    from tasks import storage
    from tasks.train.modeling import predict_proba

    probs = predict_proba(storage.local_path(model_uri), [t for t, _ in rows], max_length=max_length)
    return round(float(np.mean(probs.argmax(1) == np.array([y for _, y in rows]))), 4)


def setting_overrides(setting: str) -> dict:
    if setting == "spec":
        return {}
    selection, min_epochs = setting.split(":")
    return {"train.selection": selection, "train.min_epochs": float(min_epochs)}


def run_setting(root: str, snapshot: str, setting: str, overrides: dict, dev: list[tuple[str, int]],
                scratch: Path) -> dict:
    from tasks import storage
    from tasks.spec import load_spec
    from tasks.train import finetune

    key = "sel-" + setting.replace(":", "-").replace(".", "p")
    run = make_run(root, key, {**overrides, **setting_overrides(setting)})
    spec = load_spec(run + "/spec.json")
    os.environ["RETRAIN_SCRATCH_DIR"] = str(scratch)
    t0 = time.monotonic()
    if finetune.main(["--run", run, "--snapshot", snapshot, "--champion", "none"]):
        raise SystemExit(f"finetune failed for {setting}")
    wall = time.monotonic() - t0
    result = storage.read_json(storage.join(run, "finetune", "result.json"))
    history = storage.read_json(result["metrics_uri"])["log_history"]
    evals = [e for e in history if "eval_accuracy" in e][:-1]  # the last one: the best model on the whole split
    best = max(evals, key=lambda e: e["eval_accuracy"]) if evals else {}
    return {
        "setting": setting, "selection": spec.train.selection, "min_epochs": spec.train.min_epochs,
        "epochs": result["epochs"], "stopped_at_epoch": result["stopped_at_epoch"],
        "global_step": result["global_step"], "evaluations": len(evals),
        "best_selection_accuracy": best.get("eval_accuracy"), "best_step": best.get("step"),
        "best_epoch": round(best["epoch"], 3) if best else None,
        "selection_rows": result["selection"]["rows"], "selection_summary": result["selection"],
        "holdout_accuracy": round(result["metrics"]["accuracy"], 4), "holdout_rows": result["metrics"]["holdout_rows"],
        "dev_accuracy": dev_accuracy(result["model_uri"], dev, spec.model.max_length),
        "batch_size": result["batch_size"], "learning_rate": result["learning_rate"], "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6000, help="SST-2 train rows in the snapshot (first N)")
    parser.add_argument("--min-words", type=int, default=0, help="only rows with at least this many words")
    parser.add_argument("--settings", nargs="+", default=["holdout:0", "like_golden:0", "like_golden:1"],
                        help="SELECTION:MIN_EPOCHS each, or spec (the shipped spec)")
    parser.add_argument("--set", action="append", default=[], help="spec override for every setting")
    args = parser.parse_args()

    import torch

    from tasks.train import training

    training.setup_logging()
    work = Path(tempfile.mkdtemp(prefix="selection-bench-"))
    root = "file://" + str(work / "store")
    rows = read_tsv("train", min_words=args.min_words, limit=args.rows)
    dev = read_tsv("dev")
    snapshot = write_snapshot(root, "sst2", rows, golden_rows=dev)
    overrides = parse_overrides(args.set)
    out = []
    for setting in args.settings:
        figures = run_setting(root, snapshot, setting, overrides, dev, work / "scratch")
        print_json({"bench": "selection", "rows": len(rows), "min_words": args.min_words, "overrides": overrides,
                    "device": "cuda" if torch.cuda.is_available() else "cpu",
                    "torch_threads": torch.get_num_threads(), **figures})
        out.append(figures)
    print_json({"bench": "selection", "summary": [
        {k: f[k] for k in ("setting", "stopped_at_epoch", "best_epoch", "best_selection_accuracy", "holdout_accuracy",
                           "dev_accuracy", "selection_rows")} for f in out]})


if __name__ == "__main__":
    main()
