"""The real DAGs in a real running Airflow (not dag.test()): api-server, scheduler, dag-processor and triggerer
on 127.0.0.1 with Postgres as the metadata database (SQLite where none is installed) and the LocalExecutor
(tests/live_airflow.py), driven only through the REST API with a token from POST /auth/token, the way the UI and
any client drive it.

The pipeline is a tiny copy of include/pipelines/sst2.yaml: a 4-layer random-init BERT, a few hundred SST-2 rows,
storage on S3 (moto on 127.0.0.1) reached through the ``aws_default`` connection given as AIRFLOW_CONN_AWS_DEFAULT
(as docker-compose does), stages as local subprocesses.

Order matters and is the story of a deployment: the trigger form rejects bad input; a file lands and the
scheduler, not a person, starts the retrain run from the ingest DAG's Asset event; then an operator triggers a
forced dry run with a threshold override from the form. One Airflow serves the module and is stopped at the end,
and the teardown fails the module if any of its processes is still alive.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from conftest import ROOT, read_sst2
from live_airflow import LiveAirflow
from tasks.cli import OFFLINE_ENV

PIPELINE = "tiny"
INGEST_DAG = f"ingest_{PIPELINE}"
RETRAIN_DAG = f"retrain_{PIPELINE}"
# Wall-clock bounds for each wait (the whole module targets well under 4 minutes on 2 busy cores).
PARSE_TIMEOUT = 120
INGEST_TIMEOUT = 150
RETRAIN_TIMEOUT = 300

pytestmark = pytest.mark.timeout(900)


BROKEN_SPEC = "name: sst2\ndescription: a spec missing its required sections\n"


def tiny_spec(storage_uri: str, model_dir: Path) -> dict:
    raw = yaml.safe_load((ROOT / "include" / "pipelines" / "sst2.yaml").read_text())
    raw["name"] = PIPELINE
    raw["storage"] = {"uri": storage_uri, "conn_id": "aws_default"}
    raw["golden"]["source_uri"] = f"{storage_uri}/reference/{PIPELINE}/golden.tsv"
    raw["model"] = {"base": str(model_dir), "max_length": 64}
    raw["train"].update(epochs=1, batch_size=16, eval_steps=50, checkpoint_steps=50, max_train_rows=160,
                        learning_rate=1e-3)
    raw["student"].update(layers=2, epochs=1, batch_size=16, export=[])
    raw["drift"].update(embedding_subsample=40, embedding_permutations=50)
    raw["decide"].update(min_new_rows=20, retrain_every_rows=100)
    # The first run only has floors; a random-init model clears floors of zero.
    raw["gates"].update(min_accuracy=0.0, min_macro_f1=0.0, min_retention=0.0, max_class_recall_drop=1.0,
                        min_accuracy_over_baseline=None, min_macro_f1_over_baseline=None,
                        non_inferiority_margin=1.0)
    raw["alerts"].update(email=[], slack_conn_id=None)
    # The ingest DAG's own schedule fires within a minute. The nightly slot was an hour ago: unpausing must not
    # start a run for it (docs/triggers.md), and the next one is 23 hours away, well after this module.
    raw["schedule"].update(ingest_every_minutes=1, cron=past_daily_slot())
    raw["stages"] = {"mode": "local", **{stage: {"retries": 0, "timeout_minutes": 10} for stage in
                                        ("ingest", "drift", "finetune", "distill", "evaluate", "publish")}}
    return raw


def past_daily_slot(hours_ago: int = 1) -> str:
    from datetime import datetime, timedelta, timezone

    slot = datetime.now(timezone.utc) - timedelta(hours=hours_ago)
    return f"{slot.minute} {slot.hour} * * *"


def tsv(rows: list[tuple[str, int]]) -> str:
    return "sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows)


@pytest.fixture(scope="module")
def bucket(moto_server):
    """A fresh bucket, and the test process's own S3 settings (Airflow gets them only from a connection)."""
    from tasks import storage

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ENDPOINT_URL": moto_server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(key, value)
        storage.reset_clients()
        uri = moto_server.create_bucket(f"live-{time.monotonic_ns() % 10**12}")
        yield uri
        storage.reset_clients()


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, bucket, moto_server, tiny_model_dir):
    from tasks import storage

    tmp = tmp_path_factory.mktemp("live-airflow")
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    (pipelines / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(tiny_spec(bucket, tiny_model_dir)))
    # A broken spec next to it, of a pipeline with a DAG file of its own (dags/pipeline_sst2.py): it must be that
    # file's import error, and nothing else's.
    (pipelines / "sst2.yaml").write_text(BROKEN_SPEC)
    storage.write_text(f"{bucket}/reference/{PIPELINE}/golden.tsv", tsv(read_sst2("dev", limit=80)))

    endpoint = quote(moto_server.endpoint, safe="")
    af = LiveAirflow(
        tmp / "home", dags_folder=ROOT / "dags", plugins_folder=ROOT / "plugins", python_path=[ROOT],
        drop_env_prefixes=("AWS_", "RETRAIN_"),
        env={
            "RETRAIN_PIPELINES_DIR": str(pipelines),
            "RETRAIN_STAGE_MODE": "local",
            # The one way the stages get S3 credentials and endpoint: the Airflow connection (compose does same).
            "AIRFLOW_CONN_AWS_DEFAULT": f"aws://testing:testing@/?endpoint_url={endpoint}&region_name=us-east-1",
            **OFFLINE_ENV, "OMP_NUM_THREADS": "2",
        },
    )
    try:
        af.start()
        af.wait_healthy(timeout=180)
        yield af
    finally:
        af.stop()
        left = af.alive_pids()
        assert not left, f"processes still alive after stop(): {sorted(left)}"


