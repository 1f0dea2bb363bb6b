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
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from tasks.data.validation import MALFORMED, UNDECODABLE, RawRow, printable
from tasks.matching import FORMATS, GZIP_SUFFIX, file_format  # noqa: F401  (FORMATS, file_format: readers.*)

# A landed .gz is decompressed as a stream; past this size it is quarantined instead (a gzip bomb). The small-file
# helpers (gunzip, read_rows: the golden set) hold the content in memory and keep the 1 GiB bound.
MAX_DECOMPRESSED_BYTES = 1 << 30
MAX_STREAM_BYTES = 1 << 36

_CSV_FIELD_LIMIT = 1 << 24


class Unparseable(ValueError):
    """A whole file that cannot be parsed; it is quarantined whole."""


# Only UTF-8 is read; the details say what the file more likely is (a spreadsheet's "Unicode text" export is UTF-16).
NOT_UTF8 = "bytes that are not valid UTF-8 (saved as latin-1/cp1252? files must be UTF-8)"
_UTF_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
             (b"\xfe\xff", "UTF-16"))


def binary_detail(head: bytes) -> str:
    """Why text with NUL bytes is refused, naming a UTF-16/32 byte order mark when the file starts with one."""
    for bom, name in _UTF_BOMS:
        if head.startswith(bom):
            return f"{name} text (byte order mark {bom.hex(' ')}); only UTF-8 is read: save the file as UTF-8"
    return "binary content (NUL bytes): not a UTF-8 text file (UTF-16 without a byte order mark, or not text)"


def csv_error(line: int, exc: Exception) -> str:
    detail = f"CSV error near line {line}: {exc}"
    if "field larger than field limit" in str(exc):
        detail += " (a field of more than 16 MiB: a quote that never closes, or the wrong delimiter or format?)"
    return detail


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
        raise Unparseable(binary_detail(data))
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
        header, t_idx, l_idx = _columns(next(reader, None), text_col, label_col)
        return _rows_of(reader, 0, delimiter, len(header), t_idx, l_idx)
    except csv.Error as exc:
        raise Unparseable(csv_error(reader.line_num, exc)) from None


def _columns(header: list[str] | None, text_col: str, label_col: str) -> tuple[list[str], int, int]:
    """The header line's fields, and where the text and label columns are; Unparseable when it has not both."""
    if header is None:
        raise Unparseable("no header line")
    header = [h.strip() for h in header]
    try:
        t_idx, l_idx = column_positions(header, text_col, label_col, "header (the first line)")
    except Unparseable as exc:
        others = [d for d in (",", ";", "\t", "|") if len(header) == 1 and d in header[0]]
        if others:  # one field holding another separator: the file's delimiter is not the pipeline's
            raise Unparseable(f"{exc}; the line is one field holding {others[0]!r}: is the file's delimiter the "
                              f"pipeline's (data.csv_delimiter, data.format)?") from None
        raise
    return header, t_idx, l_idx


def _loose(name: Any) -> str:
    return name.strip().casefold() if isinstance(name, str) else ""


def column_positions(names: list[str], text_col: str, label_col: str, what: str = "columns") -> tuple[int, int]:
    """Where the text and label columns are among a file's column names: the name exactly, else the one name that
    equals it but for case and surrounding whitespace (``Text`` for ``text``). Unparseable when a column is
    missing, named twice, or matched loosely by two names (the file is then ambiguous, not guessed at)."""
    found, missing = [], []
    for wanted in (text_col, label_col):
        exact = [i for i, n in enumerate(names) if n == wanted]
        hits = exact or [i for i, n in enumerate(names) if _loose(n) == _loose(wanted)]
        if len(hits) > 1:
            raise Unparseable(f"{what} {printable(names[:10])} name column {wanted!r} more than once "
                              f"({printable([names[i] for i in hits])}); which one is meant is not guessed")
        if not hits:
            missing.append(wanted)
        else:
            found.append(hits[0])
    if missing:
        raise Unparseable(f"{what} {printable(names[:10])} lack(s) column(s) {missing}")
    return found[0], found[1]


