"""Evaluate stage: score the candidate teacher and student and the champion on the frozen golden set and the
snapshot's holdout, measure the student's CPU cost, apply the gates, write the gate report.

``python -m tasks evaluate --run R --snapshot S --teacher T --student ST --champion C|none [--golden G]``

Artifacts under ``R/evaluate/``: metrics.json (everything), gate_report.json, gate_report.md,
confusion_<model>_<set>.png, result.json (the small XCom: passed, first_run, gates, failed_gates, metrics,
report_uri, report_md_uri). Exit code 0 whether or not the gates pass; the DAG's gate task reads ``passed``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tasks.decide import gates as gates_mod
from tasks.train import modeling
from tasks import results, storage
from tasks.data import snapshots
from tasks.spec import PipelineSpec, load_spec

METRICS_ENV = "RETRAIN_METRICS_DIR"
_METRICS = ("accuracy", "f1", "precision", "recall")
_loaded: dict[str, Any] = {}


def metrics_dir() -> Path:
    """include/metrics next to tasks/ (the task image copies both), or $RETRAIN_METRICS_DIR."""
    configured = os.environ.get(METRICS_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "include" / "metrics"


def load_metric(name: str):
    """An ``evaluate`` metric from the local module include/metrics/<name>/<name>.py (no Hub)."""
    if name not in _loaded:
        import evaluate

        path = metrics_dir() / name
        if not (path / f"{name}.py").is_file():
            raise FileNotFoundError(f"metric module {path / (name + '.py')} not found (set ${METRICS_ENV})")
        _loaded[name] = evaluate.load(str(path))
    return _loaded[name]


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import confusion_matrix

    y_true = [int(v) for v in y_true]
    y_pred = [int(v) for v in y_pred]
    ids = list(range(len(labels)))
    common = {"predictions": y_pred, "references": y_true}
    accuracy = load_metric("accuracy").compute(**common)["accuracy"]
    macro_f1 = load_metric("f1").compute(**common, labels=ids, average="macro", zero_division=0)["f1"]
    per = {name: load_metric(name).compute(**common, labels=ids, average=None, zero_division=0)[name]
           for name in ("precision", "recall", "f1")}
    support = np.bincount(np.asarray(y_true, dtype=int), minlength=len(labels)).tolist() if y_true else [0] * len(labels)
    return {
        "n": len(y_true),
        "accuracy": float(accuracy),
        "macro_f1": float(macro_f1),
        "per_class": {label: {"precision": float(per["precision"][i]), "recall": float(per["recall"][i]),
                              "f1": float(per["f1"][i]), "support": int(support[i])}
                      for i, label in enumerate(labels)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def confusion_png(matrix: list[list[int]], labels: Sequence[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(labels), 1.0 + 0.8 * len(labels)), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    peak = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if peak and cm[i, j] > peak / 2 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def model_size_mb(model_dir: Path) -> dict[str, float]:
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".onnx")]
    return {"weights_mb": sum(p.stat().st_size for p in weights) / 1e6,
            "total_mb": sum(p.stat().st_size for p in files) / 1e6}


def measure_cost(model_dir: Path, texts: Sequence[str], *, max_length: int, samples: int,
                 batch_size: int = 32, throughput_batches: int = 4) -> dict[str, float]:
    """CPU latency at batch 1 (p50/p95 over `samples` calls, after warm-up) and throughput at batch 32."""
    import torch

    model = modeling.load_classifier(model_dir).to("cpu").eval()
    tokenizer = modeling.load_tokenizer(model_dir)
    pool = list(texts) or ["."]
    timings: list[float] = []
    with torch.inference_mode():
        for i in range(3 + samples):
            text = pool[i % len(pool)]
            start = time.perf_counter()
            enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
            model(**enc)
            if i >= 3:
                timings.append((time.perf_counter() - start) * 1000)
        batch = [pool[i % len(pool)] for i in range(batch_size)]
        start = time.perf_counter()
        for _ in range(throughput_batches):
            enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            model(**enc)
        elapsed = time.perf_counter() - start
    timings.sort()
    p95 = timings[min(len(timings) - 1, int(np.ceil(0.95 * len(timings))) - 1)]
    return {"latency_ms_p50": float(statistics.median(timings)), "latency_ms_p95": float(p95),
            "throughput_batch32_per_s": batch_size * throughput_batches / elapsed, "latency_samples": samples,
            "torch_threads": torch.get_num_threads()}


def _resolve_champion(spec: PipelineSpec, champion: str | None) -> str | None:
    if not champion or champion.lower() == "none":
        return None
    if "://" in champion or champion.startswith("/"):
        return storage.normalize(champion)
    return spec.layout.version(champion)  # a bare version id


def resolve_golden(snapshot_uri: str, golden: str | None) -> str:
    if golden:
        return storage.normalize(golden)
    manifest = snapshots.read_manifest(snapshot_uri)
    uri = manifest.get("golden_uri")
    if not uri:
        raise SystemExit(f"snapshot {snapshot_uri} records no golden_uri; pass --golden")
    return uri


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    out = {"golden_accuracy": round(m["golden"]["accuracy"], 4), "golden_macro_f1": round(m["golden"]["macro_f1"], 4)}
    if m.get("holdout"):
        out["holdout_accuracy"] = round(m["holdout"]["accuracy"], 4)
        out["holdout_macro_f1"] = round(m["holdout"]["macro_f1"], 4)
    if m.get("cost"):
        out.update({k: round(v, 3) for k, v in m["cost"].items() if isinstance(v, float)})
    return out


def run(run_uri: str, snapshot_uri: str, teacher_uri: str, student_uri: str, champion: str | None,
        golden: str | None = None) -> dict[str, Any]:
    run_uri = storage.normalize(run_uri)
    snapshot_uri = storage.normalize(snapshot_uri)
    spec = load_spec(storage.join(run_uri, "spec.json"))
    labels = spec.data.labels
    out_uri = storage.join(run_uri, "evaluate")
    golden_uri = resolve_golden(snapshot_uri, golden)
    golden_df = snapshots.read_golden(golden_uri)
    snap = snapshots.read_snapshot(snapshot_uri)
    holdout_df = snap[snap["split"] == "holdout"]
    sets = {"golden": golden_df, "holdout": holdout_df}
    champion_uri = _resolve_champion(spec, champion)

    models = {"teacher": storage.normalize(teacher_uri), "student": storage.normalize(student_uri)}
    if champion_uri:
        models["champion_teacher"] = storage.join(champion_uri, "teacher")
        models["champion_student"] = storage.join(champion_uri, "student")

    metrics: dict[str, Any] = {"labels": labels, "golden_uri": golden_uri, "snapshot_uri": snapshot_uri,
                               "champion_uri": champion_uri, "models": {}}
    preds: dict[str, np.ndarray] = {}
    pngs: dict[str, str] = {}
    for name, uri in models.items():
        local = modeling.materialize(uri)
        entry: dict[str, Any] = {"uri": uri}
        for set_name, frame in sets.items():
            if len(frame) == 0:
                entry[set_name] = None
                continue
            texts = frame["text"].astype(str).tolist()
            proba = modeling.predict_proba(local, texts, max_length=spec.model.max_length)
            y_pred = proba.argmax(axis=1)
            if set_name == "golden":
                preds[name] = y_pred
            entry[set_name] = compute_metrics(frame["label"].astype(int).tolist(), y_pred.tolist(), labels)
            png_uri = storage.join(out_uri, f"confusion_{name}_{set_name}.png")
            storage.write_bytes(png_uri, confusion_png(entry[set_name]["confusion_matrix"], labels,
                                                       f"{spec.name} {name} on {set_name}"))
            pngs[f"{name}_{set_name}"] = png_uri
        if name == "student":
            entry["cost"] = {**measure_cost(local, golden_df["text"].astype(str).tolist(),
                                            max_length=spec.model.max_length, samples=spec.gates.latency_samples),
                             **{f"size_{k}": v for k, v in model_size_mb(local).items()}}
        metrics["models"][name] = entry

    y_true = golden_df["label"].astype(int).to_numpy()

    def scores(name: str) -> gates_mod.ModelScores | None:
        if name not in preds:
            return None
        m = metrics["models"][name]["golden"]
        return gates_mod.ModelScores(preds[name], m["accuracy"], m["macro_f1"])

    cost = metrics["models"]["student"]["cost"]
    passed, first_run, gate_list = gates_mod.evaluate_gates(
        spec.gates, labels, y_true, teacher=scores("teacher"), student=scores("student"),
        champion_teacher=scores("champion_teacher"), champion_student=scores("champion_student"),
        student_latency_ms_p95=cost["latency_ms_p95"], student_size_mb=cost["size_weights_mb"])

    summary = {name: _summary(m) for name, m in metrics["models"].items()}
    champion_summary = ({"uri": champion_uri, "teacher": summary.get("champion_teacher"),
                         "student": summary.get("champion_student")} if champion_uri else None)
    gate_dicts = [g.to_dict() for g in gate_list]
    failed = [g.name for g in gate_list if not g.passed]
    report = {"pipeline": spec.name, "run_uri": run_uri, "passed": passed, "first_run": first_run,
              "failed_gates": failed, "gates": gate_dicts, "thresholds": spec.gates.model_dump(mode="json"),
              "golden_uri": golden_uri, "snapshot_uri": snapshot_uri, "champion_uri": champion_uri,
              "metrics": summary, "confusion_matrices": pngs}
    report_uri = storage.join(out_uri, "gate_report.json")
    report_md_uri = storage.join(out_uri, "gate_report.md")
    storage.write_json(storage.join(out_uri, "metrics.json"), metrics)
    storage.write_json(report_uri, report)
    storage.write_text(report_md_uri, gates_mod.render_markdown(spec.name, run_uri, passed, first_run, gate_list,
                                                               summary))
    result = {
        "passed": passed,
        "first_run": first_run,
        "gates": [{k: g[k] for k in ("name", "passed", "value", "threshold", "reason", "skipped")} for g in gate_dicts],
        "failed_gates": failed,
        "metrics": {"teacher": summary["teacher"], "student": summary["student"], "champion": champion_summary},
        "golden_uri": golden_uri,
        "report_uri": report_uri,
        "report_md_uri": report_md_uri,
    }
    return results.emit(result, out_uri)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--snapshot", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--champion", required=True, help="champion version URI, or none")
    parser.add_argument("--golden", default=None, help="frozen golden set URI (default: from the snapshot manifest)")
    args = parser.parse_args(argv)
    run(args.run, args.snapshot, args.teacher, args.student, args.champion, args.golden)
    return 0
