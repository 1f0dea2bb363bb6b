"""``python -m tasks distill --run RUN_URI --snapshot SNAPSHOT_URI --teacher TEACHER_MODEL_URI [--champion V]``.

Distils the fine-tuned teacher into a smaller student, DistilBERT-style: the student is the teacher with fewer
layers, initialized from every k-th teacher layer (plus the teacher's embeddings, pooler and head) or, with
``student.init_from: champion``, from the champion's student, and trained on

    loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)  [+ w * hidden-state MSE]

(Hinton et al. 2015; ``*_T`` = softmax at temperature T; T^2 keeps the soft-target gradients at the hard-label
scale). Same Trainer features, checkpoint/resume and outputs as the fine-tune stage; optional CPU exports
(``spec.student.export``: int8 dynamic quantization, ONNX) go to ``RUN_URI/distill/int8|onnx/``.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from tasks import results, storage
from tasks.spec import load_spec

STAGE = "distill"
_LAYER_KEY = re.compile(r"(\.layer\.)(\d+)(\.)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tasks distill", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="RUN_URI; the spec is RUN_URI/spec.json")
    parser.add_argument("--snapshot", required=True, help="SNAPSHOT_URI to train on")
    parser.add_argument("--teacher", required=True, help="the fine-tuned teacher's model folder (URI)")
    parser.add_argument("--champion", default="none",
                        help="champion version URI (warm start with student.init_from: champion), or none")
    return parser.parse_args(argv)


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer copied into each student layer: every k-th, ending at the teacher's last layer
    (6 -> 3: [1, 3, 5]; 12 -> 6: [1, 3, 5, 7, 9, 11]), so the top layer that feeds the copied pooler and
    head is the teacher's own top layer."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"student.layers must be in 1..{teacher_layers} (teacher layers), got {student_layers}")
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def init_student(teacher, student_layers: int):
    """A copy of the teacher with ``student_layers`` encoder layers, each from ``layer_map``."""
    import copy

    from transformers import AutoModelForSequenceClassification

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


def starting_student(spec, teacher, champion_uri: str):
    """(student, layer map, description). With ``student.init_from: champion`` and a champion whose student has
    the spec's layers and labels and the teacher's architecture, that student (a warm start: its errors stay
    close to the serving model's, which also narrows the gate's paired confidence interval); otherwise every
    k-th teacher layer."""
    from tasks.train import modeling

    st = spec.student
    if st.init_from == "champion" and champion_uri.lower() != "none":
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
        print(f"[{STAGE}] the champion's student ({layers} layers, labels {labels}, {shape}) does not fit the "
              f"spec and teacher ({st.layers} layers, labels {list(spec.data.labels)}, {want}): initializing from "
              "the teacher", flush=True)
    student, mapping = init_student(teacher, st.layers)
    return student, mapping, "teacher layers"


def distillation_loss(student_logits, teacher_logits, labels, *, alpha: float, temperature: float,
                      student_hidden=None, teacher_hidden=None, hidden_weight: float = 0.0,
                      attention_mask=None) -> dict[str, Any]:
    """{loss, ce, kl, hidden}: alpha*CE + (1-alpha)*T^2*KL(teacher_T || student_T) + hidden_weight*MSE.

    ``student_hidden``/``teacher_hidden`` are aligned lists of hidden states; the MSE is over real tokens."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(student_logits, labels)
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits.detach() / t, dim=-1),
                  reduction="batchmean", log_target=True) * (t * t)
    loss = alpha * ce + (1 - alpha) * kl
    hidden = torch.zeros((), device=student_logits.device)
    if hidden_weight > 0 and student_hidden is not None:
        mask = attention_mask.unsqueeze(-1).to(student_logits.dtype) if attention_mask is not None else None
        terms = []
        for s, h in zip(student_hidden, teacher_hidden):
            err = (s - h.detach()).pow(2)
            terms.append((err * mask).sum() / (mask.sum() * s.shape[-1]) if mask is not None else err.mean())
        hidden = torch.stack(terms).mean()
        loss = loss + hidden_weight * hidden
    return {"loss": loss, "ce": ce.detach(), "kl": kl.detach(), "hidden": hidden.detach()}


