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
    assert manifest.golden_id == pointer["golden_id"] and manifest.golden_uri == pointer["golden_uri"]
    assert manifest.golden_changed == change and manifest.golden_generation == 1
    # Only the parts holding such rows are rewritten; batch 1's part is listed as it was.
    assert manifest.parts[1] == snapshots.part_path(ids[1])
    assert all(p.startswith("parts/filtered/") and p.endswith(f"{b}.parquet")
               for p, b in zip(manifest.parts[::2], ids[::2]))
    # The rows kept are exactly the old ones minus the new golden texts, and the counts and sums add up.
    frame = snapshots.read_snapshot(now["snapshot_uri"])
    old_frame = snapshots.read_snapshot(old["snapshot_uri"])
    assert set(frame["text"]) == set(old_frame["text"]) - texts(new_rows) and len(frame) == 292 == manifest.rows
    assert manifest.label_counts == {n: int((frame["label"] == i).sum()) for i, n in enumerate(spec.data.labels)}
    assert manifest.split_counts == {s: int((frame["split"] == s).sum()) for s in ("train", "holdout")}
    assert set(frame["batch"]) == set(ids)  # rewritten rows keep the batch that added them
    # The same rows ingested from scratch give the same content hash (the sum is right, not only the counts).
    fresh = make_spec(spec.storage.uri + "-fresh")
    put(fresh.golden.source_uri, tsv_bytes(new_rows))
    kept = [(t, y) for rows in batches for t, y in rows if normalize_text(t) not in texts(new_rows)]
    land(fresh, "all.tsv", tsv_bytes(kept))
    assert snapshots.read_manifest(run_ingest(fresh)["snapshot_uri"]).content_hash == manifest.content_hash
    # New objects only: the old snapshot, its parts and the old golden set are as they were.
    assert_kept(before, stored(spec))
    assert snapshots.read_manifest(old["snapshot_uri"]).rows == 300

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
    assert later_manifest.golden_uri == pointer["golden_uri"] and later_manifest.rows == 313
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
    # A progress line in the stages' one logging format (tasks.cli.setup_logging, set by `python -m tasks`).
    assert "INFO tasks.data.golden: " in proc.stderr and "same rows as the current golden set" in proc.stderr
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
    cleaned = snapshots.read_manifest(now["snapshot_uri"]).parent
    assert cleaned != before["snapshot_id"]
    assert snapshots.read_manifest(storage.join(spec.layout.snapshots, cleaned)).parent == before["snapshot_id"]
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
    assert readmitted.golden_id == now["golden_id"] and readmitted.golden_generation == 1


def make_champion(spec, ingested, model_dir, version="v1") -> str:
    """A promoted version by hand: teacher/ and student/ = ``model_dir``, the version manifest naming the snapshot
    it trained on, and the champion pointer."""
    champion = spec.layout.version(version)
    for role in ("teacher", "student"):
        storage.upload_dir(model_dir, storage.join(champion, role))
    named = {k: ingested[k] for k in ("snapshot_id", "snapshot_uri")}
    storage.write_json(storage.join(champion, "manifest.json"), {"version": version, **named})
    storage.write_json(spec.layout.champion, {"version": version, "version_uri": champion, **named})
    return champion


@pytest.fixture
def part_scans(monkeypatch):
    """The champion snapshot parts evaluate opens to look for golden texts, in order."""
    opened: list[str] = []
    real = snapshots.train_texts_in_part

    def counted(part_uri, *args):
        opened.append(part_uri)
        return real(part_uri, *args)

    monkeypatch.setattr(snapshots, "train_texts_in_part", counted)
    return opened


def train_texts(snapshot_uri: str) -> set[str]:
    frame = snapshots.read_snapshot(snapshot_uri)
    return set(frame.loc[frame["split"] == "train", "text"])


def gate_report(result) -> dict:
    return {g["name"]: g for g in storage.read_json(result.report_uri)["gates"]}


