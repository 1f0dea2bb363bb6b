"""DAG parse time per file, with and without ``approval:`` in the spec (issue 21: with approval not configured,
parse time must not change; with it, the HITL operator is imported only then).

    .venv/bin/python bench/dag_parse_approval.py [--repeats 3]

Each parse is Airflow's own DagBag over dags/ in a fresh interpreter (Airflow's import excluded), the DagBag
stats per file; the minimum over the repeats is reported (the machine is shared and busy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
print(json.dumps({s.file.rsplit("/", 1)[-1]: s.duration.total_seconds() for s in bag.dagbag_stats}))
"""


def parse_once(pipelines: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "dags")], capture_output=True, text=True,
                         timeout=300, check=True, env={**os.environ, "RETRAIN_PIPELINES_DIR": str(pipelines),
                                                  "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins")})  # pipeline_dags
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = yaml.safe_load((ROOT / "include" / "pipelines" / "sst2.yaml").read_text())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, approval in (("approval: never (default)", None), ("approval: always", {"policy": "always"})):
            folder = Path(tmp) / label.split(":")[0] / (approval or {}).get("policy", "never")
            folder.mkdir(parents=True)
            raw = dict(base, **({"approval": approval} if approval else {}))
            (folder / "sst2.yaml").write_text(yaml.safe_dump(raw))
            runs = [parse_once(folder) for _ in range(args.repeats)]
            results[label] = {f: min(r[f] for r in runs) for f in runs[0]}
    files = sorted({f for r in results.values() for f in r})
    print("| file | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for f in files:
        print(f"| {f} | " + " | ".join(f"{r.get(f, 0):.3f} s" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
