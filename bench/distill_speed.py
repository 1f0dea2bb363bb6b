"""Teacher vs student (and its int8 / ONNX exports) on the golden set, CPU inference: throughput at batch 32,
p95 latency at batch 1, accuracy, retention (student accuracy / teacher accuracy). Prints one JSON line.

The models come from one run of the real stages (bench/demo_stages.py prints their URIs), so teacher and
student were trained on the same rows within the same budget:

    python bench/demo_stages.py --rows 4000 --min-words 10 > /tmp/demo.json
    python bench/distill_speed.py --from /tmp/demo.json
    python bench/distill_speed.py --teacher DIR --student DIR [--int8 DIR] [--onnx DIR] [--onnx-int8 DIR]
    python bench/distill_speed.py --version VERSION_DIR   # a registry version: teacher/, student/, exports/*
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_json, read_tsv  # noqa: E402


def torch_predictor(model, tokenizer, max_length: int) -> Callable[[Sequence[str]], "object"]:
    import torch

    def predict(texts):
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            return model(**enc).logits.numpy()

    return predict


def measure(predictors: dict[str, Callable], texts: list[str], labels: list[int], latency_rows: int) -> dict:
    """Every model on each batch in turn, so that load from other processes hits all of them alike."""
    import numpy as np

    seconds = {name: 0.0 for name in predictors}
    preds = {name: [] for name in predictors}
    latencies = {name: [] for name in predictors}
    for predict in predictors.values():
        predict(texts[:32])  # warm-up
    for start in range(0, len(texts), 32):  # batch 32, dev order, padded per batch
        for name, predict in predictors.items():
            t0 = time.perf_counter()
            preds[name].append(predict(texts[start:start + 32]).argmax(-1))
            seconds[name] += time.perf_counter() - t0
    for text in texts[:latency_rows]:
        for name, predict in predictors.items():
            t0 = time.perf_counter()
            predict([text])
            latencies[name].append((time.perf_counter() - t0) * 1000)
    return {name: {"throughput_b32": round(len(texts) / seconds[name], 1),
                   "p95_ms_b1": round(float(np.percentile(latencies[name], 95)), 2),
                   "median_ms_b1": round(statistics.median(latencies[name]), 2),
                   "accuracy": round(float(np.mean(np.concatenate(preds[name]) == np.array(labels))), 4)}
            for name in predictors}


def size_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.suffix in
                     (".safetensors", ".pt", ".onnx")) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="from_json", help="the JSON line bench/demo_stages.py printed")
    parser.add_argument("--teacher")
    parser.add_argument("--student")
    parser.add_argument("--int8")
    parser.add_argument("--onnx")
    parser.add_argument("--onnx-int8")
    parser.add_argument("--version", help="a registry version folder on local disk: its teacher, student and exports")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--latency-rows", type=int, default=200)
    args = parser.parse_args()
    dirs = {"teacher": args.teacher, "student": args.student, "int8": args.int8, "onnx": args.onnx,
            "onnx_int8": args.onnx_int8}
    if args.version:
        from tasks import storage

        version = storage.local_path(storage.normalize(args.version))
        dirs.update({"teacher": str(version / "teacher"), "student": str(version / "student")})
        dirs.update({name: str(version / "exports" / name) for name in ("int8", "onnx", "onnx_int8")
                     if (version / "exports" / name).is_dir()})
    if args.from_json:
        demo = json.loads(Path(args.from_json).read_text().strip().splitlines()[-1])
        dirs.update({k: v for k, v in demo["models"].items() if v})

    import torch

    from tasks.train import export
    from tasks import storage
    from tasks.train.modeling import load_classifier, load_tokenizer

    dev = read_tsv("dev")
    texts, labels = [t for t, _ in dev], [y for _, y in dev]
    out: dict = {"bench": "distill_speed", "rows": len(dev), "torch_threads": torch.get_num_threads()}
    predictors, paths = {}, {}
    for name in ("teacher", "student", "int8", "onnx", "onnx_int8"):
        if not dirs.get(name):
            continue
        path = paths[name] = storage.local_path(storage.normalize(dirs[name]))
        if name.startswith("onnx"):
            predictors[name] = export.OnnxClassifier(path, threads=torch.get_num_threads()).logits
        else:
            model = export.load_int8(path) if name == "int8" else load_classifier(path).eval()
            predictors[name] = torch_predictor(model, load_tokenizer(path), args.max_length)
    for name, figures in measure(predictors, texts, labels, args.latency_rows).items():
        out[name] = {**figures, "size_mb": size_mb(paths[name])}
    teacher = out.get("teacher")
    for name in ("student", "int8", "onnx", "onnx_int8"):
        if teacher and name in out:
            out[name]["speedup_vs_teacher"] = round(out[name]["throughput_b32"] / teacher["throughput_b32"], 2)
            out[name]["retention"] = round(out[name]["accuracy"] / teacher["accuracy"], 4)
    print_json(out)


if __name__ == "__main__":
    main()
