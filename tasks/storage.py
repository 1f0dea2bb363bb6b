"""One small storage layer over two backends: S3 (AWS, MinIO, moto) and a local directory.

Every function takes a full URI, ``s3://bucket/key`` or ``file:///abs/path`` (a bare path is a local path),
so stages pass URIs around and never care which backend sits behind them.

Built on fsspec: s3fs for S3, fsspec's local filesystem (plus os/shutil where a local file needs a stat or an
atomic rename) for file:// URIs. Transfers stream in bounded parts (multipart uploads, ranged downloads,
server-side copies within S3, kernel copies locally): stat, copy, upload, download and sync never hold more
than a few parts (PART_SIZE) of an object in memory. Only read_bytes/write_bytes deal in whole objects.

S3 settings come from the standard AWS environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for MinIO or moto), which botocore reads by itself, plus
STORAGE_MAX_ATTEMPTS, STORAGE_CONNECT_TIMEOUT and STORAGE_READ_TIMEOUT. Addressing is path-style. In a pod
they come from a Kubernetes Secret; in local mode the stage factory derives them from the Airflow connection.

Writes are whole-object and atomic on both backends. Conditional writes (``if_none_match`` to create only,
``if_match`` to replace only a known version) raise PreconditionFailed when the condition does not hold; they
are how immutable artifacts stay immutable and how two runs cannot both move a pointer. On S3 they are
PutObject's If-None-Match / If-Match, sent through s3fs's own botocore client (``S3FileSystem.call_s3``):
s3fs's file API has create-only (``mode="create"``) but no If-Match, and one client keeps one set of
settings, retries and fork handling. boto3 itself is not used here (the Airflow amazon provider and the tests
use it; its pin follows the botocore that aiobotocore accepts).

A local file's ETag is ``inode-size-mtime_ns`` (hex): a stat, never a read. Local writes hold a lock file
(``.NAME.lock``) around check-and-replace, write a temporary file in the same directory, and os.replace it
into place; each write gets a new inode and an mtime strictly later than the version it replaces, so an ETag
never comes back for a later version (no ABA) and if_match is a correct compare-and-swap between processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat as stat_mod
import sys
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator


class StorageError(RuntimeError):
    pass


class NotFound(StorageError, FileNotFoundError):
    pass


class PreconditionFailed(StorageError):
    """A conditional write lost: the object exists (if_none_match) or changed (if_match)."""


class StorageUnavailable(StorageError, ConnectionError):
    """The object store could not be reached (a ConnectionError, so a stage exits as an infrastructure
    failure that Airflow retries)."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str
    mtime: float  # seconds since the epoch


# ---------------------------------------------------------------- URIs and hashes


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def normalize(uri: str) -> str:
    """Bare paths become absolute file:// URIs; s3:// and file:// pass through."""
    if is_s3(uri) or uri.startswith("file://"):
        return uri
    return "file://" + str(Path(uri).expanduser().resolve())


def local_path(uri: str) -> Path:
    if is_s3(uri):
        raise StorageError(f"not a local URI: {uri}")
    if uri.startswith("file://"):
        # Not urlparse: a path may hold '#' or '?', which a URL parser cuts off as fragment or query.
        return Path(uri[len("file://"):])
    return Path(uri).expanduser().resolve()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- S3 backend (s3fs)

PART_SIZE = 8 * 2**20  # multipart part / ranged-read size (the AWS CLI default)
PART_CONCURRENCY = 4  # parts in flight per transfer: memory stays near PART_SIZE * PART_CONCURRENCY
_MAX_PARTS = 10_000  # S3's limit on parts per upload

_s3_by_pid: dict[int, Any] = {}
_s3_lock = threading.Lock()


def _s3():
    """This process's S3FileSystem. One per process: an instance inherited through fork holds the parent's
    event loop and sockets, so a child builds its own (fsspec resets its loop in the child)."""
    pid = os.getpid()
    with _s3_lock:
        fs = _s3_by_pid.get(pid)
        if fs is None:
            import s3fs

            _s3_by_pid.clear()
            fs = s3fs.S3FileSystem(
                endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL") or None,
                config_kwargs={
                    "retries": {"max_attempts": int(os.environ.get("STORAGE_MAX_ATTEMPTS", "4")), "mode": "standard"},
                    "connect_timeout": float(os.environ.get("STORAGE_CONNECT_TIMEOUT", "5")),
                    "read_timeout": float(os.environ.get("STORAGE_READ_TIMEOUT", "60")),
                    "s3": {"addressing_style": "path"},
                },
                default_block_size=PART_SIZE,
                max_concurrency=PART_CONCURRENCY,
                use_listings_cache=False,  # other processes write the same prefixes
                skip_instance_cache=True,  # this cache, keyed by pid, is the only one
            )
            # botocore retries each request (STORAGE_MAX_ATTEMPTS); s3fs's own loop on top of it resumes a
            # download whose body broke off and retries timeouts: once more at most, not five times more.
            fs.retries = 2
            _s3_by_pid[pid] = fs
        return fs


