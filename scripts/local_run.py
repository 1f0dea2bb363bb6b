"""``make run`` / ``make ingest``: run any pipeline's real DAGs once, on this machine, on the embedded default.

    make run    SPEC=include/pipelines/NAME.yaml LANDING=DIR [STORAGE=DIR]   # ingest, then retrain
    make ingest SPEC=include/pipelines/NAME.yaml LANDING=DIR [STORAGE=DIR]   # the ingest DAG alone

The spec is used as written, except for what makes it a local run: storage goes to STORAGE (default
``.run/NAME/storage``), the landing zone is DIR itself (files are read where they are, through the same
landing-zone checks as production: nothing is copied, a symlink out of DIR is not followed), stages run as local
subprocesses, and the nightly deadline alert is off (``dag.test()`` cannot run a DAG that has one twice, see
docs/known-issues.md). A fresh STORAGE gets the golden set from the spec's ``golden.seed_uri``.

State lives in STORAGE, not in Airflow: each call uses a fresh Airflow metadata DB, so a second call on the same
STORAGE is "the next night": it sees the snapshots, registry and champion the first one left.

The last line printed is the run summary as JSON (for ``ingest``: the ingest result: snapshot, counts,
quarantine), so scripts can read it with ``tail -1``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "ingest"], help="run: ingest then retrain; ingest: ingest alone")
    parser.add_argument("--spec", required=True, type=Path, help="the pipeline's YAML file")
    parser.add_argument("--landing", required=True, type=Path, help="folder holding the landed files")
    parser.add_argument("--storage", type=Path, default=None, help="local storage root (default .run/NAME/storage)")
    return parser.parse_args(argv)


def airflow_environment(home: Path, pipelines_dir: Path) -> dict[str, str]:
    """Airflow settings for a local run, before Airflow is imported (shared with scripts/demo.py)."""
    from tasks.cli import OFFLINE_ENV

    return {
        **OFFLINE_ENV,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "RETRAIN_PIPELINES_DIR": str(pipelines_dir),
        "RETRAIN_STAGE_MODE": "local",
    }


def migrate_db(pass_fds: tuple[int, ...] = ()) -> None:
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL,
                   pass_fds=pass_fds)


def local_spec(spec_path: Path, storage_root: Path, landing: Path | None) -> dict:
    """The spec as written, made local: storage, landing (if given), local stages, no deadline alert."""
    import yaml

    raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    raw.setdefault("storage", {})["uri"] = f"file://{storage_root.resolve()}"
    if landing is not None:
        raw.setdefault("landing", {})["uri"] = f"file://{landing.resolve()}"
    raw.setdefault("stages", {})["mode"] = "local"
    raw.setdefault("schedule", {})["nightly_deadline_minutes"] = 0
    return raw


def seed_golden(spec) -> None:
    """Copy the golden set's source into a fresh storage root from ``golden.seed_uri``."""
    from tasks import storage

    source, seed = spec.golden.source_uri, spec.golden.seed_uri
    if storage.exists(source) or storage.exists(storage.join(spec.layout.golden, "current.json")) or not seed:
        return
    seed_uri = storage.normalize(seed)
    if not storage.exists(seed_uri):
        raise SystemExit(f"golden.seed_uri {seed} does not exist; the golden set {source} cannot be seeded (a "
                         f"relative seed_uri is relative to the spec file; or put the golden file at {source})")
    storage.copy(seed_uri, source)
    print(f"[run] golden set: copied {seed_uri} -> {source}", flush=True)


class LocalRun:
    """The component name listeners see in their lifecycle hooks (``before_stopping``)."""


def run_dag(bag, dag_id: str) -> tuple[str, float]:
    from airflow.listeners.listener import get_listener_manager

    started = time.monotonic()
    dag_run = bag.dags[dag_id].test()
    # Let listeners finish what the run handed them (with OpenLineage configured, the provider sends DAG-run
    # events from a process pool that reads the metadata DB): before the next run writes to SQLite, and before the
    # last line, the JSON, is printed. No listener (the default): nothing to do.
    get_listener_manager().hook.before_stopping(component=LocalRun())
    return str(getattr(dag_run.state, "value", dag_run.state)), time.monotonic() - started


def load_dags(dags_folder: Path):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags_folder))
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"[run] DAG import error in {path}:\n{error}", file=sys.stderr)
        raise SystemExit(1)
    return bag


def latest_result(runs_uri: str, kind: str, name: str) -> dict | None:
    """The newest ``<kind>-*/<name>`` JSON under a pipeline's runs/ folder (by run key, which sorts by time)."""
    from tasks import storage

    prefix = runs_uri.rstrip("/") + "/"

    def wanted(uri: str) -> bool:
        run_key, _, rest = uri[len(prefix):].partition("/")
        return run_key.startswith(f"{kind}-") and rest == name

    found = sorted((o for o in storage.list_objects(runs_uri) if wanted(o.uri)), key=lambda o: o.mtime)
    return storage.read_json(found[-1].uri) if found else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import yaml

    from tasks.spec import load_spec

    spec_path = args.spec.resolve()
    if not spec_path.is_file():
        print(f"[run] no spec file {args.spec}", file=sys.stderr)
        return 2
    if not args.landing.is_dir():
        print(f"[run] LANDING {args.landing} is not a folder", file=sys.stderr)
        return 2
    name = (yaml.safe_load(spec_path.read_text(encoding="utf-8")) or {}).get("name", spec_path.stem)
    storage_root = (args.storage or ROOT / ".run" / str(name) / "storage").resolve()
    storage_root.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="retrain-run-") as tmp:
        pipelines_dir = Path(tmp) / "pipelines"
        pipelines_dir.mkdir()
        effective = pipelines_dir / spec_path.name
        raw = local_spec(spec_path, storage_root, args.landing)
        # A relative golden.seed_uri is relative to the spec as written, not to this temporary copy.
        raw.setdefault("golden", {})["seed_uri"] = load_spec(spec_path).golden.seed_uri
        effective.write_text(yaml.safe_dump(raw, sort_keys=False))
        os.environ.update(airflow_environment(Path(tmp) / "airflow", pipelines_dir))
        os.environ.pop("RETRAIN_STORAGE_URI", None)  # the effective spec names its storage itself

        spec = load_spec(effective)
        seed_golden(spec)
        print(f"[run] {spec.name}: landing {args.landing.resolve()}, storage {storage_root}", flush=True)
        migrate_db()
        bag = load_dags(ROOT / "dags")
        dag_ids = [f"ingest_{spec.name}"] + ([f"retrain_{spec.name}"] if args.command == "run" else [])
        states = {}
        for dag_id in dag_ids:
            state, seconds = run_dag(bag, dag_id)
            states[dag_id] = state
            print(f"[run] {dag_id}: {state} in {seconds:.0f} s", flush=True)
            if dag_id.startswith("ingest_") and state != "success" and args.command == "run":
                break
        kind, name = ("retrain", "summary.json") if args.command == "run" else ("ingest", "ingest/result.json")
        last = latest_result(spec.layout.runs, kind, name)
        if args.command == "run" and last is not None:
            from tasks.decide.summary import format_summary

            print(format_summary(last), flush=True)
        print(json.dumps(last if last is not None else {"pipeline": spec.name, "states": states}, sort_keys=True,
                         default=str))
        return 0 if last is not None and all(s == "success" for s in states.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
