"""Tokenized snapshot splits, cached in storage: a snapshot is tokenized once, not once per stage and retry.

    key = sha256(snapshot manifest + URI, tokenizer fingerprint, model.max_length, train.max_train_rows, format)
    <storage>/cache/<pipeline>/tokens/<key>/<attempt>/   datasets' save_to_disk of {train, holdout}, manifest.json

The first training stage of a run on a snapshot (fine-tune) tokenizes and writes the splits; the next (distill)
and every retry or later run with the same key reads them. Written with datasets' own persistence
(``DatasetDict.save_to_disk`` / ``load_from_disk``: Arrow files plus the features, so a read gives back exactly the
columns and types ``train_data.tokenize`` made, memory-mapped rather than held in RAM), sent file by file through
``tasks.storage`` with create-only writes.

Nothing stored is overwritten: each writer puts its copy in its own ``<attempt>`` folder (a UTC timestamp and a
random suffix) and publishes it by writing that folder's ``manifest.json`` last (sizes and sha256 of every file,
row counts, the key's fields). A reader takes the oldest attempt whose manifest is there and whose files match
it byte for byte; a partial upload (no manifest) or a corrupt copy (a file missing, cut short or changed) is
logged and skipped, and with no good copy left the splits are tokenized again and written as a new attempt.
Two stages writing at once each publish their own complete copy. The cache is derived data: deleting
``cache/`` loses nothing but the time to tokenize again.

The tokenizer fingerprint hashes the files ``tokenizer.save_pretrained`` writes, not the files in the model
folder: the teacher's saved copy of the base model's tokenizer has other bytes (rewritten ``tokenizer.json`` and
``tokenizer_config.json``) but tokenizes identically, and must find the fine-tune stage's cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import load_from_disk

from tasks import storage
from tasks.errors import SpecInvalid
from tasks.manifests import SnapshotManifest

log = logging.getLogger(__name__)

FORMAT = 1  # bump when train_data.tokenize's output changes: old entries then stop matching
SPLITS = ("train", "holdout")
MANIFEST = "manifest.json"


class CacheCorrupt(Exception):
    """A stored copy that does not match its manifest."""


@dataclass
class TokenizedSplits:
    train: Any  # datasets.Dataset
    holdout: Any
    hit: bool  # read from the cache (True) or tokenized now (False)
    key: str
    uri: str | None  # the attempt folder read or written; None when writing it failed
    _keep: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)  # the mapped files

    def close(self) -> None:
        """Remove a cache hit's local copy (the files the datasets map); use the datasets no more after it."""
        self._keep.close()

    def __enter__(self) -> "TokenizedSplits":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- the key


@dataclass(frozen=True)
class SnapshotIdentity:
    """A snapshot as a training stage knows it: URI, id, the hash of its manifest (the cache key's part) and the
    manifest itself, read once per stage (snapshots are immutable: the manifest names their parts)."""

    uri: str
    id: str
    manifest_sha256: str
    manifest: SnapshotManifest = field(repr=False)


def snapshot_identity(snapshot_uri: str) -> SnapshotIdentity:
    """The snapshot's identity, its manifest read. A missing snapshot is ``SpecInvalid``, before any model is
    loaded."""
    from tasks.data.snapshots import manifest_uri

    uri = storage.normalize(snapshot_uri).rstrip("/")
    try:
        raw = storage.read_bytes(manifest_uri(uri))
    except storage.NotFound as exc:
        raise SpecInvalid(f"--snapshot {snapshot_uri}: no snapshot there ({exc})") from None
    manifest = SnapshotManifest.read(json.loads(raw))
    return SnapshotIdentity(uri, str(manifest.snapshot_id or uri.rsplit("/", 1)[-1]),
                            storage.sha256_bytes(raw), manifest)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the files ``tokenizer.save_pretrained`` writes (names and contents). In ``tokenizer.json`` the
    ``truncation`` and ``padding`` entries are left out: they are the settings of the tokenizer's last call
    (transformers sets them on every call from its arguments and ``tokenizer_config.json``), so a tokenizer
    saved after tokenizing at another length would otherwise look like another tokenizer."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="tokenizer-fp-") as tmp:
        tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if path.name == "tokenizer.json":
                state = {k: v for k, v in json.loads(data).items() if k not in ("truncation", "padding")}
                data = json.dumps(state, sort_keys=True).encode()
            digest.update(f"{path.relative_to(tmp).as_posix()}\0{storage.sha256_bytes(data)}\n".encode())
    return digest.hexdigest()


def key_fields(snapshot: SnapshotIdentity, fingerprint: str, max_length: int,
               max_train_rows: int | None) -> dict[str, Any]:
    return {"format": FORMAT, "snapshot_uri": snapshot.uri, "snapshot_id": snapshot.id,
            "snapshot_manifest_sha256": snapshot.manifest_sha256, "tokenizer_sha256": fingerprint,
            "max_length": max_length, "max_train_rows": max_train_rows}


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


# ---------------------------------------------------------------- read, or tokenize and write


