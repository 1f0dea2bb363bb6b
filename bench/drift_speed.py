"""Drift cost: the statistical checks at 10k, 30k and 100k rows, and the embedding check at its default subsample.

    python bench/drift_speed.py [--sizes 10000 30000 100000] [--repeats 2]

At each size N the five statistical checks (label PSI, label chi-square, length KS, vocabulary JS, unknown
tokens) run as the drift stage runs them: N new texts against a reference of N texts (2N texts tokenized).
Texts are SST-2 train sentences drawn with replacement. The target is <= 10 s at 100k on 2 cores, growing
linearly; wall and CPU seconds are both reported (on a shared machine wall time is noisy). The embedding and
prediction checks (one forward pass of the packaged MiniLM encoder over
``drift.embedding_subsample`` new and ``drift.embedding_reference_subsample`` reference texts, then the MMD permutation test) are timed once at the spec's
default subsample; their cost does not grow with N. Prints one JSON line (best of --repeats per size).
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
os.environ.setdefault("RAYON_NUM_THREADS", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-model", action="store_true", help="skip the embedding-check timing")
    parser.add_argument("--spec", default=str(ROOT / "include" / "pipelines" / "sst2.yaml"))
    args = parser.parse_args()

    import numpy as np
    import torch

    from tasks.drift.embeddings import model_checks
    from tasks.drift.stats import TextSide, TokenCounter, statistical_checks
    from tasks.train.modeling import load_classifier, load_tokenizer, resolve_base_model, save_model
    from tasks.spec import load_spec

    torch.set_num_threads(2)
    os.environ.setdefault("RETRAIN_STORAGE_URI", "file:///tmp/unused")
    spec = load_spec(args.spec)
    cfg, names = spec.drift, spec.data.labels
    with open(DATA / "sst2" / "train.tsv", newline="", encoding="utf-8") as fh:
        rows = [(r["sentence"], int(r["label"])) for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]
    rng = np.random.default_rng(0)

    def sample(n: int) -> TextSide:
        pick = rng.integers(0, len(rows), size=n)
        return TextSide([rows[i][0] for i in pick], np.array([rows[i][1] for i in pick]))

    base = resolve_base_model(spec.model.base)
    counter = TokenCounter(base)
    statistical_checks(cfg, names, counter, sample(1000), sample(1000))  # warm up imports and caches

    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for n in args.sizes:
        reference, current = sample(n), sample(n)
        best, best_cpu = float("inf"), float("inf")
        for _ in range(args.repeats):
            fresh = TokenCounter(base)  # a cold word cache, as in one drift run
            started, started_cpu = time.perf_counter(), time.process_time()
            statistical_checks(cfg, names, fresh, reference, current)
            best = min(best, time.perf_counter() - started)
            best_cpu = min(best_cpu, time.process_time() - started_cpu)
        timings[str(n)] = round(best, 3)
        cpu[str(n)] = round(best_cpu, 3)

    sizes = np.array(args.sizes, dtype=float)
    seconds = np.array([timings[str(n)] for n in args.sizes])
    slope, intercept = np.polyfit(sizes, seconds, 1)
    fitted = slope * sizes + intercept
    r2 = 1 - float(np.sum((seconds - fitted) ** 2) / max(np.sum((seconds - seconds.mean()) ** 2), 1e-12))
    out = {
        "bench": "drift_speed", "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "statistical_seconds": timings,
        "statistical_cpu_seconds": cpu,
        "seconds_per_10k_rows": {k: round(v / (int(k) / 10_000), 3) for k, v in timings.items()},
        "linear_fit": {"seconds_per_100k": round(slope * 100_000, 3), "intercept_s": round(intercept, 3),
                       "r2": round(r2, 4)},
        "target": "<= 10 s at 100k rows (100k new vs 100k reference)",
        "passed": timings.get("100000", 0.0) <= 10.0,
    }
    if not args.no_model:
        with tempfile.TemporaryDirectory(prefix="drift-speed-") as tmp:
            torch.manual_seed(0)
            model_dir = save_model(load_classifier(base, names), load_tokenizer(base), Path(tmp) / "teacher")
            reference, current = sample(20_000), sample(20_000)
            started = time.perf_counter()
            checks, _ = model_checks(cfg, names, model_dir, reference.texts, current.texts,
                                     max_length=spec.model.max_length)
            out["embedding_check"] = {
                "seconds": round(time.perf_counter() - started, 2), "model": spec.model.base,
                "new_subsample": cfg.embedding_subsample, "reference_subsample": cfg.embedding_reference_subsample, "permutations": cfg.embedding_permutations,
                "note": "includes loading the model; independent of the number of new rows",
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
