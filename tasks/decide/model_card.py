"""The model card of a published version: a README.md beside the weights of its teacher and of its student.

Hugging Face's model-card format: YAML front matter (built with ``huggingface_hub.ModelCardData``, so the keys
and the ``model-index`` results are spelled as the Hub expects), then sections: the data snapshot, the metrics
with their bootstrap intervals, the gates, the lineage, intended use and limits. Publish writes the cards before
the manifest, so they are hashed and verified with the weights; the folder still loads with ``from_pretrained``.

Pure: every input is passed in (the evaluation result, the snapshot manifest, the spec), nothing is read here
except the base model's own card, for its license and language.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCardData, metadata_load

from tasks import storage
from tasks.decide import gates
from tasks.spec import PipelineSpec

CARD = "README.md"


@dataclass
class CardInputs:
    """What a card says about one version; publish gathers it once for both roles."""

    spec: PipelineSpec
    version: str
    published_at: str
    snapshot_uri: str
    snapshot: dict[str, Any]  # the snapshot manifest (snapshot_id, rows, label_counts, golden_id, ...)
    evaluation: dict[str, Any]  # the evaluate stage's result (EvaluateResult)
    parent_champion: str | None
    run_uri: str
    code_version: str
    image: str | None = None
    base_card: dict[str, Any] | None = None  # front matter of the base model's card, when it has one
    # {teacher|student: the training stage's result: training (full or incremental, and why), samples}
    training: dict[str, Any] | None = None
    approval: dict[str, Any] | None = None  # a person's answer, when the spec asked for one (tasks/decide/approval.py)


def base_card_metadata(base: str) -> dict[str, Any] | None:
    """The base model's card front matter (license, language), or None when it has no card or is unreachable."""
    from tasks.train import modeling

    try:
        if storage.is_s3(base):
            text = storage.read_text(storage.join(base, CARD))
            return _front_matter(text)
        path = modeling.resolve_base_model(base) / CARD
        return metadata_load(path) if path.is_file() else None
    except (FileNotFoundError, storage.NotFound, ValueError):
        return None


def _front_matter(text: str) -> dict[str, Any] | None:
    if not text.startswith("---"):
        return None
    parts = text.split("---", 2)
    return yaml.safe_load(parts[1]) if len(parts) == 3 else None


def _fmt(value: Any, nd: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{nd}f}"
    return str(value)


def card_data(inputs: CardInputs, role: str):
    """The front matter as ``huggingface_hub.ModelCardData`` (model-index from the golden and holdout results)."""
    spec, snap = inputs.spec, inputs.snapshot
    metrics = (inputs.evaluation.get("metrics") or {}).get(role) or {}
    snapshot_id = snap.get("snapshot_id") or inputs.snapshot_uri.rstrip("/").rsplit("/", 1)[-1]
    golden_id = snap.get("golden_id") or "golden"
    datasets = {"golden": f"{spec.name}-golden-{golden_id}", "holdout": f"{spec.name}-snapshot-{snapshot_id}"}
    results = []
    for split, dataset in datasets.items():
        for metric, key, name in (("accuracy", "accuracy", "Accuracy"), ("f1", "macro_f1", "Macro-F1")):
            value = metrics.get(f"{split}_{key}")
            if value is None:
                continue
            results.append(EvalResult(
                task_type="text-classification", task_name="Text Classification", dataset_type=dataset,
                dataset_name=f"{spec.name} {split} set", dataset_split=split, metric_type=metric,
                metric_value=value, metric_name=f"{name} ({split})",
                metric_args={"average": "macro"} if metric == "f1" else None))
    base = inputs.base_card or {}
    return ModelCardData(
        model_name=f"{spec.name}-{role}-{inputs.version}",
        license=base.get("license"),
        language=base.get("language"),
        library_name="transformers",
        pipeline_tag="text-classification",
        base_model=spec.model.base if "://" not in spec.model.base else None,
        tags=["text-classification", "airflow-retrain", spec.name, role] + (["distillation"] if role == "student"
                                                                           else []),
        datasets=list(datasets.values()),
        metrics=["accuracy", "f1"],
        eval_results=results or None,
    )


