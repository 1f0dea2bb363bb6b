"""tasks/storage.py on both backends: moto's S3 server on 127.0.0.1 (s3_env) and a local directory.

Round trips, create-only and if-match writes, the local ETag (a stat, not a hash), compare-and-swap under
concurrent writers, sync_dir sending only new files, streaming copies across backends, hidden local files.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPORTED
from tasks import storage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path) -> str:
    """A fresh prefix on one backend: file://TMP/store or s3://BUCKET/store."""
    if request.param == "s3":
        return storage.join(request.getfixturevalue("s3_env"), "store")
    return storage.normalize(str(tmp_path / "store"))


# ---------------------------------------------------------------- round trips


def test_round_trip(base, tmp_path):
    etag = storage.write_json(storage.join(base, "a", "doc.json"), {"k": [1, 2]})
    storage.write_text(storage.join(base, "a", "b", "note.txt"), "héllo")
    storage.write_bytes(storage.join(base, "z.bin"), b"\x00\x01")

    assert storage.read_json(storage.join(base, "a", "doc.json")) == {"k": [1, 2]}
    assert storage.read_text(storage.join(base, "a", "b", "note.txt")) == "héllo"
    assert storage.read_bytes(storage.join(base, "z.bin")) == b"\x00\x01"

    info = storage.stat(storage.join(base, "a", "doc.json"))
    assert info is not None and info.etag == etag and info.size == len(b'{\n  "k": [\n    1,\n    2\n  ]\n}\n')
    assert abs(info.mtime - time.time()) < 300
    assert storage.stat(storage.join(base, "a")) is None  # a prefix is not an object
    assert storage.stat(storage.join(base, "missing")) is None and not storage.exists(storage.join(base, "missing"))
    with pytest.raises(storage.NotFound):
        storage.read_bytes(storage.join(base, "missing"))

    listed = storage.list_objects(storage.join(base, "a"))
    assert [o.uri for o in listed] == [storage.join(base, "a", "b", "note.txt"), storage.join(base, "a", "doc.json")]
    assert [o.uri for o in listed] == sorted(o.uri for o in listed)
    assert listed[1] == info
    assert storage.list_objects(storage.join(base, "nothing-here")) == []

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "w.bin").write_bytes(os.urandom(1000))
    (src / "sub" / "t.txt").write_text("tiny")
    hashes = storage.upload_dir(src, storage.join(base, "model"))
    assert hashes == {"sub/t.txt": storage.sha256_file(src / "sub" / "t.txt"), "w.bin": storage.sha256_file(src / "w.bin")}
    got = storage.download_dir(storage.join(base, "model"), tmp_path / "got")
    assert (got / "w.bin").read_bytes() == (src / "w.bin").read_bytes()
    with storage.local_copy(storage.join(base, "model")) as copy_dir:
        assert (copy_dir / "sub" / "t.txt").read_text() == "tiny"
    with pytest.raises(storage.NotFound):
        storage.download_dir(storage.join(base, "nothing-here"), tmp_path / "none")

    storage.delete(storage.join(base, "z.bin"))
    storage.delete(storage.join(base, "z.bin"))  # deleting what is gone is not an error
    assert not storage.exists(storage.join(base, "z.bin"))


def test_download_file_of_missing_object_leaves_nothing(base, tmp_path):
    target = tmp_path / "out" / "x.bin"
    with pytest.raises(storage.NotFound):
        storage.download_file(storage.join(base, "missing.bin"), target)
    assert list(target.parent.iterdir()) == []  # no half-written or temporary file


# ---------------------------------------------------------------- conditional writes


def test_create_only_and_if_match(base, tmp_path):
    uri = storage.join(base, "pointer.json")
    first = storage.write_json(uri, {"v": 1}, if_none_match=True)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_json(uri, {"v": "other"}, if_none_match=True)
    assert storage.read_json(uri) == {"v": 1}

    second = storage.write_json(uri, {"v": 2}, if_match=first)
    assert second != first and storage.stat(uri).etag == second
    with pytest.raises(storage.PreconditionFailed):  # stale ETag: someone moved the pointer since
        storage.write_json(uri, {"v": "stale"}, if_match=first)
    assert storage.read_json(uri) == {"v": 2}
    with pytest.raises(storage.PreconditionFailed):  # if_match on nothing
        storage.write_json(storage.join(base, "never.json"), {"v": 0}, if_match=second)
    assert not storage.exists(storage.join(base, "never.json"))

    local = tmp_path / "f.bin"
    local.write_bytes(b"payload")
    storage.upload_file(local, storage.join(base, "f.bin"), if_none_match=True)
    with pytest.raises(storage.PreconditionFailed):
        storage.upload_file(local, storage.join(base, "f.bin"), if_none_match=True)
    with pytest.raises(storage.PreconditionFailed):
        storage.copy(storage.join(base, "pointer.json"), storage.join(base, "f.bin"), if_none_match=True)
    assert storage.read_bytes(storage.join(base, "f.bin")) == b"payload"


