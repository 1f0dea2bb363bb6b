"""Row checks and the quarantine reasons: what makes a parsed row good, and why a row or a file is put aside.

Every reason is a constant here, spelled once (docs/data.md lists them). Row reasons go with one row of a file
(``rows.jsonl``); file reasons with a whole landing file (``summary.json: files``).
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from tasks.data.readers import RawRow

# Row reasons.
EMPTY_TEXT = "empty_text"
TEXT_TOO_LONG = "text_too_long"
MISSING_LABEL = "missing_label"
UNKNOWN_LABEL = "unknown_label"
UNDECODABLE = "undecodable_bytes"
MALFORMED = "malformed_row"
CONFLICTING = "conflicting_labels"
ROW_REASONS = (EMPTY_TEXT, TEXT_TOO_LONG, MISSING_LABEL, UNKNOWN_LABEL, UNDECODABLE, MALFORMED, CONFLICTING)

# File reasons: the whole file is put aside. Only the first two are the file's data being bad (they weigh in the
# batch's bad share by their line count); the others are about the landing entry itself and never read it.
UNPARSEABLE_FILE = "unparseable_file"
UNSUPPORTED_FORMAT = "unsupported_format"
SYMLINK = "symlink"  # never followed, never read, its target never copied
NOT_REGULAR = "not_a_regular_file"  # a FIFO, socket or device in a local landing folder
OUTSIDE_LANDING = "outside_landing"  # resolves to a path outside the landing folder (a symlinked parent)
UNREADABLE = "unreadable_file"  # permission denied or gone while read; not recorded, so the next run retries it
FILE_REASONS = (UNPARSEABLE_FILE, UNSUPPORTED_FORMAT, SYMLINK, NOT_REGULAR, OUTSIDE_LANDING, UNREADABLE)
DATA_FILE_REASONS = (UNPARSEABLE_FILE, UNSUPPORTED_FORMAT)

# Not a quarantine reason: an empty (zero-byte) file is processed and reported, and holds no rows.
EMPTY_FILE = "empty_file"


def normalize_text(text: str) -> str:
    """Unicode NFC, trimmed, every run of whitespace collapsed to one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def printable(value: Any) -> Any:
    """A string that JSON and UTF-8 can carry: bytes that were not UTF-8 (lone surrogates) as ``\\xNN``."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


def clip(raw: Any, limit: int = 500) -> Any:
    if isinstance(raw, str) and len(raw) > limit:
        return raw[:limit] + f"... ({len(raw)} chars)"
    return raw


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


@dataclass
class Bad:
    """One quarantined row: where it came from, why, and the raw row (printable)."""

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


def validate(source: str, rows: Iterable["RawRow"], labels: LabelMap, max_chars: int) -> tuple[list[Good], list[Bad]]:
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
            bad.append(Bad(source, row.line, TEXT_TOO_LONG, f"{len(text)} characters > {max_chars}", clip(row.raw)))
            continue
        index, reason = labels.lookup(row.label)
        if reason:
            detail = "no label" if reason == MISSING_LABEL else f"label {printable(row.label)!r} not in {labels.labels}"
            bad.append(Bad(source, row.line, reason, detail, row.raw))
            continue
        good.append(Good(source, row.line, text, index))
    return good, bad


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
                conflicts.append(Bad(row.source, row.line, CONFLICTING, f"same text labeled {names} in {where}",
                                     {"text": text, "label": labels[row.label]}))
            continue
        if text in known:
            duplicates += len(group)
            continue
        kept.append(group[0])
        duplicates += len(group) - 1
    return kept, conflicts, duplicates
