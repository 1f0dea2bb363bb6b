"""The token cache (tasks/train/token_cache.py): a snapshot's splits are tokenized once and read back equal to a
fresh tokenization, by the next stage too (the teacher's saved copy of the tokenizer); the key follows what the
tokens depend on; nothing stored is overwritten; a partial or corrupt copy is skipped and rebuilt."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bench.common import read_tsv, write_snapshot
from tasks import storage
from tasks.train import token_cache, train_data
from tasks.train.modeling import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def _fresh(snapshot: str, tokenizer, max_length: int, max_train_rows: int | None = None):
    train, holdout = train_data.load_splits(snapshot, max_train_rows)
    return (train_data.tokenize(tokenizer, train["text"], train["label"], max_length),
            train_data.tokenize(tokenizer, holdout["text"], holdout["label"], max_length))


def _same(got, want) -> None:
    assert got.features == want.features
    assert got.to_dict() == want.to_dict()


def _objects(prefix: str) -> dict[str, str]:
    return {o.uri: o.etag for o in storage.list_objects(prefix)}


def test_the_next_stage_reads_what_the_first_tokenized_on_s3(s3_env, tokenizer, tiny_model_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tasks.train")  # the stages' progress lines
    from tasks.train.modeling import save_model, load_classifier

    snapshot = write_snapshot(s3_env, "sst2", read_tsv("train", limit=80, offset=200))
    cache = storage.join(s3_env, "cache", "sst2", "tokens")
    first = token_cache.tokenized_splits(cache, snapshot, tokenizer, 32, None, stage="finetune")
    assert not first.hit and first.uri.startswith(cache + "/" + first.key + "/")
    assert "[finetune] token cache miss" in caplog.text
    caplog.clear()

    # The distill stage loads the tokenizer from the fine-tuned teacher's folder: other file bytes, same tokens.
    teacher_dir = tmp_path / "teacher"
    save_model(load_classifier(tiny_model_dir), tokenizer, teacher_dir)
    second = token_cache.tokenized_splits(cache, snapshot, load_tokenizer(teacher_dir), 32, None, stage="distill")
    assert second.hit and second.uri == first.uri
    assert "[distill] token cache hit" in caplog.text
    want_train, want_holdout = _fresh(snapshot, tokenizer, 32)
    _same(second.train, want_train)
    _same(second.holdout, want_holdout)
    # A hit maps a local copy of the cached files; leaving the splits' context removes it.
    local = Path(second.train.cache_files[0]["filename"])
    with second:
        assert local.exists()
    assert not local.exists()


def test_the_key_follows_snapshot_tokenizer_length_and_row_cap(tmp_path, tokenizer, tiny_model_dir):
    from transformers import AutoTokenizer

    root = storage.normalize(str(tmp_path / "store"))
    snapshot = write_snapshot(root, "sst2", read_tsv("train", limit=60))
    other_snapshot = write_snapshot(root, "sst2", read_tsv("train", limit=61))
    identity = token_cache.snapshot_identity(snapshot)
    fingerprint = token_cache.tokenizer_fingerprint(tokenizer)
    base = token_cache.cache_key(token_cache.key_fields(identity, fingerprint, 32, None))
    uncased = AutoTokenizer.from_pretrained(str(tiny_model_dir), do_lower_case=False)
    variants = [
        token_cache.key_fields(identity, fingerprint, 64, None),  # max_length
        token_cache.key_fields(identity, fingerprint, 32, 40),  # train.max_train_rows
        token_cache.key_fields(identity, token_cache.tokenizer_fingerprint(uncased), 32, None),  # the tokenizer
        token_cache.key_fields(token_cache.snapshot_identity(other_snapshot), fingerprint, 32, None),  # the rows
    ]
    keys = [token_cache.cache_key(fields) for fields in variants]
    assert len({base, *keys}) == 5
    assert token_cache.tokenizer_fingerprint(load_tokenizer(tiny_model_dir)) == fingerprint  # loaded again: same

    # A changed length or row cap is a miss, and tokenizes at that length.
    cache = storage.join(root, "cache", "sst2", "tokens")
    assert not token_cache.tokenized_splits(cache, snapshot, tokenizer, 32, None).hit
    assert token_cache.tokenized_splits(cache, snapshot, tokenizer, 32, None).hit
    shorter = token_cache.tokenized_splits(cache, snapshot, tokenizer, 16, None)
    assert not shorter.hit and max(len(ids) for ids in shorter.train["input_ids"]) == 16
    capped = token_cache.tokenized_splits(cache, snapshot, tokenizer, 32, 10)
    assert not capped.hit and len(capped.train) == 10
    assert token_cache.tokenized_splits(cache, snapshot, tokenizer, 32, 10).hit


def test_partial_and_corrupt_copies_are_skipped_and_rebuilt_never_overwritten(tmp_path, tokenizer, caplog):
    caplog.set_level(logging.INFO, logger="tasks.train")  # the stages' progress lines
    root = storage.normalize(str(tmp_path / "store"))
    snapshot = write_snapshot(root, "sst2", read_tsv("train", limit=60, offset=900))
    cache = storage.join(root, "cache", "sst2", "tokens")
    first = token_cache.tokenized_splits(cache, snapshot, tokenizer, 32, None)
    key_uri = storage.join(cache, first.key)

    # A writer that died before its manifest: files, no manifest. Readers never see it.
    storage.write_bytes(storage.join(key_uri, "00000000T000000Z-dead0000", "train", "state.json"), b"{")
    # The published copy gets one byte changed in place (same size: only the sha256 can tell).
    arrow = next(Path(storage.local_path(first.uri)).glob("train/*.arrow"))
    data = bytearray(arrow.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrow.write_bytes(bytes(data))
    before = _objects(key_uri)
    caplog.clear()

    rebuilt = token_cache.tokenized_splits(cache, snapshot, tokenizer, 32, None)
    out = caplog.text
    assert not rebuilt.hit and rebuilt.uri != first.uri
    assert f"skipping {first.uri}: CacheCorrupt: train/" in out and "sha256" in out
    after = _objects(key_uri)
    assert {u: e for u, e in after.items() if u in before} == before  # nothing stored was replaced
    want_train, want_holdout = _fresh(snapshot, tokenizer, 32)
    _same(rebuilt.train, want_train)

    # The new copy is read from now on; a copy cut short is caught by its size, before any download.
    again = token_cache.tokenized_splits(cache, snapshot, tokenizer, 32, None)
    assert again.hit and again.uri == rebuilt.uri
    _same(again.train, want_train)
    _same(again.holdout, want_holdout)
    for path in Path(storage.local_path(rebuilt.uri)).glob("holdout/*.arrow"):
        path.write_bytes(path.read_bytes()[:-10])
    caplog.clear()
    third = token_cache.tokenized_splits(cache, snapshot, tokenizer, 32, None)
    assert not third.hit and "CacheCorrupt: holdout/" in caplog.text


def test_two_writers_of_one_key_each_publish_a_whole_copy(tmp_path, tokenizer):
    """Two stages that miss at once both write: each its own attempt folder, create-only, manifest last; a
    reader then takes either, and both equal the fresh tokenization."""
    root = storage.normalize(str(tmp_path / "store"))
    snapshot = write_snapshot(root, "sst2", read_tsv("train", limit=40, offset=1500))
    fields = token_cache.key_fields(token_cache.snapshot_identity(snapshot),
                                    token_cache.tokenizer_fingerprint(tokenizer), 32, None)
    key_uri = storage.join(root, "cache", "sst2", "tokens", token_cache.cache_key(fields))
    train, holdout = _fresh(snapshot, tokenizer, 32)
    copies = {token_cache.publish(key_uri, fields, train, holdout) for _ in range(2)}
    assert len(copies) == 2
    manifests = [o.uri for o in storage.list_objects(key_uri) if o.uri.endswith("/manifest.json")]
    assert sorted(storage.parent(m) for m in manifests) == sorted(copies)
    found = token_cache.read(key_uri, fields)
    assert found.hit and found.uri in copies
    _same(found.train, train)
    _same(found.holdout, holdout)


def test_a_missing_snapshot_is_an_invalid_argument(tmp_path):
    from tasks.errors import SpecInvalid

    with pytest.raises(SpecInvalid, match="--snapshot"):
        token_cache.snapshot_identity(storage.normalize(str(tmp_path / "no-snapshot")))
