"""The teacher cache (tasks/train/teacher_cache.py, student.teacher_cache): the loss from cached teacher outputs
equals the live teacher's, batch by batch; rows are matched by an explicit index and checked; the rule for when
it is used; and the distill stage trains with it end to end, reading the fine-tune stage's token cache."""

from __future__ import annotations

import logging
import numpy as np
import pytest
import torch

from bench.common import make_run, read_tsv, write_snapshot
from tasks import storage
from tasks.train import arguments, stage_trainer, teacher_cache, train_data
from tasks.train.distill import DistillTrainer, hidden_pairs, init_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return tiny_teacher


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def train_set(tokenizer):
    rows = read_tsv("train", limit=40, offset=2500)
    return train_data.tokenize(tokenizer, [t for t, _ in rows], [y for _, y in rows], 48)


def _trainer(teacher, tokenizer, data, tmp_path, outputs=None):
    from transformers import DataCollatorWithPadding

    args = arguments.training_arguments(tmp_path, epochs=1, batch_size=8, learning_rate=1e-3, weight_decay=0.0,
                                        warmup_ratio=0.0, gradient_accumulation_steps=1, eval_steps=100,
                                        checkpoint_steps=100, seed=3, save_strategy="no", eval_strategy="no",
                                        load_best_model_at_end=False)
    student, mapping = init_student(teacher, 2)
    # The stages' Trainer: batches from the seeded LengthBucketSampler, so both trainers see the same ones.
    return stage_trainer.quiet_trainer(DistillTrainer, model=student, args=args, train_dataset=data,
                                       data_collator=DataCollatorWithPadding(tokenizer), teacher=teacher, alpha=0.3,
                                       temperature=2.0, hidden_weight=1.0, mapping=mapping, teacher_outputs=outputs)


def test_the_cached_teachers_loss_equals_the_live_teachers_batch_by_batch(teacher, tokenizer, train_set, tmp_path):
    import copy

    teacher = copy.deepcopy(teacher)
    with torch.no_grad():  # a random-init head gives near-equal logits for every row: spread them
        teacher.classifier.weight.mul_(100.0)
    layers = [t for _, t in hidden_pairs([1, 3])]
    outputs = teacher_cache.compute(teacher_cache.for_device(teacher, torch.device("cpu")), train_set, tokenizer,
                                    layers=layers, batch_size=16, device=torch.device("cpu"))
    assert outputs.hidden.shape == (2, sum(len(ids) for ids in train_set["input_ids"]), teacher.config.hidden_size)
    indexed = train_set.add_column("row_index", list(range(len(train_set))))
    cached = _trainer(teacher, tokenizer, indexed, tmp_path / "cached", outputs)
    live = _trainer(teacher, tokenizer, train_set, tmp_path / "live")
    assert cached.args.remove_unused_columns is False  # row_index reaches the collator
    live.model.load_state_dict(cached.model.state_dict())
    cached.model.train()
    live.model.train()

    batches = 0
    for with_cache, without in zip(cached.get_train_dataloader(), live.get_train_dataloader()):
        assert "row_index" not in with_cache and with_cache["teacher_hidden"].shape[:2] == (2, len(with_cache["labels"]))
        assert torch.equal(with_cache["input_ids"], without["input_ids"])  # the same rows, in the same order
        # The gathered logits and hidden states are the live teacher's for these rows (at every real token;
        # zero at padding).
        with torch.no_grad():
            want = teacher(input_ids=without["input_ids"], attention_mask=without["attention_mask"],
                           token_type_ids=without["token_type_ids"], output_hidden_states=True)
        states = want.hidden_states
        assert torch.allclose(with_cache["teacher_logits"], want.logits, rtol=0, atol=1e-4)
        mask = without["attention_mask"].bool()
        for j, layer in enumerate(layers):
            assert torch.allclose(with_cache["teacher_hidden"][j][mask], states[layer][mask], atol=1e-5)
            assert not with_cache["teacher_hidden"][j][~mask].any()
        torch.manual_seed(batches)  # the same dropout masks in the student on both sides
        loss_cached = cached.compute_loss(cached.model, dict(with_cache))
        torch.manual_seed(batches)
        loss_live = live.compute_loss(live.model, dict(without))
        assert loss_cached.item() == pytest.approx(loss_live.item(), rel=1e-5, abs=1e-6)
        batches += 1
    assert batches == len(train_set) // 8


