"""``python -m tasks distill --run RUN_URI --snapshot SNAPSHOT_URI --teacher TEACHER_MODEL_URI [--champion V]``.

Distils the fine-tuned teacher into a smaller student, DistilBERT-style: the student is the teacher with fewer
layers, initialized from every k-th teacher layer (plus the teacher's embeddings, pooler and head) or, with
``student.init_from: champion``, from the champion's student, and trained on

    loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)  [+ w * hidden-state MSE]

(Hinton et al. 2015; ``*_T`` = softmax at temperature T; T^2 keeps the soft-target gradients at the hard-label
scale). The shared runner (``tasks/train/runner.py``) does the rest, as for the fine-tune stage: Trainer,
checkpoints and resume, DDP, outputs; optional CPU exports (``spec.student.export``: int8 dynamic quantization,
ONNX, ONNX int8) go to ``RUN_URI/distill/<format>/``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, Trainer

from tasks import cli, storage
from tasks.errors import SpecInvalid
from tasks.train.runner import Prepared, Recipe, run

log = logging.getLogger(__name__)
STAGE = "distill"
_LAYER_KEY = re.compile(r"(\.layer\.)(\d+)(\.)")


@dataclass
class DistillArgs:
    run: str = field(metadata={"help": "RUN_URI; the spec is RUN_URI/spec.json"})
    snapshot: str = field(metadata={"help": "SNAPSHOT_URI to train on"})
    teacher: str = field(metadata={"help": "the fine-tuned teacher's model folder (URI)"})
    champion: str | None = field(default=None, metadata={
        "help": "champion version URI (warm start with student.init_from: champion), or none"})


# ---------------------------------------------------------------- initialisation: the student's starting weights


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer copied into each student layer: every k-th, ending at the teacher's last layer
    (6 -> 3: [1, 3, 5]; 12 -> 6: [1, 3, 5, 7, 9, 11]), so the top layer that feeds the copied pooler and
    head is the teacher's own top layer."""
    if not 1 <= student_layers <= teacher_layers:
        raise SpecInvalid(f"student.layers must be in 1..{teacher_layers} (teacher layers), got {student_layers}")
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def init_student(teacher, student_layers: int):
    """A copy of the teacher with ``student_layers`` encoder layers, each from ``layer_map``."""
    mapping = layer_map(teacher.config.num_hidden_layers, student_layers)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = student_layers
    student = AutoModelForSequenceClassification.from_config(config)
    source = teacher.state_dict()
    wanted = {}
    for key in student.state_dict():
        match = _LAYER_KEY.search(key)
        teacher_key = key if match is None else _LAYER_KEY.sub(rf"\g<1>{mapping[int(match.group(2))]}\g<3>", key, 1)
        wanted[key] = source[teacher_key]
    student.load_state_dict(wanted, strict=True)
    return student, mapping


def starting_student(spec, teacher, champion_uri: str | None):
    """(student, layer map, description). With ``student.init_from: champion`` and a champion whose student has
    the spec's layers and labels and the teacher's architecture, that student (a warm start: its errors stay
    close to the serving model's, which also narrows the gate's paired confidence interval); otherwise every
    k-th teacher layer."""
    from tasks.train import modeling

    st = spec.student
    if st.init_from == "champion" and cli.optional(champion_uri):
        folder = modeling.materialize(storage.join(champion_uri, "student"))
        champion = modeling.load_classifier(folder)
        layers, labels = champion.config.num_hidden_layers, modeling.load_config_labels(folder)
        # A new model.base in the spec changes the width or vocabulary: hidden-state MSE and the teacher's
        # tokenizer would no longer fit the old student.
        shape = {k: getattr(champion.config, k, None) for k in ("model_type", "hidden_size", "vocab_size")}
        want = {k: getattr(teacher.config, k, None) for k in shape}
        if layers == st.layers and labels == list(spec.data.labels) and shape == want:
            mapping = layer_map(teacher.config.num_hidden_layers, st.layers)
            return champion, mapping, f"champion {champion_uri.rstrip('/').rsplit('/', 1)[-1]}"
        log.info(f"[{STAGE}] the champion's student ({layers} layers, labels {labels}, {shape}) does not fit the "
                 f"spec and teacher ({st.layers} layers, labels {list(spec.data.labels)}, {want}): initializing from "
                 "the teacher")
    student, mapping = init_student(teacher, st.layers)
    return student, mapping, "teacher layers"


