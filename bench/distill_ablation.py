"""Distillation settings side by side, on one retrain run's own teacher, snapshot and champion: the real
``python -m tasks distill`` command once per variant, then each student on the golden set (dev.tsv), its
retention against the teacher, and the gate's statistic against the champion's student (paired bootstrap CI of
the accuracy difference, as ``non_inferiority_student`` computes it). Prints one JSON line.

    make demo
    python bench/distill_ablation.py --run "$(ls -d .demo/storage/runs/sst2/retrain-* | tail -1)"

Every variant trains on the same rows for the spec's ``student.epochs`` unless it sets its own, so the training
seconds are the budget each one used.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_json, read_tsv, run_stage, stage_result  # noqa: E402

VARIANTS = {
    "teacher_layers": {"student.init_from": "teacher", "student.hidden_mse_weight": 0.0},
    "teacher_layers+hidden_mse": {"student.init_from": "teacher", "student.hidden_mse_weight": 1.0},
    "champion_student+hidden_mse": {"student.init_from": "champion", "student.hidden_mse_weight": 1.0},
    "teacher_layers_2_epochs": {"student.init_from": "teacher", "student.hidden_mse_weight": 0.0,
                                "student.epochs": 2.0},
    "champion_student+hidden_mse_2_epochs": {"student.init_from": "champion", "student.hidden_mse_weight": 1.0,
                                             "student.epochs": 2.0},
}


def golden_predictions(model_dir: str) -> "object":
    from tasks import storage
    from tasks.train.modeling import predict_proba

    texts = [t for t, _ in read_tsv("dev")]
    return predict_proba(storage.local_path(storage.normalize(model_dir)), texts, max_length=128).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a retrain run folder with finetune/, ingest/ and summary.json")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    import numpy as np

    from tasks import storage
    from tasks.decide.gates import paired_bootstrap_diff
    from tasks.spec import dump, load_spec, with_overrides

    run = storage.normalize(args.run)
    spec = load_spec(storage.join(run, "spec.json"))
    snapshot = storage.read_json(storage.join(run, "ingest", "result.json"))["snapshot_uri"]
    teacher = storage.join(run, "finetune", "model")
    champion_version = storage.read_json(storage.join(run, "summary.json")).get("champion_before")
    if not champion_version:
        sys.exit(f"{run} ran without a champion (a first run); pick a later run")
    champion = spec.layout.version(champion_version)

    y = np.array([label for _, label in read_tsv("dev")])
    teacher_acc = float(np.mean(golden_predictions(teacher) == y))
    champion_correct = golden_predictions(storage.join(champion, "student")) == y
    out: dict = {"bench": "distill_ablation", "run": run, "champion": champion_version, "golden_rows": len(y),
                 "teacher_accuracy": round(teacher_acc, 4),
                 "champion_student_accuracy": round(float(champion_correct.mean()), 4), "variants": {}}
    root = "file://" + tempfile.mkdtemp(prefix="distill-ablation-")
    for name in args.variants:
        variant_run = storage.join(root, name)
        storage.write_json(storage.join(variant_run, "spec.json"), dump(with_overrides(spec, VARIANTS[name])))
        t0 = time.monotonic()
        proc = run_stage(["distill", "--run", variant_run, "--snapshot", snapshot, "--teacher", teacher,
                          "--champion", champion], log=Path(tempfile.gettempdir(), f"distill-ablation-{name}.log"))
        if proc.returncode:
            sys.exit(proc.stdout[-3000:])
        result = stage_result(proc.stdout)
        correct = golden_predictions(result["model_uri"]) == y
        ci = paired_bootstrap_diff(correct, champion_correct, resamples=spec.gates.bootstrap_resamples,
                                   confidence=spec.gates.confidence, seed=spec.gates.seed)
        out["variants"][name] = {
            "overrides": VARIANTS[name], "init_from": result.get("init_from"),
            "train_seconds": result["train_seconds"], "wall_seconds": round(time.monotonic() - t0, 1),
            "golden_accuracy": round(float(correct.mean()), 4),
            "retention": round(float(correct.mean()) / teacher_acc, 4),
            "vs_champion_student": {k: round(ci[k], 4) for k in ("diff", "lower", "upper")},
            "non_inferiority_passes": ci["lower"] >= -spec.gates.non_inferiority_margin,
        }
        print(f"{name}: {json.dumps(out['variants'][name])}", file=sys.stderr, flush=True)
    print_json(out)


if __name__ == "__main__":
    main()
