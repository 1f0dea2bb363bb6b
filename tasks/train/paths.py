"""Where a training stage reads and writes: its output folder in the run, its checkpoints in storage, and its local
scratch folder."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tasks import storage


@dataclass(frozen=True)
class StagePaths:
    run_uri: str
    stage: str
    run_key: str
    out_uri: str  # RUN/<stage>
    checkpoint_uri: str  # <storage>/checkpoints/<pipeline>/<run_key>/<stage>
    scratch: Path  # local working directory for Trainer checkpoints

    @property
    def model_uri(self) -> str:
        return storage.join(self.out_uri, "model")

    @property
    def metrics_uri(self) -> str:
        return storage.join(self.out_uri, "metrics.json")

    @property
    def curve_uri(self) -> str:
        return storage.join(self.out_uri, "curve.png")


def stage_paths(spec, run_uri: str, stage: str) -> StagePaths:
    run_uri = storage.normalize(run_uri).rstrip("/")
    run_key = run_uri.rsplit("/", 1)[-1]
    # A fixed local path per run and stage: the Trainer records the best checkpoint's absolute path in its
    # state, and a retry (a new pod) must find the restored checkpoint at that same path.
    scratch_root = Path(os.environ.get("RETRAIN_SCRATCH_DIR") or Path(tempfile.gettempdir()) / "retrain-scratch")
    return StagePaths(
        run_uri=run_uri,
        stage=stage,
        run_key=run_key,
        out_uri=storage.join(run_uri, stage),
        checkpoint_uri=storage.join(spec.layout.checkpoints, run_key, stage),
        scratch=scratch_root / spec.name / run_key / stage,
    )
