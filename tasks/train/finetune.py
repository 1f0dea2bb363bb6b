"""``python -m tasks finetune --run RUN_URI --snapshot SNAPSHOT_URI``: fine-tune the teacher classifier.

Starts from the base model (``spec.model.base``) with a fresh head of ``len(spec.data.labels)`` classes, or, with
``train.init_from: champion`` and a champion, from the champion's teacher (a warm start), and trains
on the snapshot's train split with the HF Trainer (dynamic padding, length-grouped batches, bf16/TF32/fused
AdamW on a GPU), early-stops on the holdout split, and resumes from the newest checkpoint in storage on a retry.
Under ``torchrun --nproc_per_node=N -m tasks finetune ...`` the Trainer runs DDP; only rank 0 writes outputs.
"""

from __future__ import annotations

import argparse

from tasks import results, storage
from tasks.spec import load_spec

STAGE = "finetune"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tasks finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="RUN_URI; the spec is RUN_URI/spec.json")
    parser.add_argument("--snapshot", required=True, help="SNAPSHOT_URI to train on")
    parser.add_argument("--champion", default="none",
                        help="champion version URI (warm start with train.init_from: champion), or none")
    return parser.parse_args(argv)


def starting_point(spec, champion_uri: str):
    """(model dir, labels for a fresh head or None to keep the saved one, epochs, description)."""
    from tasks.train import modeling

    hp = spec.train
    if hp.init_from == "champion" and champion_uri.lower() != "none":
        teacher = modeling.materialize(storage.join(champion_uri, "teacher"))
        saved = modeling.load_config_labels(teacher)
        if saved == list(spec.data.labels):
            return teacher, None, hp.warm_start_epochs or hp.epochs, f"champion {champion_uri.rsplit('/', 1)[-1]}"
        print(f"[{STAGE}] champion labels {saved} differ from the spec's {spec.data.labels}: starting from the base "
              "model instead", flush=True)
    return modeling.resolve_base_model(spec.model.base), list(spec.data.labels), hp.epochs, "base"


def main(argv: list[str]) -> int:
    from transformers import Trainer, set_seed

    from tasks.train import modeling, training

    training.setup_logging()
    args = parse_args(argv)
    spec = load_spec(storage.join(storage.normalize(args.run), "spec.json"))
    paths = training.stage_paths(spec, args.run, STAGE)
    hp = spec.train

    train_rows, holdout_rows = training.load_splits(args.snapshot, hp.max_train_rows)
    base, fresh_head_labels, epochs, init_from = starting_point(spec, args.champion)
    tokenizer = modeling.load_tokenizer(base)
    train_set = training.tokenize(tokenizer, train_rows["text"], train_rows["label"], spec.model.max_length)
    holdout_set = training.tokenize(tokenizer, holdout_rows["text"], holdout_rows["label"], spec.model.max_length)

    targs = training.training_arguments(
        paths.scratch, epochs=epochs, batch_size=hp.batch_size, learning_rate=hp.learning_rate,
        weight_decay=hp.weight_decay, warmup_ratio=hp.warmup_ratio,
        gradient_accumulation_steps=hp.gradient_accumulation_steps, eval_steps=hp.eval_steps,
        checkpoint_steps=hp.checkpoint_steps, seed=hp.seed,
    )
    set_seed(hp.seed)  # the fresh head's initialization
    model = modeling.load_classifier(base, labels=fresh_head_labels)
    progress = training.ProgressLogger(STAGE, hp.batch_size * hp.gradient_accumulation_steps * targs.world_size)
    trainer = training.make_trainer(
        Trainer, args=targs, tokenizer=tokenizer, paths=paths, progress=progress,
        patience=hp.early_stopping_patience, model=model, train_dataset=train_set, eval_dataset=holdout_set,
    )
    print(f"[{STAGE}] {len(train_set)} train rows, {len(holdout_set)} holdout rows, base {base}, "
          f"init from {init_from}, device {targs.device}, bf16={targs.bf16}, optim={targs.optim}, world_size={targs.world_size}", flush=True)
    outcome = training.train_with_resume(trainer, paths, progress)

    if trainer.is_world_process_zero():
        training.publish_outputs(trainer, tokenizer, paths, outcome)
        result = training.result_json(outcome, paths, len(train_set), base_model=spec.model.base)
        result["init_from"] = init_from
        results.emit(result, paths.out_uri)
    return 0