def json_field(obj: dict, name: str) -> tuple[bool, Any]:
    """(present, value) of a JSON object's field: the key exactly, else the one key that equals it but for case
    and surrounding whitespace (as column_positions); two such keys are not guessed between (absent)."""
    if name in obj:
        return True, obj[name]
    hits = [k for k in obj if _loose(k) == _loose(name)]
    return (True, obj[hits[0]]) if len(hits) == 1 else (False, None)


def _rows_of(reader: Any, line_offset: int, delimiter: str, n_fields: int, t_idx: int, l_idx: int) -> list[RawRow]:
    """The rows of a csv.reader positioned after the header: a wrong field count or undecodable bytes ride on the
    row as its problem (shared by the whole-file reader and the chunked reader's Python path)."""
    rows: list[RawRow] = []
    for fields in reader:
        line = line_offset + reader.line_num
        if not fields or fields == [""]:
            continue  # blank line
        raw = printable(delimiter.join(fields))
        if len(fields) != n_fields:
            rows.append(RawRow(line, None, None, MALFORMED, f"expected {n_fields} fields, got {len(fields)}", raw))
            continue
        row = RawRow(line, fields[t_idx], fields[l_idx], raw=raw)
        if _undecodable(fields[t_idx]) or _undecodable(fields[l_idx]):
            row.problem, row.detail = UNDECODABLE, NOT_UTF8
        rows.append(row)
    return rows


