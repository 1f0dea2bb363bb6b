"""Odd triggers and operator actions under real Airflow (dag.test() on SQLite), real S3 (moto on 127.0.0.1),
real stage subprocesses and a real SMTP server / Slack webhook on 127.0.0.1 (docs/triggers.md, "Odd triggers,
clears and reruns"):

1. finetune marked success by hand: the run summary says so; clearing the failed run's distill redoes it and
   keeps the earlier summary; clearing its prepare_run after a spec change keeps the run's frozen spec;
2. one run trains and promotes a tiny model; then the operator clears that finished run, whole or from decide,
   finetune, publish, gate or notify on: no stage runs again, nothing in storage changes (no object added or
   rewritten), the champion stays, and no alert goes out.

One training run in all (~1 min on 2 shared cores); every clear is seconds.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

import pytest
import yaml

from conftest import ROOT, read_sst2
from test_e2e_dag import land, tiny_spec

# The pipeline's name: its Assets (<name>_snapshots, <name>_champion) live in the Airflow DB that the test modules of a
# pytest worker share, and Airflow holds an Asset inactive when one name has two URIs (test_e2e_dag's "tiny" is in
# another bucket), which fails the task that has it as an outlet.
NAME = "odd"

pytestmark = pytest.mark.usefixtures("airflow_db")

FIRST = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)  # the finished run's logical date (its run id)
MARKED = datetime(2026, 11, 22, 2, 0, tzinfo=timezone.utc)
STAGES = ("ingest", "drift", "finetune", "distill", "evaluate", "publish")


def run_uri_of(bucket: str, run_id: str) -> str:
    """The run's folder: its key is the run id made storage-safe (retrain_pipelines.run_key)."""
    return f"{bucket}/runs/{NAME}/retrain-" + re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-")


def stored(bucket: str) -> dict[str, tuple[int, str]]:
    """Every object under the bucket: size and ETag (a rewritten object gets a new ETag)."""
    from tasks import storage

    return {o.uri: (o.size, o.etag) for o in storage.list_objects(bucket + "/")}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, moto_server, tiny_model_dir):
    from airflow.dag_processing.dagbag import DagBag

    from decision_support import SmtpReceiver, WebhookReceiver, local_pipeline_env
    from tasks import storage

    tmp = tmp_path_factory.mktemp("odd")
    with pytest.MonkeyPatch.context() as mp, SmtpReceiver() as smtp, WebhookReceiver() as hook:
        for key, value in local_pipeline_env(moto_server, tmp / "pipelines", smtp, hook).items():
            mp.setenv(key, value)
        storage.reset_clients()
        bucket = moto_server.create_bucket("odd-triggers")
        (tmp / "pipelines").mkdir()
        raw = tiny_spec(bucket, tiny_model_dir)
        raw["name"] = NAME  # not "tiny": test modules share a worker's Airflow DB (see NAME)
        raw.setdefault("landing", {})["uri"] = bucket + "/landing/tiny"  # where test_e2e_dag.land() puts files
        for stage in ("finetune", "distill"):  # a failure in this test is the point: no retry delays
            raw["stages"][stage]["retries"] = 0
        (tmp / "pipelines" / f"{NAME}.yaml").write_text(yaml.safe_dump(raw))
        storage.write_text(bucket + "/reference/tiny/golden.tsv", "sentence\tlabel\n" + "".join(
            f"{t}\t{y}\n" for t, y in read_sst2("dev", limit=80)))
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert bag.import_errors == {}
        yield {"bucket": bucket, "dag": bag.dags[f"retrain_{NAME}"], "smtp": smtp, "hook": hook,
               "spec_file": tmp / "pipelines" / f"{NAME}.yaml"}
        storage.reset_clients()


def play(dag, **kwargs) -> tuple[str, dict[str, str], dict[str, int]]:
    run = dag.test(**kwargs)
    return states_of(run)


def states_of(run) -> tuple[str, dict[str, str], dict[str, int]]:
    tis = run.get_task_instances()
    return (str(getattr(run.state, "value", run.state)),
            {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in tis},
            {ti.task_id: ti.try_number for ti in tis})


def clear_and_rerun(dag, run_id: str, task_id: str | None, downstream: bool = True
                    ) -> tuple[str, dict[str, str], dict[str, int]]:
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
        {task_id} | (dag.get_task(task_id).get_flat_relative_ids(upstream=False) if downstream else set()))
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


