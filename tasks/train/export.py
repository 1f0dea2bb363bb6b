"""CPU-serving exports of a trained classifier, and loaders for them.

- ``int8``: PyTorch dynamic quantization (int8 weights for every nn.Linear, activations quantized on the fly).
  Stored as ``model_int8.pt`` (the quantized state dict) + config + tokenizer; ``load_int8`` rebuilds it.
- ``onnx``: ``model.onnx`` (opset 17, dynamic batch and sequence axes) + config + tokenizer, served with
  ONNX Runtime through ``OnnxClassifier``.
- ``onnx_int8``: that graph with int8 weights (ONNX Runtime's ``quantize_dynamic``, embedding tables included,
  so it is about a quarter of the fp32 size); same folder layout and loader as ``onnx``.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import AutoConfig, AutoModelForSequenceClassification

INT8_WEIGHTS = "model_int8.pt"
ONNX_FILE = "model.onnx"


def _quantize(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice; the API still ships with torch 2.x
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def export_int8(model, tokenizer, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    quantized = _quantize(copy.deepcopy(model).float().cpu().eval())
    torch.save(quantized.state_dict(), out_dir / INT8_WEIGHTS)
    model.config.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def load_int8(model_dir: str | Path):
    """The int8 model saved by export_int8, ready for CPU inference."""
    config = AutoConfig.from_pretrained(str(model_dir))
    model = _quantize(AutoModelForSequenceClassification.from_config(config).eval())
    # Packed int8 weights are not plain tensors, so weights_only loading cannot read them; the file is ours.
    model.load_state_dict(torch.load(Path(model_dir) / INT8_WEIGHTS, weights_only=False))
    return model.eval()


def export_onnx(model, tokenizer, out_dir: Path, max_length: int = 128) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().cpu().eval()
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
    sample = tokenizer(["an example sentence"], padding="max_length", max_length=min(16, max_length),
                       return_tensors="pt")
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}

    class LogitsOnly(torch.nn.Module):  # a plain tensor output and positional inputs, for the exporter
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(names, tensors))).logits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LogitsOnly(model), tuple(sample[n] for n in names), str(out_dir / ONNX_FILE),
                          input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)  # the TorchScript exporter: no onnxscript dependency
    model.config.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def export_onnx_int8(onnx_dir: Path, out_dir: Path) -> Path:
    """The fp32 export in ``onnx_dir`` with int8 weights; activations are quantized per call (dynamic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in onnx_dir.iterdir():
        if path.name != ONNX_FILE:
            shutil.copy2(path, out_dir / path.name)
    # quantize_dynamic logs a "consider pre-processing" hint at WARNING on the root logger for every model.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(onnx_dir / ONNX_FILE), str(out_dir / ONNX_FILE), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return out_dir


def export_all(model, tokenizer, out_root: Path, formats: Sequence[str], max_length: int) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    if "int8" in formats:
        folders["int8"] = export_int8(model, tokenizer, out_root / "int8")
    if "onnx" in formats:
        folders["onnx"] = export_onnx(model, tokenizer, out_root / "onnx", max_length)
    if "onnx_int8" in formats:
        with tempfile.TemporaryDirectory(prefix="onnx-fp32-") as tmp:
            fp32 = folders.get("onnx") or export_onnx(model, tokenizer, Path(tmp), max_length)
            folders["onnx_int8"] = export_onnx_int8(fp32, out_root / "onnx_int8")
    return folders


class OnnxClassifier:
    """ONNX Runtime inference with the same interface as modeling.predict_proba's model argument."""

    def __init__(self, model_dir: str | Path, threads: int | None = None) -> None:
        from tasks.train.modeling import load_tokenizer

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # ORT's idle threads spin after each call by default, taking the cores from whatever runs next in the
        # process (in the benchmark: the PyTorch models timed in between, which then look slower).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(Path(model_dir) / ONNX_FILE), options,
                                            providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = load_tokenizer(model_dir)

    def logits(self, texts: Sequence[str], max_length: int = 128):
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
        return self.session.run(["logits"], {n: enc[n].astype("int64") for n in self.names})[0]
