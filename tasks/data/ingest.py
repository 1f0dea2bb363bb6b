"""``python -m tasks ingest --run RUN_URI``: turn new landing files into an immutable snapshot.

Steps, in order (docs/data.md):

1. freeze the golden set on first use (golden.py);
2. list the landing URI without following symlinks or leaving it (landing.py), and keep the entries whose
   identity (key + ETag + size) no stored batch record names;
3. parse CSV / TSV / JSONL / Parquet, gzip or not (readers.py); check rows, map labels, normalize text
   (validation.py);
4. put bad rows and whole bad files aside with their reason (quarantine.py); fail without committing anything
   if more than ``data.max_bad_fraction`` of the batch is bad;
5. drop exact duplicates (within the batch and against the previous snapshot) and golden-set rows;
6. write the new rows as ``parts/<batch_id>.parquet`` and a snapshot manifest that lists the parent's parts
   plus the new one; the snapshot id is a hash of the content, so the same data gives the same id;
7. move ``latest.json`` (conditional write), then record the batch (so its files count as processed).

Every object is written create-only, except the ``latest.json`` pointer, which moves only from the version
this run read. A crash at any point leaves either nothing or a state the next run completes.

The counts add up: ``rows_read = new_rows + quarantined_rows + duplicates_removed + contaminated_removed`` and
``files_count = files_read + quarantined_files + empty_files``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks import cli, results, storage
from tasks.contracts import IngestResult
from tasks.data import landing, readers, snapshots
from tasks.data.golden import ensure_golden, golden_texts
from tasks.data.landing import LandingFile, LandingRefused
from tasks.data.quarantine import BadFile, Quarantine
from tasks.data.readers import RawRow, Unparseable
from tasks.data.snapshots import split_of
from tasks.data.validation import (UNPARSEABLE_FILE, UNREADABLE, UNSUPPORTED_FORMAT, Good, LabelMap,
                                   resolve_conflicts, validate)
from tasks.errors import DataRejected, InfrastructureError, SpecInvalid
from tasks.spec import PipelineSpec, SpecError, load_spec

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("tasks.data.ingest")

IngestError = DataRejected  # the name this stage's rejections had before tasks/errors.py

# The batch statistics kept in the snapshot manifest and the batch record (and read back by a recovery).
BATCH_STATS = ("files_ingested", "files_count", "files_read", "empty_files", "rows_read", "quarantined_rows",
               "quarantined_files", "quarantine_reasons", "quarantine_uri", "duplicates_removed",
               "contaminated_removed")


@dataclass
class IngestArgs:
    run: str = field(metadata={"help": "the run folder URI; its spec.json is the frozen spec"})


# ------------------------------------------------------------------ one batch of landing files


@dataclass
class Batch:
    """What the new landing files hold, checked: the rows to add and what was put aside."""

    batch_id: str
    files: list[LandingFile]
    quarantine: Quarantine = field(default_factory=Quarantine)
    kept: list[Good] = field(default_factory=list)
    read: list[str] = field(default_factory=list)  # keys of the files whose rows were read
    empty: list[str] = field(default_factory=list)  # keys of the zero-byte files
    rows_read: int = 0
    duplicates: int = 0
    contaminated: int = 0
    quarantine_uri: str | None = None

    def records(self) -> list[dict[str, Any]]:
        """The files the batch record names as processed: all but those that could not be read this time."""
        return [f.record() for f in recorded(self.files)]

    def stats(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "files_ingested": self.read[:200],
            "files_count": len(self.files),
            "files_read": len(self.read),
            "empty_files": len(self.empty),
            "empty_file_keys": self.empty[:200],
            "rows_read": self.rows_read,
            "quarantined_rows": len(self.quarantine.rows),
            "quarantined_files": len(self.quarantine.files),
            "quarantine_reasons": self.quarantine.reasons(),
            "quarantine_uri": self.quarantine_uri,
            "duplicates_removed": self.duplicates,
            "contaminated_removed": self.contaminated,
        }


def recorded(files: list[LandingFile]) -> list[LandingFile]:
    return [f for f in files if f.problem != UNREADABLE]


def batch_id_of(parent_id: str | None, files: list[LandingFile]) -> str:
    identities = sorted(f.identity for f in recorded(files))
    return hashlib.sha256(json.dumps([parent_id, identities]).encode()).hexdigest()[:16]


def line_count(content: bytes) -> int:
    """Lines of a text file's content (the last one need not end in a newline); 0 for binary content."""
    if not content or b"\x00" in content:
        return 0
    return content.count(b"\n") + (0 if content.endswith(b"\n") else 1)


