"""The typed records (tasks/manifests.py) and the results' write and read rules (tasks/contracts.py): what a stage
writes is declared, what was stored by an older release still reads, and the JSON on disk is what it was."""

from __future__ import annotations

import copy
import json
import logging

import pytest
from pydantic import ValidationError

from data_helpers import land, make_spec, put_golden, run_folder, tsv_bytes
from tasks import storage
from tasks.contracts import ChampionComparison, EvaluateResult, IngestResult, TrainResult
from tasks.data import snapshots
from tasks.data.ingest import finish, run_ingest
from tasks.decide import gates, registry
from tasks.manifests import BatchRecord, BatchStats, SnapshotManifest, VersionManifest

# A snapshot manifest and its batch record exactly as the code before the models wrote them (an ingest of one
# batch: a file with a duplicate, a golden row and an empty text, plus an empty file).
SNAPSHOT_MANIFEST = {
    "batch": {
        "batch_id": "cac6ae7a970e772e", "contaminated_removed": 1, "duplicates_removed": 1, "empty_files": 1,
        "files": [{"etag": "a5ce9aba94673552686b5f6184cba448", "key": "day1/a.tsv", "mtime": 1796566342.7128687,
                   "size": 899},
                  {"etag": "d41d8cd98f00b204e9800998ecf8427e", "key": "day1/empty.tsv", "mtime": 1796566342.7195125,
                   "size": 0}],
        "files_count": 2, "files_ingested": ["day1/a.tsv"], "files_read": 1,
        "label_counts": {"negative": 8, "positive": 4}, "quarantine_reasons": {"empty_text": 1},
        "quarantine_uri": "file:///store/quarantine/sst2/cac6ae7a970e772e", "quarantined_files": 0,
        "quarantined_rows": 1, "rows_read": 15},
    "content_hash": "5844e20a91aa5cced27d66180ff366b9d4ad92b44e96d8859c212a1a323d87d2",
    "content_sum": "12:e71ab107a28c351a:46f74cb9c324bff5",
    "created_at": "2026-12-06T14:12:22Z",
    "golden_id": "ba7f3109dbb1f08f",
    "golden_uri": "file:///store/golden/sst2/ba7f3109dbb1f08f",
    "label_counts": {"negative": 8, "positive": 4},
    "labels": ["negative", "positive"],
    "new_rows": 12,
    "parent": None,
    "parts": ["parts/cac6ae7a970e772e.parquet"],
    "pipeline": "sst2",
    "rows": 12,
    "snapshot_id": "5844e20a91aa5cce",
    "sources": ["day1/a.tsv"],
    "split_counts": {"holdout": 2, "train": 10},
}
BATCH_RECORD = {
    "batch_id": "cac6ae7a970e772e", "contaminated_removed": 1, "duplicates_removed": 1, "empty_files": 1,
    "files": SNAPSHOT_MANIFEST["batch"]["files"], "files_count": 2, "files_read": 1,
    "quarantine_reasons": {"empty_text": 1}, "quarantine_uri": "file:///store/quarantine/sst2/cac6ae7a970e772e",
    "quarantined_files": 0, "quarantined_rows": 1, "recorded_at": "2026-12-06T14:12:22Z", "rows_read": 15,
    "snapshot_id": "5844e20a91aa5cce",
}
# A version manifest as publish wrote it before the model (trimmed lists; every key publish writes).
VERSION = {
    "version": "20261206T141222Z-ab12", "pipeline": "sst2", "created_at": "2026-12-06T14:12:22Z",
    "snapshot_id": "5844e20a91aa5cce", "snapshot_uri": "file:///store/snapshots/sst2/5844e20a91aa5cce",
    "golden_uri": "file:///store/golden/sst2/ba7f3109dbb1f08f", "parent_champion": None, "code_version": "0.1.0",
    "image": "local", "parameters": {"model": {"base": "x"}, "train": {}, "student": {}, "gates": {},
                                     "labels": ["negative", "positive"]},
    "run_uri": "file:///store/runs/sst2/r1", "training": {"mode": "full", "reasons": ["first run"]},
    "sources": {"teacher": "t", "student": "s", "evaluation": "e", "exports": {}}, "exports": {},
    "model_cards": {"teacher": "teacher/README.md"},
    "serving": {"huggingface": {"teacher": "teacher/"}, "triton": None},
    "evaluation": {"passed": True, "first_run": False, "failed_gates": [], "gates": [], "metrics": {},
                   "report_uri": "r", "report_md_uri": "m",
                   "champion_comparison": {"golden_rows": 10, "compared_rows": 10, "excluded_rows": 0,
                                           "min_compared_rows": 20, "too_few": False, "looked": False}},
    "files": {"teacher/config.json": {"sha256": "00", "size": 2}},
    "approval": {"answer": "approved", "by": "ana"},
}


