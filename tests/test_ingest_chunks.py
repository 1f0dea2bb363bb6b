"""The chunked ingest path gives exactly what the whole-file Python readers give.

The stage reads landed files piece by piece (pyarrow where a piece is clean, the Python readers where it is not),
validates, normalizes and hashes a chunk at a time, and decides dedup on hashes a partition at a time. These tests
hold it to the Python reference (readers.read_rows + validation.validate, which parse a whole file in memory) with
tiny pieces, so that piece boundaries fall everywhere and fast and fallback pieces mix; and they check the pieces
that stay the same for stored data: sha256 splits, normalization, snapshot ids, dedup against an older snapshot.
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from conftest import read_sst2
from data_helpers import land, make_spec, parquet_bytes, put_golden, tsv_bytes
from tasks import storage
from tasks.data import ingest, readers, snapshots, validation
from tasks.data.ingest import run_ingest
from tasks.data.snapshots import split_of
from tasks.data.validation import normalize_text

LABELS = validation.LabelMap(["negative", "positive"], {"0": "negative", "1": "positive"})
MAX_CHARS = 300

HOSTILE = [
    'He said "hi" and left', '""', '"starts with a quote', 'ends with a quote"', "a, comma; and 'single' quotes",
    "back\\slash and a literal \\n", "emoji \U0001f600 and a family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\u05e2\u05d1\u05e8\u05d9\u05ea right-to-left \u202eoverride\u202c", "Cafe\u0301 composed to NFC",
    "line\u2028separator and next\u0085line", "  leading and trailing  ", "inner   runs \x0b of \x0c space",
    "unit\x1fseparator\x1cfile", "nbsp\u00a0and\u3000ideographic", "plain ascii text", "x" * 301,
    "\u200b\u200d", " \ufeff\u2060 ",  # only invisible characters: empty
]


def reference(data: bytes, fmt: str, quoting: str = "none", delimiter: str = ","):
    """The whole-file Python path: (good rows, bad rows)."""
    try:
        rows = readers.read_rows(data, fmt, "sentence", "label", tsv_quoting=quoting, csv_delimiter=delimiter)
    except readers.Unparseable as exc:
        return "unparseable", str(exc)
    good, bad = validation.validate("f", rows, LABELS, MAX_CHARS)
    return [(g.line, g.text, g.label) for g in good], [(b.line, b.reason, b.detail, b.raw) for b in bad]


def chunked(data: bytes, fmt: str, quoting: str = "none", delimiter: str = ","):
    """The stage's path: iter_chunks + validate_chunk."""
    good, bad = [], []
    try:
        for chunk in readers.iter_chunks(readers.Content(io.BytesIO(data), False), io.BytesIO(data), fmt, "sentence",
                                         "label", tsv_quoting=quoting, csv_delimiter=delimiter):
            g, b = validation.validate_chunk("f", chunk, LABELS, MAX_CHARS)
            good += list(zip(g.lines.tolist(), g.texts.to_pylist(), g.labels.tolist()))
            bad += [(x.line, x.reason, x.detail, x.raw) for x in b]
    except readers.Unparseable as exc:
        return "unparseable", str(exc)
    return good, bad


def written(rows, delimiter: str) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(["sentence", "label"])
    w.writerows(rows)
    return buf.getvalue().encode()