def parse_file(spec: PipelineSpec, f: LandingFile, data: bytes) -> list[RawRow] | BadFile | None:
    """A landed file's rows; a BadFile when the whole file is bad; None when it is empty (zero bytes)."""
    fmt = readers.file_format(f.key, spec.data.format)
    try:
        content = readers.gunzip(data) if readers.is_gzip(f.key) else data
    except Unparseable as exc:
        return BadFile(f.key, UNPARSEABLE_FILE if fmt else UNSUPPORTED_FORMAT, str(exc), f.size, 0, data)
    if not content:
        return None
    if fmt is None or fmt not in spec.landing.formats:
        allowed = sorted(spec.landing.formats)
        return BadFile(f.key, UNSUPPORTED_FORMAT, f"unsupported file type; expected one of {allowed} (optionally .gz)",
                       f.size, line_count(content), data)
    try:
        return readers.read_rows(content, fmt, spec.data.text_column, spec.data.label_column,
                                 tsv_quoting=spec.data.tsv_quoting,
                                 csv_delimiter=spec.data.csv_delimiter)
    except Unparseable as exc:
        return BadFile(f.key, UNPARSEABLE_FILE, str(exc), f.size, line_count(content), data)


def read_batch(spec: PipelineSpec, files: list[LandingFile], parent: "pd.DataFrame | None",
               parent_id: str | None) -> Batch:
    """Read, check and dedup the new files; nothing is written."""
    batch = Batch(batch_id_of(parent_id, files), files)
    labels = LabelMap(spec.data.labels, spec.data.label_aliases)
    good: list[Good] = []
    for f in files:
        if f.problem:  # a symlink, a special file: reported, never read
            batch.quarantine.files.append(BadFile(f.key, f.problem, f.detail, f.size))
            continue
        try:
            data = landing.read_file(spec.layout.landing, f)
        except LandingRefused as exc:
            batch.quarantine.files.append(BadFile(f.key, exc.reason, exc.detail, f.size))
            continue
        except storage.NotFound:  # gone since the listing (or a key storage cannot address)
            batch.quarantine.files.append(BadFile(f.key, UNREADABLE, "not found when read", f.size))
            continue
        except OSError as exc:  # local: permission denied, or gone since the listing
            batch.quarantine.files.append(BadFile(f.key, UNREADABLE, f"cannot read: {exc.strerror}", f.size))
            continue
        parsed = parse_file(spec, f, data)
        if parsed is None:
            batch.empty.append(f.key)
        elif isinstance(parsed, BadFile):
            batch.quarantine.files.append(parsed)
        else:
            batch.read.append(f.key)
            batch.rows_read += len(parsed)
            file_good, file_bad = validate(f.key, parsed, labels, spec.data.max_text_chars)
            good.extend(file_good)
            batch.quarantine.rows.extend(file_bad)
    known = dict(zip(parent["text"], parent["label"].astype(int))) if parent is not None else {}
    batch.kept, conflicts, batch.duplicates = resolve_conflicts(good, known, spec.data.labels)
    batch.quarantine.rows.extend(conflicts)
    return batch


def check_bad_share(spec: PipelineSpec, batch: Batch) -> None:
    """Reject the batch (DataRejected, nothing committed) if too much of it is bad; a bad data file weighs its
    line count, so one garbage file cannot hide in a batch."""
    q = batch.quarantine
    total = batch.rows_read + q.file_weight
    bad = q.bad_weight
    if total and bad / total > spec.data.max_bad_fraction:
        raise DataRejected(
            f"batch rejected: {bad} of {total} rows are bad ({bad / total:.0%} > data.max_bad_fraction "
            f"{spec.data.max_bad_fraction:.0%}); nothing was committed. By reason: {q.reasons()}. "
            f"First: {q.examples()}. Fix or remove the files in {spec.layout.landing} and rerun.")


