"""The golden set: frozen from ``golden.source_uri`` on the first ingest, replaced only by ``--refreeze``.

    python -m tasks golden --spec SPEC                            # the current set and the replaced ones
    python -m tasks golden --spec SPEC --refreeze [--source URI]  # replace it (docs/data.md)

``golden/<pipeline>/<golden_id>/`` holds ``data.parquet`` (``text``, ``label``) and ``manifest.json``; the id is
a hash of the content. ``golden/<pipeline>/current.json`` points at it. The first ingest writes it create-only,
so later changes to the source file are not picked up by an ingest, and two first ingests agree on one golden set
(the first wins). A re-freeze checks the new source with the same function (:func:`candidate`), stores it next to
the old set, moves the pointer with If-Match on the version it read and records the replaced pointer under
``golden/<pipeline>/replaced/``; the next ingest then removes stored rows whose text is in the new set
(tasks.data.ingest.remove_golden_rows). Readers use :func:`tasks.data.snapshots.read_golden`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks import storage
from tasks.data import readers, snapshots
from tasks.data.validation import CONFLICTING, UNKNOWN_LABEL, Bad, Good, LabelMap, unknown_label_hint, validate
from tasks.errors import DataRejected, InfrastructureError, SpecInvalid
from tasks.spec import PipelineSpec

log = logging.getLogger("tasks.data.golden")


def read_source(spec: PipelineSpec, source: str | None = None, first: bool = True) -> tuple[list[Good], list[Bad]]:
    """The golden source file's rows (``source``, default ``golden.source_uri``), validated like landed rows;
    ``first``: for the first freeze (else a re-freeze), which only changes what a missing file's error says."""
    source = source or spec.golden.source_uri
    fmt = readers.file_format(source, spec.data.format)
    if fmt is None:
        raise SpecInvalid(f"golden source {source} has no supported extension ({', '.join(readers.FORMATS)})")
    try:
        data = storage.read_bytes(source)
    except storage.NotFound:
        raise DataRejected(
            f"the golden set is not frozen yet and its source {source} does not exist; upload the golden "
            f"evaluation file there (or set golden.source_uri) before the first ingest" if first else
            f"the golden source {source} does not exist; nothing was replaced") from None
    text_col = spec.golden.text_column or spec.data.text_column
    label_col = spec.golden.label_column or spec.data.label_column
    labels = LabelMap(spec.data.labels, spec.data.label_aliases)
    try:
        if readers.is_gzip(source):
            data = readers.gunzip(data)
        rows = readers.read_rows(data, fmt, text_col, label_col, tsv_quoting=spec.data.tsv_quoting,
                                 csv_delimiter=spec.data.csv_delimiter)
    except readers.Unparseable as exc:
        raise DataRejected(f"golden source {source} cannot be parsed: {exc}") from None
    return validate(source, rows, labels, spec.data.max_text_chars)


def check_bad_share(spec: PipelineSpec, good: list[Good], bad: list[Bad], source: str | None = None) -> None:
    """Refuse to freeze a golden set when more of its source than data.max_bad_fraction is bad (or all of it):
    it stays until someone replaces it, so a file with the wrong label names or columns must fail loudly, not shrink
    quietly."""
    source = source or spec.golden.source_uri
    total = len(good) + len(bad)
    if not total:
        raise DataRejected(f"golden source {source} has no rows; it is not frozen")
    if good and len(bad) <= spec.data.max_bad_fraction * total:
        if bad:
            log.warning("golden source %s: %d of %d rows skipped: %s", source, len(bad), total,
                        dict(Counter(b.reason for b in bad)))
        return
    examples = "; ".join(f"line {b.line} {b.reason} ({b.detail})" for b in bad[:5])
    hint = f" {unknown_label_hint(spec.data.labels, spec.data.label_aliases)}." \
        if any(b.reason == UNKNOWN_LABEL for b in bad) else ""
    raise DataRejected(
        f"golden source {source}: {len(bad)} of {total} rows are bad (more than "
        f"data.max_bad_fraction {spec.data.max_bad_fraction:.0%}), so it is not frozen. By reason: "
        f"{dict(Counter(b.reason for b in bad))}. First: {examples}.{hint} Fix the file and rerun.")


