"""What a stage cost: wall time, GPU-seconds and, where NVML answers, the GPUs' energy from their own counters.

``python -m tasks`` starts one :class:`StageMeter` when the process starts; ``results.emit`` adds
``meter.reading()`` to the stage's result as ``cost``, so every stage reports its cost the same way and the run
summary adds them up (what a night cost, and what a point of accuracy cost). Next to the seconds, the samples the
stage's models processed (``count_samples``: training rows forward and backward, teacher and inference passes),
which compare across devices.

Energy comes from ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded, Volta and newer),
read at start and at the reading: the GPU's own counter, not an estimate from power samples. Without a GPU, or
without the NVML bindings (the ``nvidia-ml-py`` package), energy is None and GPU-seconds are 0.

No torch import: a CPU stage (ingest, publish) must not pay for it; the visible GPUs are counted through NVML and
``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import os
import time
from typing import Any


def _nvml_handles() -> list[Any]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception:  # noqa: BLE001 - no driver, no GPU: a CPU machine
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    indices = range(count)
    if visible not in (None, ""):
        try:
            indices = [int(i) for i in visible.split(",") if i.strip() != ""]
        except ValueError:  # GPU UUIDs: count them, read all
            indices = range(min(count, len(visible.split(","))))
    handles = []
    for index in indices:
        try:
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(index))
        except Exception:  # noqa: BLE001
            continue
    return handles


def _energy_mj(handles: list[Any]) -> float | None:
    if not handles:
        return None
    import pynvml

    total = 0.0
    try:
        for handle in handles:
            total += float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except Exception:  # noqa: BLE001 - pre-Volta GPUs have no energy counter
        return None
    return total


class StageMeter:
    """Wall clock, GPU count and energy counter at start; :meth:`reading` gives the cost so far."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        # Under torchrun each rank sees its own GPU; rank 0 reports for all (LOCAL_WORLD_SIZE of them).
        self.processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        self._handles = _nvml_handles()
        self._energy_start = _energy_mj(self._handles)

    def reading(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        # One GPU visible to each of N processes: the others' GPUs are like ours; all visible: we read them all.
        factor = self.processes if len(self._handles) == 1 else 1
        gpus = len(self._handles) * factor
        energy = _energy_mj(self._handles)
        kwh = None
        if energy is not None and self._energy_start is not None:
            kwh = (energy - self._energy_start) * factor / 1000 / 3.6e6  # mJ -> J -> kWh
        return {"wall_seconds": round(wall, 2), "gpus": gpus, "gpu_seconds": round(wall * gpus, 2),
                "energy_kwh": None if kwh is None else round(kwh, 6)}


_meter: StageMeter | None = None
_samples: dict[str, int] = {}


def count_samples(kind: str, rows: int) -> None:
    """Add ``rows`` model passes of one ``kind`` to the running stage's cost: ``train`` (forward and backward),
    ``teacher`` (a distillation teacher's forward passes), ``inference`` (forward only: evaluation, drift's model
    checks). Samples, unlike seconds, compare across devices: what a stage did, not how fast the hardware was."""
    _samples[kind] = _samples.get(kind, 0) + int(rows)


TRAINING_KINDS = ("train", "teacher")  # what samples_processed adds up: the passes training costs


def samples() -> dict[str, Any]:
    """{samples: {kind: rows}, samples_processed: train + teacher}: this process's counts so far. Evaluation passes
    (``inference``) are listed, not added: they follow the holdout and golden sets, not the rows trained on."""
    return {"samples": dict(sorted(_samples.items())),
            "samples_processed": sum(n for kind, n in _samples.items() if kind in TRAINING_KINDS)}


def start() -> StageMeter:
    global _meter
    _meter = StageMeter()
    _samples.clear()
    return _meter


def reading() -> dict[str, Any] | None:
    """The running stage's cost so far, or None outside ``python -m tasks`` (a library call, a test)."""
    return {**_meter.reading(), **samples()} if _meter is not None else None


def add_up(costs: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Per-stage costs (stage -> reading) and their total, for the run summary."""
    stages = {name: c for name, c in costs.items() if c}
    energies = [c.get("energy_kwh") for c in stages.values()]
    total = {
        "wall_seconds": round(sum(float(c.get("wall_seconds") or 0) for c in stages.values()), 2),
        "gpu_seconds": round(sum(float(c.get("gpu_seconds") or 0) for c in stages.values()), 2),
        "energy_kwh": round(sum(e for e in energies if e is not None), 6) if any(e is not None for e in energies)
        else None,
        "samples_processed": sum(int(c.get("samples_processed") or 0) for c in stages.values()),
    }
    return {"stages": stages, "total": total}
