"""Progress lines of a training stage: one per logging step (step/total, loss, samples/s, ETA) and one per
evaluation, and the figures for the result (training and evaluation seconds, samples/s)."""

from __future__ import annotations

import logging
import time

import transformers
from transformers import TrainerCallback

from tasks import cli

log = logging.getLogger(__name__)


class ProgressLogger(TrainerCallback):
    """One log line per logging step: step/total, loss, samples/s, ETA; and the figures for the result."""

    def __init__(self, stage: str, samples_per_step: int) -> None:
        self.stage = stage
        self.samples_per_step = samples_per_step
        self.start = 0.0
        self.first_step = 0
        self.eval_seconds = 0.0
        self.train_seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()
        self.first_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "eval_runtime" in logs:
            self.eval_seconds += float(logs["eval_runtime"])
            # After training, the one evaluation left is the best model's, not another step's.
            what = "best model" if self.train_seconds else f"eval step {state.global_step}"
            log.info(f"[{self.stage}] {what}: loss {logs.get('eval_loss', float('nan')):.4f} "
                     f"accuracy {logs.get('eval_accuracy', float('nan')):.4f} ({logs['eval_runtime']:.1f}s)")
            return
        if "loss" not in logs:
            return
        done = state.global_step - self.first_step
        elapsed = max(1e-9, time.monotonic() - self.start - self.eval_seconds)
        rate = done * self.samples_per_step / elapsed
        eta = (state.max_steps - state.global_step) * elapsed / done if done else float("nan")
        log.info(f"[{self.stage}] step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.2f} "
                 f"loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.2e} "
                 f"{rate:.1f} samples/s ETA {eta:.0f}s")

    def on_train_end(self, args, state, control, **kwargs):
        self.train_seconds = time.monotonic() - self.start

    def samples_per_second(self, global_step: int) -> float:
        """Training throughput of this process: samples / (wall time - evaluation time)."""
        busy = max(1e-9, self.train_seconds - self.eval_seconds)
        return (global_step - self.first_step) * self.samples_per_step / busy


def setup_logging() -> None:
    """The stages' one logging setup (``tasks.cli.setup_logging``), with transformers' own output down to
    warnings and no progress bars (the stage logs its own progress lines)."""
    cli.setup_logging()

    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