def test_rows_are_found_by_index_and_a_wrong_row_is_refused(teacher, tokenizer, train_set):
    from transformers import DataCollatorWithPadding

    outputs = teacher_cache.compute(teacher, train_set, tokenizer, layers=[], batch_size=7,
                                    device=torch.device("cpu"))
    assert outputs.hidden is None and outputs.logits.shape == (len(train_set), 2)
    collate = teacher_cache.CachedTeacherCollator(DataCollatorWithPadding(tokenizer), outputs)
    rows = [dict(train_set[i], row_index=i) for i in (5, 0, 17)]
    batch = collate(rows)
    with torch.no_grad():
        want = teacher(**{k: v for k, v in DataCollatorWithPadding(tokenizer)(
            [train_set[i] for i in (5, 0, 17)]).items() if k != "labels"}).logits
    assert torch.allclose(batch["teacher_logits"], want, atol=1e-5)
    # An evaluation batch (no row_index) passes through untouched.
    assert "teacher_logits" not in collate([train_set[0], train_set[1]])
    swapped = [dict(train_set[5], row_index=0), dict(train_set[0], row_index=5)]
    with pytest.raises(RuntimeError, match=r"rows \[0, 5\].*not the rows the cache was computed for"):
        collate(swapped)


def test_a_bf16_teacher_feeds_the_fp32_students_loss_live_and_cached(teacher, tokenizer, train_set, tmp_path):
    """What a CUDA GPU runs, on CPU: the teacher with bf16 weights (teacher_cache.for_device casts it there), its
    bf16 logits and hidden states cast to the student's fp32 in the loss, and a cache kept in bf16 (2 bytes a
    value). Both paths give the fp32 teacher's loss within bf16 rounding, and the same loss as each other."""
    import copy

    bf16_teacher = copy.deepcopy(teacher).to(torch.bfloat16)
    layers = [t for _, t in hidden_pairs([1, 3])]
    outputs = teacher_cache.compute(bf16_teacher, train_set, tokenizer, layers=layers, batch_size=16,
                                    device=torch.device("cpu"))
    assert outputs.hidden.dtype == torch.bfloat16 and outputs.logits.dtype == torch.float32
    assert outputs.hidden.element_size() == 2
    indexed = train_set.add_column("row_index", list(range(len(train_set))))
    cached = _trainer(bf16_teacher, tokenizer, indexed, tmp_path / "cached", outputs)
    live = _trainer(bf16_teacher, tokenizer, train_set, tmp_path / "live")
    fp32 = _trainer(teacher, tokenizer, train_set, tmp_path / "fp32")
    assert next(live.teacher.parameters()).dtype == torch.bfloat16  # for_device on CPU keeps the given dtype
    for trainer in (live, fp32):
        trainer.model.load_state_dict(cached.model.state_dict())
    with_cache = next(iter(cached.get_train_dataloader()))
    without = next(iter(live.get_train_dataloader()))
    assert with_cache["teacher_hidden"].dtype == torch.bfloat16

    def loss(trainer, batch):
        trainer.model.train()  # hidden-state MSE in the loss; the same dropout masks by the seed
        torch.manual_seed(0)
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, dict(batch))

    got_cached, got_live, want = loss(cached, with_cache), loss(live, without), loss(fp32, without)
    assert got_cached.dtype == got_live.dtype == torch.float32
    assert got_cached.item() == pytest.approx(got_live.item(), rel=1e-3)
    assert got_live.item() == pytest.approx(want.item(), rel=5e-2)


def test_when_the_cache_is_used():
    fits = dict(need_bytes=10 * 2**20, budget_bytes=100 * 2**20)
    assert teacher_cache.decide("auto", cuda=False, epochs=3, **fits) == (False, "auto: off on CPU")
    assert teacher_cache.decide("auto", cuda=True, epochs=3, **fits)[0]
    # Below 3 epochs the pass, store and gather cost about what the cached steps save (H100, docs/benchmarks.md).
    assert not teacher_cache.decide("auto", cuda=True, epochs=2, **fits)[0]
    assert not teacher_cache.decide("auto", cuda=True, epochs=1, **fits)[0]
    assert teacher_cache.decide("on", cuda=False, epochs=1, **fits)[0]
    assert not teacher_cache.decide("off", cuda=True, epochs=5, **fits)[0]
    too_big = dict(need_bytes=200 * 2**20, budget_bytes=100 * 2**20)
    for setting in ("auto", "on"):
        use, why = teacher_cache.decide(setting, cuda=True, epochs=3, **too_big)
        assert not use and why.startswith("does not fit: 200.0 MiB of a 100 MiB budget")
    # tokens x layers x hidden x 2 bytes (bf16), plus the logits: full SST-2 with MiniLM's 3 mapped layers.
    assert teacher_cache.estimate_bytes(67_349 * 13, 67_349, 3, 384, 2, 2) == pytest.approx(2.02e9, rel=0.01)
    assert 0 < teacher_cache.memory_budget_bytes(2) < teacher_cache.memory_budget_bytes(1)


