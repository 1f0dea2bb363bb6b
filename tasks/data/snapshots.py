"""Immutable data snapshots and the frozen golden set: the format every stage reads.

A snapshot is a folder ``snapshots/<pipeline>/<snapshot_id>/`` with ``manifest.json`` and one or more Parquet
parts. A new snapshot lists the parts of the one before it plus the new batch's part, so nothing is copied or
rewritten. Columns: ``text`` (normalized), ``label`` (int index into spec.data.labels), ``split``
(train | holdout, from a hash of the text), ``batch`` (the ingest batch that first added the row).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from tasks import storage

if TYPE_CHECKING:
    import pandas as pd

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
