"""What one training run produced (``TrainOutcome``) and its outputs in storage: model, metrics.json, curve.png and
the exports' folders."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from tasks import storage
from tasks.train.paths import StagePaths

if TYPE_CHECKING:
    from tasks.train.progress import ProgressLogger


@dataclass
class TrainOutcome:
    """What one training run produced: the figures for metrics.json and the stage's result."""

    global_step: int
    resumed_from_step: int
    train_seconds: float  # trainer.train() wall time, evaluations and checkpoints included
    samples_per_second: float  # training rows per second, evaluation time excluded
    eval_seconds: float
    checkpoint_seconds: float  # what checkpoints cost the training loop: local saves plus uploads waited for
    metrics: dict[str, float]  # the best model on the holdout split
    checkpoint_upload_seconds: float = 0.0  # the uploads' own wall time (in the background on a GPU)
    overhead_share: float = 0.0  # (eval_seconds + checkpoint_seconds) / train_seconds
    log_history: list[dict[str, Any]] = field(default_factory=list)


def outcome_of(trainer, holdout: dict[str, float], resumed_from_step: int, progress: "ProgressLogger",
               checkpoint_seconds: float, checkpoint_upload_seconds: float = 0.0,
               holdout_rows: int | None = None) -> TrainOutcome:
    metrics = {k.removeprefix("eval_"): float(v) for k, v in holdout.items()
               if k in ("eval_accuracy", "eval_macro_f1", "eval_loss")}
    metrics["holdout_rows"] = len(trainer.eval_dataset) if holdout_rows is None else holdout_rows
    return TrainOutcome(
        global_step=trainer.state.global_step,
        resumed_from_step=resumed_from_step,
        train_seconds=round(progress.train_seconds, 2),
        samples_per_second=round(progress.samples_per_second(trainer.state.global_step), 2),
        eval_seconds=round(progress.eval_seconds, 2),
        checkpoint_seconds=round(checkpoint_seconds, 2),
        metrics=metrics,
        checkpoint_upload_seconds=round(checkpoint_upload_seconds, 2),
        overhead_share=round((progress.eval_seconds + checkpoint_seconds) / max(1e-9, progress.train_seconds), 4),
        log_history=list(trainer.state.log_history),
    )


def plot_curve(log_history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Training loss, holdout loss and holdout accuracy against the step."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"], e.get("eval_accuracy")) for e in log_history if "eval_loss" in e]
    fig = Figure(figsize=(7, 4))  # no pyplot: no global figure state, no GUI backend
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="holdout loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    accs = [(e[0], e[2]) for e in evals if e[2] is not None]
    if accs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*accs), "s--", label="holdout accuracy", color="tab:green")
        ax2.set_ylabel("accuracy")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def publish_outputs(model, tokenizer, paths: StagePaths, outcome: TrainOutcome,
                    extra_dirs: dict[str, Path] | None = None) -> dict[str, str]:
    """Rank 0: model (safetensors + config + tokenizer), metrics.json, curve.png and extra folders to storage.
    Returns {name: uri} of the extra folders."""
    from tasks.train.modeling import save_model

    uris: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=f"{paths.stage}-out-") as tmp:
        out = Path(tmp)
        save_model(model, tokenizer, out / "model")
        storage.upload_dir(out / "model", paths.model_uri)
        figures = {k: v for k, v in vars(outcome).items() if k not in ("metrics", "log_history")}
        history = [e for e in outcome.log_history if "loss" in e or "eval_loss" in e]
        storage.write_json(paths.metrics_uri, {"holdout": outcome.metrics, **figures, "log_history": history})
        plot_curve(outcome.log_history, out / "curve.png", f"{paths.stage} ({paths.run_key})")
        storage.upload_file(out / "curve.png", paths.curve_uri)
        for name, folder in (extra_dirs or {}).items():
            uris[name] = storage.join(paths.out_uri, name)
            storage.upload_dir(folder, uris[name])
    return uris