def read_jsonl(data: bytes, text_col: str, label_col: str) -> list[RawRow]:
    rows: list[RawRow] = []
    # Lines end at "\n" only: str.splitlines would also split at U+2028, U+0085 and others, which JSON strings may
    # hold unescaped.
    for line_no, line in enumerate(_decode(data).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if _undecodable(line):
            rows.append(RawRow(line_no, None, None, UNDECODABLE, NOT_UTF8, printable(line)))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append(RawRow(line_no, None, None, MALFORMED, f"invalid JSON: {exc.msg}", line[:500]))
            continue
        if not isinstance(obj, dict):
            rows.append(RawRow(line_no, None, None, MALFORMED, "not a JSON object", line[:500]))
            continue
        has_text, text = json_field(obj, text_col)
        if not has_text:
            rows.append(RawRow(line_no, None, None, MALFORMED, f"no field {text_col!r}", line[:500]))
            continue
        rows.append(RawRow(line_no, text, json_field(obj, label_col)[1], raw=line[:500]))
    return rows


def utf8_strings(column: Any) -> Any:
    """A Parquet column as plain values: dictionaries decoded, large strings as strings, and bytes columns (a
    string column written without its UTF8 annotation, as older Hive/Impala/Spark jobs do) as strings when every
    value is valid UTF-8 (else left as bytes, decoded row by row: see _text_of)."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        try:
            column = column.cast(pa.string())
        except pa.ArrowInvalid:
            pass
    return column


def _text_of(value: Any) -> Any:
    """A bytes value of a column that is not all UTF-8: as text whose bad bytes are lone surrogates, so only its
    own row is undecodable_bytes."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def read_parquet(data: bytes, text_col: str, label_col: str) -> list[RawRow]:
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise Unparseable(f"not a readable Parquet file: {exc}") from None
    t_idx, l_idx = column_positions(table.column_names, text_col, label_col)
    texts = [_text_of(v) for v in utf8_strings(table.column(t_idx).combine_chunks()).to_pylist()]
    labels = [_text_of(v) for v in utf8_strings(table.column(l_idx).combine_chunks()).to_pylist()]
    rows = [RawRow(i + 1, t, l, raw={"text": t, "label": l}) for i, (t, l) in enumerate(zip(texts, labels))]
    for row in rows:
        if isinstance(row.text, str) and _undecodable(row.text):  # a bytes value that was not UTF-8
            row.text, row.label, row.problem, row.detail = None, None, UNDECODABLE, NOT_UTF8
            row.raw = printable(row.raw)
    return rows


def read_rows(data: bytes, fmt: str, text_col: str, label_col: str, *, tsv_quoting: str = "none",
              csv_delimiter: str = ",") -> list[RawRow]:
    """Rows of one file's (already decompressed) bytes in format ``fmt``; Unparseable if the file is bad whole."""
    if fmt in ("csv", "tsv", "jsonl") and cr_lines(data):
        data = data.replace(b"\r", b"\n")  # as LineEnds does for a landed file
    return by_format(fmt, lambda: read_delimited(data, fmt, text_col, label_col, tsv_quoting, csv_delimiter),
                     lambda: read_jsonl(data, text_col, label_col), lambda: read_parquet(data, text_col, label_col))


def by_format(fmt: str, delimited: Any, jsonl: Any, parquet: Any) -> Any:
    """Call the reader for ``fmt`` (one dispatch for the whole-file and the streaming readers)."""
    reader = {"csv": delimited, "tsv": delimited, "jsonl": jsonl, "parquet": parquet}.get(fmt)
    if reader is None:
        raise Unparseable(f"unsupported format {fmt!r}")
    return reader()


# ====================================================================== streaming, in chunks (the ingest stage)
#
# A landed file is read piece by piece (PIECE_BYTES, cut at line ends), so memory does not grow with the file.
# Each piece is parsed by pyarrow when its clean common case applies, and by the Python readers above otherwise
# (a ragged row, bytes that are not UTF-8, quotes, a bare CR, blank JSONL lines ...), so every row-level result
# is the same as the Python path's. A piece comes out as a Chunk: the parsed rows as arrow arrays plus the rows
# that already have a parse problem.

PIECE_BYTES = 4 << 20
PARQUET_BATCH_ROWS = 65536
_BOM = b"\xef\xbb\xbf"


@dataclass
class Chunk:
    """Rows of one piece of a file: ``texts`` (string array; null = no text) and raw ``labels`` (an arrow array
    or a list), their physical ``lines``, a ``raw(i)`` for the quarantine, and the rows that failed to parse."""

    texts: Any
    labels: Any
    lines: Any  # numpy int64
    raw: Any  # callable: row index -> printable raw row
    problems: list[RawRow]

    def __len__(self) -> int:
        return len(self.lines) + len(self.problems)


class Content:
    """A landed file's (decompressed) byte stream: read(n) that maps gzip errors and a gzip bomb to Unparseable."""

    def __init__(self, fh: Any, gz: bool, limit: int = MAX_STREAM_BYTES) -> None:
        self._fh = gzip.GzipFile(fileobj=fh, mode="rb") if gz else fh
        self._limit, self._seen = limit, 0

    def read(self, n: int | None = None) -> bytes:
        try:
            data = self._fh.read(n or PIECE_BYTES)
        except (OSError, EOFError, zlib.error) as exc:
            raise Unparseable(f"not a readable gzip file: {exc}") from None
        self._seen += len(data)
        if self._seen > self._limit:
            raise Unparseable(f"decompresses to more than {self._limit} bytes")
        return data


class LineEnds:
    """A text stream whose lines end in a bare CR (classic Mac, "CSV (Macintosh)" exports) read as LF lines; any
    other stream as it is. Decided on the first line end seen: no LF before it and a CR = CR lines. (A CR inside a
    quoted field becomes an LF; normalization makes both one space.)"""

    def __init__(self, content: Content) -> None:
        self._content, self._cr_lines = content, None

    def read(self, n: int | None = None) -> bytes:
        data = self._content.read(n)
        if self._cr_lines is None and data:
            self._cr_lines = cr_lines(data)
        return data.replace(b"\r", b"\n") if self._cr_lines else data


def cr_lines(data: bytes) -> bool | None:
    """Whether text's first line end is a bare CR (None: no line end in ``data`` yet)."""
    lf, cr = data.find(b"\n"), data.find(b"\r")
    if lf < 0 and cr < 0:
        return None
    return cr >= 0 and (lf < 0 or cr < lf - 1)


def line_stats(content: "Content | LineEnds") -> int:
    """Lines of the rest of a text stream (the last need not end in a newline); 0 for binary content."""
    lines, last, binary = 0, b"", False
    while block := content.read():
        binary = binary or b"\x00" in block
        lines += block.count(b"\n")
        last = block[-1:]
    return 0 if binary or (not lines and not last) else lines + (0 if last == b"\n" else 1)


def _lines_in(piece: bytes) -> int:
    """Physical lines as csv/StringIO(newline="") count them: \\n, \\r\\n and a bare \\r each end one."""
    if b"\r" not in piece:
        return piece.count(b"\n")
    return piece.count(b"\n") + piece.count(b"\r") - piece.count(b"\r\n")


def _bare_cr(piece: bytes) -> bool:
    return b"\r" in piece and piece.count(b"\r") != piece.count(b"\r\n")


class _RecordEnds:
    """The record ends (newlines outside quotes, or all newlines) of a growing buffer, scanned once per byte: a
    long quoted field or an unclosed quote does not make the buffer be rescanned at every read."""

    def __init__(self, quoted: bool) -> None:
        self.quoted = quoted
        self.reset()

    def reset(self) -> None:
        self.scanned, self.quotes, self.first, self.last = 0, 0, 0, 0  # first/last: offset after a record end

    def scan(self, buf: bytes) -> None:
        if not self.quoted or buf.find(b'"', self.scanned) < 0:
            if not (self.quotes % 2):  # outside quotes, every newline ends a record
                first, last = buf.find(b"\n", self.scanned), buf.rfind(b"\n", self.scanned)
                if last >= 0:
                    self.first, self.last = self.first or first + 1, last + 1
        else:
            arr = np.frombuffer(buf, dtype=np.uint8, offset=self.scanned)
            newlines = np.flatnonzero(arr == 10)
            quotes = np.flatnonzero(arr == 34)
            ends = newlines[(self.quotes + np.searchsorted(quotes, newlines)) % 2 == 0] + self.scanned
            if len(ends):
                self.first, self.last = self.first or int(ends[0]) + 1, int(ends[-1]) + 1
            self.quotes += len(quotes)
        self.scanned = len(buf)


def pieces(content: Content, quoted: bool, first_record_alone: bool = False):
    """(piece bytes, its first physical line), cut at record ends (newlines outside quotes), about PIECE_BYTES
    each; with ``first_record_alone`` the first piece is just the first record (the header). A UTF-8 BOM is
    dropped; NUL bytes make the file Unparseable."""
    buf, line, first, eof, started = b"", 1, first_record_alone, False, False
    ends = _RecordEnds(quoted)
    while not eof:
        block = content.read()
        if not block:
            eof = True
        else:
            head = b""
            if not started:
                started, head = True, block[:4]
                block = block[len(_BOM):] if block.startswith(_BOM) else block
            if b"\x00" in block:
                raise Unparseable(binary_detail(head))
            buf += block
            ends.scan(buf)
        while buf:
            end = (ends.first if first else ends.last) if first or len(buf) >= PIECE_BYTES or eof else 0
            if not end:
                if not eof:
                    break  # read on: no record end yet
                end = len(buf)
            piece, buf = buf[:end], buf[end:]
            yield piece, line
            line += _lines_in(piece)
            first = False
            ends.reset()  # rescan the (short) rest once
            if buf:
                ends.scan(buf)


# ---------------------------------------------------------------------- delimited (CSV, TSV)


def _python_delimited(piece: bytes, first_line: int, delimiter: str, quoted: bool, header: list[str],
                      t_idx: int, l_idx: int) -> list[RawRow]:
    """The Python reader on one piece (it starts at a record boundary, so the result is the whole-file one)."""
    reader = csv.reader(io.StringIO(piece.decode("utf-8", errors="surrogateescape"), newline=""),
                        delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE, strict=quoted)
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        return _rows_of(reader, first_line - 1, delimiter, len(header), t_idx, l_idx)
    except csv.Error as exc:
        raise Unparseable(csv_error(first_line - 1 + reader.line_num, exc)) from None


def _line_bounds(piece: bytes, first_line: int):
    """Start, end (without CR/LF) and physical line number of every non-empty line of a piece with \\n endings."""
    arr = np.frombuffer(piece, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(piece)]))
    if piece.endswith(b"\n"):
        starts, ends = starts[:-1], ends[:-1]
    cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
    ends = ends - cr
    numbers = first_line + np.arange(len(starts), dtype=np.int64)
    keep = ends > starts
    return starts[keep], ends[keep], numbers[keep]


