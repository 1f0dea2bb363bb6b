"""Immutable data snapshots and the frozen golden set: the format every stage reads.

A snapshot is a folder ``snapshots/<pipeline>/<snapshot_id>/`` with ``manifest.json`` and one or more Parquet
parts. A new snapshot lists the parts of the one before it plus the new batch's part, so nothing is copied or
rewritten. Columns: ``text`` (normalized), ``label`` (int index into spec.data.labels), ``split``
(train | holdout, from a hash of the text), ``batch`` (the ingest batch that first added the row).

Also here, the writer side every ingest uses: create-only writes, the ``latest.json`` pointer (moved only with a
conditional write from the version read) and the batch records (``batches/<batch_id>.json``) that say which
landing files a committed batch holds. Reader first, writer below.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks import storage
from tasks.errors import SpecInvalid
from tasks.manifests import BatchRecord, BatchStats, LandingFileRecord, SnapshotManifest

log = logging.getLogger("tasks.data.snapshots")

COLUMNS = ["text", "label", "split", "batch"]


def manifest_uri(snapshot_uri: str) -> str:
    return storage.join(snapshot_uri, "manifest.json")


def read_manifest(snapshot_uri: str) -> SnapshotManifest:
    """The snapshot's manifest (``SnapshotManifest.read``: an older manifest reads as it was written)."""
    return SnapshotManifest.read(storage.read_json(manifest_uri(snapshot_uri)))


def check_labels(labels: list[str], stored: list[str] | None, label_counts: dict[str, int] | None,
                 what: str) -> None:
    """Stored rows keep a label's index into data.labels, so the spec's labels must be the stored ones
    (``stored``: a snapshot's or golden set's manifest's ``labels``), in their order, plus any new ones at the end;
    else SpecInvalid (exit 4) before anything is read or written. A manifest written before it recorded ``labels``
    is checked by the names its ``label_counts`` hold (order unknown)."""
    if stored is not None:
        if labels[: len(stored)] == stored:
            return
        problem = f"they are {stored} (label i = name i)"
    else:
        missing = sorted(set(label_counts or {}) - set(labels))
        if not missing:
            return
        problem = f"they hold labels no longer in data.labels: {missing}"
    raise SpecInvalid(
        f"data.labels {labels} do not match the labels of the {what}: {problem}. Stored rows and models use a "
        f"label's position in the list, so keep the stored names in their order and add new labels at the end (or "
        f"give the changed pipeline a new name or storage root)")


def read_parquet(uri: str) -> "pd.DataFrame":
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def parquet_bytes(frame: "pd.DataFrame") -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def read_snapshot(snapshot_uri: str, manifest: SnapshotManifest | None = None) -> "pd.DataFrame":
    """All rows of a snapshot, in part order (``manifest``: its manifest, when the caller has read it already).
    Part paths in the manifest are URIs relative to the pipeline's snapshots folder (``parts/<batch_id>.parquet``)
    so that a snapshot can reuse its parent's parts."""
    if manifest is None:
        manifest = read_manifest(snapshot_uri)
    base = storage.parent(snapshot_uri)
    frames = [read_parquet(storage.join(base, part)) for part in manifest.parts]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
    frame = pd.concat(frames, ignore_index=True)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"snapshot {snapshot_uri} lacks columns {missing}")
    return frame[COLUMNS]  # parts written since the text_hash column carry it too; readers get the same columns


def read_golden(golden_uri: str) -> "pd.DataFrame":
    """The frozen golden set (``text``, ``label``) at ``golden/<pipeline>/<golden_id>/``."""
    return read_parquet(storage.join(golden_uri, "data.parquet"))


# ---------------------------------------------------------------- writing


def split_of(text: str, holdout_fraction: float) -> str:
    """train | holdout from a hash of the normalized text: a row never changes split between versions."""
    bucket = int.from_bytes(hashlib.sha256(b"split:" + text.encode("utf-8")).digest()[:8], "big") / 2**64
    return "holdout" if bucket < holdout_fraction else "train"


