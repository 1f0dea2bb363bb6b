"""``python -m tasks ingest --run RUN_URI``: turn new landing files into an immutable snapshot.

Steps, in order (docs/data.md):

1. freeze the golden set on first use (golden.py);
2. list the landing URI without following symlinks or leaving it (landing.py), and keep the entries whose
   identity (key + ETag + size) no stored batch record names;
3. parse CSV / TSV / JSONL / Parquet, gzip or not, in chunks (readers.py); check rows, map labels, normalize
   and hash text a chunk at a time (validation.py, snapshots.py), staging the good rows in local files;
4. put bad rows and whole bad files aside with their reason (quarantine.py); fail without committing anything
   if more than ``data.max_bad_fraction`` of the batch is bad;
5. drop exact duplicates (within the batch and against the previous snapshot, by text hash) and golden-set rows;
6. write the new rows as ``parts/<batch_id>.parquet`` and a snapshot manifest that lists the parent's parts
   plus the new one; the snapshot id is a hash of the content, so the same data gives the same id;
7. move ``latest.json`` (conditional write), then record the batch (so its files count as processed).

Every object is written create-only, except the ``latest.json`` pointer, which moves only from the version
this run read. A crash at any point leaves either nothing or a state the next run completes.

Memory does not grow with the batch (docs/data.md, "Scale"): rows stream through chunks, and only a byte a
row (``Batch.keep``) stays in memory; the rest lives in local temporary files that are removed at the end.

The counts add up: ``rows_read = new_rows + quarantined_rows + duplicates_removed + contaminated_removed`` and
``files_count = files_read + quarantined_files + empty_files``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import cli, results, storage
from tasks.contracts import IngestResult
from tasks.data import landing, readers, snapshots
from tasks.data.golden import ensure_golden, golden_texts
from tasks.data.landing import LandingChanged, LandingFile, LandingRefused
from tasks.data.quarantine import BadFile, Quarantine
from tasks.data.readers import Unparseable
from tasks.data.validation import (CONFLICTING, UNKNOWN_LABEL, UNPARSEABLE_FILE, UNREADABLE, UNSUPPORTED_FORMAT, Bad,
                                   LabelMap, unknown_label_hint, validate_chunk)
from tasks.errors import DataRejected, InfrastructureError
from tasks.manifests import BatchStats, SnapshotBatch, SnapshotManifest
from tasks.spec import PipelineSpec, load_spec

log = logging.getLogger("tasks.data.ingest")

IngestError = DataRejected  # the name this stage's rejections had before tasks/errors.py

# The batch statistics kept in the snapshot manifest and the batch record (and read back by a recovery).
BATCH_STATS = BatchStats.KEPT


@dataclass
class IngestArgs:
    run: str = field(metadata={"help": "the run folder URI; its spec.json is the frozen spec"})


# ------------------------------------------------------------------ one batch of landing files
#
# A batch is read in two passes over local files, so that memory does not grow with the rows (only the keep mask,
# a byte a row, stays in memory):
#   1. every landed file is read in chunks (readers.iter_chunks), each chunk validated, normalized and hashed
#      vectorized (validation.validate_chunk, snapshots.text_digests); bad rows go to the quarantine spool, good
#      ones to a staging Arrow file per landed file and their keys to the key file. A file that turns out bad
#      whole takes its rows back.
#   2. after dedup, conflicts and golden rows are decided on the keys, a hash partition at a time
#      (Batch.resolve), and the bad share is checked, the staged rows are streamed once more into the new
#      snapshot part (write_new_part).


RESOLVE_ROWS = 1 << 19  # rows per hash partition when deciding duplicates and conflicts


def _key_dtypes() -> tuple[Any, Any]:
    return np.dtype(snapshots.KEY_FIELDS), np.dtype([("row", "<i8"), *snapshots.KEY_FIELDS])


KEY_DTYPE, ROW_KEY_DTYPE = _key_dtypes()  # a staged row's key; with its row number, in a partition file
STAGE_SCHEMA_FIELDS = (("text", "string"), ("label", "int16"), ("line", "int64"), ("holdout", "bool"))  # + hash


@dataclass
class Staged:
    """One landed file's good rows in a local Arrow IPC file (text, label, line, holdout, text_hash)."""

    source: str
    path: str
    rows: int