def test_local_etag_changes_on_every_write_even_with_same_bytes(tmp_path):
    """Same-size (and same-content) rewrites in quick succession: each version gets a new ETag, so an old
    ETag never matches a later version even when inodes are reused and the clock has not ticked."""
    uri = storage.normalize(str(tmp_path / "p.json"))
    etags = [storage.write_bytes(uri, b"same")]
    for _ in range(40):
        etags.append(storage.write_bytes(uri, b"same", if_match=etags[-1]))
    assert len(set(etags)) == len(etags)
    for old in etags[:-1]:
        with pytest.raises(storage.PreconditionFailed):
            storage.write_bytes(uri, b"late", if_match=old)
    assert storage.stat(uri).etag == etags[-1]

    # The clock behind the current version (a clock step, or a file copied with its times kept): the next
    # write still gets a later mtime than the version it replaces, so its ETag is new.
    future = time.time_ns() + 3600 * 10**9
    os.utime(storage.local_path(uri), ns=(future, future))
    stepped = storage.stat(uri).etag
    newer = storage.write_bytes(uri, b"same", if_match=stepped)
    assert newer != stepped and os.stat(storage.local_path(uri)).st_mtime_ns > future


def _increment(uri: str, times: int, out) -> None:
    """A writer process: read-modify-write a counter with if_match, retrying when it loses."""
    done = 0
    for _ in range(times * 50):  # bounded retries
        info = storage.stat(uri)
        value = storage.read_json(uri)["n"]
        if storage.stat(uri).etag != info.etag:
            continue  # changed while reading
        try:
            storage.write_json(uri, {"n": value + 1}, if_match=info.etag)
        except storage.PreconditionFailed:
            continue
        done += 1
        if done == times:
            break
    out.put(done)


def test_local_compare_and_swap_loses_no_update_across_processes(tmp_path):
    uri = storage.normalize(str(tmp_path / "counter.json"))
    storage.write_json(uri, {"n": 0}, if_none_match=True)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_increment, args=(uri, 15, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=50)
    assert all(p.exitcode == 0 for p in procs)
    successes = sum(out.get(timeout=5) for _ in procs)
    assert successes == 60
    assert storage.read_json(uri) == {"n": 60}  # every successful swap counted exactly once


# ---------------------------------------------------------------- stat is a stat


def test_local_stat_and_listing_never_read_the_file(tmp_path):
    """A 64 GiB sparse file: stat and list_objects answer at once (hashing it would take minutes)."""
    big = tmp_path / "d" / "huge.bin"
    big.parent.mkdir()
    with open(big, "wb") as fh:
        fh.truncate(64 * 2**30)
    start = time.process_time()  # CPU time: reading 64 GiB takes far more; a busy machine's wall time tells nothing
    info = storage.stat(str(big))
    listed = storage.list_objects(str(big.parent))
    assert time.process_time() - start < 2.0
    assert info.size == 64 * 2**30 and listed == [info]


def test_local_etag_is_metadata_not_content(tmp_path):
    """What the local ETag promises, stated exactly: it is inode + size + mtime_ns. Every write through this
    module changes it; an in-place edit that restores size and mtime (which storage never does) would not."""
    path = tmp_path / "x.bin"
    uri = storage.normalize(str(path))
    etag = storage.write_bytes(uri, b"aaaa")
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.write(b"bbbb")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert storage.stat(uri).etag == etag
    assert storage.write_bytes(uri, b"aaaa") != etag


# ---------------------------------------------------------------- sync, copy, hidden files


def test_sync_dir_sends_only_new_files(base, tmp_path):
    local = tmp_path / "ckpt"
    (local / "checkpoint-1").mkdir(parents=True)
    (local / "checkpoint-1" / "model.bin").write_bytes(os.urandom(3000))
    (local / "checkpoint-1" / "state.json").write_text('{"step": 1}')
    (local / ".partial.tmp").write_text("hidden: not an object")
    remote = storage.join(base, "checkpoints")

    assert storage.sync_dir(local, remote) == ["checkpoint-1/model.bin", "checkpoint-1/state.json"]
    assert storage.sync_dir(local, remote) == []

    (local / "checkpoint-2").mkdir()
    (local / "checkpoint-2" / "model.bin").write_bytes(os.urandom(3000))
    (local / "checkpoint-1" / "state.json").write_text('{"step": 1, "grown": true}')
    assert storage.sync_dir(local, remote) == ["checkpoint-1/state.json", "checkpoint-2/model.bin"]
    assert storage.sync_dir(local, remote) == []
    assert storage.read_bytes(storage.join(remote, "checkpoint-2", "model.bin")) == \
        (local / "checkpoint-2" / "model.bin").read_bytes()
    assert [o.uri.rsplit("/", 2)[-2:] for o in storage.list_objects(remote)] == [
        ["checkpoint-1", "model.bin"], ["checkpoint-1", "state.json"], ["checkpoint-2", "model.bin"]]