def content_hash(frame: "pd.DataFrame") -> str:
    """Order-independent hash of the (text, label) rows (the golden set's id; snapshots use ContentSum)."""
    digests = sorted(hashlib.sha256(f"{label}\t{text}".encode("utf-8")).digest()
                     for text, label in zip(frame["text"], frame["label"]))
    digest = hashlib.sha256()
    for d in digests:
        digest.update(d)
    return digest.hexdigest()


def label_counts(labels: Iterable[int], names: list[str]) -> dict[str, int]:
    counts = Counter(int(x) for x in labels)
    return {name: counts.get(i, 0) for i, name in enumerate(names)}


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def create_file(uri: str, path: str) -> None:
    """create() from a local file, streaming (a part or a quarantine spool can be large)."""
    try:
        storage.upload_file(path, uri, if_none_match=True)
    except storage.PreconditionFailed:
        log.info("%s exists already; keeping it", uri)


def create(uri: str, data: bytes) -> None:
    """Create-only write; an existing object is left alone (a retry writes the same deterministic content)."""
    try:
        storage.write_bytes(uri, data, if_none_match=True)
    except storage.PreconditionFailed:
        log.info("%s exists already; keeping it", uri)


def latest_uri(snapshots_uri: str) -> str:
    return storage.join(snapshots_uri, "latest.json")


def read_latest(snapshots_uri: str) -> tuple[dict[str, Any] | None, str | None]:
    """(latest.json pointer, its ETag) or (None, None) before the first snapshot."""
    uri = latest_uri(snapshots_uri)
    info = storage.stat(uri)
    if info is None:
        return None, None
    return storage.read_json(uri), info.etag


def read_latest_manifest(snapshots_uri: str) -> tuple[dict[str, Any] | None, str | None, SnapshotManifest | None]:
    """(latest.json pointer, its ETag, the manifest of the snapshot it points at) or (None, None, None) before the
    first snapshot. Read once per run and passed down: a manifest is create-only, so one read is as good as many;
    the ETag is the version a later move_latest must start from."""
    latest, etag = read_latest(snapshots_uri)
    if latest is None:
        return None, None, None
    return latest, etag, read_manifest(latest["snapshot_uri"])


def move_latest(snapshots_uri: str, pointer: dict[str, Any], etag: str | None) -> None:
    """Point latest.json at a new snapshot, only from the version read (PreconditionFailed if it moved)."""
    if etag is None:
        storage.write_json(latest_uri(snapshots_uri), pointer, if_none_match=True)
    else:
        storage.write_json(latest_uri(snapshots_uri), pointer, if_match=etag)


def batch_records_uri(snapshots_uri: str) -> str:
    return storage.join(snapshots_uri, "batches")


def processed_files(snapshots_uri: str) -> list[LandingFileRecord]:
    """What the batch records keep of every landing file a committed batch holds: key, ETag, size, mtime."""
    files: list[LandingFileRecord] = []
    for obj in storage.list_objects(batch_records_uri(snapshots_uri)):
        if obj.uri.endswith(".json"):
            files.extend(BatchRecord.read(storage.read_json(obj.uri)).files)
    return files


def record_batch(snapshots_uri: str, batch_id: str, files: list[dict[str, Any]], snapshot_id: str,
                 stats: BatchStats) -> None:
    kept = {k: v for k, v in stats.dump().items() if k not in ("files_ingested", "empty_file_keys")}
    record = BatchRecord(**{"files": files, "snapshot_id": snapshot_id, "recorded_at": storage.utcnow(), **kept,
                            "batch_id": batch_id})
    create(storage.join(batch_records_uri(snapshots_uri), f"{batch_id}.json"), json_bytes(record.dump()))


def part_path(batch_id: str) -> str:
    """A batch's part, relative to the pipeline's snapshots folder (as manifests list it)."""
    return f"parts/{batch_id}.parquet"


def batch_of_part(part: str) -> str:
    """The batch id of a manifest's part path (part_path's inverse)."""
    return part.rsplit("/", 1)[-1].removesuffix(".parquet")


def write_part(snapshots_uri: str, batch_id: str, frame: "pd.DataFrame | str") -> str:
    """The batch's new rows (a frame, or a local Parquet file) as ``parts/<batch_id>.parquet``; returns the part
    path the manifest lists."""
    part = part_path(batch_id)
    if isinstance(frame, str):
        create_file(storage.join(snapshots_uri, part), frame)
    else:
        create(storage.join(snapshots_uri, part), parquet_bytes(frame))
    return part


