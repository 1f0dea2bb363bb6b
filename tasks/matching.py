"""How landed data is matched: a landing file to its format (by extension), a landed label to a label name (by
its key). The spec checks its own settings with these rules (tasks/spec.py), the data layer applies them to
landed files (tasks/data/readers.py, tasks/data/validation.py); they live here, below both, so that the spec
depends on nothing above it.
"""

from __future__ import annotations

import posixpath
import unicodedata

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
GZIP_SUFFIX = ".gz"


def file_format(key: str, setting: str = "auto") -> str | None:
    """The format of a landing key: the pipeline's ``data.format`` when it names one, else from the extension
    (``.gz`` is looked through); None if unsupported."""
    if setting != "auto":
        return setting
    name = key.lower()
    if name.endswith(GZIP_SUFFIX):
        name = name[: -len(GZIP_SUFFIX)]
    return FORMATS.get(posixpath.splitext(name)[1])


def normalize_text(text: str) -> str:
    """Unicode NFC, trimmed, every run of whitespace collapsed to one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def label_key(value: str) -> str:
    """How a landed label matches a name (or alias) that it does not equal exactly: Unicode NFC, whitespace runs
    collapsed, trimmed, casefolded ("VERY  Positive" matches "very positive"; "Zu\u0308rich" matches "Zürich").
    The spec refuses labels that share a key (tasks/spec.py), so the match is never ambiguous."""
    return normalize_text(value).casefold()