def test_list_objects_skips_hidden_local_files(tmp_path):
    root = tmp_path / "r"
    storage.write_bytes(storage.normalize(str(root / "a.json")), b"{}")  # leaves .a.json.lock beside it
    (root / ".hidden").write_text("x")
    (root / ".cache").mkdir()
    (root / ".cache" / "inside.bin").write_text("x")
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_text("b")
    (root / "sub" / ".b.txt.123.tmp").write_text("half-written")
    assert (root / ".a.json.lock").exists()
    assert [o.uri for o in storage.list_objects(str(root))] == [
        storage.normalize(str(root / "a.json")), storage.normalize(str(root / "sub" / "b.txt"))]


COPY_SCRIPT = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    from tasks import storage

    src, bucket, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    small = out / "small.bin"
    small.write_bytes(b"warm up every code path once")
    def chain(local, tag):
        storage.copy(storage.normalize(str(local)), f"{bucket}/{tag}/a")              # local -> S3 (multipart)
        storage.copy(f"{bucket}/{tag}/a", f"{bucket}/{tag}/b")                        # S3 -> S3 (server side)
        storage.copy(f"{bucket}/{tag}/b", storage.normalize(str(out / f"{tag}.s3")))  # S3 -> local (ranged)
        storage.copy(storage.normalize(str(out / f"{tag}.s3")),
                     storage.normalize(str(out / f"{tag}.local")))                    # local -> local
    chain(small, "small")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    chain(Path(src), "big")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(after - before)
""")


def test_copy_across_backends_streams(s3_env, tmp_path):
    """A file bigger than everything a transfer may buffer (PART_SIZE * PART_CONCURRENCY) goes local -> S3 ->
    S3 -> local -> local in a fresh process, whose peak memory grows by less than the file's size."""
    size = 4 * storage.PART_SIZE * storage.PART_CONCURRENCY  # 128 MiB
    src = tmp_path / "big.bin"
    with open(src, "wb") as fh:
        for _ in range(size // 2**20):
            fh.write(os.urandom(2**20))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", COPY_SCRIPT, str(src), s3_env, str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    growth = int(proc.stdout.strip().splitlines()[-1])
    REPORTED["storage: peak memory growth copying 128 MiB across backends"] = f"{growth / 2**20:.0f} MiB"
    assert growth < 0.75 * size, f"peak memory grew by {growth / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB copy"
    digest = storage.sha256_file(src)
    assert storage.sha256_file(out / "big.s3") == digest and storage.sha256_file(out / "big.local") == digest
    assert storage.stat(f"{s3_env}/big/b").size == size


# ---------------------------------------------------------------- clients: endpoints, outages, fork


def test_reset_clients_follows_the_endpoint_and_outages_are_connection_errors(s3_env, moto_server, monkeypatch):
    from conftest import free_port

    storage.write_bytes(f"{s3_env}/x", b"1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("STORAGE_MAX_ATTEMPTS", "1")
    storage.reset_clients()
    with pytest.raises(storage.StorageUnavailable) as caught:
        storage.read_bytes(f"{s3_env}/x")
    assert isinstance(caught.value, ConnectionError)  # python -m tasks exits "infrastructure": Airflow retries

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    storage.reset_clients()
    assert storage.read_bytes(f"{s3_env}/x") == b"1"


def _child_uses_s3(bucket: str, out) -> None:
    try:
        storage.write_bytes(f"{bucket}/child", b"from the child")
        out.put(storage.read_bytes(f"{bucket}/parent").decode())
    except BaseException as exc:  # report, don't hang the parent
        out.put(f"error: {exc!r}")


def test_forked_child_gets_its_own_s3_client(s3_env):
    storage.write_bytes(f"{s3_env}/parent", b"from the parent")  # the parent's client now exists
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_uses_s3, args=(s3_env, out))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert out.get(timeout=5) == "from the parent"
    assert storage.read_bytes(f"{s3_env}/child") == b"from the child"  # and the parent's still works


def test_sha256_uri_matches_the_bytes(base, tmp_path):
    data = os.urandom(3 * storage.PART_SIZE + 5)  # several blocks and a ragged end
    (tmp_path / "f").write_bytes(data)
    storage.upload_file(tmp_path / "f", storage.join(base, "f"))
    assert storage.sha256_uri(storage.join(base, "f")) == storage.sha256_bytes(data)
    with pytest.raises(storage.NotFound):
        storage.sha256_uri(storage.join(base, "missing"))


@pytest.mark.parametrize("scheme", ["local", "s3"])
def test_paths_with_hash_and_question_marks_are_kept_whole(scheme, tmp_path, request):
    # A URL parser would cut '#...' off as a fragment and '?...' as a query: another folder or key.
    root = ("file://" + str(tmp_path) if scheme == "local" else request.getfixturevalue("s3_env")) + "/my#data?v=1"
    storage.write_text(root + "/a#1.txt", "one")
    storage.copy(root + "/a#1.txt", root + "/b?.txt")
    assert storage.read_text(root + "/b?.txt") == "one"
    assert sorted(o.uri for o in storage.list_objects(root)) == [root + "/a#1.txt", root + "/b?.txt"]
    if scheme == "local":
        assert (tmp_path / "my#data?v=1" / "a#1.txt").read_text() == "one"