def _store(tmp_path, uri_path: str, data: dict) -> str:
    uri = "file://" + str(tmp_path / uri_path)
    storage.write_json(uri, data)
    return uri


def test_todays_snapshot_manifest_and_batch_record_read_back_as_they_were_written(tmp_path):
    _store(tmp_path, "snap/manifest.json", SNAPSHOT_MANIFEST)
    assert snapshots.read_manifest("file://" + str(tmp_path / "snap")).dump() == SNAPSHOT_MANIFEST
    manifest = SnapshotManifest.read(copy.deepcopy(SNAPSHOT_MANIFEST))
    assert manifest.batch.files[1].key == "day1/empty.tsv" and manifest.split_counts == {"holdout": 2, "train": 10}
    # Written again through the model: the same JSON, key for key (no key the writer did not set).
    assert snapshots.json_bytes(manifest.dump()) == snapshots.json_bytes(SNAPSHOT_MANIFEST)
    assert BatchRecord.read(BATCH_RECORD).dump() == BATCH_RECORD


def test_an_older_snapshot_manifest_reads_as_it_is_with_what_it_lacks_unset_and_unknown_fields_kept(tmp_path):
    old = {"id": "s0", "parts": ["parts/b0.parquet"], "rows": 3, "label_counts": {"negative": 3},
           "made_by": "hand"}  # no content_sum, split_counts, labels, golden fields; an undeclared field
    _store(tmp_path, "old/manifest.json", old)
    assert snapshots.read_manifest("file://" + str(tmp_path / "old")).dump() == old
    read = SnapshotManifest.read(old)
    assert read.snapshot_id is None and read.content_sum is None and read.model_extra == {"id": "s0",
                                                                                          "made_by": "hand"}


def test_a_new_ingest_writes_the_manifest_batch_record_and_result_with_todays_keys(tmp_path):
    spec = make_spec("file://" + str(tmp_path / "store"))
    golden = put_golden(spec)
    from conftest import read_sst2

    train = read_sst2("train", limit=12)
    land(spec, "day1/a.tsv", tsv_bytes(train + [train[0]] + golden[:1] + [("", "x")]))
    land(spec, "day1/empty.tsv", b"")
    result = run_ingest(spec, run_folder(spec))
    stored = storage.read_json(storage.join(result["snapshot_uri"], "manifest.json"))
    assert set(stored) == set(SNAPSHOT_MANIFEST) and set(stored["batch"]) == set(SNAPSHOT_MANIFEST["batch"])
    assert {k: stored[k] for k in ("rows", "new_rows", "label_counts", "split_counts", "parent")} == {
        k: SNAPSHOT_MANIFEST[k] for k in ("rows", "new_rows", "label_counts", "split_counts", "parent")}
    record = storage.read_json(storage.join(spec.layout.snapshots, "batches", f"{result['batch_id']}.json"))
    assert set(record) == set(BATCH_RECORD)
    assert {k: stored["batch"][k] for k in BatchStats.KEPT} == {k: result[k] for k in BatchStats.KEPT}
    assert result["empty_file_keys"] == ["day1/empty.tsv"] and "recovered" not in result
    assert result["asset_extra"] == {"snapshot_id": result["snapshot_id"], "snapshot_uri": result["snapshot_uri"],
                                     "total_rows": 12, "new_rows": 12}