# ---------------------------------------------------------------- the loss


def distillation_loss(student_logits, teacher_logits, labels, *, alpha: float, temperature: float,
                      student_hidden=None, teacher_hidden=None, hidden_weight: float = 0.0,
                      attention_mask=None, label_loss=None) -> dict[str, Any]:
    """{loss, ce, kl, hidden}: alpha*CE + (1-alpha)*T^2*KL(teacher_T || student_T) + hidden_weight*MSE.

    ``student_hidden``/``teacher_hidden`` are aligned lists of hidden states; the MSE is over real tokens.
    ``label_loss(logits, labels)``: the CE term's loss instead of the plain cross-entropy (the fine-tune's class
    balancing on a skewed mix, ``class_balance.label_loss``)."""
    ce = label_loss(student_logits, labels) if label_loss is not None else F.cross_entropy(student_logits, labels)
    t = temperature
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)  # a bf16 teacher's (a no-op in fp32)
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                  reduction="batchmean", log_target=True) * (t * t)
    loss = alpha * ce + (1 - alpha) * kl
    hidden = torch.zeros((), device=student_logits.device)
    if hidden_weight > 0 and student_hidden is not None:
        mask = attention_mask.unsqueeze(-1).to(student_logits.dtype) if attention_mask is not None else None
        terms = []
        for s, h in zip(student_hidden, teacher_hidden):
            err = (s - h.detach().to(s.dtype)).pow(2)
            terms.append((err * mask).sum() / (mask.sum() * s.shape[-1]) if mask is not None else err.mean())
        hidden = torch.stack(terms).mean()
        loss = loss + hidden_weight * hidden
    return {"loss": loss, "ce": ce.detach(), "kl": kl.detach(), "hidden": hidden.detach()}


def hidden_pairs(mapping: list[int]) -> list[tuple[int, int]]:
    """(student, teacher) ``hidden_states`` indices: student state i+1 (after student layer i) imitates the
    teacher's after layer mapping[i]."""
    return [(i + 1, t + 1) for i, t in enumerate(mapping)]


