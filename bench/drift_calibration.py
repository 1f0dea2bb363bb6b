"""Drift calibration: false-alarm rate on same-distribution batches, detection rate on clear shifts.

    python bench/drift_calibration.py [--batches 20] [--batch-size 500] [--reference-rows 5000] [--classes 77]

* reference: a random slice of SST-2 train (the "champion's snapshot");
* null: disjoint random slices of the rest of SST-2 train -> drift must fire in at most 5% of them;
* emotion: dair-ai emotion tweets fed to the SST-2 pipeline (joy/love/surprise -> positive, else negative);
* skew: SST-2 slices whose label mix is forced to 90/10 (alternately 90% positive and 90% negative).

``--classes K`` (K > 2) simulates a many-class pipeline on the same texts: every row's label is a seeded draw
from a fixed Zipf mix over K classes (independent of the text, so the null batches are null for the labels
too), the champion gets a K-class head, and "skew" doubles the most common class instead of forcing 90/10.

Every batch runs all seven checks with the spec's thresholds (include/pipelines/sst2.yaml), as the drift stage
does. The "champion" is the packaged MiniLM encoder with a fresh, seeded 2-class head: the embedding check is
real, the prediction check sees an untrained head. Also reported: how often label_quality (not a drift check)
would flag a batch; the reference stands in for the holdout (the untrained head never saw it). Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("RETRAIN_DATA_DIR", ROOT.parent / "shared" / "data"))
from tasks.cli import set_offline_env  # noqa: E402

set_offline_env()

POSITIVE_EMOTIONS = {"joy", "love", "surprise"}


def read_sst2(path: Path) -> list[tuple[str, int]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [(r["sentence"], int(r["label"])) for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]


def read_emotion(path: Path) -> list[tuple[str, int]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            text, _, name = line.rstrip("\n").rpartition(";")
            rows.append((text, 1 if name in POSITIVE_EMOTIONS else 0))
    return rows


def champion_dir(base: str, out: Path, names: list[str]) -> Path:
    import torch

    from tasks.train.modeling import load_classifier, load_tokenizer, resolve_base_model, save_model

    torch.manual_seed(0)
    path = resolve_base_model(base)
    return save_model(load_classifier(path, names), load_tokenizer(path), out)


def relabel(rows: list[tuple[str, int]], mix, rng) -> list[tuple[str, int]]:
    """The same texts with labels drawn from ``mix`` (the simulated many-class case)."""
    return [(text, int(y)) for (text, _), y in zip(rows, rng.choice(len(mix), size=len(rows), p=mix))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per scenario (>= 20)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--reference-rows", type=int, default=5000)
    parser.add_argument("--spec", default=str(ROOT / "include" / "pipelines" / "sst2.yaml"))
    parser.add_argument("--embedding-subsample", type=int, default=None, help="default: the spec's")
    parser.add_argument("--no-model", action="store_true", help="statistical checks only (fast)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, default=2,
                        help="2: SST-2's own labels; K > 2: simulated K-class labels (Zipf mix) and a K-class head")
    parser.add_argument("--scenarios", nargs="+", default=["null", "emotion", "skew"],
                        choices=["null", "emotion", "skew"], help="run only these (e.g. more null batches)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from tasks.drift.embeddings import model_checks, model_outputs
    from tasks.drift.stats import TextSide, TokenCounter, statistical_checks
    from tasks.spec import load_spec

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.environ.setdefault("RETRAIN_STORAGE_URI", "file:///tmp/unused")
    spec = load_spec(args.spec)
    cfg = spec.drift
    if args.embedding_subsample:
        cfg = cfg.model_copy(update={"embedding_subsample": args.embedding_subsample})
    names = spec.data.labels if args.classes <= 2 else [f"class_{i}" for i in range(args.classes)]
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()

    sst2 = read_sst2(DATA / "sst2" / "train.tsv")
    mix = None
    if args.classes > 2:
        mix = 1.0 / np.arange(1, args.classes + 1)
        mix /= mix.sum()
        sst2 = relabel(sst2, mix, rng)
    order = rng.permutation(len(sst2))
    n, b = args.reference_rows, args.batch_size
    reference = [sst2[i] for i in order[:n]]
    pool = order[n:]
    null_batches = [[sst2[i] for i in pool[k * b:(k + 1) * b]] for k in range(args.batches)]
    rest = pool[args.batches * b:]  # disjoint from the null batches
    positives = [i for i in rest if sst2[i][1] == 1]
    negatives = [i for i in rest if sst2[i][1] == 0]
    skew_batches = []
    for k in range(args.batches):
        if mix is not None:  # the most common class doubled
            skewed = mix.copy()
            skewed[0] *= 2
            skewed /= skewed.sum()
            picks = rng.choice(rest, b, replace=False)
            skew_batches.append(relabel([sst2[i] for i in picks], skewed, rng))
            continue
        major, minor = (positives, negatives) if k % 2 == 0 else (negatives, positives)
        picks = list(rng.choice(major, int(b * 0.9), replace=False)) + list(rng.choice(minor, b - int(b * 0.9), replace=False))
        skew_batches.append([sst2[i] for i in picks])
    emotion = read_emotion(DATA / "emotion" / "train.txt")
    if mix is not None:
        emotion = relabel(emotion, mix, rng)
    emo_order = rng.permutation(len(emotion))
    emotion_batches = [[emotion[i] for i in emo_order[k * b:(k + 1) * b]] for k in range(args.batches)]

    with tempfile.TemporaryDirectory(prefix="drift-calib-") as tmp:
        model_dir = champion_dir(spec.model.base, Path(tmp) / "teacher", names)
        counter = TokenCounter(model_dir)
        ref_side = TextSide([t for t, _ in reference], np.array([y for _, y in reference]))
        ref_outputs = ref_labels = None
        if not args.no_model:
            # Same reference subsample for every batch, as the stage would draw it for one champion.
            pick = np.sort(np.random.default_rng(cfg.seed).choice(n, min(n, cfg.embedding_reference_subsample),
                                                                  replace=False))
            ref_outputs = model_outputs(model_dir, [reference[i][0] for i in pick], max_length=spec.model.max_length)
            ref_labels = np.array([reference[i][1] for i in pick])

        def run(batches):
            flags, per_check = [], {}
            for batch in batches:
                cur = TextSide([t for t, _ in batch], np.array([y for _, y in batch]))
                checks, _ = statistical_checks(cfg, names, counter, ref_side, cur)
                if ref_outputs is not None:
                    more, data = model_checks(cfg, names, model_dir, ref_side.texts, cur.texts,
                                              max_length=spec.model.max_length, ref_outputs=ref_outputs,
                                              ref_labels=ref_labels, cur_labels=cur.labels)
                    checks.update(more)
                    per_check["(label_quality)"] = per_check.get("(label_quality)", 0) + int(
                        data["label_quality"]["flagged"])
                for name, check in checks.items():
                    per_check[name] = per_check.get(name, 0) + int(check["drifted"])
                flags.append(any(c["drifted"] for c in checks.values()))
            return float(np.mean(flags)), {k: v / len(batches) for k, v in per_check.items()}

        skipped = (None, {})
        false_alarm, null_checks = run(null_batches) if "null" in args.scenarios else skipped
        emotion_rate, emotion_checks = run(emotion_batches) if "emotion" in args.scenarios else skipped
        skew_rate, skew_checks = run(skew_batches) if "skew" in args.scenarios else skipped

    print(json.dumps({
        "bench": "drift_calibration",
        "false_alarm_rate": false_alarm, "false_alarm_target": "<= 0.05",
        "detection_emotion": emotion_rate, "detection_label_skew": skew_rate, "detection_target": ">= 0.95",
        "label_skew": "90/10" if mix is None else "most common class doubled", "classes": len(names),
        "passed": all(rate is None or ok for rate, ok in (
            (false_alarm, false_alarm is not None and false_alarm <= 0.05),
            (emotion_rate, emotion_rate is not None and emotion_rate >= 0.95),
            (skew_rate, skew_rate is not None and skew_rate >= 0.95))),
        "batches_per_scenario": args.batches, "batch_size": b, "reference_rows": n,
        "model_checks": not args.no_model, "embedding_subsample": cfg.embedding_subsample,
        "embedding_reference_subsample": cfg.embedding_reference_subsample,
        "per_check_flag_rate": {"null": null_checks, "emotion": emotion_checks, "label_skew": skew_checks},
        "seconds": round(time.perf_counter() - started, 1),
    }, sort_keys=False))


if __name__ == "__main__":
    main()
