"""Evaluate stage: score the candidate teacher and student and the champion on the frozen golden set and the
snapshot's holdout, measure the student's CPU cost, apply the gates, write the gate report.

``python -m tasks evaluate --run R --snapshot S --teacher T --student ST --champion C|none [--golden G]``

Artifacts under ``R/evaluate/``: metrics.json (everything), gate_report.json, gate_report.md,
confusion_<model>_<set>.png, result.json (the small XCom: passed, first_run, gates, failed_gates, metrics,
report_uri, report_md_uri). Exit code 0 whether or not the gates pass; the DAG's gate task reads ``passed``.

Metrics are ``tasks.metrics`` (the one definition: scikit-learn, macro-F1 over every declared class), with
percentile bootstrap intervals on the golden set; the gates, the run summary and the model cards all use the
numbers computed here.

After a re-freeze the golden set may hold texts the champion trained on (:func:`champion_trained_rows`): those
rows are left out of the comparisons with the champion, not of the floors; ``champion_comparison`` in the result,
the gate report and the model card says how many and why.

A golden set too small to compare with the champion (tasks/decide/power.py) is helped by the holdout rows
neither model trained on (:func:`holdout_evidence`; gates.underpowered_evidence).
"""

from __future__ import annotations

import io
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch
from sklearn.metrics import confusion_matrix

from tasks import cli, results, storage
from tasks import metrics as metrics_mod
from tasks.contracts import ChampionComparison, EvaluateResult, GateResult
from tasks.data import snapshots
from tasks.decide import CandidateArgs, remedies
from tasks.decide import gates as gates_mod
from tasks.errors import SpecInvalid
from tasks.manifests import SnapshotManifest, VersionManifest, read_version_manifest
from tasks.spec import PipelineSpec, load_spec
from tasks.train import modeling

log = logging.getLogger(__name__)


@dataclass
class EvaluateArgs(CandidateArgs):
    champion: str | None = field(metadata={"help": "the champion version (URI or id), or none on a first run"})
    golden: str | None = field(default=None, metadata={"help": "frozen golden set URI (default: from the snapshot "
                                                                "manifest)"})


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro-F1 (tasks.metrics: over every declared class), per-class precision/recall/F1/support and
    the confusion matrix."""
    y_true = [int(v) for v in y_true]
    y_pred = [int(v) for v in y_pred]
    n_classes = len(labels)
    per = metrics_mod.per_class(y_true, y_pred, n_classes)
    return {
        "n": len(y_true),
        "accuracy": metrics_mod.accuracy(y_true, y_pred),
        "macro_f1": metrics_mod.macro_f1(y_true, y_pred, n_classes),
        "per_class": {label: {"precision": per["precision"][i], "recall": per["recall"][i], "f1": per["f1"][i],
                              "support": per["support"][i]}
                      for i, label in enumerate(labels)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(n_classes))).tolist(),
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
    champion = cli.optional(champion)
    if champion is None:
        return None
    if "://" in champion or champion.startswith("/"):
        return storage.normalize(champion)
    return spec.layout.version(champion)  # a bare version id


def resolve_golden(snapshot_uri: str, golden: str | None, manifest: SnapshotManifest) -> str:
    if golden:
        return storage.normalize(golden)
    uri = manifest.golden_uri
    if not uri:
        raise SpecInvalid(f"snapshot {snapshot_uri} records no golden_uri; pass --golden")
    return uri


# ---------------------------------------------------------------- golden rows the champion trained on



def same_golden_set(snapshot_manifest: SnapshotManifest, golden_id: str | None, golden_uri: str) -> bool:
    """Whether a snapshot's manifest names this golden set (by id where both are known, else by its folder)."""
    if snapshot_manifest.golden_id and golden_id:
        return snapshot_manifest.golden_id == golden_id
    named = snapshot_manifest.golden_uri
    return bool(named) and storage.normalize(named) == storage.normalize(golden_uri)