class DistillTrainer(Trainer):
    """The Trainer with the distillation loss; the teacher is frozen, in eval mode, never wrapped in DDP.

    On a CUDA GPU the teacher runs with bf16 weights (cast once) under ``torch.inference_mode``. With
    ``teacher_outputs`` (``tasks.train.teacher_cache``), training batches carry the teacher's cached logits and
    hidden states and the teacher does not run. Evaluation batches run it once each (``teacher_eval_logits``)."""

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean

    def __init__(self, *args, teacher, alpha: float, temperature: float, hidden_weight: float,
                 mapping: list[int], teacher_outputs=None, label_loss=None, **kwargs):
        from tasks.train import teacher_cache

        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # transformers < 5.23's loss_is_scaled_for_ga (StageTrainer)
        self.teacher = teacher_cache.for_device(teacher, self.args.device)
        self.alpha, self.temperature, self.hidden_weight = alpha, temperature, hidden_weight
        self.hidden_pairs = hidden_pairs(mapping)
        self.label_loss = label_loss  # train.class_weights on a skewed mix: the CE term balanced as the teacher's
        self.teacher_outputs = teacher_outputs
        if teacher_outputs is not None:
            # The train split's row_index column must reach the collator; the Trainer would drop it as no
            # argument of the model's forward. The split holds only the model's inputs, labels and row_index.
            self.args.remove_unused_columns = False
            self.data_collator = teacher_cache.CachedTeacherCollator(self.data_collator, teacher_outputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        cached_logits, cached_hidden = inputs.pop("teacher_logits", None), inputs.pop("teacher_hidden", None)
        want_hidden = self.hidden_weight > 0 and model.training  # eval would gather every hidden state
        if cached_logits is not None:
            teacher_logits = cached_logits
            teacher_hidden = list(cached_hidden) if want_hidden else None
        elif not model.training:
            teacher_logits, teacher_hidden = self.teacher_eval_logits(inputs, len(labels)), None
        else:
            # Live teacher passes of training steps: the distillation's cost (teacher samples).
            self.teacher_samples = getattr(self, "teacher_samples", 0) + len(labels)
            teacher_out = self.run_teacher(inputs, labels.device, want_hidden)
            teacher_logits = teacher_out.logits
            teacher_hidden = [teacher_out.hidden_states[t] for _, t in self.hidden_pairs] if want_hidden else None
        student_out = model(**inputs, output_hidden_states=want_hidden)
        parts = distillation_loss(
            student_out.logits, teacher_logits, labels, alpha=self.alpha, temperature=self.temperature,
            student_hidden=[student_out.hidden_states[s] for s, _ in self.hidden_pairs] if want_hidden else None,
            teacher_hidden=teacher_hidden, hidden_weight=self.hidden_weight,
            attention_mask=inputs.get("attention_mask"), label_loss=self.label_loss,
        )
        inputs["labels"] = labels
        return (parts["loss"], student_out) if return_outputs else parts["loss"]

    def run_teacher(self, inputs, device, want_hidden: bool):
        if self.teacher.device != device:
            self.teacher.to(device)
        with torch.inference_mode():
            return self.teacher(**inputs, output_hidden_states=want_hidden)

    def teacher_eval_logits(self, inputs, rows: int):
        """The teacher's logits on an evaluation batch, computed on the first evaluation and reused: the teacher
        does not change, and the Trainer's evaluation batches are the same every time (its eval sampler is
        seeded), so each later evaluation of the holdout costs the student's pass alone. Keyed by the batch's
        token ids, so a batch never seen is simply computed. Computed passes count as the evaluation's
        (inference) samples."""
        cache = self.__dict__.setdefault("_teacher_eval_cache", {})
        key = (tuple(inputs["input_ids"].shape),
               hashlib.sha1(inputs["input_ids"].detach().cpu().numpy().tobytes()).hexdigest())
        if key not in cache:
            self.teacher_eval_samples = getattr(self, "teacher_eval_samples", 0) + rows
            cache[key] = self.run_teacher(inputs, inputs["input_ids"].device, False).logits
        return cache[key]


# ---------------------------------------------------------------- the stage


def recipe(spec, args: DistillArgs) -> Recipe:
    """The student (every k-th teacher layer, or the champion's student) trained by DistillTrainer."""
    from tasks.train import modeling

    st = spec.student
    teacher_uri = storage.normalize(args.teacher)
    if not storage.exists(storage.join(teacher_uri, "config.json")):
        raise SpecInvalid(f"--teacher {args.teacher}: no model there (no config.json)")
    teacher_dir = modeling.materialize(teacher_uri)
    teacher = modeling.load_classifier(teacher_dir)
    student, mapping, init_from = starting_student(spec, teacher, args.champion)
    return Recipe(
        model=student, tokenizer_dir=teacher_dir, init_from=init_from,
        epochs=None if st.epochs == "auto" else st.epochs,  # None: the runner's epochs_for(train rows)
        batch_size=st.batch_size, learning_rate=st.learning_rate,
        gpu_batch_size=st.gpu_batch_size,
        trainer_cls=DistillTrainer,
        trainer_kwargs=dict(teacher=teacher, alpha=st.alpha, temperature=st.temperature,
                            hidden_weight=st.hidden_mse_weight, mapping=mapping),
        exports=st.export,
        prepare=lambda train_set, **plan: with_teacher_cache(spec, teacher, teacher_uri, teacher_dir, mapping,
                                                             train_set, **plan),
        result=dict(teacher_uri=teacher_uri, student_layers=st.layers, layer_map=mapping),
        note=f"student: {st.layers} of {teacher.config.num_hidden_layers} teacher layers {mapping}",
    )


def with_teacher_cache(spec, teacher, teacher_uri: str, teacher_dir, mapping: list[int], train_set, *,
                       epochs: float, batch_size: int, world_size: int, tokenizer, snapshot) -> Prepared:
    """``student.teacher_cache``: the teacher's outputs over the train rows, from the stored cache or one (sharded)
    pass, when ``decide`` says so; the train split then carries ``row_index`` for the collator to find them."""
    from tasks.train import arguments, teacher_cache

    st = spec.student
    cuda = torch.cuda.is_available()
    layers = [t for _, t in hidden_pairs(mapping)] if st.hidden_mse_weight > 0 else []
    rows = teacher_cache.read_rows(train_set)  # the one read of the train rows' token ids
    bf16 = cuda and arguments.cuda_bf16()
    need = teacher_cache.estimate_bytes(rows.tokens, len(rows), len(layers), teacher.config.hidden_size,
                                        teacher.config.num_labels, value_bytes=2 if bf16 else 4)
    budget = teacher_cache.memory_budget_bytes(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    use, why = teacher_cache.decide(st.teacher_cache, cuda=cuda, epochs=epochs, need_bytes=need, budget_bytes=budget)
    if not use:
        log.info(f"[{STAGE}] teacher cache off ({why}): the live teacher runs on every batch")
        return Prepared(train_set, result={"teacher_cache": f"off: {why}"})
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    on_device = teacher_cache.for_device(teacher, device)
    fields = teacher_cache.key_fields(
        teacher=teacher_cache.model_identity(teacher_uri, teacher_dir),
        snapshot_id=snapshot.id, rows=rows, layers=layers,
        dtype=str(next(on_device.parameters()).dtype).removeprefix("torch."), max_length=spec.model.max_length,
        classes=teacher.config.num_labels)
    outputs = teacher_cache.stored_or_computed(
        on_device, rows, tokenizer, cache_uri=spec.layout.teacher_cache,
        fields=fields, layers=layers, batch_size=max(64, 2 * batch_size), device=device, stage=STAGE)
    where = (f"read from {outputs.uri} in {outputs.io_seconds:.1f}s" if outputs.reused else
             f"one pass in {outputs.seconds:.1f}s ({len(outputs.rows_computed)} rows on this process of {world_size})"
             + (f", stored to {outputs.uri} in {outputs.io_seconds:.1f}s" if outputs.uri else ""))
    summary = (f"on: {len(rows)} rows, {rows.tokens} tokens, {len(layers)} hidden layers, "
               f"{outputs.nbytes / 2**20:.1f} MiB in host memory ({why})")
    log.info(f"[{STAGE}] teacher cache {summary}; {where}")
    return Prepared(train_set.add_column("row_index", list(range(len(rows)))),
                    trainer_kwargs={"teacher_outputs": outputs},
                    result={"teacher_cache": summary, "teacher_cache_reused": outputs.reused,
                            "teacher_pass_rows": 0 if outputs.reused else len(rows),
                            "teacher_cache_uri": outputs.uri,
                            "teacher_pass_seconds": None if outputs.reused else round(outputs.seconds, 2),
                            "teacher_cache_read_seconds": round(outputs.io_seconds, 3) if outputs.reused else None,
                            "teacher_cache_store_seconds": (round(outputs.io_seconds, 3)
                                                            if outputs.uri and not outputs.reused else None)})


def main(argv: list[str]) -> int:
    args = cli.parse(DistillArgs, argv, prog="python -m tasks distill", description=__doc__.splitlines()[0])
    return run(STAGE, args, recipe)
