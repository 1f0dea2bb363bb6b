"""`make demo` holds a lock for its whole run: a second demo started meanwhile refuses (it would wipe .demo/
under the first one's SQLite DB), and a killed demo never leaves the lock stale."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.common import ROOT


def load_demo_module():
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hold_lock(lock_path) -> subprocess.Popen:
    """Another process that takes the demo lock, says so, and sleeps (at most 60 s)."""
    code = (f"import importlib.util, sys, time; spec = importlib.util.spec_from_file_location('d', {str(ROOT / 'scripts' / 'demo.py')!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            f"with m.demo_lock(__import__('pathlib').Path({str(lock_path)!r})):\n"
            "    print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")})  # demo.py imports local_run
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_demo_refuses_and_a_killed_one_leaves_no_stale_lock(tmp_path, monkeypatch, capsys):
    demo = load_demo_module()
    lock = tmp_path / ".demo.lock"
    holder = hold_lock(lock)
    try:
        with pytest.raises(demo.DemoAlreadyRunning, match=f"pid {holder.pid}"):
            with demo.demo_lock(lock):
                pass

        # main() refuses before touching .demo/: nothing is wiped, nothing runs.
        (tmp_path / ".demo").mkdir()
        (tmp_path / ".demo" / "keep.txt").write_text("the running demo's files")
        started = []
        monkeypatch.setattr(demo, "ROOT", tmp_path)
        monkeypatch.setattr(demo, "DEMO", tmp_path / ".demo")
        monkeypatch.setattr(demo, "run_demo", lambda args, fd: started.append(fd) or 0)
        monkeypatch.setattr(sys, "argv", ["demo.py"])
        assert demo.main() == 2
        assert started == [] and (tmp_path / ".demo" / "keep.txt").is_file()
        assert "another `make demo` is running" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)

    # The kernel released the killed holder's lock.
    deadline = time.monotonic() + 5
    while True:
        try:
            with demo.demo_lock(lock):
                break
        except demo.DemoAlreadyRunning:
            assert time.monotonic() < deadline, "the lock outlived its holder"
            time.sleep(0.05)
    assert demo.main() == 0 and len(started) == 1


def test_golden_rows_keeps_a_seeded_draw_of_the_golden_file(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # demo.py imports local_run
    demo = load_demo_module()
    source = tmp_path / "golden.tsv"
    rows = [f"sentence {i} \t{i % 2}" for i in range(100)]
    source.write_text("\n".join(["sentence\tlabel", *rows]) + "\n")
    demo.cut_golden("file://" + str(source), 40)
    header, *kept = source.read_text().splitlines()
    assert header == "sentence\tlabel" and len(kept) == 40 == len(set(kept)) and set(kept) <= set(rows)
    again = tmp_path / "again.tsv"
    again.write_text("\n".join(["sentence\tlabel", *rows]) + "\n")
    demo.cut_golden("file://" + str(again), 40)
    assert again.read_text() == source.read_text()  # seeded: the same rows every run
