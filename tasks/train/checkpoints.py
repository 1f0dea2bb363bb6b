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

import logging
import re
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from tasks import storage

if TYPE_CHECKING:
    from tasks.train.paths import StagePaths

log = logging.getLogger(__name__)
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "COMPLETE"


def step_of(checkpoint_dir: str | Path) -> int:
    return int(CHECKPOINT.match(Path(checkpoint_dir).name).group(1))


def checkpoint_objects(prefix_uri: str) -> dict[int, list["storage.ObjectInfo"]]:
    """{step: its objects} of the checkpoints under a prefix, in step order, from one listing."""
    found: dict[int, list[storage.ObjectInfo]] = {}
    prefix = prefix_uri.rstrip("/") + "/"
    for obj in storage.list_objects(prefix_uri):
        parts = obj.uri[len(prefix):].split("/")
        match = CHECKPOINT.match(parts[0])
        if match and len(parts) > 1:
            found.setdefault(int(match.group(1)), []).append(obj)
    return dict(sorted(found.items()))


def is_complete(objects: list["storage.ObjectInfo"]) -> bool:
    """Whether a checkpoint's upload completed: ``COMPLETE`` is among its objects."""
    return any(obj.uri.rsplit("/", 1)[-1] == COMPLETE_MARKER for obj in objects)


def remote_checkpoints(prefix_uri: str, complete_only: bool = True) -> dict[int, str]:
    """{step: uri} of the checkpoints under a prefix; by default only those whose upload completed."""
    return {step: storage.join(prefix_uri, f"checkpoint-{step}")
            for step, objects in checkpoint_objects(prefix_uri).items() if not complete_only or is_complete(objects)}


def delete_remote(objects: list["storage.ObjectInfo"]) -> None:
    """Delete a checkpoint in storage: its objects, as ``checkpoint_objects`` listed them."""
    for obj in objects:
        storage.delete(obj.uri)


def restore(paths: "StagePaths") -> str | None:
    """Make the scratch directory hold exactly the complete checkpoints in storage; the newest one's local path.

    Local leftovers are discarded (a killed process may have left a half-written checkpoint), and so are
    incomplete uploads in storage: they can never be resumed from, and a re-save of the same step must not
    find stale files there that ``sync_dir`` would take for its own. One listing of the checkpoint prefix
    serves all of it (what to delete, what to download)."""
    if paths.scratch.exists():
        shutil.rmtree(paths.scratch)
    paths.scratch.mkdir(parents=True, exist_ok=True)
    prefix = paths.checkpoint_uri.rstrip("/") + "/"
    complete: dict[int, str] = {}
    for step, objects in checkpoint_objects(paths.checkpoint_uri).items():
        if not is_complete(objects):
            delete_remote(objects)
            continue
        for obj in objects:
            storage.download_file(obj.uri, paths.scratch / obj.uri[len(prefix):])
        complete[step] = storage.join(paths.checkpoint_uri, f"checkpoint-{step}")
    if not complete:
        return None
    newest = max(complete)
    log.info(f"[{paths.stage}] resuming from {complete[newest]} (step {newest})")
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


class TimedCheckpoints(TrainerCallback):
    """Checkpoints by wall time: asks the Trainer to save once ``minutes`` have passed since the last save.

    Used with ``save_strategy="best"`` (``arguments.training_arguments(checkpoint_minutes=...)``): the Trainer
    then saves on every new best evaluation, which ``load_best_model_at_end`` needs, and never by step count;
    this callback adds the saves a retry resumes from. On an evaluation step the Trainer's "best" rule decides
    alone, so a save that fell due there happens on the next step.

    Under DDP every rank must save on the same step (saving has barriers), and their clocks differ: rank 0's
    clock decides, broadcast every ``ddp_check_every`` steps (one tiny collective, not one per step). On one
    process the check is the host clock alone, every step."""

    def __init__(self, minutes: float, ddp_check_every: int = 50) -> None:
        self.seconds = minutes * 60.0
        self.ddp_check_every = max(1, ddp_check_every)
        self.last_save = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if not (dist.is_available() and dist.is_initialized()):
            if time.monotonic() - self.last_save >= self.seconds:
                control.should_save = True
            return
        if state.global_step % self.ddp_check_every:
            return

        due = torch.tensor([float(time.monotonic() - self.last_save >= self.seconds)], device=args.device)
        dist.broadcast(due, src=0)
        if due.item():
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()


