"""What a batch puts aside, and the one place its counts come from.

``quarantine/<pipeline>/<batch_id>/``:

* ``rows.jsonl``: one JSON object per bad row (``source, line, reason, detail, raw``);
* ``files/<key>``: a byte-for-byte copy of each whole file whose data was bad (unparseable, unsupported format);
  entries that were never read (symlinks, special files) are reported but nothing of them is copied;
* ``summary.json``: ``rows`` (= lines of rows.jsonl), ``files`` (= entries of ``whole_files``), counts by reason,
  and each whole file's key, reason, detail, byte size, line count and where its copy is.

The stage result's ``quarantined_rows``, ``quarantined_files`` and ``quarantine_reasons`` are read from the same
object, so the result and the summary cannot disagree.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks import storage
from tasks.data import snapshots
from tasks.data.landing import safe_relpath
from tasks.data.validation import DATA_FILE_REASONS, Bad


@dataclass
class BadFile:
    key: str
    reason: str
    detail: str
    size: int  # bytes as landed
    lines: int = 0  # newline-terminated lines of its (decompressed) content; 0 when never read
    data: bytes | None = field(default=None, repr=False)  # the copy kept; None for entries never read

    @property
    def weight(self) -> int:
        """How many rows the file counts for in the batch's bad share: a bad data file its lines (at least 1),
        so one garbage file cannot hide in a batch; an entry that is not data (a symlink) nothing."""
        return max(1, self.lines) if self.reason in DATA_FILE_REASONS else 0


@dataclass
class Quarantine:
    rows: list[Bad] = field(default_factory=list)
    files: list[BadFile] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rows or self.files)

    @property
    def bad_weight(self) -> int:
        return len(self.rows) + sum(f.weight for f in self.files)

    @property
    def file_weight(self) -> int:
        return sum(f.weight for f in self.files)

    def reasons(self) -> dict[str, int]:
        """Counts by reason, rows and files together (the reason names do not overlap)."""
        return dict(Counter([b.reason for b in self.rows] + [f.reason for f in self.files]))

    def examples(self, n: int = 5) -> str:
        rows = [f"{b.source}:{b.line} {b.reason} ({b.detail})" for b in self.rows[:n]]
        files = [f"{f.key} {f.reason} ({f.detail})" for f in self.files[: max(0, n - len(rows))]]
        return "; ".join(rows + files)

    def summary(self, batch_id: str) -> dict[str, Any]:
        return {
            "batch_id": batch_id,
            "rows": len(self.rows),
            "files": len(self.files),
            "by_reason": dict(Counter(b.reason for b in self.rows)),
            "file_reasons": dict(Counter(f.reason for f in self.files)),
            "whole_files": [{"key": f.key, "reason": f.reason, "detail": f.detail, "bytes": f.size, "lines": f.lines,
                             "copy": f"files/{safe_relpath(f.key)}" if f.data is not None else None}
                            for f in self.files],
        }

    def write(self, uri: str, batch_id: str) -> None:
        """Create-only writes: a retry of the same batch writes the same content."""
        lines = [json.dumps(asdict(b), default=str, ensure_ascii=False) for b in self.rows]
        # backslashreplace: a value that still holds a stray surrogate is written escaped instead of failing.
        snapshots.create(storage.join(uri, "rows.jsonl"),
                         ("\n".join(lines) + "\n" if lines else "").encode("utf-8", "backslashreplace"))
        for f in self.files:
            if f.data is not None:
                snapshots.create(storage.join(uri, "files", safe_relpath(f.key)), f.data)
        snapshots.create(storage.join(uri, "summary.json"), snapshots.json_bytes(self.summary(batch_id)))