def test_a_task_marked_success_by_hand_is_summarized_and_a_redone_run_keeps_its_spec_and_summaries(pipeline):
    """Triggered with the form's defaults for every field (a plain run), finetune marked success without running (Mark as success in the UI; dag.test's mark_success_pattern):
    distill has no teacher and fails, and notify still writes the run summary, saying what was marked (before:
    notify failed on the missing result, twice, and the run had no summary). Clearing distill of that failed run
    redoes it; the earlier summary is kept under previous/. Clearing prepare_run after the spec file changed
    keeps the run's frozen spec.json (the spec its artifacts were made with)."""
    from tasks import storage
    from tasks.contracts import Outcome
    from tasks.spec import dump, load_spec

    land(pipeline["bucket"], "batch-1.tsv", 0, 160)
    # The conf the trigger form posts when nothing is changed: every field, at its default.
    form_defaults = {name: param.value for name, param in pipeline["dag"].params.items()}
    assert form_defaults["dry_run"] is False and form_defaults["min_accuracy"] is None
    run = pipeline["dag"].test(run_after=MARKED, logical_date=MARKED, run_conf=form_defaults,
                               mark_success_pattern="finetune")
    state, tasks, _ = states_of(run)
    assert state == "failed" and tasks["finetune"] == "success" and tasks["distill"] == "failed", tasks
    assert tasks["notify"] == "success", tasks
    run_uri = run_uri_of(pipeline["bucket"], run.run_id)
    # The form's defaults are a plain run: the spec's own gates, no dry run.
    assert storage.read_json(run_uri + "/spec.json")["gates"] == dump(load_spec(pipeline["spec_file"]))["gates"]
    first = storage.read_json(run_uri + "/summary.json")
    assert first["dry_run"] is False
    assert first["outcome"] == Outcome.FAILED_IN_TRAINING
    assert first["notes"] == ["finetune is marked success but left no result (marked by hand?): the summary "
                              "counts it as not run"]
    # distill failed at once, saying which argument is missing (before: "--teacher None", the "none" sentinel)
    (mail,) = [m for m in pipeline["smtp"].messages if "distill failed" in m["subject"]]
    assert "distill failed after 1 try" in mail["subject"]
    assert "distill: no value for --teacher: the upstream task that provides it left no result" in mail["body"]

    state, tasks, _ = clear_and_rerun(pipeline["dag"], run.run_id, "distill")
    assert tasks["distill"] == "failed" and tasks["notify"] == "success", tasks
    assert storage.read_json(run_uri + "/previous/summary-1.json") == first

    spec_json = storage.stat(run_uri + "/spec.json")
    original = pipeline["spec_file"].read_text()
    try:
        pipeline["spec_file"].write_text(original.replace("min_accuracy: 0.0", "min_accuracy: 0.5"))
        state, tasks, _ = clear_and_rerun(pipeline["dag"], run.run_id, "prepare_run", downstream=False)
    finally:
        pipeline["spec_file"].write_text(original)
    assert tasks["prepare_run"] == "success", tasks
    assert storage.stat(run_uri + "/spec.json").etag == spec_json.etag


@pytest.fixture(scope="module")
def finished(pipeline):
    """One manual run that trains on the first batch and promotes the first champion."""
    from tasks import storage
    from tasks.contracts import Outcome

    land(pipeline["bucket"], "batch-1.tsv", 0, 160)  # again (the same file) when that test is deselected
    started = time.monotonic()
    run = pipeline["dag"].test(run_after=FIRST, logical_date=FIRST)
    state, tasks, _ = states_of(run)
    assert state == "success" and tasks["publish"] == "success", tasks
    summary = storage.read_json(run_uri_of(pipeline["bucket"], run.run_id) + "/summary.json")
    assert summary["outcome"] == Outcome.PROMOTED, summary
    return {**pipeline, "summary": summary, "run_id": run.run_id, "seconds": time.monotonic() - started,
            "champion": storage.read_json(pipeline["bucket"] + f"/models/{NAME}/champion.json")}


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
    assert storage.read_json(finished["bucket"] + f"/models/{NAME}/champion.json") == finished["champion"]
    assert storage.read_json(finished["summary"]["run_uri"] + "/summary.json") == finished["summary"]
    assert finished["smtp"].messages[mails:] == [] and finished["hook"].posts[posts:] == []


def test_publish_retried_after_the_champion_moved_is_refused_and_the_summary_says_why(finished):
    """A second run (force_retrain) is gated against the champion; its publish was marked success by hand, the
    champion moved meanwhile (another writer), and the operator clears publish: the promotion is refused
    (exit 5, not retried), the champion stays where it moved to, the alert says "not promoted", and the run
    summary is "published, not promoted" with the reason (before: "failed during training or evaluation",
    which the operator could clear again and again)."""
    from tasks import storage
    from tasks.contracts import Outcome

    dag, bucket = finished["dag"], finished["bucket"]
    second = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)
    run = dag.test(run_after=second, logical_date=second, run_conf={"force_retrain": True},
                   mark_success_pattern="publish")
    state, tasks, _ = states_of(run)
    assert tasks["gate"] == "success" and tasks["publish"] == "success" and tasks["notify"] == "success", tasks
    moved = {**finished["champion"], "version": "v-moved-meanwhile"}
    storage.write_json(bucket + f"/models/{NAME}/champion.json", moved)
    mails = len(finished["smtp"].messages)

    state, tasks, tries = clear_and_rerun(dag, run.run_id, "publish")
    assert tasks["publish"] == "failed" and tries["publish"] == 2 and state == "failed", (tasks, tries)  # no retry
    assert storage.read_json(bucket + f"/models/{NAME}/champion.json") == moved
    summary = storage.read_json(run_uri_of(bucket, run.run_id) + "/summary.json")
    assert summary["outcome"] == Outcome.PUBLISHED_NOT_PROMOTED, summary
    assert summary["publish"]["reason"].startswith("not promoted: champion is v-moved-meanwhile, but ")
    (mail,) = finished["smtp"].messages[mails:]
    assert mail["subject"].startswith(f"[retrain:{NAME}] not promoted: publish failed after 2 tries")  # 1: the mark
    assert "Nothing was promoted" in mail["body"]