def _distill_trainer_class():
    import torch
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """The Trainer with the distillation loss; the teacher is frozen, in eval mode, never wrapped in DDP."""

        loss_is_scaled_for_ga = False  # our loss is a per-batch mean

        def __init__(self, *args, teacher, alpha: float, temperature: float, hidden_weight: float,
                     mapping: list[int], **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher.eval().requires_grad_(False)
            self.alpha, self.temperature, self.hidden_weight = alpha, temperature, hidden_weight
            # Student hidden state i+1 (after student layer i) imitates the teacher's after layer mapping[i].
            self.hidden_pairs = [(i + 1, t + 1) for i, t in enumerate(mapping)]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            want_hidden = self.hidden_weight > 0 and model.training  # eval would gather every hidden state
            if self.teacher.device != labels.device:
                self.teacher.to(labels.device)
            with torch.no_grad():
                teacher_out = self.teacher(**inputs, output_hidden_states=want_hidden)
            student_out = model(**inputs, output_hidden_states=want_hidden)
            parts = distillation_loss(
                student_out.logits, teacher_out.logits, labels, alpha=self.alpha, temperature=self.temperature,
                student_hidden=[student_out.hidden_states[s] for s, _ in self.hidden_pairs] if want_hidden else None,
                teacher_hidden=[teacher_out.hidden_states[t] for _, t in self.hidden_pairs] if want_hidden else None,
                hidden_weight=self.hidden_weight, attention_mask=inputs.get("attention_mask"),
            )
            inputs["labels"] = labels
            return (parts["loss"], student_out) if return_outputs else parts["loss"]

    return DistillTrainer


def main(argv: list[str]) -> int:
    from transformers import set_seed

    from tasks.train import export, modeling, training

    training.setup_logging()
    args = parse_args(argv)
    spec = load_spec(storage.join(storage.normalize(args.run), "spec.json"))
    paths = training.stage_paths(spec, args.run, STAGE)
    hp, st = spec.train, spec.student

    train_rows, holdout_rows = training.load_splits(args.snapshot, hp.max_train_rows)
    teacher_dir = modeling.materialize(storage.normalize(args.teacher))
    tokenizer = modeling.load_tokenizer(teacher_dir)
    train_set = training.tokenize(tokenizer, train_rows["text"], train_rows["label"], spec.model.max_length)
    holdout_set = training.tokenize(tokenizer, holdout_rows["text"], holdout_rows["label"], spec.model.max_length)

    targs = training.training_arguments(
        paths.scratch, epochs=st.epochs, batch_size=st.batch_size, learning_rate=st.learning_rate,
        weight_decay=hp.weight_decay, warmup_ratio=hp.warmup_ratio,
        gradient_accumulation_steps=hp.gradient_accumulation_steps, eval_steps=hp.eval_steps,
        checkpoint_steps=hp.checkpoint_steps, seed=hp.seed,
    )
    set_seed(hp.seed)
    teacher = modeling.load_classifier(teacher_dir)
    student, mapping, init_from = starting_student(spec, teacher, args.champion)
    progress = training.ProgressLogger(STAGE, st.batch_size * hp.gradient_accumulation_steps * targs.world_size)
    trainer = training.make_trainer(
        _distill_trainer_class(), args=targs, tokenizer=tokenizer, paths=paths, progress=progress,
        patience=hp.early_stopping_patience, model=student, train_dataset=train_set, eval_dataset=holdout_set,
        teacher=teacher, alpha=st.alpha, temperature=st.temperature, hidden_weight=st.hidden_mse_weight,
        mapping=mapping,
    )
    print(f"[{STAGE}] student: {st.layers} of {teacher.config.num_hidden_layers} teacher layers {mapping}, "
          f"initialized from {init_from}; "
          f"{len(train_set)} train rows, {len(holdout_set)} holdout rows, device {targs.device}", flush=True)
    outcome = training.train_with_resume(trainer, paths, progress)

    if trainer.is_world_process_zero():
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="distill-export-") as tmp:
            folders = export.export_all(trainer.model, tokenizer, Path(tmp), st.export, spec.model.max_length)
            exports = training.publish_outputs(trainer, tokenizer, paths, outcome, extra_dirs=folders)
        params = sum(p.numel() for p in trainer.model.parameters())
        result = training.result_json(outcome, paths, len(train_set), exports=exports,
                                      teacher_uri=storage.normalize(args.teacher), student_layers=st.layers,
                                      init_from=init_from,
                                      layer_map=mapping, parameters=params)
        results.emit(result, paths.out_uri)
    return 0
