"""Withdraw ingested batches from the latest snapshot, or readmit them: what happens to a batch with bad labels.

    python -m tasks withdraw --spec SPEC --batch ID [ID ...] --reason TEXT
    python -m tasks withdraw --spec SPEC --readmit ID [ID ...] --reason TEXT

When the drift stage's label-quality check flags a batch (the champion disagrees with its labels far more than
with the reference's), the retrain run's decide step calls ``withdraw`` before any training stage, then fails the
run and alerts. Without it the bad rows would stay in every later snapshot: each night would stop again, and a
corrected file would be quarantined as conflicting with the stored labels.

A withdrawal writes a new snapshot: the latest one's parts minus the batches' (its manifest says ``withdrawn``),
and moves ``latest.json`` to it with a conditional write (re-read and redone when a concurrent ingest moved it).
Each batch gets a record ``snapshots/<pipeline>/withdrawn/<batch_id>.json`` (reason, files, rows, when, run).
Nothing is deleted: the part stays where it is and older snapshots keep listing it; the batch's landing files
stay recorded as processed, so the same files are not read again, while a corrected file (other content) is a
new batch whose texts no longer conflict with the withdrawn labels. Withdrawing the only batch since the
champion's snapshot gives back that snapshot's very id (same rows, same content hash).

Readmission (a person judged the labels right, e.g. a real concept shift) adds the part back in a new snapshot
and records ``snapshots/<pipeline>/accepted/<batch_id>.json``: the label-quality check then leaves that batch's
rows out, so the next run trains on it instead of stopping again.

Batches are found by their part's batch id: after a golden-set re-freeze a batch's part in the latest snapshot may
be a rewrite without the new golden rows (``parts/filtered/<id>/<batch_id>.parquet``), and a batch readmitted
after one is filtered against the snapshot's golden set the same way (tasks.data.ingest.remove_golden_rows).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow.compute as pc

from tasks import cli, storage
from tasks.data import snapshots
from tasks.data.ingest import golden_array
from tasks.errors import InfrastructureError, SpecInvalid
from tasks.manifests import BatchRecord, LandingFileRecord, SnapshotManifest
from tasks.spec import load_spec

log = logging.getLogger("tasks.data.withdraw")

MOVE_ATTEMPTS = 5  # latest.json moved under us this many times in a row: give up (a retry starts over)


@dataclass
class WithdrawArgs:
    spec: str = field(metadata={"help": "the pipeline spec (YAML file, or a run's spec.json URI)"})
    reason: str = field(metadata={"help": "why, for the record and the log"})
    batch: list[str] = field(default_factory=list, metadata={"help": "batch ids to withdraw"})
    readmit: list[str] = field(default_factory=list, metadata={"help": "withdrawn batch ids to put back"})


def withdrawn_uri(snapshots_uri: str, batch_id: str) -> str:
    return storage.join(snapshots_uri, "withdrawn", f"{batch_id}.json")


def accepted_uri(snapshots_uri: str, batch_id: str) -> str:
    return storage.join(snapshots_uri, "accepted", f"{batch_id}.json")


def accepted_batches(snapshots_uri: str) -> list[str]:
    """Batches a person readmitted: the label-quality check no longer stops a run for them."""
    prefix = storage.join(snapshots_uri, "accepted")
    return sorted(o.uri.rsplit("/", 1)[-1][:-len(".json")] for o in storage.list_objects(prefix)
                  if o.uri.endswith(".json"))


def _part_totals(snapshots_uri: str, part: str, names: Sequence[str], tmp_dir: str):
    """(ContentSum, label counts, split counts) of one part (a manifest's part path), read a row group at a time."""
    total, counts, splits = snapshots.ContentSum(), np.zeros(len(names), dtype=np.int64), {"train": 0, "holdout": 0}
    for th, labels, split in snapshots.part_rows(storage.join(snapshots_uri, part), tmp_dir):
        total.add(th, labels)
        counts += np.bincount(labels, minlength=len(names))[: len(names)]
        for item in pc.value_counts(split).to_pylist():
            splits[item["values"]] = splits.get(item["values"], 0) + item["counts"]
    return total, {name: int(counts[i]) for i, name in enumerate(names)}, splits


def _batch_files(snapshots_uri: str, batch_id: str) -> list[LandingFileRecord]:
    try:
        record = storage.read_json(storage.join(snapshots.batch_records_uri(snapshots_uri), f"{batch_id}.json"))
        return BatchRecord.read(record).files
    except storage.NotFound:
        return []


def _new_manifest(spec, latest_manifest: SnapshotManifest, parts: list[str], change: dict[str, Any],
                  tmp_dir: str) -> SnapshotManifest:
    """The manifest of the latest snapshot with ``parts`` instead of its own; sums and counts are adjusted by the
    parts that leave or join (each read once), so the other parts are not read."""
    where, names = spec.layout.snapshots, list(spec.data.labels)
    total = snapshots.ContentSum.decode(latest_manifest.content_sum)
    labels = dict(latest_manifest.label_counts)
    splits = dict(latest_manifest.split_counts)
    old, new = set(latest_manifest.parts), set(parts)
    for part, sign in [*((p, -1) for p in old - new), *((p, 1) for p in new - old)]:
        part_sum, part_labels, part_splits = _part_totals(where, part, names, tmp_dir)
        total = total.merged(part_sum) if sign > 0 else total.minus(part_sum)
        labels = {k: labels.get(k, 0) + sign * part_labels.get(k, 0) for k in {**labels, **part_labels}}
        splits = {k: splits.get(k, 0) + sign * part_splits.get(k, 0) for k in {**splits, **part_splits}}
    sources = sorted({f.key for p in parts for f in _batch_files(where, snapshots.batch_of_part(p))})
    digest = total.hexdigest()
    golden = snapshots.golden_fields(latest_manifest)  # the same golden set as the latest snapshot
    return SnapshotManifest(
        snapshot_id=snapshots.snapshot_id_of(digest, golden["golden_id"], golden.get("golden_generation", 0)),
        pipeline=spec.name, content_hash=digest, content_sum=total.encode(),
        parent=latest_manifest.snapshot_id, parts=parts, rows=total.rows, new_rows=0,
        label_counts=labels, split_counts=splits, **change, sources=sources,
        labels=list(spec.data.labels) if latest_manifest.labels is None else latest_manifest.labels, **golden,
        created_at=storage.utcnow(),
    )


def _move(spec, edit, change: dict[str, Any]) -> dict[str, Any] | None:
    """Apply ``edit(parts, manifest, tmp_dir) -> parts`` to the latest snapshot as a new snapshot and move
    latest.json to it; None when the edit changes nothing. Redone from the new pointer when a concurrent ingest
    moved it."""
    where = spec.layout.snapshots
    for _ in range(MOVE_ATTEMPTS):
        latest, etag, manifest = snapshots.read_latest_manifest(where)
        if latest is None:
            raise SpecInvalid(f"pipeline {spec.name} has no snapshot yet ({snapshots.latest_uri(where)} missing)")
        with tempfile.TemporaryDirectory(prefix="withdraw-") as tmp:
            parts = edit(list(manifest.parts), manifest, tmp)
            if parts == manifest.parts:
                return None
            if not parts:
                raise SpecInvalid(f"withdrawing would leave pipeline {spec.name}'s snapshot empty; land data first")
            new = _new_manifest(spec, manifest, parts, change, tmp)
        snapshot_uri = snapshots.write_manifest(where, new)
        pointer = {"snapshot_id": new.snapshot_id, "snapshot_uri": snapshot_uri, "rows": new.rows,
                   "updated_at": storage.utcnow()}
        try:
            snapshots.move_latest(where, pointer, etag)
        except storage.PreconditionFailed:
            log.info("latest.json moved while withdrawing; redoing it on the new snapshot")
            continue
        return {"snapshot_id": new.snapshot_id, "snapshot_uri": snapshot_uri, "parent": manifest.snapshot_id,
                "rows": new.rows}
    raise InfrastructureError(f"{snapshots.latest_uri(where)} kept moving ({MOVE_ATTEMPTS} tries); rerun")


def withdraw(spec, batch_ids: Sequence[str], reason: str, run_key: str | None = None) -> dict[str, Any]:
    """Take ``batch_ids`` out of the latest snapshot (see the module doc); returns what was done, for the
    decision and the log: ``withdrawn`` (batches that were in it), ``files``, ``snapshot_id`` (now latest)."""
    where = spec.layout.snapshots
    wanted = set(batch_ids)
    present: list[str] = []

    def edit(parts: list[str], manifest: SnapshotManifest, tmp: str) -> list[str]:
        # By batch: after a re-freeze a batch's part may be a rewrite (parts/filtered/<id>/<batch_id>.parquet).
        present[:] = [p for p in parts if snapshots.batch_of_part(p) in wanted]
        return [p for p in parts if snapshots.batch_of_part(p) not in wanted]

    moved = _move(spec, edit, {"withdrawn": {"batches": sorted(batch_ids), "reason": reason, "run_key": run_key}})
    now = {snapshots.batch_of_part(p) for p in present}
    # A retried decide finds its batches out already: they count as withdrawn, their first record stays.
    done = sorted(b for b in batch_ids if b in now or storage.exists(withdrawn_uri(where, b)))
    files = {b: [f.key for f in _batch_files(where, b)] for b in done}
    for b in sorted(now):
        record = {"batch_id": b, "reason": reason, "run_key": run_key, "files": files[b],
                  "withdrawn_at": storage.utcnow(), "snapshot_id": moved["snapshot_id"] if moved else None}
        snapshots.create(withdrawn_uri(where, b), snapshots.json_bytes(record))  # a retry keeps the first
    if moved:
        log.info("withdrew batch(es) %s (files %s): latest snapshot is now %s", ", ".join(done),
                 json.dumps(files), moved["snapshot_id"])
    return {"withdrawn": done, "files": files, **_now_latest(where, moved), "reason": reason}


def _now_latest(where: str, moved: dict[str, Any] | None) -> dict[str, Any]:
    """snapshot_id and snapshot_uri of the latest snapshot: the one just moved to, or else as it stands."""
    latest = moved or snapshots.read_latest(where)[0] or {}
    return {"snapshot_id": latest.get("snapshot_id"), "snapshot_uri": latest.get("snapshot_uri")}


def readmit(spec, batch_ids: Sequence[str], reason: str) -> dict[str, Any]:
    """Put withdrawn batches back into the latest snapshot and mark them accepted (see the module doc)."""
    where = spec.layout.snapshots
    for b in batch_ids:
        if not storage.exists(withdrawn_uri(where, b)):
            raise SpecInvalid(f"batch {b} of pipeline {spec.name} was never withdrawn ({withdrawn_uri(where, b)})")
        snapshots.create(accepted_uri(where, b),
                         snapshots.json_bytes({"batch_id": b, "reason": reason, "accepted_at": storage.utcnow()}))
    change = {"readmitted": {"batches": sorted(batch_ids), "reason": reason}}

    def edit(parts: list[str], manifest: SnapshotManifest, tmp: str) -> list[str]:
        present = {snapshots.batch_of_part(p) for p in parts}
        back = [b for b in batch_ids if b not in present]
        return parts + [_without_golden_rows(spec, snapshots.part_path(b), manifest, tmp, change["readmitted"])
                        for b in back]

    moved = _move(spec, edit, change)
    return {"readmitted": sorted(batch_ids), **_now_latest(where, moved), "reason": reason}


def _without_golden_rows(spec, part: str, manifest: SnapshotManifest, tmp: str, record: dict[str, Any]) -> str:
    """The part to readmit: as ingested, unless the golden set was re-frozen since and holds some of its texts;
    then its rewrite without them (the rows of every part in a snapshot stay out of the golden set it names)."""
    if not manifest.golden_generation:  # never re-frozen: the part was checked against this very set
        return part
    texts = golden_array(snapshots.golden_fields(manifest))
    hi, _ = snapshots.text_keys(texts)
    out = snapshots.filter_part(spec.layout.snapshots, part, texts, hi, list(spec.data.labels), tmp)
    if out is None:
        return part
    record.setdefault("golden_removed_rows", {})[snapshots.batch_of_part(part)] = out.removed.rows
    if out.part is None:
        raise SpecInvalid(f"every row of batch {snapshots.batch_of_part(part)} is now in the golden set "
                          f"{manifest.golden_id}; there is nothing to readmit")
    return out.part


def main(argv: list[str]) -> int:
    args = cli.parse(WithdrawArgs, argv, prog="python -m tasks withdraw", description=__doc__.splitlines()[0])
    if bool(args.batch) == bool(args.readmit):
        raise SpecInvalid("give --batch ID (to withdraw) or --readmit ID (to put back), not both or neither")
    spec = load_spec(args.spec)
    outcome = withdraw(spec, args.batch, args.reason) if args.batch else readmit(spec, args.readmit, args.reason)
    print(json.dumps(outcome, sort_keys=True))
    return 0