def drop_golden(batch: Batch, golden: set[str]) -> None:
    before = len(batch.kept)
    batch.kept = [row for row in batch.kept if row.text not in golden]
    batch.contaminated = before - len(batch.kept)


def new_rows_frame(spec: PipelineSpec, batch: Batch) -> "pd.DataFrame":
    import pandas as pd

    return pd.DataFrame({
        "text": [r.text for r in batch.kept],
        "label": pd.Series([r.label for r in batch.kept], dtype="int64"),
        "split": [split_of(r.text, spec.data.holdout_fraction) for r in batch.kept],
        "batch": [batch.batch_id] * len(batch.kept),
    })


# ------------------------------------------------------------------ committing


def commit(spec: PipelineSpec, batch: Batch, new: "pd.DataFrame", latest: dict[str, Any] | None,
           latest_etag: str | None, parent: "pd.DataFrame | None", golden: dict[str, Any],
           base: dict[str, Any]) -> dict[str, Any]:
    """part -> manifest -> latest.json -> batch record; returns the stage result."""
    import pandas as pd

    where = spec.layout.snapshots
    stats = batch.stats()
    parent_manifest = snapshots.read_manifest(latest["snapshot_uri"]) if latest else {}
    part = snapshots.write_part(where, batch.batch_id, new)
    full = pd.concat([parent, new], ignore_index=True) if parent is not None else new
    digest = snapshots.content_hash(full)
    snapshot_id = digest[:16]
    manifest = {
        "snapshot_id": snapshot_id,
        "pipeline": spec.name,
        "content_hash": digest,
        "parent": latest["snapshot_id"] if latest else None,
        "parts": parent_manifest.get("parts", []) + [part],
        "rows": len(full),
        "new_rows": len(new),
        "label_counts": snapshots.label_counts(full["label"], spec.data.labels),
        "split_counts": {s: int((full["split"] == s).sum()) for s in ("train", "holdout")},
        "batch": {"batch_id": batch.batch_id, "files": batch.records(),
                  "label_counts": snapshots.label_counts(new["label"], spec.data.labels),
                  **{k: stats[k] for k in BATCH_STATS}},
        "sources": sorted({*parent_manifest.get("sources", []), *batch.read}),
        "golden_id": golden["golden_id"],
        "golden_uri": golden["golden_uri"],
        "created_at": storage.utcnow(),
    }
    snapshot_uri = snapshots.write_manifest(where, manifest)
    pointer = {"snapshot_id": snapshot_id, "snapshot_uri": snapshot_uri, "rows": len(full),
               "updated_at": storage.utcnow()}
    try:
        snapshots.move_latest(where, pointer, latest_etag)
    except storage.PreconditionFailed:
        now, _ = snapshots.read_latest(where)
        if now and now["snapshot_id"] == snapshot_id:  # a concurrent ingest committed these same files first
            return {**unchanged(now, base, reason="a concurrent ingest committed this snapshot"), **stats}
        # Transient: a retry reads the new pointer and ingests on top of it.
        raise InfrastructureError(f"another ingest moved {snapshots.latest_uri(where)} while this one ran; "
                                  f"rerun to pick up its snapshot") from None
    snapshots.record_batch(where, batch.batch_id, batch.records(), snapshot_id, stats)
    log.info("snapshot %s: %d rows (%d new) from %d file(s)", snapshot_id, len(full), len(new), len(batch.read))
    extra = {"snapshot_id": snapshot_id, "snapshot_uri": snapshot_uri, "total_rows": len(full), "new_rows": len(new)}
    return {**base, **stats, **extra, "changed": True, "parent_snapshot_id": manifest["parent"],
            "label_counts": manifest["label_counts"], "asset_extra": extra}