PLAIN_TSV = (
    "\ufeffsentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(HOSTILE))
    + "\n   \t1\n\t0\nweird label\tneutral\nno label\t\none\ttwo\tthree\nspaces label\t 1 \nnamed\tPositive\n"
    "crlf row\t1\r\n\r\nafter crlf\t0\r\nbare\rcr\t1\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(60))
    + "no final newline\t1"
).encode() + b"\ncaf\xe9 latin-1\t0\nafter it\t1\n"
QUOTED_ROWS = [(t, i % 2) for i, t in enumerate(HOSTILE + ["a tab\tinside", "a new\nline", "win\r\nbreak"])]
CASES = {
    "tsv-plain": (PLAIN_TSV, "tsv", "none", ","),
    "tsv-plain-quoted-file": (written(QUOTED_ROWS, "\t"), "tsv", "none", ","),
    "tsv-rfc4180": (written(QUOTED_ROWS, "\t") + b"only one field\n" + b"".join(b"r %d\t1\n" % i for i in range(40)),
                    "tsv", "rfc4180", ","),
    "csv": (written(QUOTED_ROWS, ",") + b'"only one field"\n' + b"".join(b"r %d,0\n" % i for i in range(40)),
            "csv", "none", ","),
    "csv-semicolon": (written(QUOTED_ROWS, ";"), "csv", "none", ";"),
    "csv-unclosed": (b'sentence,label\nok,1\n' + b"".join(b"r %d,0\n" % i for i in range(40))
                     + b'"never closed,1\nx,0\n', "csv", "none", ","),
    "csv-junk-after-quote": (b'sentence,label\nok,1\n"closed" junk,1\n', "csv", "none", ","),
    "csv-no-label-column": (b"sentence,stars\nnice,5\n", "csv", "none", ","),
    "tsv-nul": (b"sentence\tlabel\nfine\t1\n" * 30 + b"ab\x00cd\t1\n", "tsv", "none", ","),
    "jsonl": ("".join(json.dumps({"sentence": t, "label": i % 2}, ensure_ascii=i % 3 == 0) + "\n"
                      for i, t in enumerate(HOSTILE * 3)).encode()
              + b'\n{"sentence": "broken\n["an", "array"]\n{"text": "wrong field", "label": 1}\n'
              b'{"sentence": null, "label": 1}\n{"sentence": 5, "label": 1}\n{"sentence": "labels", "label": 1.0}\n'
              b'{"sentence": "bool label", "label": true}\n{"sentence": "list label", "label": [1]}\n'
              b'{"sentence": "no label"}\n{"sentence": "named", "label": "Positive"}\n'
              b'{"sentence": "crlf", "label": 0}\r\n{"sentence": "caf\xe9", "label": 0}\n'
              + b"".join(b'{"sentence": "row %d", "label": %d}\n' % (i, i % 2) for i in range(60)),
              "jsonl", "none", ","),
    "jsonl-clean": (b"".join(b'{"sentence": "row %d  x", "label": "%d"}\n' % (i, i % 2) for i in range(200)),
                    "jsonl", "none", ","),
    # Classic Mac line ends (a bare CR each), as "CSV (Macintosh)" exports write them; and a header line ending in
    # a bare CR before LF lines.
    "tsv-cr-lines": (PLAIN_TSV.split(b"\ncaf")[0].replace(b"\r\n", b"\n").replace(b"\n", b"\r"), "tsv", "none", ","),
    "csv-cr-lines": ((written(QUOTED_ROWS, ",") + b"bad label,neutral\n").replace(b"\n", b"\r"), "csv", "none", ","),
    "jsonl-cr-lines": (b"".join(b'{"sentence": "row %d", "label": %d}\r' % (i, i % 3) for i in range(50)),
                       "jsonl", "none", ","),
    "tsv-cr-header": (b"sentence\tlabel\rcr row\t1\rcr bad\t7\r" + b"".join(b"r %d\t1\n" % i for i in range(20)),
                      "tsv", "none", ","),
    "parquet": (parquet_bytes({"sentence": HOSTILE + [None, "  ", "ok"], "label": [1] * len(HOSTILE) + [0, 1, None]}),
                "parquet", "none", ","),
    # Strings written as bytes without the UTF8 annotation (older Hive/Impala jobs), one of them latin-1.
    "parquet-bytes-text": (parquet_bytes({"sentence": [b"plain", "caf\u00e9".encode(), b"caf\xe9", None],
                                          "label": [b"1", b"0", b"1", b"0"]}), "parquet", "none", ","),
    "parquet-int-text": (parquet_bytes({"sentence": [1, 2], "label": [0, 1]}), "parquet", "none", ","),
}