def without_conflicts(good: list[Good]) -> tuple[list[Good], list[Bad]]:
    """Rows whose text the source gives more than one label: left out of the golden set, every one of them, as
    the ingest quarantines such rows (``conflicting_labels``); keeping the first label would score every model
    against an arbitrary answer (a topic corpus files some texts under two categories)."""
    labels_of: dict[str, set[int]] = {}
    for row in good:
        labels_of.setdefault(row.text, set()).add(row.label)
    conflicted = {text for text, labels in labels_of.items() if len(labels) > 1}
    if not conflicted:
        return good, []
    bad = [Bad(row.source, row.line, CONFLICTING, f"the same text has {len(labels_of[row.text])} labels in the "
                                                  f"golden source", raw=row.text)
           for row in good if row.text in conflicted]
    return [row for row in good if row.text not in conflicted], bad


@dataclass
class Candidate:
    """A golden source read and validated, not stored yet: its rows and the manifest they would be frozen with."""

    frame: Any  # pandas: text, label
    manifest: dict[str, Any]

    @property
    def golden_id(self) -> str:
        return self.manifest["golden_id"]


def candidate(spec: PipelineSpec, source: str | None = None, first: bool = True) -> Candidate:
    """Read ``source`` (default ``golden.source_uri``) and check it as every freeze does: rows validated like landed
    ones, texts with two labels left out, a text repeated with one label kept once, the bad share bounded
    (DataRejected with the reasons, nothing written). The id is a hash of the content."""
    source = source or spec.golden.source_uri
    good, bad = read_source(spec, source, first)
    good, conflicting = without_conflicts(good)
    bad += conflicting
    first: dict[str, int] = {}
    for row in good:
        first.setdefault(row.text, row.label)  # a text repeated with the same label is kept once
    check_bad_share(spec, good, bad, source)
    frame = pd.DataFrame({"text": list(first), "label": pd.Series(list(first.values()), dtype="int64")})
    digest = snapshots.content_hash(frame)
    return Candidate(frame, {
        "golden_id": digest[:16],
        "labels": spec.data.labels,
        "source_uri": source,
        "rows": len(frame),
        "label_counts": snapshots.label_counts(frame["label"], spec.data.labels),
        "skipped_rows": Counter(b.reason for b in bad),
        "duplicate_rows": len(good) - len(frame),
        "content_hash": digest,
        "frozen_at": storage.utcnow(),
    })


def store(spec: PipelineSpec, golden: Candidate) -> dict[str, Any]:
    """Write the golden folder ``golden/<pipeline>/<golden_id>/`` create-only (a set frozen before under the same
    content keeps its folder) and return the pointer to it; current.json is not touched here."""
    golden_uri = storage.join(spec.layout.golden, golden.golden_id)
    snapshots.create(storage.join(golden_uri, "data.parquet"), snapshots.parquet_bytes(golden.frame))
    snapshots.create(storage.join(golden_uri, "manifest.json"), snapshots.json_bytes(golden.manifest))
    return {"golden_id": golden.golden_id, "golden_uri": golden_uri, "rows": len(golden.frame)}


def freeze(spec: PipelineSpec, source: str | None = None) -> dict[str, Any]:
    """The freeze itself, for the first ingest and a re-freeze alike: read, check, store; returns the pointer."""
    return store(spec, candidate(spec, source))


def pointer_uri(spec: PipelineSpec) -> str:
    return storage.join(spec.layout.golden, "current.json")


def ensure_golden(spec: PipelineSpec) -> dict[str, Any]:
    """The frozen golden set's pointer ({golden_id, golden_uri, rows}, and generation etc. once re-frozen);
    freezes it on first use."""
    uri = pointer_uri(spec)
    try:
        pointer = storage.read_json(uri)
    except storage.NotFound:
        pass
    else:
        manifest = storage.read_json(storage.join(pointer["golden_uri"], "manifest.json"))
        snapshots.check_labels(spec.data.labels, manifest.get("labels"), manifest.get("label_counts"),
                               f"frozen golden set {pointer['golden_id']}")
        return pointer
    pointer = freeze(spec)
    try:
        storage.write_json(uri, pointer, if_none_match=True)
    except storage.PreconditionFailed:  # another ingest froze it first; theirs wins
        return storage.read_json(uri)
    log.info("froze golden set %s (%d rows) from %s", pointer["golden_id"], pointer["rows"], spec.golden.source_uri)
    return pointer


