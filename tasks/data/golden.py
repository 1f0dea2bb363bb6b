"""The frozen golden set: read once from ``golden.source_uri`` on the first ingest, then never again.

``golden/<pipeline>/<golden_id>/`` holds ``data.parquet`` (``text``, ``label``) and ``manifest.json``; the id is
a hash of the content. ``golden/<pipeline>/current.json`` points at it and is written create-only, so later
changes to the source file are not picked up, and two first ingests agree on one golden set (the first wins).
Readers use :func:`tasks.data.snapshots.read_golden`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from tasks import storage
from tasks.data import readers, snapshots
from tasks.data.validation import CONFLICTING, UNKNOWN_LABEL, Bad, Good, LabelMap, unknown_label_hint, validate
from tasks.errors import DataRejected, SpecInvalid
from tasks.spec import PipelineSpec

log = logging.getLogger("tasks.data.golden")


def read_source(spec: PipelineSpec) -> tuple[list[Good], list[Bad]]:
    """The golden source file's rows, validated like landed rows."""
    source = spec.golden.source_uri
    fmt = readers.file_format(source, spec.data.format)
    if fmt is None:
        raise SpecInvalid(f"golden.source_uri {source} has no supported extension ({', '.join(readers.FORMATS)})")
    try:
        data = storage.read_bytes(source)
    except storage.NotFound:
        raise DataRejected(
            f"the golden set is not frozen yet and its source {source} does not exist; upload the golden "
            f"evaluation file there (or set golden.source_uri) before the first ingest"
        ) from None
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


def check_bad_share(spec: PipelineSpec, good: list[Good], bad: list[Bad]) -> None:
    """Refuse to freeze a golden set when more of its source than data.max_bad_fraction is bad (or all of it):
    it is frozen for good, so a file with the wrong label names or columns must fail loudly, not shrink quietly."""
    total = len(good) + len(bad)
    if not total:
        raise DataRejected(f"golden source {spec.golden.source_uri} has no rows; it is not frozen")
    if good and len(bad) <= spec.data.max_bad_fraction * total:
        if bad:
            log.warning("golden source %s: %d of %d rows skipped: %s", spec.golden.source_uri, len(bad), total,
                        dict(Counter(b.reason for b in bad)))
        return
    examples = "; ".join(f"line {b.line} {b.reason} ({b.detail})" for b in bad[:5])
    hint = f" {unknown_label_hint(spec.data.labels, spec.data.label_aliases)}." \
        if any(b.reason == UNKNOWN_LABEL for b in bad) else ""
    raise DataRejected(
        f"golden source {spec.golden.source_uri}: {len(bad)} of {total} rows are bad (more than "
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


def ensure_golden(spec: PipelineSpec) -> dict[str, Any]:
    """The frozen golden set's pointer ({golden_id, golden_uri, rows}); freezes it on first use."""
    import pandas as pd

    pointer_uri = storage.join(spec.layout.golden, "current.json")
    try:
        pointer = storage.read_json(pointer_uri)
    except storage.NotFound:
        pass
    else:
        manifest = storage.read_json(storage.join(pointer["golden_uri"], "manifest.json"))
        snapshots.check_labels(spec.data.labels, manifest, f"frozen golden set {pointer['golden_id']}")
        return pointer
    good, bad = read_source(spec)
    good, conflicting = without_conflicts(good)
    bad += conflicting
    first: dict[str, int] = {}
    for row in good:
        first.setdefault(row.text, row.label)  # a text repeated with the same label is kept once
    check_bad_share(spec, good, bad)
    frame = pd.DataFrame({"text": list(first), "label": pd.Series(list(first.values()), dtype="int64")})
    digest = snapshots.content_hash(frame)
    golden_id = digest[:16]
    golden_uri = storage.join(spec.layout.golden, golden_id)
    manifest = {
        "golden_id": golden_id,
        "labels": spec.data.labels,
        "source_uri": spec.golden.source_uri,
        "rows": len(frame),
        "label_counts": snapshots.label_counts(frame["label"], spec.data.labels),
        "skipped_rows": Counter(b.reason for b in bad),
        "duplicate_rows": len(good) - len(frame),
        "content_hash": digest,
        "frozen_at": storage.utcnow(),
    }
    snapshots.create(storage.join(golden_uri, "data.parquet"), snapshots.parquet_bytes(frame))
    snapshots.create(storage.join(golden_uri, "manifest.json"), snapshots.json_bytes(manifest))
    pointer = {"golden_id": golden_id, "golden_uri": golden_uri, "rows": len(frame)}
    try:
        storage.write_json(pointer_uri, pointer, if_none_match=True)
    except storage.PreconditionFailed:  # another ingest froze it first; theirs wins
        return storage.read_json(pointer_uri)
    log.info("froze golden set %s (%d rows) from %s", golden_id, len(frame), spec.golden.source_uri)
    return pointer


def golden_texts(pointer: dict[str, Any]) -> set[str]:
    return set(snapshots.read_golden(pointer["golden_uri"])["text"])