def champion_trained_rows(champion_uri: str, golden_df: Any, golden_uri: str, snapshot_uri: str,
                          manifest: SnapshotManifest, holdout_df: Any = None
                          ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The golden rows whose text the champion trained on (a bool per row: a train row of the snapshot its
    version's manifest names), the same for ``holdout_df`` (this run's holdout rows; None when not asked or when
    what the champion trained on is unknown), and what was looked at.

    Only a champion whose snapshot named another golden set than this run's can have trained on this set's texts
    (an ingest keeps the current golden set's texts out of every snapshot it makes; a re-freeze changes the set,
    docs/data.md): otherwise nothing is read for them beyond the two manifests. When it did, its snapshot's parts
    are scanned part by part, except the parts this run's snapshot lists too when that snapshot names this golden
    set (they hold none of its texts). The holdout's texts are looked for in the champion's parts this run's
    snapshot does not list (the caller matches them against this snapshot's train rows: holdout_evidence), in the
    same pass."""
    none = np.zeros(len(golden_df), dtype=bool)
    info: dict[str, Any] = {"champion_uri": champion_uri, "looked": False}
    try:
        version = read_version_manifest(champion_uri)
    except storage.NotFound:
        version = VersionManifest()
    info["champion_version"] = version.version
    if not version.snapshot_uri:
        info["note"] = (f"the champion {champion_uri} names no snapshot (no version manifest with snapshot_uri): "
                        f"what it trained on is unknown, so every golden row is compared")
        return none, None, info
    champion_snapshot = storage.normalize(version.snapshot_uri)
    try:
        champion_manifest = manifest if champion_snapshot == snapshot_uri else snapshots.read_manifest(
            champion_snapshot)
    except storage.NotFound:
        info["note"] = (f"the champion's snapshot {champion_snapshot} has no manifest: what it trained on is "
                        f"unknown, so every golden row is compared")
        return none, None, info
    run_names_golden = storage.normalize(manifest.golden_uri or "") == storage.normalize(golden_uri)
    golden_id = manifest.golden_id if run_names_golden else None
    info.update(champion_snapshot_id=champion_manifest.snapshot_id, champion_snapshot_uri=champion_snapshot,
                champion_golden_id=champion_manifest.golden_id,
                golden_id=golden_id or golden_uri.rstrip("/").rsplit("/", 1)[-1])
    look_golden = not same_golden_set(champion_manifest, golden_id, golden_uri)  # else: the common case, none
    base = storage.parent(champion_snapshot)
    listed = set(manifest.parts) if storage.parent(snapshot_uri) == base else set()
    shared = listed if (run_names_golden or not look_golden) else set()
    parts = [p for p in champion_manifest.parts if p not in shared]
    frames = ([golden_df] if look_golden else []) + ([holdout_df] if holdout_df is not None else [])
    texts = pa.array(sorted(set().union(*(set(f["text"].astype(str)) for f in frames))), pa.string())
    found = np.zeros(len(texts), dtype=bool)
    read = 0
    if len(texts) and parts:
        hi_keys = snapshots.text_keys(texts)[0]
        with tempfile.TemporaryDirectory(prefix="evaluate-champion-") as tmp:
            for part in parts:
                if found.all():
                    break
                found |= snapshots.train_texts_in_part(storage.join(base, part), texts, hi_keys, tmp)
                read += 1
    if look_golden:
        info.update(looked=True, parts=len(champion_manifest.parts), parts_shared=len(champion_manifest.parts)
                    - len(parts), parts_read=read)
    trained = set(texts.filter(pa.array(found)).to_pylist())

    def of(frame: Any) -> np.ndarray:
        return frame["text"].astype(str).isin(trained).to_numpy()

    return (of(golden_df) if look_golden else none), (None if holdout_df is None else of(holdout_df)), info


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    """The per-model numbers that travel in the XCom result, the gate report and the registry manifest."""
    golden = m["golden"]
    out = {"golden_accuracy": round(golden["accuracy"], 4), "golden_macro_f1": round(golden["macro_f1"], 4),
           "golden_n": golden["n"]}
    for metric, ci in (golden.get("ci") or {}).items():
        out[f"golden_{metric}_ci"] = [round(ci["lower"], 4), round(ci["upper"], 4)]
    if m.get("holdout"):
        out["holdout_accuracy"] = round(m["holdout"]["accuracy"], 4)
        out["holdout_macro_f1"] = round(m["holdout"]["macro_f1"], 4)
    if m.get("cost"):
        out.update({k: round(v, 3) for k, v in m["cost"].items() if isinstance(v, float)})
    return out


def score_models(spec: PipelineSpec, models: dict[str, str], sets: dict[str, Any], out_uri: str
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str], dict[str, np.ndarray]]:
    """Every model on every set: metrics (with the golden set's bootstrap intervals), golden predictions for
    the gates, confusion PNGs, the student's CPU cost, and holdout predictions (for holdout_evidence)."""
    labels = spec.data.labels
    g = spec.gates
    scored: dict[str, Any] = {}
    preds: dict[str, np.ndarray] = {}
    holdout_preds: dict[str, np.ndarray] = {}
    pngs: dict[str, str] = {}
    for name, uri in models.items():
        local = modeling.materialize(uri)
        entry: dict[str, Any] = {"uri": uri}
        for set_name, frame in sets.items():
            if len(frame) == 0:
                entry[set_name] = None
                continue
            texts = frame["text"].astype(str).tolist()
            y_true = frame["label"].astype(int).to_numpy()
            started = time.monotonic()
            y_pred = modeling.predict_proba(local, texts, max_length=spec.model.max_length).argmax(axis=1)
            entry[set_name] = compute_metrics(y_true.tolist(), y_pred.tolist(), labels)
            log.info("%s on %s (%d rows): accuracy %.4f, macro-F1 %.4f (%.1fs)", name, set_name, len(texts),
                     entry[set_name]["accuracy"], entry[set_name]["macro_f1"], time.monotonic() - started)
            if set_name == "golden":
                preds[name] = y_pred
                entry[set_name]["ci"] = gates_mod.bootstrap_intervals(
                    y_true, y_pred, len(labels), resamples=g.bootstrap_resamples,
                    confidence=g.confidence, seed=g.seed)
            elif set_name == "holdout":
                holdout_preds[name] = y_pred
            png_uri = storage.join(out_uri, f"confusion_{name}_{set_name}.png")
            storage.write_bytes(png_uri, confusion_png(entry[set_name]["confusion_matrix"], labels,
                                                       f"{spec.name} {name} on {set_name}"))
            pngs[f"{name}_{set_name}"] = png_uri
        if name == "student":
            log.info("timing the student on CPU (%d batch-1 calls, then batch 32)", g.latency_samples)
            entry["cost"] = {**measure_cost(local, sets["golden"]["text"].astype(str).tolist(),
                                            max_length=spec.model.max_length, samples=g.latency_samples),
                             **{f"size_{k}": v for k, v in model_size_mb(local).items()}}
        scored[name] = entry
    return scored, preds, pngs, holdout_preds


def run(run_uri: str, snapshot_uri: str, teacher_uri: str, student_uri: str, champion: str | None,
        golden: str | None = None) -> EvaluateResult:
    """Read the sets, score every model, compare with the champion on the rows it did not train on, gate, write
    the reports and the result."""
    run_uri = storage.normalize(run_uri)
    snapshot_uri = storage.normalize(snapshot_uri)
    spec = load_spec(storage.join(run_uri, "spec.json"))
    out_uri = storage.join(run_uri, "evaluate")
    inputs = read_inputs(spec, snapshot_uri, golden, champion)
    models = {"teacher": storage.normalize(teacher_uri), "student": storage.normalize(student_uri)}
    if inputs.champion_uri:
        models["champion_teacher"] = storage.join(inputs.champion_uri, "teacher")
        models["champion_student"] = storage.join(inputs.champion_uri, "student")
    scored, preds, pngs, holdout_preds = score_models(spec, models, inputs.sets, out_uri)
    champion_rows, comparison = compare_rows(spec, inputs, preds)
    holdout = holdout_evidence(spec, inputs, holdout_preds)
    floor_rows = holdout_rows(spec, inputs, holdout_preds)
    cost = scored["student"]["cost"]

    def scores(name: str) -> gates_mod.ModelScores | None:
        if name not in preds:
            return None
        m = scored[name]["golden"]
        return gates_mod.ModelScores(preds[name], m["accuracy"], m["macro_f1"])

    passed, first_run, gate_list = gates_mod.evaluate_gates(
        spec.gates, spec.data.labels, inputs.y_true, teacher=scores("teacher"),
        student=scores("student"), champion_teacher=scores("champion_teacher"),
        champion_student=scores("champion_student"), student_latency_ms_p95=cost["latency_ms_p95"],
        student_size_mb=cost["size_weights_mb"], champion_rows=champion_rows, holdout=holdout,
        holdout_rows=floor_rows)
    result = write_reports(spec, run_uri, out_uri, inputs, scored, pngs, champion_rows, comparison,
                           passed, first_run, gate_list)
    result.remedies = remedies.of_run(None, {"gates": [g.dump() for g in gate_list]},
                                      teacher_training(run_uri, models["teacher"]))
    log.info("gates %s%s; report %s", "passed" if passed else "FAILED: " + ", ".join(result.failed_gates),
             " (first run: floors only)" if first_run else "", result.report_md_uri)
    results.emit(result, out_uri)
    return result


def teacher_training(run_uri: str, teacher_uri: str) -> dict[str, Any] | None:
    """The fine-tune stage's result of this run when it is about this teacher (its ``fresh_start``), else None."""
    uri = storage.join(run_uri, "finetune", "result.json")
    if not storage.exists(uri):
        return None
    result = storage.read_json(uri)
    same = storage.normalize(result.get("model_uri") or "").rstrip("/") == teacher_uri.rstrip("/")
    return result if same else None


@dataclass
class Inputs:
    """What evaluate reads: the golden set and the holdout split, the champion, and which golden rows the
    champion trained on (``trained``: one bool per golden row; ``looked``: how that was found out)."""

    snapshot_uri: str
    golden_uri: str
    golden_df: Any
    sets: dict[str, Any]
    champion_uri: str | None
    trained: np.ndarray | None = None
    looked: dict[str, Any] = field(default_factory=dict)
    holdout_trained: np.ndarray | None = None  # one bool per holdout row, as ``trained``; None: unknown
    holdout_in_train: np.ndarray | None = None  # one bool per holdout row: its text is also a train row here

    @property
    def y_true(self) -> np.ndarray:
        return self.golden_df["label"].astype(int).to_numpy()


def read_inputs(spec: PipelineSpec, snapshot_uri: str, golden: str | None, champion: str | None) -> Inputs:
    manifest = snapshots.read_manifest(snapshot_uri)
    golden_uri = resolve_golden(snapshot_uri, golden, manifest)
    golden_df = snapshots.read_golden(golden_uri)
    snap = snapshots.read_snapshot(snapshot_uri, manifest)
    sets = {"golden": golden_df, "holdout": snap[snap["split"] == "holdout"]}
    train_texts = snap.loc[snap["split"] != "holdout", "text"].astype(str)
    inputs = Inputs(snapshot_uri, golden_uri, golden_df, sets, _resolve_champion(spec, champion),
                    holdout_in_train=sets["holdout"]["text"].astype(str).isin(train_texts).to_numpy())
    if inputs.champion_uri:
        # Golden rows whose text the champion trained on (the golden set was replaced since) stay out of the
        # comparisons with it: its score there is optimistic. The floors use every row.
        # The holdout rows the champion trained on are looked for in the same pass (holdout_evidence).
        holdout = sets["holdout"] if spec.gates.underpowered_evidence == "golden_and_holdout" else None
        inputs.trained, inputs.holdout_trained, inputs.looked = champion_trained_rows(
            inputs.champion_uri, golden_df, golden_uri, snapshot_uri, manifest, holdout)
    return inputs


def compare_rows(spec: PipelineSpec, inputs: Inputs, preds: dict[str, np.ndarray]
                 ) -> tuple[gates_mod.ChampionRows | None, ChampionComparison | None]:
    """The golden rows the champion comparisons use (None: all) and ``champion_comparison`` (None: no champion)."""
    if not inputs.champion_uri:
        return None, None
    champion_rows = None
    looked, y_true = inputs.looked, inputs.y_true
    if inputs.trained.any():
        champion_rows = gates_mod.ChampionRows(
            ~inputs.trained, f"whose text the champion {looked.get('champion_version') or inputs.champion_uri} "
                             f"trained on, as a train row of its snapshot {looked.get('champion_snapshot_id')}")
    accuracy = {}
    if champion_rows is not None:
        keep = champion_rows.keep
        accuracy["compared_accuracy"] = {name: round(float(np.mean(pred[keep] == y_true[keep])), 4)
                                         for name, pred in preds.items()} if keep.any() else {}
    comparison = gates_mod.champion_comparison(spec.gates, len(inputs.golden_df), champion_rows, **looked,
                                               **accuracy)
    log.info("champion comparison on %d of %d golden rows%s%s", comparison.compared_rows,
             comparison.golden_rows,
             (f" ({comparison.excluded_rows} {champion_rows.why} left out"
              f"{'; too few left: not compared' if comparison.too_few else ''})" if champion_rows is not None
              else ""),
             f"; {comparison.note}" if comparison.note else "")
    return champion_rows, comparison


def holdout_evidence(spec: PipelineSpec, inputs: Inputs, holdout_preds: dict[str, np.ndarray]
                     ) -> dict[str, gates_mod.HoldoutEvidence] | None:
    """Per role, the holdout rows a comparison the golden set cannot decide may add (gates.underpowered_evidence):
    the snapshot's holdout rows whose text is a train row neither of this snapshot (a text stored twice, as both,
    after a change of data.holdout_fraction) nor of the champion's (read as for the golden set). The split is a
    hash of the text fixed at ingest, so these are rows no model of the pipeline trained on. None: no champion,
    the setting is off, or what the champion trained on is unknown."""
    holdout = inputs.sets.get("holdout")
    if (not inputs.champion_uri or spec.gates.underpowered_evidence != "golden_and_holdout" or holdout is None
            or not len(holdout) or "champion_teacher" not in holdout_preds):
        return None
    if inputs.holdout_trained is None:
        log.info("no holdout rows for an underpowered comparison: %s", inputs.looked.get("note"))
        return None
    keep = ~(inputs.holdout_trained | inputs.holdout_in_train)
    y = holdout["label"].astype(int).to_numpy()[keep]
    why = (f"neither model trained on, of {len(holdout)} in snapshot "
           f"{storage.normalize(inputs.snapshot_uri).rstrip('/').rsplit('/', 1)[-1]}")
    log.info("holdout rows neither model trained on: %d of %d", int(keep.sum()), len(holdout))
    return {role: gates_mod.HoldoutEvidence(holdout_preds[role][keep] == y,
                                            holdout_preds[f"champion_{role}"][keep] == y, why)
            for role in ("teacher", "student") if role in holdout_preds and f"champion_{role}" in holdout_preds}


def holdout_rows(spec: PipelineSpec, inputs: Inputs, holdout_preds: dict[str, np.ndarray]
                 ) -> dict[str, gates_mod.HoldoutRows] | None:
    """Per candidate ("teacher", "student"), its predictions on the holdout rows whose text is no train row of this
    snapshot, which a floor over the majority baseline adds where the golden rows leave it open
    (gates.underpowered_evidence). None when the setting is off or the snapshot has no holdout rows."""
    holdout = inputs.sets.get("holdout")
    if spec.gates.underpowered_evidence != "golden_and_holdout" or holdout is None or not len(holdout):
        return None
    keep = ~inputs.holdout_in_train
    y = holdout["label"].astype(int).to_numpy()[keep]
    why = f"it never trained on (of {len(holdout)} in the snapshot)"
    return {role: gates_mod.HoldoutRows(y, holdout_preds[role][keep], why)
            for role in ("teacher", "student") if role in holdout_preds}


def write_reports(spec: PipelineSpec, run_uri: str, out_uri: str, inputs: Inputs, scored: dict[str, Any],
                  pngs: dict[str, str], champion_rows: gates_mod.ChampionRows | None,
                  comparison: ChampionComparison | None, passed: bool, first_run: bool,
                  gate_list: list[gates_mod.Gate]) -> EvaluateResult:
    """metrics.json, gate_report.json and .md; the result (the small XCom) that points at them."""
    labels, golden_uri, snapshot_uri, champion_uri = (spec.data.labels, inputs.golden_uri, inputs.snapshot_uri,
                                                      inputs.champion_uri)
    summary = {name: _summary(m) for name, m in scored.items()}
    champion_summary = ({"uri": champion_uri, "teacher": summary.get("champion_teacher"),
                         "student": summary.get("champion_student")} if champion_uri else None)
    failed = [g.name for g in gate_list if not g.passed]
    report_uri = storage.join(out_uri, "gate_report.json")
    report_md_uri = storage.join(out_uri, "gate_report.md")
    left_out = [] if champion_rows is None else np.flatnonzero(~champion_rows.keep).tolist()
    storage.write_json(storage.join(out_uri, "metrics.json"),
                       {"labels": labels, "golden_uri": golden_uri, "snapshot_uri": snapshot_uri,
                        "champion_uri": champion_uri,
                        "champion_comparison": comparison.dump() if comparison else None,
                        "champion_left_out_rows": left_out,  # positions in the golden set's data.parquet
                        "models": scored})
    storage.write_json(report_uri, {
        "pipeline": spec.name, "run_uri": run_uri, "passed": passed, "first_run": first_run, "failed_gates": failed,
        "gates": [g.to_dict() for g in gate_list], "thresholds": spec.gates.model_dump(mode="json"),
        "golden_uri": golden_uri, "snapshot_uri": snapshot_uri, "champion_uri": champion_uri, "metrics": summary,
        "champion_comparison": comparison.dump() if comparison else None, "confusion_matrices": pngs})
    storage.write_text(report_md_uri, gates_mod.render_markdown(spec.name, run_uri, passed, first_run, gate_list,
                                                               summary, comparison))
    return EvaluateResult(
        passed=passed,
        first_run=first_run,
        gates=[GateResult(**g.model_dump(exclude={"details"})) for g in gate_list],  # details: in gate_report.json
        failed_gates=failed,
        metrics={"teacher": summary["teacher"], "student": summary["student"], "champion": champion_summary},
        golden_uri=golden_uri,
        champion_comparison=comparison,
        report_uri=report_uri,
        report_md_uri=report_md_uri,
    )


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(EvaluateArgs, argv, prog="python -m tasks evaluate", description=__doc__.split("\n")[0])
    run(args.run, args.snapshot, args.teacher, args.student, args.champion, args.golden)
    return 0
