"""Ingest at scale: land N distinct rows and time the ingest stage, with its peak memory.

    python bench/ingest_scale.py --rows 1000000 [--files 1] [--format tsv] [--keep DIR]

The rows are SST-2 training sentences with their row number appended (so all N are distinct), written as
``sentence<TAB>label`` (or CSV / JSONL / Parquet with --format) into a local landing folder, with the SST-2 dev set
as the golden source. The stage runs as a subprocess (``python -m tasks ingest --run R``, as Airflow runs it), with
dedup, validation, golden hygiene and quarantine on; the figures are the stage's alone. Prints one JSON line:
``rows``, ``wall_s``, ``rows_per_s``, ``peak_rss_mb`` (the ingest process's peak RSS, from wait4's rusage) and
the stage's counts.
"""

from __future__ import annotations

import argparse
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


def land_rows(folder: Path, rows: int, files: int, fmt: str) -> int:
    """Write ``rows`` distinct labeled rows into ``files`` landing files; returns the bytes written."""
    base = read_tsv("train")
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    written = 0
    for k in range(files):
        lo, hi = k * per_file, min(rows, (k + 1) * per_file)
        path = folder / f"export-{k:03d}.{fmt}"
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
                    if fmt == "tsv":
                        fh.write("".join(f"{base[i % len(base)][0]} {i}\t{base[i % len(base)][1]}\n" for i in idx))
                    elif fmt == "csv":
                        fh.write("".join(f"{base[i % len(base)][0].replace(',', ';')} {i},{base[i % len(base)][1]}\n"
                                         for i in idx))
                    else:
                        fh.write("".join(json.dumps({"sentence": f"{base[i % len(base)][0]} {i}",
                                                     "label": base[i % len(base)][1]}) + "\n" for i in idx))
        written += path.stat().st_size
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=1, help="split the rows over this many landing files")
    parser.add_argument("--format", choices=["tsv", "csv", "jsonl", "parquet"], default="tsv")
    parser.add_argument("--keep", help="use (and keep) this folder instead of a temporary one")
    args = parser.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ingest-scale-"))
    try:
        root = "file://" + str(work / "store")
        run = make_run(root, "scale")
        landing = work / "store" / "landing" / "sst2"
        landed = land_rows(landing, args.rows, args.files, args.format)
        golden = work / "store" / "reference" / "sst2" / "golden.tsv"
        golden.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / "sst2" / "dev.tsv", golden)

        env = {**os.environ, "PYTHONPATH": str(ROOT), "RETRAIN_XCOM_PATH": str(work / "xcom.json")}
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "tasks", "ingest", "--run", run], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, stderr = proc.communicate()
        wall = time.perf_counter() - start
        if proc.returncode:
            sys.exit(f"ingest failed ({proc.returncode}):\n{stderr.decode()[-3000:]}")
        # ru_maxrss of the one child this process waited for (kB on Linux).
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result = json.loads((work / "xcom.json").read_text())
        print(json.dumps({
            "rows": args.rows, "files": args.files, "format": args.format, "landed_mb": round(landed / 2**20, 1),
            "wall_s": round(wall, 2), "rows_per_s": round(args.rows / wall), "peak_rss_mb": round(peak_kb / 1024, 1),
            "new_rows": result["new_rows"], "duplicates_removed": result["duplicates_removed"],
            "contaminated_removed": result["contaminated_removed"], "quarantined_rows": result["quarantined_rows"],
        }))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