def test_the_distill_stage_trains_on_cached_teacher_outputs(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """finetune, then distill twice on its teacher: the spec's default (auto: off on CPU, the live teacher) and
    with the cache forced on. Both read the fine-tune stage's token cache; their training losses agree."""
    caplog.set_level(logging.INFO, logger="tasks.train")  # the stages' progress lines
    from tasks.train import distill, finetune

    root = storage.normalize(str(tmp_path / "store"))
    settings = {"model.base": str(tiny_model_dir), "model.max_length": 32, "train.epochs": 1, "train.batch_size": 16,
                "train.learning_rate": 1e-3, "train.eval_steps": 5, "train.checkpoint_steps": 5,
                "student.layers": 2, "student.epochs": 2, "student.batch_size": 16, "student.hidden_mse_weight": 0.5,
                "student.export": []}
    snapshot = write_snapshot(root, "sst2", read_tsv("train", limit=120, offset=7000))
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch"))
    run = make_run(root, "teacher", settings)
    assert finetune.main(["--run", run, "--snapshot", snapshot]) == 0
    teacher_result = storage.read_json(storage.join(run, "finetune", "result.json"))
    assert teacher_result["token_cache"] == "miss"

    results = {}
    for setting in ("auto", "on"):
        student_run = make_run(root, f"student-{setting}", {**settings, "student.teacher_cache": setting})
        caplog.clear()
        assert distill.main(["--run", student_run, "--snapshot", snapshot, "--teacher",
                             teacher_result["model_uri"]]) == 0
        out = caplog.text
        assert "[distill] token cache hit" in out
        results[setting] = storage.read_json(storage.join(student_run, "distill", "result.json"))
    live, cached = results["auto"], results["on"]
    assert live["teacher_cache"] == "off: auto: off on CPU" and live["teacher_pass_seconds"] is None
    assert cached["teacher_cache"].startswith(f"on: {cached['train_rows']} rows") and cached["teacher_pass_seconds"] > 0
    assert live["token_cache"] == cached["token_cache"] == "hit"
    assert cached["global_step"] == live["global_step"] > 0

    def losses(result):
        history = storage.read_json(result["metrics_uri"])["log_history"]
        return [e["loss"] for e in history if "loss" in e]

    assert len(losses(cached)) == len(losses(live)) > 2
    assert np.allclose(losses(cached), losses(live), rtol=1e-3)
    assert cached["metrics"]["accuracy"] == pytest.approx(live["metrics"]["accuracy"], abs=0.05)


def test_a_crashed_distill_with_the_cache_resumes_to_the_uninterrupted_student(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    """Distill with teacher_cache: on dies on its 12th training batch; the retry (a fresh scratch folder, as a new
    pod) reads the teacher outputs the crashed attempt stored instead of making the pass again, resumes from the
    step-10 checkpoint in storage, and ends with the weights of a run that was never interrupted and made its own
    pass (in another store), bit for bit (CPU, same seed)."""
    from safetensors.torch import load_file

    from tasks.train import distill, finetune

    root = storage.normalize(str(tmp_path / "store"))
    settings = {"model.base": str(tiny_model_dir), "model.max_length": 32, "train.epochs": 1, "train.batch_size": 16,
                "train.learning_rate": 1e-3, "train.eval_steps": 5, "train.checkpoint_steps": 5,
                "train.early_stopping_patience": 100, "student.layers": 2, "student.epochs": 2,
                "student.batch_size": 16, "student.export": [], "student.teacher_cache": "on"}
    snapshot = write_snapshot(root, "sst2", read_tsv("train", limit=120, offset=8000))
    monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / "scratch-teacher"))
    teacher_run = make_run(root, "teacher", settings)
    assert finetune.main(["--run", teacher_run, "--snapshot", snapshot]) == 0
    teacher_uri = storage.join(teacher_run, "finetune", "model")

    def distill_in(run: str, scratch: str) -> dict:
        monkeypatch.setenv("RETRAIN_SCRATCH_DIR", str(tmp_path / scratch))
        assert distill.main(["--run", run, "--snapshot", snapshot, "--teacher", teacher_uri]) == 0
        return storage.read_json(storage.join(run, "distill", "result.json"))

    # The uninterrupted run in a store of its own: its teacher cache is its own pass, not the crashed run's.
    reference = distill_in(make_run(storage.normalize(str(tmp_path / "store-ref")), "uninterrupted", settings),
                           "scratch-ref")
    assert reference["resumed_from_step"] == 0 and reference["global_step"] > 12
    assert reference["teacher_cache_reused"] is False and reference["teacher_pass_seconds"] > 0

    real_call = teacher_cache.CachedTeacherCollator.__call__
    train_batches = []

    def dies_on_the_12th_train_batch(self, features):
        if features and "row_index" in features[0]:
            train_batches.append(len(features))
            if len(train_batches) == 12:
                raise RuntimeError("simulated crash")
        return real_call(self, features)

    monkeypatch.setattr(teacher_cache.CachedTeacherCollator, "__call__", dies_on_the_12th_train_batch)
    crashed = make_run(root, "crashed", settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        distill_in(crashed, "scratch-crash")
    assert not storage.exists(storage.join(crashed, "distill", "result.json"))
    stored = storage.list_objects(storage.join(root, "cache", "sst2", "teacher"))
    assert [o.uri.rsplit("/", 1)[-1] for o in stored] == ["manifest.json", "outputs.safetensors"]
    monkeypatch.setattr(teacher_cache.CachedTeacherCollator, "__call__", real_call)

    def no_pass(*args, **kwargs):
        raise AssertionError("the retry ran the teacher pass again")

    monkeypatch.setattr(teacher_cache, "compute", no_pass)
    retry = distill_in(crashed, "scratch-retry")
    assert retry["teacher_cache_reused"] is True and retry["teacher_pass_seconds"] is None
    assert retry["teacher_cache_uri"] == stored[0].uri.rsplit("/", 1)[0]
    assert retry["resumed_from_step"] == 10 and retry["global_step"] == reference["global_step"]
    assert retry["metrics"] == reference["metrics"]
    got = load_file(str(storage.local_path(retry["model_uri"]) / "model.safetensors"))
    want = load_file(str(storage.local_path(reference["model_uri"]) / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_the_train_rows_are_read_once_as_they_are_in_the_split(train_set):
    """read_rows: one Arrow read per input column gives every row's token ids, lengths and fingerprints, also for
    a ``select``-ed split (an index mapping over the Arrow table)."""
    for split in (train_set, train_set.select([7, 3, 30, 0])):
        rows = teacher_cache.read_rows(split)
        want = [list(ids) for ids in split["input_ids"]]
        assert len(rows) == len(split) and rows.tokens == sum(len(ids) for ids in want)
        assert [f["input_ids"] for f in rows.features(range(len(rows)))] == want
        assert set(rows.columns) == {"input_ids", "token_type_ids", "attention_mask"}
        assert rows.crc.tolist() == [teacher_cache.row_crc(ids) for ids in want]
    assert teacher_cache.read_rows(train_set.select([1, 2])).sha256 != teacher_cache.read_rows(
        train_set.select([2, 1])).sha256


def _fields(teacher_dir, rows, layers):
    return teacher_cache.key_fields(teacher=teacher_cache.model_identity(str(teacher_dir), teacher_dir),
                                    snapshot_id="snap-1", rows=rows, layers=layers, dtype="float32", max_length=48,
                                    classes=2)


def test_the_stored_cache_is_reused_verified_and_rebuilt_never_replaced(teacher, tokenizer, train_set, tmp_path,
                                                                       tiny_model_dir, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="tasks.train")  # the stages' progress lines
    rows, layers = teacher_cache.read_rows(train_set), [2, 4]
    store = storage.normalize(str(tmp_path / "store"))

    def get(rows=rows, layers=layers):
        return teacher_cache.stored_or_computed(teacher, rows, tokenizer, cache_uri=store,
                                                fields=_fields(tiny_model_dir, rows, layers), layers=layers,
                                                batch_size=8, device=torch.device("cpu"))

    first = get()
    assert not first.reused and first.uri and first.seconds > 0
    second = get()  # a retry: the stored copy, bit for bit, and no pass
    assert second.reused and second.uri == first.uri and second.seconds == 0
    assert torch.equal(second.logits, first.logits) and torch.equal(second.hidden, first.hidden)
    assert second.hidden.dtype == first.hidden.dtype and np.array_equal(second.offsets, first.offsets)

    # A partial upload (outputs without a manifest) is ignored; a corrupt copy (same size, one byte changed) is
    # skipped, the pass runs again and its outputs go to a new attempt; the corrupt file stays as it was.
    outputs_uri = storage.join(first.uri, "outputs.safetensors")
    corrupt = bytearray(storage.read_bytes(outputs_uri))
    corrupt[-5] ^= 0xFF
    stored_path = storage.local_path(outputs_uri)
    stored_path.chmod(0o644)
    stored_path.write_bytes(bytes(corrupt))
    partial = storage.join(storage.parent(first.uri), "00000000T000000Z-partial")
    storage.write_bytes(storage.join(partial, "outputs.safetensors"), b"cut short")
    caplog.clear()
    rebuilt = get()
    # the warning a person reads is the product; the rebuild is checked below
    assert f"teacher cache: skipping {first.uri}: CacheCorrupt" in caplog.text
    assert not rebuilt.reused and rebuilt.uri not in (first.uri, partial)
    assert torch.equal(rebuilt.logits, first.logits)
    assert storage.read_bytes(outputs_uri) == bytes(corrupt)
    assert get().uri == rebuilt.uri  # the good copy is read from now on

    # The key follows the rows and the mapped layers: other rows or layers make their own pass.
    fewer = teacher_cache.read_rows(train_set.select(range(20)))
    assert not get(rows=fewer).reused and not get(layers=[4]).reused
    assert get(layers=[4]).hidden.shape[0] == 1
    logits_only = get(layers=[])
    assert logits_only.hidden is None and not logits_only.reused and get(layers=[]).reused

    # Over STORE_MAX_BYTES the outputs stay in memory: nothing stored, a retry makes the pass again.
    monkeypatch.setattr(teacher_cache, "STORE_MAX_BYTES", 1024)
    big = teacher_cache.read_rows(train_set.select(range(30)))
    caplog.clear()
    assert get(rows=big).uri is None and not get(rows=big).reused
    assert "teacher cache not stored:" in caplog.text


def test_the_stored_cache_on_s3_is_read_back_in_bf16(s3_env, teacher, tokenizer, train_set, tiny_model_dir):
    """On S3 (moto over HTTP), with a bf16 teacher as a GPU runs it: the copy is written create-only, its manifest
    last, and read back with the same bf16 hidden states."""
    import copy

    rows, layers = teacher_cache.read_rows(train_set), [2]
    bf16 = copy.deepcopy(teacher).to(torch.bfloat16)
    fields = {**_fields(tiny_model_dir, rows, layers), "dtype": "bfloat16"}
    cache = storage.join(s3_env, "cache", "sst2", "teacher")

    def get():
        return teacher_cache.stored_or_computed(bf16, rows, tokenizer, cache_uri=cache, fields=fields, layers=layers,
                                                batch_size=16, device=torch.device("cpu"))

    first, second = get(), get()
    assert first.uri.startswith(cache + "/") and not first.reused
    assert second.reused and second.uri == first.uri and second.hidden.dtype == torch.bfloat16
    assert torch.equal(second.hidden, first.hidden) and torch.equal(second.logits, first.logits)
    names = sorted(o.uri.rsplit("/", 1)[-1] for o in storage.list_objects(cache))
    assert names == ["manifest.json", "outputs.safetensors"]


def test_the_teachers_identity_follows_its_weights_not_its_tokenizer_files(tiny_model_dir, tmp_path):
    import shutil

    from tasks.train.modeling import load_classifier, load_tokenizer, save_model

    same = shutil.copytree(tiny_model_dir, tmp_path / "same")
    (same / "tokenizer_config.json").write_text((same / "tokenizer_config.json").read_text() + "\n")  # not a weight
    model = load_classifier(tiny_model_dir)
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    other = save_model(model, load_tokenizer(tiny_model_dir), tmp_path / "other")
    base = teacher_cache.model_identity("s3://b/teacher", tiny_model_dir)["sha256"]
    assert teacher_cache.model_identity("s3://b/teacher", same)["sha256"] == base
    assert teacher_cache.model_identity("s3://b/teacher", other)["sha256"] != base
