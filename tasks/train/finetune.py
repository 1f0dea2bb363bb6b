"""``python -m tasks finetune --run RUN_URI --snapshot SNAPSHOT_URI [--champion V]``: fine-tune the teacher.

Starts from the base model (``spec.model.base``) with a fresh head of ``len(spec.data.labels)`` classes, or, with
``train.init_from: champion`` and a champion whose labels match, from the champion's teacher (a warm start), unless
the snapshot holds a class the champion's snapshot had no rows of (``tasks/train/fresh_start.py``), and trains it
with the model's own cross-entropy. Everything else (Trainer, checkpoints and resume, DDP, outputs) is
the shared runner's (``tasks/train/runner.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tasks import cli, storage
from tasks.errors import SpecInvalid
from tasks.train.runner import Recipe, run

log = logging.getLogger(__name__)
STAGE = "finetune"


@dataclass
class FinetuneArgs:
    run: str = field(metadata={"help": "RUN_URI; the spec is RUN_URI/spec.json"})
    snapshot: str = field(metadata={"help": "SNAPSHOT_URI to train on"})
    champion: str | None = field(default=None, metadata={
        "help": "champion version URI (warm start with train.init_from: champion), or none"})


def recipe(spec, args: FinetuneArgs) -> Recipe:
    """The base model with a fresh head, or the champion's teacher when the spec asks for a warm start and the
    champion was trained on the same labels."""
    from tasks.train import fresh_start, modeling

    hp = spec.train
    fresh = None  # why a warm start the spec asks for is not made (a class the champion never saw)
    teacher_uri, version = champion_teacher(args.champion)
    if hp.init_from == "champion" and args.champion:
        if not storage.exists(storage.join(teacher_uri, "config.json")):
            raise SpecInvalid(f"--champion {args.champion}: no teacher model at {teacher_uri}")
        teacher = modeling.materialize(teacher_uri)
        saved = modeling.load_config_labels(teacher)
        unseen = fresh_start.unseen_classes(args.champion, args.snapshot, spec.data.labels)
        if saved == list(spec.data.labels) and not unseen:
            lr, lr_source = learning_rate(hp, teacher_uri, version)
            return Recipe(model=modeling.load_classifier(teacher), tokenizer_dir=teacher,
                          init_from=f"champion {version}", epochs=epochs(hp.warm_start_epochs or hp.epochs),
                          batch_size=hp.batch_size, learning_rate=lr, learning_rate_source=lr_source,
                          gpu_batch_size=hp.gpu_batch_size)
        if saved != list(spec.data.labels):
            log.info(f"[{STAGE}] champion labels {saved} differ from the spec's {spec.data.labels}: starting from the "
                     "base model instead")
        else:  # a class the champion never saw: a fresh start, said in the result
            fresh = fresh_start.unseen_reason(unseen, version)
            log.info(f"[{STAGE}] {fresh}")
    try:
        base = modeling.resolve_base_model(spec.model.base)
    except FileNotFoundError as exc:
        raise SpecInvalid(str(exc)) from None
    lr, lr_source = learning_rate(hp, teacher_uri, version)
    return Recipe(model=modeling.load_classifier(base, labels=list(spec.data.labels)), tokenizer_dir=base,
                  init_from="base", epochs=epochs(hp.epochs), batch_size=hp.batch_size, learning_rate=lr,
                  learning_rate_source=lr_source, gpu_batch_size=hp.gpu_batch_size, note=f"base {base}",
                  result={"fresh_start": fresh} if fresh else {})


# ---------------------------------------------------------------- train.learning_rate and train.epochs: auto


def champion_teacher(champion: str | None) -> tuple[str | None, str | None]:
    """(teacher URI, version) of ``--champion``, or (None, None) on a first run."""
    if not champion:
        return None, None
    return (storage.join(storage.normalize(champion), "teacher"), champion.rstrip("/").rsplit("/", 1)[-1])


def epochs(value: float | str) -> float | None:
    """The spec's epochs; None for ``auto`` (the runner derives them from the train rows)."""
    from tasks.train import defaults

    return None if value == defaults.AUTO else float(value)


def learning_rate(hp, teacher_uri: str | None, version: str | None) -> tuple[float | None, str]:
    """(rate, where it came from): the spec's number; with ``auto``, the rate the champion's teacher was trained
    with; None (the runner searches) when there is no champion or it records no rate."""
    from tasks.train import defaults

    if hp.learning_rate != defaults.AUTO:
        return float(hp.learning_rate), "spec"
    recorded = defaults.recorded_learning_rate(teacher_uri) if teacher_uri else None
    if recorded is not None:
        return recorded, f"champion {version}"
    return None, "search"


def main(argv: list[str]) -> int:
    args = cli.parse(FinetuneArgs, argv, prog="python -m tasks finetune", description=__doc__.splitlines()[0])
    return run(STAGE, args, recipe)
