"""Row checks and the quarantine reasons: what makes a parsed row good, and why a row or a file is put aside.

Every reason is a constant here, spelled once (docs/data.md lists them). Row reasons go with one row of a file
(``rows.jsonl``); file reasons with a whole landing file (``summary.json: files``).
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.matching import label_key, normalize_text

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


@dataclass
class RawRow:
    """One parsed row as a reader returns it (readers.py), before validation decides whether it is good."""
    line: int  # 1-based physical line (CSV/TSV: header is line 1; JSONL: line; Parquet: row number)
    text: Any
    label: Any
    problem: str | None = None  # MALFORMED / UNDECODABLE, found while parsing
    detail: str = ""
    raw: Any = None


def invisible(text: str) -> bool:
    """A text of only invisible characters (zero-width spaces and joiners, BOMs, other format or control
    characters) is as empty as a whitespace-only one."""
    return all(unicodedata.category(ch)[0] in "CZ" for ch in text)


def printable(value: Any) -> Any:
    """A string that JSON and UTF-8 can carry: bytes that were not UTF-8 (lone surrogates) as ``\\xNN``."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [printable(v) for v in value]
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    return value


def clip(raw: Any, limit: int = 500) -> Any:
    """A raw row for the quarantine: strings (also a Parquet row's values) clipped at ``limit`` characters."""
    if isinstance(raw, str) and len(raw) > limit and not raw[limit:].startswith("... ("):
        return raw[:limit] + f"... ({len(raw)} chars)"
    if isinstance(raw, dict):
        return {k: clip(v, limit) for k, v in raw.items()}
    return raw


def unknown_detail(value: Any, labels: list[str]) -> str:
    """Why a label is unknown; a long label list is named by its size (the rejection message lists it once)."""
    names = str(labels) if len(str(labels)) <= 200 else f"data.labels ({len(labels)} names)"
    return f"label {printable(value)!r} not in {names}"


def unknown_label_hint(labels: list[str], aliases: dict[str, str]) -> str:
    """What an unknown label is matched against, for the message of a rejected batch."""
    hint = f"labels are matched against data.labels {labels}"
    if aliases:
        hint += f" and data.label_aliases {dict(list(aliases.items())[:10])}"
    if not all(name.isdigit() for name in labels):
        hint += f"; numbers as labels need data.label_aliases (e.g. {{'0': {labels[0]!r}}})"
    return hint


class LabelMap:
    """Raw label values -> int index into spec.data.labels, through label_aliases: an exact match first, then one
    by :func:`label_key`."""

    def __init__(self, labels: list[str], aliases: dict[str, str]) -> None:
        self.labels = labels
        self._index = {name: i for i, name in enumerate(labels)}
        for raw, name in aliases.items():
            self._index[str(raw).strip()] = self._index[name]
        self._loose = {label_key(name): i for name, i in self._index.items()}

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
            index = self._loose.get(label_key(raw))
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


def too_long_detail(length: int, max_chars: int) -> str:
    """Names the setting: long documents are often meant to go in, and raising it is the fix, not the file."""
    return f"{length} characters > data.max_text_chars {max_chars}"


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
        if not text or invisible(text):
            bad.append(Bad(source, row.line, EMPTY_TEXT, "empty or whitespace-only text", row.raw))
            continue
        if len(text) > max_chars:
            bad.append(Bad(source, row.line, TEXT_TOO_LONG, too_long_detail(len(text), max_chars), clip(row.raw)))
            continue
        index, reason = labels.lookup(row.label)
        if reason:
            detail = "no label" if reason == MISSING_LABEL else unknown_detail(row.label, labels.labels)
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


# ---------------------------------------------------------------- vectorized, a chunk at a time (the ingest stage)

# str.split()'s whitespace below U+0080; rows with other characters are normalized by normalize_text itself, so
# the vectorized result is normalize_text's by construction (an ASCII text is already NFC).
_ASCII_WHITESPACE_RUN = r"[\t\n\x0b\x0c\r\x1c-\x1f ]+"
_ASCII_CONTROL_WHITESPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f]"


def _needs_collapsing(texts: Any) -> Any:
    """Rows whose ASCII whitespace is not already single inner spaces (found without a regex where the chunk's
    bytes hold no control characters, the common case: a regex costs ~3 us a row)."""
    fix = pc.or_(pc.or_(pc.match_substring(texts, "  "), pc.starts_with(texts, " ")), pc.ends_with(texts, " "))
    values = texts.buffers()[2]
    if values is not None and (np.frombuffer(values, dtype=np.uint8) < 32).any():
        fix = pc.or_(fix, pc.match_substring_regex(texts, _ASCII_CONTROL_WHITESPACE))
    return pc.fill_null(fix, False)


