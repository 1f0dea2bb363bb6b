"""Stage level, on moto S3 with real tiny models trained on SST-2 rows: a poisoned batch (40% of labels
flipped) fails non-inferiority, the champion stays, and the gate alert reaches a real SMTP server and a local
Slack webhook with the failed gate's numbers; a good batch promotes."""

from __future__ import annotations

import pytest

from decision_support import (FakeTI, SmtpReceiver, WebhookReceiver, failure_context, make_spec, poison, train_tiny,
                              write_run, write_snapshot)
from tasks.decide import registry
from tasks import storage
from tasks.__main__ import main as tasks_main

pytestmark = pytest.mark.timeout(150)  # safety net only: measured 25-42 s (incl. training) on 2 shared cores


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    import torch

    from conftest import read_sst2

    torch.set_num_threads(1)
    rows = read_sst2("train", limit=600)
    out = tmp_path_factory.mktemp("trained")
    clean = train_tiny(tiny_model_dir, rows, out / "clean", epochs=3)
    poisoned = train_tiny(tiny_model_dir, poison(rows, 0.40), out / "poisoned", epochs=3)
    return clean, poisoned


def _stage(*argv: str) -> dict:
    assert tasks_main(list(argv)) == 0
    run = argv[argv.index("--run") + 1]
    return storage.read_json(storage.join(run, argv[0], "result.json"))


def test_poisoned_batch_fails_gate_alerts_and_good_batch_promotes(s3_env, trained, monkeypatch):
    from conftest import read_sst2

    clean, poisoned = trained
    spec = make_spec(s3_env)
    snap = write_snapshot(spec, read_sst2("train", limit=100, offset=2000), read_sst2("dev", limit=250))
    clean_uri, poisoned_uri = storage.join(s3_env, "cand", "clean"), storage.join(s3_env, "cand", "poisoned")
    storage.upload_dir(clean, clean_uri)
    storage.upload_dir(poisoned, poisoned_uri)

    # 1. first run: no champion, floors only; publish promotes
    r1 = write_run(spec, "r1")
    ev1 = _stage("evaluate", "--run", r1, "--snapshot", snap, "--teacher", clean_uri, "--student", clean_uri,
                 "--champion", "none")
    assert ev1["passed"] and ev1["first_run"] and ev1["metrics"]["champion"] is None
    assert storage.exists(ev1["report_md_uri"]) and storage.exists(storage.join(r1, "evaluate", "confusion_teacher_golden.png"))
    metrics = storage.read_json(storage.join(r1, "evaluate", "metrics.json"))
    student = metrics["models"]["student"]
    assert set(student["golden"]["per_class"]) == {"negative", "positive"}
    assert {"latency_ms_p50", "latency_ms_p95", "throughput_batch32_per_s", "size_weights_mb"} <= set(student["cost"])
    pub1 = _stage("publish", "--run", r1, "--snapshot", snap, "--teacher", clean_uri, "--student", clean_uri,
                  "--evaluation", storage.join(r1, "evaluate", "result.json"), "--expected-champion", "none", "--promote")
    assert pub1["promoted"]
    teacher = ev1["metrics"]["teacher"]
    lo, hi = teacher["golden_accuracy_ci"]
    assert lo <= teacher["golden_accuracy"] <= hi and hi - lo < 0.2  # 250 golden rows, 1000 resamples
    card = storage.read_text(storage.join(pub1["version_uri"], "teacher", "README.md"))
    assert f"| golden | accuracy | {teacher['golden_accuracy']:.4f} | [{lo:.4f}, {hi:.4f}] | - |" in card
    champion = registry.read_champion(spec)

    # 2. poisoned batch: worse on the golden set, non-inferiority fails, pointer unchanged
    r2 = write_run(spec, "r2")
    ev2 = _stage("evaluate", "--run", r2, "--snapshot", snap, "--teacher", poisoned_uri, "--student", poisoned_uri,
                 "--champion", champion["version_uri"])
    assert not ev2["passed"] and not ev2["first_run"]
    assert "non_inferiority_teacher" in ev2["failed_gates"] and "non_inferiority_student" in ev2["failed_gates"]
    ni = next(g for g in ev2["gates"] if g["name"] == "non_inferiority_teacher")
    assert ni["value"] < ni["threshold"] == -spec.gates.non_inferiority_margin
    assert ev2["metrics"]["teacher"]["golden_accuracy"] < ev2["metrics"]["champion"]["teacher"]["golden_accuracy"]
    pub2 = _stage("publish", "--run", r2, "--snapshot", snap, "--teacher", poisoned_uri, "--student", poisoned_uri,
                  "--evaluation", storage.join(r2, "evaluate", "result.json"), "--expected-champion",
                  champion["version"])
    assert not pub2["promoted"] and "did not pass" in pub2["reason"]
    assert registry.read_champion(spec) == champion

    # the gate task fails with AirflowFailException; its notifiers send the numbers
    pytest.importorskip("airflow")
    import retrain_alerts
    from airflow.sdk.exceptions import AirflowFailException

    with SmtpReceiver() as smtp, WebhookReceiver() as hook:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_TEST", smtp.conn_json())
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_TEST", hook.conn_json())
        xcoms = {("evaluate", None): ev2,
                 ("prepare_run", None): {"pipeline": spec.name, "run_uri": r2, "run_key": "r2", "run_type": "manual",
                                         "champion": champion, "champion_uri": champion["version_uri"],
                                         "champion_version": champion["version"]},
                 ("decide", None): {"retrain": True, "reasons": ["forced by the test"]},
                 ("drift", None): {"drift_detected": False, "summary": "no check drifted", "checks": {}}}
        context = failure_context(FakeTI("gate", xcoms), AirflowFailException("gates failed"))
        for notifier in retrain_alerts.gate_failure_notifiers(spec):
            notifier(context)
        assert len(smtp.messages) == 1 and len(hook.posts) == 1
        body = smtp.messages[0]["body"]
        assert "non_inferiority_teacher" in smtp.messages[0]["subject"]
        assert f"non_inferiority_teacher: value {ni['value']:.4f}, threshold {ni['threshold']:.4f}" in body
        assert f"Champion that stays in place: {champion['version']}" in body
        assert ev2["report_md_uri"] in body
        assert f"value {ni['value']:.4f}" in hook.posts[0]["json"]["text"]

    # 3. good batch: as good as the champion -> passes, promotes, audit grows, verify passes
    r3 = write_run(spec, "r3")
    ev3 = _stage("evaluate", "--run", r3, "--snapshot", snap, "--teacher", clean_uri, "--student", clean_uri,
                 "--champion", champion["version_uri"], "--golden", ev1["golden_uri"])
    assert ev3["passed"], ev3["failed_gates"]
    pub3 = _stage("publish", "--run", r3, "--snapshot", snap, "--teacher", clean_uri, "--student", clean_uri,
                  "--evaluation", storage.join(r3, "evaluate", "result.json"), "--expected-champion",
                  champion["version_uri"])
    assert pub3["promoted"] and pub3["champion_before"] == champion["version"]
    assert registry.read_champion(spec)["version"] == pub3["version"]
    assert [a["version"] for a in registry.read_audit(spec)] == [champion["version"], pub3["version"]]
    assert registry.verify(spec, pub3["version"])["ok"]
