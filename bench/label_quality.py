"""Label quality with a real champion: false stops on clean batches, stops on flipped ones, and one stopped run.

    python bench/label_quality.py [--storage .demo/storage] [--batches 20] [--rows 500] [--e2e]

Needs a trained sst2 champion in STORAGE (``make demo`` leaves one in .demo/storage). Batches are SST-2 train
rows the champion's snapshot does not hold, disjoint from each other:

* ``clean``: as they are; ``flip20`` / ``flip40``: 20% / 40% of each batch's labels flipped (seeded).

Each batch goes through the drift stage's own champion-model checks (``tasks.drift.embeddings.model_checks``,
the spec's subsample sizes, the champion's teacher, the reference = the champion snapshot's holdout rows), and
``label_quality.flagged`` is what makes ``decide`` stop the run. The reference's outputs are computed once and
reused, as ``model_checks`` allows; every batch gets its own subsample.

``--e2e`` also lands one flip40 batch and runs the real DAGs on a copy of STORAGE (``scripts/local_run.py run``,
checkpoints left out of the copy), and reports whether the run stopped before fine-tuning, the stages that ran,
their GPU-seconds, and the wall time of the ingest DAG and of the retrain DAG up to the stop.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("RETRAIN_DATA_DIR", ROOT.parent / "shared" / "data"))
from tasks.cli import set_offline_env  # noqa: E402

set_offline_env()

SPEC = ROOT / "include" / "pipelines" / "sst2.yaml"


def sst2_train() -> list[tuple[str, int]]:
    with open(DATA / "sst2" / "train.tsv", newline="", encoding="utf-8") as fh:
        return [(r["sentence"], int(r["label"])) for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]


def flipped(rows: list[tuple[str, int]], share: float, rng) -> list[tuple[str, int]]:
    """``rows`` with exactly ``share`` of their labels flipped (binary), at seeded positions."""
    picked = set(rng.choice(len(rows), size=round(share * len(rows)), replace=False).tolist())
    return [(text, 1 - label if i in picked else label) for i, (text, label) in enumerate(rows)]


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    # SST-2's own format (quoting none): its sentences hold no tab or newline.
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")


def rates(args, spec, champion_uri: str, fresh: list[tuple[str, int]], rng) -> dict:
    import numpy as np

    from tasks import storage
    from tasks.data import snapshots
    from tasks.drift.embeddings import model_checks, model_outputs, subsample
    from tasks.train.modeling import materialize

    cfg, names = spec.drift, spec.data.labels
    manifest = storage.read_json(storage.join(champion_uri, "manifest.json"))
    reference = snapshots.read_snapshot(manifest["snapshot_uri"])
    holdout = reference[reference["split"] == "holdout"].reset_index(drop=True)
    model_dir = materialize(storage.join(champion_uri, "teacher"))
    pick = subsample(len(holdout), cfg.embedding_reference_subsample, np.random.default_rng(cfg.seed))
    ref_outputs = model_outputs(model_dir, holdout["text"].iloc[pick].tolist(), max_length=spec.model.max_length)
    ref_labels = holdout["label"].to_numpy()[pick]

    out: dict = {"reference_holdout_rows": len(holdout), "reference_sample": len(pick)}
    scenarios = {"clean": 0.0, "flip20": 0.2, "flip40": 0.4}
    for s, (name, share) in enumerate(scenarios.items()):
        flags, drops, seconds = 0, [], []
        for b in range(args.batches):
            start = (s * args.batches + b) * args.rows
            batch = fresh[start:start + args.rows]
            if share:
                batch = flipped(batch, share, rng)
            began = time.perf_counter()
            _, data = model_checks(cfg, names, model_dir, [], [t for t, _ in batch], max_length=spec.model.max_length,
                                   ref_outputs=ref_outputs, ref_labels=ref_labels,
                                   cur_labels=np.asarray([y for _, y in batch]))
            seconds.append(time.perf_counter() - began)
            quality = data["label_quality"]
            flags += quality["flagged"]
            drops.append(quality["statistic"])
        out[name] = {"batches": args.batches, "stopped": flags, "stop_rate": flags / args.batches,
                     "agreement_drop_mean": round(float(np.mean(drops)), 4),
                     "agreement_drop_max": round(float(np.max(drops)), 4),
                     "seconds_per_batch": round(float(np.mean(seconds)), 2)}
        print(f"[label_quality] {name}: {flags}/{args.batches} stopped, mean drop {np.mean(drops):.3f}",
              file=sys.stderr, flush=True)
    return out


def end_to_end(args, batch: list[tuple[str, int]]) -> dict:
    """One flip40 batch through the real DAGs, on a copy of STORAGE."""
    with tempfile.TemporaryDirectory(prefix="label-quality-e2e-") as tmp:
        storage_copy, landing = Path(tmp) / "storage", Path(tmp) / "landing"
        shutil.copytree(args.storage, storage_copy, ignore=shutil.ignore_patterns("checkpoints", "landing"))
        landing.mkdir()
        write_tsv(landing / "batch-flipped.tsv", batch)
        timings = {}
        for command in ("ingest", "run"):  # run = ingest (nothing new the second time) then retrain
            began = time.perf_counter()
            proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "local_run.py"), command, "--spec",
                                   str(SPEC), "--landing", str(landing), "--storage", str(storage_copy)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=1800)
            timings[command] = round(time.perf_counter() - began, 1)
            if not proc.stdout.strip():
                raise SystemExit(f"local_run {command} printed nothing:\n{proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
    from tasks.contracts import TaskIds

    stages = summary["cost"]["stages"]
    return {
        "exit_code": proc.returncode, "outcome": summary["outcome"], "reasons": summary["decision"].get("reasons"),
        "stages_with_cost": sorted(stages),
        "training_stage_ran": any(task in stages for task in (TaskIds.FINETUNE, TaskIds.DISTILL)),
        "gpu_seconds": summary["cost"]["total"]["gpu_seconds"],
        "drift_stage_wall_s": (stages.get(TaskIds.DRIFT) or {}).get("wall_seconds"),
        "ingest_dag_s": timings["ingest"], "retrain_dag_s": timings["run"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, default=ROOT / ".demo" / "storage")
    parser.add_argument("--batches", type=int, default=20, help="batches per scenario")
    parser.add_argument("--rows", type=int, default=500, help="rows per batch")
    parser.add_argument("--e2e", action="store_true", help="also one flip40 batch through the real DAGs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np

    from tasks import storage
    from tasks.data import snapshots
    from tasks.spec import load_spec

    spec = load_spec(SPEC)
    pointer = Path(args.storage) / "models" / spec.name / "champion.json"
    if not pointer.exists():
        raise SystemExit(f"no champion in {args.storage} ({pointer} missing): run `make demo` first")
    champion_uri = json.loads(pointer.read_text())["version_uri"]
    manifest = storage.read_json(storage.join(champion_uri, "manifest.json"))
    seen = set(snapshots.read_snapshot(manifest["snapshot_uri"])["text"])
    rng = np.random.default_rng(args.seed)
    fresh = [row for row in sst2_train() if row[0] not in seen]
    fresh = [fresh[i] for i in rng.permutation(len(fresh))]
    needed = (3 * args.batches + 1) * args.rows
    if len(fresh) < needed:
        raise SystemExit(f"only {len(fresh)} SST-2 train rows outside the champion's snapshot; {needed} needed")

    out = {"champion": manifest.get("version"), "rows_per_batch": args.rows,
           "embedding_subsample": spec.drift.embedding_subsample,
           "label_quality_floor": spec.drift.label_quality_floor, "label_quality_alpha": spec.drift.label_quality_alpha}
    began = time.perf_counter()
    out.update(rates(args, spec, champion_uri, fresh, rng))
    out["rates_wall_s"] = round(time.perf_counter() - began, 1)
    if args.e2e:
        out["e2e_flip40"] = end_to_end(args, flipped(fresh[-args.rows:], 0.4, rng))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