def _arrow_delimited(piece: bytes, first_line: int, delimiter: str, n_fields: int, t_idx: int, l_idx: int):
    """pyarrow on a piece without quotes or bare CRs; None when the Python reader must decide (a ragged row,
    bytes that are not UTF-8)."""
    names = [f"c{i}" for i in range(n_fields)]
    try:
        table = pacsv.read_csv(
            io.BytesIO(piece),
            read_options=pacsv.ReadOptions(column_names=names, block_size=PIECE_BYTES + 1024),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False, double_quote=False,
                                             escape_char=False, newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(include_columns=[names[t_idx], names[l_idx]],
                                                 column_types={names[t_idx]: pa.string(), names[l_idx]: pa.string()},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    starts, ends, numbers = _line_bounds(piece, first_line)
    if table.num_rows != len(numbers):
        return None

    def raw(i: int) -> str:
        return piece[starts[i]:ends[i]].decode("utf-8")

    return Chunk(table.column(names[t_idx]).combine_chunks(), table.column(names[l_idx]).combine_chunks(),
                 numbers, raw, [])


def iter_delimited(content: Content, fmt: str, text_col: str, label_col: str, tsv_quoting: str = "none",
                   csv_delimiter: str = ","):
    """Chunks of a CSV/TSV stream; Unparseable when the file is bad whole (header, strict quoting, NUL)."""
    delimiter = "\t" if fmt == "tsv" else csv_delimiter
    quoted = fmt == "csv" or tsv_quoting == "rfc4180"
    stream = pieces(LineEnds(content), quoted, first_record_alone=True)
    first = next(stream, None)
    if first is None:
        raise Unparseable("no header line")
    reader = csv.reader(io.StringIO(first[0].decode("utf-8", errors="surrogateescape"), newline=""),
                        delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE, strict=quoted)
    try:
        header, t_idx, l_idx = _columns(next(reader, None), text_col, label_col)
        # Rows in the header's piece: lines that end in a bare CR before the first LF (a mixed file).
        rest = _rows_of(reader, 0, delimiter, len(header), t_idx, l_idx)
    except csv.Error as exc:
        raise Unparseable(csv_error(reader.line_num, exc)) from None
    if rest:
        yield chunk_of_rows(rest)
    for piece, line in stream:
        chunk = None
        if (not quoted or b'"' not in piece) and not _bare_cr(piece):
            chunk = _arrow_delimited(piece, line, delimiter, len(header), t_idx, l_idx)
        yield chunk if chunk is not None else chunk_of_rows(
            _python_delimited(piece, line, delimiter, quoted, header, t_idx, l_idx))


# ---------------------------------------------------------------------- JSONL

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_JSON_LABEL_TYPES = ("is_null", "is_boolean", "is_integer", "is_floating", "is_string")


def _arrow_jsonl(piece: bytes, first_line: int, text_col: str, label_col: str):
    """pyarrow on a piece whose every line is a JSON object with a string text; None when the Python reader
    must decide (blank lines, invalid JSON, a missing or non-string text, escaped surrogates ...)."""
    if _SURROGATE_ESCAPE.search(piece):
        return None
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return None
    starts, ends, numbers = _line_bounds(piece, first_line)
    arr = np.frombuffer(piece, dtype=np.uint8)
    all_lines = -1 if _bare_cr(piece) else _lines_in(piece)
    if all_lines != len(numbers) or not len(numbers) or np.any(arr[starts] != ord("{")):
        return None
    try:
        table = pajson.read_json(io.BytesIO(piece), read_options=pajson.ReadOptions(block_size=PIECE_BYTES + 1024),
                                 parse_options=pajson.ParseOptions(explicit_schema=pa.schema([(text_col, pa.string())]),
                                                                   unexpected_field_behavior="infer"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if any(n not in (text_col, label_col) and _loose(n) in (_loose(text_col), _loose(label_col))
           for n in table.column_names):
        return None  # a key that differs in case or spaces: the Python reader decides per object (json_field)
    texts = table.column(text_col).combine_chunks()
    if table.num_rows != len(numbers) or texts.null_count:
        return None
    if label_col in table.column_names:
        labels = table.column(label_col).combine_chunks()
        if not any(getattr(pa.types, t)(labels.type) for t in _JSON_LABEL_TYPES):
            return None
    else:
        labels = pa.nulls(len(numbers))

    def raw(i: int) -> str:
        return piece[starts[i]:ends[i]].decode("utf-8")[:500]

    return Chunk(texts, labels, numbers, raw, [])


def iter_jsonl(content: Content, text_col: str, label_col: str):
    for piece, line in pieces(LineEnds(content), quoted=False):
        chunk = _arrow_jsonl(piece, line, text_col, label_col)
        if chunk is None:
            rows = read_jsonl(piece, text_col, label_col)
            for row in rows:
                row.line += line - 1
            chunk = chunk_of_rows(rows)
        yield chunk


# ---------------------------------------------------------------------- Parquet


def iter_parquet(fh: Any, text_col: str, label_col: str):
    """Chunks of a (seekable) Parquet file, a batch of rows at a time."""
    try:
        pf = pq.ParquetFile(fh, pre_buffer=False)  # pre-buffering would hold every row group read so far
        names = pf.schema_arrow.names
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise Unparseable(f"not a readable Parquet file: {exc}") from None
    t_idx, l_idx = column_positions(names, text_col, label_col)
    offset = 0
    batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[names[t_idx], names[l_idx]])
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:
            raise Unparseable(f"not a readable Parquet file: {exc}") from None
        if batch is None:
            return
        texts, labels = utf8_strings(batch.column(0)), utf8_strings(batch.column(1))
        lines = np.arange(offset + 1, offset + 1 + batch.num_rows, dtype=np.int64)
        if pa.types.is_string(texts.type):
            def raw(i: int, texts=texts, labels=labels) -> dict:
                return {"text": texts[i].as_py(), "label": labels[i].as_py()}
            yield Chunk(texts, labels, lines, raw, [])
        else:  # not strings: each row is malformed, as the Python path says it
            tl, ll = [_text_of(v) for v in texts.to_pylist()], [_text_of(v) for v in labels.to_pylist()]
            yield chunk_of_rows([RawRow(int(n), t, l, raw={"text": t, "label": l}) for n, t, l in zip(lines, tl, ll)])
        offset += batch.num_rows


# ---------------------------------------------------------------------- rows -> chunk


def chunk_of_rows(rows: list[RawRow]) -> Chunk:
    """A Chunk from Python rows: rows with a problem, a non-string text or stray surrogates go to ``problems``."""
    ok: list[RawRow] = []
    problems: list[RawRow] = []
    for row in rows:
        if row.problem:
            problems.append(row)
        elif row.text is not None and not isinstance(row.text, str):
            problems.append(RawRow(row.line, None, None, MALFORMED,
                                   f"text is {type(row.text).__name__}, not a string", row.raw))
        elif row.text is not None and _undecodable(row.text):
            problems.append(RawRow(row.line, None, None, UNDECODABLE, NOT_UTF8,
                                   printable(row.raw)))
        else:
            ok.append(row)
    raws = [r.raw for r in ok]
    return Chunk(pa.array([r.text for r in ok], pa.string()), [r.label for r in ok],
                 np.array([r.line for r in ok], dtype=np.int64), raws.__getitem__, problems)


def iter_chunks(content: Content, fh: Any, fmt: str, text_col: str, label_col: str, *, tsv_quoting: str = "none",
                csv_delimiter: str = ","):
    """Chunks of one landed file in format ``fmt`` (``fh``: the file, seekable, for Parquet without gzip)."""
    return by_format(fmt, lambda: iter_delimited(content, fmt, text_col, label_col, tsv_quoting, csv_delimiter),
                     lambda: iter_jsonl(content, text_col, label_col), lambda: iter_parquet(fh, text_col, label_col))
