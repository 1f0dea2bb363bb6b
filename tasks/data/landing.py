"""The landing zone: list what landed under ``landing.uri`` and read it, without being tricked.

A local (``file://``) landing folder is walked here with ``os.scandir``/``os.lstat`` on bytes paths rather than
through ``storage.list_objects``, because the landing folder is written by others and must not be trusted:

* a symlink (to a file or a folder, inside or outside the landing folder) is never followed and never read; it is
  reported as a file with reason ``symlink`` (and its target is never copied anywhere);
* a FIFO, socket or device is reported (``not_a_regular_file``), never opened;
* a regular file is opened with ``O_NOFOLLOW | O_NONBLOCK``, checked to be a regular file with ``fstat`` and to
  resolve inside the landing folder, so a path swapped for a symlink between listing and reading is refused too;
* any file name is handled: a name's bytes are turned into an escaped, readable key (:func:`escape_name`:
  bytes that are not UTF-8 as ``\\xNN``, control characters as ``\\n``, ``\\x01``..., a backslash as ``\\\\``),
  which is what records, quarantine entries and logs name. The escaping is one-to-one, so two names never share
  a key.

S3 landing goes through ``tasks.storage`` (S3 has no symlinks; its keys are escaped the same way).

Entries that are not data are skipped quietly (:func:`skipped`: hidden names, ``_SUCCESS`` and other markers,
uploads in progress, editor and OS files); the listing logs how many.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat as stat_mod
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from tasks import storage
from tasks.data.validation import NOT_REGULAR, OUTSIDE_LANDING, SYMLINK, UNREADABLE
from tasks.manifests import LandingFileRecord

log = logging.getLogger("tasks.data.landing")

MAX_DEPTH = 64  # folders nested deeper than this are not walked (and logged)
MAX_COMPONENT_BYTES = 200  # quarantine copies: a longer path component is shortened (local files allow 255)


@dataclass
class LandingFile:
    """One landing entry: its escaped key (relative to the landing URI), identity and where to read it."""

    key: str
    etag: str
    size: int  # bytes, as landed (compressed size for .gz)
    mtime: float
    location: str | bytes  # an s3:// URI, or the local path as bytes
    problem: str | None = None  # a file reason (SYMLINK, NOT_REGULAR, ...) when the entry is not to be read
    detail: str = ""

    @property
    def identity(self) -> tuple[str, str, int]:
        return (self.key, self.etag, self.size)

    def record(self) -> dict:
        """What a batch record keeps of the file (the identity, and mtime for people)."""
        return {"key": self.key, "etag": self.etag, "size": self.size, "mtime": self.mtime}


def escape_name(name: str | bytes) -> str:
    """A readable, one-to-one escaping of a file name or key: printable characters as they are (any script,
    emoji), a backslash as ``\\\\``, bytes that are not UTF-8 as ``\\xNN`` (always 80-ff), other unprintable characters
    as ``\\n``, ``\\t``, ``\\x01`` (below 0x80) or ``\\u202e`` (format characters, line separators, C1 controls)."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape")
    out = []
    for ch in name:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:  # \n, \t, \r, \x01 ... (an escaped byte above is always \x80 or more)
            out.append(repr(ch)[1:-1])
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


def safe_relpath(key: str) -> str:
    """A relative path for a copy of the file under quarantine: no ``.``/``..`` components, none too long, and no
    ``#`` or ``?`` (a URI parser reads them as a fragment or query: ``x#1.xml`` and ``x#2.xml`` would both be
    written to ``x``)."""
    parts = []
    for part in key.replace("#", "\\x23").replace("?", "\\x3f").split("/"):
        if part in ("", ".", ".."):
            part = part.replace(".", "\\x2e") or "\\x2f"
        encoded = part.encode("utf-8")
        if len(encoded) > MAX_COMPONENT_BYTES:
            digest = hashlib.sha256(encoded).hexdigest()[:16]
            part = encoded[: MAX_COMPONENT_BYTES - 20].decode("utf-8", "ignore") + "~" + digest
        parts.append(part)
    return "/".join(parts)


# Entries that are not data, skipped quietly (not read, not recorded, so a renamed upload is read under its final
# name): hidden files and folders (.DS_Store, ._x, .~lock.x#), Hadoop/Spark markers and work folders (_SUCCESS,
# _committed_*, _temporary/, as Hadoop's hidden-file filter), Office owner files (~$x.xlsx), editor backups and
# autosaves (x~, #x#), uploads and downloads still in progress, and OS thumbnails.
_SKIP_PREFIXES = (".", "_", "~$")
_SKIP_SUFFIXES = ("~", ".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".filepart", "._copying_",
                  ".swp", ".inprogress")
_SKIP_NAMES = ("thumbs.db", "desktop.ini", "icon\r")


