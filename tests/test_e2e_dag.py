"""The whole retrain DAG under real Airflow (dag.test() on SQLite), real S3 over HTTP (moto on 127.0.0.1),
real stage subprocesses, a tiny random-init BERT with the packaged tokenizer, and a few hundred SST-2 rows.

Module-scoped fixtures play the story once (five runs, two of which train, one fixture per run, each built on
the one before); each test asserts one part:

1. the first batch makes the first champion;
2. unchanged data: the run decides to skip, no training stage starts;
3. a 90/10 label-skewed batch drifts and retrains (warm start), but a floor set from the trigger form blocks it:
   the gate fails once, the run fails, the champion stays, on-call hears over SMTP and the Slack webhook;
4. the next plain trigger on that same snapshot skips: it was already trained on (one training per data change);
5. a typo in the trigger conf fails prepare_run at once (one try), before any work, naming the valid keys.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import REPORTED, ROOT, read_sst2

pytestmark = pytest.mark.usefixtures("airflow_db")


def tiny_spec(storage_uri: str, model_dir: Path) -> dict:
    raw = yaml.safe_load((ROOT / "include" / "pipelines" / "sst2.yaml").read_text())
    raw.update(name="tiny")
    raw["storage"]["uri"] = storage_uri
    raw["golden"]["source_uri"] = storage_uri + "/reference/tiny/golden.tsv"
    raw["model"] = {"base": str(model_dir), "max_length": 32}
    raw["train"].update(epochs=1, batch_size=16, eval_steps=10, checkpoint_steps=10, max_train_rows=160,
                        learning_rate=1e-3)
    raw["student"].update(layers=2, epochs=1, batch_size=16, export=[])
    raw["drift"].update(embedding_subsample=40, embedding_permutations=50)
    raw["decide"].update(min_new_rows=50, retrain_every_rows=1000)
    # A random-init model only has to clear floors of zero on its first run.
    raw["gates"].update(min_accuracy=0.0, min_macro_f1=0.0, min_retention=0.0, max_class_recall_drop=1.0,
                        min_accuracy_over_baseline=None, min_macro_f1_over_baseline=None,
                        non_inferiority_margin=1.0, latency_samples=5)
    # Airflow 3.3.2's dag.test() breaks on a DAG with a DeadlineAlert once it has run before (it hands the
    # alert's definition to DeadlineAlertModel.get_by_id); the live-Airflow test covers the deadline instead.
    raw["schedule"]["nightly_deadline_minutes"] = 0
    raw["alerts"].update(email=["oncall@example.com"], smtp_conn_id="smtp_test", slack_conn_id="slack_test",
                         from_email="retrain@example.com")
    return raw


def land(storage_uri: str, name: str, offset: int, count: int, positive_share: float | None = None) -> None:
    """Land SST-2 train rows; with positive_share, pick rows so the label mix is skewed (e.g. 90/10)."""
    from tasks import storage

    rows = read_sst2("train", limit=count * 4 if positive_share else count, offset=offset)
    if positive_share is not None:
        positives = [r for r in rows if r[1] == 1][: round(count * positive_share)]
        negatives = [r for r in rows if r[1] == 0][: count - len(positives)]
        rows = positives + negatives
    storage.write_text(f"{storage_uri}/landing/tiny/{name}",
                       "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))


@dataclass
class Run:
    state: str
    tasks: dict[str, str]
    tries: dict[str, int]
    summary: dict | None
    mails: list = field(default_factory=list)  # alerts this run sent
    posts: list = field(default_factory=list)


@dataclass
class Story:
    bucket: str
    play: Callable[..., None]
    runs: dict[str, Run] = field(default_factory=dict)
    champion_after_first: dict | None = None


def run_dag(dag_id: str, **conf) -> tuple[str, dict[str, str], dict[str, int], list]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    dag_run = bag.dags[dag_id].test(run_conf=conf or None)
    tis = dag_run.get_task_instances()
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in tis}
    tries = {ti.task_id: ti.try_number for ti in tis}
    slowest = sorted(((ti.end_date - ti.start_date).total_seconds(), ti.task_id) for ti in tis
                     if ti.start_date and ti.end_date)[-3:]
    return str(getattr(dag_run.state, "value", dag_run.state)), states, tries, slowest


def new_summary(storage_uri: str, seen: set[str]) -> dict | None:
    """The summary.json of the run that just finished (the one not seen before), if it wrote one."""
    from tasks import storage

    found = [o.uri for o in storage.list_objects(storage_uri + "/runs/tiny") if o.uri.endswith("/summary.json")]
    fresh = [uri for uri in found if uri not in seen]
    seen.update(fresh)
    assert len(fresh) <= 1, fresh
    return storage.read_json(fresh[0]) if fresh else None


# The story is five runs of the retrain DAG on one storage, night after night. Each run is its own module
# fixture, built on the one before, so each test pays only for the runs it is the first to need (pytest reports a
# fixture's time as the setup of the first test that uses it) and every run happens once.
@pytest.fixture(scope="module")
def story(tmp_path_factory, moto_server, tiny_model_dir, airflow_db) -> Story:
    from decision_support import SmtpReceiver, WebhookReceiver, local_pipeline_env
    from tasks import storage

    tmp = tmp_path_factory.mktemp("e2e")
    with pytest.MonkeyPatch.context() as mp, SmtpReceiver() as smtp, WebhookReceiver() as hook:
        for key, value in local_pipeline_env(moto_server, tmp / "pipelines", smtp, hook).items():
            mp.setenv(key, value)
        storage.reset_clients()
        bucket = moto_server.create_bucket("e2e-story")
        (tmp / "pipelines").mkdir()
        (tmp / "pipelines" / "tiny.yaml").write_text(yaml.safe_dump(tiny_spec(bucket, tiny_model_dir)))
        golden = "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in read_sst2("dev", limit=80))
        storage.write_text(bucket + "/reference/tiny/golden.tsv", golden)
        seen: set[str] = set()

        def play(name: str, **conf) -> None:
            mails, posts, started = len(smtp.messages), len(hook.posts), time.monotonic()
            state, tasks, tries, slowest = run_dag("retrain_tiny", **conf)
            REPORTED[f"e2e run {name}"] = (f"{time.monotonic() - started:.0f} s (slowest tasks: "
                                           + ", ".join(f"{t} {s:.0f} s" for s, t in reversed(slowest)) + ")")
            story.runs[name] = Run(state, tasks, tries, new_summary(bucket, seen), smtp.messages[mails:],
                                   hook.posts[posts:])

        story = Story(bucket, play)
        yield story
        storage.reset_clients()


@pytest.fixture(scope="module")
def first_night(story) -> Story:
    from tasks import storage

    land(story.bucket, "batch-1.tsv", 0, 160)
    story.play("first")
    story.champion_after_first = storage.read_json(story.bucket + "/models/tiny/champion.json")
    return story


@pytest.fixture(scope="module")
def unchanged_night(first_night) -> Story:
    first_night.play("unchanged")
    return first_night


@pytest.fixture(scope="module")
def drifted_night(unchanged_night) -> Story:
    land(unchanged_night.bucket, "batch-2.tsv", 160, 100, positive_share=0.9)
    unchanged_night.play("drift_blocked", min_accuracy=0.99)
    return unchanged_night


@pytest.fixture(scope="module")
def same_snapshot_night(drifted_night) -> Story:
    drifted_night.play("same_snapshot")
    return drifted_night


@pytest.fixture(scope="module")
def typo_night(same_snapshot_night) -> Story:
    same_snapshot_night.play("typo", min_acuracy=0.9)
    return same_snapshot_night


def test_first_batch_makes_the_first_champion(first_night):
    story = first_night
    from tasks import storage
    from tasks.contracts import Outcome

    run = story.runs["first"]
    assert run.state == "success", run.tasks
    assert run.tasks["finetune"] == run.tasks["distill"] == run.tasks["publish"] == "success"
    assert run.tasks["fail_if_any_failed"] == "skipped"
    assert run.summary["outcome"] == Outcome.PROMOTED
    champion = story.champion_after_first
    version_uri = champion["version_uri"]
    assert version_uri == f"{story.bucket}/models/tiny/{champion['version']}"
    manifest = storage.read_json(version_uri + "/manifest.json")
    assert manifest["snapshot_id"] == champion["snapshot_id"]
    assert manifest.get("parent_champion") in (None, "none")
    # Every file of the version is in the manifest with its sha256, and the bytes in S3 match.
    files = manifest["files"]
    assert any(path.startswith("teacher/") and path.endswith("model.safetensors") for path in files)
    assert any(path.startswith("student/") and path.endswith("model.safetensors") for path in files)
    assert any(path.endswith("tokenizer.json") for path in files)
    for rel, digest in files.items():
        expected = digest["sha256"] if isinstance(digest, dict) else digest
        assert hashlib.sha256(storage.read_bytes(f"{version_uri}/{rel}")).hexdigest() == expected, rel
    # The summary reads every stage through its contract; each task's state is on record with it.
    assert run.summary["task_states"]["publish"] == "success"
    assert storage.exists(f"{story.bucket}/runs/tiny/trained/{champion['snapshot_id']}.json")


def test_unchanged_data_skips_without_starting_a_training_stage(unchanged_night):
    from tasks.contracts import Outcome

    story = unchanged_night
    run = story.runs["unchanged"]
    assert run.state == "success", run.tasks
    assert run.tasks["decide"] == "success"
    assert run.tasks["finetune"] == run.tasks["distill"] == run.tasks["evaluate"] == run.tasks["publish"] == "skipped"
    assert run.summary["outcome"] == Outcome.SKIPPED
    # Promoted on this snapshot, so it is on record as trained on; the skip says so.
    assert "already trained on snapshot" in run.summary["decision"]["reasons"][0], run.summary["decision"]
    assert run.summary["task_states"]["finetune"] == "skipped"
    assert not run.mails and not run.posts


def test_a_drifted_batch_retrains_and_a_failed_gate_blocks_it_and_alerts(drifted_night):
    story = drifted_night
    from tasks import storage
    from tasks.contracts import Outcome

    run = story.runs["drift_blocked"]
    champion = story.champion_after_first
    summary = run.summary
    assert summary["drift"]["drift_detected"] is True, summary
    assert summary["decision"]["retrain"] is True
    # The champion's snapshot size reached decide through drift's reference_rows: ~100 new rows on ~160 are more
    # than the shipped spec's decide.retrain_every_fraction (0.5), far below retrain_every_rows (1000).
    decision, first_rows = summary["decision"], story.runs["first"].summary["ingest"]["total_rows"]
    assert decision["champion_snapshot_rows"] == first_rows > 0, (decision, first_rows)
    assert decision["triggers"] == ["drift", "retrain_every_fraction"], decision
    # The retrain warm-started from the champion's teacher (train.init_from: champion in the shipped spec).
    finetune = storage.read_json(summary["run_uri"] + "/finetune/result.json")
    assert finetune["init_from"] == f"champion {champion['version']}"
    # A floor no model can reach (set from the trigger form): the gate fails once, the run fails.
    assert run.state == "failed", run.tasks
    assert run.tasks["gate"] == "failed" and run.tries["gate"] == 1
    assert run.tasks["publish"] == "upstream_failed"
    assert run.tasks["notify"] == "success" and run.tasks["fail_if_any_failed"] == "failed"
    assert summary["outcome"] == Outcome.BLOCKED
    assert storage.read_json(story.bucket + "/models/tiny/champion.json")["version"] == champion["version"]
    assert len(run.mails) == 1 and len(run.posts) == 1, (run.mails, run.posts)
    mail = str(run.mails[0])
    assert "gate failed" in mail and "floor_accuracy_teacher" in mail and "0.99" in mail
    assert champion["version"] in mail  # the champion that stays in place
    assert "floor_accuracy_teacher" in json.dumps(run.posts[0])


def test_the_same_snapshot_is_not_trained_on_twice(same_snapshot_night):
    story = same_snapshot_night
    """Blocked by its gates, the drifted snapshot is on record as trained on: the next trigger skips it."""
    from tasks import storage
    from tasks.contracts import Outcome

    blocked = story.runs["drift_blocked"].summary
    snapshot_id = blocked["ingest"]["snapshot_id"]
    record = storage.read_json(f"{story.bucket}/runs/tiny/trained/{snapshot_id}.json")
    assert record["outcome"] == Outcome.BLOCKED and record["run_key"] == blocked["run_key"]
    run = story.runs["same_snapshot"]
    assert run.state == "success", run.tasks
    assert run.tasks["finetune"] == "skipped"
    assert run.summary["ingest"]["snapshot_id"] == snapshot_id
    (reason,) = run.summary["decision"]["reasons"]
    assert reason.startswith(f"Skipped: already trained on snapshot {snapshot_id} (run {blocked['run_key']}: "
                             "blocked by gates")


def test_a_typo_in_the_trigger_conf_fails_at_once_with_the_valid_keys(typo_night):
    story = typo_night
    run = story.runs["typo"]
    assert run.state == "failed"
    assert run.tasks["prepare_run"] == "failed" and run.tries["prepare_run"] == 1  # AirflowFailException: no retry
    assert run.tasks["ingest"] == "upstream_failed"  # no work was done
    assert run.tasks["notify"] == "skipped" and run.summary is None
    # The reason reaches the alert (the exception message is the failure callback's context["exception"]).
    (mail,) = [html.unescape(m["body"]) for m in run.mails]
    assert "prepare_run failed after 1 try" in run.mails[0]["subject"]
    assert "unknown trigger conf key: 'min_acuracy' (did you mean 'min_accuracy'?)" in mail, mail
    assert "valid keys: dry_run, force_retrain, max_class_recall_drop, min_accuracy" in mail
