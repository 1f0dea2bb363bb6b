"""A new user's own dataset: a 20-class spec written from scratch, labels as people write them, files as tools write
them (column names in another case, markers and uploads in progress in the landing folder, a file still being
written). Every case goes through the real stage (``python -m tasks ingest``'s main or run_ingest) on a real local
landing folder, and the assertions read back what it stored.
"""

from __future__ import annotations

import json
import os
import unicodedata

import pytest

from conftest import read_sst2
from data_helpers import land, make_spec, parquet_bytes, put, run_folder
from tasks import storage
from tasks.data import ingest, landing, snapshots, validation
from tasks.data.ingest import run_ingest
from tasks.spec import load_spec

# Spaces, case, accents, scripts, an emoji (outside the BMP), punctuation that is a delimiter elsewhere.
LABELS = ["Very Positive", "very negative", "Ça va", "naïve café", "日本語", "emoji \U0001f389", "Label 7",
          "mixed Case", "a/b", "x-y", "under_score", "trailing.dot", "Q&A", "100%", "first, second", "semi;colon",
          "tab free", "Zürich", "Ελληνικά", "last one"]


def twenty_class_spec(tmp_path, **data):
    rows = read_sst2("dev", limit=60)
    spec = make_spec("file://" + str(tmp_path / "store"),
                     data={"text_column": "text", "label_column": "label", "labels": LABELS, "label_aliases": {},
                           **data},
                     golden={"source_uri": "{storage}/reference/{name}/golden.jsonl"})
    put(spec.golden.source_uri, "".join(json.dumps({"text": t, "label": LABELS[i % 20]}, ensure_ascii=False) + "\n"
                                        for i, (t, _) in enumerate(rows)))
    return spec


def texts(n: int, offset: int = 0) -> list[str]:
    return [t for t, _ in read_sst2("train", limit=n, offset=offset)]


def tsv(rows, header: str = "text\tlabel") -> bytes:
    return (header + "\n" + "".join(f"{t}\t{label}\n" for t, label in rows)).encode("utf-8")


def write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def snapshot_labels(result: dict) -> dict[str, str]:
    frame = snapshots.read_snapshot(result["snapshot_uri"])
    return {t: LABELS[i] for t, i in zip(frame["text"], frame["label"])}


def whole_files(result: dict) -> dict[str, dict]:
    summary = storage.read_json(storage.join(result["quarantine_uri"], "summary.json"))
    return {f["key"]: f for f in summary["whole_files"]}


def test_labels_survive_the_frozen_spec_json_of_a_run(tmp_path):
    """Every stage reads the run's spec.json: an emoji label must come back as the spec wrote it (YAML read JSON's
    surrogate-pair escapes as two lone surrogates, so no landed row could match it)."""
    spec = twenty_class_spec(tmp_path)
    run = run_folder(spec)
    assert load_spec(storage.join(run, "spec.json")).data.labels == LABELS
    rows = [(t, LABELS[i % 20]) for i, t in enumerate(texts(100))]
    land(spec, "day1/all.jsonl", "".join(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n"
                                         for t, label in rows))

    assert ingest.main(["--run", run]) == 0
    result = storage.read_json(storage.join(run, "ingest", "result.json"))
    assert result["quarantined_rows"] == 0 and result["label_counts"]["emoji \U0001f389"] == 5
    assert set(snapshot_labels(result).values()) == set(LABELS)


