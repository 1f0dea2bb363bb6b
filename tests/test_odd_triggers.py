"""Odd triggers and operator actions under real Airflow (dag.test() on SQLite), real S3 (moto on 127.0.0.1),
real stage subprocesses and a real SMTP server / Slack webhook on 127.0.0.1 (docs/triggers.md, "Odd triggers,
clears and reruns"):

one run trains and promotes a tiny model; then the operator clears that finished run, whole or from decide,
finetune, publish, gate or notify on: no stage runs again, nothing in storage changes (no object added or
rewritten), the champion stays, and no alert goes out.

One training run in all (~1 min on 2 shared cores); every clear is seconds.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
import yaml

from conftest import ROOT, read_sst2
from test_e2e_dag import land, tiny_spec

pytestmark = pytest.mark.usefixtures("airflow_db")

FIRST = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)  # the finished run's logical date (its run id)
STAGES = ("ingest", "drift", "finetune", "distill", "evaluate", "publish")


def stored(bucket: str) -> dict[str, tuple[int, str]]:
    """Every object under the bucket: size and ETag (a rewritten object gets a new ETag)."""
    from tasks import storage

    return {o.uri: (o.size, o.etag) for o in storage.list_objects(bucket + "/")}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, moto_server, tiny_model_dir):
    from airflow.dag_processing.dagbag import DagBag

    from decision_support import SmtpReceiver, WebhookReceiver
    from tasks import storage

    tmp = tmp_path_factory.mktemp("odd")
    with pytest.MonkeyPatch.context() as mp, SmtpReceiver() as smtp, WebhookReceiver() as hook:
        for key, value in {"AWS_ENDPOINT_URL": moto_server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "STORAGE_MAX_ATTEMPTS": "2", "RETRAIN_STAGE_MODE": "local",
                           "RETRAIN_PIPELINES_DIR": str(tmp / "pipelines"),
                           "AIRFLOW_CONN_SMTP_TEST": smtp.conn_json(),
                           "AIRFLOW_CONN_SLACK_TEST": hook.conn_json()}.items():
            mp.setenv(key, value)
        storage.reset_clients()
        bucket = moto_server.create_bucket("odd-triggers")
        (tmp / "pipelines").mkdir()
        (tmp / "pipelines" / "tiny.yaml").write_text(yaml.safe_dump(tiny_spec(bucket, tiny_model_dir)))
        storage.write_text(bucket + "/reference/tiny/golden.tsv", "sentence\tlabel\n" + "".join(
            f"{t}\t{y}\n" for t, y in read_sst2("dev", limit=80)))
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert bag.import_errors == {}
        yield {"bucket": bucket, "dag": bag.dags["retrain_tiny"], "smtp": smtp, "hook": hook}
        storage.reset_clients()


def play(dag, **kwargs) -> tuple[str, dict[str, str], dict[str, int]]:
    run = dag.test(**kwargs)
    return states_of(run)


def states_of(run) -> tuple[str, dict[str, str], dict[str, int]]:
    tis = run.get_task_instances()
    return (str(getattr(run.state, "value", run.state)),
            {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in tis},
            {ti.task_id: ti.try_number for ti in tis})


def clear_and_rerun(dag, run_id: str, task_id: str | None) -> tuple[str, dict[str, str], dict[str, int]]:
    """What Clear in the UI does to a finished run (the API's clear: the scheduler DAG's clear() of the task
    and its downstream tasks, None = the whole run), then the scheduler's part: run what became runnable,
    like dag.test() does (which itself would delete and recreate the run)."""
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    ids = None if task_id is None else sorted(
        {task_id} | dag.get_task(task_id).get_flat_relative_ids(upstream=False))
    session = settings.Session()
    scheduler_dag.clear(task_ids=ids, run_id=run_id, session=session)
    run = session.scalar(select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id))
    run.dag = scheduler_dag
    run.state = DagRunState.RUNNING
    session.commit()
    deadline = time.monotonic() + 600
    while run.state == DagRunState.RUNNING and time.monotonic() < deadline:
        session.expire_all()
        schedulable, _ = run.update_state(session=session)
        for ti in schedulable:
            ti.try_number += 1
            ti.state = TaskInstanceState.SCHEDULED
        session.commit()
        for ti in [t for t in run.get_task_instances(session=session) if t.state == TaskInstanceState.SCHEDULED]:
            _run_task(ti=ti, task=dag.task_dict[ti.task_id])
    session.expire_all()
    return states_of(run)


@pytest.fixture(scope="module")
def finished(pipeline):
    """One manual run that trains on the first batch and promotes the first champion."""
    from tasks import storage

    land(pipeline["bucket"], "batch-1.tsv", 0, 160)
    started = time.monotonic()
    run = pipeline["dag"].test(run_after=FIRST, logical_date=FIRST)
    state, tasks, _ = states_of(run)
    assert state == "success" and tasks["publish"] == "success", tasks
    runs = [o.uri for o in storage.list_objects(pipeline["bucket"] + "/runs/tiny/") if o.uri.endswith("/summary.json")]
    (summary_uri,) = runs
    summary = storage.read_json(summary_uri)
    assert summary["outcome"] == "promoted", summary
    return {**pipeline, "summary": summary, "run_id": run.run_id, "seconds": time.monotonic() - started,
            "champion": storage.read_json(pipeline["bucket"] + "/models/tiny/champion.json")}


# From the end of the chain back: a cleared task that is skipped loses its XCom, which a task cleared later
# would need as an argument (Airflow then fails it on the missing XCom, before our code runs).
@pytest.mark.parametrize("cleared", ["notify", "gate", "publish", "finetune", "decide", "whole run"])
def test_clearing_a_finished_run_redoes_nothing_and_overwrites_nothing(finished, cleared):
    """Clear in the UI = the task (and what follows it) runs again in the same run. Before: decide saw the
    run's own trained record and skipped, and notify rewrote the promoted run's summary as "skipped"; a cleared
    finetune trained again into the run's folder (the published version's sources), evaluate rewrote the gate
    reports, and a cleared gate of a blocked run sent its alert again."""
    from tasks import storage

    before, mails, posts = stored(finished["bucket"]), len(finished["smtp"].messages), len(finished["hook"].posts)
    state, tasks, _ = clear_and_rerun(finished["dag"], finished["run_id"], None if cleared == "whole run" else cleared)
    assert state == "success", tasks
    cleared_ids = set(tasks) if cleared == "whole run" else (
        {cleared} | finished["dag"].get_task(cleared).get_flat_relative_ids(upstream=False))
    ran = {t for t in cleared_ids if t != "fail_if_any_failed" and tasks[t] != "skipped"}
    assert ran == set(), tasks  # every cleared task skipped itself (or was skipped); nothing ran again
    assert stored(finished["bucket"]) == before  # not one object added or rewritten
    assert storage.read_json(finished["bucket"] + "/models/tiny/champion.json") == finished["champion"]
    assert storage.read_json(finished["summary"]["run_uri"] + "/summary.json") == finished["summary"]
    assert finished["smtp"].messages[mails:] == [] and finished["hook"].posts[posts:] == []