@pytest.mark.parametrize("piece_bytes", [37, 4 << 20], ids=["tiny-pieces", "default-pieces"])
@pytest.mark.parametrize("case", list(CASES))
def test_chunked_reading_equals_the_whole_file_python_reader(case, piece_bytes, monkeypatch):
    data, fmt, quoting, delimiter = CASES[case]
    monkeypatch.setattr(readers, "PIECE_BYTES", piece_bytes)
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 3 if piece_bytes < 100 else 65536)
    expected = reference(data, fmt, quoting, delimiter)
    assert chunked(data, fmt, quoting, delimiter) == expected
    if expected[0] != "unparseable":
        # Each case exercises good rows and bad ones (but for its one kind of row).
        assert (expected[0] or case == "parquet-int-text") and (expected[1] or case.endswith("clean"))


def test_clean_pieces_take_the_pyarrow_path_and_agree(monkeypatch):
    """The fast path really runs on clean TSV (so the equality above covers it), and falls back on a ragged row."""
    rows = [(f"row {i} with  two spaces ", i % 2) for i in range(50)]
    data = tsv_bytes(rows)
    chunks = list(readers.iter_chunks(readers.Content(io.BytesIO(data), False), None, "tsv", "sentence", "label"))
    assert all(not isinstance(c.labels, list) for c in chunks)  # arrow arrays, not Python rows
    ragged = data + b"a\tb\tc\n"
    chunks = list(readers.iter_chunks(readers.Content(io.BytesIO(ragged), False), None, "tsv", "sentence", "label"))
    assert isinstance(chunks[-1].labels, list) and chunks[-1].problems[0].problem == validation.MALFORMED
    assert chunked(ragged, "tsv") == reference(ragged, "tsv")
    data = CASES["jsonl-clean"][0]
    chunks = list(readers.iter_chunks(readers.Content(io.BytesIO(data), False), None, "jsonl", "sentence", "label"))
    assert all(not isinstance(c.labels, list) for c in chunks)


def test_vectorized_split_and_normalization_equal_the_per_row_functions():
    import pyarrow as pa

    texts = [normalize_text(t) for t in HOSTILE] + [t for t, _ in read_sst2("train", limit=3000)]
    texts = [t for t in texts if t]
    arr = pa.array(texts, pa.string())
    digests = snapshots.text_digests(arr)
    for fraction in (0.1, 0.2, 0.5):
        holdout = snapshots.holdout_mask(digests, fraction).tolist()
        assert holdout == [split_of(t, fraction) == "holdout" for t in texts]
    raw = HOSTILE + ["".join(chr(c) for c in range(1, 128)), " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f ", "", None,
                     "\u2000\u2001\u2002\u200a\u2028\u2029\u202f\u205f\u3000\u1680\x85\xa0 mixed \x1e end"]
    got = validation.normalize_array(pa.array(raw, pa.string())).to_pylist()
    assert got == [None if t is None else normalize_text(t) for t in raw]


