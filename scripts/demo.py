"""``make demo``: the real pipeline, end to end, on this machine's CPU, driven by Airflow itself.

1. A local Airflow home (SQLite) under .demo/airflow and a local storage root under .demo/storage.
2. The golden set (SST-2 dev) is placed where the spec expects it, and a first slice of SST-2 train lands.
3. ``ingest_sst2`` runs (a new snapshot, an Asset event), then ``retrain_sst2``: the first champion.
4. A second slice lands; ingest and retrain run again: drift checks, a retrain decision, gates against the
   champion, and a promotion or a block.
5. A short summary: decisions, metrics, where the artifacts are.

Each run starts from a clean .demo/ so the story is the same every time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import local_run  # scripts/local_run.py, next to this file: the generic runner of make run / make ingest

ROOT = Path(__file__).resolve().parents[1]

DEMO = ROOT / ".demo"
DATA = Path(os.environ.get("RETRAIN_DATA_DIR", ROOT.parent / "shared" / "data"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first-rows", type=int, default=int(os.environ.get("DEMO_FIRST_ROWS", 5000)),
                        help="rows of SST-2 train in the first landed batch")
    parser.add_argument("--second-rows", type=int, default=int(os.environ.get("DEMO_SECOND_ROWS", 5000)),
                        help="rows in the second batch (the spec retrains every 5,000 new rows)")
    parser.add_argument("--min-words", type=int, default=int(os.environ.get("DEMO_MIN_WORDS", 10)),
                        help="land only SST-2 rows with at least this many words (full sentences, like dev)")
    parser.add_argument("--max-train-rows", type=int, default=int(os.environ.get("DEMO_MAX_TRAIN_ROWS", 4500)),
                        help="train on at most this many rows, newest first (the spec's train.max_train_rows)")
    parser.add_argument("--golden-rows", type=int, default=int(os.environ.get("DEMO_GOLDEN_ROWS") or 0) or None,
                        help="a golden set of this many SST-2 dev rows (a seeded random draw) instead of all 872: "
                             "how the gates decide on a small golden set (docs/registry.md)")
    parser.add_argument("--keep", action="store_true", help="keep .demo/ from an earlier run")
    return parser.parse_args()


def configure_environment(args: argparse.Namespace) -> None:
    """Airflow and pipeline settings for the embedded default, before Airflow is imported."""
    os.environ.update(local_run.airflow_environment(DEMO / "airflow", ROOT / "include" / "pipelines"))
    os.environ.update({
        "RETRAIN_MAX_TRAIN_ROWS": str(args.max_train_rows),
        "RETRAIN_STORAGE_URI": f"file://{DEMO / 'storage'}",
        # Airflow 3.3.2's dag.test() cannot run a DAG with a DeadlineAlert a second time (docs/known-issues.md).
        "RETRAIN_NIGHTLY_DEADLINE_MINUTES": "0",
    })
    os.environ.setdefault("RETRAIN_CODE_VERSION", _git_version())


def _git_version() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sst2_rows(path: Path):
    with open(path, newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)


def land_slice(landing: Path, name: str, start: int, count: int, min_words: int) -> Path:
    """Write SST-2 train rows [start, start+count), counting only rows of at least min_words words.

    SST-2 train is mostly short phrases (9.4 words on average) while dev, the golden set, is full sentences
    (19.5); full-sentence rows teach the model what it is judged on, in the demo's small training budget.
    """
    landing.mkdir(parents=True, exist_ok=True)
    target = landing / name
    kept = 0
    with open(target, "w", encoding="utf-8") as out:
        out.write("sentence\tlabel\n")
        for row in sst2_rows(DATA / "sst2" / "train.tsv"):
            if len(row["sentence"].split()) < min_words:
                continue
            if kept >= start:
                out.write(f"{row['sentence']}\t{row['label']}\n")
            kept += 1
            if kept >= start + count:
                break
    return target


class DemoAlreadyRunning(RuntimeError):
    pass


@contextlib.contextmanager
def demo_lock(path: Path):
    """Hold an exclusive lock for the whole demo: a second ``make demo`` would wipe .demo/ under the first one's
    SQLite DB. The kernel drops the lock when the holder dies, so a killed demo never leaves it stale. Yields the
    lock's file descriptor, for children that must keep holding it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise DemoAlreadyRunning(f"another `make demo` is running (pid {holder}); wait for it or stop it first, "
                                     f"then run again (lock: {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield fd
    finally:
        os.close(fd)


