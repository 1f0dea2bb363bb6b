"""``python -m tasks ingest --run RUN_URI``: turn new landing files into an immutable snapshot.

Steps, in order (README: Ingestion):

1. freeze the golden set on first use (``golden/<pipeline>/<golden_id>/``, pointer ``current.json``);
2. list the landing URI and keep files whose identity (key + ETag + size) no stored batch record names;
3. parse CSV / TSV / JSONL / Parquet, map columns and labels, normalize text (NFC, trimmed, whitespace collapsed);
4. quarantine bad rows (and whole unparseable files) with source, line and reason; fail without committing
   anything if more than ``data.max_bad_fraction`` of the batch is bad;
5. drop exact duplicates (within the batch and against the previous snapshot) and golden-set rows;
6. write the new rows as ``parts/<batch_id>.parquet`` and a snapshot manifest that lists the parent's parts
   plus the new one; the snapshot id is a hash of the content, so the same data gives the same id;
7. move ``latest.json`` (conditional write), then record the batch (so its files count as processed).

Every object is written create-only, except the ``latest.json`` pointer, which moves only from the version
this run read. A crash at any point leaves either nothing or a state the next run completes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import posixpath
import sys
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from tasks import results, storage
from tasks.data import snapshots
from tasks.spec import PipelineSpec, load_spec

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("tasks.data.ingest")

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}

# Quarantine reasons (README: Quarantine reasons).
EMPTY_TEXT = "empty_text"
TEXT_TOO_LONG = "text_too_long"
MISSING_LABEL = "missing_label"
UNKNOWN_LABEL = "unknown_label"
UNDECODABLE = "undecodable_bytes"
MALFORMED = "malformed_row"
CONFLICTING = "conflicting_labels"
UNPARSEABLE_FILE = "unparseable_file"
UNSUPPORTED_FORMAT = "unsupported_format"

_CSV_FIELD_LIMIT = 1 << 24


class IngestError(RuntimeError):
    """The ingest cannot go on; the message says why and what to do."""


class Unparseable(ValueError):
    """A whole file that cannot be parsed; it is quarantined whole."""


# ------------------------------------------------------------------ text and labels


def normalize_text(text: str) -> str:
    """Unicode NFC, trimmed, every run of whitespace collapsed to one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def split_of(text: str, holdout_fraction: float) -> str:
    """train | holdout from a hash of the normalized text: a row never changes split between versions."""
    bucket = int.from_bytes(hashlib.sha256(b"split:" + text.encode("utf-8")).digest()[:8], "big") / 2**64
    return "holdout" if bucket < holdout_fraction else "train"


def _undecodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from surrogateescape = bytes that were not UTF-8
        return True
    return False


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


class LabelMap:
    """Raw label values -> int index into spec.data.labels, through label_aliases."""

    def __init__(self, labels: list[str], aliases: dict[str, str]) -> None:
        self.labels = labels
        self._index = {name: i for i, name in enumerate(labels)}
        for raw, name in aliases.items():
            self._index[str(raw).strip()] = self._index[name]

    @staticmethod
    def _raw(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, float):
            if value != value:  # NaN from Parquet / pandas
                return None
            if value.is_integer():
                value = int(value)
        if isinstance(value, bool):
            value = int(value)
        raw = str(value).strip()
        return raw or None

    def lookup(self, value: Any) -> tuple[int | None, str | None]:
        """(index, None) or (None, reason)."""
        raw = self._raw(value)
        if raw is None:
            return None, MISSING_LABEL
        index = self._index.get(raw)
        if index is None:
            index = self._index.get(raw.lower())
        return (index, None) if index is not None else (None, UNKNOWN_LABEL)


# ------------------------------------------------------------------ reading files


@dataclass
class RawRow:
    line: int  # 1-based physical line (CSV/TSV: header is line 1; JSONL: line; Parquet: row number)
    text: Any
    label: Any
    problem: str | None = None  # MALFORMED / UNDECODABLE, found while parsing
    detail: str = ""
    raw: Any = None


