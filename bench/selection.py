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

``--trace``: one training run instead, with the spec's settings and no early stopping, that scores the holdout
split, the like-golden sample and dev.tsv at every evaluation (the stages' Trainer, ``training.make_trainer``, with
a dict of eval sets; no checkpoints). Early stopping is then replayed on that one trajectory for each signal,
patience and ``--min-epochs`` (the rule of ``training.EarlyStoppingAfterMinEpochs``): where it would have stopped,
the evaluation it would have kept, and that evaluation's dev accuracy. Same weights for every setting, so the
differences are the selection rule's alone, not another run's noise.

    python bench/selection.py --trace --rows 6000 --set train.eval_steps=20 --min-epochs 0 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def replay(evals: list[dict], signal: str, patience: int, min_epochs: float) -> dict:
    """Early stopping on ``signal`` over a recorded trajectory, by the rule of EarlyStoppingAfterMinEpochs."""
    best, kept, counter, stop = None, None, 0, evals[-1]
    for e in evals:
        value = e[signal]
        if best is None or value > best:
            best, kept, counter = value, e, 0
        else:
            counter += 1
        if e["epoch"] < min_epochs - 1e-9:
            counter = 0
        if counter >= patience:
            stop = e
            break
    return {"signal": signal, "patience": patience, "min_epochs": min_epochs, "stopped_at_epoch": round(stop["epoch"], 3),
            "kept_step": kept["step"], "kept_epoch": round(kept["epoch"], 3), "kept_signal_accuracy": round(best, 4),
            "kept_holdout_accuracy": round(kept["holdout"], 4), "kept_dev_accuracy": round(kept["dev"], 4)}


def trace(args, rows: list[tuple[str, int]], dev: list[tuple[str, int]], overrides: dict) -> dict:
    """One run scoring holdout, the like-golden sample and dev at every evaluation; early stopping replayed."""
    from transformers import Trainer, set_seed

    from tasks.spec import load_spec
    from tasks.train import modeling, training

    work = Path(tempfile.mkdtemp(prefix="selection-trace-"))
    root = "file://" + str(work / "store")
    snapshot = write_snapshot(root, "sst2", rows, golden_rows=dev)
    spec = load_spec(make_run(root, "trace", overrides) + "/spec.json")
    hp = spec.train
    base = modeling.resolve_base_model(spec.model.base)
    tokenizer = modeling.load_tokenizer(base)
    train_rows, holdout_rows = training.load_splits(snapshot, hp.max_train_rows)
    train = training.tokenize(tokenizer, train_rows["text"], train_rows["label"], spec.model.max_length)
    holdout = training.tokenize(tokenizer, holdout_rows["text"], holdout_rows["label"], spec.model.max_length)
    golden = training.tokenize(tokenizer, [t for t, _ in dev], [y for _, y in dev], spec.model.max_length)
    sample = training.like_golden_sample([len(i) for i in holdout["input_ids"]], holdout["labels"],
                                         [len(i) for i in golden["input_ids"]], golden["labels"], seed=hp.seed,
                                         max_rows=hp.selection_rows)
    epochs = float(hp.epochs)
    targs = training.training_arguments(
        work / "scratch", epochs=epochs, batch_size=hp.batch_size, learning_rate=float(hp.learning_rate),
        weight_decay=hp.weight_decay, warmup_ratio=hp.warmup_ratio,
        gradient_accumulation_steps=hp.gradient_accumulation_steps, eval_steps=hp.eval_steps,
        checkpoint_steps=hp.eval_steps, seed=hp.seed, save_strategy="no", load_best_model_at_end=False,
        metric_for_best_model="holdout_accuracy")
    set_seed(hp.seed)
    model = modeling.load_classifier(base, labels=list(spec.data.labels))
    trainer = training.make_trainer(
        Trainer, args=targs, tokenizer=tokenizer, n_classes=len(spec.data.labels), patience=10**6, model=model,
        train_dataset=train, eval_dataset={"holdout": holdout, "like_golden": holdout.select(sample.indices),
                                           "dev": golden})
    trainer.remove_callback(training.EarlyStoppingAfterMinEpochs)  # replayed below, for every signal
    t0 = time.monotonic()
    trainer.train()
    by_step: dict[int, dict] = {}
    for e in trainer.state.log_history:
        for name in ("holdout", "like_golden", "dev"):
            if f"eval_{name}_accuracy" in e:
                by_step.setdefault(e["step"], {"step": e["step"], "epoch": e["epoch"]})[name] = \
                    e[f"eval_{name}_accuracy"]
    evals = [by_step[k] for k in sorted(by_step)]
    replays = [replay(evals, signal, hp.early_stopping_patience, m)
               for m in args.min_epochs for signal in ("holdout", "like_golden")]
    oracle = max(evals, key=lambda e: e["dev"])
    return {"bench": "selection", "trace": True, "rows": len(rows), "train_rows": len(train),
            "holdout_rows": len(holdout), "like_golden_rows": len(sample.indices),
            "like_golden_distance": round(sample.histogram_distance, 4),
            "like_golden_shortfalls": len(sample.shortfalls), "epochs": epochs, "eval_steps": hp.eval_steps,
            "patience": hp.early_stopping_patience, "learning_rate": float(hp.learning_rate),
            "batch_size": hp.batch_size, "seed": hp.seed, "wall_s": round(time.monotonic() - t0, 1),
            "mean_tokens": {"holdout": round(float(np.mean([len(i) for i in holdout["input_ids"]])), 2),
                            "like_golden": round(float(np.mean([len(holdout["input_ids"][i]) for i in sample.indices])), 2),
                            "dev": round(float(np.mean([len(i) for i in golden["input_ids"]])), 2)},
            "replays": replays, "dev_best": {"step": oracle["step"], "epoch": round(oracle["epoch"], 3),
                                             "dev_accuracy": round(oracle["dev"], 4)},
            "trajectory": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in e.items()} for e in evals]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6000, help="SST-2 train rows in the snapshot (first N)")
    parser.add_argument("--min-words", type=int, default=0, help="only rows with at least this many words")
    parser.add_argument("--settings", nargs="+", default=["holdout:0", "like_golden:0", "like_golden:1"],
                        help="SELECTION:MIN_EPOCHS each, or spec (the shipped spec)")
    parser.add_argument("--set", action="append", default=[], help="spec override for every setting")
    parser.add_argument("--trace", action="store_true", help="one run, every eval set scored, early stopping replayed")
    parser.add_argument("--min-epochs", type=float, nargs="+", default=[0.0, 1.0], help="with --trace: replayed")
    args = parser.parse_args()

    import torch

    from tasks import cli
    from tasks.train import training

    cli.setup_logging()
    training.setup_logging()
    rows = read_tsv("train", min_words=args.min_words, limit=args.rows)
    dev = read_tsv("dev")
    if args.trace:
        print_json({**trace(args, rows, dev, parse_overrides(args.set)), "min_words": args.min_words,
                    "device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads()})
        return
    work = Path(tempfile.mkdtemp(prefix="selection-bench-"))
    root = "file://" + str(work / "store")
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
