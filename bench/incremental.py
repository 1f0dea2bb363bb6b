"""A night's training cost, full warm start vs incremental retrain (train.retrain_mode), on SST-2. One JSON line.

For each history size N: a champion trained (from the base model) on a snapshot of N SST-2 rows; then one night of
M new rows, trained by the real fine-tune and distill stages twice per seed, (a) as a full warm start on the whole
snapshot (train.retrain_mode: full) and (b) incrementally (the M new rows plus replay_multiple x M replayed older
rows), each from the champion. Reported per mode: samples processed (forward+backward passes, and the teacher's
passes for distillation; the stages' own counts), stage wall seconds, teacher and student golden accuracy (SST-2
dev, 872 rows) with 95% bootstrap intervals; and the bars: incremental samples / full samples, the teacher's
golden-accuracy gap (mean over seeds), the student's per seed, and how the incremental night's samples change
from the first history size to the last; and the champion's own golden accuracy, where both nights start.

    .venv/bin/python bench/incremental.py                           # N = 10,000 and 20,000, M = 1,000, 3 seeds
    .venv/bin/python bench/incremental.py --two-cores               # the first bar, sized for 2 CPU cores (below)
    .venv/bin/python bench/incremental.py --quick --set model.base=DIR   # a smoke test: 300/600 rows, 1 seed

``--two-cores`` runs the first bar's setting (N = 10,000, M = 1,000, 3 seeds) in under 30 minutes on 2 CPU cores:
one holdout evaluation per stage, at its end (``train.eval_steps`` 100,000), for both nights. The doubling is a
second command, ``--history 10000 20000 --champion-once --later-seeds 1 --full-seeds-last 0``: at N = 20,000 one
incremental night (seed 1) from the same champion weights registered against the 20,000-row history
(``--champion-once``: the rows a night trains on, and so its samples, follow from the snapshots and the champion's
snapshot, not from the weights; a second champion on 20,000 rows would cost about 13 minutes on 2 cores).
Accuracies at a reused size are those of nights from the first size's champion.

The night's rows are the same for every history size (the last M rows of the pool), and the history is the first
N rows of SST-2 train with at least --min-words words (full sentences, like the golden set). Stages run in this
process, one after another, as ``python -m tasks finetune|distill`` would (cost.start() before each).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import holdout_of, make_run, parse_overrides, print_json, read_tsv, write_golden  # noqa: E402

PIPELINE = "sst2"
# Bench defaults on top of the shipped spec: no CPU exports and no row cap; a night's student distils 1 epoch (2 in
# the spec), to save time. The champion keeps the spec's epochs for both models: a 1-epoch champion leaves the full
# warm start's pass over the history to make up for it, which is not what a night costs (docs/benchmarks.md).
DEFAULTS = {"student.export": [], "train.max_train_rows": None}
NIGHT_DEFAULTS = {"student.epochs": 1}
# --two-cores: one holdout evaluation per stage, at its end (the incremental night's 70 steps never reach a second
# one; the full night's 311 would evaluate 4 times per stage and keep the best of them).
TWO_CORES = {"train.eval_steps": 100_000}


def write_parts(root: str, batches: list[tuple[str, list[tuple[str, int]]]], golden_uri: str) -> str:
    """A snapshot of ``batches`` (batch id, rows), one Parquet part each, written once and shared by the
    snapshots that list them (as ingest does); its URI."""
    import pandas as pd

    from tasks import storage
    from tasks.data.snapshots import parquet_bytes

    base = storage.join(root, "snapshots", PIPELINE)
    parts = []
    for batch, rows in batches:
        part = storage.join(base, "parts", f"{batch}.parquet")
        if not storage.exists(part):
            frame = pd.DataFrame({"text": [t for t, _ in rows], "label": [int(y) for _, y in rows],
                                  "split": ["holdout" if holdout_of(t) else "train" for t, _ in rows],
                                  "batch": batch})
            storage.write_bytes(part, parquet_bytes(frame))
        parts.append(f"parts/{batch}.parquet")
    snapshot_id = hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]
    uri = storage.join(base, snapshot_id)
    rows = sum(len(r) for _, r in batches)
    storage.write_json(storage.join(uri, "manifest.json"), {"snapshot_id": snapshot_id, "parts": parts,
                                                            "rows": rows, "golden_uri": golden_uri})
    return uri


def run_stages(run: str, snapshot: str, champion: str | None) -> dict[str, dict[str, Any]]:
    """The fine-tune then distill stage on ``snapshot``, in this process; their results."""
    from tasks import cost, storage
    from tasks.train import distill, finetune

    out = {}
    with contextlib.redirect_stdout(sys.stderr):  # the stages' log lines; stdout is the JSON line's
        cost.start()
        finetune.main(["--run", run, "--snapshot", snapshot, "--champion", champion or "none"])
        out["finetune"] = storage.read_json(storage.join(run, "finetune", "result.json"))
        cost.start()
        distill.main(["--run", run, "--snapshot", snapshot, "--teacher", out["finetune"]["model_uri"],
                      "--champion", champion or "none"])
        out["distill"] = storage.read_json(storage.join(run, "distill", "result.json"))
    return out


def golden_scores(results: dict[str, dict[str, Any]], golden: list[tuple[str, int]], max_length: int,
                  seed: int) -> dict[str, Any]:
    """Teacher and student accuracy on the golden rows with 95% percentile-bootstrap intervals (the gates')."""
    import numpy as np

    from tasks.decide.gates import bootstrap_intervals
    from tasks.train import modeling

    texts, y = [t for t, _ in golden], np.array([label for _, label in golden])
    out = {}
    for role, stage in (("teacher", "finetune"), ("student", "distill")):
        pred = modeling.predict_proba(modeling.materialize(results[stage]["model_uri"]), texts,
                                      max_length=max_length).argmax(axis=1)
        ci = bootstrap_intervals(y, pred, 2, resamples=1000, seed=seed)["accuracy"]
        out[role] = {"accuracy": round(float(np.mean(pred == y)), 4),
                     "ci": [round(ci["lower"], 4), round(ci["upper"], 4)]}
    return out


def night_figures(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    samples = {stage: r["samples_processed"] for stage, r in results.items()}
    return {"samples": sum(samples.values()), "samples_by_stage": samples,
            "samples_detail": {stage: r.get("samples") for stage, r in results.items()},
            "wall_seconds": round(sum(float((r.get("cost") or {}).get("wall_seconds") or 0)
                                      for r in results.values()), 1),
            "train_rows": results["finetune"]["train_rows"],
            "training": {stage: {k: (r.get("training") or {}).get(k) for k in ("mode", "new_rows", "replay_rows")}
                         for stage, r in results.items()}}


def promote(root: str, version: str, results: dict[str, dict[str, Any]], snapshot: str) -> str:
    """A registry version folder of the champion run (teacher/, student/, manifest naming its snapshot)."""
    from tasks import storage

    uri = storage.join(root, "models", PIPELINE, "versions", version)
    for role, stage in (("teacher", "finetune"), ("student", "distill")):
        storage.upload_dir(storage.local_path(results[stage]["model_uri"]), storage.join(uri, role))
    snapshot_id = snapshot.rstrip("/").rsplit("/", 1)[-1]
    storage.write_json(storage.join(uri, "manifest.json"), {"version": version, "snapshot_id": snapshot_id,
                                                            "snapshot_uri": snapshot})
    return uri


def decide_night(run: str, spec, snapshot: str, champion_snapshot: str, champion: dict[str, Any]) -> dict:
    """The real decision for the night (new rows counted as drift counts them), stored where the stages read it."""
    from tasks import storage
    from tasks.data import snapshots
    from tasks.decide.decision import decide

    current, reference = snapshots.read_snapshot(snapshot), snapshots.read_snapshot(champion_snapshot)
    new = int((~current["text"].isin(reference["text"])).sum())
    drift = {"new_rows": new, "reference_rows": len(reference), "checks": {}, "drift_detected": False,
             "reference_label_counts": snapshots.label_counts(reference["label"], spec.data.labels)}
    ingest = {"snapshot_id": snapshot.rstrip("/").rsplit("/", 1)[-1], "total_rows": len(current), "new_rows": new}
    decision = decide(spec, ingest, drift, champion, force=True)
    storage.write_json(storage.join(run, "decide", "result.json"), decision)
    return decision


def nights_at(args: argparse.Namespace, n: int) -> list[tuple[int, str]]:
    """(seed, mode) of the nights run at history size ``n``: every seed and both modes, but after the first size
    only --later-seeds of the seeds, and at the last size only --full-seeds-last full nights."""
    seeds = args.seeds[:args.later_seeds] if n != args.history[0] and args.later_seeds is not None else args.seeds
    last = n == args.history[-1] and len(args.history) > 1
    full_seeds = seeds[:args.full_seeds_last] if last and args.full_seeds_last is not None else seeds
    return [(seed, mode) for seed in seeds for mode in ("full", "incremental")
            if mode == "incremental" or seed in full_seeds]


def mean(values: list[float]) -> float:
    return round(statistics.fmean(values), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, nargs="+", default=None, help="history sizes N (10000 20000)")
    parser.add_argument("--new", type=int, default=None, help="new rows M in the night (1000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="train.seed of the nights (1 2 3)")
    parser.add_argument("--full-seeds-last", type=int, default=None,
                        help="at the last history size, run the full warm start with only this many of the seeds "
                             "(0: none; its samples do not depend on the seed; the accuracy bar is read at the first "
                             "size)")
    parser.add_argument("--later-seeds", type=int, default=None,
                        help="after the first history size, run each night with only this many of the seeds")
    parser.add_argument("--champion-once", action="store_true",
                        help="train the champion at the first history size only; later sizes register its weights "
                             "against their own history snapshot (a night's rows do not depend on the weights)")
    parser.add_argument("--two-cores", action="store_true",
                        help="N = 10,000, M = 1,000, 3 seeds with one holdout evaluation per stage (train.eval_steps "
                             "100000): the first bar in under 30 minutes on 2 CPU cores")
    parser.add_argument("--min-words", type=int, default=10)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: N = 300 and 600, M = 60, seed 1 (unless given)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="spec override for every run, e.g. model.base=DIR (JSON values)")
    parser.add_argument("--storage", default=None, help="storage root (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.two_cores:
        args.history = args.history or [10_000]
    quick, full = ([300, 600], 60, [1]), ([10_000, 20_000], 1000, [1, 2, 3])
    default = quick if args.quick else full
    args.history, args.new, args.seeds = (args.history or default[0], args.new or default[1],
                                          args.seeds or default[2])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.monotonic()

    from tasks import cli
    from tasks.spec import load_spec

    cli.setup_logging()  # the finetune stages' progress lines, as `python -m tasks` shows them
    pool = read_tsv("train", min_words=args.min_words)
    if max(args.history) + args.new > len(pool):
        parser.error(f"only {len(pool)} SST-2 rows with >= {args.min_words} words")
    night_rows = pool[-args.new:]
    golden = read_tsv("dev")
    overrides = {**DEFAULTS, **(TWO_CORES if args.two_cores else {}), **parse_overrides(args.set)}

    with tempfile.TemporaryDirectory(prefix="bench-incremental-") as tmp:
        root = args.storage or f"file://{tmp}/store"
        os.environ["RETRAIN_SCRATCH_DIR"] = f"{tmp}/scratch"
        golden_uri = write_golden(root, PIPELINE, golden)
        max_length = load_spec(storage_join(make_run(root, "spec", overrides), "spec.json")).model.max_length
        sizes: dict[str, Any] = {}
        first_champion: dict[str, Any] | None = None  # the first size's champion results (--champion-once)
        for n in args.history:
            history = write_parts(root, [(f"history{n}", pool[:n])], golden_uri)
            reused = args.champion_once and first_champion is not None
            if reused:
                champion_results = first_champion
            else:
                run = make_run(root, f"champion-{n}", overrides)
                champion_results = run_stages(run, history, None)
                first_champion = first_champion or champion_results
            champion_uri = promote(root, f"v{n}", champion_results, history)
            champion_golden = golden_scores(champion_results, golden, max_length, 0)  # where both nights start
            champion = {"version": f"v{n}", "version_uri": champion_uri,
                        "snapshot_id": history.rsplit("/", 1)[-1], "snapshot_uri": history}
            snapshot = write_parts(root, [(f"history{n}", pool[:n]), ("night", night_rows)], golden_uri)
            modes: dict[str, list[dict[str, Any]]] = {"full": [], "incremental": []}
            for seed, mode in nights_at(args, n):
                run = make_run(root, f"night-{n}-{mode}-{seed}",
                               {**NIGHT_DEFAULTS, **overrides, "train.seed": seed, "train.retrain_mode": mode})
                spec = load_spec(storage_join(run, "spec.json"))
                decision = decide_night(run, spec, snapshot, history, champion)
                assert decision["training"]["mode"] == mode, decision["training"]
                results = run_stages(run, snapshot, champion_uri)
                figures = night_figures(results)
                figures.update(seed=seed, golden=golden_scores(results, golden, max_length, seed))
                modes[mode].append(figures)
                print(f"[bench] N={n} {mode} seed {seed}: {figures['samples']} samples, "
                      f"{figures['wall_seconds']} s, teacher {figures['golden']['teacher']['accuracy']}, "
                      f"student {figures['golden']['student']['accuracy']}", file=sys.stderr, flush=True)
            sizes[str(n)] = {"champion_golden": champion_golden, "champion_trained_on": args.history[0]
                             if reused else n, **summarize(modes)}
    out = {"bench": "incremental", "new_rows": args.new, "seeds": args.seeds, "history": sizes,
           "wall_seconds": round(time.monotonic() - started, 1), "overrides": overrides,
           "night_overrides": {**NIGHT_DEFAULTS, **overrides}}
    out["bars"] = bars(sizes, args.history)
    print_json(out)
    return 0


def storage_join(*parts: str) -> str:
    from tasks import storage

    return storage.join(*parts)


def summarize(modes: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, nights in modes.items():
        out[mode] = {"nights": nights}
        if nights:  # none where a mode was not run at this size (--full-seeds-last 0)
            out[mode].update(
                samples_mean=mean([x["samples"] for x in nights]),
                wall_seconds_mean=mean([x["wall_seconds"] for x in nights]),
                teacher_accuracy_mean=mean([x["golden"]["teacher"]["accuracy"] for x in nights]),
                student_accuracy_mean=mean([x["golden"]["student"]["accuracy"] for x in nights]))
    full, incremental = out["full"], out["incremental"]
    if not (full["nights"] and incremental["nights"]):
        return out
    out["samples_ratio"] = round(incremental["samples_mean"] / full["samples_mean"], 4)
    out["wall_ratio"] = round(incremental["wall_seconds_mean"] / full["wall_seconds_mean"], 4)
    out["teacher_gap_points"] = round(100 * (full["teacher_accuracy_mean"] - incremental["teacher_accuracy_mean"]), 2)
    by_seed = {x["seed"]: x for x in full["nights"]}
    out["student_gap_points_by_seed"] = {
        x["seed"]: round(100 * (by_seed[x["seed"]]["golden"]["student"]["accuracy"]
                                - x["golden"]["student"]["accuracy"]), 2)
        for x in incremental["nights"] if x["seed"] in by_seed}
    return out


def bars(sizes: dict[str, Any], history: list[int]) -> dict[str, Any]:
    """The issue's bars: samples and accuracy read where both nights ran at the first size, the growth from the
    first size to the last (incremental; full too where it ran at both)."""
    first, last = sizes[str(history[0])], sizes[str(history[-1])]
    growth = last["incremental"]["samples_mean"] / first["incremental"]["samples_mean"] - 1 \
        if len(history) > 1 else None  # one size: nothing to compare
    compared = [s for s in sizes.values() if "samples_ratio" in s]
    return {
        "incremental_samples_share_max": max(s["samples_ratio"] for s in compared),
        "incremental_samples_at_most_25pct": all(s["samples_ratio"] <= 0.25 for s in compared),
        "teacher_gap_points_first_size": first["teacher_gap_points"],
        "teacher_within_half_point": first["teacher_gap_points"] <= 0.5,
        "student_within_half_point_some_seed": any(g <= 0.5 for g in first["student_gap_points_by_seed"].values()),
        "incremental_samples_growth_on_doubling": None if growth is None else round(growth, 4),
        "incremental_growth_at_most_10pct": None if growth is None else abs(growth) <= 0.10,
        "full_samples_growth": round(last["full"]["samples_mean"] / first["full"]["samples_mean"] - 1, 4)
        if len(history) > 1 and last["full"]["nights"] else None,
    }


if __name__ == "__main__":
    sys.exit(main())