def test_dedup_and_conflicts_are_the_same_in_many_hash_partitions(tmp_path, monkeypatch):
    """In the batch and against the previous snapshot: one partition or dozens give the same result."""
    rows = read_sst2("train", limit=400)
    first = rows[:300] + rows[:40] + [(t, 1 - y) for t, y in rows[100:110]] + [("  " + rows[5][0] + " ", rows[5][1])]
    second = rows[250:] + [(rows[0][0], 1 - rows[0][1])] + rows[350:360]
    results = []
    for name, partition_rows in (("one", 1 << 20), ("many", 7)):
        monkeypatch.setattr(ingest, "RESOLVE_ROWS", partition_rows)
        spec = make_spec("file://" + str(tmp_path / name), data={"max_bad_fraction": 0.5})
        put_golden(spec)
        seen = []
        for key, body in (("a.tsv", first), ("b.tsv", second)):
            land(spec, key, tsv_bytes(body))
            result = run_ingest(spec)
            bad = storage.read_text(storage.join(result["quarantine_uri"], "rows.jsonl")).splitlines()
            frame = snapshots.read_snapshot(result["snapshot_uri"])
            seen.append((result["snapshot_id"], result["duplicates_removed"], result["new_rows"],
                         [(json.loads(b)["line"], json.loads(b)["reason"], json.loads(b)["detail"]) for b in bad],
                         frame["text"].tolist()))
        results.append(seen)
    assert results[0] == results[1]
    (_, dups, new, bad, _), (_, dups2, new2, bad2, _) = results[0]
    assert (dups, new, len(bad)) == (41, 290, 20)
    assert (dups2, new2) == (50 + 10, 100) and [b[:2] for b in bad2] == [(152, validation.CONFLICTING)]
    assert "previous snapshot" in bad2[0][2]


def test_dedup_against_a_snapshot_written_before_text_hashes(tmp_path):
    """A parent whose parts lack the text_hash column (and whose manifest lacks the content sum) is hashed from
    its texts: duplicates and conflicts are found, and its rows count in the new snapshot."""
    spec = make_spec("file://" + str(tmp_path / "s"), data={"holdout_fraction": 0.2})
    put_golden(spec)
    rows = read_sst2("train", limit=200, offset=2000)
    old = [(normalize_text(t), y) for t, y in rows[:120]]
    frame_bytes = parquet_bytes({"text": [t for t, _ in old], "label": [y for _, y in old],
                                 "split": [split_of(t, 0.2) for t, _ in old], "batch": ["old"] * len(old)})
    where = spec.layout.snapshots
    storage.write_bytes(storage.join(where, "parts", "old.parquet"), frame_bytes)
    storage.write_json(storage.join(where, "s0", "manifest.json"), {"snapshot_id": "s0", "parts": ["parts/old.parquet"],
                                                                   "rows": len(old)})
    storage.write_json(storage.join(where, "latest.json"),
                       {"snapshot_id": "s0", "snapshot_uri": storage.join(where, "s0")})
    land(spec, "b.tsv", tsv_bytes(rows[100:] + [(rows[0][0], 1 - rows[0][1])]))
    result = run_ingest(spec)
    assert result["duplicates_removed"] == 20 and result["new_rows"] == 80 and result["total_rows"] == 200
    assert result["quarantine_reasons"] == {validation.CONFLICTING: 1}
    frame = snapshots.read_snapshot(result["snapshot_uri"])
    assert list(frame.columns) == snapshots.COLUMNS and len(frame) == 200
    assert all(split_of(t, 0.2) == s for t, s in zip(frame["text"], frame["split"]))
    manifest = snapshots.read_manifest(result["snapshot_uri"])
    assert sum(manifest.label_counts.values()) == 200 and sum(manifest.split_counts.values()) == 200
    assert manifest.split_counts["holdout"] == int((frame["split"] == "holdout").sum())


def test_snapshot_id_depends_on_the_rows_not_on_how_they_were_batched(tmp_path):
    """The content sum adds up part by part: one batch of all rows, or two batches, give the same id."""
    rows = read_sst2("train", limit=120, offset=4000)
    one = make_spec("file://" + str(tmp_path / "one"))
    put_golden(one)
    land(one, "all.tsv", tsv_bytes(rows))
    two = make_spec("file://" + str(tmp_path / "two"))
    put_golden(two)
    land(two, "first.tsv", tsv_bytes(rows[:50]))
    first = run_ingest(two)
    land(two, "second.tsv", tsv_bytes(rows[30:]))
    second = run_ingest(two)
    assert run_ingest(one)["snapshot_id"] == second["snapshot_id"] != first["snapshot_id"]
