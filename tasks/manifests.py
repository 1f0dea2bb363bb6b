"""The typed records stages store beside their results: snapshot manifests, batch statistics and batch records,
and version manifests (docs/architecture.md, "Typed records"). The comparison with the champion, a record the
evaluate result nests, is in tasks/contracts.py with their base, ``Record``.

Each is a pydantic model. A writer builds the model and stores ``record.dump()``; a reader validates what it
read with ``Model.read(data)``. Two rules (``Record``):

- writing: a field the model does not declare raises (a typo, or a field added without declaring it);
- reading: a file written by an older release is read as it is: fields it lacks stay unset (and are not
  dumped back), fields this release does not declare are kept as they are (stored data is never dropped).

A dump holds the fields that were set, and only those: the JSON on disk is what the writer set, key for key, so
a manifest that never had a field (``golden_generation`` before a re-freeze, ``approval`` without a person's
answer) still has none.

Only the stages load it (the data layer, drift, publish, the registry), never DAG parsing.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tasks import storage
from tasks.contracts import VERSION_MANIFEST, Record

# ---------------------------------------------------------------- ingest: one batch


class BatchCounts(Record):
    """What one ingest batch read and put aside (docs/data.md, "The counts add up"):
    ``rows_read = new_rows + quarantined_rows + duplicates_removed + contaminated_removed`` and
    ``files_count = files_read + quarantined_files + empty_files``. The ingest result's statistics, the snapshot
    manifest's ``batch`` and the batch record all carry them."""

    files_count: int = 0
    files_read: int = 0
    empty_files: int = 0
    rows_read: int = 0
    quarantined_rows: int = 0
    quarantined_files: int = 0
    quarantine_reasons: dict[str, int] = {}
    quarantine_uri: str | None = None
    duplicates_removed: int = 0
    contaminated_removed: int = 0


class BatchStats(BatchCounts):
    """One ingest batch's statistics, in the ingest result; the snapshot manifest's ``batch`` and the batch record
    keep them too (``KEPT``)."""

    batch_id: str
    files_ingested: list[str] = []  # keys of the files read (first 200)
    empty_file_keys: list[str] = []  # keys of the zero-byte files (first 200): the result only

    # The statistics kept in the snapshot manifest's batch (and read back by a recovery).
    KEPT: ClassVar[tuple[str, ...]] = ("files_ingested", "files_count", "files_read", "empty_files", "rows_read", "quarantined_rows",
            "quarantined_files", "quarantine_reasons", "quarantine_uri", "duplicates_removed",
            "contaminated_removed")

    def kept(self) -> dict[str, Any]:
        """The statistics the manifest's batch keeps (those set: a recovered batch's old manifest may lack some)."""
        dumped = self.dump()
        return {k: dumped[k] for k in self.KEPT if k in dumped}


class LandingFileRecord(Record):
    """A landing file a batch holds, by identity (tasks/data/landing.py ``LandingFile.record``)."""

    key: str
    etag: str
    size: int
    mtime: float | int | None = None


class SnapshotBatch(BatchCounts):
    """The snapshot manifest's ``batch``: the batch that made the snapshot, its files, its new rows' labels and
    its statistics (BatchStats.KEPT)."""

    batch_id: str
    files: list[LandingFileRecord] = []
    label_counts: dict[str, int] = {}
    files_ingested: list[str] = []


class BatchRecord(BatchCounts):
    """``snapshots/<pipeline>/batches/<batch_id>.json``: a committed batch's files (they count as processed),
    the snapshot it went into, and its statistics (all but the key lists)."""

    batch_id: str
    files: list[LandingFileRecord] = []
    snapshot_id: str | None = None
    recorded_at: str | None = None


# ---------------------------------------------------------------- snapshots


class SnapshotManifest(Record):
    """``snapshots/<pipeline>/<snapshot_id>/manifest.json`` (tasks/data/snapshots.py): the parts that hold the
    rows, their sums and counts, the golden set the rows were checked against, and what made the snapshot (a
    batch, a golden re-freeze, a withdrawal or a readmission). Older manifests may lack ``content_sum``,
    ``split_counts``, ``labels`` or the golden fields: their readers fall back (snapshots.hash_index)."""

    snapshot_id: str | None = None  # None only in a manifest written by hand (publish falls back to the folder)
    pipeline: str | None = None
    content_hash: str | None = None
    content_sum: str | None = None  # snapshots.ContentSum.encode(): the rows' sum, so a later snapshot adds to it
    parent: str | None = None
    parts: list[str] = []  # relative to the pipeline's snapshots folder: parts/<batch_id>.parquet
    rows: int | None = None
    new_rows: int | None = None
    label_counts: dict[str, int] = {}
    split_counts: dict[str, int] | None = None
    labels: list[str] | None = None
    batch: SnapshotBatch | None = None  # an ingest's snapshot
    sources: list[str] = []
    golden_id: str | None = None
    golden_uri: str | None = None
    golden_generation: int | None = None  # only once the golden set was replaced
    golden_changed: dict[str, Any] | None = None  # a re-freeze's snapshot: {from, from_uri, to, to_uri, removed_...}
    withdrawn: dict[str, Any] | None = None  # a withdrawal's snapshot: {batches, reason, run_key}
    readmitted: dict[str, Any] | None = None  # a readmission's snapshot: {batches, reason}
    created_at: str | None = None


# ---------------------------------------------------------------- the registry


class VersionManifest(Record):
    """``models/<pipeline>/<version>/manifest.json`` (tasks/decide/publish.py writes it once, after every file;
    tasks/decide/registry.py verifies, lists and promotes by it; the registry page, the serving layouts, lineage
    and evaluate's champion comparison read it)."""

    version: str | None = None
    pipeline: str | None = None
    created_at: str | None = None
    snapshot_id: str | None = None
    snapshot_uri: str | None = None
    golden_uri: str | None = None
    parent_champion: str | None = None
    code_version: str | None = None
    image: str | None = None
    parameters: dict[str, Any] = {}  # the spec's model, train, student, gates sections and the labels
    run_uri: str | None = None
    training: dict[str, Any] | None = None  # full or incremental, and why (tasks/decide/retrain_policy.py)
    sources: dict[str, Any] = {}  # {teacher, student, evaluation, exports}: where the files were copied from
    exports: dict[str, str] = {}
    model_cards: dict[str, str] = {}
    serving: dict[str, Any] = {}  # {huggingface: {role: folder}, triton: entry or None} (tasks/decide/serving.py)
    evaluation: dict[str, Any] = {}  # the evaluate result's verdict, gates, metrics, champion comparison
    files: dict[str, dict[str, Any]] = {}  # {relative path: {sha256, size}}: what verification re-hashes
    approval: dict[str, Any] | None = None  # a person's answer, when the spec asked (tasks/decide/approval.py)
    remedies: list[dict[str, Any]] | None = None  # what would change the outcome (tasks/decide/remedies.py)


def read_version_manifest(version_uri: str) -> VersionManifest:
    """The manifest of the registry version at ``version_uri`` (storage.NotFound where the folder has none)."""
    return VersionManifest.read(storage.read_json(storage.join(version_uri, VERSION_MANIFEST)))
