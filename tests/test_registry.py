"""Registry and publish on real S3 (moto's server over HTTP): promotion moves the pointer and grows the audit log,
a tampered file blocks promotion, an outage mid-upload leaves the pointer untouched and the retry completes,
two racing promotions have exactly one winner, rollback and rerun."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from conftest import ROOT
from decision_support import make_spec, write_run, write_snapshot
from tasks.decide import publish, registry
from tasks import errors, storage

pytestmark = pytest.mark.timeout(80)


@pytest.fixture
def env(s3_env, tiny_model_dir):
    from conftest import read_sst2

    spec = make_spec(s3_env)
    snap = write_snapshot(spec, read_sst2("train", limit=20), read_sst2("dev", limit=10))
    model_uri = storage.join(s3_env, "scratch", "model")
    storage.upload_dir(tiny_model_dir, model_uri)
    return spec, snap, model_uri


def _evaluated_run(spec, key: str, passed: bool = True) -> str:
    """A run folder whose evaluate stage already ran (its result written the way evaluate writes it)."""
    run = write_run(spec, key)
    out = storage.join(run, "evaluate")
    storage.write_text(storage.join(out, "gate_report.md"), f"# Gate report {key}\n")
    storage.write_json(storage.join(out, "result.json"), {
        "passed": passed, "first_run": True, "gates": [], "failed_gates": [] if passed else ["non_inferiority_teacher"],
        "metrics": {"teacher": {"golden_accuracy": 0.9}, "student": {"golden_accuracy": 0.88}, "champion": None},
        "champion_comparison": {"golden_rows": 10, "compared_rows": 8, "excluded_rows": 2, "too_few": False,
                                "why": "whose text the champion v1 trained on"},
        "report_uri": storage.join(out, "gate_report.json"), "report_md_uri": storage.join(out, "gate_report.md")})
    return run


def _publish(spec, snap, model_uri, key, expected=None, promote=True, passed=True) -> dict:
    run = _evaluated_run(spec, key, passed)
    return publish.run(run, snap, model_uri, model_uri, storage.join(run, "evaluate", "result.json"), expected,
                       promote=promote).dump()


def test_good_batch_promotes_pointer_moves_audit_grows_verify_passes(env, capsys):
    spec, snap, model = env
    first = _publish(spec, snap, model, "r1")
    assert first["promoted"] and first["champion_before"] is None
    assert registry.read_champion(spec)["version"] == first["version"]
    second = _publish(spec, snap, model, "r2", expected=first["version"])
    assert second["promoted"], second["reason"]
    champion, etag = registry.read_champion_with_etag(spec)
    assert champion["version"] == second["version"] and champion["previous"] == first["version"]
    assert champion["snapshot_id"] == "snap-0001" and champion["version_uri"] == second["version_uri"]
    assert etag and second["version"] > first["version"]  # version ids sort by time
    audit = registry.read_audit(spec)
    assert [(a["event"], a["version"]) for a in audit] == [("promote", first["version"]), ("promote", second["version"])]
    assert registry.main(["--spec", storage.join(spec.layout.run("r2"), "spec.json"), "verify", second["version"]]) == 0
    manifest = registry.read_manifest(spec, second["version"])
    for key in ("version", "snapshot_id", "parent_champion", "code_version", "image", "parameters", "evaluation", "files"):
        assert key in manifest.model_fields_set  # stored, not a default
    assert manifest.parent_champion == first["version"]
    assert manifest.evaluation["champion_comparison"]["excluded_rows"] == 2  # what the gates compared on
    assert {"teacher/model.safetensors", "student/config.json", "reports/gate_report.md", "reports/spec.json",
            "teacher/README.md", "student/README.md"} <= set(manifest.files)
    registry.main(["--spec", storage.join(spec.layout.run("r2"), "spec.json"), "list"])
    listing = capsys.readouterr().out
    assert f"* {second['version']}" in listing and first["version"] in listing


def test_failed_evaluation_and_dry_run_never_promote(env):
    spec, snap, model = env
    failed = _publish(spec, snap, model, "r1", passed=False)
    assert not failed["promoted"] and "non_inferiority_teacher" in failed["reason"]
    dry = _publish(spec, snap, model, "r2", promote=False)
    assert not dry["promoted"] and "dry run" in dry["reason"] and dry["verified"]
    assert registry.read_champion(spec) is None and registry.read_audit(spec) == []
    assert sorted(registry.list_versions(spec)) == sorted([failed["version"], dry["version"]])


def test_stale_expected_champion_is_refused(env):
    spec, snap, model = env
    first = _publish(spec, snap, model, "r1")
    with pytest.raises(registry.PromotionRefused) as refused:  # gated against "no champion", but there is one now
        _publish(spec, snap, model, "r2", expected=None)
    assert refused.value.kind is errors.GATE_FAILED and not refused.value.kind.retry
    stale = storage.read_json(storage.join(spec.layout.run("r2"), "publish", "result.json"))
    assert not stale["promoted"] and stale["verified"] and f"champion is {first['version']}" in stale["reason"]
    assert stale["champion_after"] == first["version"]
    assert registry.read_champion(spec)["version"] == first["version"]


def test_tampered_file_fails_verify_and_blocks_promotion(env, moto_server):
    spec, snap, model = env
    first = _publish(spec, snap, model, "r1")
    cand = _publish(spec, snap, model, "r2", promote=False)
    target = storage.join(cand["version_uri"], "student", "model.safetensors")
    data = bytearray(storage.read_bytes(target))
    data[len(data) // 2] ^= 0x01  # one byte changed after upload
    storage.write_bytes(target, bytes(data))
    report = registry.verify(spec, cand["version"])
    assert not report["ok"] and report["mismatched"] == ["student/model.safetensors"]
    spec_file = storage.join(spec.layout.run("r1"), "spec.json")
    with pytest.raises(registry.VerificationFailed):
        registry.main(["--spec", spec_file, "verify", cand["version"]])
    proc = subprocess.run([sys.executable, "-m", "tasks", "registry", "--spec", spec_file, "verify", cand["version"]],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == errors.GATE_FAILED.exit_code and "student/model.safetensors" in proc.stdout
    with pytest.raises(registry.VerificationFailed):
        registry.promote(spec, cand["version"], expected_champion=first["version"])
    with pytest.raises(registry.VerificationFailed) as failed:
        registry.main(["--spec", spec_file, "rollback", "--to", cand["version"]])
    assert failed.value.kind is errors.GATE_FAILED
    assert registry.read_champion(spec)["version"] == first["version"]
    assert len(registry.read_audit(spec)) == 1


def test_tamper_between_upload_and_verify_fails_publish_without_touching_pointer(env, monkeypatch):
    spec, snap, model = env
    real_verify = registry.verify

    def tamper_then_verify(spec_, version):
        target = storage.join(registry.version_uri(spec_, version), "teacher", "config.json")
        storage.write_bytes(target, storage.read_bytes(target) + b" ")
        return real_verify(spec_, version)

    monkeypatch.setattr(registry, "verify", tamper_then_verify)
    with pytest.raises(registry.VerificationFailed):
        _publish(spec, snap, model, "r1")
    result = storage.read_json(storage.join(spec.layout.run("r1"), "publish", "result.json"))
    assert not result["promoted"] and not result["verified"]
    assert "verification failed" in result["reason"] and "teacher/config.json" in result["reason"]
    assert not storage.exists(spec.layout.champion)


def test_s3_outage_mid_upload_leaves_pointer_then_retry_completes(env, moto_server, monkeypatch):
    spec, snap, model = env
    first = _publish(spec, snap, model, "r1")
    run = _evaluated_run(spec, "r2")
    real_copy = storage.copy
    calls = {"n": 0}

    def flaky_copy(src, dst, **kw):
        if "/models/" in dst and "/teacher/" in dst:
            calls["n"] += 1
            if calls["n"] == 3:  # a few model files in: the endpoint goes away
                moto_server.stop()
        return real_copy(src, dst, **kw)

    monkeypatch.setattr(storage, "copy", flaky_copy)
    monkeypatch.setenv("STORAGE_CONNECT_TIMEOUT", "1")
    storage.reset_clients()
    try:
        with pytest.raises(Exception):
            publish.run(run, snap, model, model, storage.join(run, "evaluate", "result.json"), first["version"])
    finally:
        moto_server.start()  # the outage ends (moto keeps its state in-process)
    storage.reset_clients()
    monkeypatch.setattr(storage, "copy", real_copy)
    assert calls["n"] == 3
    assert registry.read_champion(spec)["version"] == first["version"]  # untouched
    version = storage.read_json(storage.join(run, "publish", "state.json"))["version"]
    assert version not in registry.list_versions(spec)  # no manifest: incomplete, not listable or promotable
    # the retried task: same run, same version id, completes and promotes
    retry = publish.run(run, snap, model, model, storage.join(run, "evaluate", "result.json"), first["version"])
    assert retry.promoted and retry.version == version
    assert registry.read_champion(spec)["version"] == version and registry.verify(spec, version)["ok"]


def test_two_racing_promotions_exactly_one_wins(env, monkeypatch):
    spec, snap, model = env
    a = _publish(spec, snap, model, "ra", promote=False)
    b = _publish(spec, snap, model, "rb", promote=False)
    barrier = threading.Barrier(2, timeout=30)
    real_read = registry.read_champion_with_etag

    def read_then_wait(spec_):
        out = real_read(spec_)
        barrier.wait()  # both have read "no champion" before either writes
        return out

    monkeypatch.setattr(registry, "read_champion_with_etag", read_then_wait)
    outcomes: dict[str, object] = {}

    def attempt(version):
        try:
            outcomes[version] = registry.promote(spec, version, expected_champion=None)
        except registry.PromotionRefused as exc:
            outcomes[version] = exc

    threads = [threading.Thread(target=attempt, args=(v,)) for v in (a["version"], b["version"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [v for v, o in outcomes.items() if isinstance(o, dict)]
    losers = [v for v, o in outcomes.items() if isinstance(o, registry.PromotionRefused)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    monkeypatch.setattr(registry, "read_champion_with_etag", real_read)
    assert registry.read_champion(spec)["version"] == winners[0]
    assert [r["version"] for r in registry.read_audit(spec)] == winners

    # and with a champion in place (If-Match on its ETag): again exactly one of two wins
    c = _publish(spec, snap, model, "rc", promote=False)
    d = _publish(spec, snap, model, "rd", promote=False)
    barrier.reset()
    monkeypatch.setattr(registry, "read_champion_with_etag", read_then_wait)
    outcomes.clear()
    threads = [threading.Thread(target=lambda v=v: _race(spec, v, winners[0], outcomes)) for v in (c["version"], d["version"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(type(o).__name__ for o in outcomes.values()) == ["PromotionRefused", "dict"], outcomes


def _race(spec, version, expected, outcomes):
    try:
        outcomes[version] = registry.promote(spec, version, expected_champion=expected)
    except registry.PromotionRefused as exc:
        outcomes[version] = exc


def test_rollback_restores_previous_and_rerun_reproduces_commands(env, capsys):
    spec, snap, model = env
    first = _publish(spec, snap, model, "r1")
    second = _publish(spec, snap, model, "r2", expected=first["version"])
    spec_file = storage.join(spec.layout.run("r1"), "spec.json")
    assert registry.main(["--spec", spec_file, "rollback"]) == 0
    champion = registry.read_champion(spec)
    assert champion["version"] == first["version"] and champion["rolled_back_from"] == second["version"]
    assert [a["event"] for a in registry.read_audit(spec)] == ["promote", "promote", "rollback"]
    with pytest.raises(registry.RegistryError):  # first has no earlier champion to fall back to
        registry.rollback(spec)
    assert registry.rollback(spec, to=second["version"])["version"] == second["version"]

    capsys.readouterr()
    assert registry.main(["--spec", spec_file, "rerun", second["version"]]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if not l.startswith("#")]
    manifest = registry.read_manifest(spec, second["version"])
    run = spec.layout.run(f"rerun-{second['version']}")
    assert lines[0].endswith(f"registry --spec {second['version_uri']}/reports/spec.json copy-spec {second['version']} --run {run}")
    assert lines[1].endswith(f"tasks finetune --run {run} --snapshot {manifest.snapshot_uri} "
                             f"--champion {first['version_uri']}")
    assert f"distill --run {run} --snapshot {snap} --teacher {run}/finetune/model" in lines[2]
    assert f"evaluate --run {run} --snapshot {snap}" in lines[3] and f"--champion {first['version_uri']}" in lines[3]
    assert "publish" in lines[4] and f"--expected-champion {first['version']}" in lines[4] and "--no-promote" in lines[4]
    # the first step really reproduces the frozen spec of the version
    assert registry.main(["--spec", spec_file, "copy-spec", second["version"], "--run", run]) == 0
    assert storage.read_json(storage.join(run, "spec.json")) == storage.read_json(storage.join(spec.layout.run("r2"), "spec.json"))
    assert json.loads(json.dumps(manifest.parameters))["gates"]["min_retention"] == 0.0


def test_version_ids_sort_by_time_within_one_second():
    from datetime import datetime, timezone

    from tasks.decide import registry

    moments = [datetime(2026, 11, 23, 10, 15, 0, us, tzinfo=timezone.utc) for us in (1_000, 2_000, 999_000)]
    for _ in range(20):  # the random suffix never decides the order
        ids = [registry.new_version_id(m) for m in moments]
        assert ids == sorted(ids)
    assert ids[0].startswith("v20261123-101500001-")


def test_student_exports_are_published_and_verified_with_the_version(env):
    spec, snap, model = env
    run = _evaluated_run(spec, "with-exports")
    distill_out = storage.join(run, "distill")
    int8 = storage.join(distill_out, "int8")
    storage.write_bytes(storage.join(int8, "model_int8.pt"), b"int8 weights")
    storage.write_text(storage.join(int8, "config.json"), "{}")
    storage.write_json(storage.join(distill_out, "result.json"), {"model_uri": model, "exports": {"int8": int8}})
    result = publish.run(run, snap, model, model, storage.join(run, "evaluate", "result.json"), None).dump()
    assert result["verified"] and result["promoted"], result["reason"]
    manifest = registry.read_manifest(spec, result["version"])
    assert manifest.exports == {"int8": "exports/int8/"}
    assert manifest.files["exports/int8/model_int8.pt"]["size"] == len(b"int8 weights")
    assert storage.read_bytes(storage.join(result["version_uri"], "exports/int8/model_int8.pt")) == b"int8 weights"

    # A distill result about another student (say, publish run by hand on a different model): not its exports.
    other = _evaluated_run(spec, "other-student")
    storage.write_bytes(storage.join(other, "distill", "int8", "model_int8.pt"), b"someone else's")
    storage.write_json(storage.join(other, "distill", "result.json"),
                       {"model_uri": storage.join(other, "distill", "model"),
                        "exports": {"int8": storage.join(other, "distill", "int8")}})
    result = publish.run(other, snap, model, model, storage.join(other, "evaluate", "result.json"),
                         registry.read_champion(spec)["version"]).dump()
    assert result["verified"]
    manifest = registry.read_manifest(spec, result["version"])
    assert manifest.exports == {} and not any(f.startswith("exports/") for f in manifest.files)


def test_each_version_carries_a_model_card_that_loads_and_is_verified(env, tmp_path, monkeypatch):
    """README.md in the Hugging Face model-card format beside the teacher's and the student's weights: front matter
    with model-index, sections for data, metrics with intervals, gates and lineage; the folder still loads with
    from_pretrained, and the card is one of the verified files."""
    import numpy as np
    import yaml
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.decide import gates

    spec, snap, model = env
    monkeypatch.setenv("RETRAIN_CODE_VERSION", "0123abcd")
    storage.write_text(storage.join(model, "README.md"), "a stale card from training\n")  # replaced, not copied
    first = _publish(spec, snap, model, "r1")

    # the second version: gated against the first, with real gate results and golden-set intervals
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    cand = np.where(rng.random(300) < 0.85, y, 1 - y)
    champ = np.where(rng.random(300) < 0.84, y, 1 - y)
    scores = gates.ModelScores(cand, float(np.mean(cand == y)), 0.84)
    passed, first_run, gate_list = gates.evaluate_gates(
        spec.gates, spec.data.labels, y, teacher=scores, student=scores,
        champion_teacher=gates.ModelScores(champ, float(np.mean(champ == y)), 0.83),
        champion_student=gates.ModelScores(champ, float(np.mean(champ == y)), 0.83))
    ci = gates.bootstrap_intervals(y, cand, 2, resamples=1000)
    golden = {"golden_accuracy": round(scores.accuracy, 4), "golden_macro_f1": 0.84, "golden_n": 300,
              "golden_accuracy_ci": [round(ci["accuracy"]["lower"], 4), round(ci["accuracy"]["upper"], 4)],
              "golden_macro_f1_ci": [round(ci["macro_f1"]["lower"], 4), round(ci["macro_f1"]["upper"], 4)]}
    run = write_run(spec, "r2")
    out = storage.join(run, "evaluate")
    storage.write_json(storage.join(out, "result.json"), {
        "passed": passed, "first_run": first_run, "failed_gates": [g.name for g in gate_list if not g.passed],
        "gates": [{k: v for k, v in g.to_dict().items() if k != "details"} for g in gate_list],
        "metrics": {"teacher": golden, "student": {**golden, "latency_ms_p95": 3.2},
                    "champion": {"uri": first["version_uri"], "teacher": {"golden_accuracy": 0.84},
                                 "student": {"golden_accuracy": 0.84}}},
        "golden_uri": storage.join(spec.layout.golden, "g1"), "report_uri": storage.join(out, "gate_report.json"),
        "report_md_uri": storage.join(out, "gate_report.md")})
    result = publish.run(run, snap, model, model, storage.join(out, "result.json"), first["version"],
                         promote=False)
    assert result.verified and set(result.model_cards) == {"teacher", "student"}

    version = result.version
    for role in ("teacher", "student"):
        local = storage.download_dir(storage.join(result.version_uri, role), tmp_path / role)
        loaded = AutoModelForSequenceClassification.from_pretrained(str(local))
        assert loaded.config.num_labels == 2 and AutoTokenizer.from_pretrained(str(local)) is not None
        text = (local / "README.md").read_text()
        assert text.startswith("---\n")
        meta = yaml.safe_load(text.split("---", 2)[1])
        assert meta["library_name"] == "transformers" and meta["language"] == "en"  # language: the base model's
        assert meta["license"] == "apache-2.0" and role in meta["tags"]
        assert meta["datasets"] == ["sst2-golden-g1", "sst2-snapshot-snap-0001"]
        assert set(meta["metrics"]) == {"accuracy", "f1"}
        found = {(r["dataset"]["split"], m["type"]): m["value"]
                 for r in meta["model-index"][0]["results"] for m in r["metrics"]}
        assert found == {("golden", "accuracy"): golden["golden_accuracy"], ("golden", "f1"): 0.84}
        body = text.split("---", 2)[2]
        for section in ("## Data snapshot", "## Metrics", "## Gates", "## Lineage", "## Intended use and limits"):
            assert section in body
        assert "over 2 classes (`negative`, `positive`)" in body  # quoted: a label may hold a comma
        assert "snap-0001" in body and "negative: " in body  # snapshot id and label counts
        lo, hi = golden["golden_accuracy_ci"]
        assert f"| golden | accuracy | {golden['golden_accuracy']:.4f} | [{lo:.4f}, {hi:.4f}] | 0.8400 |" in body
        for gate in gate_list:
            assert f"| {gate.name} | " in body
        assert f"| parent champion | `{first['version']}` |" in body and "`0123abcd`" in body
        assert f"| run | `{run}` |" in body and "stale card" not in text

    manifest = registry.read_manifest(spec, version)
    assert manifest.files["student/README.md"]["size"] == len(text.encode())
    card = storage.join(result.version_uri, "student", "README.md")
    storage.write_text(card, text.replace("Intended use", "Any use"))
    assert registry.verify(spec, version)["mismatched"] == ["student/README.md"]
