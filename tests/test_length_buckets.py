"""Length grouping (tasks.train.length_buckets.LengthBucketSampler): batches of similar length, in random order,
seeded, and used by the stages' Trainer for every epoch."""

from __future__ import annotations

import random

import pytest

from tasks.train.length_buckets import LengthBucketSampler


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def padded_tokens(lengths, batches) -> int:
    return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)


def test_batches_cover_every_row_once_with_little_padding_in_random_order():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(1000)]
    sampler = LengthBucketSampler(lengths, batch_size=32, seed=7, mega_batches=10)
    batches = sampler.batches()

    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert list(sampler) == [i for b in batches for i in b]
    assert [len(b) for b in batches[:-1]] == [32] * 31 and len(batches[-1]) == 1000 - 31 * 32

    # Less than half the padding of random batches of the same size.
    shuffled = list(range(1000))
    rng.shuffle(shuffled)
    random_batches = [shuffled[i:i + 32] for i in range(0, 1000, 32)]
    assert padded_tokens(lengths, batches) - sum(lengths) < 0.5 * (padded_tokens(lengths, random_batches) - sum(lengths))

    # transformers' LengthGroupedSampler runs each mega-batch from long to short; here the batch order is random.
    longest = [max(lengths[i] for i in b) for b in batches[:-1]]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    rises = sum(b > a for a, b in zip(longest, longest[1:]))
    assert 0.2 < rises / (len(longest) - 1) < 0.8


def test_order_depends_on_seed_and_epoch_only():
    lengths = [i % 37 + 1 for i in range(300)]
    first = LengthBucketSampler(lengths, batch_size=16, seed=42).batches()
    assert LengthBucketSampler(lengths, batch_size=16, seed=42).batches() == first
    assert LengthBucketSampler(lengths, batch_size=16, seed=43).batches() != first
    next_epoch = LengthBucketSampler(lengths, batch_size=16, seed=42)
    next_epoch.set_epoch(1)
    assert next_epoch.batches() != first


def test_the_stages_trainer_uses_it_for_every_epoch(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import Trainer

    from tasks.train import arguments, modeling, stage_trainer, train_data

    seen: list[tuple[int, int, int]] = []  # (epoch, batch size, seed) of each epoch's sampler
    original = LengthBucketSampler.set_epoch
    monkeypatch.setattr(LengthBucketSampler, "set_epoch",
                        lambda self, epoch: (seen.append((epoch, self.batch_size, self.seed)), original(self, epoch))[1])

    tokenizer = modeling.load_tokenizer(tiny_model_dir)
    texts = ["short", "a somewhat longer row of text", "mid length row", "one more row here", "x y", "z"] * 4
    data = train_data.tokenize(tokenizer, texts, [i % 2 for i in range(len(texts))], 64)
    common = dict(epochs=2, batch_size=4, learning_rate=1e-3, weight_decay=0.0, warmup_ratio=0.0,
                  gradient_accumulation_steps=1, eval_steps=1000, checkpoint_steps=1000, seed=3)

    def train(**kwargs):
        args = arguments.training_arguments(tmp_path / "out", **common, save_strategy="no", eval_strategy="no",
                                            load_best_model_at_end=False, **kwargs)
        trainer = stage_trainer.quiet_trainer(Trainer, model=modeling.load_classifier(tiny_model_dir), args=args,
                                              train_dataset=data, processing_class=tokenizer)
        trainer.train()
        return trainer

    assert train().state.global_step == 12
    assert sorted(set(seen)) == [(0, 4, 3), (1, 4, 3)]  # the stages' batch size and seed, a new order each epoch

    seen.clear()
    assert train(group_by_length=False).state.global_step == 12
    assert seen == []  # random batches: the Trainer's own sampler