def snapshot_id_of(digest: str, golden_id: str | None = None, golden_generation: int = 0) -> str:
    """A snapshot's id from its rows' digest (``ContentSum.hexdigest``): the digest itself while the pipeline keeps
    its first golden set (generation 0: the ids every snapshot has had), else salted with the golden set's id, so
    the same rows checked against another golden set are another snapshot (its manifest names the other set)."""
    if not golden_generation:
        return digest[:16]
    return hashlib.sha256(f"snapshot-golden:{digest}:{golden_id}".encode()).hexdigest()[:16]


def golden_fields(golden: dict[str, Any] | SnapshotManifest) -> dict[str, Any]:
    """The golden set a snapshot's manifest names, from a golden pointer or another manifest;
    ``golden_generation`` only once the golden set was replaced (manifests of a never-replaced set are as they
    were)."""
    if isinstance(golden, SnapshotManifest):
        golden = golden.dump()  # the fields it holds, as the pointer's keys
    out = {"golden_id": golden.get("golden_id"), "golden_uri": golden.get("golden_uri")}
    generation = int(golden.get("golden_generation", golden.get("generation", 0)) or 0)
    if generation:
        out["golden_generation"] = generation
    return out


def write_manifest(snapshots_uri: str, manifest: SnapshotManifest) -> str:
    """The snapshot folder's manifest.json (create-only); returns the snapshot URI."""
    snapshot_uri = storage.join(snapshots_uri, manifest.snapshot_id)
    create(manifest_uri(snapshot_uri), json_bytes(manifest.dump()))
    return snapshot_uri


# ---------------------------------------------------------------- row hashes, vectorized (the ingest stage)
#
# Every row's SHA-256 of b"split:" + text is computed once: its first 8 bytes (big-endian) give the split exactly
# as split_of does, its first 16 bytes are the row's ``text_hash`` (stored in the parts written since, so a later
# ingest dedups against a snapshot by hash without loading its texts), and with the label they feed the
# snapshot's content sum.

TEXT_HASH_BYTES = 16
_SPLIT_PREFIX = b"split:"


def text_digests(texts: Any) -> Any:
    """(n, 32) uint8: SHA-256 of b"split:" + the UTF-8 text, for an arrow string array without nulls."""
    sha = hashlib.sha256
    values = texts.cast(pa.binary()).to_pylist()
    joined = b"".join([sha(_SPLIT_PREFIX + v).digest() for v in values])
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(values), 32)


def holdout_mask(digests: Any, holdout_fraction: float) -> Any:
    """split_of(...) == "holdout" for every row of text_digests (the same float arithmetic)."""
    bucket = np.ascontiguousarray(digests[:, :8]).view(">u8").ravel().astype(np.float64) / 2**64
    return bucket < holdout_fraction


def hash_keys(text_hash: Any) -> tuple[Any, Any]:
    """(hi uint64, lo uint32) dedup keys from (n, >=12) uint8 text hashes: 96 bits."""
    hi = np.ascontiguousarray(text_hash[:, :8]).view("<u8").ravel()
    lo = np.ascontiguousarray(text_hash[:, 8:12]).view("<u4").ravel()
    return hi, lo


def text_keys(texts: Any) -> tuple[Any, Any]:
    """hash_keys of an arrow string array's texts, as the parts' ``text_hash`` column gives them for stored rows."""
    return hash_keys(text_digests(texts)[:, :TEXT_HASH_BYTES])


