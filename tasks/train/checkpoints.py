"""Training checkpoints in storage, so a retry (a new pod) resumes where a killed run stopped.

The Trainer writes ``checkpoint-N/`` into a local scratch directory. ``CheckpointSync`` sends each new one to
``<storage>/checkpoints/<pipeline>/<run_key>/<stage>/checkpoint-N/`` (``storage.sync_dir``: only files storage
does not hold yet, never re-read or hashed here) and writes ``COMPLETE`` into it last, so a checkpoint without
``COMPLETE`` (the process died mid-upload) is never resumed from. ``restore`` replaces the scratch directory with
the complete checkpoints from storage; the Trainer then resumes from the newest one: same weights, optimizer,
scheduler, RNG state and position in the epoch, so the resumed run ends bit for bit where an uninterrupted one
would (tests/test_finetune_resume.py).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from tasks import storage

if TYPE_CHECKING:
    from tasks.train.training import StagePaths

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "COMPLETE"


def step_of(checkpoint_dir: str | Path) -> int:
    return int(CHECKPOINT.match(Path(checkpoint_dir).name).group(1))


def remote_checkpoints(prefix_uri: str, complete_only: bool = True) -> dict[int, str]:
    """{step: uri} of the checkpoints under a prefix; by default only those whose upload completed."""
    found: dict[int, set[str]] = {}
    prefix = prefix_uri.rstrip("/") + "/"
    for obj in storage.list_objects(prefix_uri):
        parts = obj.uri[len(prefix):].split("/")
        match = CHECKPOINT.match(parts[0])
        if match and len(parts) > 1:
            found.setdefault(int(match.group(1)), set()).add(parts[-1])
    return {step: storage.join(prefix_uri, f"checkpoint-{step}") for step, files in sorted(found.items())
            if not complete_only or COMPLETE_MARKER in files}


def delete_remote(uri: str) -> None:
    for obj in storage.list_objects(uri):
        storage.delete(obj.uri)


def restore(paths: "StagePaths") -> str | None:
    """Make the scratch directory hold exactly the complete checkpoints in storage; the newest one's local path.

    Local leftovers are discarded (a killed process may have left a half-written checkpoint), and so are
    incomplete uploads in storage: they can never be resumed from, and a re-save of the same step must not
    find stale files there that ``sync_dir`` would take for its own."""
    if paths.scratch.exists():
        shutil.rmtree(paths.scratch)
    paths.scratch.mkdir(parents=True, exist_ok=True)
    every = remote_checkpoints(paths.checkpoint_uri, complete_only=False)
    complete = remote_checkpoints(paths.checkpoint_uri)
    for step in every.keys() - complete.keys():
        delete_remote(every[step])
    for step, uri in complete.items():
        storage.download_dir(uri, paths.scratch / f"checkpoint-{step}")
    if not complete:
        return None
    newest = max(complete)
    print(f"[{paths.stage}] resuming from {complete[newest]} (step {newest})", flush=True)
    return str(paths.scratch / f"checkpoint-{newest}")


def newest_local(scratch: Path) -> str | None:
    steps = [int(m.group(1)) for p in scratch.glob("checkpoint-*") if (m := CHECKPOINT.match(p.name))]
    return str(scratch / f"checkpoint-{max(steps)}") if steps else None


def prepare_resume(args, paths: "StagePaths") -> str | None:
    """Restore checkpoints from storage (once per machine: the first local rank; the others wait) and return
    the local checkpoint to resume from, or None for a fresh start."""
    with args.main_process_first(local=True, desc="restore checkpoints"):
        if args.local_process_index == 0:
            restore(paths)
    return newest_local(paths.scratch)


class CheckpointSync(TrainerCallback):
    """Sends each Trainer checkpoint to storage (rank 0 only) and drops the ones the Trainer rotated away.

    ``seconds`` is the wall time spent on checkpoints: the Trainer's local save plus the upload."""

    def __init__(self, paths: "StagePaths") -> None:
        self.paths = paths
        self.seconds = 0.0
        self._save_began = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # the Trainer evaluates (if due), then saves, then calls on_save
            self._save_began = time.monotonic()

    def on_evaluate(self, args, state, control, **kwargs):
        self._save_began = time.monotonic()  # evaluation time is counted apart (eval_runtime)

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its RNG state into the checkpoint
        if not state.is_world_process_zero:
            return
        name = f"checkpoint-{state.global_step}"
        remote = storage.join(self.paths.checkpoint_uri, name)
        t0 = time.monotonic()
        sent = storage.sync_dir(Path(args.output_dir) / name, remote)
        storage.write_json(storage.join(remote, COMPLETE_MARKER), {"step": state.global_step, "at": storage.utcnow()})
        # The Trainer keeps the newest and the best checkpoint locally; storage mirrors that.
        keep = {p.name for p in Path(args.output_dir).iterdir() if CHECKPOINT.match(p.name)}
        for step, uri in remote_checkpoints(self.paths.checkpoint_uri, complete_only=False).items():
            if f"checkpoint-{step}" not in keep:
                delete_remote(uri)
        now = time.monotonic()
        self.seconds += now - (self._save_began or t0)
        self._save_began = 0.0
        print(f"[{self.paths.stage}] checkpoint {name} -> {remote} ({len(sent)} files, {now - t0:.1f}s)", flush=True)
