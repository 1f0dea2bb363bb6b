"""Example deploy DAGs: ``deploy_<pipeline>``, scheduled on the pipeline's champion Asset (``<pipeline>_champion``),
so each move of the champion (promotion, approval, override, rollback from the registry page or the CLI) starts
one run with the event's extra: version, version_uri, previous, metrics, idempotency_key (docs/registry.md,
"Champion events").

Off by default: each DAG is paused on creation (unpause it in the UI to opt in), and the whole file declares
nothing when ``RETRAIN_DEPLOY_EXAMPLE=false``. Copy it and replace ``deploy`` with your own rollout; as shipped it
logs the move and runs ``$RETRAIN_DEPLOY_COMMAND`` (when set) with ``DEPLOY_VERSION``, ``DEPLOY_VERSION_URI``,
``DEPLOY_PREVIOUS`` and ``DEPLOY_EVENT`` in its environment.

Cheap to parse: the pipeline specs (YAML + pydantic) and Airflow's SDK only; the retrain DAGs' modules are not
imported.
"""

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Asset, task

from tasks.spec import load_folder  # the installed project (pyproject.toml)

_root = Path(__file__).resolve().parents[1]  # the checkout: include/pipelines is the default specs folder


def _deploy_dag(spec) -> DAG:
    champion = Asset(name=f"{spec.name}_champion", uri=spec.layout.champion, group="retrain")
    with DAG(
        dag_id=f"deploy_{spec.name}",
        description=f"Example: roll out each new champion of {spec.name} (scheduled on its champion Asset)",
        schedule=[champion],
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=True,
        default_args={"owner": spec.owner, "retries": 2, "retry_delay": timedelta(seconds=30)},
        tags=["retrain", "deploy", spec.name],
        doc_md=__doc__,
    ) as dag:
        @task(task_id="deploy")
        def deploy(triggering_asset_events=None) -> list[dict]:
            """One entry per champion move since the last run (events can queue while a run is going)."""
            import subprocess

            moves = [dict(event.extra or {}) for events in (triggering_asset_events or {}).values()
                     for event in events]
            command = os.environ.get("RETRAIN_DEPLOY_COMMAND")
            for move in moves:
                print(f"champion {move.get('event')}: {move.get('previous')} -> {move.get('version')} "
                      f"({move.get('version_uri')}), key {move.get('idempotency_key')}", flush=True)
                if command:
                    env = {**os.environ, "DEPLOY_VERSION": str(move.get("version")),
                           "DEPLOY_VERSION_URI": str(move.get("version_uri")),
                           "DEPLOY_PREVIOUS": str(move.get("previous")), "DEPLOY_EVENT": str(move.get("event"))}
                    subprocess.run(command, shell=True, check=True, env=env, timeout=3600)
            return moves

        deploy()
    return dag


if os.environ.get("RETRAIN_DEPLOY_EXAMPLE", "true").strip().lower() not in ("false", "0", "no", "off"):
    _folder = Path(os.environ.get("RETRAIN_PIPELINES_DIR", _root / "include" / "pipelines"))
    for _path, _spec in load_folder(_folder)[0]:
        globals()[f"deploy_{_spec.name}"] = _deploy_dag(_spec)
