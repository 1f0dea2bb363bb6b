"""The stack test's fault-case logic (scripts/stack_faults.py) and its tiny training config, without Docker:
what counts as a resumed fine-tune, one published version, a champion that moved once, a half-written version,
and "nothing stored changed". The cases themselves run against a live stack (`make stack-faults`)."""

from __future__ import annotations

import time

import pytest

import stack_faults
import stack_test
from stack_faults import Poll, changed_keys, complete_checkpoints, judge, promote_records, run_key, versions_in


def test_run_key_is_the_dags_own():
    from pipeline_dags import run_key as dags_run_key

    for run_id in ("manual__2026-11-23T10:00:00+00:00", "asset_triggered__2026-12-06T09:18:41.145097+00:00"):
        assert run_key(run_id) == dags_run_key("retrain", run_id)
    assert run_key("manual__2026-11-23T10:00:00+00:00") == "retrain-manual__2026-11-23T10-00-00-00-00"


def test_versions_in_tells_complete_versions_from_half_written_ones():
    keys = ["models/sst2/champion.json", "models/sst2/audit/x-promote-v1.json",
            "models/sst2/v1/teacher/model.safetensors", "models/sst2/v1/manifest.json",
            "models/sst2/v2/teacher/model.safetensors", "models/sst2/v2/reports/manifest.json",
            "models/emotion/v9/manifest.json"]
    # v2's only "manifest.json" is a report file, not the version's own manifest: v2 is half-written.
    assert versions_in(keys, "sst2") == {"v1": True, "v2": False}


def test_only_checkpoints_whose_upload_completed_count():
    prefix = "checkpoints/sst2/retrain-x/finetune/"
    keys = [prefix + "checkpoint-10/model.safetensors", prefix + "checkpoint-10/COMPLETE",
            prefix + "checkpoint-20/model.safetensors",
            "checkpoints/sst2/retrain-x/distill/checkpoint-5/COMPLETE"]
    assert complete_checkpoints(keys, prefix) == [10]
    assert complete_checkpoints(keys[2:3], prefix) == []


def test_changed_keys_sees_overwritten_and_removed_objects_but_not_new_ones():
    before = {"snapshots/sst2/s1/part.parquet": "a", "snapshots/sst2/latest.json": "p1", "models/sst2/champion.json": "c"}
    after = {**before, "snapshots/sst2/latest.json": "p2", "snapshots/sst2/s2/part.parquet": "b"}
    assert changed_keys(before, after, allowed=("snapshots/sst2/latest.json",)) == []
    assert changed_keys(before, after, allowed=()) == ["snapshots/sst2/latest.json"]
    del after["models/sst2/champion.json"]
    after["snapshots/sst2/s1/part.parquet"] = "z"
    assert changed_keys(before, after, allowed=("snapshots/sst2/latest.json",)) == [
        "models/sst2/champion.json", "snapshots/sst2/s1/part.parquet"]


def test_promote_records_count_only_promotions_of_the_version():
    audit = [{"event": "promote", "version": "v2"}, {"event": "rollback", "version": "v2"},
             {"event": "promote", "version": "v1"}, {}]
    assert promote_records(audit, "v2") == 1
    assert promote_records(audit + [{"event": "promote", "version": "v2"}], "v2") == 2


def seen_ok() -> dict:
    return {
        "run_state": "success",
        "scheduler_kill": {"killed_at_checkpoint": 10, "finetune_state_at_kill": "running", "restarted": True,
                           "resumed_from_step": 10},
        "postgres_restart": {"restarted_during": "distill"},
        "s3_down_during_publish": {"disconnected_with_objects": 3, "manifest_before_disconnect": False,
                                   "publish_tries": 2},
        "published_version": "v2", "new_versions": ["v2"], "versions_without_manifest": [],
        "champion_after": "v2", "champion_previous": "v1", "promote_records": 1,
    }


def test_judge_passes_a_run_that_survived_every_fault():
    checks = judge(seen_ok(), "v1")
    assert checks and all(checks.values()), checks


@pytest.mark.parametrize("change, check", [
    (lambda s: s["scheduler_kill"].update(resumed_from_step=0), "finetune_resumed_from_checkpoint"),
    (lambda s: s["scheduler_kill"].update(resumed_from_step=None), "finetune_resumed_from_checkpoint"),
    (lambda s: s["scheduler_kill"].update(finetune_state_at_kill="success"), "scheduler_kill_injected_mid_finetune"),
    (lambda s: s["scheduler_kill"].pop("restarted"), "scheduler_came_back"),
    (lambda s: s.pop("postgres_restart"), "postgres_restart_injected_mid_run"),
    (lambda s: s["s3_down_during_publish"].update(manifest_before_disconnect=True), "s3_down_injected_mid_publish"),
    (lambda s: s["s3_down_during_publish"].update(publish_tries=1), "publish_retried_after_s3_came_back"),
    (lambda s: s.update(versions_without_manifest=["v3"]), "no_half_written_version_visible"),
    (lambda s: s.pop("versions_without_manifest"), "no_half_written_version_visible"),
    (lambda s: s.update(new_versions=["v2", "v3"]), "one_version_published"),
    (lambda s: s.update(new_versions=["v3"]), "one_version_published"),
    (lambda s: s.update(promote_records=2), "champion_moved_once"),
    (lambda s: s.update(champion_previous="v0"), "champion_moved_once"),
    (lambda s: s.update(run_state="failed"), "fault_run_succeeded"),
])
def test_judge_fails_the_check_of_each_thing_that_went_wrong(change, check):
    seen = seen_ok()
    change(seen)
    checks = judge(seen, "v1")
    assert checks[check] is False
    assert [name for name, ok in checks.items() if not ok] == [check]


def test_poll_is_bounded_and_keeps_the_last_error(monkeypatch):
    calls, slept = [], []

    def failing():
        calls.append(1)
        raise ConnectionError("postgres restarting")

    # What the poll waits, counted (not timed: a loaded machine stretches wall time, not the sleeps asked for).
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda seconds: (slept.append(seconds), real_sleep(seconds)))
    poll = Poll(0.3, 0.05)
    assert poll.until(failing) is None
    assert sum(slept) < 0.3 + 2 * 0.05 and set(slept) == {0.05}
    assert 2 <= len(calls) <= 10
    assert "postgres restarting" in poll.last_error
    values = iter([None, 0, "found"])
    assert Poll(5, 0.01).until(lambda: next(values)) == "found"


def test_the_tiny_config_checkpoints_between_its_first_and_last_step(tmp_path):
    """The scheduler kill lands after the first complete checkpoint and before training ends; a fixed learning
    rate keeps the first run from searching four rates first."""
    from tasks.spec import load_spec

    stack_test.tiny_specs(tmp_path)
    spec = load_spec(str(tmp_path / "sst2.yaml"))
    steps = spec.train.max_train_rows * 0.9 // spec.train.batch_size  # ~ the train split after the holdout
    assert spec.train.checkpoint_steps * 2 <= steps
    assert spec.train.learning_rate != "auto"
    assert spec.stages.mode == "local"
    assert stack_faults.BUCKET == stack_test.BUCKET
