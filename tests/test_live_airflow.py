"""The real DAGs in a real running Airflow (not dag.test()): api-server, scheduler, dag-processor and triggerer
on 127.0.0.1 with Postgres as the metadata database (SQLite where none is installed) and the LocalExecutor
(tests/live_airflow.py), driven only through the REST API with a token from POST /auth/token, the way the UI and
any client drive it.

The pipeline is a tiny copy of include/pipelines/sst2.yaml: a 4-layer random-init BERT, a few hundred SST-2 rows,
storage on S3 (moto on 127.0.0.1) reached through the ``aws_default`` connection given as AIRFLOW_CONN_AWS_DEFAULT
(as docker-compose does), stages as local subprocesses.

Order matters and is the story of a deployment: the trigger form rejects bad input; a file lands and the
scheduler, not a person, starts the retrain run from the ingest DAG's Asset event; then an operator triggers a
forced dry run with a threshold override from the form. The approval pipelines' first runs (other DAGs) start with
the landed file's and train alongside the tiny pipeline's runs; their questions are answered, or left to time out,
by the tests after. One Airflow serves the module and is stopped at the end, and the teardown fails the module if
any of its processes is still alive.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from conftest import ROOT, read_sst2
from live_airflow import LiveAirflow
from tasks.cli import OFFLINE_ENV
from tasks.contracts import Outcome

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
                        non_inferiority_margin=1.0, latency_samples=5)  # no latency budget here: the fewest calls
    raw["alerts"].update(email=[], slack_conn_id=None)
    # The ingest DAG's own schedule fires within a minute. The nightly slot was an hour ago: unpausing must not
    # start a run for it (docs/triggers.md), and the next one is 23 hours away, well after this module.
    raw["schedule"].update(ingest_every_minutes=1, cron=past_daily_slot())
    raw["stages"] = {"mode": "local", **{stage: {"retries": 0, "timeout_minutes": 10} for stage in
                                        ("ingest", "drift", "finetune", "distill", "evaluate", "publish")}}
    return raw


GATED = "gated"
GATED_DAG = f"retrain_{GATED}"
# The approve run is started with the module's first pipeline run and answered tests later: its question waits
# long enough for that. The unanswered run's question times out while the module goes on.
GATED_APPROVAL_TIMEOUT_MINUTES = 20
APPROVAL_TIMEOUT_MINUTES = 0.75
ANSWER_AFTER_S = 12
WEBHOOK_SECRET = "webhook-test-secret"
GATED_TIMEOUT = 480  # a run up to the question, or on to its end (tiny, but on shared cores)


def gated_spec(storage_uri: str, model_dir: Path) -> dict:
    """The tiny pipeline with ``approval.policy: always``, alerts by e-mail to the test's SMTP server."""
    raw = tiny_spec(storage_uri, model_dir)
    raw["name"] = GATED
    raw["golden"]["source_uri"] = f"{storage_uri}/reference/{GATED}/golden.tsv"
    raw["train"].update(max_train_rows=80)
    raw["approval"] = {"policy": "always", "timeout_minutes": GATED_APPROVAL_TIMEOUT_MINUTES}
    raw["events"] = {"webhook_conn_id": "retrain_webhook", "webhook_retries": 3}
    raw["alerts"].update(email=["oncall@example.com"], smtp_conn_id="smtp_test", slack_conn_id=None,
                         from_email="airflow@example.com")
    return raw


# The timeout's pipeline: the approval pipeline again, under another name, so that its run (a DAG runs one run at a
# time) is asked and waits out its timeout while the tiny pipeline's runs and GATED's go on, not after them.
UNANSWERED = "unanswered"
UNANSWERED_DAG = f"retrain_{UNANSWERED}"


