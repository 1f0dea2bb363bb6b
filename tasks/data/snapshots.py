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
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable

from tasks import storage

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("tasks.data.snapshots")

COLUMNS = ["text", "label", "split", "batch"]


def manifest_uri(snapshot_uri: str) -> str:
    return storage.join(snapshot_uri, "manifest.json")


def read_manifest(snapshot_uri: str) -> dict[str, Any]:
    return storage.read_json(manifest_uri(snapshot_uri))


def read_parquet(uri: str) -> "pd.DataFrame":
    import pandas as pd

    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def parquet_bytes(frame: "pd.DataFrame") -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def read_snapshot(snapshot_uri: str) -> "pd.DataFrame":
    """All rows of a snapshot, in part order. Part paths in the manifest are URIs relative to the pipeline's
    snapshots folder (``parts/<batch_id>.parquet``) so that a snapshot can reuse its parent's parts."""
    import pandas as pd

    manifest = read_manifest(snapshot_uri)
    base = storage.parent(snapshot_uri)
    frames = [read_parquet(storage.join(base, part)) for part in manifest["parts"]]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
    frame = pd.concat(frames, ignore_index=True)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"snapshot {snapshot_uri} lacks columns {missing}")
    return frame


def read_golden(golden_uri: str) -> "pd.DataFrame":
    """The frozen golden set (``text``, ``label``) at ``golden/<pipeline>/<golden_id>/``."""
    return read_parquet(storage.join(golden_uri, "data.parquet"))


# ---------------------------------------------------------------- writing


def split_of(text: str, holdout_fraction: float) -> str:
    """train | holdout from a hash of the normalized text: a row never changes split between versions."""
    bucket = int.from_bytes(hashlib.sha256(b"split:" + text.encode("utf-8")).digest()[:8], "big") / 2**64
    return "holdout" if bucket < holdout_fraction else "train"


def content_hash(frame: "pd.DataFrame") -> str:
    """Order-independent hash of the (text, label) rows."""
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


def move_latest(snapshots_uri: str, pointer: dict[str, Any], etag: str | None) -> None:
    """Point latest.json at a new snapshot, only from the version read (PreconditionFailed if it moved)."""
    if etag is None:
        storage.write_json(latest_uri(snapshots_uri), pointer, if_none_match=True)
    else:
        storage.write_json(latest_uri(snapshots_uri), pointer, if_match=etag)


def batch_records_uri(snapshots_uri: str) -> str:
    return storage.join(snapshots_uri, "batches")


def processed_files(snapshots_uri: str) -> set[tuple[str, str, int]]:
    """Identities (key, ETag, size) of every landing file a committed batch holds, from the batch records."""
    done: set[tuple[str, str, int]] = set()
    for obj in storage.list_objects(batch_records_uri(snapshots_uri)):
        if obj.uri.endswith(".json"):
            for f in storage.read_json(obj.uri).get("files", []):
                done.add((f["key"], f["etag"], int(f["size"])))
    return done


def record_batch(snapshots_uri: str, batch_id: str, files: list[dict[str, Any]], snapshot_id: str,
                 stats: dict[str, Any]) -> None:
    record = {"batch_id": batch_id, "files": files, "snapshot_id": snapshot_id, "recorded_at": storage.utcnow(),
              **{k: v for k, v in stats.items() if k not in ("files_ingested", "empty_file_keys")}}
    create(storage.join(batch_records_uri(snapshots_uri), f"{batch_id}.json"), json_bytes(record))


def write_part(snapshots_uri: str, batch_id: str, frame: "pd.DataFrame") -> str:
    """The batch's new rows as ``parts/<batch_id>.parquet``; returns the part path the manifest lists."""
    part = f"parts/{batch_id}.parquet"
    create(storage.join(snapshots_uri, part), parquet_bytes(frame))
    return part


def write_manifest(snapshots_uri: str, manifest: dict[str, Any]) -> str:
    """The snapshot folder's manifest.json (create-only); returns the snapshot URI."""
    snapshot_uri = storage.join(snapshots_uri, manifest["snapshot_id"])
    create(manifest_uri(snapshot_uri), json_bytes(manifest))
    return snapshot_uri
