"""A golden source that files one text under two labels (a topic corpus does: Debian's fortunes has a text in
both knghtbrd and miscellaneous). The golden set leaves every copy of it out, as the ingest quarantines such
landed rows, instead of freezing the first label as the answer. A small synthetic many-class case."""

from __future__ import annotations

import json

import pytest

from conftest import read_sst2
from data_helpers import land, make_spec, put
from tasks.data import snapshots
from tasks.data.ingest import run_ingest
from tasks.errors import DataRejected
from tasks import storage

LABELS = [f"category {i}" for i in range(15)]


def jsonl(rows) -> str:
    return "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows)


def fifteen_class_spec(tmp_path):
    return make_spec("file://" + str(tmp_path / "store"),
                     data={"text_column": "text", "label_column": "label", "labels": LABELS, "label_aliases": {}},
                     golden={"source_uri": "{storage}/reference/{name}/golden.jsonl"})


def test_a_golden_text_with_two_labels_is_left_out_not_given_its_first_label(tmp_path):
    spec = fifteen_class_spec(tmp_path)
    texts = [t.strip() for t, _ in read_sst2("dev", limit=62)]  # as stored: normalized
    two_labels, repeated = texts[60], texts[61]
    rows = [(t, LABELS[i % 15]) for i, t in enumerate(texts[:60])]
    rows += [(two_labels, LABELS[3]), (repeated, LABELS[4]), (two_labels + "  ", LABELS[9]), (repeated, LABELS[4])]
    put(spec.golden.source_uri, jsonl(rows))
    land(spec, "night1.jsonl", jsonl((t, LABELS[i % 15]) for i, (t, _) in
                                     enumerate(read_sst2("train", limit=80, offset=3000))))

    result = run_ingest(spec)
    golden = snapshots.read_golden(result["golden_uri"])
    manifest = storage.read_json(storage.join(result["golden_uri"], "manifest.json"))
    assert two_labels not in set(golden["text"])  # neither label is the answer
    assert list(golden["text"]).count(repeated) == 1 and manifest["duplicate_rows"] == 1
    assert manifest["skipped_rows"] == {"conflicting_labels": 2} and manifest["rows"] == 61 == len(golden)


def test_a_golden_source_mostly_in_conflict_is_not_frozen(tmp_path):
    spec = fifteen_class_spec(tmp_path)
    texts = [t for t, _ in read_sst2("dev", limit=20)]
    rows = [(t, LABELS[0]) for t in texts] + [(t, LABELS[1]) for t in texts[:8]]  # 16 of 28 rows in conflict
    put(spec.golden.source_uri, jsonl(rows))
    land(spec, "night1.jsonl", jsonl((t, LABELS[0]) for t, _ in read_sst2("train", limit=40, offset=3000)))
    with pytest.raises(DataRejected, match="conflicting_labels"):
        run_ingest(spec)
