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


def test_costs_add_up_per_stage_and_in_total():
    summary = cost.add_up({
        "ingest": {"wall_seconds": 2.0, "gpus": 0, "gpu_seconds": 0.0, "energy_kwh": None},
        "finetune": {"wall_seconds": 60.0, "gpus": 2, "gpu_seconds": 120.0, "energy_kwh": 0.01},
        "distill": {"wall_seconds": 30.0, "gpus": 1, "gpu_seconds": 30.0, "energy_kwh": 0.004},
        "publish": None,  # a stage that did not run
    })
    assert set(summary["stages"]) == {"ingest", "finetune", "distill"}
    assert summary["total"] == {"wall_seconds": 92.0, "gpu_seconds": 150.0, "energy_kwh": 0.014}
    assert cost.add_up({"ingest": {"wall_seconds": 1.0, "gpu_seconds": 0, "energy_kwh": None}})["total"][
        "energy_kwh"] is None