def _after_fork_in_child() -> None:
    global _s3_lock
    _s3_lock = threading.Lock()  # a thread of the parent may have held it at fork time
    _s3_by_pid.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def reset_clients() -> None:
    """Forget cached S3 filesystems (tests change AWS_ENDPOINT_URL between servers)."""
    with _s3_lock:
        _s3_by_pid.clear()
    if "s3fs" in sys.modules:
        sys.modules["s3fs"].S3FileSystem.clear_instance_cache()


def _split_s3(uri: str) -> tuple[str, str]:
    # Not urlparse: S3 keys may hold '#' or '?'.
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key.lstrip("/")


def _s3_path(uri: str) -> str:
    return uri[len("s3://"):]


def _s3_code(exc: BaseException) -> str:
    """The S3 error code behind an exception (s3fs keeps botocore's ClientError as __cause__)."""
    seen = 0
    while exc is not None and seen < 5:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code:
            return str(code)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return ""


def _unreachable(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError, ReadTimeoutError
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        return False
    return isinstance(exc, (BotoConnectionError, ReadTimeoutError, ConnectionError, TimeoutError))


_MISSING = ("404", "NoSuchKey", "NotFound")
_LOST_CONDITION = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


@contextlib.contextmanager
def _s3_errors(uri: str, *, conditional: bool = False, if_match: bool = False) -> Iterator[None]:
    """Map s3fs/botocore failures onto this module's errors."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        code = _s3_code(exc)
        if conditional and (code in _LOST_CONDITION or isinstance(exc, FileExistsError)
                            or (if_match and code in _MISSING)):
            raise PreconditionFailed(f"{uri}: {code or type(exc).__name__}") from exc
        if code in _MISSING or (not code and isinstance(exc, FileNotFoundError)):
            raise NotFound(uri) from exc
        if _unreachable(exc):
            raise StorageUnavailable(f"{uri}: {exc}") from exc
        raise


def _s3_etag(head: dict[str, Any]) -> str:
    return str(head.get("ETag", "")).strip('"')


def _part_size(size: int) -> int:
    return max(PART_SIZE, -(-size // _MAX_PARTS))


def _s3_put_file(path: Path, uri: str, *, if_none_match: bool) -> str:
    """Stream a local file to S3 (multipart above 2 parts); create-only is If-None-Match on the final request."""
    with _s3_errors(uri, conditional=if_none_match):
        fs = _s3()
        fs.put_file(str(path), _s3_path(uri), chunksize=_part_size(path.stat().st_size),
                    mode="create" if if_none_match else "overwrite")
        return _s3_etag(fs.info(_s3_path(uri)))


# ---------------------------------------------------------------- local backend


def _local_fs():
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem()


def _local_etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _stat_file(path: Path) -> os.stat_result | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat_mod.S_ISREG(st.st_mode) else None


def _visible_files(root: Path) -> list[Path]:
    """Files under root, skipping hidden files and folders (lock and temporary files are hidden)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.extend(Path(dirpath, name) for name in filenames if not name.startswith("."))
    return sorted(out)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.parent / f".{path.name}.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[str]:
    """A temporary file name in path's directory (same filesystem, so os.replace is atomic); removed on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _local_write(uri: str, fill: Callable[[str], None], *, if_none_match: bool = False,
                 if_match: str | None = None) -> str:
    """Atomically replace the file at uri with what fill(temp_path) writes; return the new ETag."""
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        current = _stat_file(path)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"{uri} already exists")
        if if_match is not None and (current is None or _local_etag(current) != if_match.strip('"')):
            raise PreconditionFailed(f"{uri} changed since ETag {if_match}")
        with _temp_beside(path) as tmp:
            fill(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            new = os.stat(tmp)
            if current is not None:
                new = _later_than(tmp, new, current.st_mtime_ns)
            os.replace(tmp, path)
    return _local_etag(new)


def _later_than(tmp: str, st: os.stat_result, mtime_ns: int) -> os.stat_result:
    """Give tmp an mtime after mtime_ns when the clock has not moved past it (coarse timestamps): a path's
    versions then have strictly increasing mtimes, so an old ETag cannot match a newer version."""
    for step in (1, 1_000, 1_000_000, 1_000_000_000):  # whatever the filesystem's timestamp granularity
        if st.st_mtime_ns > mtime_ns:
            return st
        os.utime(tmp, ns=(st.st_atime_ns, mtime_ns + step))
        st = os.stat(tmp)
    if st.st_mtime_ns > mtime_ns:
        return st
    raise StorageError(f"cannot give {tmp} a later mtime than {mtime_ns}")


def _fetch(uri: str, target: str) -> None:
    """Write the object at uri into the local file target, streaming."""
    if is_s3(uri):
        with _s3_errors(uri):
            _s3().get_file(_s3_path(uri), target)
        return
    try:
        shutil.copyfile(local_path(uri), target)  # kernel-side copy where the OS offers one
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise NotFound(uri) from exc


# ---------------------------------------------------------------- whole objects


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        with _s3_errors(uri):
            return _s3().cat_file(_s3_path(uri))
    try:
        return _local_fs().cat_file(str(local_path(uri)))
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise NotFound(uri) from exc


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_bytes(uri: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
    """Write an object atomically and return its ETag.

    if_none_match=True: create only; PreconditionFailed if the object exists.
    if_match=ETAG: replace only if the current object has this ETag; PreconditionFailed otherwise.
    """
    if is_s3(uri):
        with _s3_errors(uri, conditional=if_none_match or if_match is not None, if_match=if_match is not None):
            fs = _s3()
            if if_match is not None:  # s3fs has no If-Match write; the same client sends the PutObject
                bucket, key = _split_s3(uri)
                etag = if_match if if_match.startswith('"') else f'"{if_match}"'
                return _s3_etag(fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag))
            out = fs.pipe_file(_s3_path(uri), data, chunksize=_part_size(len(data)),
                               mode="create" if if_none_match else "overwrite")
            return _s3_etag(out) if out else _s3_etag(fs.info(_s3_path(uri)))  # multipart returns nothing

    def fill(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return _local_write(uri, fill, if_none_match=if_none_match, if_match=if_match)


def write_text(uri: str, text: str, **kwargs: Any) -> str:
    return write_bytes(uri, text.encode("utf-8"), **kwargs)


def write_json(uri: str, obj: Any, **kwargs: Any) -> str:
    return write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), **kwargs)


# ---------------------------------------------------------------- metadata


def stat(uri: str) -> ObjectInfo | None:
    """Size, ETag and mtime of one object, or None if it does not exist. Never reads the object."""
    if is_s3(uri):
        try:
            with _s3_errors(uri):
                head = _s3().info(_s3_path(uri))
        except NotFound:
            return None
        if head.get("type") != "file":
            return None
        return ObjectInfo(uri, int(head["size"]), _s3_etag(head), head["LastModified"].timestamp())
    st = _stat_file(local_path(uri))
    if st is None:
        return None
    return ObjectInfo(normalize(uri), st.st_size, _local_etag(st), st.st_mtime)


def exists(uri: str) -> bool:
    return stat(uri) is not None


def list_objects(prefix_uri: str) -> list[ObjectInfo]:
    """Every object under a prefix (recursive), sorted by URI. Hidden local files and folders (.x) are skipped
    (lock and temporary files live there)."""
    prefix_uri = prefix_uri.rstrip("/") + "/"
    out: list[ObjectInfo] = []
    if is_s3(prefix_uri):
        prefix = _s3_path(prefix_uri)
        with _s3_errors(prefix_uri):
            found = _s3().find(prefix, detail=True)
        for name, info in found.items():
            if info.get("type") == "file" and name.startswith(prefix):
                out.append(ObjectInfo(f"s3://{name}", int(info["size"]), _s3_etag(info),
                                      info["LastModified"].timestamp()))
        return sorted(out, key=lambda o: o.uri)
    for path in _visible_files(local_path(prefix_uri)):
        st = _stat_file(path)
        if st is not None:
            out.append(ObjectInfo("file://" + str(path), st.st_size, _local_etag(st), st.st_mtime))
    return sorted(out, key=lambda o: o.uri)


def delete(uri: str) -> None:
    """Delete one object. Only scratch data (checkpoints) is ever deleted; artifacts never are."""
    if is_s3(uri):
        with _s3_errors(uri):
            _s3().rm_file(_s3_path(uri))
        return
    with contextlib.suppress(FileNotFoundError):
        _local_fs().rm_file(str(local_path(uri)))


# ---------------------------------------------------------------- files, folders and copies (streaming)


def upload_file(path: str | Path, uri: str, *, if_none_match: bool = False) -> str:
    """Send a local file to uri, streaming (multipart on S3 for big files); returns the new ETag."""
    path = Path(path)
    if is_s3(uri):
        return _s3_put_file(path, uri, if_none_match=if_none_match)
    return _local_write(uri, lambda tmp: shutil.copyfile(path, tmp), if_none_match=if_none_match)


def download_file(uri: str, path: str | Path) -> Path:
    """Fetch one object into a local file, streaming; the file appears whole (temporary file + rename)."""
    path = Path(path)
    with _temp_beside(path) as tmp:
        _fetch(uri, tmp)
        os.replace(tmp, path)
    return path


def upload_dir(local_dir: str | Path, prefix_uri: str, *, if_none_match: bool = False) -> dict[str, str]:
    """Upload every file under local_dir; return {relative path: sha256}."""
    local_dir = Path(local_dir)
    hashes: dict[str, str] = {}
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            rel = path.relative_to(local_dir).as_posix()
            hashes[rel] = sha256_file(path)
            upload_file(path, join(prefix_uri, rel), if_none_match=if_none_match)
    return hashes


def download_dir(prefix_uri: str, local_dir: str | Path) -> Path:
    """Download every object under a prefix into local_dir, keeping relative paths."""
    local_dir = Path(local_dir)
    prefix = normalize(prefix_uri).rstrip("/") + "/"
    objects = list_objects(prefix)
    if not objects:
        raise NotFound(f"nothing under {prefix_uri}")
    for obj in objects:
        download_file(obj.uri, local_dir / obj.uri[len(prefix):])
    return local_dir


def copy(src_uri: str, dst_uri: str, *, if_none_match: bool = False) -> str:
    """Copy one object to another URI (either backend to either), streaming; returns the new ETag.

    S3 to S3 is a server-side copy (no bytes pass through here); create-only S3 to S3 goes through a local
    temporary file instead, since S3-compatible servers differ on If-None-Match for CopyObject."""
    if is_s3(src_uri) and is_s3(dst_uri):
        if not if_none_match:
            with _s3_errors(src_uri):
                fs = _s3()
                fs.cp_file(_s3_path(src_uri), _s3_path(dst_uri))  # not copy(): it globs "?", "*", "["
                return _s3_etag(fs.info(_s3_path(dst_uri)))
        with tempfile.TemporaryDirectory(prefix="copy-") as tmp:
            local = download_file(src_uri, Path(tmp) / "object")
            return _s3_put_file(local, dst_uri, if_none_match=True)
    if is_s3(dst_uri):
        src = local_path(src_uri)
        if _stat_file(src) is None:
            raise NotFound(src_uri)
        return _s3_put_file(src, dst_uri, if_none_match=if_none_match)
    return _local_write(dst_uri, lambda tmp: _fetch(src_uri, tmp), if_none_match=if_none_match)


def sha256_uri(uri: str) -> str:
    """sha256 of one object on either backend, read in blocks (for manifests and verification of big files)."""
    digest = hashlib.sha256()
    if is_s3(uri):
        with _s3_errors(uri), _s3().open(_s3_path(uri), "rb") as fh:
            for block in iter(lambda: fh.read(PART_SIZE), b""):
                digest.update(block)
        return digest.hexdigest()
    try:
        return sha256_file(local_path(uri))
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise NotFound(uri) from exc


def sync_dir(local_dir: str | Path, prefix_uri: str) -> list[str]:
    """Upload the files under local_dir that the prefix does not hold yet (same relative path and size);
    returns the relative paths sent. For checkpoints, which are written once: a re-sync sends only what is
    new. Compares sizes from one listing; never reads a file to decide. Hidden files (.x) are not objects
    (list_objects skips them) and are not sent."""
    local_dir = Path(local_dir)
    prefix = normalize(prefix_uri).rstrip("/") + "/"
    have = {o.uri[len(prefix):]: o.size for o in list_objects(prefix)}
    sent = []
    for path in _visible_files(local_dir):
        st = _stat_file(path)
        rel = path.relative_to(local_dir).as_posix()
        if st is not None and have.get(rel) != st.st_size:
            upload_file(path, join(prefix_uri, rel))
            sent.append(rel)
    return sent


@contextlib.contextmanager
def local_copy(prefix_uri: str) -> Iterator[Path]:
    """A local directory holding the objects under a prefix (the directory itself for file:// URIs)."""
    if not is_s3(prefix_uri):
        yield local_path(prefix_uri)
        return
    with tempfile.TemporaryDirectory(prefix="stage-") as tmp:
        yield download_dir(prefix_uri, tmp)
