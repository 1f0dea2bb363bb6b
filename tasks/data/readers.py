"""File formats -> rows: CSV, TSV, JSONL and Parquet, each optionally gzip-compressed (``.tsv.gz``).

A reader returns one :class:`RawRow` per data row, with the physical line it came from, or raises
:class:`Unparseable` when the whole file cannot be read (it is then quarantined whole). Row-level problems found
while parsing (a wrong field count, invalid JSON, bytes that are not UTF-8) ride on the row as ``problem`` so that
the valid rows of the same file still go on. The readers only parse; validation.py decides what a good row is.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import posixpath
import zlib
from dataclasses import dataclass
from typing import Any

from tasks.data.validation import MALFORMED, UNDECODABLE, printable

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
GZIP_SUFFIX = ".gz"
# A landed .gz is decompressed in memory; past this size it is quarantined instead (a gzip bomb, or a file that
# belongs in several smaller ones).
MAX_DECOMPRESSED_BYTES = 1 << 30

_CSV_FIELD_LIMIT = 1 << 24


class Unparseable(ValueError):
    """A whole file that cannot be parsed; it is quarantined whole."""


@dataclass
class RawRow:
    line: int  # 1-based physical line (CSV/TSV: header is line 1; JSONL: line; Parquet: row number)
    text: Any
    label: Any
    problem: str | None = None  # MALFORMED / UNDECODABLE, found while parsing
    detail: str = ""
    raw: Any = None


def file_format(key: str, setting: str = "auto") -> str | None:
    """The format of a landing key: the pipeline's ``data.format`` when it names one, else from the extension
    (``.gz`` is looked through); None if unsupported."""
    if setting != "auto":
        return setting
    name = key.lower()
    if name.endswith(GZIP_SUFFIX):
        name = name[: -len(GZIP_SUFFIX)]
    return FORMATS.get(posixpath.splitext(name)[1])


def is_gzip(key: str) -> bool:
    return key.lower().endswith(GZIP_SUFFIX)


def gunzip(data: bytes) -> bytes:
    """The decompressed content of a (possibly multi-member) gzip file, bounded by MAX_DECOMPRESSED_BYTES."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            out = fh.read(MAX_DECOMPRESSED_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise Unparseable(f"not a readable gzip file: {exc}") from None
    if len(out) > MAX_DECOMPRESSED_BYTES:
        raise Unparseable(f"decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes")
    return out


def _decode(data: bytes) -> str:
    if b"\x00" in data:
        raise Unparseable("binary content (NUL bytes); not a text file")
    # surrogateescape keeps undecodable bytes as lone surrogates, so only the rows that hold them are bad.
    return data.decode("utf-8-sig", errors="surrogateescape")


def _undecodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from surrogateescape = bytes that were not UTF-8
        return True
    return False


def read_delimited(data: bytes, fmt: str, text_col: str, label_col: str, tsv_quoting: str = "none",
                   csv_delimiter: str = ",") -> list[RawRow]:
    text = _decode(data)
    delimiter = "\t" if fmt == "tsv" else csv_delimiter
    # CSV follows RFC 4180; TSV by default has no quoting (SST-2 sentences hold bare quotes), or RFC 4180's with
    # data.tsv_quoting = rfc4180. Quoted dialects are read strictly: a quote that does not close, or text after a
    # closing quote, makes the file unparseable instead of silently swallowing the rows after it.
    quoted = fmt == "csv" or tsv_quoting == "rfc4180"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE, strict=quoted)
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        header = next(reader, None)
        if header is None:
            raise Unparseable("no header line")
        header = [h.strip() for h in header]
        missing = [c for c in (text_col, label_col) if c not in header]
        if missing:
            raise Unparseable(f"header {printable(header[:10])} lacks column(s) {missing}")
        t_idx, l_idx = header.index(text_col), header.index(label_col)
        rows: list[RawRow] = []
        for fields in reader:
            line = reader.line_num
            if not fields or fields == [""]:
                continue  # blank line
            raw = printable(delimiter.join(fields))
            if len(fields) != len(header):
                detail = f"expected {len(header)} fields, got {len(fields)}"
                rows.append(RawRow(line, None, None, MALFORMED, detail, raw))
                continue
            row = RawRow(line, fields[t_idx], fields[l_idx], raw=raw)
            if _undecodable(fields[t_idx]) or _undecodable(fields[l_idx]):
                row.problem, row.detail = UNDECODABLE, "bytes that are not valid UTF-8"
            rows.append(row)
        return rows
    except csv.Error as exc:
        raise Unparseable(f"CSV error near line {reader.line_num}: {exc}") from None


def read_jsonl(data: bytes, text_col: str, label_col: str) -> list[RawRow]:
    rows: list[RawRow] = []
    # Lines end at "\n" only: str.splitlines would also split at U+2028, U+0085 and others, which JSON strings may
    # hold unescaped.
    for line_no, line in enumerate(_decode(data).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if _undecodable(line):
            rows.append(RawRow(line_no, None, None, UNDECODABLE, "bytes that are not valid UTF-8", printable(line)))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append(RawRow(line_no, None, None, MALFORMED, f"invalid JSON: {exc.msg}", line[:500]))
            continue
        if not isinstance(obj, dict):
            rows.append(RawRow(line_no, None, None, MALFORMED, "not a JSON object", line[:500]))
            continue
        if text_col not in obj:
            rows.append(RawRow(line_no, None, None, MALFORMED, f"no field {text_col!r}", line[:500]))
            continue
        rows.append(RawRow(line_no, obj[text_col], obj.get(label_col), raw=line[:500]))
    return rows


def read_parquet(data: bytes, text_col: str, label_col: str) -> list[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise Unparseable(f"not a readable Parquet file: {exc}") from None
    missing = [c for c in (text_col, label_col) if c not in table.column_names]
    if missing:
        raise Unparseable(f"columns {table.column_names[:10]} lack {missing}")
    texts = table.column(text_col).to_pylist()
    labels = table.column(label_col).to_pylist()
    return [RawRow(i + 1, t, l, raw={"text": t, "label": l}) for i, (t, l) in enumerate(zip(texts, labels))]


def read_rows(data: bytes, fmt: str, text_col: str, label_col: str, *, tsv_quoting: str = "none",
              csv_delimiter: str = ",") -> list[RawRow]:
    """Rows of one file's (already decompressed) bytes in format ``fmt``; Unparseable if the file is bad whole."""
    if fmt in ("csv", "tsv"):
        return read_delimited(data, fmt, text_col, label_col, tsv_quoting, csv_delimiter)
    if fmt == "jsonl":
        return read_jsonl(data, text_col, label_col)
    if fmt == "parquet":
        return read_parquet(data, text_col, label_col)
    raise Unparseable(f"unsupported format {fmt!r}")