def normalize_array(texts: Any) -> Any:
    """normalize_text over an arrow string array (nulls stay null)."""
    out = texts
    fix = _needs_collapsing(texts)
    if pc.any(fix).as_py():
        fixed = pc.utf8_trim(pc.replace_substring_regex(texts.filter(fix), _ASCII_WHITESPACE_RUN, " "), " ")
        out = pc.replace_with_mask(texts, fix, fixed)
    other = pc.invert(pc.fill_null(pc.string_is_ascii(texts), True))
    if not pc.any(other).as_py():
        return out
    idx = np.flatnonzero(other.to_numpy(zero_copy_only=False))
    fixed = pa.array([normalize_text(t) for t in texts.take(pa.array(idx)).to_pylist()], pa.string())
    return pc.replace_with_mask(out, other, fixed)


def label_indices(labels: Any, label_map: LabelMap) -> tuple[Any, Any]:
    """(index per row, -1 where bad; reason per row, None where good) for an arrow array or a list of raw labels:
    each distinct value is looked up once."""
    if isinstance(labels, pa.Array):
        try:
            uniq = pc.unique(labels)
            pos = pc.index_in(labels, value_set=uniq).to_numpy(zero_copy_only=False)
            values = uniq.to_pylist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            labels = labels.to_pylist()
        else:
            if labels.null_count and None not in values:
                values.append(None)
            pos = np.where(np.isnan(pos.astype(float)), values.index(None) if None in values else 0, pos)
            found = [label_map.lookup(v) for v in values]
            index = np.array([i if i is not None else -1 for i, _ in found], dtype=np.int64)[pos.astype(np.int64)]
            reasons = np.array([r for _, r in found], dtype=object)[pos.astype(np.int64)]
            return index, reasons
    found = [label_map.lookup(v) for v in labels]
    return (np.array([i if i is not None else -1 for i, _ in found], dtype=np.int64),
            np.array([r for _, r in found], dtype=object))


@dataclass
class GoodChunk:
    texts: Any  # arrow string array, normalized
    labels: Any  # numpy int64
    lines: Any  # numpy int64


def validate_chunk(source: str, chunk: Any, label_map: LabelMap, max_chars: int) -> tuple[GoodChunk, list[Bad]]:
    """validate() for a readers.Chunk: the good rows (normalized) and the bad ones, in line order."""
    bad = [Bad(source, r.line, r.problem, r.detail, r.raw) for r in chunk.problems]
    n = len(chunk.lines)
    if not n:
        return GoodChunk(pa.array([], pa.string()), np.zeros(0, np.int64), np.zeros(0, np.int64)), bad
    texts = normalize_array(chunk.texts)
    length = pc.fill_null(pc.utf8_length(texts), 0).to_numpy(zero_copy_only=False)
    empty = length == 0
    non_ascii = np.flatnonzero(~empty & ~pc.fill_null(pc.string_is_ascii(texts), True).to_numpy(zero_copy_only=False))
    if len(non_ascii):  # zero-width or format characters only (ASCII: only a lone control character could be)
        empty[non_ascii] = [invisible(t) for t in texts.take(pa.array(non_ascii)).to_pylist()]
    too_long = ~empty & (length > max_chars)
    index, reasons = label_indices(chunk.labels, label_map)
    label_bad = ~empty & ~too_long & (index < 0)
    good = ~(empty | too_long | label_bad)
    for i in np.flatnonzero(~good):
        line = int(chunk.lines[i])
        if empty[i]:
            bad.append(Bad(source, line, EMPTY_TEXT, "empty or whitespace-only text", chunk.raw(i)))
        elif too_long[i]:
            bad.append(Bad(source, line, TEXT_TOO_LONG, too_long_detail(length[i], max_chars), clip(chunk.raw(i))))
        else:
            value = chunk.labels[i] if isinstance(chunk.labels, list) else chunk.labels[i].as_py()
            detail = "no label" if reasons[i] == MISSING_LABEL else \
                unknown_detail(value, label_map.labels)
            bad.append(Bad(source, line, reasons[i], detail, chunk.raw(i)))
    bad.sort(key=lambda b: b.line)
    mask = pa.array(good)
    return GoodChunk(texts.filter(mask), index[good], chunk.lines[good]), bad