def file_format(key: str) -> str | None:
    return FORMATS.get(posixpath.splitext(key.lower())[1])


def _decode(data: bytes) -> str:
    if b"\x00" in data:
        raise Unparseable("binary content (NUL bytes); not a text file")
    # surrogateescape keeps undecodable bytes as lone surrogates, so only the rows that hold them are bad.
    return data.decode("utf-8-sig", errors="surrogateescape")


def _read_delimited(data: bytes, fmt: str, text_col: str, label_col: str) -> list[RawRow]:
    text = _decode(data)
    delimiter = "\t" if fmt == "tsv" else ","
    # TSV has no quoting (SST-2 sentences hold bare quotes); CSV follows RFC 4180.
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        header = next(reader, None)
        if header is None:
            raise Unparseable("empty file")
        header = [h.strip() for h in header]
        missing = [c for c in (text_col, label_col) if c not in header]
        if missing:
            raise Unparseable(f"header {header[:10]} lacks column(s) {missing}")
        t_idx, l_idx = header.index(text_col), header.index(label_col)
        rows: list[RawRow] = []
        for fields in reader:
            line = reader.line_num
            if not fields or fields == [""]:
                continue  # blank line
            raw = delimiter.join(fields)
            if len(fields) != len(header):
                rows.append(RawRow(line, None, None, MALFORMED,
                                   f"expected {len(header)} fields, got {len(fields)}", _printable(raw)))
                continue
            row = RawRow(line, fields[t_idx], fields[l_idx], raw=_printable(raw))
            if _undecodable(fields[t_idx]) or _undecodable(fields[l_idx]):
                row.problem, row.detail = UNDECODABLE, "bytes that are not valid UTF-8"
            rows.append(row)
        return rows
    except csv.Error as exc:
        raise Unparseable(f"CSV error near line {reader.line_num}: {exc}") from None


def _read_jsonl(data: bytes, text_col: str, label_col: str) -> list[RawRow]:
    rows: list[RawRow] = []
    for line_no, line in enumerate(_decode(data).splitlines(), start=1):
        if not line.strip():
            continue
        if _undecodable(line):
            rows.append(RawRow(line_no, None, None, UNDECODABLE, "bytes that are not valid UTF-8", _printable(line)))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append(RawRow(line_no, None, None, MALFORMED, f"invalid JSON: {exc.msg}", line[:500]))
            continue
        if not isinstance(obj, dict):
            rows.append(RawRow(line_no, None, None, MALFORMED, "not a JSON object", line[:500]))
            continue
        if text_col not in obj:
            rows.append(RawRow(line_no, None, None, MALFORMED, f"no field {text_col!r}", line[:500]))
            continue
        rows.append(RawRow(line_no, obj[text_col], obj.get(label_col), raw=line[:500]))
    return rows


