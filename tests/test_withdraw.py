"""Withdrawing a batch with bad labels from the latest snapshot, and readmitting it (tasks.data.withdraw), on real
ingests (local storage and moto's S3 server), plus the batch-by-batch label-quality test that names the batch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, read_sst2
from data_helpers import land, make_spec, put_golden, run_folder, tsv_bytes
from tasks import storage
from tasks.data import snapshots, withdraw
from tasks.data.ingest import run_ingest
from tasks.data.validation import normalize_text
from tasks.drift.embeddings import label_quality_by_batch
from tasks.errors import SpecInvalid
from tasks.spec import DriftSpec


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return "file://" + str(tmp_path / "store")
    return request.getfixturevalue("s3_env") + "/retrain"


def flip(rows):
    return [(text, 1 - label) for text, label in rows]


def latest(spec) -> dict:
    return snapshots.read_latest(spec.layout.snapshots)[0]


def test_withdraw_gives_back_the_snapshot_before_the_bad_batch_and_a_corrected_file_lands(root):
    spec = make_spec(root)
    put_golden(spec)
    good, bad = read_sst2("train", limit=120), read_sst2("train", limit=80, offset=120)
    land(spec, "day1.tsv", tsv_bytes(good))
    first = run_ingest(spec, run_folder(spec, "r1"))
    land(spec, "day2.tsv", tsv_bytes(flip(bad)))
    poisoned = run_ingest(spec, run_folder(spec, "r2"))
    assert poisoned["snapshot_id"] != first["snapshot_id"]

    done = withdraw.withdraw(spec, [poisoned["batch_id"]], reason="labels flipped", run_key="r2")
    assert done["withdrawn"] == [poisoned["batch_id"]] and done["files"] == {poisoned["batch_id"]: ["day2.tsv"]}
    # Same rows as before the bad batch: the same content hash, so the very same snapshot id.
    assert done["snapshot_id"] == first["snapshot_id"] == latest(spec)["snapshot_id"]
    assert snapshots.read_snapshot(latest(spec)["snapshot_uri"])["text"].tolist() == \
        snapshots.read_snapshot(first["snapshot_uri"])["text"].tolist()
    record = storage.read_json(withdraw.withdrawn_uri(spec.layout.snapshots, poisoned["batch_id"]))
    assert record["reason"] == "labels flipped" and record["files"] == ["day2.tsv"] and record["run_key"] == "r2"
    # Nothing deleted: the poisoned snapshot and its part are still there.
    assert len(snapshots.read_snapshot(poisoned["snapshot_uri"])) == 200
    # Withdrawing it again (a retried decide) changes nothing and keeps the first record.
    again = withdraw.withdraw(spec, [poisoned["batch_id"]], reason="again")
    assert again["withdrawn"] == [poisoned["batch_id"]] and again["snapshot_id"] == first["snapshot_id"]
    assert storage.read_json(withdraw.withdrawn_uri(spec.layout.snapshots, poisoned["batch_id"]))["reason"] == \
        "labels flipped"
    assert len([o for o in storage.list_objects(spec.layout.snapshots) if o.uri.endswith("manifest.json")]) == 2
    # A batch that was never in a snapshot is not withdrawn.
    assert withdraw.withdraw(spec, ["0123456789abcdef"], reason="typo")["withdrawn"] == []

    # The same file is not read again; the corrected one lands, without conflicts with the withdrawn labels.
    assert run_ingest(spec, run_folder(spec, "r3"))["changed"] is False
    land(spec, "day2.tsv", tsv_bytes(bad))
    fixed = run_ingest(spec, run_folder(spec, "r4"))
    assert fixed["changed"] is True and fixed["new_rows"] == 80 and fixed["quarantined_rows"] == 0
    rows = snapshots.read_snapshot(fixed["snapshot_uri"])
    assert dict(zip(rows["text"], rows["label"])) == {normalize_text(t): y for t, y in good + bad}
    manifest = snapshots.read_manifest(fixed["snapshot_uri"])
    assert manifest.rows == 200 and sum(manifest.label_counts.values()) == 200
    assert manifest.sources == ["day1.tsv", "day2.tsv"]


def test_withdraw_a_batch_in_the_middle_keeps_the_later_ones_and_readmit_puts_it_back(root):
    spec = make_spec(root)
    put_golden(spec)
    batches = [read_sst2("train", limit=60, offset=60 * i) for i in range(3)]
    ids = []
    for i, rows in enumerate(batches):
        land(spec, f"b{i}.tsv", tsv_bytes(rows))
        ids.append(run_ingest(spec, run_folder(spec, f"r{i}"))["batch_id"])
    all_three = latest(spec)["snapshot_id"]

    done = withdraw.withdraw(spec, [ids[1]], reason="bad")
    kept = snapshots.read_snapshot(done["snapshot_uri"])
    assert set(kept["text"]) == {normalize_text(t) for t, _ in batches[0] + batches[2]}
    manifest = snapshots.read_manifest(done["snapshot_uri"])
    assert manifest.withdrawn["batches"] == [ids[1]] and manifest.sources == ["b0.tsv", "b2.tsv"]
    assert manifest.rows == 120 and sum(manifest.split_counts.values()) == 120
    assert manifest.label_counts == {name: int((kept["label"] == i).sum())
                                        for i, name in enumerate(spec.data.labels)}
    assert withdraw.accepted_batches(spec.layout.snapshots) == []

    with pytest.raises(SpecInvalid, match="never withdrawn"):
        withdraw.readmit(spec, [ids[0]], reason="no")
    back = withdraw.readmit(spec, [ids[1]], reason="a real shift")
    assert back["snapshot_id"] == all_three  # the same rows as before the withdrawal
    assert withdraw.accepted_batches(spec.layout.snapshots) == [ids[1]]


def test_withdraw_redoes_its_move_when_an_ingest_moved_latest_meanwhile(tmp_path, monkeypatch):
    spec = make_spec("file://" + str(tmp_path / "s"))
    put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=50)))
    run_ingest(spec)
    land(spec, "bad.tsv", tsv_bytes(flip(read_sst2("train", limit=50, offset=50))))
    bad = run_ingest(spec)["batch_id"]
    land(spec, "c.tsv", tsv_bytes(read_sst2("train", limit=50, offset=100)))
    write_manifest = snapshots.write_manifest
    ingested = []

    def ingest_first(where, manifest):  # the other writer commits between this one's read and its move
        if not ingested:
            monkeypatch.setattr(snapshots, "write_manifest", write_manifest)  # the ingest's own, and later ones
            ingested.append(run_ingest(spec))
        return write_manifest(where, manifest)

    monkeypatch.setattr(snapshots, "write_manifest", ingest_first)
    done = withdraw.withdraw(spec, [bad], reason="bad")
    assert ingested and ingested[0]["changed"] is True
    texts = set(snapshots.read_snapshot(latest(spec)["snapshot_uri"])["text"])
    assert done["snapshot_id"] == latest(spec)["snapshot_id"] and len(texts) == 100  # a.tsv and c.tsv, not bad.tsv
    assert not texts & {normalize_text(t) for t, _ in read_sst2("train", limit=50, offset=50)}


def test_withdraw_cli(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec = make_spec("file://" + str(tmp_path / "s"))
    from tasks.spec import dump

    spec_file.write_text(json.dumps(dump(spec)))
    put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=50)))
    a = run_ingest(spec)
    land(spec, "b.tsv", tsv_bytes(read_sst2("train", limit=50, offset=50)))
    b = run_ingest(spec)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tasks", "withdraw", "--spec", str(spec_file), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    out = cli("--batch", b["batch_id"], "--reason", "mislabelled export")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["snapshot_id"] == a["snapshot_id"]
    both = cli("--batch", b["batch_id"], "--readmit", b["batch_id"], "--reason", "x")
    assert both.returncode != 0 and "not both" in both.stderr
    back = cli("--readmit", b["batch_id"], "--reason", "labels were right")
    assert back.returncode == 0 and json.loads(back.stdout.strip().splitlines()[-1])["snapshot_id"] == b["snapshot_id"]


# ---------------------------------------------------------------- which batch carries the bad labels

CFG = DriftSpec(null_resamples=2000)


def champion_outputs(truth, accuracy, rng, k=2):
    """Probabilities of a champion that is right on ``accuracy`` of the rows."""
    pred = np.where(rng.random(len(truth)) < accuracy, truth, (truth + rng.integers(1, k, len(truth))) % k)
    return np.eye(k)[pred] * 0.9 + 0.1 / k


def test_label_quality_names_the_bad_batch_and_leaves_accepted_ones_out():
    rng = np.random.default_rng(0)
    ref_truth = rng.integers(0, 2, 600)
    ref_prob = champion_outputs(ref_truth, 0.9, rng)
    truth = rng.integers(0, 2, 600)
    prob = champion_outputs(truth, 0.9, rng)
    labels, batches = truth.copy(), np.array(["good"] * 300 + ["bad"] * 300, dtype=object)
    flipped = rng.choice(np.arange(300, 600), size=120, replace=False)  # 40% of batch "bad"
    labels[flipped] = 1 - labels[flipped]

    result = label_quality_by_batch(CFG, ref_prob, ref_truth, prob, labels, batches, set())
    assert result["flagged"] and result["flagged_batches"] == ["bad"]
    assert result["batches"]["good"]["flagged"] is False and "bad" in result["verdict"]

    accepted = label_quality_by_batch(CFG, ref_prob, ref_truth, prob, labels, batches, {"bad"})
    assert not accepted["flagged"] and accepted["flagged_batches"] == [] and accepted["accepted_batches"] == ["bad"]
    assert accepted["current_sample"] == 300

    clean = label_quality_by_batch(CFG, ref_prob, ref_truth, prob, truth, batches, set())
    assert not clean["flagged"] and clean["flagged_batches"] == []


def test_bad_labels_spread_thin_over_small_batches_withdraw_them_all():
    rng = np.random.default_rng(1)
    ref_truth = rng.integers(0, 2, 600)
    ref_prob = champion_outputs(ref_truth, 0.9, rng)
    truth = rng.integers(0, 2, 400)
    prob = champion_outputs(truth, 0.9, rng)
    labels = truth.copy()
    flipped = rng.choice(400, size=120, replace=False)
    labels[flipped] = 1 - labels[flipped]
    batches = np.array([f"b{i % 20:02d}" for i in range(400)], dtype=object)  # 20 rows each: too few alone

    result = label_quality_by_batch(CFG, ref_prob, ref_truth, prob, labels, batches, set())
    assert result["flagged"] and len(result["flagged_batches"]) == 20
    assert all(r.get("skipped") for r in result["batches"].values())
