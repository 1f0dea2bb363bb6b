"""Time the real finetune and distill stage commands on an SST-2 slice, as the demo runs them, and score both
models on the golden set (dev.tsv). Prints one JSON line.

    python bench/demo_stages.py --rows 4000 --min-words 10            # spec defaults from include/pipelines/sst2.yaml
    python bench/demo_stages.py --rows 4000 --set train.epochs=2 --set student.layers=3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_run, parse_overrides, print_json, read_tsv, run_stage, stage_result, write_snapshot  # noqa: E402


def dev_accuracy(model_uri: str, max_length: int) -> float:
    import numpy as np

    from tasks import storage
    from tasks.train.modeling import predict_proba

    dev = read_tsv("dev")
    probs = predict_proba(storage.local_path(model_uri), [t for t, _ in dev], max_length=max_length)
    return float(np.mean(probs.argmax(1) == np.array([y for _, y in dev])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000, help="SST-2 train rows in the snapshot")
    parser.add_argument("--min-words", type=int, default=0, help="only rows with at least this many words")
    parser.add_argument("--set", action="append", default=[], help="spec override, dotted.path=JSON value")
    parser.add_argument("--skip-distill", action="store_true")
    parser.add_argument("--log-prefix", default="/tmp/demo-stages-", help="stage logs go to PREFIX{stage}.log")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)

    root = "file://" + tempfile.mkdtemp(prefix="demo-stages-")
    rows = read_tsv("train", min_words=args.min_words, limit=args.rows)
    snapshot = write_snapshot(root, "sst2", rows)
    run = make_run(root, "bench", overrides)
    from tasks.spec import load_spec

    spec = load_spec(run + "/spec.json")
    out: dict = {"rows": len(rows), "min_words": args.min_words, "overrides": overrides,
                 "train": spec.train.model_dump(), "student": spec.student.model_dump()}

    t0 = time.monotonic()
    proc = run_stage(["finetune", "--run", run, "--snapshot", snapshot], log=Path(args.log_prefix + "finetune.log"))
    out["finetune_wall_s"] = round(time.monotonic() - t0, 1)
    if proc.returncode:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    teacher = stage_result(proc.stdout)
    out["finetune"] = {k: teacher[k] for k in ("metrics", "global_step", "samples_per_second", "train_seconds")}
    out["teacher_dev_accuracy"] = round(dev_accuracy(teacher["model_uri"], spec.model.max_length), 4)
    print(f"finetune: {out['finetune_wall_s']}s, dev accuracy {out['teacher_dev_accuracy']}", file=sys.stderr)

    if not args.skip_distill:
        t0 = time.monotonic()
        proc = run_stage(["distill", "--run", run, "--snapshot", snapshot, "--teacher", teacher["model_uri"]],
                         log=Path(args.log_prefix + "distill.log"))
        out["distill_wall_s"] = round(time.monotonic() - t0, 1)
        if proc.returncode:
            sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
        student = stage_result(proc.stdout)
        out["distill"] = {k: student[k] for k in ("metrics", "global_step", "samples_per_second", "train_seconds")}
        out["student_dev_accuracy"] = round(dev_accuracy(student["model_uri"], spec.model.max_length), 4)
        out["retention"] = round(out["student_dev_accuracy"] / out["teacher_dev_accuracy"], 4)
        out["models"] = {"teacher": teacher["model_uri"], "student": student["model_uri"], **student["exports"]}
    print_json(out)


if __name__ == "__main__":
    main()