def recover_unrecorded_batch(spec: PipelineSpec, latest: dict[str, Any], files: list[LandingFile],
                             base: dict[str, Any]) -> dict[str, Any] | None:
    """A run that moved latest.json but died before recording its batch: record it now and report the snapshot
    as new (its Asset event was never sent), instead of re-reading the files as duplicates."""
    manifest = snapshots.read_manifest(latest["snapshot_uri"])
    batch = manifest.get("batch") or {}
    committed = {(f["key"], f["etag"], int(f["size"])) for f in batch.get("files", [])}
    if not committed or committed != {f.identity for f in recorded(files)}:
        return None
    stats = {k: batch.get(k) for k in BATCH_STATS if k in batch}
    stats["batch_id"] = batch["batch_id"]
    snapshots.record_batch(spec.layout.snapshots, batch["batch_id"], batch["files"], manifest["snapshot_id"], stats)
    log.info("recorded batch %s of snapshot %s (its run stopped before recording it)", batch["batch_id"],
             manifest["snapshot_id"])
    extra = {"snapshot_id": manifest["snapshot_id"], "snapshot_uri": latest["snapshot_uri"],
             "total_rows": manifest["rows"], "new_rows": manifest["new_rows"]}
    return {**base, **stats, **extra, "changed": True, "parent_snapshot_id": manifest.get("parent"),
            "label_counts": manifest["label_counts"], "recovered": True, "asset_extra": extra}


def unchanged(latest: dict[str, Any], base: dict[str, Any], *, reason: str) -> dict[str, Any]:
    return {**base, "snapshot_id": latest["snapshot_id"], "snapshot_uri": latest["snapshot_uri"], "changed": False,
            "total_rows": latest.get("rows"), "new_rows": 0, "reason": reason}


def finish(run_uri: str | None, result: dict[str, Any]) -> dict[str, Any]:
    typed = IngestResult.model_validate(result)
    if run_uri:
        return results.emit(typed, storage.join(run_uri, "ingest"))
    return typed.dump()


# ------------------------------------------------------------------ the stage


def run_ingest(spec: PipelineSpec, run_uri: str | None = None) -> dict[str, Any]:
    """Ingest new landing files into a snapshot; returns the stage result (and emits it if run_uri is given)."""
    layout = spec.layout
    golden = ensure_golden(spec)
    latest, latest_etag = snapshots.read_latest(layout.snapshots)
    files = landing.new_files(layout.landing, snapshots.processed_files(layout.snapshots))
    base = {"golden_uri": golden["golden_uri"], "golden_id": golden["golden_id"], "landing_uri": layout.landing}
    if not files:
        if latest is None:
            raise DataRejected(f"no data yet: no files in {layout.landing} and no snapshot in {layout.snapshots}")
        return finish(run_uri, unchanged(latest, base, reason="no new landing files"))
    recovered = recover_unrecorded_batch(spec, latest, files, base) if latest else None
    if recovered:
        return finish(run_uri, recovered)

    parent = snapshots.read_snapshot(latest["snapshot_uri"]) if latest else None
    batch = read_batch(spec, files, parent, latest["snapshot_id"] if latest else None)
    check_bad_share(spec, batch)
    drop_golden(batch, golden_texts(golden))
    if batch.quarantine:
        batch.quarantine_uri = storage.join(layout.quarantine, batch.batch_id)
        batch.quarantine.write(batch.quarantine_uri, batch.batch_id)

    new = new_rows_frame(spec, batch)
    if new.empty:
        if latest is None:
            raise DataRejected(
                f"no data yet: {len(files)} landing file(s) gave no usable rows ({batch.quarantine.reasons()}, "
                f"{batch.duplicates} duplicates, {batch.contaminated} golden rows, {len(batch.empty)} empty files)")
        snapshots.record_batch(layout.snapshots, batch.batch_id, batch.records(), latest["snapshot_id"], batch.stats())
        return finish(run_uri, {**unchanged(latest, base, reason="no new rows in the new files"), **batch.stats()})
    return finish(run_uri, commit(spec, batch, new, latest, latest_etag, parent, golden, base))


def main(argv: list[str]) -> int:
    args = cli.parse(IngestArgs, argv, prog="python -m tasks ingest", description=__doc__.splitlines()[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = load_spec(storage.join(args.run, "spec.json"))
    except SpecError as exc:
        raise SpecInvalid(str(exc)) from None
    run_ingest(spec, args.run)  # DataRejected / SpecInvalid / InfrastructureError -> python -m tasks exit codes
    return 0
