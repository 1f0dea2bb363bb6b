"""Ingest: quarantine reasons with crafted files, idempotence, changed files, dedup, golden hygiene, splits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, read_sst2
from data_helpers import land, make_spec, parquet_bytes, put_golden, run_folder, tsv_bytes
from tasks import storage
from tasks.data import readers, snapshots, validation
from tasks.data.ingest import run_ingest
from tasks.data.snapshots import split_of
from tasks.data.validation import normalize_text
from tasks.errors import DataRejected, InfrastructureError
from tasks.manifests import LandingFileRecord


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return "file://" + str(tmp_path / "store")
    return request.getfixturevalue("s3_env") + "/retrain"


def quarantined(result: dict) -> list[dict]:
    text = storage.read_text(storage.join(result["quarantine_uri"], "rows.jsonl"))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def quarantine_summary(result: dict) -> dict:
    return storage.read_json(storage.join(result["quarantine_uri"], "summary.json"))


def test_normalization_nfc_trim_collapse():
    assert normalize_text("  Cafe\u0301 \t is\n\n  good ") == "Caf\u00e9 is good"
    assert normalize_text(" \u00a0\t ") == ""


def test_ingest_snapshot_then_idempotent_reingest(root):
    spec = make_spec(root)
    golden = put_golden(spec)
    train = read_sst2("train", limit=150)
    # 2 exact duplicates (one only after normalization) and 3 golden rows that must never reach training data.
    dupes = [train[0], ("  " + train[1][0].upper().lower() + "   ", train[1][1])]
    land(spec, "day1/a.tsv", tsv_bytes(train + dupes + golden[:3]))

    first = run_ingest(spec, run_folder(spec))
    assert first["changed"] is True
    assert first["new_rows"] == first["total_rows"] == 150
    assert first["duplicates_removed"] == 2
    assert first["contaminated_removed"] == 3
    assert first["quarantined_rows"] == 0
    assert first["files_ingested"] == ["day1/a.tsv"]
    assert first["asset_extra"] == {"snapshot_id": first["snapshot_id"], "snapshot_uri": first["snapshot_uri"],
                                    "total_rows": 150, "new_rows": 150}
    frame = snapshots.read_snapshot(first["snapshot_uri"])
    assert len(frame) == 150 and set(frame["label"]) == {0, 1}
    assert not set(frame["text"]) & {normalize_text(t) for t, _ in golden}
    manifest = snapshots.read_manifest(first["snapshot_uri"])
    assert manifest.rows == 150 and manifest.sources == ["day1/a.tsv"]
    assert manifest.golden_uri == first["golden_uri"] and manifest.golden_id == first["golden_id"]
    assert sum(manifest.label_counts.values()) == 150 and manifest.content_hash.startswith(first["snapshot_id"])
    assert snapshots.read_golden(first["golden_uri"])["text"].tolist()[0] == normalize_text(golden[0][0])
    stored = storage.read_json(storage.join(run_folder(spec), "ingest", "result.json"))
    assert stored["snapshot_id"] == first["snapshot_id"]

    again = run_ingest(spec, run_folder(spec, "run2"))
    assert again["changed"] is False and again["new_rows"] == 0
    assert again["snapshot_id"] == first["snapshot_id"] and "asset_extra" not in again
    assert len([o for o in storage.list_objects(spec.layout.snapshots) if o.uri.endswith("manifest.json")]) == 1


def test_changed_file_gives_new_snapshot_and_dedups_against_earlier(root):
    spec = make_spec(root)
    put_golden(spec)
    rows = read_sst2("train", limit=200)
    land(spec, "a.tsv", tsv_bytes(rows[:120]))
    first = run_ingest(spec)
    before = storage.read_bytes(storage.join(spec.layout.snapshots, "parts", first["batch_id"] + ".parquet"))

    land(spec, "a.tsv", tsv_bytes(rows[100:200]))  # re-upload, new content: 20 old rows + 80 new
    second = run_ingest(spec)
    assert second["changed"] is True and second["snapshot_id"] != first["snapshot_id"]
    assert second["new_rows"] == 80 and second["duplicates_removed"] == 20 and second["total_rows"] == 200
    assert second["parent_snapshot_id"] == first["snapshot_id"]
    # The earlier snapshot and its part are untouched; the new one reuses the part.
    assert snapshots.read_manifest(first["snapshot_uri"]).rows == 120
    assert storage.read_bytes(storage.join(spec.layout.snapshots, "parts", first["batch_id"] + ".parquet")) == before
    assert snapshots.read_manifest(second["snapshot_uri"]).parts[0] == f"parts/{first['batch_id']}.parquet"
    assert storage.read_json(storage.join(spec.layout.snapshots, "latest.json"))["snapshot_id"] == second["snapshot_id"]

    land(spec, "b.tsv", tsv_bytes(rows[:50]))  # a new file of only known rows: no new snapshot
    third = run_ingest(spec)
    assert third["changed"] is False and third["snapshot_id"] == second["snapshot_id"]
    assert third["duplicates_removed"] == 50
    assert run_ingest(spec)["files_ingested"] == []  # and b.tsv counts as processed


def test_ingest_on_a_snapshot_reads_its_manifest_once(tmp_path, monkeypatch):
    spec = make_spec("file://" + str(tmp_path / "s"))
    put_golden(spec)
    rows = read_sst2("train", limit=100)
    land(spec, "a.tsv", tsv_bytes(rows[:50]))
    first = run_ingest(spec)
    land(spec, "b.tsv", tsv_bytes(rows[50:]))
    reads: list[str] = []
    real = storage.read_json

    def counting(uri):
        reads.append(uri)
        return real(uri)

    monkeypatch.setattr(storage, "read_json", counting)
    second = run_ingest(spec)
    assert second["changed"] is True and second["parent_snapshot_id"] == first["snapshot_id"]
    assert reads.count(snapshots.manifest_uri(first["snapshot_uri"])) == 1


def test_same_data_gives_same_snapshot_id(tmp_path):
    ids = []
    for name, order in (("one", slice(None)), ("two", slice(None, None, -1))):
        spec = make_spec("file://" + str(tmp_path / name))
        put_golden(spec)
        land(spec, "x.tsv", tsv_bytes(read_sst2("train", limit=60)[order]))
        ids.append(run_ingest(spec)["snapshot_id"])
    assert ids[0] == ids[1]


def test_every_quarantine_reason(root):
    spec = make_spec(root, data={"max_text_chars": 300, "max_bad_fraction": 0.3})
    put_golden(spec)
    good = read_sst2("train", limit=120)
    land(spec, "good.tsv", tsv_bytes(good))
    bad_tsv = (
        b"sentence\tlabel\n"
        b"a fine film\t1\n"                       # line 2: good
        b"   \t1\n"                                # line 3: whitespace text
        b"\t0\n"                                   # line 4: empty text
        + b"x" * 400 + b"\t1\n"                    # line 5: too long
        b"a film with a weird label\tneutral\n"    # line 6: unknown label
        b"a film with no label\t\n"                # line 7: missing label
        b"one\ttwo\tthree\n"                       # line 8: malformed (3 fields)
        b"caf\xe9 latte is bad\t0\n"               # line 9: latin-1 byte, undecodable
        b"the same text twice\t1\n"                # line 10: conflict
        b"the  same text twice \t0\n"              # line 11: conflict after normalization
    )
    land(spec, "bad.tsv", bad_tsv)
    land(spec, "rows.jsonl", b'{"sentence": "json row ok", "label": "positive"}\n'
                             b'{"sentence": "broken json\n'
                             b'["not", "an", "object"]\n'
                             b'{"text": "wrong field", "label": 1}\n')
    land(spec, "rows.csv", b'sentence,label\n"a quoted, comma text",0\n"only one field"\n')
    land(spec, "rows.parquet", parquet_bytes({"sentence": ["parquet row ok", None], "label": [1, 0]}))
    land(spec, "broken.parquet", b"PAR1 this is not parquet")
    land(spec, "nolabel.csv", b"sentence,stars\nnice,5\n")
    land(spec, "notes.xml", b"<a/>")

    result = run_ingest(spec)
    rows = quarantined(result)
    by_reason = {}
    for row in rows:
        by_reason.setdefault(row["reason"], []).append((row["source"], row["line"]))
    summary = quarantine_summary(result)
    for f in summary["whole_files"]:
        by_reason.setdefault(f["reason"], []).append((f["key"], None))
    assert by_reason[validation.EMPTY_TEXT] == [("bad.tsv", 3), ("bad.tsv", 4), ("rows.parquet", 2)]
    assert by_reason[validation.TEXT_TOO_LONG] == [("bad.tsv", 5)]
    assert by_reason[validation.UNKNOWN_LABEL] == [("bad.tsv", 6)]
    assert by_reason[validation.MISSING_LABEL] == [("bad.tsv", 7)]
    assert sorted(by_reason[validation.MALFORMED]) == [("bad.tsv", 8), ("rows.csv", 3), ("rows.jsonl", 2),
                                                   ("rows.jsonl", 3), ("rows.jsonl", 4)]
    assert by_reason[validation.UNDECODABLE] == [("bad.tsv", 9)]
    assert by_reason[validation.CONFLICTING] == [("bad.tsv", 10), ("bad.tsv", 11)]
    assert sorted(by_reason[validation.UNPARSEABLE_FILE]) == [("broken.parquet", None), ("nolabel.csv", None)]
    assert by_reason[validation.UNSUPPORTED_FORMAT] == [("notes.xml", None)]
    assert result["quarantine_reasons"] == {k: len(v) for k, v in by_reason.items()}
    assert summary["rows"] == result["quarantined_rows"] == len(rows) == 14
    assert summary["files"] == result["quarantined_files"] == 3
    assert result["rows_read"] == (result["new_rows"] + result["quarantined_rows"] + result["duplicates_removed"]
                                   + result["contaminated_removed"])
    broken = next(f for f in summary["whole_files"] if f["key"] == "broken.parquet")
    assert broken["bytes"] == len(b"PAR1 this is not parquet") and broken["copy"] == "files/broken.parquet"
    undecodable = next(r for r in rows if r["reason"] == validation.UNDECODABLE)
    assert "\\xe9" in undecodable["raw"]
    # Whole files are kept byte for byte.
    copy = storage.join(result["quarantine_uri"], "files", "broken.parquet")
    assert storage.read_bytes(copy) == b"PAR1 this is not parquet"

    texts = set(snapshots.read_snapshot(result["snapshot_uri"])["text"])
    assert {"a fine film", "json row ok", "a quoted, comma text", "parquet row ok"} <= texts
    assert not any("same text twice" in t for t in texts)
    assert result["new_rows"] == len(good) + 4

    # A later row that contradicts a stored label is a conflict too; the stored row stays as it was.
    land(spec, "later.tsv", tsv_bytes([(good[0][0], 1 - good[0][1])] + read_sst2("train", limit=20, offset=500)))
    later = run_ingest(spec)
    assert [(r["reason"], r["line"]) for r in quarantined(later)] == [(validation.CONFLICTING, 2)]
    assert "previous snapshot" in quarantined(later)[0]["detail"]


def test_too_many_bad_rows_fails_and_commits_nothing(root):
    spec = make_spec(root, data={"max_bad_fraction": 0.2})
    put_golden(spec)
    rows = read_sst2("train", limit=30) + [("", 1)] * 10 + [("some text", "maybe")] * 5
    land(spec, "mostly_bad.tsv", tsv_bytes(rows))
    with pytest.raises(DataRejected, match=r"15 of 45 rows are bad .*nothing was committed"):
        run_ingest(spec)
    assert storage.list_objects(spec.layout.snapshots) == []
    assert storage.list_objects(spec.layout.quarantine) == []


def test_long_texts_name_the_setting_that_admits_them(tmp_path):
    """Long documents (man pages, licenses) over data.max_text_chars: the rejection names the setting, not only
    "fix the file", for the golden set and for landed rows, on the clean pyarrow path and the Python one."""
    spec = make_spec("file://" + str(tmp_path / "s"), data={"max_text_chars": 300})
    long_rows = [(f"document {i} " + "word " * 100, i % 2) for i in range(5)]
    put_golden(spec, long_rows)
    with pytest.raises(DataRejected, match=r"text_too_long \(5\d\d characters > data\.max_text_chars 300\)"):
        run_ingest(spec)

    spec = make_spec("file://" + str(tmp_path / "t"), data={"max_text_chars": 300, "max_bad_fraction": 0.5})
    put_golden(spec)
    land(spec, "clean.tsv", tsv_bytes(read_sst2("train", limit=20) + long_rows[:1]))
    # a latin-1 byte sends this file's piece through the Python reader
    land(spec, "mixed.tsv", tsv_bytes(read_sst2("train", limit=20, offset=20) + long_rows[1:2]) + b"caf\xe9\t0\n")
    details = {row["source"]: row["detail"] for row in quarantined(run_ingest(spec))
               if row["reason"] == validation.TEXT_TOO_LONG}
    assert details == {"clean.tsv": "510 characters > data.max_text_chars 300",
                       "mixed.tsv": "510 characters > data.max_text_chars 300"}


def test_golden_source_missing_is_a_clear_error(root):
    spec = make_spec(root)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=10)))
    with pytest.raises(DataRejected, match="golden set is not frozen yet and its source .* does not exist"):
        run_ingest(spec)


def test_no_data_at_all_is_a_clear_error(tmp_path):
    spec = make_spec("file://" + str(tmp_path / "s"))
    put_golden(spec)
    with pytest.raises(DataRejected, match="no data yet"):
        run_ingest(spec)


def test_golden_is_frozen_once(tmp_path):
    spec = make_spec("file://" + str(tmp_path / "s"))
    put_golden(spec, read_sst2("dev", limit=20))
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=30)))
    first = run_ingest(spec)
    put_golden(spec, read_sst2("dev", limit=20, offset=100))  # the source changes later
    land(spec, "b.tsv", tsv_bytes(read_sst2("train", limit=30, offset=30)))
    second = run_ingest(spec)
    assert second["golden_id"] == first["golden_id"]
    manifest = storage.read_json(storage.join(first["golden_uri"], "manifest.json"))
    assert manifest["rows"] == 20 and manifest["golden_id"] == first["golden_id"]


def test_split_is_stable_across_versions(tmp_path):
    spec = make_spec("file://" + str(tmp_path / "s"), data={"holdout_fraction": 0.2})
    put_golden(spec)
    rows = read_sst2("train", limit=400, offset=1000)
    land(spec, "a.tsv", tsv_bytes(rows[:250]))
    v1 = snapshots.read_snapshot(run_ingest(spec)["snapshot_uri"])
    land(spec, "b.tsv", tsv_bytes(rows[150:]))
    v2 = snapshots.read_snapshot(run_ingest(spec)["snapshot_uri"])
    split_v1 = dict(zip(v1["text"], v1["split"]))
    split_v2 = dict(zip(v2["text"], v2["split"]))
    assert len(v2) > len(v1) and all(split_v2[t] == s for t, s in split_v1.items())
    assert all(split_of(t, 0.2) == s for t, s in split_v2.items())
    share = (v2["split"] == "holdout").mean()
    assert 0.12 < share < 0.28, share


def test_cli_writes_result_and_xcom(tmp_path):
    spec = make_spec("file://" + str(tmp_path / "s"))
    put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=40)))
    run_uri = run_folder(spec)
    xcom = tmp_path / "xcom.json"
    env = {**os.environ, "RETRAIN_XCOM_PATH": str(xcom), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tasks", "ingest", "--run", run_uri], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(xcom.read_text())
    for key in ("snapshot_id", "snapshot_uri", "changed", "total_rows", "new_rows", "quarantined_rows",
                "duplicates_removed", "contaminated_removed", "golden_uri", "golden_id", "files_ingested"):
        assert key in result, key
    assert result["changed"] is True and result["total_rows"] == 40

    storage.write_bytes(storage.join(spec.layout.landing, "z.tsv"), tsv_bytes([("", 1)] * 40))
    proc = subprocess.run([sys.executable, "-m", "tasks", "ingest", "--run", run_uri], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == DataRejected.kind.exit_code == 3, proc.stderr[-2000:]
    assert "error (data_rejected): batch rejected" in proc.stderr


@pytest.mark.parametrize("dies_before", ["latest.json", "batch record"])
def test_a_run_that_dies_midway_is_completed_by_the_next(dies_before, tmp_path, monkeypatch):
    spec = make_spec("file://" + str(tmp_path / "s"))
    put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=80)))
    real_write = storage.write_bytes
    target = "latest.json" if dies_before == "latest.json" else "/batches/"

    def crash(uri, data, **kwargs):
        if target in uri:
            raise ConnectionError("storage went away")
        return real_write(uri, data, **kwargs)

    monkeypatch.setattr(storage, "write_bytes", crash)
    with pytest.raises(ConnectionError):
        run_ingest(spec)
    monkeypatch.setattr(storage, "write_bytes", real_write)

    result = run_ingest(spec)
    assert result["changed"] is True and result["new_rows"] == result["total_rows"] == 80
    assert result["files_ingested"] == ["a.tsv"] and result["rows_read"] == 80 and result["files_count"] == 1
    assert result["snapshot_id"] == storage.read_json(storage.join(spec.layout.snapshots, "latest.json"))["snapshot_id"]
    manifests = [o for o in storage.list_objects(spec.layout.snapshots) if o.uri.endswith("manifest.json")]
    assert len(manifests) == 1
    assert run_ingest(spec)["changed"] is False  # and now the file counts as processed


class StaleFirstRead:
    """read_latest that returns what a concurrent run saw before the other run moved the pointer, then the truth."""

    def __init__(self, stale):
        self.stale, self.calls, self.real = stale, 0, snapshots.read_latest

    def __call__(self, snapshots_uri):
        self.calls += 1
        return self.stale if self.calls == 1 else self.real(snapshots_uri)


def test_concurrent_ingests_cannot_both_move_latest(tmp_path, monkeypatch):
    spec = make_spec("file://" + str(tmp_path / "s"))
    put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=50)))
    base = run_ingest(spec)
    land(spec, "b.tsv", tsv_bytes(read_sst2("train", limit=50, offset=50)))
    # Both runs read the same latest.json and the same unprocessed files.
    seen = snapshots.read_latest(spec.layout.snapshots)
    other = run_ingest(spec)  # the other run commits first
    a = next(o for o in storage.list_objects(spec.layout.landing) if o.uri.endswith("/a.tsv"))
    monkeypatch.setattr(snapshots, "processed_files", lambda s: [LandingFileRecord(key="a.tsv", etag=a.etag, size=a.size)])
    monkeypatch.setattr(snapshots, "read_latest", StaleFirstRead(seen))
    same = run_ingest(spec)  # same files on the same parent: the same snapshot, so this run ends unchanged
    assert same["changed"] is False and same["snapshot_id"] == other["snapshot_id"] != base["snapshot_id"]

    # Different data committed in between is an error that names the pointer; the pointer stays where it is.
    land(spec, "c.tsv", tsv_bytes(read_sst2("train", limit=50, offset=100)))
    monkeypatch.setattr(snapshots, "read_latest", StaleFirstRead(seen))
    # A transient conflict: retried (InfrastructureError), unlike a rejected batch.
    with pytest.raises(InfrastructureError, match="another ingest moved .*latest.json"):
        run_ingest(spec)
    assert storage.read_json(storage.join(spec.layout.snapshots, "latest.json"))["snapshot_id"] == other["snapshot_id"]


def test_readers_handle_bom_quoted_newlines_and_binary():
    rows = readers.read_rows('\ufeffsentence,label\n"two\nlines",1\nplain,0\n'.encode(), "csv", "sentence", "label")
    assert [(r.line, r.text, r.label) for r in rows] == [(3, "two\nlines", "1"), (4, "plain", "0")]
    with pytest.raises(readers.Unparseable, match="NUL"):
        readers.read_rows(b"sentence\tlabel\nab\x00cd\t1\n", "tsv", "sentence", "label")
    jsonl = readers.read_rows(b'{"sentence": "ok", "label": 1}\n\n{"sentence": "caf\xe9", "label": 0}\n', "jsonl",
                             "sentence", "label")
    assert [(r.line, r.problem) for r in jsonl] == [(1, None), (3, validation.UNDECODABLE)]


def test_label_map_aliases_names_and_numbers():
    labels = validation.LabelMap(["negative", "positive"], {"0": "negative", "1": "positive"})
    assert labels.lookup(1) == (1, None) and labels.lookup(1.0) == (1, None) and labels.lookup(" 0 ") == (0, None)
    assert labels.lookup("Positive") == (1, None)
    assert labels.lookup(None) == (None, validation.MISSING_LABEL)
    assert labels.lookup(float("nan"))[1] == validation.MISSING_LABEL
    assert labels.lookup("2") == (None, validation.UNKNOWN_LABEL)
