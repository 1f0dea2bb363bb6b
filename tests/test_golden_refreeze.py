"""Replacing a pipeline's frozen golden set (python -m tasks golden --refreeze, tasks/data/golden.py) and what the
next ingest does with the stored rows now in it (tasks/data/ingest.py: remove_golden_rows), on local storage and
moto's S3 server, with real ingests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, read_sst2
from data_helpers import land, make_spec, put, put_golden, run_folder, tsv_bytes
from tasks import storage
from tasks.data import golden, snapshots, withdraw
from tasks.data.ingest import run_ingest
from tasks.data.validation import normalize_text
from tasks.errors import InfrastructureError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return "file://" + str(tmp_path / "store")
    return request.getfixturevalue("s3_env") + "/retrain"


MOVING = ("snapshots/sst2/latest.json", "golden/sst2/current.json")  # the two pointers; all else is create-only


def stored(spec) -> dict[str, str]:
    """Every object under the storage root and its ETag."""
    return {o.uri: o.etag for o in storage.list_objects(spec.storage.uri)}


def assert_kept(before: dict[str, str], after: dict[str, str]) -> None:
    """Nothing stored before was modified or deleted (but for the two pointers, which move)."""
    changed = [u for u, etag in before.items() if not u.endswith(MOVING) and after.get(u) != etag]
    assert not changed, changed


def golden_cli(spec_uri: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tasks", "golden", "--spec", spec_uri, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))


def texts(rows) -> set[str]:
    return {normalize_text(t) for t, _ in rows}


def three_batches(spec):
    """The first golden set (SST-2 dev 0-39) and three ingested batches of 100 SST-2 train rows each."""
    first = put_golden(spec)
    batches = [read_sst2("train", limit=100, offset=100 * i) for i in range(3)]
    results = []
    for i, rows in enumerate(batches):
        land(spec, f"b{i}.tsv", tsv_bytes(rows))
        results.append(run_ingest(spec, run_folder(spec, f"r{i}")))
    return first, batches, results


def test_refreeze_then_the_next_ingest_removes_stored_rows_now_in_the_golden_set(root):
    spec = make_spec(root)
    first, batches, ingested = three_batches(spec)
    old = ingested[-1]
    # The new golden set: 30 of the old one's rows, 5 stored rows of batch 0 and 3 of batch 2 (batch 1 has none).
    new_rows = first[:30] + batches[0][10:15] + batches[2][50:53]
    source = storage.join(spec.storage.uri, "reference", "sst2", "golden-v2.tsv")
    put(source, tsv_bytes(new_rows))
    before = stored(spec)
    spec_uri = storage.join(run_folder(spec, "ops"), "spec.json")

    proc = golden_cli(spec_uri, "--refreeze", "--source", source)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["action"] == "refrozen" and outcome["replaced"] == old["golden_id"]
    assert outcome["rows"] == 38 and outcome["generation"] == 1
    assert "replaced by" in proc.stderr
    pointer = storage.read_json(golden.pointer_uri(spec))
    assert pointer["golden_id"] == outcome["golden_id"] != old["golden_id"]
    assert set(snapshots.read_golden(pointer["golden_uri"])["text"]) == texts(new_rows)
    # The old set stays where it was, and the replaced pointer has its record.
    assert set(snapshots.read_golden(old["golden_uri"])["text"]) == texts(first)
    record = storage.read_json(outcome["replaced_record"])
    assert record["golden_id"] == old["golden_id"] and record["golden_uri"] == old["golden_uri"]
    assert record["replaced_by"] == pointer["golden_id"] and record["replaced_at"] == pointer["replaced_at"]
    assert [r["golden_id"] for r in golden.history(spec)] == [old["golden_id"]]
    assert_kept(before, stored(spec))

    # The next ingest, with no file landed: a new snapshot without the 8 stored rows now in the golden set.
    before = stored(spec)
    now = run_ingest(spec, run_folder(spec, "r3"))
    assert now["changed"] is True and now["new_rows"] == 0 and now["parent_snapshot_id"] == old["snapshot_id"]
    assert now["golden_id"] == pointer["golden_id"] and now["golden_uri"] == pointer["golden_uri"]
    assert now["asset_extra"] == {"snapshot_id": now["snapshot_id"], "snapshot_uri": now["snapshot_uri"],
                                  "total_rows": 292, "new_rows": 0}
    change = now["golden_changed"]
    assert change["from"] == old["golden_id"] and change["to"] == pointer["golden_id"]
    assert change["removed_rows"] == 8
    ids = [r["batch_id"] for r in ingested]
    assert change["removed_by_batch"] == {ids[0]: 5, ids[2]: 3}
    manifest = snapshots.read_manifest(now["snapshot_uri"])
    assert manifest["golden_id"] == pointer["golden_id"] and manifest["golden_uri"] == pointer["golden_uri"]
    assert manifest["golden_changed"] == change and manifest["golden_generation"] == 1
    # Only the parts holding such rows are rewritten; batch 1's part is listed as it was.
    assert manifest["parts"][1] == snapshots.part_path(ids[1])
    assert all(p.startswith("parts/filtered/") and p.endswith(f"{b}.parquet")
               for p, b in zip(manifest["parts"][::2], ids[::2]))
    # The rows kept are exactly the old ones minus the new golden texts, and the counts and sums add up.
    frame = snapshots.read_snapshot(now["snapshot_uri"])
    old_frame = snapshots.read_snapshot(old["snapshot_uri"])
    assert set(frame["text"]) == set(old_frame["text"]) - texts(new_rows) and len(frame) == 292 == manifest["rows"]
    assert manifest["label_counts"] == {n: int((frame["label"] == i).sum()) for i, n in enumerate(spec.data.labels)}
    assert manifest["split_counts"] == {s: int((frame["split"] == s).sum()) for s in ("train", "holdout")}
    assert set(frame["batch"]) == set(ids)  # rewritten rows keep the batch that added them
    # The same rows ingested from scratch give the same content hash (the sum is right, not only the counts).
    fresh = make_spec(spec.storage.uri + "-fresh")
    put(fresh.golden.source_uri, tsv_bytes(new_rows))
    kept = [(t, y) for rows in batches for t, y in rows if normalize_text(t) not in texts(new_rows)]
    land(fresh, "all.tsv", tsv_bytes(kept))
    assert snapshots.read_manifest(run_ingest(fresh)["snapshot_uri"])["content_hash"] == manifest["content_hash"]
    # New objects only: the old snapshot, its parts and the old golden set are as they were.
    assert_kept(before, stored(spec))
    assert snapshots.read_manifest(old["snapshot_uri"])["rows"] == 300

    # An ingest after that is unchanged again; a landed file is checked against the new set: a row of it is
    # dropped (contaminated), a row only the old set held is training data now.
    again = run_ingest(spec, run_folder(spec, "r4"))
    assert again["changed"] is False and again["snapshot_id"] == now["snapshot_id"]
    assert "golden_changed" not in again or again["golden_changed"] is None
    fresh_rows = read_sst2("train", limit=20, offset=300)
    land(spec, "b3.tsv", tsv_bytes(fresh_rows + [new_rows[0], first[35]]))
    later = run_ingest(spec, run_folder(spec, "r5"))
    assert later["changed"] is True and later["new_rows"] == 21 and later["contaminated_removed"] == 1
    assert later["parent_snapshot_id"] == now["snapshot_id"] and later["golden_id"] == pointer["golden_id"]
    later_manifest = snapshots.read_manifest(later["snapshot_uri"])
    assert later_manifest["golden_uri"] == pointer["golden_uri"] and later_manifest["rows"] == 313
    assert normalize_text(first[35][0]) in set(snapshots.read_snapshot(later["snapshot_uri"])["text"])



def test_the_same_content_is_a_no_op_and_a_bad_source_changes_nothing(root):
    spec = make_spec(root)
    first = put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=60)))
    ingested = run_ingest(spec, run_folder(spec))
    spec_uri = storage.join(run_folder(spec), "spec.json")
    folder = storage.join(spec.storage.uri, "reference", "sst2")
    same, bad, empty, missing = (storage.join(folder, name) for name in ("same.tsv", "bad.tsv", "empty.tsv", "no.tsv"))
    # The same rows, reordered, repeated and with other whitespace; mostly unknown labels; no rows.
    put(same, tsv_bytes([(f"  {t} ", y) for t, y in first[::-1]] + first[:3]))
    put(bad, tsv_bytes([(t, "maybe") for t, _ in read_sst2("dev", limit=30, offset=40)] + first[:5]))
    put(empty, "sentence\tlabel\n")
    before = stored(spec)

    # The same content: nothing to replace.
    proc = golden_cli(spec_uri, "--refreeze", "--source", same)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["action"] == "unchanged" and outcome["golden_id"] == ingested["golden_id"]
    assert "same rows as the current golden set" in proc.stderr
    assert stored(spec) == before  # not even the pointer was rewritten

    # Refused as the first freeze refuses it (exit 3, the reasons), nothing written.
    proc = golden_cli(spec_uri, "--refreeze", "--source", bad)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "error (data_rejected)" in proc.stderr and "30 of 35 rows are bad" in proc.stderr
    assert "unknown_label" in proc.stderr
    proc = golden_cli(spec_uri, "--refreeze", "--source", missing)
    assert proc.returncode == 3 and "does not exist; nothing was replaced" in proc.stderr
    proc = golden_cli(spec_uri, "--refreeze", "--source", empty)
    assert proc.returncode == 3 and "has no rows" in proc.stderr
    assert stored(spec) == before
    # The ingest goes on as before: same snapshot, nothing removed.
    again = run_ingest(spec, run_folder(spec, "r2"))
    assert again["changed"] is False and again["snapshot_id"] == ingested["snapshot_id"]

    # Without --refreeze the command shows the current set and the replaced ones.
    proc = golden_cli(spec_uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shown["current"]["golden_id"] == ingested["golden_id"] and shown["replaced"] == []


def test_a_concurrent_move_of_the_pointer_is_refused(root, monkeypatch):
    spec = make_spec(root)
    first = put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=60)))
    ingested = run_ingest(spec)
    theirs = storage.join(spec.storage.uri, "reference", "sst2", "theirs.tsv")
    ours = storage.join(spec.storage.uri, "reference", "sst2", "ours.tsv")
    put(theirs, tsv_bytes(first[:20]))
    put(ours, tsv_bytes(first[20:]))
    real_store = golden.store
    other = {}

    def another_refreeze_first(spec_, candidate):  # the other operator moves current.json after ours read it
        if not other:
            monkeypatch.setattr(golden, "store", real_store)
            other.update(golden.refreeze(spec_, theirs))
        return real_store(spec_, candidate)

    monkeypatch.setattr(golden, "store", another_refreeze_first)
    with pytest.raises(InfrastructureError, match="moved while this re-freeze ran .* nothing was replaced"):
        golden.refreeze(spec, ours)
    pointer = storage.read_json(golden.pointer_uri(spec))
    assert other["action"] == "refrozen" and pointer["golden_id"] == other["golden_id"]
    assert set(snapshots.read_golden(pointer["golden_uri"])["text"]) == texts(first[:20])
    # One record: the first set, replaced by theirs; ours replaced nothing.
    assert [(r["golden_id"], r["replaced_by"]) for r in golden.history(spec)] == \
        [(ingested["golden_id"], other["golden_id"])]
    # Rerun, ours replaces theirs (generation 2), and the history has both.
    done = golden.refreeze(spec, ours)
    assert done["action"] == "refrozen" and done["replaced"] == other["golden_id"] and done["generation"] == 2
    assert [r["golden_id"] for r in golden.history(spec)] == [ingested["golden_id"], other["golden_id"]]

    # Both operators put the first set back at once: the loser finds its rows current already; no error.
    original = storage.join(spec.storage.uri, "reference", "sst2", "original.tsv")
    put(original, tsv_bytes(first))
    other.clear()

    def same_refreeze_first(spec_, candidate):
        if not other:
            monkeypatch.setattr(golden, "store", real_store)
            other.update(golden.refreeze(spec_, original))
        return real_store(spec_, candidate)

    monkeypatch.setattr(golden, "store", same_refreeze_first)
    lost = golden.refreeze(spec, original)
    assert other["action"] == "refrozen" and other["golden_id"] == ingested["golden_id"] == lost["golden_id"]
    assert lost["action"] == "unchanged" and "already made" in lost["message"]
    assert storage.read_json(golden.pointer_uri(spec))["generation"] == 3 and len(golden.history(spec)) == 3


def test_refreeze_with_a_landed_file_then_withdraw_and_readmit_a_rewritten_batch(tmp_path):
    spec = make_spec("file://" + str(tmp_path / "store"))
    first = put_golden(spec)
    a, b = read_sst2("train", limit=80), read_sst2("train", limit=80, offset=80)
    land(spec, "a.tsv", tsv_bytes(a))
    run_ingest(spec)
    land(spec, "b.tsv", tsv_bytes(b))
    before = run_ingest(spec)
    put(spec.golden.source_uri, tsv_bytes(first + b[:4]))  # the default source, edited: 4 rows of batch b
    assert golden.refreeze(spec)["action"] == "refrozen"

    # A file lands in the same night: one run makes the snapshot without the 4 rows, then adds the batch on it.
    c = read_sst2("train", limit=30, offset=160)
    land(spec, "c.tsv", tsv_bytes(c + b[:2]))
    now = run_ingest(spec)
    assert now["changed"] is True and now["new_rows"] == 30 and now["contaminated_removed"] == 2
    assert now["golden_changed"]["removed_rows"] == 4
    cleaned = snapshots.read_manifest(now["snapshot_uri"])["parent"]
    assert cleaned != before["snapshot_id"]
    assert snapshots.read_manifest(storage.join(spec.layout.snapshots, cleaned))["parent"] == before["snapshot_id"]
    frame = snapshots.read_snapshot(now["snapshot_uri"])
    assert set(frame["text"]) == texts(a + b[4:] + c) and len(frame) == 186

    # Withdrawing batch b takes its rewritten part out; readmitting it puts back its rows, still without the 4.
    gone = withdraw.withdraw(spec, [before["batch_id"]], reason="test")
    assert gone["withdrawn"] == [before["batch_id"]]
    assert set(snapshots.read_snapshot(gone["snapshot_uri"])["text"]) == texts(a + c)
    back = withdraw.readmit(spec, [before["batch_id"]], reason="fine after all")
    assert set(snapshots.read_snapshot(back["snapshot_uri"])["text"]) == texts(a + b[4:] + c)
    assert back["snapshot_id"] == now["snapshot_id"]  # the same rows, the same golden set: the same snapshot
    readmitted = snapshots.read_manifest(back["snapshot_uri"])
    assert readmitted["golden_id"] == now["golden_id"] and readmitted["golden_generation"] == 1


def test_evaluate_then_scores_candidates_and_the_champion_on_the_new_golden_set(tmp_path, tiny_model_dir,
                                                                                one_torch_thread):
    from tasks.decide import evaluate

    spec = make_spec("file://" + str(tmp_path / "store"), gates={"latency_samples": 5})
    first = put_golden(spec)
    rows = read_sst2("train", limit=80)
    land(spec, "a.tsv", tsv_bytes(rows))
    before = run_ingest(spec)
    champion = spec.layout.version("v1")
    for role in ("teacher", "student"):
        storage.upload_dir(tiny_model_dir, storage.join(champion, role))
    storage.write_json(storage.join(champion, "manifest.json"), {"version": "v1", **{
        k: before[k] for k in ("snapshot_id", "snapshot_uri")}})
    storage.write_json(spec.layout.champion, {"version": "v1", "version_uri": champion,
                                              **{k: before[k] for k in ("snapshot_id", "snapshot_uri")}})
    put(spec.golden.source_uri, tsv_bytes(first[:25] + rows[:6]))
    # The re-freeze says how many of the new set's texts the champion trained on (its snapshot's train rows).
    trained = snapshots.read_snapshot(before["snapshot_uri"])
    trained = set(trained.loc[trained["split"] == "train", "text"])
    expected = len(texts(rows[:6]) & trained)
    assert 0 < expected < 6  # some of the six are holdout rows, which the champion never trained on
    assert golden.refreeze(spec)["champion_trained_on"] == {"version": "v1", "snapshot_id": before["snapshot_id"],
                                                          "rows": expected}
    run_uri = run_folder(spec, "after")
    now = run_ingest(spec, run_uri)
    assert now["golden_changed"]["removed_rows"] == 6

    model = "file://" + str(tiny_model_dir)
    result = evaluate.run(run_uri, now["snapshot_uri"], model, model, champion)  # no --golden: the manifest's
    assert result.golden_uri == now["golden_uri"] != before["golden_uri"]
    for scored in (result.metrics["teacher"], result.metrics["champion"]["teacher"],
                   result.metrics["champion"]["student"]):
        assert scored["golden_n"] == 31  # the new set's rows, for the candidates and the champion alike