def main() -> int:
    args = parse_args()
    if not (DATA / "sst2" / "train.tsv").is_file():
        print(f"SST-2 data not found under {DATA}; set RETRAIN_DATA_DIR to the folder holding sst2/", file=sys.stderr)
        return 2
    try:
        with demo_lock(ROOT / ".demo.lock") as lock_fd:
            return run_demo(args, lock_fd)
    except DemoAlreadyRunning as exc:
        print(f"[demo] {exc}", file=sys.stderr)
        return 2


def cut_golden(source_uri: str, rows: int, seed: int = 0) -> None:
    """Keep a seeded random draw of ``rows`` rows of the golden source file (a header line, then one row a line)."""
    from tasks import storage

    header, *lines = storage.read_text(source_uri).splitlines()
    random.Random(seed).shuffle(lines)
    storage.write_text(source_uri, "\n".join([header, *lines[:rows]]) + "\n")
    print(f"[demo] golden set: {min(rows, len(lines))} of its {len(lines)} rows (seed {seed})", flush=True)


def run_demo(args: argparse.Namespace, lock_fd: int) -> int:
    if DEMO.exists() and not args.keep:
        shutil.rmtree(DEMO)
    configure_environment(args)
    t0 = time.monotonic()
    (DEMO / "airflow").mkdir(parents=True, exist_ok=True)
    print("[demo] preparing Airflow metadata DB (SQLite) ...", flush=True)
    # The migration holds the lock too: if this process is killed, no new demo starts until the migration ends.
    local_run.migrate_db(pass_fds=(lock_fd,))

    storage_root = DEMO / "storage"
    landing = storage_root / "landing" / "sst2"
    from tasks.spec import load_spec

    spec = load_spec(ROOT / "include" / "pipelines" / "sst2.yaml")
    local_run.seed_golden(spec)  # SST-2 dev, from golden.seed_uri
    if args.golden_rows:
        cut_golden(spec.golden.source_uri, args.golden_rows)
    bag = local_run.load_dags(ROOT / "dags")

    timings = {}
    story = [("first batch: the first champion", "batch-0001.tsv", 0, args.first_rows),
             ("second batch: retrain against the champion", "batch-0002.tsv", args.first_rows, args.second_rows)]
    for step, (title, name, start, count) in enumerate(story, 1):
        print(f"\n[demo] === {title} ===", flush=True)
        land_slice(landing, name, start, count, args.min_words)
        print(f"[demo] landed {count} SST-2 train rows (>= {args.min_words} words) as {landing / name}", flush=True)
        for dag_id in ("ingest_sst2", "retrain_sst2"):
            state, seconds = local_run.run_dag(bag, dag_id)
            timings[f"run{step}_{dag_id}"] = round(seconds, 1)
            print(f"[demo] {dag_id}: {state} in {seconds:.0f} s", flush=True)
            if dag_id == "ingest_sst2" and state != "success":
                return 1

    print("\n[demo] ===== summary =====")
    from tasks.decide.summary import format_summary

    summaries = sorted((storage_root / "runs" / "sst2").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    for path in summaries:
        print(format_summary(json.loads(path.read_text())))
        print()
    champion = storage_root / "models" / "sst2" / "champion.json"
    if champion.exists():
        print(f"champion: {json.loads(champion.read_text())['version']} ({champion})")
    print(f"artifacts: {storage_root}")
    print(f"inspect:   .venv/bin/python -m tasks registry --spec include/pipelines/sst2.yaml list   "
          f"(with RETRAIN_STORAGE_URI=file://{storage_root})")
    total = time.monotonic() - t0
    timings["total"] = round(total, 1)
    print(f"[demo] finished in {total / 60:.1f} min: {json.dumps(timings)}")
    return 0 if summaries and champion.exists() else 1


if __name__ == "__main__":
    sys.exit(main())