def training_lines(stage: dict[str, Any] | None) -> list[str]:
    """Lineage rows: what the model trained on (train.retrain_mode: full or incremental, and why) and the samples
    its training processed."""
    if not stage:
        return []
    kind, out = stage.get("training") or {}, []
    if kind:
        if kind.get("mode") == "incremental":
            what = (f"incremental: {_fmt(kind.get('new_rows'))} new rows + {_fmt(kind.get('replay_rows'))} replayed "
                    f"of {_fmt(kind.get('history_rows'))} older train rows ({_fmt(kind.get('train_rows'))} of the "
                    f"snapshot's {_fmt(kind.get('snapshot_train_rows'))})")
        else:
            what = f"full: the snapshot's {_fmt(kind.get('train_rows'))} train rows"
        why = " ".join(kind.get("reasons") or []).replace("|", "/")
        out.append(f"| training | {what}{'. ' + why if why else ''} |")
    samples = stage.get("samples") or {}
    if samples:
        out.append(f"| samples processed | {_fmt(stage.get('samples_processed'))} ("
                   + ", ".join(f"{k} {_fmt(v)}" for k, v in samples.items()) + ") |")
    return out


def approval_lines(approval: dict[str, Any] | None) -> list[str]:
    """The "Approval" section: who answered, what, why, when; an override is said in bold."""
    from tasks.decide import approval as approvals

    if not approval or approval.get("decision") == approvals.NOT_REQUIRED:
        return []
    decision = approval.get("decision")
    lines = ["## Approval", ""]
    if decision == approvals.OVERRIDDEN:
        lines += ["**Failed gates OVERRIDDEN by a person**: this version did not pass its gates and was promoted on "
                  "a person's decision.", ""]
    lines += ["| | |", "|---|---|", f"| decision | {decision} |",
              f"| policy | {approval.get('policy', '-')} |",
              f"| answered by | {approvals.responder(approval) or '-'} |",
              f"| reason | {str(approval.get('reason') or '-').replace('|', '/')} |",
              f"| answered at | {approval.get('responded_at') or '-'} |", ""]
    return lines


def render(inputs: CardInputs, role: str) -> str:
    """The README.md of ``<version>/<role>/`` (role: teacher or student): front matter, then the sections."""
    lines = ["---", card_data(inputs, role).to_yaml(), "---", ""]
    for section in (header_lines, snapshot_lines, metrics_lines, gate_lines):
        lines += section(inputs, role)
    lines += approval_lines(inputs.approval)
    lines += lineage_lines(inputs, role)
    lines += use_lines(inputs, role)
    return "\n".join(lines)


def _role_metrics(inputs: CardInputs, role: str) -> dict[str, Any]:
    return (inputs.evaluation.get("metrics") or {}).get(role) or {}


def header_lines(inputs: CardInputs, role: str) -> list[str]:
    """The title and one paragraph: what the model classifies, how it was made, whether it passed."""
    spec, ev = inputs.spec, inputs.evaluation
    labels = spec.data.labels
    return [f"# {spec.name} {role}, version {inputs.version}", "",
            f"A text classifier over {len(labels)} classes ({', '.join(f'`{label}`' for label in labels)}), "
            + ("fine-tuned (the teacher)" if role == "teacher" else "distilled from this version's teacher "
               "(the student, served on CPU)")
            + f" by the `{spec.name}` retraining pipeline on {inputs.published_at}. "
            f"Evaluation {'passed' if ev.get('passed') else 'did not pass'} its gates"
            + (" (first run: floors only)." if ev.get("first_run") else "."), ""]


def snapshot_lines(inputs: CardInputs, role: str) -> list[str]:
    """The "Data snapshot" section: the rows it trained on and the golden set it was scored on."""
    snap, ev = inputs.snapshot, inputs.evaluation
    lines = ["## Data snapshot", "", "| | |", "|---|---|",
             f"| snapshot id | `{snap.get('snapshot_id', '-')}` |", f"| snapshot uri | `{inputs.snapshot_uri}` |",
             f"| rows | {_fmt(snap.get('rows'))} ({_fmt(snap.get('new_rows'))} new in its last batch) |"]
    counts = snap.get("label_counts") or {}
    if counts:
        lines.append("| label counts | " + ", ".join(f"{k}: {v}" for k, v in counts.items()) + " |")
    if snap.get("split_counts"):
        lines.append("| splits | " + ", ".join(f"{k}: {v}" for k, v in snap["split_counts"].items()) + " |")
    lines += [f"| golden set | `{snap.get('golden_id', '-')}` at `{ev.get('golden_uri') or snap.get('golden_uri')}`"
              f" ({_fmt(_role_metrics(inputs, role).get('golden_n'))} rows, frozen: every version is scored on the "
              f"same rows) |", ""]
    return lines