def _read_parquet(data: bytes, text_col: str, label_col: str) -> list[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise Unparseable(f"not a readable Parquet file: {exc}") from None
    missing = [c for c in (text_col, label_col) if c not in table.column_names]
    if missing:
        raise Unparseable(f"columns {table.column_names[:10]} lack {missing}")
    texts = table.column(text_col).to_pylist()
    labels = table.column(label_col).to_pylist()
    return [RawRow(i + 1, t, l, raw={"text": t, "label": l}) for i, (t, l) in enumerate(zip(texts, labels))]


def read_rows(data: bytes, fmt: str, text_col: str, label_col: str) -> list[RawRow]:
    if fmt in ("csv", "tsv"):
        return _read_delimited(data, fmt, text_col, label_col)
    if fmt == "jsonl":
        return _read_jsonl(data, text_col, label_col)
    if fmt == "parquet":
        return _read_parquet(data, text_col, label_col)
    raise Unparseable(f"unsupported format {fmt!r}")


# ------------------------------------------------------------------ validation


@dataclass
class Bad:
    source: str
    line: int | None
    reason: str
    detail: str = ""
    raw: Any = None


@dataclass
class Good:
    source: str
    line: int
    text: str
    label: int


def validate(source: str, rows: Iterable[RawRow], labels: LabelMap, max_chars: int) -> tuple[list[Good], list[Bad]]:
    good: list[Good] = []
    bad: list[Bad] = []
    for row in rows:
        if row.problem:
            bad.append(Bad(source, row.line, row.problem, row.detail, row.raw))
            continue
        if row.text is not None and not isinstance(row.text, str):
            bad.append(Bad(source, row.line, MALFORMED, f"text is {type(row.text).__name__}, not a string", row.raw))
            continue
        text = normalize_text(row.text or "")
        if not text:
            bad.append(Bad(source, row.line, EMPTY_TEXT, "empty or whitespace-only text", row.raw))
            continue
        if len(text) > max_chars:
            bad.append(Bad(source, row.line, TEXT_TOO_LONG, f"{len(text)} characters > {max_chars}", _clip(row.raw)))
            continue
        index, reason = labels.lookup(row.label)
        if reason:
            detail = "no label" if reason == MISSING_LABEL else f"label {row.label!r} not in {labels.labels}"
            bad.append(Bad(source, row.line, reason, detail, row.raw))
            continue
        good.append(Good(source, row.line, text, index))
    return good, bad


def _clip(raw: Any, limit: int = 500) -> Any:
    if isinstance(raw, str) and len(raw) > limit:
        return raw[:limit] + f"... ({len(raw)} chars)"
    return raw


def resolve_conflicts(good: list[Good], known: dict[str, int], labels: list[str]) -> tuple[list[Good], list[Bad], int]:
    """Drop exact duplicates and quarantine texts with conflicting labels.

    ``known`` maps texts already in the previous snapshot to their label. Returns (kept, conflicts, duplicates).
    """
    by_text: dict[str, list[Good]] = defaultdict(list)
    for row in good:
        by_text[row.text].append(row)
    kept: list[Good] = []
    conflicts: list[Bad] = []
    duplicates = 0
    for text, group in by_text.items():
        batch_labels = {row.label for row in group}
        if text in known:
            batch_labels.add(known[text])
        if len(batch_labels) > 1:
            names = sorted(labels[i] for i in batch_labels)
            where = "this batch and the previous snapshot" if text in known else "this batch"
            for row in group:
                conflicts.append(Bad(row.source, row.line, CONFLICTING,
                                     f"same text labeled {names} in {where}", {"text": text, "label": labels[row.label]}))
            continue
        if text in known:
            duplicates += len(group)
            continue
        kept.append(group[0])
        duplicates += len(group) - 1
    return kept, conflicts, duplicates


# ------------------------------------------------------------------ golden set


def _read_golden_source(spec: PipelineSpec) -> tuple[list[Good], list[Bad]]:
    source = spec.golden.source_uri
    fmt = file_format(source)
    if fmt is None:
        raise IngestError(f"golden.source_uri {source} has no supported extension ({', '.join(FORMATS)})")
    try:
        data = storage.read_bytes(source)
    except storage.NotFound:
        raise IngestError(
            f"the golden set is not frozen yet and its source {source} does not exist; upload the golden "
            f"evaluation file there (or set golden.source_uri) before the first ingest"
        ) from None
    text_col = spec.golden.text_column or spec.data.text_column
    label_col = spec.golden.label_column or spec.data.label_column
    labels = LabelMap(spec.data.labels, spec.data.label_aliases)
    try:
        rows = read_rows(data, fmt, text_col, label_col)
    except Unparseable as exc:
        raise IngestError(f"golden source {source} cannot be parsed: {exc}") from None
    return validate(source, rows, labels, spec.data.max_text_chars)


def ensure_golden(spec: PipelineSpec) -> dict[str, Any]:
    """The frozen golden set's pointer ({golden_id, golden_uri, rows}); freezes it on first use."""
    import pandas as pd

    pointer_uri = storage.join(spec.layout.golden, "current.json")
    try:
        return storage.read_json(pointer_uri)
    except storage.NotFound:
        pass
    good, bad = _read_golden_source(spec)
    first: dict[str, int] = {}
    for row in good:
        first.setdefault(row.text, row.label)  # keep the first label of a repeated text
    if not first:
        raise IngestError(f"golden source {spec.golden.source_uri} has no valid rows ({len(bad)} bad)")
    frame = pd.DataFrame({"text": list(first), "label": pd.Series(list(first.values()), dtype="int64")})
    golden_id = content_hash(frame)[:16]
    golden_uri = storage.join(spec.layout.golden, golden_id)
    manifest = {
        "golden_id": golden_id,
        "source_uri": spec.golden.source_uri,
        "rows": len(frame),
        "label_counts": _label_counts(frame["label"], spec.data.labels),
        "skipped_rows": Counter(b.reason for b in bad),
        "duplicate_rows": len(good) - len(frame),
        "content_hash": content_hash(frame),
        "frozen_at": storage.utcnow(),
    }
    _create(storage.join(golden_uri, "data.parquet"), snapshots.parquet_bytes(frame))
    _create(storage.join(golden_uri, "manifest.json"), _json_bytes(manifest))
    pointer = {"golden_id": golden_id, "golden_uri": golden_uri, "rows": len(frame)}
    try:
        storage.write_json(pointer_uri, pointer, if_none_match=True)
    except storage.PreconditionFailed:  # another ingest froze it first; theirs wins
        return storage.read_json(pointer_uri)
    log.info("froze golden set %s (%d rows) from %s", golden_id, len(frame), spec.golden.source_uri)
    return pointer


# ------------------------------------------------------------------ storage helpers


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def _create(uri: str, data: bytes) -> None:
    """Create-only write; an existing object is left alone (a retry writes the same deterministic content)."""
    try:
        storage.write_bytes(uri, data, if_none_match=True)
    except storage.PreconditionFailed:
        log.info("%s exists already; keeping it", uri)


def content_hash(frame: "pd.DataFrame") -> str:
    """Order-independent hash of the (text, label) rows."""
    digests = sorted(hashlib.sha256(f"{label}\t{text}".encode("utf-8")).digest()
                     for text, label in zip(frame["text"], frame["label"]))
    digest = hashlib.sha256()
    for d in digests:
        digest.update(d)
    return digest.hexdigest()


def _label_counts(labels: Iterable[int], names: list[str]) -> dict[str, int]:
    counts = Counter(int(x) for x in labels)
    return {name: counts.get(i, 0) for i, name in enumerate(names)}


@dataclass
class FileId:
    key: str  # path relative to the landing URI
    etag: str
    size: int
    mtime: float

    @property
    def identity(self) -> tuple[str, str, int]:
        return (self.key, self.etag, self.size)


def _batch_records_uri(spec: PipelineSpec) -> str:
    return storage.join(spec.layout.snapshots, "batches")


def processed_files(spec: PipelineSpec) -> set[tuple[str, str, int]]:
    """Identities of every landing file a committed batch already holds (from the immutable batch records)."""
    done: set[tuple[str, str, int]] = set()
    for obj in storage.list_objects(_batch_records_uri(spec)):
        if obj.uri.endswith(".json"):
            for f in storage.read_json(obj.uri).get("files", []):
                done.add((f["key"], f["etag"], int(f["size"])))
    return done


def new_landing_files(spec: PipelineSpec) -> list[FileId]:
    landing = spec.layout.landing.rstrip("/")
    done = processed_files(spec)
    out: list[FileId] = []
    for obj in storage.list_objects(landing):
        key = obj.uri[len(landing) + 1:]
        name = posixpath.basename(key)
        if name.startswith((".", "_")):  # markers such as _SUCCESS, editor/temp files
            continue
        fid = FileId(key, obj.etag, obj.size, obj.mtime)
        if fid.identity not in done:
            out.append(fid)
    return out


def read_latest(spec: PipelineSpec) -> tuple[dict[str, Any] | None, str | None]:
    """(latest.json pointer, its ETag) or (None, None) before the first snapshot."""
    uri = storage.join(spec.layout.snapshots, "latest.json")
    info = storage.stat(uri)
    if info is None:
        return None, None
    return storage.read_json(uri), info.etag


# ------------------------------------------------------------------ the stage


@dataclass
class IngestArgs:
    run: str


def run_ingest(spec: PipelineSpec, run_uri: str | None = None) -> dict[str, Any]:
    """Ingest new landing files into a snapshot; returns the stage result (and emits it if run_uri is given)."""
    import pandas as pd

    layout = spec.layout
    golden = ensure_golden(spec)
    golden_texts = set(snapshots.read_golden(golden["golden_uri"])["text"])

    latest, latest_etag = read_latest(spec)
    files = new_landing_files(spec)
    base = {"golden_uri": golden["golden_uri"], "golden_id": golden["golden_id"], "landing_uri": layout.landing}

    if not files:
        if latest is None:
            raise IngestError(f"no data yet: no files in {layout.landing} and no snapshot in {layout.snapshots}")
        return _finish(run_uri, _unchanged(latest, base, files_ingested=[], reason="no new landing files"))

    if latest:
        recovered = _recover_unrecorded_batch(spec, latest, files, base)
        if recovered:
            return _finish(run_uri, recovered)

    parent_id = latest["snapshot_id"] if latest else None
    batch_id = hashlib.sha256(json.dumps(
        [parent_id, sorted(f.identity for f in files)], default=str).encode()).hexdigest()[:16]
    labels = LabelMap(spec.data.labels, spec.data.label_aliases)

    good: list[Good] = []
    bad: list[Bad] = []
    whole_files: list[tuple[FileId, bytes, str, str]] = []  # (file, bytes, reason, detail)
    total_rows = whole_file_rows = 0
    for f in files:
        data = storage.read_bytes(storage.join(layout.landing, f.key))
        fmt = file_format(f.key)
        try:
            if fmt is None:
                raise Unparseable(f"unsupported file type; expected one of {sorted(set(FORMATS))}")
            rows = read_rows(data, fmt, spec.data.text_column, spec.data.label_column)
        except Unparseable as exc:
            reason = UNSUPPORTED_FORMAT if fmt is None else UNPARSEABLE_FILE
            # A whole bad file weighs as many rows as it has lines, so one garbage file cannot hide in a batch.
            weight = max(1, data.count(b"\n"))
            total_rows += weight
            whole_file_rows += weight
            whole_files.append((f, data, reason, str(exc)))
            bad.append(Bad(f.key, None, reason, f"{exc} (whole file quarantined, ~{weight} lines)"))
            continue
        total_rows += len(rows)
        file_good, file_bad = validate(f.key, rows, labels, spec.data.max_text_chars)
        good.extend(file_good)
        bad.extend(file_bad)

    parent = snapshots.read_snapshot(latest["snapshot_uri"]) if latest else None
    known = dict(zip(parent["text"], parent["label"].astype(int))) if parent is not None else {}
    kept, conflicts, duplicates = resolve_conflicts(good, known, spec.data.labels)
    bad.extend(conflicts)
    bad_rows = sum(1 for b in bad if b.line is not None) + whole_file_rows

    reasons = Counter(b.reason for b in bad)
    if total_rows and bad_rows / total_rows > spec.data.max_bad_fraction:
        examples = "; ".join(f"{b.source}:{b.line} {b.reason} ({b.detail})" for b in bad[:5])
        raise IngestError(
            f"batch rejected: {bad_rows} of {total_rows} rows are bad ({bad_rows / total_rows:.0%} > "
            f"data.max_bad_fraction {spec.data.max_bad_fraction:.0%}); nothing was committed. By reason: "
            f"{dict(reasons)}. First: {examples}. Fix or remove the files in {layout.landing} and rerun."
        )

    contaminated = [row for row in kept if row.text in golden_texts]
    kept = [row for row in kept if row.text not in golden_texts]

    quarantine_uri = storage.join(layout.quarantine, batch_id) if bad else None
    if bad:
        _write_quarantine(quarantine_uri, batch_id, bad, whole_files)

    new = pd.DataFrame({
        "text": [r.text for r in kept],
        "label": pd.Series([r.label for r in kept], dtype="int64"),
        "split": [split_of(r.text, spec.data.holdout_fraction) for r in kept],
        "batch": [batch_id] * len(kept),
    })
    stats = {
        "files_ingested": [f.key for f in files][:200],
        "files_count": len(files),
        "rows_read": total_rows,
        "quarantined_rows": bad_rows,
        "quarantine_reasons": dict(reasons),
        "quarantine_uri": quarantine_uri,
        "duplicates_removed": duplicates,
        "contaminated_removed": len(contaminated),
        "batch_id": batch_id,
    }
    file_records = [asdict(f) for f in files]

    if new.empty:
        if latest is None:
            raise IngestError(
                f"no data yet: {len(files)} landing file(s) gave no usable rows ({dict(reasons)}, "
                f"{duplicates} duplicates, {len(contaminated)} golden rows)")
        _record_batch(spec, batch_id, file_records, latest["snapshot_id"], stats)
        return _finish(run_uri, {**_unchanged(latest, base, reason="no new rows in the new files"), **stats})

    parent_manifest = snapshots.read_manifest(latest["snapshot_uri"]) if latest else {}
    parent_parts = parent_manifest.get("parts", [])
    part = f"parts/{batch_id}.parquet"
    _create(storage.join(layout.snapshots, part), snapshots.parquet_bytes(new))
    full = pd.concat([parent, new], ignore_index=True) if parent is not None else new
    digest = content_hash(full)
    snapshot_id = digest[:16]
    snapshot_uri = storage.join(layout.snapshots, snapshot_id)
    manifest = {
        "snapshot_id": snapshot_id,
        "pipeline": spec.name,
        "content_hash": digest,
        "parent": parent_id,
        "parts": parent_parts + [part],
        "rows": len(full),
        "new_rows": len(new),
        "label_counts": _label_counts(full["label"], spec.data.labels),
        "split_counts": {s: int((full["split"] == s).sum()) for s in ("train", "holdout")},
        "batch": {"batch_id": batch_id, "files": file_records, "label_counts": _label_counts(new["label"], spec.data.labels),
                  **{k: stats[k] for k in ("rows_read", "quarantined_rows", "quarantine_reasons", "duplicates_removed",
                                          "contaminated_removed", "quarantine_uri")}},
        "sources": sorted({*parent_manifest.get("sources", []), *(f.key for f in files)}),
        "golden_id": golden["golden_id"],
        "golden_uri": golden["golden_uri"],
        "created_at": storage.utcnow(),
    }
    _create(snapshots.manifest_uri(snapshot_uri), _json_bytes(manifest))
    pointer = {"snapshot_id": snapshot_id, "snapshot_uri": snapshot_uri, "rows": len(full),
               "updated_at": storage.utcnow()}
    latest_uri = storage.join(layout.snapshots, "latest.json")
    try:
        if latest_etag is None:
            storage.write_json(latest_uri, pointer, if_none_match=True)
        else:
            storage.write_json(latest_uri, pointer, if_match=latest_etag)
    except storage.PreconditionFailed:
        now, _ = read_latest(spec)
        if now and now["snapshot_id"] == snapshot_id:  # a concurrent ingest committed these same files first
            return _finish(run_uri, {**_unchanged(now, base, reason="a concurrent ingest committed this snapshot"),
                                     **stats})
        raise IngestError(f"another ingest moved {latest_uri} while this one ran; rerun to pick up its snapshot") from None
    _record_batch(spec, batch_id, file_records, snapshot_id, stats)
    result = {
        **base, **stats,
        "snapshot_id": snapshot_id, "snapshot_uri": snapshot_uri, "changed": True,
        "total_rows": len(full), "new_rows": len(new), "parent_snapshot_id": parent_id,
        "label_counts": manifest["label_counts"],
        "asset_extra": {"snapshot_id": snapshot_id, "snapshot_uri": snapshot_uri, "total_rows": len(full),
                        "new_rows": len(new)},
    }
    log.info("snapshot %s: %d rows (%d new) from %d file(s)", snapshot_id, len(full), len(new), len(files))
    return _finish(run_uri, result)


def _recover_unrecorded_batch(spec: PipelineSpec, latest: dict[str, Any], files: list[FileId],
                              base: dict[str, Any]) -> dict[str, Any] | None:
    """A run that moved latest.json but died before recording its batch: record it now and report the snapshot
    as new (its Asset event was never sent), instead of re-reading the files as duplicates."""
    manifest = snapshots.read_manifest(latest["snapshot_uri"])
    batch = manifest.get("batch") or {}
    committed = {(f["key"], f["etag"], int(f["size"])) for f in batch.get("files", [])}
    if not committed or committed != {f.identity for f in files}:
        return None
    stats = {k: batch.get(k) for k in ("rows_read", "quarantined_rows", "quarantine_reasons", "quarantine_uri",
                                       "duplicates_removed", "contaminated_removed")}
    stats.update(batch_id=batch["batch_id"], files_ingested=[f.key for f in files][:200], files_count=len(files))
    _record_batch(spec, batch["batch_id"], batch["files"], manifest["snapshot_id"], stats)
    log.info("recorded batch %s of snapshot %s (its run stopped before recording it)", batch["batch_id"],
             manifest["snapshot_id"])
    extra = {"snapshot_id": manifest["snapshot_id"], "snapshot_uri": latest["snapshot_uri"],
             "total_rows": manifest["rows"], "new_rows": manifest["new_rows"]}
    return {**base, **stats, **extra, "changed": True, "parent_snapshot_id": manifest.get("parent"),
            "label_counts": manifest["label_counts"], "recovered": True, "asset_extra": extra}


def _unchanged(latest: dict[str, Any], base: dict[str, Any], *, reason: str, **extra: Any) -> dict[str, Any]:
    out = {
        **base,
        "snapshot_id": latest["snapshot_id"], "snapshot_uri": latest["snapshot_uri"], "changed": False,
        "total_rows": latest.get("rows"), "new_rows": 0, "quarantined_rows": 0, "duplicates_removed": 0,
        "contaminated_removed": 0, "files_ingested": [], "reason": reason,
    }
    out.update(extra)
    return out


def _record_batch(spec: PipelineSpec, batch_id: str, files: list[dict[str, Any]], snapshot_id: str,
                  stats: dict[str, Any]) -> None:
    record = {"batch_id": batch_id, "files": files, "snapshot_id": snapshot_id, "recorded_at": storage.utcnow(),
              **{k: v for k, v in stats.items() if k != "files_ingested"}}
    _create(storage.join(_batch_records_uri(spec), f"{batch_id}.json"), _json_bytes(record))


def _write_quarantine(uri: str, batch_id: str, bad: list[Bad], whole_files: list[tuple[FileId, bytes, str, str]]) -> None:
    lines = [json.dumps(asdict(b), default=str, ensure_ascii=False) for b in bad]
    _create(storage.join(uri, "rows.jsonl"), ("\n".join(lines) + "\n").encode("utf-8"))
    for f, data, _, _ in whole_files:
        _create(storage.join(uri, "files", f.key), data)
    summary = {"batch_id": batch_id, "rows": len(bad), "by_reason": dict(Counter(b.reason for b in bad)),
               "whole_files": [{"key": f.key, "reason": r, "detail": d} for f, _, r, d in whole_files]}
    _create(storage.join(uri, "summary.json"), _json_bytes(summary))


def _finish(run_uri: str | None, result: dict[str, Any]) -> dict[str, Any]:
    if run_uri:
        return results.emit(result, storage.join(run_uri, "ingest"))
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run folder URI; its spec.json is the frozen spec")
    args = IngestArgs(**vars(parser.parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = load_spec(storage.join(args.run, "spec.json"))
    try:
        run_ingest(spec, args.run)
    except IngestError as exc:
        print(f"ingest failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