def tokenized_splits(cache_uri: str, snapshot_uri: str, tokenizer, max_length: int, max_train_rows: int | None,
                     *, stage: str = "train", snapshot: SnapshotIdentity | None = None) -> TokenizedSplits:
    """The snapshot's train and holdout splits tokenized (``train_data.tokenize``): from the cache under
    ``cache_uri`` when a good copy is there, else tokenized now and written there (by one process: DDP rank 0).
    Logs ``[stage] token cache hit|miss``. A context manager: a hit's local copy is removed on leaving it."""
    from tasks.train import train_data

    snapshot = snapshot or snapshot_identity(snapshot_uri)
    fields = key_fields(snapshot, tokenizer_fingerprint(tokenizer), max_length, max_train_rows)
    key = cache_key(fields)
    key_uri = storage.join(cache_uri, key)
    found = read(key_uri, fields, stage=stage)
    if found is not None:
        log.info(f"[{stage}] token cache hit: {found.uri} ({len(found.train)} train, {len(found.holdout)} "
                 "holdout rows)")
        return found
    train_rows, holdout_rows = train_data.load_splits(snapshot_uri, max_train_rows, snapshot.manifest)
    train = train_data.tokenize(tokenizer, train_rows["text"], train_rows["label"], max_length)
    holdout = train_data.tokenize(tokenizer, holdout_rows["text"], holdout_rows["label"], max_length)
    uri = None
    if int(os.environ.get("RANK", "0")) == 0:  # under DDP every rank tokenizes alike; one writes
        try:
            uri = publish(key_uri, fields, train, holdout)
        except storage.StorageError as exc:  # the cache saves time; a failed write must not fail the stage
            log.warning("token cache not written to %s: %s", key_uri, exc)
    log.info(f"[{stage}] token cache miss: tokenized {len(train)} train, {len(holdout)} holdout rows"
             f"{'; written to ' + uri if uri else ''}")
    return TokenizedSplits(train, holdout, hit=False, key=key, uri=uri)


def read(key_uri: str, fields: dict[str, Any], *, stage: str = "train") -> TokenizedSplits | None:
    """The oldest good copy under ``key_uri``, or None. Copies that fail verification are logged and skipped."""
    objects = storage.list_objects(key_uri)
    attempts = sorted({o.uri[len(key_uri) + 1:].split("/", 1)[0] for o in objects
                       if o.uri.endswith("/" + MANIFEST)})
    sizes = {o.uri: o.size for o in objects}
    for attempt in attempts:
        try:
            return _load(storage.join(key_uri, attempt), fields, sizes)
        except storage.StorageUnavailable:
            raise
        except Exception as exc:  # a corrupt or partial copy, whatever the library says about it
            log.warning(f"[{stage}] token cache: skipping {storage.join(key_uri, attempt)}: "
                        f"{type(exc).__name__}: {exc}")
    return None


def _load(attempt_uri: str, fields: dict[str, Any], sizes: dict[str, int]) -> TokenizedSplits:
    manifest = storage.read_json(storage.join(attempt_uri, MANIFEST))
    if manifest.get("fields") != fields:
        raise CacheCorrupt(f"manifest is for {manifest.get('fields')}, not this key")
    files = manifest["files"]
    for rel, meta in files.items():  # sizes from the listing first: a short file is caught without a read
        if sizes.get(storage.join(attempt_uri, rel)) != meta["size"]:
            raise CacheCorrupt(f"{rel}: size {sizes.get(storage.join(attempt_uri, rel))}, manifest {meta['size']}")
    keep = contextlib.ExitStack()
    try:
        local = Path(keep.enter_context(tempfile.TemporaryDirectory(prefix="token-cache-")))
        for rel, meta in files.items():
            path = local / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            storage.download_file(storage.join(attempt_uri, rel), path)
            if storage.sha256_file(path) != meta["sha256"]:
                raise CacheCorrupt(f"{rel}: sha256 differs from the manifest")
        splits = load_from_disk(str(local))
        train, holdout = splits["train"], splits["holdout"]
        if [len(train), len(holdout)] != [manifest["rows"]["train"], manifest["rows"]["holdout"]]:
            raise CacheCorrupt(f"rows {len(train)}/{len(holdout)}, manifest {manifest['rows']}")
    except BaseException:
        keep.close()
        raise
    return TokenizedSplits(train, holdout, hit=True, key=cache_key(fields), uri=attempt_uri, _keep=keep)


def publish(key_uri: str, fields: dict[str, Any], train, holdout) -> str:
    """Write both splits as a new attempt folder under ``key_uri``, create-only, its manifest last."""
    attempt = f"{storage.utcnow().replace('-', '').replace(':', '')}-{uuid.uuid4().hex[:8]}"
    attempt_uri = storage.join(key_uri, attempt)
    with tempfile.TemporaryDirectory(prefix="token-cache-") as tmp:
        quiet = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # one line per stage in the log, not a progress bar per split
        try:
            datasets.DatasetDict({"train": train, "holdout": holdout}).save_to_disk(tmp)
        finally:
            if not quiet:
                datasets.enable_progress_bars()
        files = {}
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                rel = path.relative_to(tmp).as_posix()
                files[rel] = {"size": path.stat().st_size, "sha256": storage.sha256_file(path)}
                storage.upload_file(path, storage.join(attempt_uri, rel), if_none_match=True)
    storage.write_json(storage.join(attempt_uri, MANIFEST), {
        "fields": fields, "files": files, "rows": {"train": len(train), "holdout": len(holdout)},
        "created": storage.utcnow()}, if_none_match=True)
    return attempt_uri
