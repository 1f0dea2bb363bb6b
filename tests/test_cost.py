"""The cost every stage reports: wall time, GPU-seconds, energy (None without NVML), added up for the summary."""

from __future__ import annotations

import json
import subprocess
import sys

from tasks import cost

from conftest import ROOT


def test_a_stage_result_carries_its_cost(tmp_path):
    """Through the real entrypoint: the result the stage emits gets the process's wall time and GPU figures."""
    xcom = tmp_path / "return.json"
    code = ("import time, sys; from tasks import __main__ as m, results; m.cost.start(); time.sleep(0.3); "
            "results.emit({'ok': True})")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60,
                   env={"RETRAIN_XCOM_PATH": str(xcom), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    result = json.loads(xcom.read_text())
    assert result["ok"] is True
    assert 0.3 <= result["cost"]["wall_seconds"] < 30
    assert result["cost"]["gpus"] == 0 and result["cost"]["gpu_seconds"] == 0  # this machine has no GPU
    assert result["cost"]["energy_kwh"] is None
    assert result["cost"]["samples_processed"] == 0 and result["cost"]["samples"] == {}  # no model ran


def test_costs_add_up_per_stage_and_in_total():
    summary = cost.add_up({
        "ingest": {"wall_seconds": 2.0, "gpus": 0, "gpu_seconds": 0.0, "energy_kwh": None},
        "finetune": {"wall_seconds": 60.0, "gpus": 2, "gpu_seconds": 120.0, "energy_kwh": 0.01,
                     "samples_processed": 3000},
        "distill": {"wall_seconds": 30.0, "gpus": 1, "gpu_seconds": 30.0, "energy_kwh": 0.004,
                    "samples_processed": 4500},
        "publish": None,  # a stage that did not run
    })
    assert set(summary["stages"]) == {"ingest", "finetune", "distill"}
    assert summary["total"] == {"wall_seconds": 92.0, "gpu_seconds": 150.0, "energy_kwh": 0.014,
                                "samples_processed": 7500}
    assert cost.add_up({"ingest": {"wall_seconds": 1.0, "gpu_seconds": 0, "energy_kwh": None}})["total"][
        "energy_kwh"] is None


class StandInNVML:
    """A stand-in for the ``pynvml`` module (no GPU here): ``count`` GPUs whose energy counters (mJ) advance by
    ``step_mj[i]`` at every read; ``energy`` False is a pre-Volta GPU, which has no counter."""

    def __init__(self, count: int, step_mj: list[float], energy: bool = True):
        self.count, self.step_mj, self.energy, self.reads = count, step_mj, energy, [0] * count

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index):
        if index >= self.count:
            raise RuntimeError("NVML_ERROR_INVALID_ARGUMENT")
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        self.reads[handle] += 1
        return 1e9 + self.reads[handle] * self.step_mj[handle]


def test_gpu_seconds_and_energy_count_the_visible_gpus(monkeypatch):
    """The arithmetic of a reading, on a stand-in for NVML: the GPUs CUDA_VISIBLE_DEVICES names, their energy
    since the meter started (mJ to kWh), and under torchrun rank 0's one GPU counted for each local process."""
    nvml = StandInNVML(count=4, step_mj=[1e6, 3.6e9, 7.2e9, 1e6])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    reading = cost.StageMeter().reading()
    # GPUs 1 and 2, one counter step each since the start: 3.6e9 mJ = 1 kWh, 7.2e9 mJ = 2 kWh.
    assert reading["gpus"] == 2 and reading["energy_kwh"] == 3.0
    assert reading["gpu_seconds"] == round(reading["wall_seconds"] * 2, 2)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")  # one GPU per rank, 4 ranks on the machine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    reading = cost.StageMeter().reading()
    assert reading["gpus"] == 4 and reading["energy_kwh"] == 8.0


def test_a_gpu_without_an_energy_counter_reports_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", StandInNVML(count=1, step_mj=[0.0], energy=False))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    reading = cost.StageMeter().reading()
    assert reading["gpus"] == 1 and reading["energy_kwh"] is None