def skipped(name: str, is_file: bool = True) -> bool:
    """Whether a landing entry's name marks it as not data (see above); folders only by their prefix."""
    if name.startswith(_SKIP_PREFIXES):
        return True
    if not is_file:
        return False
    lower = name.lower()
    return lower.endswith(_SKIP_SUFFIXES) or lower in _SKIP_NAMES or (len(name) > 1 and name[0] == name[-1] == "#")


# ---------------------------------------------------------------- listing


def list_landing(landing_uri: str, known: dict[tuple[str, int, float], str] | None = None) -> list[LandingFile]:
    """Every entry under the landing URI that ingest should look at (regular files and the entries it reports),
    sorted by key. ``known`` (local folders): ETags by (key, size, mtime) of files already recorded, which are
    not read again (``quick_check``)."""
    skips: list[str] = []
    found = _list_s3(landing_uri, skips) if storage.is_s3(landing_uri) else _list_local(landing_uri, skips, known or {})
    if skips:
        log.info("skipped %d landing entr%s that are not data (hidden, markers, uploads in progress): %s%s",
                 len(skips), "y" if len(skips) == 1 else "ies", ", ".join(skips[:10]), " ..." if len(skips) > 10 else "")
    return found


def _list_s3(landing_uri: str, skips: list[str]) -> list[LandingFile]:
    prefix = landing_uri.rstrip("/") + "/"
    out = []
    for obj in storage.list_objects(prefix):
        raw_key = obj.uri[len(prefix):]
        if raw_key.endswith("/"):  # a "folder" marker some tools create
            continue
        parts = raw_key.split("/")
        if any(skipped(p, False) for p in parts[:-1]) or skipped(parts[-1], True):
            skips.append(escape_name(raw_key))
            continue
        out.append(LandingFile(escape_name(raw_key), obj.etag, obj.size, obj.mtime, obj.uri))
    return sorted(out, key=lambda f: f.key)


def _list_local(landing_uri: str, skips: list[str], known: dict[tuple[str, int, float], str]) -> list[LandingFile]:
    root = os.fsencode(str(storage.local_path(landing_uri)))
    if not os.path.isdir(root):
        return []
    out: list[LandingFile] = []
    _walk(root, b"", out, depth=0, skips=skips, known=known)
    return sorted(out, key=lambda f: f.key)


def _walk(root: bytes, rel: bytes, out: list[LandingFile], depth: int, skips: list[str],
          known: dict[tuple[str, int, float], str]) -> None:
    folder = os.path.join(root, rel) if rel else root
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        key = escape_name(rel) or "."
        out.append(LandingFile(key, "unreadable", 0, 0.0, folder, UNREADABLE,
                               f"cannot list the folder: {exc.strerror}"))
        return
    for entry in entries:
        name = os.fsdecode(entry.name)
        rel_path = os.path.join(rel, entry.name) if rel else entry.name
        key = escape_name(rel_path)
        try:
            st = entry.stat(follow_symlinks=False)  # lstat: the entry itself, never what a link points at
        except OSError:  # gone since the listing
            continue
        if stat_mod.S_ISDIR(st.st_mode):
            if skipped(name, False):
                skips.append(key + "/")
                continue
            if depth >= MAX_DEPTH:
                log.warning("landing folder %s is nested deeper than %d levels; not walked", key, MAX_DEPTH)
                continue
            _walk(root, rel_path, out, depth + 1, skips, known)
            continue
        if skipped(name, True):
            skips.append(key)
            continue
        if stat_mod.S_ISLNK(st.st_mode):
            out.append(_symlink(root, entry.path, key, st))
        elif not stat_mod.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            out.append(LandingFile(key, f"{kind}-{st.st_ino}", 0, st.st_mtime, entry.path, NOT_REGULAR,
                                   f"a {kind}, not a regular file; not opened"))
        elif (etag := known.get((key, st.st_size, st.st_mtime))) is not None:
            out.append(LandingFile(key, etag, st.st_size, st.st_mtime, entry.path))  # recorded: not read again
        else:
            out.append(_regular(root, entry.path, key, st))


def _kind(mode: int) -> str:
    for test, kind in ((stat_mod.S_ISFIFO, "FIFO"), (stat_mod.S_ISSOCK, "socket"),
                       (stat_mod.S_ISCHR, "character device"), (stat_mod.S_ISBLK, "block device")):
        if test(mode):
            return kind
    return "special file"


def _symlink(root: bytes, path: bytes, key: str, st: os.stat_result) -> LandingFile:
    try:
        target = os.readlink(path)
    except OSError:
        target = b""
    # The link's own identity (its target path, hashed): the report names where it points relative to the
    # landing folder, never the target path itself or anything read through it.
    etag = "symlink-" + hashlib.md5(target).hexdigest()
    inside = _inside(root, os.path.realpath(path))
    where = "inside" if inside else "outside"
    return LandingFile(key, etag, st.st_size, st.st_mtime, path, SYMLINK,
                       f"symlink: not followed (it points {where} the landing folder)")