def test_todays_version_manifest_reads_through_the_registry_as_it_was_written(tmp_path):
    spec = make_spec("file://" + str(tmp_path / "store"))
    storage.write_json(storage.join(registry.version_uri(spec, VERSION["version"]), registry.MANIFEST), VERSION)
    assert registry.read_manifest(spec, VERSION["version"]).dump() == VERSION
    manifest = VersionManifest.read(VERSION)
    assert manifest.approval == {"answer": "approved", "by": "ana"} and manifest.remedies is None
    assert "remedies" not in manifest.dump()  # never written: never dumped
    comparison = ChampionComparison.read(manifest.evaluation["champion_comparison"])
    assert comparison.min_compared_rows == 20 and gates.comparison_lines(comparison) == []


def test_a_record_refuses_an_undeclared_field_when_written():
    with pytest.raises(ValidationError, match="does not declare golden_generaton"):
        SnapshotManifest(snapshot_id="s1", parts=[], golden_generaton=2)
    with pytest.raises(ValidationError, match="does not declare excluded"):
        ChampionComparison(golden_rows=10, compared_rows=8, excluded=2, min_compared_rows=20, too_few=False)
    with pytest.raises(ValidationError, match="does not declare readmited"):
        VersionManifest(version="v1", readmited={})


def test_the_champion_comparison_dumps_only_what_was_set():
    spec = make_spec("file:///unused")
    plain = gates.champion_comparison(spec.gates, 10, None)
    assert plain.dump() == {"golden_rows": 10, "compared_rows": 10, "excluded_rows": 0, "min_compared_rows": 20,
                            "too_few": False}
    looked = gates.champion_comparison(spec.gates, 10, None, champion_uri="u", looked=False, note="unknown")
    assert looked.dump()["note"] == "unknown" and "why" not in looked.dump()
    assert EvaluateResult(passed=True, champion_comparison=looked).dump()["champion_comparison"] == looked.dump()


def test_a_stage_that_writes_an_undeclared_field_fails():
    with pytest.raises(ValidationError, match="snapshot_idd"):
        finish(None, {"changed": False, "snapshot_idd": "s1"})  # the ingest stage's last step
    with pytest.raises(ValidationError, match="teacher_pass_row"):
        TrainResult(model_uri="m", teacher_pass_row=3)
    with pytest.raises(ValidationError, match="nots"):
        EvaluateResult(passed=True, gates=[{"name": "floor", "passed": True, "nots": "x"}])


def test_fields_a_stage_sets_only_in_some_cases_are_left_out_of_its_result_until_set():
    assert {"asset_extra", "recovered", "empty_file_keys"}.isdisjoint(IngestResult(changed=False).dump())
    assert IngestResult(recovered=True).dump()["recovered"] is True
    assert "teacher_pass_rows" not in TrainResult(model_uri="m").dump()
    assert TrainResult(model_uri="m", teacher_pass_rows=0).dump()["teacher_pass_rows"] == 0


def test_reading_an_older_result_drops_undeclared_fields_with_a_warning(caplog, tmp_path):
    old = {"changed": True, "snapshot_id": "s1", "new_rows": 3, "rows_added": 3,  # a field no longer declared
           "golden_changed": None}
    uri = _store(tmp_path, "ingest/result.json", old)
    with caplog.at_level(logging.WARNING, logger="tasks.contracts"):
        result = IngestResult.read(storage.read_json(uri))
    assert result.snapshot_id == "s1" and result.new_rows == 3 and "rows_added" not in result.dump()
    assert "IngestResult" in caplog.text and "rows_added" in caplog.text
    # Nested results too (a gate of an older evaluate result), and a declared field of the wrong type still fails.
    nested = EvaluateResult.read({"passed": True, "gates": [{"name": "floor", "passed": True, "verdict": "old"}]})
    assert nested.gates[0].name == "floor"
    with pytest.raises(ValidationError):
        IngestResult.read({"changed": True, "new_rows": "many"})
    with pytest.raises(ValidationError):
        IngestResult.model_validate(old)  # validating as a writer would: the undeclared field is refused


def test_xcom_of_an_older_release_reads_in_the_dag_steps(tmp_path):
    from tasks.decide.summary import validated

    raw = json.loads(json.dumps({"retrain": True, "reasons": ["forced"], "retired_field": 1}))
    assert validated("decide", raw).reasons == ["forced"]