def test_labels_match_whatever_their_case_spacing_or_unicode_form(tmp_path):
    spec = twenty_class_spec(tmp_path)
    spellings = {"Very Positive": "VERY  positive", "Zürich": unicodedata.normalize("NFD", "zürich"),
                 "mixed Case": " Mixed case ", "Ça va": "ÇA VA", "emoji \U0001f389": "EMOJI \U0001f389"}
    rows = [(t, spellings[name]) for t, name in zip(texts(50), [*spellings] * 10)]
    land(spec, "a.tsv", tsv(rows[:25]))  # the pyarrow path
    land(spec, "b.jsonl", "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows[25:]))
    land(spec, "c.tsv", tsv([("a label that is not in the list", "very positiv")]))

    result = run_ingest(spec)
    assert result["new_rows"] == 50 and result["quarantine_reasons"] == {validation.UNKNOWN_LABEL: 1}
    stored = snapshot_labels(result)
    assert all(stored[validation.normalize_text(t)] == name for (t, _), name in zip(rows, [*spellings] * 10))


def test_column_names_that_differ_in_case_or_spaces_are_found_and_ambiguous_ones_refused(tmp_path):
    spec = twenty_class_spec(tmp_path, max_bad_fraction=0.5)
    rows = [(t, LABELS[i % 20]) for i, t in enumerate(texts(70))]
    land(spec, "upper.tsv", tsv(rows[:10], header="Text\tLABEL"))
    land(spec, "spaced.csv", "id, Text ,label \n" + "".join(f'{i},"{t}","{label}"\n' for i, (t, label)
                                                           in enumerate(rows[10:20])))
    land(spec, "keys.jsonl", "".join(json.dumps({"TEXT": t, "Label": label}) + "\n" for t, label in rows[20:30]))
    land(spec, "label-key.jsonl", "".join(json.dumps({"text": t, "Label": label}) + "\n"
                                          for t, label in rows[30:40]))
    land(spec, "cols.parquet", parquet_bytes({"Label": [label for _, label in rows[40:50]],
                                              "Text": [t for t, _ in rows[40:50]]}))
    land(spec, "twice.csv", "text,label,text\n" + "".join(f'"{t}","{label}",other\n' for t, label in rows[50:60]))
    land(spec, "ambiguous.tsv", tsv([(f"{t}\t{t}", label) for t, label in rows[60:70]], header="Text\tTEXT\tlabel"))

    result = run_ingest(spec)
    assert sorted(result["files_ingested"]) == ["cols.parquet", "keys.jsonl", "label-key.jsonl", "spaced.csv",
                                                "upper.tsv"]
    assert result["new_rows"] == 50 and result["quarantined_rows"] == 0
    bad = whole_files(result)
    assert {k: f["reason"] for k, f in bad.items()} == {"twice.csv": validation.UNPARSEABLE_FILE,
                                                         "ambiguous.tsv": validation.UNPARSEABLE_FILE}
    assert "name column 'text' more than once" in bad["twice.csv"]["detail"]
    assert "['Text', 'TEXT']" in bad["ambiguous.tsv"]["detail"]


def test_markers_editor_files_and_uploads_in_progress_are_skipped_until_renamed(tmp_path):
    spec = twenty_class_spec(tmp_path, max_bad_fraction=0.0)
    rows = [(t, LABELS[i % 20]) for i, t in enumerate(texts(40))]
    land(spec, "good.tsv", tsv(rows[:10]))
    not_data = ["_SUCCESS", "out/_SUCCESS", "out/_committed_42", "out/_temporary/0/part-00001.tsv", ".DS_Store",
                "~$labels.csv", "notes.tsv~", "#notes.tsv#", "Thumbs.db", "desktop.ini", "big.tsv.tmp",
                "big.tsv.part", "big.tsv._COPYING_", "download.csv.crdownload"]
    folder = storage.local_path(spec.layout.landing)
    for key in not_data:  # each would be quarantined (and reject the batch) if read
        write(folder / key, b"not data \x00\xff\n")
    land(spec, "upload.tsv.tmp", tsv(rows[10:40]))

    first = run_ingest(spec)
    assert first["files_ingested"] == ["good.tsv"] and first["files_count"] == 1 and first["quarantine_uri"] is None
    os.rename(folder / "upload.tsv.tmp", folder / "upload.tsv")  # the upload completes
    second = run_ingest(spec)
    assert second["files_ingested"] == ["upload.tsv"] and second["new_rows"] == 30


def test_quarantine_copies_of_names_with_a_hash_or_question_mark_stay_apart(tmp_path):
    spec = twenty_class_spec(tmp_path, max_bad_fraction=0.5)
    land(spec, "good.tsv", tsv([(t, LABELS[0]) for t in texts(20)]))
    folder = storage.local_path(spec.layout.landing)
    bodies = {"x#1.xml": b"<one/>\n", "x#2.xml": b"<two/>\n", "q?id=3.xml": b"<three/>\n"}
    for name, body in bodies.items():
        write(folder / name, body)

    result = run_ingest(spec)
    copies = {key: f["copy"] for key, f in whole_files(result).items()}
    assert sorted(copies) == sorted(bodies) and len(set(copies.values())) == 3
    for key, copy in copies.items():
        assert storage.read_bytes(storage.join(result["quarantine_uri"], copy)) == bodies[key]


def test_a_file_still_being_written_is_not_ingested_until_it_is_complete(tmp_path, monkeypatch):
    spec = twenty_class_spec(tmp_path)
    rows = [(t, LABELS[i % 20]) for i, t in enumerate(texts(30))]
    land(spec, "other.tsv", tsv(rows[:10]))
    land(spec, "growing.tsv", tsv(rows[10:20]) + "a cut-off last line\tVery".encode())
    path = storage.local_path(storage.join(spec.layout.landing, "growing.tsv"))
    real_listing = landing.list_landing

    def listing_then_the_writer_goes_on(uri, known=None):
        listed = real_listing(uri, known)
        with open(path, "ab") as fh:  # the producer writes on after the ingest listed the file
            fh.write(b" Positive\n")
        return listed

    monkeypatch.setattr(landing, "list_landing", listing_then_the_writer_goes_on)
    first = run_ingest(spec)
    assert first["files_ingested"] == ["other.tsv"] and first["new_rows"] == 10
    assert whole_files(first)["growing.tsv"]["reason"] == validation.UNREADABLE
    assert "changed while it was read" in whole_files(first)["growing.tsv"]["detail"]

    monkeypatch.setattr(landing, "list_landing", real_listing)
    second = run_ingest(spec)  # not recorded the first time: read again, whole
    assert second["files_ingested"] == ["growing.tsv"] and second["new_rows"] == 11
    assert snapshot_labels(second)["a cut-off last line"] == "Very Positive"


@pytest.mark.parametrize("labels, aliases, expected", [
    (["joy", "anger", "joy"], {}, "labels must be unique; repeated: ['joy']"),
    (["Joy", "joy"], {}, "differ only in case"),
    (["joy", " "], {}, "labels must not be empty or blank"),
    (["pos", "neg"], {"P": "pos", "p": "neg"}, "[['P', 'p']]"),
])
def test_spec_refuses_labels_a_landed_label_could_not_tell_apart(tmp_path, labels, aliases, expected):
    from tasks.spec import SpecError

    with pytest.raises(SpecError, match="data") as err:
        make_spec("file://" + str(tmp_path), data={"labels": labels, "label_aliases": aliases})
    assert expected in str(err.value)


def test_files_in_another_encoding_or_with_another_delimiter_say_so(tmp_path):
    spec = twenty_class_spec(tmp_path, max_bad_fraction=0.9)
    rows = [(t, LABELS[9]) for t in texts(30)]
    land(spec, "good.tsv", tsv(rows[:10]))
    land(spec, "excel-unicode.tsv", tsv(rows[10:20]).decode().encode("utf-16"))  # "Unicode text": UTF-16 LE + BOM
    land(spec, "semicolons.csv", "text;label\n" + "".join(f"{t};{label}\n" for t, label in rows[20:30]))
    land(spec, "cp1252.tsv", tsv([("it\u2019s \u201cfine\u201d", LABELS[9])]).decode().encode("cp1252"))
    land(spec, "export.json", json.dumps([{"text": t, "label": label} for t, label in rows[:3]]))

    result = run_ingest(spec)
    bad = whole_files(result)
    assert bad["excel-unicode.tsv"]["reason"] == validation.UNPARSEABLE_FILE
    assert "UTF-16 text (byte order mark ff fe); only UTF-8 is read" in bad["excel-unicode.tsv"]["detail"]
    assert "one field holding ';'" in bad["semicolons.csv"]["detail"]
    assert bad["export.json"]["reason"] == validation.UNSUPPORTED_FORMAT
    assert "extension .json" in bad["export.json"]["detail"] and "as .jsonl" in bad["export.json"]["detail"]
    rows_file = storage.read_text(storage.join(result["quarantine_uri"], "rows.jsonl"))
    (row,) = [json.loads(line) for line in rows_file.splitlines()]
    assert row["reason"] == validation.UNDECODABLE and "latin-1/cp1252" in row["detail"]


def test_numbers_for_named_labels_are_rejected_with_what_to_set(tmp_path):
    from tasks.errors import DataRejected

    spec = twenty_class_spec(tmp_path)
    land(spec, "ids.parquet", parquet_bytes({"text": texts(20), "label": list(range(20))}))
    with pytest.raises(DataRejected) as err:
        run_ingest(spec)
    message = str(err.value)
    assert "label 0 not in data.labels (20 names)" in message
    assert "numbers as labels need data.label_aliases (e.g. {'0': 'Very Positive'})" in message
    assert message.count("Ελληνικά") == 1  # the 20 names once, not once per example row


@pytest.mark.parametrize("golden, expected", [
    ([(f"golden text {i}", "not a label") for i in range(10)] + [("golden text ok", "x-y")],
     "10 of 11 rows are bad"),
    ([], "has no rows"),
])
def test_a_mostly_bad_golden_source_is_not_frozen(tmp_path, golden, expected):
    from tasks.errors import DataRejected

    spec = twenty_class_spec(tmp_path)
    put(spec.golden.source_uri, "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in golden))
    land(spec, "a.tsv", tsv([(t, "x-y") for t in texts(10)]))
    with pytest.raises(DataRejected, match=expected) as err:
        run_ingest(spec)
    assert "it is not frozen" in str(err.value)
    assert not storage.exists(storage.join(spec.layout.golden, "current.json"))


def test_the_label_list_may_grow_at_the_end_but_not_change_under_stored_rows(tmp_path):
    from tasks.errors import SpecInvalid

    spec = twenty_class_spec(tmp_path)
    land(spec, "a.tsv", tsv([(t, LABELS[i % 20]) for i, t in enumerate(texts(40))]))
    first = run_ingest(spec)
    assert snapshots.read_manifest(first["snapshot_uri"]).labels == LABELS

    reordered = twenty_class_spec(tmp_path, labels=[LABELS[1], LABELS[0], *LABELS[2:]])
    land(reordered, "b.tsv", tsv([(t, LABELS[0]) for t in texts(10, offset=100)]))
    with pytest.raises(SpecInvalid, match="add new labels at the end"):
        run_ingest(reordered)
    assert snapshots.read_latest(spec.layout.snapshots)[0]["snapshot_id"] == first["snapshot_id"]

    grown = twenty_class_spec(tmp_path, labels=[*LABELS, "brand new"])
    land(grown, "c.tsv", tsv([(t, "brand new") for t in texts(10, offset=200)]))
    second = run_ingest(grown)
    assert second["label_counts"]["brand new"] == 10 and second["label_counts"][LABELS[0]] == 2 + 10

    # A manifest written before manifests named their labels: checked by the names its label counts hold.
    path = storage.local_path(second["snapshot_uri"]) / "manifest.json"
    old = json.loads(path.read_text())
    del old["labels"]
    path.write_text(json.dumps(old))
    with pytest.raises(SpecInvalid, match=r"labels no longer in data.labels: \['brand new'\]"):
        run_ingest(twenty_class_spec(tmp_path))


def test_a_text_of_only_invisible_characters_is_empty(tmp_path):
    spec = twenty_class_spec(tmp_path, max_bad_fraction=0.5)
    invisible = ["\u200b", "\u200b\u200d \ufeff", "\u2060\u00ad"]  # zero-width space/joiner, BOM, word joiner, SHY
    land(spec, "a.tsv", tsv([(t, "x-y") for t in texts(10)] + [(t, "x-y") for t in invisible]))
    land(spec, "b.jsonl", "".join(json.dumps({"text": t, "label": "x-y"}) + "\n" for t in invisible))

    result = run_ingest(spec)
    assert result["new_rows"] == 10 and result["quarantine_reasons"] == {validation.EMPTY_TEXT: 6}


def test_quarantined_raw_rows_are_clipped_whatever_the_reason(tmp_path):
    spec = twenty_class_spec(tmp_path, max_bad_fraction=0.5)
    land(spec, "good.tsv", tsv([(t, "x-y") for t in texts(10)]))
    land(spec, "a.tsv", tsv([("m " * 50000 + "\textra", "x-y"), ("w " * 900, "nope")]))
    land(spec, "b.parquet", parquet_bytes({"text": ["p " * 900], "label": ["nope"]}))

    result = run_ingest(spec)
    rows = [json.loads(line) for line in
            storage.read_text(storage.join(result["quarantine_uri"], "rows.jsonl")).splitlines()]
    assert sorted(r["reason"] for r in rows) == [validation.MALFORMED, validation.UNKNOWN_LABEL,
                                                 validation.UNKNOWN_LABEL]
    for row in rows:
        raw = row["raw"]["text"] if isinstance(row["raw"], dict) else row["raw"]
        assert len(raw) < 530 and raw.endswith(" chars)")