def _regular(root: bytes, path: bytes, key: str, st: os.stat_result) -> LandingFile:
    try:
        with open_local(root, path) as fh:  # same as S3's ETag for a single-part upload; read in blocks
            etag = hashlib.file_digest(fh, "md5").hexdigest()
    except LandingRefused as exc:
        return LandingFile(key, exc.reason, st.st_size, st.st_mtime, path, exc.reason, exc.detail)
    except OSError as exc:
        return LandingFile(key, "unreadable", st.st_size, st.st_mtime, path, UNREADABLE,
                           f"cannot read: {exc.strerror}")
    return LandingFile(key, etag, st.st_size, st.st_mtime, path)


def _inside(root: bytes, resolved: bytes) -> bool:
    real_root = os.path.realpath(root)
    return resolved == real_root or resolved.startswith(real_root.rstrip(b"/") + b"/")


# ---------------------------------------------------------------- reading


class LandingRefused(Exception):
    """A landing entry that must not be read (it became a symlink, a special file, or resolves outside)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@contextlib.contextmanager
def open_local(root: bytes, path: bytes) -> Iterator[BinaryIO]:
    """A regular file under ``root``, opened for reading: not through a symlink (last component: O_NOFOLLOW;
    parents: the resolved path must stay under the resolved root), and only if it is a regular file (fstat)."""
    if not _inside(root, os.path.realpath(os.path.dirname(path))):
        raise LandingRefused(OUTSIDE_LANDING, "its folder resolves outside the landing folder; not read")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", 40) or os.path.islink(path):
            raise LandingRefused(SYMLINK, "symlink: not followed (it became a link after the listing)") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        if not stat_mod.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise LandingRefused(NOT_REGULAR, "not a regular file; not read")
        yield fh


class LandingChanged(Exception):
    """A local landing file that changed between the listing and the end of its reading (still being written)."""


def check_unchanged(f: LandingFile, fh: BinaryIO) -> None:
    """Raise LandingChanged if a local file's size or mtime moved since it was listed, so rows of a file caught
    mid-write (a cut last line: a truncated text or label) are not ingested; S3 objects are replaced whole."""
    if not isinstance(f.location, bytes):
        return
    st = os.fstat(fh.fileno())
    if st.st_size != f.size or st.st_mtime != f.mtime:
        raise LandingChanged(f"changed while it was read ({f.size} -> {st.st_size} bytes): still being written? "
                             f"Not recorded; the next run reads it again (land files under a temporary name, e.g. "
                             f"x.tsv.tmp, and rename them when complete)")


def read_local(root: bytes, path: bytes) -> bytes:
    """The bytes of a regular file under ``root`` (see open_local)."""
    with open_local(root, path) as fh:
        return fh.read()


def read_file(landing_uri: str, f: LandingFile) -> bytes:
    """The bytes of a listed landing file (raises LandingRefused or OSError for a local file that changed)."""
    if isinstance(f.location, bytes):
        return read_local(os.fsencode(str(storage.local_path(landing_uri))), f.location)
    return storage.read_bytes(f.location)


@contextlib.contextmanager
def open_file(landing_uri: str, f: LandingFile, tmp_dir: str) -> Iterator[BinaryIO]:
    """A listed landing file opened for reading, seekable, without holding it in memory: a local file through
    open_local, an S3 object through a local temporary copy (raises as read_file does)."""
    if isinstance(f.location, bytes):
        with open_local(os.fsencode(str(storage.local_path(landing_uri))), f.location) as fh:
            yield fh
        return
    path = os.path.join(tmp_dir, "landed-object")
    storage.download_file(f.location, path)
    try:
        with open(path, "rb") as fh:
            yield fh
    finally:
        os.unlink(path)


_MD5 = re.compile(r"[0-9a-f]{32}")


def quick_check(processed: list[LandingFileRecord]) -> dict[tuple[str, int, float], str]:
    """The recorded ETag of each processed file by (key, size, mtime), so that a local landing folder is not read
    whole on every ingest (S3 lists ETags for free; a local file's MD5 means reading it). This is rsync's quick
    check: a file whose name, size and mtime are all unchanged is taken as unchanged. Content rewritten in place
    at the same size with its mtime set back would not be seen (docs/data.md). Only MD5 ETags of regular files
    count, and a (key, size, mtime) recorded with two ETags is read again."""
    seen: dict[tuple[str, int, float], str | None] = {}
    for f in processed:
        if f.mtime is None or not _MD5.fullmatch(f.etag):
            continue
        key = (f.key, f.size, float(f.mtime))
        seen[key] = f.etag if seen.get(key, f.etag) == f.etag else None
    return {key: etag for key, etag in seen.items() if etag is not None}


def new_files(landing_uri: str, processed: list[LandingFileRecord]) -> list[LandingFile]:
    """The landing entries whose identity (key + ETag + size) no committed batch holds; ``processed``: the batch
    records' file entries (``snapshots.processed_files``)."""
    done = {(f.key, f.etag, f.size) for f in processed}
    return [f for f in list_landing(landing_uri, quick_check(processed)) if f.identity not in done]
