"""`python -m tasks` leaves with the stage's own exit code even when something crashes during interpreter
teardown (CI saw Arrow's thread pool abort there: exit -6 after a clean "batch rejected" exit 1)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.common import ROOT

# An atexit handler runs during interpreter finalization, where the native teardown crash happened; this one
# aborts the process the same way (SIGABRT) if it ever runs.
ABORT_AT_TEARDOWN = ("import atexit, os, runpy, sys; atexit.register(lambda: os.abort()); "
                     "sys.argv = ['tasks'] + sys.argv[1:]; runpy.run_module('tasks', run_name='__main__')")


@pytest.mark.parametrize("argv, code, says", [
    (["validate-spec", "include/pipelines/sst2.yaml"], 0, "sst2"),
    (["validate-spec", "no/such/spec.yaml"], 1, "no/such/spec.yaml"),
    (["no-such-stage"], 2, "stages: ingest"),
    (["ingest"], 2, "the following arguments are required: --run"),
])
def test_the_stage_exit_code_survives_a_crash_at_interpreter_teardown(argv, code, says):
    proc = subprocess.run([sys.executable, "-c", ABORT_AT_TEARDOWN, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert says in proc.stdout + proc.stderr  # output is flushed before the early exit


def test_without_the_early_exit_the_same_crash_would_be_a_signal():
    # The control: plain sys.exit lets finalization run, and the abort turns exit 0 into SIGABRT.
    proc = subprocess.run([sys.executable, "-c", ABORT_AT_TEARDOWN.replace(
        "runpy.run_module('tasks', run_name='__main__')",
        "from tasks.__main__ import main; sys.exit(main())"), "validate-spec", "include/pipelines/sst2.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -6
