"""The landing zone cannot be tricked: symlinks are never followed, odd file names are handled, counts add up.

Real files in a real local landing folder (and moto's S3 for keys with odd characters); every case goes through
the stage's run_ingest, and the assertions read back what it stored.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
from pathlib import Path

import pytest

from conftest import read_sst2
from data_helpers import land, make_spec, put_golden, tsv_bytes
from tasks import storage
from tasks.data import landing, snapshots, validation
from tasks.data.ingest import run_ingest

SECRET_ROW = "the secret sentence that must never be ingested"
SECRET_TEXT = b"sentence\tlabel\nTOP-SECRET-API-KEY=hunter2\n"


def local_spec(tmp_path: Path, **overrides):
    spec = make_spec("file://" + str(tmp_path / "store"), **overrides)
    put_golden(spec)
    folder = storage.local_path(spec.layout.landing)
    folder.mkdir(parents=True, exist_ok=True)
    return spec, os.fsencode(str(folder))


def write(folder: bytes, name: bytes, data: bytes) -> None:
    with open(os.path.join(folder, name), "wb") as fh:
        fh.write(data)


def summary_of(result: dict) -> dict:
    return storage.read_json(storage.join(result["quarantine_uri"], "summary.json"))


def quarantined_rows(result: dict) -> list[dict]:
    text = storage.read_text(storage.join(result["quarantine_uri"], "rows.jsonl"))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def every_stored_byte(root: Path) -> bytes:
    """Everything the pipeline stored under its root, file contents and names, as one blob to search."""
    blob = []
    for folder, _, names in os.walk(os.fsencode(str(root))):
        for name in names:
            path = os.path.join(folder, name)
            blob.append(path)
            if not os.path.islink(path):
                with open(path, "rb") as fh:
                    blob.append(fh.read())
    return b"\n".join(blob)


def assert_counts_add_up(result: dict) -> None:
    assert result["rows_read"] == (result["new_rows"] + result["quarantined_rows"] + result["duplicates_removed"]
                                   + result["contaminated_removed"]), result
    assert result["files_count"] == result["files_read"] + result["quarantined_files"] + result["empty_files"], result
    if result["quarantine_uri"]:
        summary = summary_of(result)
        assert summary["rows"] == result["quarantined_rows"] == len(quarantined_rows(result))
        assert summary["files"] == result["quarantined_files"] == len(summary["whole_files"])
        merged = {**summary["by_reason"], **summary["file_reasons"]}
        assert merged == result["quarantine_reasons"]


def test_symlinks_out_of_the_folder_are_never_followed(tmp_path):
    spec, folder = local_spec(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "rows.tsv").write_bytes(tsv_bytes([(SECRET_ROW, 1)] * 3))
    (outside / "secret.txt").write_bytes(SECRET_TEXT)
    os.symlink(outside / "rows.tsv", os.path.join(folder, b"linked_rows.tsv"))
    os.symlink(outside / "secret.txt", os.path.join(folder, b"linked_secret.tsv"))
    os.symlink(outside, os.path.join(folder, b"linked_folder"))
    good = read_sst2("train", limit=30)
    write(folder, b"good.tsv", tsv_bytes(good))

    result = run_ingest(spec)
    assert result["changed"] and result["new_rows"] == 30 and result["files_ingested"] == ["good.tsv"]
    texts = set(snapshots.read_snapshot(result["snapshot_uri"])["text"])
    assert SECRET_ROW not in texts and len(texts) == 30
    summary = summary_of(result)
    links = {f["key"]: f for f in summary["whole_files"]}
    assert set(links) == {"linked_rows.tsv", "linked_secret.tsv", "linked_folder"}
    for entry in links.values():
        assert entry["reason"] == validation.SYMLINK and entry["copy"] is None
        assert entry["detail"].startswith("symlink: not followed") and "outside" in entry["detail"]
    assert result["quarantine_reasons"] == {validation.SYMLINK: 3} and result["quarantined_rows"] == 0
    assert_counts_add_up(result)
    # Nothing of either target is anywhere in what the pipeline stored: not the rows, not the secret, not a path.
    stored = every_stored_byte(tmp_path / "store")
    assert SECRET_ROW.encode() not in stored and b"hunter2" not in stored and b"TOP-SECRET" not in stored
    assert str(outside).encode() not in stored

    again = run_ingest(spec)  # the links are recorded with the batch: reported once, not on every run
    assert again["changed"] is False and again["reason"] == "no new landing files"


def test_symlink_inside_the_folder_is_not_followed_either(tmp_path):
    spec, folder = local_spec(tmp_path)
    rows = read_sst2("train", limit=25)
    write(folder, b"real.tsv", tsv_bytes(rows))
    os.symlink(b"real.tsv", os.path.join(folder, b"alias.tsv"))

    result = run_ingest(spec)
    assert result["files_ingested"] == ["real.tsv"] and result["new_rows"] == 25
    assert result["duplicates_removed"] == 0  # the alias was not read (it would have given 25 duplicates)
    (entry,) = summary_of(result)["whole_files"]
    assert entry["key"] == "alias.tsv" and entry["reason"] == validation.SYMLINK and "inside" in entry["detail"]
    assert_counts_add_up(result)


def test_a_file_swapped_for_a_symlink_after_the_listing_is_refused(tmp_path):
    spec, folder = local_spec(tmp_path)
    (tmp_path / "secret.txt").write_bytes(SECRET_TEXT)
    write(folder, b"a.tsv", tsv_bytes(read_sst2("train", limit=5)))
    (listed,) = landing.list_landing(spec.layout.landing)
    assert listed.problem is None
    os.unlink(os.path.join(folder, b"a.tsv"))
    os.symlink(tmp_path / "secret.txt", os.path.join(folder, b"a.tsv"))
    with pytest.raises(landing.LandingRefused) as refused:
        landing.read_file(spec.layout.landing, listed)
    assert refused.value.reason == validation.SYMLINK and "hunter2" not in str(refused.value)


ODD_NAMES = {
    b"caf\xe9-latin1.tsv": "caf\\xe9-latin1.tsv",  # not UTF-8
    b"two\nlines.tsv": "two\\nlines.tsv",
    b"bell\x07esc\x1b[31m\ttab.tsv": "bell\\x07esc\\x1b[31m\\ttab.tsv",
    "rtl\u202eexe.tsv".encode(): "rtl\\u202eexe.tsv",  # a right-to-left override that would hide the extension
    "caf\u00e9 \U0001f600.tsv".encode(): "caf\u00e9 \U0001f600.tsv",  # printable UTF-8 stays as it is
    b"back\\slash.tsv": "back\\\\slash.tsv",
    b"n" * 251 + b".tsv": "n" * 251 + ".tsv",  # 255 bytes, the longest name the file system takes
}


def test_any_file_name_is_ingested_or_quarantined_under_an_escaped_name(tmp_path):
    spec, folder = local_spec(tmp_path)
    rows = read_sst2("train", limit=len(ODD_NAMES) * 10)
    for i, name in enumerate(ODD_NAMES):
        # Ten good rows and one bad row (unknown label) per file: the bad row makes the quarantine name the file.
        write(folder, name, tsv_bytes(rows[i * 10:(i + 1) * 10] + [(f"odd label row {i}", "neutral")]))
    long_bad = b"x" * 251 + b".xml"
    write(folder, long_bad, b"<not data/>\n")

    result = run_ingest(spec)
    assert sorted(result["files_ingested"]) == sorted(ODD_NAMES.values())
    assert result["new_rows"] == len(rows) and result["quarantined_rows"] == len(ODD_NAMES)
    sources = sorted(r["source"] for r in quarantined_rows(result))
    assert sources == sorted(ODD_NAMES.values())
    assert all(r["reason"] == validation.UNKNOWN_LABEL for r in quarantined_rows(result))
    manifest = snapshots.read_manifest(result["snapshot_uri"])
    assert set(ODD_NAMES.values()) <= set(manifest.sources)
    # The 255-byte unsupported file is copied whole, under a shortened name that the summary gives.
    (whole,) = summary_of(result)["whole_files"]
    assert whole["key"] == long_bad.decode() and whole["reason"] == validation.UNSUPPORTED_FORMAT
    assert whole["bytes"] == len(b"<not data/>\n") and whole["lines"] == 1
    assert storage.read_bytes(storage.join(result["quarantine_uri"], whole["copy"])) == b"<not data/>\n"
    assert_counts_add_up(result)

    again = run_ingest(spec)  # every odd name counts as processed: nothing is read again, nothing vanished
    assert again["changed"] is False and again["reason"] == "no new landing files"


def test_odd_keys_on_s3(s3_env):
    import boto3

    spec = make_spec(s3_env + "/retrain")
    put_golden(spec)
    rows = read_sst2("train", limit=30)
    # (A newline or tab in a key does not survive the HTTP client's URL handling, so it cannot land on S3.)
    land(spec, "day 1/50% back\\slash.tsv", tsv_bytes(rows[:10]))
    land(spec, "day 1/rtl\u202e.tsv", tsv_bytes(rows[10:20] + [("", 1)]))
    land(spec, "day 1/_SUCCESS", b"")  # a marker: skipped
    # A key with '#' (a URI fragment to a URL parser) uploaded by another client is read like any other.
    bucket, prefix = spec.layout.landing[len("s3://"):].split("/", 1)
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).put_object(
        Bucket=bucket, Key=f"{prefix}/day 1/hash#1.tsv", Body=tsv_bytes(rows[20:]))

    result = run_ingest(spec)
    ingested = set(result["files_ingested"])
    assert {"day 1/50% back\\\\slash.tsv", "day 1/rtl\\u202e.tsv"} <= ingested
    assert [r["source"] for r in quarantined_rows(result)] == ["day 1/rtl\\u202e.tsv"]
    assert "day 1/hash#1.tsv" in ingested and result["new_rows"] == 30
    assert_counts_add_up(result)


def test_an_empty_file_is_reported_as_empty_not_as_a_bad_row(tmp_path):
    spec, folder = local_spec(tmp_path, data={"max_bad_fraction": 0.0})
    write(folder, b"good.tsv", tsv_bytes(read_sst2("train", limit=20)))
    write(folder, b"empty.tsv", b"")
    write(folder, b"empty.jsonl.gz", gzip.compress(b""))  # zero bytes once decompressed

    result = run_ingest(spec)  # with max_bad_fraction 0, one bad row would have rejected the batch
    assert result["changed"] and result["new_rows"] == 20
    assert result["empty_files"] == 2 and sorted(result["empty_file_keys"]) == ["empty.jsonl.gz", "empty.tsv"]
    assert result["quarantined_rows"] == result["quarantined_files"] == 0 and result["quarantine_uri"] is None
    assert_counts_add_up(result)
    assert run_ingest(spec)["changed"] is False  # processed, like any other file


def test_gzip_files_are_read_and_weighed_by_their_content(tmp_path):
    spec, folder = local_spec(tmp_path, data={"max_bad_fraction": 0.1})
    rows = read_sst2("train", limit=60)
    write(folder, b"day1.tsv.gz", gzip.compress(tsv_bytes(rows[:40])))
    # Corrupt gzip bytes with many newline bytes in them: it weighs one unreadable file, not 80 "lines".
    broken = b"\x1f\x8b\x08\x00" + b"\n" * 80
    write(folder, b"broken.tsv.gz", broken)
    write(folder, b"notes.xml.gz", gzip.compress(b"<a>\n<b>\n<c>\n"))

    result = run_ingest(spec)
    assert result["new_rows"] == 40 and result["files_ingested"] == ["day1.tsv.gz"]
    files = {f["key"]: f for f in summary_of(result)["whole_files"]}
    assert files["broken.tsv.gz"]["reason"] == validation.UNPARSEABLE_FILE
    assert files["broken.tsv.gz"]["bytes"] == len(broken) and files["broken.tsv.gz"]["lines"] == 0
    assert files["notes.xml.gz"]["reason"] == validation.UNSUPPORTED_FORMAT and files["notes.xml.gz"]["lines"] == 3
    assert storage.read_bytes(storage.join(result["quarantine_uri"], files["broken.tsv.gz"]["copy"])) == broken
    assert_counts_add_up(result)


def test_a_fifo_is_reported_and_never_opened(tmp_path):
    spec, folder = local_spec(tmp_path)
    write(folder, b"good.tsv", tsv_bytes(read_sst2("train", limit=10)))
    os.mkfifo(os.path.join(folder, b"pipe.tsv"))
    done = threading.Event()
    outcome = {}

    def ingest():
        outcome["result"] = run_ingest(spec)
        done.set()

    threading.Thread(target=ingest, daemon=True).start()
    assert done.wait(60), "ingest blocked on a FIFO"
    (entry,) = summary_of(outcome["result"])["whole_files"]
    assert entry["key"] == "pipe.tsv" and entry["reason"] == validation.NOT_REGULAR and "FIFO" in entry["detail"]


def test_counts_add_up_in_a_mixed_batch(tmp_path):
    spec, folder = local_spec(tmp_path, data={"max_bad_fraction": 0.4})
    golden = put_golden(spec)
    rows = read_sst2("train", limit=50)
    write(folder, b"a.tsv", tsv_bytes(rows[:30] + rows[:5] + golden[:2] + [("", 1), ("x", "maybe")]))
    write(folder, b"b.jsonl", b'{"sentence": "a jsonl row", "label": 1}\n{broken\n')
    write(folder, b"c.csv", b"sentence,stars\nnice,5\n")  # lacks the label column: whole file
    write(folder, b"d.tsv", b"")
    os.symlink(b"a.tsv", os.path.join(folder, b"e.tsv"))

    first = run_ingest(spec)
    assert (first["rows_read"], first["new_rows"], first["duplicates_removed"], first["contaminated_removed"],
            first["quarantined_rows"]) == (41, 31, 5, 2, 3)
    assert (first["files_count"], first["files_read"], first["quarantined_files"], first["empty_files"]) == (5, 2, 2, 1)
    assert_counts_add_up(first)
    result_json = storage.read_json(storage.join(first["quarantine_uri"], "summary.json"))
    assert result_json["file_reasons"] == {validation.UNPARSEABLE_FILE: 1, validation.SYMLINK: 1}

    write(folder, b"f.tsv", tsv_bytes(rows[25:50]))  # 5 known rows, 20 new
    second = run_ingest(spec)
    assert (second["rows_read"], second["new_rows"], second["duplicates_removed"]) == (25, 20, 5)
    assert_counts_add_up(second)


def test_recorded_local_files_are_not_read_again_unless_name_size_or_mtime_changed(tmp_path, monkeypatch):
    """A local landing folder's file is read (MD5) once: later ingests take the batch record's ETag for a file
    whose key, size and mtime are unchanged (rsync's quick check). A touched file is read again and, with the same
    content, is still processed; a grown file is new."""
    spec, folder = local_spec(tmp_path)
    write(folder, b"a.tsv", tsv_bytes(read_sst2("train", limit=20)))
    write(folder, b"b.tsv", tsv_bytes(read_sst2("train", limit=20, offset=20)))
    first = run_ingest(spec)
    assert sorted(first["files_ingested"]) == ["a.tsv", "b.tsv"]

    hashed = []
    real_digest = landing.hashlib.file_digest
    monkeypatch.setattr(landing.hashlib, "file_digest", lambda fh, algo: hashed.append(fh.name) or real_digest(fh, algo))
    assert run_ingest(spec)["changed"] is False and hashed == []  # nothing read to tell that nothing is new

    path_b = os.path.join(folder, b"b.tsv")
    os.utime(path_b, ns=(os.stat(path_b).st_atime_ns, os.stat(path_b).st_mtime_ns + 5_000_000_000))  # touched
    assert run_ingest(spec)["changed"] is False and len(hashed) == 1  # b read once: same content, processed

    with open(os.path.join(folder, b"a.tsv"), "ab") as fh:
        fh.write(tsv_bytes(read_sst2("train", limit=5, offset=40)).split(b"\n", 1)[1])
    grown = run_ingest(spec)
    assert grown["files_ingested"] == ["a.tsv"] and grown["new_rows"] == 5