# ---------------------------------------------------------------- replacing it: python -m tasks golden --refreeze


def replaced_uri(spec: PipelineSpec, generation: int, golden_id: str) -> str:
    """The record of a replaced pointer: by generation (0 = the first set), so a set that comes back and is
    replaced again gets a record of its own."""
    return storage.join(spec.layout.golden, "replaced", f"{generation:04d}-{golden_id}.json")


def _record_replaced(spec: PipelineSpec, pointer: dict[str, Any]) -> str | None:
    """The create-only record of the pointer ``pointer`` replaced (it carries the old one under ``replaced``);
    written after the move, and again by the next command if a crash came in between (same content)."""
    old = pointer.get("replaced")
    if not old:
        return None
    uri = replaced_uri(spec, int(old.get("generation", 0)), old["golden_id"])
    record = {**old, "replaced_at": pointer["replaced_at"], "replaced_by": pointer["golden_id"],
              "replaced_by_uri": pointer["golden_uri"], "replaced_by_source": pointer.get("source_uri")}
    snapshots.create(uri, snapshots.json_bytes(record))
    return uri


def history(spec: PipelineSpec) -> list[dict[str, Any]]:
    """The records of every replaced golden pointer, oldest first."""
    prefix = storage.join(spec.layout.golden, "replaced")
    return [storage.read_json(o.uri) for o in sorted(storage.list_objects(prefix), key=lambda o: o.uri)
            if o.uri.endswith(".json")]


def refreeze(spec: PipelineSpec, source: str | None = None) -> dict[str, Any]:
    """Replace the pipeline's golden set by ``source`` (default ``golden.source_uri``): validated as the first
    freeze was (DataRejected, nothing written, when it fails), stored in its own content-addressed folder, and
    current.json moved to it with a write conditional on the version read (InfrastructureError when another
    re-freeze moved it meanwhile). The old set's folder stays; ``golden/<p>/replaced/<generation>-<old_id>.json``
    records the pointer replaced. The same content as the current set changes nothing. The next ingest then
    removes stored rows whose text is in the new set (tasks.data.ingest)."""
    source = storage.normalize(source) if source else spec.golden.source_uri
    uri = pointer_uri(spec)
    info = storage.stat(uri)  # the ETag first, then the content: a move in between fails the If-Match below
    if info is None:
        pointer = ensure_golden(spec) if source == spec.golden.source_uri else None
        if pointer is None:  # a first freeze from another source: the same create-only pointer as an ingest's
            pointer = freeze(spec, source)
            try:
                storage.write_json(uri, pointer, if_none_match=True)
            except storage.PreconditionFailed:
                raise InfrastructureError(f"{uri} was written while this freeze ran; nothing was replaced. Look "
                                          f"at it (python -m tasks golden --spec ...) and rerun") from None
        return {"action": "frozen", **pointer, "message": f"froze the first golden set {pointer['golden_id']} "
                                                          f"({pointer['rows']} rows) from {source}"}
    current = storage.read_json(uri)
    _record_replaced(spec, current)  # a record a crash left unwritten
    new = candidate(spec, source, first=False)
    if new.golden_id == current["golden_id"]:
        return {"action": "unchanged", **{k: current[k] for k in ("golden_id", "golden_uri", "rows")},
                "message": f"{source} holds the same rows as the current golden set {current['golden_id']}; "
                           f"nothing changed"}
    stored = store(spec, new)
    now = storage.utcnow()
    generation = int(current.get("generation", 0))
    old = {k: v for k, v in current.items() if k not in ("replaced", "replaced_at")}
    pointer = {**stored, "generation": generation + 1, "source_uri": source, "frozen_at": now, "replaced_at": now,
               "replaced": {**old, "generation": generation}}
    try:
        storage.write_json(uri, pointer, if_match=info.etag)
    except storage.PreconditionFailed:
        moved = storage.read_json(uri)
        if moved["golden_id"] == stored["golden_id"]:  # another re-freeze of the same rows got there first
            return {"action": "unchanged", **stored,
                    "message": f"a concurrent re-freeze already made {stored['golden_id']} the golden set"}
        raise InfrastructureError(
            f"{uri} moved while this re-freeze ran (it now names golden set {moved['golden_id']}, not "
            f"{current['golden_id']} as read); nothing was replaced. Check it with python -m tasks golden --spec "
            f"... and rerun if {source} should still replace it") from None
    record = _record_replaced(spec, pointer)
    overlap = champion_overlap(spec, set(new.frame["text"]))
    log.info("re-froze golden set %s -> %s (%d rows) from %s", current["golden_id"], stored["golden_id"],
             stored["rows"], source)
    return {"action": "refrozen", **stored, "generation": pointer["generation"], "replaced": current["golden_id"],
            "replaced_record": record, "champion_trained_on": overlap,
            "message": f"golden set {current['golden_id']} ({current.get('rows')} rows) replaced by "
                       f"{stored['golden_id']} ({stored['rows']} rows) from {source}; the next ingest removes "
                       f"stored rows whose text is in it and names it in a new snapshot"
                       + (f". The champion {overlap['version']} trained on {overlap['rows']} of its texts: its "
                          f"evaluate leaves those out of the comparisons with it" if overlap and overlap["rows"] else "")}