@pytest.fixture(scope="module")
def api(airflow):
    client = airflow.client()
    for dag_id in (INGEST_DAG, RETRAIN_DAG):
        client.wait_for_dag(dag_id, timeout=PARSE_TIMEOUT, expected_errors=("pipeline_sst2.py",))
    return client


def explain(airflow: LiveAirflow, dag_id: str, run_id: str) -> str:
    return f"\n{airflow.task_logs(dag_id, run_id, chars=2500)}\n{airflow.logs_tail(1500)}"


def test_the_metadata_database_is_postgres_where_installed(airflow, api):
    """Production runs Postgres: so do these tests wherever Postgres is installed (CI installs it); the Airflow
    that parsed the DAGs wrote them into that database, not into a SQLite file."""
    import pg_server

    if pg_server.choice() == "sqlite" or (pg_server.choice() == "auto" and pg_server.unavailable_reason()):
        pytest.skip(f"metadata database: {pg_server.describe()}")
    assert airflow.database.kind == "postgresql", airflow.database
    assert airflow.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert not (airflow.home / "airflow.db").exists()
    import psycopg2

    conn = psycopg2.connect(airflow.database.url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT dag_id FROM dag WHERE dag_id IN (%s, %s)", (INGEST_DAG, RETRAIN_DAG))
            assert sorted(r[0] for r in cur.fetchall()) == sorted([INGEST_DAG, RETRAIN_DAG])
            cur.execute("SELECT count(*) FROM job WHERE job_type = 'SchedulerJob' AND state = 'running'")
            assert cur.fetchone()[0] >= 1
    finally:
        conn.close()


def test_token_is_required_and_issued_like_for_any_client(airflow):
    import httpx

    anonymous = httpx.get(f"{airflow.base_url}/api/v2/dags", timeout=30, trust_env=False)
    assert anonymous.status_code == 401
    wrong = httpx.post(f"{airflow.base_url}/auth/token", timeout=30, trust_env=False,
                       json={"username": airflow.username, "password": "not-the-password"})
    assert wrong.status_code == 401
    client = airflow.client()
    assert client.request("GET", "/api/v2/dags").status == 200


def test_a_broken_spec_shows_as_its_own_dag_files_import_error(api):
    """What the UI's import-error list shows (GET /api/v2/importErrors): the broken sst2.yaml as the import error
    of dags/pipeline_sst2.py, naming the spec and what it lacks; the pipeline beside it parsed and runs (the tests
    below), and no other DAG file has an error."""
    deadline = time.monotonic() + PARSE_TIMEOUT
    while not (errors := api.import_errors()) and time.monotonic() < deadline:
        time.sleep(2)
    assert [e["filename"].rsplit("/", 1)[-1] for e in errors] == ["pipeline_sst2.py"], errors
    trace = errors[0]["stack_trace"]
    assert "sst2.yaml" in trace and "data" in trace and "the other pipelines are not affected" in trace, trace[-1500:]
    assert api.get_dag(RETRAIN_DAG).status == 200 and api.get_dag("retrain_sst2").status == 404


def test_trigger_form_rejects_invalid_conf_with_a_clear_error(api):
    before = len(api.dag_runs(RETRAIN_DAG))
    wrong_type = api.trigger(RETRAIN_DAG, {"dry_run": "yes"})
    assert wrong_type.status == 400, wrong_type.text
    assert "dry_run" in wrong_type.body["detail"] and "boolean" in wrong_type.body["detail"]

    out_of_range = api.trigger(RETRAIN_DAG, {"min_accuracy": 1.5})
    assert out_of_range.status == 400, out_of_range.text
    assert "min_accuracy" in out_of_range.body["detail"]
    assert "maximum" in out_of_range.body["detail"]

    negative = api.trigger(RETRAIN_DAG, {"non_inferiority_margin": -0.1})
    assert negative.status == 400, negative.text
    assert "non_inferiority_margin" in negative.body["detail"] and "minimum" in negative.body["detail"]

    not_a_number = api.trigger(RETRAIN_DAG, {"min_macro_f1": "high"})
    assert not_a_number.status == 400, not_a_number.text
    assert "min_macro_f1" in not_a_number.body["detail"]
    assert len(api.dag_runs(RETRAIN_DAG)) == before, "a rejected trigger still created a run"


def test_a_landed_file_makes_the_scheduler_start_retraining(airflow, api, bucket):
    """New file → the ingest DAG's own schedule → new snapshot → Asset event → asset-triggered retrain run."""
    from tasks import storage

    storage.write_text(f"{bucket}/landing/{PIPELINE}/batch-1.tsv", tsv(read_sst2("train", limit=200)))
    assert not api.dag_runs(RETRAIN_DAG)
    api.unpause(RETRAIN_DAG)
    api.unpause(INGEST_DAG)

    ingest_run = api.wait_for_new_run(INGEST_DAG, timeout=INGEST_TIMEOUT)
    assert ingest_run["run_type"] == "scheduled", ingest_run  # nobody triggered the ingest either
    ingest_run = api.wait_for_run(INGEST_DAG, ingest_run["dag_run_id"], timeout=INGEST_TIMEOUT)
    assert ingest_run["state"] == "success", explain(airflow, INGEST_DAG, ingest_run["dag_run_id"])
    ingest_tasks = {t["task_id"]: t["state"] for t in api.task_instances(INGEST_DAG, ingest_run["dag_run_id"])}
    assert ingest_tasks["announce_snapshot"] == "success", ingest_tasks

    run = api.wait_for_new_run(RETRAIN_DAG, timeout=90)
    assert run["run_type"] == "asset_triggered", run
    assert run["triggered_by"] == "asset" and run["triggering_user_name"] is None, run
    (event,) = api.upstream_asset_events(RETRAIN_DAG, run["dag_run_id"])
    assert event["source_dag_id"] == INGEST_DAG and event["source_run_id"] == ingest_run["dag_run_id"]
    assert event["extra"]["new_rows"] > 0 and event["extra"]["total_rows"] >= event["extra"]["new_rows"]
    assert event["extra"]["snapshot_id"]

    # Stop the minute-by-minute ingest: the rest of the module does not need it and the cores are few.
    api.ok("PATCH", f"/api/v2/dags/{INGEST_DAG}", json={"is_paused": True})

    run = api.wait_for_run(RETRAIN_DAG, run["dag_run_id"], timeout=RETRAIN_TIMEOUT)
    assert run["state"] == "success", explain(airflow, RETRAIN_DAG, run["dag_run_id"])
    tasks = {t["task_id"]: t["state"] for t in api.task_instances(RETRAIN_DAG, run["dag_run_id"])}
    assert tasks["finetune"] == tasks["distill"] == tasks["evaluate"] == tasks["publish"] == "success", tasks
    # The first run trained on the snapshot the event announced and promoted it.
    champion = storage.read_json(f"{bucket}/models/{PIPELINE}/champion.json")
    assert champion["snapshot_id"] == event["extra"]["snapshot_id"]
    assert storage.exists(champion["version_uri"] + "/manifest.json")
    # Only the Asset event made a retrain run: unpausing did not start one for the nightly slot an hour ago.
    assert {r["run_type"] for r in api.dag_runs(RETRAIN_DAG)} == {"asset_triggered"}


def test_manual_trigger_with_form_conf_is_honoured(airflow, api, bucket):
    """Force + dry run + a threshold override, exactly the body the UI's trigger form posts."""
    from tasks import storage

    champion_before = storage.read_json(f"{bucket}/models/{PIPELINE}/champion.json")
    conf = {"force_retrain": True, "dry_run": True, "min_accuracy": 0.05}
    resp = api.trigger(RETRAIN_DAG, conf)
    assert resp.status == 200, resp.text
    run = resp.body
    assert run["run_type"] == "manual" and run["conf"]["dry_run"] is True

    run = api.wait_for_run(RETRAIN_DAG, run["dag_run_id"], timeout=RETRAIN_TIMEOUT)
    assert run["state"] == "success", explain(airflow, RETRAIN_DAG, run["dag_run_id"])
    tasks = {t["task_id"]: t["state"] for t in api.task_instances(RETRAIN_DAG, run["dag_run_id"])}
    # force_retrain: no new data since the champion, yet it trained.
    assert tasks["finetune"] == tasks["publish"] == "success", tasks
    publish = api.ok("GET", f"/api/v2/dags/{RETRAIN_DAG}/dagRuns/{run['dag_run_id']}/taskInstances/publish/"
                            "xcomEntries/return_value", params={"deserialize": True})["value"]
    # dry_run: a version was published, the champion did not move.
    assert publish["promoted"] is False, publish
    assert storage.exists(publish["version_uri"] + "/manifest.json")
    assert storage.read_json(f"{bucket}/models/{PIPELINE}/champion.json") == champion_before
    # The threshold override reached the run's frozen spec, which every stage reads.
    prepare = api.ok("GET", f"/api/v2/dags/{RETRAIN_DAG}/dagRuns/{run['dag_run_id']}/taskInstances/prepare_run/"
                            "xcomEntries/return_value", params={"deserialize": True})["value"]
    frozen = storage.read_json(prepare["run_uri"] + "/spec.json")
    assert frozen["gates"]["min_accuracy"] == 0.05
    assert frozen["gates"]["min_macro_f1"] == 0.0  # untouched fields keep the spec's value
    decision = storage.read_json(prepare["run_uri"] + "/decide/result.json")
    assert decision["forced"] is True and decision["retrain"] is True


def test_a_typo_in_the_conf_fails_the_run_before_any_work(airflow, api):
    """Airflow's API accepts unknown conf keys (it validates Params key by key), so prepare_run rejects them:
    the run fails after one try, nothing downstream runs, and the task says which keys are valid."""
    resp = api.trigger(RETRAIN_DAG, {"min_acuracy": 0.9})
    assert resp.status == 200, resp.text
    run = api.wait_for_run(RETRAIN_DAG, resp.body["dag_run_id"], timeout=PARSE_TIMEOUT)
    assert run["state"] == "failed", explain(airflow, RETRAIN_DAG, run["dag_run_id"])
    tasks = {t["task_id"]: t for t in api.task_instances(RETRAIN_DAG, run["dag_run_id"])}
    assert tasks["prepare_run"]["state"] == "failed" and tasks["prepare_run"]["try_number"] == 1, tasks
    assert tasks["ingest"]["state"] == "upstream_failed"
    log = airflow.task_logs(RETRAIN_DAG, run["dag_run_id"], chars=20000)
    assert "unknown trigger conf key: 'min_acuracy' (did you mean 'min_accuracy'?)" in log, log[-3000:]