def metrics_lines(inputs: CardInputs, role: str) -> list[str]:
    """The "Metrics" section: golden and holdout, with intervals and the champion's; the student's CPU cost."""
    spec = inputs.spec
    metrics = _role_metrics(inputs, role)
    champion_metrics = ((inputs.evaluation.get("metrics") or {}).get("champion") or {}).get(role) or {}
    confidence = int(round(100 * spec.gates.confidence))
    lines = ["## Metrics", "",
             f"Golden-set intervals are percentile bootstrap intervals ({confidence}%, "
             f"{spec.gates.bootstrap_resamples} resamples, seed {spec.gates.seed}).", "",
             f"| set | metric | this model | {confidence}% interval | champion |", "|---|---|---|---|---|"]
    for split in ("golden", "holdout"):
        for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            value = metrics.get(f"{split}_{key}")
            if value is None:
                continue
            ci = metrics.get(f"{split}_{key}_ci")
            lines.append(f"| {split} | {name} | {_fmt(value)} | "
                         + (f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "-")
                         + f" | {_fmt(champion_metrics.get(f'{split}_{key}'))} |")
    if role == "student":
        cost = [(k, metrics.get(k)) for k in ("latency_ms_p50", "latency_ms_p95", "throughput_batch32_per_s",
                                               "size_weights_mb") if metrics.get(k) is not None]
        if cost:
            lines += ["", "CPU cost: " + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in cost) + "."]
    lines.append("")
    return lines


def gate_lines(inputs: CardInputs, role: str) -> list[str]:
    """The "Gates" section: the verdict, the golden rows left out of the champion comparison, every gate."""
    ev = inputs.evaluation
    lines = ["## Gates", "", f"Verdict: **{'passed' if ev.get('passed') else 'failed'}**"
             + (f" (failed: {', '.join(ev.get('failed_gates') or [])})" if ev.get("failed_gates") else "")
             + ". Skipped gates are reported, not gated.", ""]
    left_out = gates.comparison_lines(ev.get("champion_comparison"))  # golden rows the champion trained on
    lines += left_out + ([""] if left_out else [])
    lines += ["| gate | passed | value | threshold | note |", "|---|---|---|---|---|"]
    for gate in ev.get("gates") or []:
        passed = "skipped" if gate.get("skipped") else _fmt(bool(gate.get("passed")))
        note = str(gate.get("reason") or "").replace("|", "/")
        lines.append(f"| {gate.get('name')} | {passed} | {_fmt(gate.get('value'))} | {_fmt(gate.get('threshold'))} "
                     f"| {note} |")
    lines.append("")
    return lines


def lineage_lines(inputs: CardInputs, role: str) -> list[str]:
    """The "Lineage" section: where the model comes from (parent, base, training, run, code, image)."""
    spec = inputs.spec
    start = spec.train.init_from if role == "teacher" else spec.student.init_from
    base = inputs.base_card or {}
    lines = ["## Lineage", "", "| | |", "|---|---|",
             f"| version | `{inputs.version}` |",
             f"| parent champion | `{inputs.parent_champion or 'none (first champion)'}` |",
             f"| base model | `{spec.model.base}` |",
             f"| started from | {start} |",
             f"| license | {base.get('license') or 'not stated'} (the base model's) |"]
    lines += training_lines((inputs.training or {}).get(role))
    if role == "student":
        lines.append(f"| distillation | {spec.student.layers} layers of the teacher, alpha {spec.student.alpha}, "
                     f"temperature {spec.student.temperature} |")
    lines += [f"| run | `{inputs.run_uri}` |", f"| code (git commit) | `{inputs.code_version}` |",
              f"| image | `{inputs.image or '-'}` |", ""]
    return lines


def use_lines(inputs: CardInputs, role: str) -> list[str]:
    """"Intended use and limits" and "How to load"."""
    spec = inputs.spec
    labels = spec.data.labels
    return ["## Intended use and limits", "",
            f"- Intended use: classifying short texts into {', '.join(labels)}, as served by the `{spec.name}` "
            "pipeline; promote and roll back through the registry (`python -m tasks registry`), not by copying "
            "folders.",
            f"- Texts are truncated to {spec.model.max_length} tokens; longer inputs are judged on their start.",
            "- The numbers above hold for data like the golden set and the snapshot; on other domains, languages "
            "or label definitions they say nothing. Drift checks watch new batches, not individual predictions.",
            "- Labels come from the landed data; label noise in it is learned. Differences inside the intervals "
            "above are not evidence of a better or worse model.",
            "- Not for decisions about people without human review.", "",
            "## How to load", "", "```python",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            f'model = AutoModelForSequenceClassification.from_pretrained("path/to/{inputs.version}/{role}")',
            f'tokenizer = AutoTokenizer.from_pretrained("path/to/{inputs.version}/{role}")', "```", ""]