def champion_overlap(spec: PipelineSpec, texts: set[str]) -> dict[str, Any] | None:
    """How many of ``texts`` the champion trained on (train rows of its snapshot), or None without a champion.
    The snapshot is scanned a part and a batch of rows at a time (snapshots.train_texts_in_part)."""
    try:
        champion = storage.read_json(spec.layout.champion)
    except storage.NotFound:
        return None
    if not champion.get("snapshot_uri"):
        return None
    snapshot_uri = storage.normalize(champion["snapshot_uri"])
    values = pa.array(sorted(texts), pa.string())
    hi_keys = snapshots.text_keys(values)[0]
    found = np.zeros(len(values), dtype=bool)
    with tempfile.TemporaryDirectory(prefix="golden-champion-") as tmp:
        base = storage.parent(snapshot_uri)  # parts are named from the snapshots folder (a parent's are reused)
        for part in snapshots.read_manifest(snapshot_uri).parts:
            found |= snapshots.train_texts_in_part(storage.join(base, part), values, hi_keys, tmp)
    return {"version": champion.get("version"), "snapshot_id": champion.get("snapshot_id"),
            "rows": int(found.sum())}


def golden_texts(pointer: dict[str, Any]) -> set[str]:
    return set(snapshots.read_golden(pointer["golden_uri"])["text"])


@dataclass
class GoldenArgs:
    spec: str = field(metadata={"help": "the pipeline spec (YAML file, or a run's spec.json URI)"})
    refreeze: bool = field(default=False, metadata={
        "help": "replace the frozen golden set by the source's rows (without it: show the current set and the "
                "replaced ones)"})
    source: str | None = field(default=None, metadata={
        "help": "the file to freeze (any landing format); default golden.source_uri"})


def main(argv: list[str]) -> int:
    from tasks import cli
    from tasks.spec import load_spec

    args = cli.parse(GoldenArgs, argv, prog="python -m tasks golden", description=__doc__.splitlines()[0])
    spec = load_spec(args.spec)
    if args.source and not args.refreeze:
        raise SpecInvalid("--source is the file a re-freeze reads; give --refreeze with it")
    if args.refreeze:
        outcome = refreeze(spec, args.source)
        log.info("%s", outcome["message"])
    else:
        try:
            current = storage.read_json(pointer_uri(spec))
        except storage.NotFound:
            current = None
        outcome = {"current": current, "replaced": history(spec)}
    print(json.dumps(outcome, sort_keys=True, default=str))
    return 0
