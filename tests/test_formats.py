"""Every landing format carries hostile texts byte for byte, and a file that does not parse cleanly under its
pipeline's settings is quarantined with the reason.

The files are written by the standard producers (csv.writer, json.dumps, pandas/pyarrow, gzip), the way a
labeling tool would write them; the snapshot must hold exactly normalize_text(original) for every row.
"""

from __future__ import annotations

import csv
import gzip
import io
import json

import pytest

from data_helpers import land, make_spec, parquet_bytes, put_golden
from tasks import storage
from tasks.data import snapshots, validation
from tasks.data.ingest import run_ingest
from tasks.data.validation import normalize_text

# Texts a TSV without quoting can carry (no tab, no line break) ...
PLAIN_HOSTILE = [
    'He said "hi" and left',
    '""',
    '"starts with a quote',
    'ends with a quote"',
    'a "" doubled quote pair',
    "a, comma; and 'single' quotes",
    "back\\slash and a literal \\n and \\t",
    "emoji \U0001f600 and a family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\u05e2\u05d1\u05e8\u05d9\u05ea \u0645\u0631\u062d\u0628\u0627 right-to-left \u202eoverride\u202c",
    "Cafe\u0301 composed to NFC",
    "line\u2028separator and next\u0085line inside one row",
    " ".join(["long"] * 300),  # 1,499 characters
    "<b>markup</b> & {json: [1, 2]}",
]
# ... and texts only a quoting format can carry.
STRUCTURAL = ["a tab\tinside", "a new\nline inside", "a windows\r\nline break", "\ttab-led and trailing\t"]


def rows_for(texts: list[str]) -> list[tuple[str, int]]:
    return [(text, i % 2) for i, text in enumerate(texts)]


def delimited(rows, delimiter: str) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(["sentence", "label"])
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def plain_tsv(rows) -> bytes:
    return ("sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows)).encode("utf-8")


def jsonl(rows) -> bytes:
    return "".join(json.dumps({"sentence": t, "label": label}, ensure_ascii=False) + "\n"
                   for t, label in rows).encode("utf-8")


def parquet(rows) -> bytes:
    return parquet_bytes({"sentence": [t for t, _ in rows], "label": [label for _, label in rows]})


# (name, file suffix, writer, data.tsv_quoting, texts)
FORMATS = [
    ("tsv-plain", ".tsv", plain_tsv, "none", PLAIN_HOSTILE),
    ("tsv-rfc4180", ".tsv", lambda rows: delimited(rows, "\t"), "rfc4180", PLAIN_HOSTILE + STRUCTURAL),
    ("csv", ".csv", lambda rows: delimited(rows, ","), "none", PLAIN_HOSTILE + STRUCTURAL),
    ("jsonl", ".jsonl", jsonl, "none", PLAIN_HOSTILE + STRUCTURAL),
    ("parquet", ".parquet", parquet, "none", PLAIN_HOSTILE + STRUCTURAL),
]


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("name, suffix, write, quoting, texts", FORMATS, ids=[f[0] for f in FORMATS])
def test_hostile_texts_land_byte_exact_in_every_format(name, suffix, write, quoting, texts, gz, tmp_path):
    spec = make_spec("file://" + str(tmp_path / "store"), data={"tsv_quoting": quoting})
    put_golden(spec)
    rows = rows_for(texts)
    data = write(rows)
    land(spec, "hostile" + suffix + (".gz" if gz else ""), gzip.compress(data) if gz else data)

    result = run_ingest(spec)
    assert result["quarantined_rows"] == result["quarantined_files"] == 0, result["quarantine_reasons"]
    frame = snapshots.read_snapshot(result["snapshot_uri"])
    stored = dict(zip(frame["text"], frame["label"].astype(int)))
    expected = {normalize_text(t): label for t, label in rows}
    assert stored == expected  # exact strings, so exact UTF-8 bytes
    assert "Caf\u00e9 composed to NFC" in stored and " ".join(["long"] * 300) in stored


def test_quoted_tsv_under_a_plain_tsv_pipeline_is_quarantined_row_by_row(tmp_path):
    spec = make_spec("file://" + str(tmp_path / "store"), data={"tsv_quoting": "none", "max_bad_fraction": 0.5})
    put_golden(spec)
    rows = rows_for(["a plain row", "another plain row", "a tab\tinside", "ok again"])
    land(spec, "quoted.tsv", delimited(rows, "\t"))
    result = run_ingest(spec)
    (bad,) = storage.read_text(storage.join(result["quarantine_uri"], "rows.jsonl")).splitlines()
    assert json.loads(bad)["reason"] == validation.MALFORMED and "got 3" in json.loads(bad)["detail"]
    assert set(snapshots.read_snapshot(result["snapshot_uri"])["text"]) == {"a plain row", "another plain row",
                                                                            "ok again"}


@pytest.mark.parametrize("quoting, suffix, body", [
    ("rfc4180", ".tsv", b'sentence\tlabel\n"never closed\t1\nnext row\t0\n'),
    ("rfc4180", ".tsv", b'sentence\tlabel\n"closed" then junk\t1\n'),
    ("none", ".csv", b'sentence,label\n"never closed,1\nnext row,0\n'),
], ids=["tsv-unclosed", "tsv-junk-after-quote", "csv-unclosed"])
def test_a_file_that_does_not_parse_cleanly_is_quarantined_with_the_reason(quoting, suffix, body, tmp_path):
    spec = make_spec("file://" + str(tmp_path / "store"), data={"tsv_quoting": quoting})
    put_golden(spec)
    good = rows_for([f"good row number {i}" for i in range(20)])
    land(spec, "good.tsv", plain_tsv(good))
    land(spec, "bad" + suffix, body)
    result = run_ingest(spec)
    summary = storage.read_json(storage.join(result["quarantine_uri"], "summary.json"))
    (whole,) = summary["whole_files"]
    assert whole["key"] == "bad" + suffix and whole["reason"] == validation.UNPARSEABLE_FILE
    assert "CSV error near line" in whole["detail"]
    assert storage.read_bytes(storage.join(result["quarantine_uri"], whole["copy"])) == body
    # Nothing of the bad file slipped into the snapshot as a swallowed multi-line field.
    assert set(snapshots.read_snapshot(result["snapshot_uri"])["text"]) == {t for t, _ in good}
