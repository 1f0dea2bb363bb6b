"""What the OpenLineage provider costs a DAG parse: the DAG folder parsed in fresh interpreters, the way Airflow's
DAG processor does (DagBag, its own per-file stats), with the provider

- ``absent``: not installed (a copy of site-packages without it: a tree of links that leaves it out),
- ``off``: installed, not configured (the default),
- ``on``: installed and configured (the file transport),

alternating the three, ``--repeats`` times each. Prints per-file medians and the whole DagBag (plugins included),
as one JSON line. docs/benchmarks.md quotes it.

    .venv/bin/python bench/lineage_parse.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import site
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent("""
    import json, sys, time
    import airflow.sdk  # Airflow's own import cost is not the DAG files'
    started = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    total = time.perf_counter() - started
    lineage = "airflow.providers.openlineage" in sys.modules
    print(json.dumps({"files": {s.file: s.duration.total_seconds() for s in bag.dagbag_stats}, "total": total,
                      "errors": list(bag.import_errors), "provider_imported": lineage}))
""")

HIDDEN = ("openlineage", "openlineage_sql", "apache_airflow_providers_openlineage")


def site_packages_without_provider(tmp: Path) -> Path:
    """A tree of links to site-packages with the provider and its client left out."""
    real = Path(next(p for p in site.getsitepackages() if p.endswith("site-packages")))
    farm = tmp / "site-packages"
    farm.mkdir()
    for entry in real.iterdir():
        if entry.name == "airflow":
            continue
        if entry.name.startswith(HIDDEN) or entry.name.startswith("openlineage_"):
            continue
        (farm / entry.name).symlink_to(entry)
    (farm / "airflow").mkdir()
    for entry in (real / "airflow").iterdir():
        if entry.name != "providers":
            (farm / "airflow" / entry.name).symlink_to(entry)
    (farm / "airflow" / "providers").mkdir()
    for entry in (real / "airflow" / "providers").iterdir():
        if entry.name != "openlineage":
            (farm / "airflow" / "providers" / entry.name).symlink_to(entry)
    return farm


def parse_once(case: str, farm: Path, events: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW__OPENLINEAGE__", "OPENLINEAGE_", "OPENLINEAGE__"))}
    cmd = [sys.executable, "-c", PROBE, str(ROOT / "dags")]
    if case == "absent":  # no site: only the linked copy, which lacks the provider
        cmd = [sys.executable, "-S", "-c", PROBE, str(ROOT / "dags")]
        env["PYTHONPATH"] = os.pathsep.join([str(farm), str(ROOT / "plugins"), str(ROOT)])
    if case == "on":
        env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps({"type": "file", "log_file_path": str(events),
                                                             "append": True})
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise SystemExit(f"{case}: import errors {result['errors']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = ("absent", "off", "on")
    with tempfile.TemporaryDirectory(prefix="lineage-parse-") as tmp:
        farm = site_packages_without_provider(Path(tmp))
        runs: dict[str, list[dict]] = {case: [] for case in cases}
        for _ in range(args.repeats):
            for case in cases:
                runs[case].append(parse_once(case, farm, Path(tmp) / "events.jsonl"))
    report = {}
    for case in cases:
        files = sorted(runs[case][0]["files"])
        report[case] = {
            "provider_imported": runs[case][0]["provider_imported"],
            "dagbag_total_s": round(statistics.median(r["total"] for r in runs[case]), 3),
            "per_file_s": {Path(f).name: round(statistics.median(r["files"][f] for r in runs[case]), 3) for f in files},
        }
    for case in ("off", "on"):
        report[case]["total_vs_absent"] = round(report[case]["dagbag_total_s"] / report["absent"]["dagbag_total_s"], 2)
    report["repeats"] = args.repeats
    print(json.dumps(report))


if __name__ == "__main__":
    main()