def unanswered_spec(storage_uri: str, model_dir: Path) -> dict:
    raw = gated_spec(storage_uri, model_dir)
    raw["name"] = UNANSWERED
    raw["approval"]["timeout_minutes"] = APPROVAL_TIMEOUT_MINUTES
    raw["golden"]["source_uri"] = f"{storage_uri}/reference/{UNANSWERED}/golden.tsv"
    raw["events"] = {"webhook_conn_id": None}  # the webhook test counts GATED's posts only
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
def smtp():
    """A real SMTP server on 127.0.0.1 for the approval pipeline's alerts (the tiny pipeline sends none)."""
    from decision_support import SmtpReceiver

    with SmtpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def hook():
    """The approval pipeline's champion webhook receiver; down (503) for the first POST, so the webhook retries."""
    from decision_support import WebhookReceiver

    with WebhookReceiver(fail_first=1) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, bucket, moto_server, tiny_model_dir, smtp, hook):
    from tasks import storage

    tmp = tmp_path_factory.mktemp("live-airflow")
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    (pipelines / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(tiny_spec(bucket, tiny_model_dir)))
    # A broken spec next to it, of a pipeline with a DAG file of its own (dags/pipeline_sst2.py): it must be that
    # file's import error, and nothing else's.
    (pipelines / "sst2.yaml").write_text(BROKEN_SPEC)
    storage.write_text(f"{bucket}/reference/{PIPELINE}/golden.tsv", tsv(read_sst2("dev", limit=80)))
    # The approval pipeline (tests at the end of the module): the same tiny model, a person's word before promotion.
    (pipelines / f"{GATED}.yaml").write_text(yaml.safe_dump(gated_spec(bucket, tiny_model_dir)))
    storage.write_text(f"{bucket}/reference/{GATED}/golden.tsv", tsv(read_sst2("dev", limit=40)))
    (pipelines / f"{UNANSWERED}.yaml").write_text(yaml.safe_dump(unanswered_spec(bucket, tiny_model_dir)))
    storage.write_text(f"{bucket}/reference/{UNANSWERED}/golden.tsv", tsv(read_sst2("dev", limit=40)))

    endpoint = quote(moto_server.endpoint, safe="")
    af = LiveAirflow(
        tmp / "home", dags_folder=ROOT / "dags", plugins_folder=ROOT / "plugins", python_path=[ROOT],
        drop_env_prefixes=("AWS_", "RETRAIN_"),
        env={
            "RETRAIN_PIPELINES_DIR": str(pipelines),
            "RETRAIN_STAGE_MODE": "local",
            # The one way the stages get S3 credentials and endpoint: the Airflow connection (compose does same).
            "AIRFLOW_CONN_AWS_DEFAULT": f"aws://testing:testing@/?endpoint_url={endpoint}&region_name=us-east-1",
            **OFFLINE_ENV, "OMP_NUM_THREADS": "1",
            "AIRFLOW_CONN_SMTP_TEST": smtp.conn_json(),
            "AIRFLOW_CONN_RETRAIN_WEBHOOK": json.dumps({"conn_type": "http", "password": WEBHOOK_SECRET,
                                                        "host": f"http://127.0.0.1:{hook.port}/hooks/retrain"}),
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


# The approval pipelines' runs start first, to train alongside this test's and the next ones' (other DAGs).
@pytest.mark.usefixtures("approve_run", "unanswered_run")
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


# ---------------------------------------------------------------- approval: a person's word in Required actions


def _hitl_path(run_id: str, dag_id: str = GATED_DAG) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/approve/-1/hitlDetails"


def _wait_for_question(airflow, api, run_id: str) -> dict:
    """Until the approve task is parked in awaiting_input (after the gates), then its HITL request."""
    deadline = time.monotonic() + GATED_TIMEOUT
    while True:
        tasks = {t["task_id"]: t["state"] for t in api.task_instances(GATED_DAG, run_id)}
        if tasks.get("approve") == "awaiting_input":
            # Answer as a person would, not within the scheduler's next beat: Airflow 3.3 fails a HITL task whose
            # answer resumes it before the scheduler has processed the worker's exit from parking it
            # (docs/known-issues.md, "An approval answered within seconds"). ANSWER_AFTER_S after the request was
            # made (the same machine's clock): a request that has waited that long already is answered at once.
            from datetime import datetime, timezone

            asked = datetime.fromisoformat(api.ok("GET", _hitl_path(run_id))["created_at"].replace("Z", "+00:00"))
            waited = (datetime.now(timezone.utc) - asked).total_seconds()
            time.sleep(min(ANSWER_AFTER_S, max(0.0, ANSWER_AFTER_S - waited)))
            return api.ok("GET", _hitl_path(run_id))
        run = api.dag_run(GATED_DAG, run_id)
        assert run["state"] not in ("success", "failed") and time.monotonic() < deadline, (
            f"no approval request: run {run['state']}, tasks {tasks}" + explain(airflow, GATED_DAG, run_id))
        time.sleep(2)


def _start_gated_run(api, bucket, conf: dict | None = None, pipeline: str = GATED) -> str:
    from tasks import storage

    dag_id = f"retrain_{pipeline}"
    if not storage.exists(f"{bucket}/landing/{pipeline}/batch-1.tsv"):
        storage.write_text(f"{bucket}/landing/{pipeline}/batch-1.tsv", tsv(read_sst2("train", limit=120)))
        api.wait_for_dag(dag_id, timeout=PARSE_TIMEOUT, expected_errors=("pipeline_sst2.py",))
        api.unpause(dag_id)
    resp = api.trigger(dag_id, conf or {"force_retrain": True})
    assert resp.status == 200, resp.text
    return resp.body["dag_run_id"]


def _champion(bucket, pipeline: str = GATED) -> dict | None:
    from tasks import storage

    uri = f"{bucket}/models/{pipeline}/champion.json"
    return storage.read_json(uri) if storage.exists(uri) else None


@pytest.fixture(scope="module")
def unanswered_run(api, bucket) -> str:
    """The run whose question nobody answers, started with the module's first pipeline run (the landed-file test
    asks for it) and checked by the timeout test after the approval tests: its training, question and timeout
    overlap the other tests' runs."""
    return _start_gated_run(api, bucket, pipeline=UNANSWERED)


@pytest.fixture(scope="module")
def approve_run(api, bucket) -> str:
    """The GATED run the approval test answers, started with the module's first pipeline run (the landed-file test
    asks for it): it trains and is asked while the tiny pipeline's tests run (its question waits up to
    GATED_APPROVAL_TIMEOUT_MINUTES). The reject run comes after it (a DAG runs one run at a time)."""
    return _start_gated_run(api, bucket)


def test_approval_waits_in_required_actions_and_approving_through_the_api_promotes(airflow, api, bucket, smtp,
                                                                                  tmp_path, approve_run,
                                                                                  unanswered_run):
    """policy always: the run stops after the gates with our gate report in the request; a person's Approve
    (PATCH .../hitlDetails, as the Required actions page sends it) publishes and promotes, and the audit trail
    names them. On-call got the request's link by e-mail while it waited."""
    from tasks import storage

    run_id = approve_run
    detail = _wait_for_question(airflow, api, run_id)
    assert detail["options"] == ["Approve", "Reject"] and detail["response_received"] is False
    body = detail["body"]
    assert "passed its gates" in body and "| gate | verdict | value | threshold |" in body, body
    assert "golden accuracy [95% CI]" in body and "**Drift:**" in body
    assert f"/retrain-registry/pipelines/{GATED}" in body
    assert _champion(bucket) is None  # nothing moved while waiting
    waiting = [m for m in smtp.messages if "approval needed" in m["subject"] and run_id in m["subject"]]
    assert waiting and "required_actions" in waiting[0]["body"], [m["subject"] for m in smtp.messages]

    _screenshot_required_actions(airflow, run_id, tmp_path)

    answer = api.request("PATCH", _hitl_path(run_id), json={"chosen_options": ["Approve"],
                                                            "params_input": {"reason": "numbers checked"}})
    assert answer.status == 200, answer.text
    run = api.wait_for_run(GATED_DAG, run_id, timeout=GATED_TIMEOUT)
    assert run["state"] == "success", explain(airflow, GATED_DAG, run_id)
    champion = _champion(bucket)
    assert champion is not None
    manifest = storage.read_json(champion["version_uri"] + "/manifest.json")
    assert manifest["approval"]["decision"] == "approved" and manifest["approval"]["reason"] == "numbers checked"
    audit = [storage.read_json(o.uri) for o in storage.list_objects(f"{bucket}/models/{GATED}/audit/")]
    (record,) = [a for a in audit if a["version"] == champion["version"]]
    assert record["event"] == "promote-approved" and record["approved_by"] == airflow.username, record
    assert record["approval"]["responded_by"]["name"] == airflow.username


def _screenshot_required_actions(airflow, run_id: str, tmp_path: Path) -> None:
    """The Required actions page of the waiting run in Chromium, with our body in it (docs/img/ when
    UPDATE_DOCS_SCREENSHOT=1). Skipped where Debian's chromium is missing (CI installs it)."""
    import os
    import shutil

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        assert not os.environ.get("CI"), "CI installs chromium (scripts/ci_system_deps.sh)"
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.set_default_timeout(60_000)
            page.goto(f"{airflow.base_url}/auth/login")
            page.locator("input[name=username]").fill(airflow.username)
            page.locator("input[name=password]").fill(airflow.password)
            page.locator("button[type=submit]").click()
            page.wait_for_url(lambda url: "/auth/login" not in url)
            page.goto(f"{airflow.base_url}/dags/{GATED_DAG}/runs/{quote(run_id, safe='')}/tasks/approve/"
                      "required_actions")
            page.get_by_text("passed its gates", exact=False).first.wait_for()
            page.get_by_text("non_inferiority_teacher", exact=False).first.wait_for()
            shot = tmp_path / "approval-required-actions.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
                shutil.copy(shot, ROOT / "docs" / "img" / "approval-required-actions.png")
        finally:
            browser.close()


def test_rejecting_publishes_the_version_as_rejected_and_does_not_promote(airflow, api, bucket):
    from tasks import storage

    before = _champion(bucket)
    run_id = _start_gated_run(api, bucket)
    _wait_for_question(airflow, api, run_id)
    answer = api.request("PATCH", _hitl_path(run_id), json={"chosen_options": ["Reject"],
                                                            "params_input": {"reason": "wait for more data"}})
    assert answer.status == 200, answer.text
    run = api.wait_for_run(GATED_DAG, run_id, timeout=GATED_TIMEOUT)
    assert run["state"] == "success", explain(airflow, GATED_DAG, run_id)
    publish = api.ok("GET", f"/api/v2/dags/{GATED_DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances/publish/"
                            "xcomEntries/return_value", params={"deserialize": True})["value"]
    assert publish["promoted"] is False and "rejected by" in publish["reason"], publish
    assert _champion(bucket) == before
    manifest = storage.read_json(publish["version_uri"] + "/manifest.json")
    assert manifest["approval"]["decision"] == "rejected"


def test_an_unanswered_request_times_out_promotes_nothing_and_alerts(airflow, api, bucket, smtp, unanswered_run):
    from tasks import storage

    run_id = unanswered_run
    run = api.wait_for_run(UNANSWERED_DAG, run_id, timeout=GATED_TIMEOUT + APPROVAL_TIMEOUT_MINUTES * 60)
    assert run["state"] == "failed", explain(airflow, UNANSWERED_DAG, run_id)
    tasks = {t["task_id"]: t["state"] for t in api.task_instances(UNANSWERED_DAG, run_id)}
    assert tasks["approve"] == "failed" and tasks["publish"] == "upstream_failed", tasks
    # It was asked (the request is on record, unanswered, and on-call got its link), then nothing was published.
    hitl = api.ok("GET", _hitl_path(run_id, UNANSWERED_DAG))
    assert hitl["options"] == ["Approve", "Reject"] and hitl["response_received"] is False, hitl
    assert any("approval needed" in m["subject"] and run_id in m["subject"] for m in smtp.messages)
    assert _champion(bucket, UNANSWERED) is None
    assert not [o.uri for o in storage.list_objects(f"{bucket}/models/{UNANSWERED}/") if o.uri.endswith("manifest.json")]
    deadline = time.monotonic() + 60
    while not (timed_out := [m for m in smtp.messages if "approval timed out" in m["subject"]]):
        assert time.monotonic() < deadline, [m["subject"] for m in smtp.messages]
        time.sleep(1)
    assert run_id in timed_out[0]["subject"] and "nothing is published or promoted" in timed_out[0]["body"]
    summary = storage.read_json(api.ok("GET", f"/api/v2/dags/{UNANSWERED_DAG}/dagRuns/{quote(run_id, safe='')}/"
                                              "taskInstances/prepare_run/xcomEntries/return_value",
                                       params={"deserialize": True})["value"]["run_uri"] + "/summary.json")
    assert summary["outcome"] == Outcome.NOT_APPROVED and summary["approval"]["decision"] == "timed_out"


# ---------------------------------------------------------------- champion moves as Asset events


def _deploy_runs_after(api, seen: set[str], timeout: float) -> dict:
    run = api.wait_for_new_run(DEPLOY_DAG, timeout=timeout, exclude=seen)
    assert run["run_type"] == "asset_triggered", run
    return api.wait_for_run(DEPLOY_DAG, run["dag_run_id"], timeout=timeout)


DEPLOY_DAG = f"deploy_{GATED}"


def test_champion_moves_emit_asset_events_that_start_the_deploy_dag(airflow, api, bucket, hook):
    """The approved promotion above emitted an event from the DAG (announce_champion); a rollback from the CLI
    (REST API POST /api/v2/assets/events) and one from the registry page (Airflow's asset manager in the
    api-server) each start a run of the example deploy DAG, which gets version, previous and the metrics."""
    import os
    import subprocess
    import sys

    import httpx

    from tasks import storage

    champion = _champion(bucket)
    assets = api.ok("GET", "/api/v2/assets", params={"name_pattern": f"{GATED}_champion"})["assets"]
    (asset,) = [a for a in assets if a["name"] == f"{GATED}_champion"]
    events = api.ok("GET", "/api/v2/assets/events", params={"asset_id": asset["id"]})["asset_events"]
    promoted = [e for e in events if e["source_dag_id"] == GATED_DAG]
    assert [e["extra"]["version"] for e in promoted] == [champion["version"]], events
    assert promoted[0]["extra"]["event"] == "promote-approved" and promoted[0]["extra"]["previous"] is None
    assert promoted[0]["extra"]["metrics"]["student"]["golden_accuracy"] is not None
    assert promoted[0]["extra"]["approval"]["decision"] == "approved"

    api.wait_for_dag(DEPLOY_DAG, timeout=PARSE_TIMEOUT, expected_errors=("pipeline_sst2.py",))
    assert api.get_dag(DEPLOY_DAG).body["is_paused"] is True  # off until someone opts in
    api.unpause(DEPLOY_DAG)
    seen = {r["dag_run_id"] for r in api.dag_runs(DEPLOY_DAG)}

    # 1. the CLI: roll back to the version published as rejected (any verified version may be pointed to)
    versions = sorted(o.uri.rsplit("/", 2)[-2] for o in storage.list_objects(f"{bucket}/models/{GATED}/")
                      if o.uri.endswith("/manifest.json"))
    target = next(v for v in versions if v != champion["version"])
    spec_uri = champion["version_uri"] + "/reports/spec.json"
    env = {**os.environ, "RETRAIN_AIRFLOW_API_URL": airflow.base_url, "RETRAIN_AIRFLOW_USERNAME": airflow.username,
           "RETRAIN_AIRFLOW_PASSWORD": airflow.password, "RETRAIN_ACTOR": "cli-test"}
    out = subprocess.run([sys.executable, "-m", "tasks", "registry", "--spec", spec_uri, "rollback", "--to", target],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Asset event" in out.stderr and "sent" in out.stderr, out.stdout + out.stderr
    run = _deploy_runs_after(api, seen, timeout=120)
    assert run["state"] == "success", explain(airflow, DEPLOY_DAG, run["dag_run_id"])
    # The promotion's event, emitted while the deploy DAG was paused, may be queued into this first run too.
    event = _last_event(api.upstream_asset_events(DEPLOY_DAG, run["dag_run_id"]))
    assert event["extra"]["event"] == "rollback" and event["extra"]["version"] == target
    assert event["extra"]["previous"] == champion["version"] and event["extra"]["actor"] == "cli-test"
    moves = api.ok("GET", f"/api/v2/dags/{DEPLOY_DAG}/dagRuns/{quote(run['dag_run_id'], safe='')}/taskInstances/"
                          "deploy/xcomEntries/return_value", params={"deserialize": True})["value"]
    assert target in [m["version"] for m in moves] and all(m["pipeline"] == GATED for m in moves)
    seen.add(run["dag_run_id"])

    # 2. the registry page's rollback (its JSON API, as the page's button posts it), back to the approved version
    with httpx.Client(base_url=airflow.base_url, timeout=60, trust_env=False,
                      headers={"Authorization": f"Bearer {airflow.token()}"}) as http:
        resp = http.post(f"/retrain-registry/api/pipelines/{GATED}/rollback",
                         json={"to": champion["version"], "expected_champion": target})
    assert resp.status_code == 200 and isinstance(resp.json()["asset_event_id"], int), resp.text
    run = _deploy_runs_after(api, seen, timeout=120)
    assert run["state"] == "success", explain(airflow, DEPLOY_DAG, run["dag_run_id"])
    event = _last_event(api.upstream_asset_events(DEPLOY_DAG, run["dag_run_id"]))
    assert event["extra"]["version"] == champion["version"] and event["extra"]["previous"] == target
    assert event["extra"]["actor"] == f"{airflow.username} (Airflow UI)"
    api.ok("PATCH", f"/api/v2/dags/{DEPLOY_DAG}", json={"is_paused": True})

    # 3. the signed webhook (events.webhook_conn_id) got all three moves, the first after a retry (503 once)
    from tasks.decide import champion_events as ce

    keys = {promoted[0]["extra"]["idempotency_key"], event["extra"]["idempotency_key"]}
    deadline = time.monotonic() + 180
    while not keys <= {p["json"].get("idempotency_key") for p in hook.posts} or len(hook.posts) < 3:
        assert time.monotonic() < deadline, (hook.refused, [p["json"] for p in hook.posts])
        time.sleep(2)
    assert hook.refused == 1  # the receiver was down once; Airflow's retry delivered the promotion
    for post in hook.posts:
        headers = {k.lower(): v for k, v in post["headers"].items()}
        assert post["path"] == "/hooks/retrain"
        assert ce.verify_signature(WEBHOOK_SECRET, headers[ce.TIMESTAMP_HEADER.lower()], post["body"].encode(),
                                   headers[ce.SIGNATURE_HEADER.lower()])
        assert headers[ce.IDEMPOTENCY_HEADER.lower()] == post["json"]["idempotency_key"]
    assert [p["json"]["event"] for p in hook.posts][:1] == ["promote-approved"]


def _last_event(events: list[dict]) -> dict:
    assert events
    return max(events, key=lambda e: e["timestamp"])