def test_evaluate_leaves_the_golden_rows_the_champion_trained_on_out_of_the_champion_comparison(
        root, tiny_model_dir, one_torch_thread, part_scans):
    from tasks.decide import evaluate

    spec = make_spec(root, gates={"latency_samples": 5})
    first = put_golden(spec)
    rows = read_sst2("train", limit=80)
    land(spec, "a.tsv", tsv_bytes(rows))
    before = run_ingest(spec)
    champion = make_champion(spec, before, tiny_model_dir)
    put(spec.golden.source_uri, tsv_bytes(first[:25] + rows[:6]))
    # The re-freeze says how many of the new set's texts the champion trained on (its snapshot's train rows).
    trained = texts(rows[:6]) & train_texts(before["snapshot_uri"])
    assert 0 < len(trained) < 6  # some of the six are holdout rows, which the champion never trained on
    assert golden.refreeze(spec)["champion_trained_on"] == {"version": "v1", "snapshot_id": before["snapshot_id"],
                                                          "rows": len(trained)}
    run_uri = run_folder(spec, "after")
    now = run_ingest(spec, run_uri)
    assert now["golden_changed"]["removed_rows"] == 6
    part_scans.clear()  # the re-freeze scanned the champion's snapshot for its count; from here, evaluate's

    model = "file://" + str(tiny_model_dir)
    result = evaluate.run(run_uri, now["snapshot_uri"], model, model, champion)  # no --golden: the manifest's
    assert result.golden_uri == now["golden_uri"] != before["golden_uri"]
    for scored in (result.metrics["teacher"], result.metrics["champion"]["teacher"],
                   result.metrics["champion"]["student"]):
        assert scored["golden_n"] == 31  # the new set's rows, for the candidates and the champion alike
    # Exactly the golden rows whose text the champion trained on are left out of the comparison with it.
    comparison = result.champion_comparison.dump()
    k = len(trained)
    assert {key: comparison[key] for key in ("golden_rows", "compared_rows", "excluded_rows", "too_few")} == {
        "golden_rows": 31, "compared_rows": 31 - k, "excluded_rows": k, "too_few": False}
    assert comparison["looked"] and comparison["champion_snapshot_id"] == before["snapshot_id"]
    assert comparison["champion_golden_id"] == before["golden_id"] != comparison["golden_id"] == now["golden_id"]
    assert comparison["champion_version"] == "v1"  # the version whose training rows are left out
    metrics = storage.read_json(storage.join(run_uri, "evaluate", "metrics.json"))
    new_golden = snapshots.read_golden(now["golden_uri"])
    assert set(new_golden["text"].iloc[metrics["champion_left_out_rows"]]) == trained
    # Only the champion's part the re-freeze's ingest rewrote was read: this run's snapshot lists none of the old.
    assert comparison["parts_read"] == 1 and comparison["parts_shared"] == 0
    assert part_scans == [storage.join(spec.layout.snapshots, snapshots.part_path(before["batch_id"]))]
    by = gate_report(result)
    kept = new_golden[~new_golden["text"].isin(trained)]
    now_rows = snapshots.read_snapshot(now["snapshot_uri"])
    holdout_rows = int((now_rows["split"] == "holdout").sum())  # the champion trained on none of them
    for role in ("teacher", "student"):
        ni, recall = by[f"non_inferiority_{role}"], by[f"class_recall_{role}"]
        # 26-ish golden rows cannot decide: the holdout rows neither model trained on are added to them
        assert ni["details"]["golden_power"]["n"] == 31 - k and ni["details"]["excluded_rows"] == k
        assert ni["details"]["holdout_rows"] == holdout_rows > 0
        assert ni["details"]["n"] == 31 - k + holdout_rows
        assert (ni["details"]["compared_rows"], ni["details"]["golden_rows"]) == (31 - k, 31)
        assert {label: t["n"] for label, t in recall["details"]["classes"].items()} == {
            label: int((kept["label"] == i).sum()) for i, label in enumerate(spec.data.labels)
            if (kept["label"] == i).any()}
        # The floors use every golden row (and, left open by them, the holdout's too).
        floor = by[f"baseline_accuracy_{role}"]["details"]
        assert floor.get("golden", floor)["n"] == 31 and floor["n"] == 31 + floor.get("holdout_rows", 0)
        assert "excluded_rows" not in by[f"baseline_macro_f1_{role}"]["details"]
    md = storage.read_text(result.report_md_uri)
    assert f"**champion compared on {31 - k} of 31 golden rows:** the {k} golden rows whose text" in md
    stored = storage.read_json(storage.join(run_uri, "evaluate", "result.json"))
    assert stored["champion_comparison"]["excluded_rows"] == k
    # The model card and the run summary say so too.
    from tasks.decide import model_card, summary

    card = model_card.render(model_card.CardInputs(
        spec=spec, version="v2", published_at="now", snapshot_uri=now["snapshot_uri"],
        snapshot=snapshots.read_manifest(now["snapshot_uri"]).dump(), evaluation=result.dump(), parent_champion="v1",
        run_uri=run_uri, code_version="test"), "student")
    gates_section = card.split("## Gates", 1)[1].split("## Lineage", 1)[0]
    assert f"**champion compared on {31 - k} of 31 golden rows:** the {k} golden rows whose text" in gates_section
    text = summary.format_summary(summary.build_summary(
        {"pipeline": "sst2", "run_key": "after", "run_uri": run_uri, "run_type": "manual",
         "champion_version": "v1"},
        {"decide": {"retrain": True, "reasons": ["forced"]}, "evaluate": stored}))
    assert f"champion compared on {31 - k} of 31 golden rows, {k} whose text the champion v1 trained on" in text