def _mix(x: Any) -> Any:
    """splitmix64's finalizer, on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class ContentSum:
    """An order-independent hash of a snapshot's (text, label) rows that adds up part by part: two 64-bit lane
    sums of per-row hashes, so a new snapshot's hash is its parent's plus the new rows' (no parent texts read)."""

    def __init__(self, rows: int = 0, a: int = 0, b: int = 0) -> None:
        self.rows, self.a, self.b = rows, a, b

    def add(self, text_hash: Any, labels: Any) -> None:
        with np.errstate(over="ignore"):
            d0 = np.ascontiguousarray(text_hash[:, :8]).view("<u8").ravel()
            d1 = np.ascontiguousarray(text_hash[:, 8:16]).view("<u8").ravel()
            lab = np.asarray(labels, dtype=np.uint64) + np.uint64(1)
            a = _mix(d0 ^ _mix(lab))
            b = _mix(d1 ^ _mix(lab * np.uint64(0x9E3779B97F4A7C15)))
            self.a = (self.a + int(a.sum(dtype=np.uint64))) % 2**64
            self.b = (self.b + int(b.sum(dtype=np.uint64))) % 2**64
        self.rows += len(d0)

    def merged(self, other: "ContentSum") -> "ContentSum":
        return ContentSum(self.rows + other.rows, (self.a + other.a) % 2**64, (self.b + other.b) % 2**64)

    def minus(self, other: "ContentSum") -> "ContentSum":
        """The sum without ``other``'s rows (a part withdrawn from a snapshot: tasks.data.withdraw)."""
        return ContentSum(self.rows - other.rows, (self.a - other.a) % 2**64, (self.b - other.b) % 2**64)

    def encode(self) -> str:
        return f"{self.rows}:{self.a:016x}:{self.b:016x}"

    @classmethod
    def decode(cls, text: str) -> "ContentSum":
        rows, a, b = text.split(":")
        return cls(int(rows), int(a, 16), int(b, 16))

    def hexdigest(self) -> str:
        return hashlib.sha256(b"snapshot-rows-v2:" + self.encode().encode()).hexdigest()


class HashIndex:
    """Dedup keys and labels of stored rows, sorted by key, for lookups."""

    def __init__(self, hi: Any, lo: Any, labels: Any) -> None:
        order = np.argsort(hi, kind="stable")
        self.hi, self.lo, self.labels = hi[order], lo[order], labels[order]
        # Two rows sharing 64 bits but not 96 (practically never): look those up exactly, in Python.
        same = self.hi[1:] == self.hi[:-1]
        self.collisions = {(int(h), int(low)): int(lab) for h, low, lab in zip(hi, lo, labels)} if same.any() else None

    def lookup(self, hi: Any, lo: Any) -> Any:
        """The stored label of each key (int64), -1 where the snapshot does not hold it."""
        if self.collisions is not None:
            return np.array([self.collisions.get((int(h), int(low)), -1) for h, low in zip(hi, lo)], dtype=np.int64)
        if not len(self.hi):
            return np.full(len(hi), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.hi, hi), len(self.hi) - 1)
        found = (self.hi[pos] == hi) & (self.lo[pos] == lo)
        return np.where(found, self.labels[pos].astype(np.int64), -1)


KEY_FIELDS = [("hi", "<u8"), ("lo", "<u4"), ("label", "<i2")]  # a row's dedup key and label: 14 bytes


class StoredKeys:
    """What an ingest needs of the previous snapshot, without its texts: its rows' dedup keys and labels in 256
    local bucket files by the keys' top byte (so a hash partition loads only its share), its content sum, and
    its label and split counts."""

    def __init__(self, folder: str, rows: int, total: ContentSum, label_counts: dict[str, int],
                 split_counts: dict[str, int]) -> None:
        self.folder, self.rows, self.total = folder, rows, total
        self.label_counts, self.split_counts = label_counts, split_counts

    def bucket(self, top: int) -> str:
        return f"{self.folder}/keys-{top:02x}.bin"

    def index(self, low: int, high: int) -> HashIndex:
        """The HashIndex of the stored rows whose key's top byte is in [low, high)."""
        recs = np.concatenate([np.fromfile(self.bucket(t), dtype=np.dtype(KEY_FIELDS)) for t in range(low, high)])
        return HashIndex(recs["hi"].copy(), recs["lo"].copy(), recs["label"].copy())


def local_parquet(uri: str, tmp_dir: str) -> str:
    if storage.is_s3(uri):
        return str(storage.download_file(uri, f"{tmp_dir}/part.parquet"))
    return str(storage.local_path(uri))


def fixed_binary(column: Any, width: int) -> Any:
    return np.frombuffer(column.buffers()[1], dtype=np.uint8, count=len(column) * width,
                         offset=column.offset * width).reshape(-1, width)