@dataclass
class Batch:
    """What the new landing files hold, checked: the rows to add and what was put aside."""

    batch_id: str
    files: list[LandingFile]
    quarantine: Quarantine = field(default_factory=Quarantine)
    read: list[str] = field(default_factory=list)  # keys of the files whose rows were read
    empty: list[str] = field(default_factory=list)  # keys of the zero-byte files
    rows_read: int = 0
    duplicates: int = 0
    contaminated: int = 0
    quarantine_uri: str | None = None
    staged: list[Staged] = field(default_factory=list)
    # Per staged row, in staging order: its 96-bit dedup key and label, in a local file (KEY_DTYPE records);
    # after resolve(), whether the row is kept.
    keys_path: str | None = None
    keyed_rows: int = 0
    keep: Any = field(default=None, repr=False)
    conflicts: dict[int, tuple[int, str]] = field(default_factory=dict, repr=False)  # row -> (group's first, detail)
    kept_rows: int = 0

    def records(self) -> list[dict[str, Any]]:
        """The files the batch record names as processed: all but those that could not be read this time."""
        return [f.record() for f in recorded(self.files)]

    def stats(self) -> BatchStats:
        return BatchStats(
            batch_id=self.batch_id,
            files_ingested=self.read[:200],
            files_count=len(self.files),
            files_read=len(self.read),
            empty_files=len(self.empty),
            empty_file_keys=self.empty[:200],
            rows_read=self.rows_read,
            quarantined_rows=self.quarantine.row_count,
            quarantined_files=len(self.quarantine.files),
            quarantine_reasons=self.quarantine.reasons(),
            quarantine_uri=self.quarantine_uri,
            duplicates_removed=self.duplicates,
            contaminated_removed=self.contaminated,
        )

    def resolve(self, parent: "snapshots.StoredKeys | None", names: list[str], golden: tuple[Any, Any]) -> None:
        """Exact duplicates (in the batch, or of a stored row) are dropped, keeping a text's first row; all new
        rows of a text with conflicting labels (in the batch or vs the stored one) are quarantined; kept rows
        whose text is in the golden set are dropped too (``contaminated``).

        Decided on the 96-bit text keys, a hash partition (about RESOLVE_ROWS rows) at a time: the key file is
        split by hash into partition files, and a text's rows all fall in one partition, so memory stays the
        same however big the batch (but for ``keep``, a byte a row)."""
        n = self.keyed_rows
        self.keep = np.zeros(n, dtype=bool)
        g_hi, g_lo = golden
        self._golden = (np.sort(g_hi), set(zip(g_hi.tolist(), g_lo.tolist())))
        partitions = min(256, max(1, -(-max(n, parent.rows if parent else 0) // RESOLVE_ROWS)))
        for p, path in enumerate(self._partition_files(partitions)):
            recs = np.fromfile(path, dtype=ROW_KEY_DTYPE)
            os.unlink(path)
            if not len(recs):
                continue
            # Partition p holds the top bytes t with t * partitions // 256 == p.
            stored = parent.index(-(-p * 256 // partitions), -(-(p + 1) * 256 // partitions)) if parent else None
            self._resolve_rows(recs["row"].copy(), recs["hi"].copy(), recs["lo"].copy(), recs["label"].copy(),
                               stored, names)
            del recs, stored
        self.kept_rows = int(self.keep.sum())
        self.quarantine.row_count += len(self.conflicts)
        if self.conflicts:
            self.quarantine.row_reasons[CONFLICTING] += len(self.conflicts)

    def _partition_files(self, partitions: int) -> list[str]:
        """The key file split by the keys' top byte into ``partitions`` files of ROW_KEY_DTYPE records (row
        number + key), in one pass; each file's rows stay in staging order."""
        paths = [f"{self.keys_path}.{p}" for p in range(partitions)]
        outs = [open(path, "wb") for path in paths]  # noqa: SIM115 (closed below)
        try:
            with open(self.keys_path, "rb") as fh:
                start = 0
                while start < self.keyed_rows:
                    block = np.fromfile(fh, dtype=KEY_DTYPE, count=min(RESOLVE_ROWS, self.keyed_rows - start))
                    part = (block["hi"] >> np.uint64(56)).astype(np.int64) * partitions // 256
                    order = np.argsort(part, kind="stable")
                    recs = np.empty(len(block), dtype=ROW_KEY_DTYPE)
                    recs["row"] = order + start
                    for name in ("hi", "lo", "label"):
                        recs[name] = block[name][order]
                    ends = np.cumsum(np.bincount(part, minlength=partitions))
                    for p, (a, b) in enumerate(zip(np.concatenate(([0], ends[:-1])), ends)):
                        if b > a:
                            outs[p].write(recs[a:b].tobytes())
                    start += len(block)
        finally:
            for out in outs:
                out.close()
        return paths

    def _resolve_rows(self, rows: Any, hi: Any, lo: Any, labels: Any, parent: "snapshots.HashIndex | None",
                      names: list[str]) -> None:
        n = len(rows)
        if not n:
            return
        order = np.argsort(hi, kind="stable")  # stable: within a text, rows stay in landing order
        hs, ls = hi[order], lo[order]
        if np.any((hs[1:] == hs[:-1]) & (ls[1:] != ls[:-1])):  # 64 bits shared, 96 not: sort by all 96
            order = np.lexsort((lo, hi))
            hs, ls = hi[order], lo[order]
        starts_mask = np.empty(n, dtype=bool)
        starts_mask[0] = True
        starts_mask[1:] = (hs[1:] != hs[:-1]) | (ls[1:] != ls[:-1])
        starts = np.flatnonzero(starts_mask)
        del starts_mask
        labs = labels[order]
        low, high = np.minimum.reduceat(labs, starts), np.maximum.reduceat(labs, starts)
        known = parent.lookup(hs[starts], ls[starts]) if parent is not None else np.full(len(starts), -1)
        del hs, ls
        conflict = (low != high) | ((known >= 0) & (known != low))
        stored = (known >= 0) & ~conflict
        sizes = np.diff(np.append(starts, n))
        fresh = ~conflict & ~stored
        kept = rows[order[starts[fresh]]]
        kept_hi, kept_lo = hi[order[starts[fresh]]], lo[order[starts[fresh]]]
        g_sorted, g_pairs = self._golden
        if len(g_sorted):
            pos = np.minimum(np.searchsorted(g_sorted, kept_hi), len(g_sorted) - 1)
            maybe = np.flatnonzero(g_sorted[pos] == kept_hi)
            golden = [i for i in maybe.tolist() if (int(kept_hi[i]), int(kept_lo[i])) in g_pairs]
            self.contaminated += len(golden)
            kept = np.delete(kept, golden)
        self.keep[kept] = True
        self.duplicates += int(sizes[stored].sum() + (sizes[fresh] - 1).sum())
        for g in np.flatnonzero(conflict):
            members = rows[order[starts[g]:starts[g] + sizes[g]]]
            group_labels = {int(x) for x in labs[starts[g]:starts[g] + sizes[g]]}
            where = "this batch"
            if known[g] >= 0:
                group_labels.add(int(known[g]))
                where = "this batch and the previous snapshot"
            detail = f"same text labeled {sorted(names[i] for i in group_labels)} in {where}"
            first = int(members.min())
            for r in members:
                self.conflicts[int(r)] = (first, detail)

def recorded(files: list[LandingFile]) -> list[LandingFile]:
    return [f for f in files if f.problem != UNREADABLE]


def batch_id_of(parent_id: str | None, files: list[LandingFile]) -> str:
    identities = sorted(f.identity for f in recorded(files))
    return hashlib.sha256(json.dumps([parent_id, identities]).encode()).hexdigest()[:16]


def _lines_of(fh: Any, gz: bool) -> int:
    fh.seek(0)
    try:
        return readers.line_stats(readers.LineEnds(readers.Content(fh, gz)))  # CR-only lines count too
    except Unparseable:
        return 0


def _copy_of(fh: Any, path: str) -> str:
    fh.seek(0)
    with open(path, "wb") as out:
        shutil.copyfileobj(fh, out, 1 << 20)
    return path


def unsupported_detail(spec: PipelineSpec, key: str, fmt: str | None) -> str:
    allowed = sorted(spec.landing.formats)
    if fmt is not None:
        return f"{fmt} files are not in landing.formats {allowed}"
    name = key.rsplit("/", 1)[-1]
    ext = os.path.splitext(name[:-3] if readers.is_gzip(name) else name)[1] or "(none)"
    hint = "; a .json file (one JSON document) is not read: write JSON Lines, one object per line, as .jsonl" \
        if ext.lower() == ".json" else ""
    return (f"unsupported file type (extension {ext}); expected one of {allowed}: .csv .tsv .jsonl .ndjson .parquet, "
            f"optionally .gz, or set data.format to read every landed file as one format{hint}")


def stage_file(spec: PipelineSpec, f: LandingFile, fh: Any, batch: Batch, labels: LabelMap, work: str,
               number: int, keys_file: Any) -> Staged | BadFile | None:
    """Pass 1 for one landed file: its good rows staged, its bad rows in the quarantine spool; a BadFile (its
    rows taken back) when the file is bad whole; None when it is empty."""
    fmt = readers.file_format(f.key, spec.data.format)
    gz = readers.is_gzip(f.key)
    content = readers.Content(fh, gz)
    copy_path = os.path.join(work, f"bad-{number}")
    try:
        head = content.read(1 << 16)
    except Unparseable as exc:
        return BadFile(f.key, UNPARSEABLE_FILE if fmt else UNSUPPORTED_FORMAT, str(exc), f.size, 0,
                       copy_path=_copy_of(fh, copy_path))
    if not head:
        return None
    if fmt is None or fmt not in spec.landing.formats:
        return BadFile(f.key, UNSUPPORTED_FORMAT, unsupported_detail(spec, f.key, fmt), f.size, _lines_of(fh, gz),
                       copy_path=_copy_of(fh, copy_path))
    fh.seek(0)
    content = readers.Content(fh, gz)
    stage_path = os.path.join(work, f"stage-{number}.arrow")
    mark, rows_before = batch.quarantine.mark(), batch.rows_read
    keyed_before = batch.keyed_rows
    staged = 0
    schema = pa.schema([*STAGE_SCHEMA_FIELDS, ("text_hash", pa.binary(snapshots.TEXT_HASH_BYTES))])
    writer = pa.ipc.new_file(stage_path, schema)  # Arrow IPC: staging is written and read back once, locally
    source = fh
    try:
        if fmt == "parquet" and gz:  # Parquet needs a seekable file: decompress it to one first
            source = open(_decompress(content, os.path.join(work, f"unzipped-{number}")), "rb")  # noqa: SIM115
        chunks = readers.iter_chunks(content, source, fmt, spec.data.text_column, spec.data.label_column,
                                     tsv_quoting=spec.data.tsv_quoting, csv_delimiter=spec.data.csv_delimiter)
        for chunk in chunks:
            good, bad = validate_chunk(f.key, chunk, labels, spec.data.max_text_chars)
            batch.rows_read += len(chunk)
            batch.quarantine.add_rows(bad)
            if not len(good.lines):
                continue
            digests = snapshots.text_digests(good.texts)
            text_hash = digests[:, :snapshots.TEXT_HASH_BYTES]
            hi, lo = snapshots.hash_keys(text_hash)
            keys = np.empty(len(hi), dtype=KEY_DTYPE)
            keys["hi"], keys["lo"], keys["label"] = hi, lo, good.labels
            keys_file.write(keys.tobytes())
            batch.keyed_rows += len(keys)
            hashes = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(snapshots.TEXT_HASH_BYTES), len(good.lines),
                [None, pa.py_buffer(text_hash.tobytes())])
            writer.write_table(pa.table({
                "text": good.texts, "label": pa.array(good.labels.astype("int16")),
                "line": pa.array(good.lines),
                "holdout": pa.array(snapshots.holdout_mask(digests, spec.data.holdout_fraction)),
                "text_hash": hashes}, schema=schema))
            staged += len(good.lines)
        landing.check_unchanged(f, fh)
    except (Unparseable, LandingChanged) as exc:
        writer.close()
        os.unlink(stage_path)
        if source is not fh:
            source.close()
        batch.quarantine.rollback(mark)
        batch.rows_read = rows_before
        batch.keyed_rows = keyed_before
        keys_file.seek(keyed_before * KEY_DTYPE.itemsize)
        keys_file.truncate()
        if isinstance(exc, LandingChanged):  # still being written: not recorded, so the next run reads it whole
            return BadFile(f.key, UNREADABLE, str(exc), f.size)
        return BadFile(f.key, UNPARSEABLE_FILE, str(exc), f.size, _lines_of(fh, gz), copy_path=_copy_of(fh, copy_path))
    writer.close()
    if source is not fh:
        source.close()
    return Staged(f.key, stage_path, staged)


def _decompress(content: readers.Content, path: str) -> str:
    with open(path, "wb") as out:
        while block := content.read():
            out.write(block)
    return path


def read_batch(spec: PipelineSpec, files: list[LandingFile], parent: "snapshots.StoredKeys | None",
               parent_id: str | None, golden: tuple[Any, Any], work: str) -> Batch:
    """Pass 1 and the dedup decisions: read, check and hash the new files; nothing is written to storage."""
    batch = Batch(batch_id_of(parent_id, files), files, Quarantine(os.path.join(work, "rows.jsonl")),
                  keys_path=os.path.join(work, "keys.bin"))
    with open(batch.keys_path, "wb") as keys_file:
        read_files(spec, batch, work, keys_file)
    batch.resolve(parent, spec.data.labels, golden)
    return batch


def read_files(spec: PipelineSpec, batch: Batch, work: str, keys_file: Any) -> None:
    labels = LabelMap(spec.data.labels, spec.data.label_aliases)
    for number, f in enumerate(batch.files):
        if f.problem:  # a symlink, a special file: reported, never read
            batch.quarantine.files.append(BadFile(f.key, f.problem, f.detail, f.size))
            continue
        try:
            with landing.open_file(spec.layout.landing, f, work) as fh:
                outcome = stage_file(spec, f, fh, batch, labels, work, number, keys_file)
        except LandingRefused as exc:
            outcome = BadFile(f.key, exc.reason, exc.detail, f.size)
        except storage.NotFound:  # gone since the listing (or a key storage cannot address)
            outcome = BadFile(f.key, UNREADABLE, "not found when read", f.size)
        except OSError as exc:  # local: permission denied, or gone since the listing
            outcome = BadFile(f.key, UNREADABLE, f"cannot read: {exc.strerror}", f.size)
        if outcome is None:
            batch.empty.append(f.key)
        elif isinstance(outcome, BadFile):
            batch.quarantine.files.append(outcome)
            if outcome.reason == UNREADABLE:  # not recorded as processed: the next run tries it again
                f.problem, f.detail = UNREADABLE, outcome.detail
        else:
            batch.read.append(f.key)
            batch.staged.append(outcome)
        log.info("file %d/%d read: %s (%s)", number + 1, len(batch.files), f.key,
                 "empty" if outcome is None else "quarantined whole" if isinstance(outcome, BadFile) else "staged")


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
            f"First: {q.examples()}. Fix or remove the files in {spec.layout.landing} and rerun."
            + (f" Unknown {unknown_label_hint(spec.data.labels, spec.data.label_aliases)}."
               if UNKNOWN_LABEL in q.row_reasons else ""))


@dataclass
class NewPart:
    """The batch's new rows as a local Parquet file, with what the manifest says of them."""

    path: str | None
    rows: int
    label_counts: dict[str, int]
    split_counts: dict[str, int]
    content: snapshots.ContentSum


def write_new_part(spec: PipelineSpec, batch: Batch, work: str) -> NewPart:
    """Pass 2: stream the staged rows into the snapshot part (text, label, split, batch, text_hash), keeping the
    rows resolve() kept, and add the conflicting rows to the quarantine (after the files' rows, by text)."""
    names = spec.data.labels
    path = os.path.join(work, "part.parquet")
    schema = pa.schema([("text", pa.string()), ("label", pa.int64()), ("split", pa.string()),
                        ("batch", pa.string()), ("text_hash", pa.binary(snapshots.TEXT_HASH_BYTES))])
    counts = np.zeros(len(names), dtype=np.int64)
    holdout = 0
    content = snapshots.ContentSum()
    conflicts: list[tuple[int, int, Bad]] = []
    split_names = pa.array(["train", "holdout"])
    # Unique texts gain nothing from dictionary encoding; the repeated columns do.
    writer = pq.ParquetWriter(path, schema, use_dictionary=["split", "batch"]) if batch.kept_rows else None
    conflict_rows = np.array(sorted(batch.conflicts), dtype=np.int64)
    offset = 0
    for staged in batch.staged:
        for rb in _staged_batches(staged.path):
            n = rb.num_rows
            keep = batch.keep[offset:offset + n]
            lo, hi = np.searchsorted(conflict_rows, [offset, offset + n])
            for row in conflict_rows[lo:hi].tolist():
                first, detail = batch.conflicts[row]
                i = row - offset
                label = names[rb.column("label")[i].as_py()]
                conflicts.append((first, row, Bad(staged.source, rb.column("line")[i].as_py(), CONFLICTING, detail,
                                                  {"text": rb.column("text")[i].as_py(), "label": label})))
            offset += n
            if writer is None or not keep.any():
                continue
            kept = rb.filter(pa.array(keep))
            labels = kept.column("label").to_numpy().astype(np.int64)
            is_holdout = kept.column("holdout").to_numpy(zero_copy_only=False)
            hashes = kept.column("text_hash")
            text_hash = snapshots.fixed_binary(hashes, snapshots.TEXT_HASH_BYTES)
            writer.write_table(pa.table({
                "text": kept.column("text"), "label": pa.array(labels),
                "split": split_names.take(pa.array(is_holdout.astype(np.int8))),
                "batch": pa.array([batch.batch_id]).take(pa.array(np.zeros(len(kept), dtype=np.int8))),
                "text_hash": hashes}, schema=schema))
            counts += np.bincount(labels, minlength=len(names))
            holdout += int(is_holdout.sum())
            content.add(text_hash, labels)
    if writer is not None:
        writer.close()
    conflicts.sort(key=lambda c: (c[0], c[1]))
    # The counts were taken in resolve(); only the rows themselves go to the spool now.
    batch.quarantine.row_count -= len(conflicts)
    batch.quarantine.row_reasons[CONFLICTING] -= len(conflicts)
    batch.quarantine.add_rows([c[2] for c in conflicts])
    if not batch.quarantine.row_reasons[CONFLICTING]:
        del batch.quarantine.row_reasons[CONFLICTING]
    return NewPart(path if writer is not None else None, batch.kept_rows,
                   {name: int(counts[i]) for i, name in enumerate(names)},
                   {"train": batch.kept_rows - holdout, "holdout": holdout}, content)


def _staged_batches(path: str):
    with pa.OSFile(path) as fh:
        reader = pa.ipc.open_file(fh)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def golden_array(golden: dict[str, Any]) -> Any:
    """The golden set's texts as a sorted arrow string array."""
    return pa.array(sorted(golden_texts(golden)), pa.string())


def golden_keys(golden: dict[str, Any]) -> tuple[Any, Any]:
    return snapshots.text_keys(golden_array(golden))


# ------------------------------------------------------------------ committing


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: int(a.get(k, 0)) + int(b.get(k, 0)) for k in {**a, **b}}


def commit(spec: PipelineSpec, batch: Batch, new: NewPart, latest: dict[str, Any] | None,
           latest_etag: str | None, parent_manifest: SnapshotManifest | None, parent: "snapshots.StoredKeys | None",
           golden: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """part -> manifest -> latest.json (moved only from ``latest_etag``, the version this run read) -> batch
    record; returns the stage result."""
    where = spec.layout.snapshots
    stats = batch.stats()
    parent_manifest = SnapshotManifest() if parent_manifest is None else parent_manifest
    part = snapshots.write_part(where, batch.batch_id, new.path)
    total = parent.total.merged(new.content) if parent is not None else new.content
    digest = total.hexdigest()
    golden_fields = snapshots.golden_fields(golden)
    snapshot_id = snapshots.snapshot_id_of(digest, golden["golden_id"], golden_fields.get("golden_generation", 0))
    rows = total.rows
    label_counts = {name: parent.label_counts.get(name, 0) + new.label_counts[name] for name in spec.data.labels} \
        if parent is not None else new.label_counts
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id,
        pipeline=spec.name,
        content_hash=digest,
        content_sum=total.encode(),
        parent=latest["snapshot_id"] if latest else None,
        parts=parent_manifest.parts + [part],
        rows=rows,
        new_rows=new.rows,
        label_counts=label_counts,
        split_counts=_add_counts(parent.split_counts, new.split_counts) if parent is not None else new.split_counts,
        labels=spec.data.labels,
        batch=SnapshotBatch(batch_id=batch.batch_id, files=batch.records(), label_counts=new.label_counts,
                            **stats.kept()),
        sources=sorted({*parent_manifest.sources, *batch.read}),
        **golden_fields,
        created_at=storage.utcnow(),
    )
    snapshot_uri = snapshots.write_manifest(where, manifest)
    pointer = {"snapshot_id": snapshot_id, "snapshot_uri": snapshot_uri, "rows": rows,
               "updated_at": storage.utcnow()}
    try:
        snapshots.move_latest(where, pointer, latest_etag)
    except storage.PreconditionFailed:
        now, _ = snapshots.read_latest(where)
        if now and now["snapshot_id"] == snapshot_id:  # a concurrent ingest committed these same files first
            return {**unchanged(now, base, reason="a concurrent ingest committed this snapshot"), **stats.dump()}
        # Transient: a retry reads the new pointer and ingests on top of it.
        raise InfrastructureError(f"another ingest moved {snapshots.latest_uri(where)} while this one ran; "
                                  f"rerun to pick up its snapshot") from None
    snapshots.record_batch(where, batch.batch_id, batch.records(), snapshot_id, stats)
    log.info("snapshot %s: %d rows (%d new) from %d file(s)", snapshot_id, rows, new.rows, len(batch.read))
    extra = {"snapshot_id": snapshot_id, "snapshot_uri": snapshot_uri, "total_rows": rows, "new_rows": new.rows}
    return {**base, **stats.dump(), **extra, "changed": True, "parent_snapshot_id": manifest.parent,
            "label_counts": manifest.label_counts, "asset_extra": extra}


def golden_changed(manifest: SnapshotManifest | None, golden: dict[str, Any]) -> bool:
    """The latest snapshot was checked against another golden set than the current one (a re-freeze since). A
    manifest that names none (written by hand) is taken as it is."""
    return manifest is not None and bool(manifest.golden_id) and manifest.golden_id != golden["golden_id"]


def remove_golden_rows(spec: PipelineSpec, latest: dict[str, Any], latest_etag: str | None,
                       manifest: SnapshotManifest, golden: dict[str, Any], base: dict[str, Any],
                       work: str) -> dict[str, Any] | None:
    """After a re-freeze: a new snapshot of the latest one's rows minus those whose text is in the current golden
    set, naming that set. Only the parts that hold such rows are rewritten (new objects, snapshots.filter_part);
    sums and counts are the latest's minus the removed rows'. ``golden_changed`` in the manifest and the result
    says from which set to which, and what was removed. Returns the stage result for that snapshot, or None when
    a concurrent ingest made one first."""
    where, names = spec.layout.snapshots, list(spec.data.labels)
    if manifest.content_sum is None or manifest.split_counts is None:  # an old manifest: sum it
        stored = snapshots.hash_index(latest["snapshot_uri"], manifest, work, names)
        total, labels, splits = stored.total, stored.label_counts, stored.split_counts
    else:
        total = snapshots.ContentSum.decode(manifest.content_sum)
        labels, splits = dict(manifest.label_counts), dict(manifest.split_counts)
    texts = golden_array(golden)
    hi, _ = snapshots.text_keys(texts)
    parts: list[str] = []
    rewritten: dict[str, str | None] = {}
    by_batch: dict[str, int] = {}
    for part in manifest.parts:
        out = snapshots.filter_part(where, part, texts, hi, names, work)
        if out is None:
            parts.append(part)
            continue
        if out.part:
            parts.append(out.part)
        rewritten[part] = out.part
        by_batch[snapshots.batch_of_part(part)] = out.removed.rows
        total = total.minus(out.removed)
        labels = {k: labels.get(k, 0) - out.label_counts.get(k, 0) for k in labels}
        splits = {k: splits.get(k, 0) - out.split_counts.get(k, 0) for k in splits}
    removed = sum(by_batch.values())
    fields = snapshots.golden_fields(golden)
    digest = total.hexdigest()
    change = {"from": manifest.golden_id, "from_uri": manifest.golden_uri, "to": golden["golden_id"],
              "to_uri": golden["golden_uri"], "removed_rows": removed, "removed_by_batch": by_batch,
              "rewritten_parts": rewritten}
    new = SnapshotManifest(
        snapshot_id=snapshots.snapshot_id_of(digest, golden["golden_id"], fields.get("golden_generation", 0)),
        pipeline=spec.name, content_hash=digest, content_sum=total.encode(),
        parent=manifest.snapshot_id, parts=parts, rows=total.rows, new_rows=0,
        label_counts=labels, split_counts=splits, labels=names if manifest.labels is None else manifest.labels,
        sources=manifest.sources, **fields, golden_changed=change, created_at=storage.utcnow(),
    )
    snapshot_uri = snapshots.write_manifest(where, new)
    pointer = {"snapshot_id": new.snapshot_id, "snapshot_uri": snapshot_uri, "rows": new.rows,
               "updated_at": storage.utcnow()}
    try:
        snapshots.move_latest(where, pointer, latest_etag)
    except storage.PreconditionFailed:
        _, _, now = snapshots.read_latest_manifest(where)
        if now and not golden_changed(now, golden):  # a concurrent ingest did it; build on theirs
            return None
        raise InfrastructureError(f"another ingest moved {snapshots.latest_uri(where)} while this one removed the "
                                  f"new golden set's rows; rerun to pick up its snapshot") from None
    log.info("golden set %s -> %s: snapshot %s without %d stored row(s) now in the golden set (%d part(s) "
             "rewritten)", change["from"], change["to"], new.snapshot_id, removed, len(rewritten))
    extra = {"snapshot_id": new.snapshot_id, "snapshot_uri": snapshot_uri, "total_rows": new.rows,
             "new_rows": 0}
    return {**base, **extra, "changed": True, "parent_snapshot_id": new.parent, "label_counts": labels,
            "golden_changed": change, "asset_extra": extra,
            "reason": f"the golden set changed ({change['from']} -> {change['to']}): {removed} stored row(s) whose "
                      f"text is in the new set removed"}


def recover_unrecorded_batch(spec: PipelineSpec, latest: dict[str, Any], manifest: SnapshotManifest,
                             files: list[LandingFile], base: dict[str, Any]) -> dict[str, Any] | None:
    """A run that moved latest.json but died before recording its batch: record it now and report the snapshot
    as new (its Asset event was never sent), instead of re-reading the files as duplicates. ``manifest`` is the
    latest snapshot's."""
    batch = manifest.batch
    committed = {(f.key, f.etag, f.size) for f in batch.files} if batch else set()
    if not committed or committed != {f.identity for f in recorded(files)}:
        return None
    kept = {k: v for k, v in batch.dump().items() if k in BATCH_STATS}  # the statistics the manifest holds
    stats = BatchStats.read({**kept, "batch_id": batch.batch_id})
    snapshots.record_batch(spec.layout.snapshots, batch.batch_id, [f.dump() for f in batch.files],
                           manifest.snapshot_id, stats)
    log.info("recorded batch %s of snapshot %s (its run stopped before recording it)", batch.batch_id,
             manifest.snapshot_id)
    extra = {"snapshot_id": manifest.snapshot_id, "snapshot_uri": latest["snapshot_uri"],
             "total_rows": manifest.rows, "new_rows": manifest.new_rows}
    return {**base, **stats.dump(), **extra, "changed": True, "parent_snapshot_id": manifest.parent,
            "label_counts": manifest.label_counts, "recovered": True, "asset_extra": extra}


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
    # latest.json, its ETag (the version commit() moves it from) and its snapshot's manifest: read once.
    latest, latest_etag, latest_manifest = snapshots.read_latest_manifest(layout.snapshots)
    if latest:
        snapshots.check_labels(spec.data.labels, latest_manifest.labels, latest_manifest.label_counts,
                               f"latest snapshot {latest['snapshot_id']}")
    files = landing.new_files(layout.landing, snapshots.processed_files(layout.snapshots))
    base = {"golden_uri": golden["golden_uri"], "golden_id": golden["golden_id"], "landing_uri": layout.landing}
    if not files and latest is None:
        raise DataRejected(f"no data yet: no files in {layout.landing} and no snapshot in {layout.snapshots}")
    recovered = recover_unrecorded_batch(spec, latest, latest_manifest, files, base) if files and latest else None
    if recovered and not golden_changed(latest_manifest, golden):
        return finish(run_uri, recovered)

    with tempfile.TemporaryDirectory(prefix="ingest-") as work:
        # A re-freeze since the latest snapshot: first a snapshot without the new golden set's rows, then the batch
        # on top of it. Without one, nothing here runs and the ingest is what it always was.
        refreshed = None
        if latest and golden_changed(latest_manifest, golden):
            refreshed = remove_golden_rows(spec, latest, latest_etag, latest_manifest, golden, base, work)
            latest, latest_etag, latest_manifest = snapshots.read_latest_manifest(layout.snapshots)
            if recovered:  # its batch is recorded now; its files are not new
                refreshed = {**recovered, **(refreshed or {})}
                files = []
        if not files:
            return finish(run_uri, refreshed or unchanged(latest, base, reason="no new landing files"))

        parent = snapshots.hash_index(latest["snapshot_uri"], latest_manifest, work, spec.data.labels) \
            if latest else None
        batch = read_batch(spec, files, parent, latest["snapshot_id"] if latest else None, golden_keys(golden), work)
        check_bad_share(spec, batch)
        new = write_new_part(spec, batch, work)
        batch.quarantine.close()
        if batch.quarantine:
            batch.quarantine_uri = storage.join(layout.quarantine, batch.batch_id)
            batch.quarantine.write(batch.quarantine_uri, batch.batch_id)
        if not new.rows:
            if latest is None:
                raise DataRejected(
                    f"no data yet: {len(files)} landing file(s) gave no usable rows ({batch.quarantine.reasons()}, "
                    f"{batch.duplicates} duplicates, {batch.contaminated} golden rows, {len(batch.empty)} empty files)")
            snapshots.record_batch(layout.snapshots, batch.batch_id, batch.records(), latest["snapshot_id"],
                                   batch.stats())
            return finish(run_uri, {**(refreshed or unchanged(latest, base, reason="no new rows in the new files")),
                                    **batch.stats().dump()})
        result = commit(spec, batch, new, latest, latest_etag, latest_manifest, parent, golden, base)
        if refreshed:
            result["golden_changed"] = refreshed["golden_changed"]
        return finish(run_uri, result)


def main(argv: list[str]) -> int:
    args = cli.parse(IngestArgs, argv, prog="python -m tasks ingest", description=__doc__.splitlines()[0])
    spec = load_spec(storage.join(args.run, "spec.json"))  # a SpecError is a SpecInvalid: exit 4
    run_ingest(spec, args.run)  # DataRejected / SpecInvalid / InfrastructureError -> python -m tasks exit codes
    return 0