def test_evaluate_without_a_refreeze_compares_on_every_row_and_reads_no_part(root, tiny_model_dir,
                                                                              one_torch_thread, part_scans):
    from tasks.decide import evaluate

    spec = make_spec(root, gates={"latency_samples": 5})
    put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=80)))
    champion = make_champion(spec, run_ingest(spec), tiny_model_dir)
    land(spec, "b.tsv", tsv_bytes(read_sst2("train", limit=40, offset=80)))
    run_uri = run_folder(spec, "next")
    now = run_ingest(spec, run_uri)
    model = "file://" + str(tiny_model_dir)
    result = evaluate.run(run_uri, now["snapshot_uri"], model, model, champion)
    comparison = result.champion_comparison.dump()
    assert comparison["excluded_rows"] == 0 and comparison["compared_rows"] == comparison["golden_rows"] == 40
    assert comparison["looked"] is False and "parts_read" not in comparison and part_scans == []
    by = gate_report(result)
    holdout_rows = int((snapshots.read_snapshot(now["snapshot_uri"])["split"] == "holdout").sum())
    for role in ("teacher", "student"):
        details = by[f"non_inferiority_{role}"]["details"]
        assert details["golden_power"]["n"] == 40 and details["holdout_rows"] == holdout_rows > 0
        assert "excluded_rows" not in details
    assert "champion compared on" not in storage.read_text(result.report_md_uri)
    metrics = storage.read_json(storage.join(run_uri, "evaluate", "metrics.json"))
    assert metrics["champion_left_out_rows"] == []


