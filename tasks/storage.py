"""One small storage layer over two backends: S3 (any endpoint boto3 reaches) and a local directory.

Every function takes a full URI, ``s3://bucket/key`` or ``file:///abs/path`` (a bare path is a local path),
so stages pass URIs around and never care which backend sits behind them.

S3 settings come from the standard AWS environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for MinIO or moto), which boto3 reads by itself. In a pod they come
from a Kubernetes Secret; in local mode the stage factory derives them from the Airflow connection.

Writes are whole-object and atomic on both backends. Conditional writes (``if_none_match`` to create only,
``if_match`` to replace only a known version) raise PreconditionFailed when the condition does not hold; they
are how immutable artifacts stay immutable and how two runs cannot both move a pointer.

fsspec/s3fs were considered; we use boto3 directly because conditional writes (If-Match / If-None-Match) are
the one feature we need most and they are first-class in boto3's put_object.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse


class StorageError(RuntimeError):
    pass


class NotFound(StorageError, FileNotFoundError):
    pass


class PreconditionFailed(StorageError):
    """A conditional write lost: the object exists (if_none_match) or changed (if_match)."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str
    mtime: float  # seconds since the epoch


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
        return Path(urlparse(uri).path)
    return Path(uri).expanduser().resolve()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- S3 backend

_clients: dict[int, Any] = {}
_clients_lock = threading.Lock()


def _s3():
    # One client per process and thread (boto3 clients are thread-safe but not fork-safe).
    key = os.getpid() * 1_000_003 + threading.get_ident()
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL") or None
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                config=Config(
                    retries={"max_attempts": int(os.environ.get("STORAGE_MAX_ATTEMPTS", "4")), "mode": "standard"},
                    connect_timeout=float(os.environ.get("STORAGE_CONNECT_TIMEOUT", "5")),
                    read_timeout=float(os.environ.get("STORAGE_READ_TIMEOUT", "60")),
                    s3={"addressing_style": "path"},
                ),
            )
            _clients[key] = client
        return client


def reset_clients() -> None:
    """Forget cached clients (tests change AWS_ENDPOINT_URL between servers)."""
    with _clients_lock:
        _clients.clear()


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def _s3_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


# ---------------------------------------------------------------- API


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        client = _s3()
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey as exc:
            raise NotFound(uri) from exc
        except Exception as exc:
            if _s3_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(uri) from exc
            raise
    path = local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(uri) from exc


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.parent / f".{path.name}.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _local_etag(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # same as S3's for single-part uploads


def write_bytes(uri: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
    """Write an object atomically and return its ETag.

    if_none_match=True: create only; PreconditionFailed if the object exists.
    if_match=ETAG: replace only if the current object has this ETag; PreconditionFailed otherwise.
    """
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match:
            kwargs["IfMatch"] = if_match if if_match.startswith('"') else f'"{if_match}"'
        try:
            response = _s3().put_object(**kwargs)
        except Exception as exc:
            if _s3_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise PreconditionFailed(f"{uri}: {_s3_code(exc)}") from exc
            raise
        return response["ETag"].strip('"')

    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        if if_none_match and path.exists():
            raise PreconditionFailed(f"{uri} already exists")
        if if_match is not None:
            if not path.exists() or _local_etag(path.read_bytes()) != if_match.strip('"'):
                raise PreconditionFailed(f"{uri} changed since ETag {if_match}")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return _local_etag(data)


def write_text(uri: str, text: str, **kwargs: Any) -> str:
    return write_bytes(uri, text.encode("utf-8"), **kwargs)


def write_json(uri: str, obj: Any, **kwargs: Any) -> str:
    return write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), **kwargs)


def stat(uri: str) -> ObjectInfo | None:
    """Size, ETag and mtime of one object, or None if it does not exist."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            head = _s3().head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _s3_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(uri, int(head["ContentLength"]), head["ETag"].strip('"'), head["LastModified"].timestamp())
    path = local_path(uri)
    if not path.is_file():
        return None
    st = path.stat()
    return ObjectInfo(normalize(uri), st.st_size, _local_etag(path.read_bytes()), st.st_mtime)


def exists(uri: str) -> bool:
    return stat(uri) is not None


def list_objects(prefix_uri: str) -> list[ObjectInfo]:
    """Every object under a prefix (recursive), sorted by URI. Hidden local files (.x) are skipped."""
    prefix_uri = prefix_uri.rstrip("/") + "/"
    if is_s3(prefix_uri):
        bucket, prefix = _split_s3(prefix_uri)
        out: list[ObjectInfo] = []
        paginator = _s3().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out.append(
                    ObjectInfo(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), obj["ETag"].strip('"'),
                               obj["LastModified"].timestamp())
                )
        return sorted(out, key=lambda o: o.uri)
    root = local_path(prefix_uri)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            info = stat("file://" + str(path))
            if info:
                out.append(info)
    return out


def delete(uri: str) -> None:
    """Delete one object. Only scratch data (checkpoints) is ever deleted; artifacts never are."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        _s3().delete_object(Bucket=bucket, Key=key)
        return
    with contextlib.suppress(FileNotFoundError):
        local_path(uri).unlink()


def upload_file(path: str | Path, uri: str, *, if_none_match: bool = False) -> str:
    if is_s3(uri) and not if_none_match:
        bucket, key = _split_s3(uri)
        _s3().upload_file(str(path), bucket, key)  # multipart for big weights
        info = stat(uri)
        return info.etag if info else ""
    return write_bytes(uri, Path(path).read_bytes(), if_none_match=if_none_match)


def download_file(uri: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            _s3().download_file(bucket, key, str(path))
        except Exception as exc:
            if _s3_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(uri) from exc
            raise
    else:
        path.write_bytes(read_bytes(uri))
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
    prefix = prefix_uri.rstrip("/") + "/"
    objects = list_objects(prefix)
    if not objects:
        raise NotFound(f"nothing under {prefix_uri}")
    for obj in objects:
        download_file(obj.uri, local_dir / obj.uri[len(prefix):])
    return local_dir


def copy(src_uri: str, dst_uri: str, *, if_none_match: bool = False) -> str:
    """Copy one object to another URI (either backend to either), streaming; returns the new ETag."""
    with tempfile.TemporaryDirectory(prefix="copy-") as tmp:
        local = download_file(src_uri, Path(tmp) / "object")
        return upload_file(local, dst_uri, if_none_match=if_none_match)


def sync_dir(local_dir: str | Path, prefix_uri: str) -> list[str]:
    """Upload the files under local_dir that the prefix does not hold yet (same relative path and size);
    returns the relative paths sent. For checkpoints: a re-sync sends only what is new."""
    local_dir = Path(local_dir)
    prefix = prefix_uri.rstrip("/") + "/"
    have = {o.uri[len(prefix):]: o.size for o in list_objects(prefix_uri)}
    sent = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        if have.get(rel) != path.stat().st_size:
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


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
