"""Ingest at scale: land N distinct rows and time the ingest stage, with its peak memory.

    python bench/ingest_scale.py --rows 1000000 [--files 1] [--format tsv] [--keep DIR]

The rows are SST-2 training sentences with their row number appended (so all N are distinct), written as
``sentence<TAB>label`` (or CSV / JSONL / Parquet with --format) into a local landing folder, with the SST-2 dev set
as the golden source. The stage runs as a subprocess (``python -m tasks ingest --run R``, as Airflow runs it), with
dedup, validation, golden hygiene and quarantine on; the figures are the stage's alone. Prints one JSON line:
``rows``, ``wall_s``, ``rows_per_s``, ``peak_rss_mb`` (the ingest process's peak RSS, from wait4's rusage) and
the stage's counts; with ``--second M``, M more rows (half of them already stored) are landed and ingested on
top, and the same figures for that run come as ``second_*``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, ROOT, make_run, read_tsv  # noqa: E402


def dirty_tsv(base: list, idx: range) -> str:
    out = []
    for i in idx:
        text, label = f"{base[i % len(base)][0]} {i}", base[i % len(base)][1]
        out.append(f"{text}\t{label}\n")
        if i % 100 == 99:
            out.append(f"{text}\t{label}\n")  # a duplicate
        if i % 1000 == 999:
            out.append(f"{text}\t{1 - label}\n")  # a conflict: all three rows of this text are quarantined
        if i % 500 == 499:
            out.append(f" \t{label}\n")  # empty text
    return "".join(out)


def land_rows(folder: Path, rows: int, files: int, fmt: str, first_row: int = 0, name: str = "export",
              dirty: bool = False) -> int:
    """Write ``rows`` distinct labeled rows (numbers ``first_row``...) into ``files`` landing files; returns the
    bytes written."""
    base = read_tsv("train")
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    written = 0
    for k in range(files):
        lo, hi = first_row + k * per_file, first_row + min(rows, (k + 1) * per_file)
        path = folder / f"{name}-{k:03d}.{fmt.split('-')[0]}"
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            with pq.ParquetWriter(path, pa.schema([("sentence", pa.string()), ("label", pa.int64())])) as w:
                for start in range(lo, hi, 500_000):
                    idx = range(start, min(hi, start + 500_000))
                    w.write_table(pa.table({"sentence": [f"{base[i % len(base)][0]} {i}" for i in idx],
                                            "label": [base[i % len(base)][1] for i in idx]}))
        else:
            with open(path, "w", encoding="utf-8", newline="") as fh:
                if fmt != "jsonl":
                    fh.write("sentence\tlabel\n" if fmt == "tsv" else "sentence,label\n")
                for start in range(lo, hi, 100_000):
                    idx = range(start, min(hi, start + 100_000))
                    if fmt == "tsv" and dirty:
                        fh.write(dirty_tsv(base, idx))
                    elif fmt == "tsv":
                        fh.write("".join(f"{base[i % len(base)][0]} {i}\t{base[i % len(base)][1]}\n" for i in idx))
                    elif fmt == "csv":
                        fh.write("".join(f"{base[i % len(base)][0].replace(',', ';')} {i},{base[i % len(base)][1]}\n"
                                         for i in idx))
                    elif fmt == "csv-quoted":
                        csv.writer(fh, lineterminator="\n").writerows(
                            (f"{base[i % len(base)][0]} {i}", base[i % len(base)][1]) for i in idx)
                    else:
                        fh.write("".join(json.dumps({"sentence": f"{base[i % len(base)][0]} {i}",
                                                     "label": base[i % len(base)][1]}) + "\n" for i in idx))
        written += path.stat().st_size
    return written


def run_ingest(run: str, work: Path) -> dict:
    """``python -m tasks ingest --run RUN`` as a child process: its wall time, peak RSS and counts."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RETRAIN_XCOM_PATH": str(work / "xcom.json")}
    with open(work / "ingest.log", "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "tasks", "ingest", "--run", run], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
        # wait4: the rusage of exactly this child (ru_maxrss: its peak RSS, in kB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.exit(f"ingest failed ({code}):\n{(work / 'ingest.log').read_text()[-3000:]}")
    result = json.loads((work / "xcom.json").read_text())
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            **{k: result[k] for k in ("new_rows", "total_rows", "duplicates_removed", "contaminated_removed",
                                      "quarantined_rows")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=1, help="split the rows over this many landing files")
    parser.add_argument("--format", choices=["tsv", "csv", "csv-quoted", "jsonl", "parquet"], default="tsv",
                        help="csv: commas in texts replaced, no quoting; csv-quoted: csv.writer's RFC 4180 quoting")
    parser.add_argument("--second", type=int, default=0,
                        help="then land this many more rows, half of them already stored, and ingest again on top "
                             "(dedup against the previous snapshot); its figures come as second_*")
    parser.add_argument("--dirty", action="store_true",
                        help="TSV only: also every 100th row repeated, every 1000th relabeled (a conflict), every "
                             "500th with an empty text, so dedup, conflicts and the quarantine spool work at scale")
    parser.add_argument("--keep", help="use (and keep) this folder instead of a temporary one")
    args = parser.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ingest-scale-"))
    try:
        root = "file://" + str(work / "store")
        run = make_run(root, "scale")
        landing = work / "store" / "landing" / "sst2"
        landed = land_rows(landing, args.rows, args.files, args.format, dirty=args.dirty)
        golden = work / "store" / "reference" / "sst2" / "golden.tsv"
        golden.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / "sst2" / "dev.tsv", golden)

        first = run_ingest(run, work)
        line = {"rows": args.rows, "files": args.files, "format": args.format, "dirty": args.dirty,
                "landed_mb": round(landed / 2**20, 1),
                "wall_s": first["wall_s"], "rows_per_s": round(args.rows / first["wall_s"]), **first}
        if args.second:
            land_rows(landing, args.second, 1, args.format, first_row=args.rows - args.second // 2, name="second")
            second = run_ingest(run, work)
            line.update({f"second_{k}": v for k, v in second.items()}, second_rows=args.second)
            line["second_rows_per_s"] = round(args.second / second["wall_s"])
        print(json.dumps(line))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
