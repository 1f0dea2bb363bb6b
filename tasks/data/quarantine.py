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
from tasks.data.validation import DATA_FILE_REASONS, Bad, clip


@dataclass
class BadFile:
    key: str
    reason: str
    detail: str
    size: int  # bytes as landed
    lines: int = 0  # newline-terminated lines of its (decompressed) content; 0 when never read
    data: bytes | None = field(default=None, repr=False)  # the copy kept; None for entries never read
    copy_path: str | None = field(default=None, repr=False)  # or: a local file holding the copy (large files)

    @property
    def weight(self) -> int:
        """How many rows the file counts for in the batch's bad share: a bad data file its lines (at least 1),
        so one garbage file cannot hide in a batch; an entry that is not data (a symlink) nothing."""
        return max(1, self.lines) if self.reason in DATA_FILE_REASONS else 0

    @property
    def copied(self) -> bool:
        return self.data is not None or self.copy_path is not None


class Quarantine:
    """The bad rows (spooled to a local ``rows.jsonl`` as they come, so a batch with many need not hold them) and
    the bad files of a batch. ``mark()``/``rollback()`` take back the rows of a file that turns out bad whole."""

    EXAMPLES = 5

    def __init__(self, spool: str | None = None) -> None:
        self.files: list[BadFile] = []
        self.row_count = 0
        self.row_reasons: Counter = Counter()
        self.first: list[Bad] = []
        self._spool_path = spool
        self._spool = open(spool, "w+b") if spool else None  # noqa: SIM115 (closed in write()/close())
        self._memory: list[bytes] = []

    # ---- adding
    def add_rows(self, rows: list[Bad]) -> None:
        if not rows:
            return
        lines = b"".join((json.dumps({**asdict(b), "raw": clip(b.raw)}, default=str, ensure_ascii=False) + "\n")
                         .encode("utf-8", "backslashreplace") for b in rows)
        if self._spool is not None:
            self._spool.write(lines)
        else:
            self._memory.append(lines)
        self.row_count += len(rows)
        self.row_reasons.update(b.reason for b in rows)
        self.first.extend(rows[: max(0, self.EXAMPLES - len(self.first))])

    def mark(self) -> tuple:
        pos = self._spool.tell() if self._spool is not None else len(self._memory)
        return pos, self.row_count, Counter(self.row_reasons), len(self.first)

    def rollback(self, mark: tuple) -> None:
        pos, self.row_count, self.row_reasons, n_first = mark
        del self.first[n_first:]
        if self._spool is not None:
            self._spool.seek(pos)
            self._spool.truncate()
        else:
            del self._memory[pos:]

    def close(self) -> None:
        """No more rows: the spool is complete on disk."""
        if self._spool is not None and not self._spool.closed:
            self._spool.close()

    # ---- counts
    def __bool__(self) -> bool:
        return bool(self.row_count or self.files)

    @property
    def bad_weight(self) -> int:
        return self.row_count + sum(f.weight for f in self.files)

    @property
    def file_weight(self) -> int:
        return sum(f.weight for f in self.files)

    def reasons(self) -> dict[str, int]:
        """Counts by reason, rows and files together (the reason names do not overlap)."""
        return dict(self.row_reasons + Counter(f.reason for f in self.files))

    def examples(self, n: int = 5) -> str:
        rows = [f"{b.source}:{b.line} {b.reason} ({b.detail})" for b in self.first[:n]]
        files = [f"{f.key} {f.reason} ({f.detail})" for f in self.files[: max(0, n - len(rows))]]
        return "; ".join(rows + files)

    def summary(self, batch_id: str) -> dict[str, Any]:
        return {
            "batch_id": batch_id,
            "rows": self.row_count,
            "files": len(self.files),
            "by_reason": dict(self.row_reasons),
            "file_reasons": dict(Counter(f.reason for f in self.files)),
            "whole_files": [{"key": f.key, "reason": f.reason, "detail": f.detail, "bytes": f.size, "lines": f.lines,
                             "copy": f"files/{safe_relpath(f.key)}" if f.copied else None}
                            for f in self.files],
        }

    def write(self, uri: str, batch_id: str) -> None:
        """Create-only writes: a retry of the same batch writes the same content."""
        rows_uri = storage.join(uri, "rows.jsonl")
        if self._spool is not None:
            self.close()
            snapshots.create_file(rows_uri, self._spool_path)
        else:
            snapshots.create(rows_uri, b"".join(self._memory))
        for f in self.files:
            target = storage.join(uri, "files", safe_relpath(f.key))
            if f.data is not None:
                snapshots.create(target, f.data)
            elif f.copy_path is not None:
                snapshots.create_file(target, f.copy_path)
        snapshots.create(storage.join(uri, "summary.json"), snapshots.json_bytes(self.summary(batch_id)))