def part_rows(part_uri: str, tmp_dir: str) -> Iterable[tuple[Any, Any, Any]]:
    """A stored part a row group at a time, as (text hashes (n, 16) uint8, labels int64, the split column): only
    the text_hash, label and split columns where the part has text_hash; an older part has its texts hashed here."""
    pf = pq.ParquetFile(local_parquet(part_uri, tmp_dir), pre_buffer=False)
    column = "text_hash" if "text_hash" in pf.schema_arrow.names else "text"
    for batch in pf.iter_batches(batch_size=262144, columns=[column, "label", "split"]):
        if column == "text_hash":
            th = fixed_binary(batch.column(0), TEXT_HASH_BYTES)
        else:
            th = text_digests(batch.column(0))[:, :TEXT_HASH_BYTES]
        yield th, batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64), batch.column(2)


def hash_index(snapshot_uri: str, manifest: SnapshotManifest, tmp_dir: str, names: list[str]) -> StoredKeys:
    """The StoredKeys of a snapshot (``manifest`` is its manifest, already read), read part by part and a row
    group at a time (``part_rows``)."""
    base = storage.parent(snapshot_uri)
    stored_sum = manifest.content_sum
    total = ContentSum()
    counts = np.zeros(len(names), dtype=np.int64)
    splits: Counter = Counter()
    folder = os.path.join(tmp_dir, "stored-keys")
    os.makedirs(folder, exist_ok=True)
    keys = StoredKeys(folder, 0, total, {}, {})
    outs = [open(keys.bucket(t), "wb") for t in range(256)]  # noqa: SIM115 (closed below)
    try:
        for part in manifest.parts:
            for th, labels, split in part_rows(storage.join(base, part), tmp_dir):
                hi, lo = hash_keys(th)
                recs = np.empty(len(hi), dtype=np.dtype(KEY_FIELDS))
                recs["hi"], recs["lo"], recs["label"] = hi, lo, labels
                top = (hi >> np.uint64(56)).astype(np.int64)
                order = np.argsort(top, kind="stable")
                recs, ends = recs[order], np.cumsum(np.bincount(top, minlength=256))
                for t, (a, b) in enumerate(zip(np.concatenate(([0], ends[:-1])), ends)):
                    if b > a:
                        outs[t].write(recs[a:b].tobytes())
                keys.rows += len(hi)
                counts += np.bincount(labels, minlength=len(names))[: len(names)]
                for item in pc.value_counts(split).to_pylist():
                    splits[item["values"]] += item["counts"]
                if stored_sum is None:
                    total.add(th, labels)
    finally:
        for out in outs:
            out.close()
    keys.total = ContentSum.decode(stored_sum) if stored_sum is not None else total
    keys.label_counts = {name: int(counts[i]) for i, name in enumerate(names)}
    keys.split_counts = {s: int(splits.get(s, 0)) for s in ("train", "holdout")}
    return keys


# ---------------------------------------------------------------- a part without some texts (a new golden set)


def filtered_part_path(batch_id: str, kept: ContentSum) -> str:
    """Where a part rewritten without some rows goes: addressed by the rows it keeps (so a retry, or the same
    rewrite from another run, writes the very same object), and still ending in ``<batch_id>.parquet`` so that
    batch_of_part names its batch."""
    return f"parts/filtered/{kept.hexdigest()[:16]}/{batch_id}.parquet"


class PartFilter:
    """What filter_part did to one part: the part that replaces it (None when no row is left) and the removed
    rows' content sum, label and split counts."""

    def __init__(self, part: str | None, removed: ContentSum, label_counts: dict[str, int],
                 split_counts: dict[str, int]) -> None:
        self.part, self.removed = part, removed
        self.label_counts, self.split_counts = label_counts, split_counts