def test_evaluate_with_too_few_golden_rows_the_champion_did_not_train_on(tmp_path, tiny_model_dir,
                                                                         one_torch_thread):
    from tasks.decide import evaluate

    spec = make_spec("file://" + str(tmp_path / "store"), gates={"latency_samples": 5})
    first = put_golden(spec)
    rows = read_sst2("train", limit=80)
    land(spec, "a.tsv", tsv_bytes(rows))
    before = run_ingest(spec)
    champion = make_champion(spec, before, tiny_model_dir)
    trained = train_texts(before["snapshot_uri"])
    memorized = [(t, y) for t, y in rows if normalize_text(t) in trained][:30]
    put(spec.golden.source_uri, tsv_bytes(first[:5] + memorized))  # 30 of 35 rows trained on: 5 left
    assert golden.refreeze(spec)["champion_trained_on"]["rows"] == 30
    run_uri = run_folder(spec, "after")
    now = run_ingest(spec, run_uri)
    model = "file://" + str(tiny_model_dir)
    result = evaluate.run(run_uri, now["snapshot_uri"], model, model, champion)
    comparison = result.champion_comparison.dump()
    assert (comparison["golden_rows"], comparison["compared_rows"], comparison["excluded_rows"]) == (35, 5, 30)
    assert comparison["too_few"] and comparison["min_compared_rows"] == spec.gates.class_recall_min_support
    by = gate_report(result)
    assert not result.first_run
    for role in ("teacher", "student"):
        for name in (f"non_inferiority_{role}", f"class_recall_{role}"):
            assert by[name]["skipped"] and by[name]["passed"] and by[name]["value"] is None
        floor = by[f"baseline_accuracy_{role}"]["details"]
        assert floor.get("golden", floor)["n"] == 35  # the floors still judge on every golden row
    assert by["student_retention"]["details"]["champion_retention"] is None  # too few rows: not the champion's
    assert "**champion not compared:**" in storage.read_text(result.report_md_uri)


def test_a_part_written_before_text_hash_is_matched_by_its_texts_train_rows_only(tmp_path):
    import numpy as np
    import pyarrow as pa

    from data_helpers import parquet_bytes

    part = "file://" + str(tmp_path / "parts" / "old.parquet")
    put(part, parquet_bytes({"text": ["a golden text", "held out golden", "plain row", "another golden"],
                             "label": [0, 1, 0, 1], "split": ["train", "holdout", "train", "train"],
                             "batch": ["b0"] * 4}))
    values = pa.array(sorted(["a golden text", "another golden", "held out golden", "never stored"]), pa.string())
    hi = snapshots.hash_keys(snapshots.text_digests(values)[:, :snapshots.TEXT_HASH_BYTES])[0]
    found = snapshots.train_texts_in_part(part, values, hi, str(tmp_path))
    assert dict(zip(values.to_pylist(), found.tolist())) == {
        "a golden text": True, "another golden": True, "held out golden": False, "never stored": False}
    assert not snapshots.train_texts_in_part(part, pa.array(["never stored"], pa.string()),
                                            np.zeros(1, dtype=np.uint64), str(tmp_path)).any()


def test_evaluate_adds_only_the_holdout_rows_no_model_trained_on(tmp_path, tiny_model_dir, one_torch_thread,
                                                                part_scans):
    """An underpowered comparison adds the snapshot's holdout rows, but not one whose text the champion trained
    on: here the champion's snapshot split the same texts at data.holdout_fraction 0.05, this run's at 0.5."""
    from tasks.decide import evaluate

    rows = read_sst2("train", limit=120)
    old = make_spec("file://" + str(tmp_path / "old"), data={"holdout_fraction": 0.05})
    put_golden(old)
    land(old, "a.tsv", tsv_bytes(rows))
    before = run_ingest(old)
    champion = make_champion(old, before, tiny_model_dir)
    spec = make_spec("file://" + str(tmp_path / "new"), data={"holdout_fraction": 0.5},
                     gates={"latency_samples": 5})
    put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(rows))
    run_uri = run_folder(spec, "r")
    now = run_ingest(spec, run_uri)
    frame = snapshots.read_snapshot(now["snapshot_uri"])
    holdout = set(frame.loc[frame["split"] == "holdout", "text"])
    fresh = holdout - train_texts(before["snapshot_uri"])
    assert 0 < len(fresh) < len(holdout)  # most of this holdout was the champion's training data
    model = "file://" + str(tiny_model_dir)
    result = evaluate.run(run_uri, now["snapshot_uri"], model, model, champion)
    assert len(part_scans) == 1  # the champion's one part (another folder), read once for both sets
    by = gate_report(result)
    for role in ("teacher", "student"):
        ni = by[f"non_inferiority_{role}"]
        assert ni["details"]["holdout_rows"] == len(fresh) and ni["details"]["golden_power"]["n"] == 40
        assert f"adds {len(fresh)} holdout rows neither model trained on, of {len(holdout)} in snapshot" in ni["reason"]