class CheckpointSync(TrainerCallback):
    """Sends each Trainer checkpoint to storage (rank 0 only) and drops the ones the Trainer rotated away.

    With ``background=True`` (the runner's choice on a CUDA GPU) the upload runs in a thread while training
    goes on: ``COMPLETE`` is still written last (by the thread), so a process killed mid-upload leaves a
    checkpoint that ``restore`` ignores. Before the Trainer evaluates or saves again (and so before it rotates
    checkpoints away), the training loop waits for the previous upload; ``wait()`` waits for the last one, and
    re-raises an upload's error.

    ``seconds`` is the wall time the training loop spent on checkpoints: the Trainer's local save plus the
    upload, or, in the background, the time it waited for an upload. ``upload_seconds`` is the uploads' own
    wall time."""

    def __init__(self, paths: "StagePaths", background: bool = False) -> None:
        self.paths = paths
        self.background = background
        self.seconds = 0.0
        self.upload_seconds = 0.0
        self._save_began = 0.0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def wait(self) -> None:
        """Block until the upload in flight (if any) is done; counted in ``seconds``."""
        if self._thread is not None:
            t0 = time.monotonic()
            self._thread.join()
            self._thread = None
            self.seconds += time.monotonic() - t0
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # the Trainer evaluates (if due), then saves, then calls on_save
            self.wait()
            self._save_began = time.monotonic()

    def on_evaluate(self, args, state, control, **kwargs):
        self.wait()  # the "best" save strategy decides to save right after an evaluation, with no hook between
        self._save_began = time.monotonic()  # evaluation time is counted apart (eval_runtime)

    def on_train_end(self, args, state, control, **kwargs):
        self.wait()

    def on_save(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its RNG state into the checkpoint
        if not state.is_world_process_zero:
            return
        t0 = time.monotonic()
        self.wait()
        step, output_dir = state.global_step, Path(args.output_dir)
        if self.background:
            self._thread = threading.Thread(target=self._upload_catching, args=(step, output_dir),
                                            name=f"upload-checkpoint-{step}", daemon=True)
            self._thread.start()
        else:
            self._upload(step, output_dir)
        self.seconds += time.monotonic() - (self._save_began or t0)
        self._save_began = 0.0

    def _upload_catching(self, step: int, output_dir: Path) -> None:
        try:
            self._upload(step, output_dir)
        except BaseException as exc:  # re-raised in the training loop by wait()
            self._error = exc

    def _upload(self, step: int, output_dir: Path) -> None:
        name = f"checkpoint-{step}"
        remote = storage.join(self.paths.checkpoint_uri, name)
        t0 = time.monotonic()
        sent = storage.sync_dir(output_dir / name, remote)
        storage.write_json(storage.join(remote, COMPLETE_MARKER), {"step": step, "at": storage.utcnow()})
        # The Trainer keeps the newest and the best checkpoint locally; storage mirrors that.
        keep = {p.name for p in output_dir.iterdir() if CHECKPOINT.match(p.name)}
        for old, objects in checkpoint_objects(self.paths.checkpoint_uri).items():
            if f"checkpoint-{old}" not in keep:
                delete_remote(objects)
        took = time.monotonic() - t0
        self.upload_seconds += took
        log.info(f"[{self.paths.stage}] checkpoint {name} -> {remote} ({len(sent)} files, {took:.1f}s"
                 f"{', in the background' if self.background else ''})")
