"""The CPU time (user + sys) of a command and of every process it starts, sampled once a second, by kind.

``/usr/bin/time`` counts only the processes the command reaped: a process whose parent is killed first is reaped
by init, and its CPU is counted nowhere (a running Airflow's components and their task processes). This follows the whole process tree instead,
and keeps sampling a process once seen (an orphan included); it misses processes that live less than a sample
period. docs/architecture.md ("Test time") quotes it, e.g.::

    .venv/bin/python bench/tree_cpu.py -- nice -n 19 .venv/bin/python -m pytest -p no:cacheprovider -q \
        tests/test_live_airflow.py

Prints the command's output, then one JSON line: wall seconds, the command's exit code, the tree's CPU seconds
in total and by kind of process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil

KINDS = ("api_server", "api-server", "dag-processor", "triggerer", "scheduler", "postgres", "pytest")


def kind(proc: psutil.Process) -> str:
    """What a process is, from its command line (Airflow's process titles included)."""
    line = " ".join(proc.cmdline())
    if line.startswith("airflow worker") or "LocalExecutor" in line:
        return "task processes"
    for name in KINDS:
        if name in line.split(" --workers")[0]:
            return name.replace("_", "-")
    if " -m tasks " in line + " ":
        return "stages"
    return "other"


def sample(root: psutil.Process, seen: dict[tuple[int, float], list]) -> None:
    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.Error:
        pass
    current = {}
    for proc in procs:
        try:
            current[(proc.pid, proc.create_time())] = proc
        except psutil.Error:
            continue
    for pid, created in list(seen):  # orphans, reparented away from the tree
        if (pid, created) not in current:
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created:
                    current[(pid, created)] = proc
            except psutil.Error:
                continue
    for key, proc in current.items():
        try:
            times = proc.cpu_times()
            name = kind(proc)  # the latest title: a fork starts with its parent's, then Airflow renames it
        except psutil.Error:
            continue
        seen[key] = [name, times.user + times.system]


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    started = time.monotonic()
    child = subprocess.Popen(argv)
    root = psutil.Process(child.pid)
    seen: dict[tuple[int, float], list] = {}
    while child.poll() is None:
        sample(root, seen)
        time.sleep(1.0)
    by_kind: dict[str, float] = {}
    for name, cpu in seen.values():
        by_kind[name] = round(by_kind.get(name, 0.0) + cpu, 1)
    print(json.dumps({"wall_s": round(time.monotonic() - started, 1), "exit_code": child.returncode,
                      "cpu_s": round(sum(by_kind.values()), 1), "cpu_by_kind_s": by_kind,
                      "processes": len(seen)}))
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