def filter_part(snapshots_uri: str, part: str, texts: Any, hi_keys: Any, names: list[str],
                tmp_dir: str) -> PartFilter | None:
    """``part`` (a manifest's part path) without its rows whose text is in ``texts`` (an arrow string array),
    written create-only as a new part (filtered_part_path); None when the part holds none of them (it is kept as
    it is). ``hi_keys`` are the first 64 bits of those texts' hash keys (hash_keys): a scan of the part's
    text_hash column finds the parts that may hold one without reading their texts; the rows are then matched
    by their text, exactly. The stored part is never changed."""
    local = local_parquet(storage.join(snapshots_uri, part), tmp_dir)  # downloaded once, scanned twice at most
    rows = part_rows(local, tmp_dir)
    try:
        maybe = any(np.isin(hash_keys(th)[0], hi_keys).any() for th, _, _ in rows)
    finally:
        rows.close()
    if not maybe:
        return None
    pf = pq.ParquetFile(local, pre_buffer=False)
    has_hash = "text_hash" in pf.schema_arrow.names
    kept_sum, removed_sum = ContentSum(), ContentSum()
    counts = np.zeros(len(names), dtype=np.int64)
    splits: Counter = Counter()
    out_path = os.path.join(tmp_dir, "filtered.parquet")
    writer = None
    try:
        for batch in pf.iter_batches(batch_size=262144):
            drop = pc.fill_null(pc.is_in(batch.column("text"), value_set=texts), False)
            th = fixed_binary(batch.column("text_hash"), TEXT_HASH_BYTES) if has_hash \
                else text_digests(batch.column("text"))[:, :TEXT_HASH_BYTES]
            labels = batch.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
            mask = drop.to_numpy(zero_copy_only=False).astype(bool)
            removed_sum.add(th[mask], labels[mask])
            kept_sum.add(th[~mask], labels[~mask])
            counts += np.bincount(labels[mask], minlength=len(names))[: len(names)]
            for item in pc.value_counts(batch.column("split").filter(drop)).to_pylist():
                splits[item["values"]] += item["counts"]
            kept = batch.filter(pc.invert(drop))
            if kept.num_rows:
                if writer is None:
                    writer = pq.ParquetWriter(out_path, pf.schema_arrow, use_dictionary=["split", "batch"])
                writer.write_table(pa.Table.from_batches([kept], schema=pf.schema_arrow))
    finally:
        if writer is not None:
            writer.close()
    if not removed_sum.rows:
        return None  # 64 bits of a hash shared, the text not
    new_part = None
    if writer is not None:
        new_part = filtered_part_path(batch_of_part(part), kept_sum)
        create_file(storage.join(snapshots_uri, new_part), out_path)
    return PartFilter(new_part, removed_sum, {name: int(counts[i]) for i, name in enumerate(names)},
                      {s: int(splits.get(s, 0)) for s in ("train", "holdout")})


# ---------------------------------------------------------------- which texts a snapshot trained on

SCAN_BATCH_ROWS = 65536  # rows of a part held at once while looking for some texts


def train_texts_in_part(part_uri: str, texts: Any, hi_keys: Any, tmp_dir: str) -> Any:
    """Which of ``texts`` (a unique arrow string array) are train rows of one snapshot part: a bool per text.
    Read a batch of rows at a time and only the columns needed: a part with ``text_hash`` is first scanned by
    hash (``hi_keys``: the texts' first 64 bits, hash_keys), and its texts are read only when a train
    row may match, then matched exactly."""
    def train(split: Any) -> Any:
        if pa.types.is_dictionary(split.type):
            split = split.cast(pa.string())
        return pc.fill_null(pc.equal(split, "train"), False)

    found = np.zeros(len(texts), dtype=bool)
    pf = pq.ParquetFile(local_parquet(part_uri, tmp_dir), pre_buffer=False)
    if "text_hash" in pf.schema_arrow.names:
        maybe = False
        for batch in pf.iter_batches(batch_size=SCAN_BATCH_ROWS, columns=["text_hash", "split"]):
            hi = hash_keys(fixed_binary(batch.column(0), TEXT_HASH_BYTES))[0]
            if (np.isin(hi, hi_keys) & train(batch.column(1)).to_numpy(zero_copy_only=False)).any():
                maybe = True
                break
        if not maybe:
            return found
    for batch in pf.iter_batches(batch_size=SCAN_BATCH_ROWS, columns=["text", "split"]):
        index = pc.index_in(batch.column(0).filter(train(batch.column(1))), value_set=texts).drop_null()
        found[index.to_numpy(zero_copy_only=False)] = True
    return found
