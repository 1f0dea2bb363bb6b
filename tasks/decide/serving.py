"""Layouts that serving systems load as they are: no glue between the registry and a model server.

Written at publish, checksummed in the version's manifest and verified like every other file:

- ``teacher/`` and ``student/`` are Hugging Face model directories (config.json with ``architectures``
  ``*ForSequenceClassification`` and ``id2label`` / ``label2id`` naming the spec's ``data.labels``, safetensors
  weights, tokenizer files), so ``transformers.pipeline("text-classification", model=DIR)`` and KServe's Hugging
  Face runtime (``storageUri`` = the folder) load them. A source config whose labels are generic
  (``LABEL_0``...) gets the spec's names (class i is ``labels[i]``, as everywhere else); one with another number of
  classes, another head or missing files fails publish (``ServingLayoutError``) before any manifest exists.
- ``serving/triton/config.pbtxt`` and ``serving/triton/labels.txt``: the Triton model configuration of the
  student's ONNX export (``exports/onnx/`` or ``exports/onnx_int8/``), its inputs and outputs read from the
  exported graph, its ``version_policy`` naming this version's Triton number.

Kept in step with the champion pointer (``sync``, called once at the end of ``registry.promote`` and
``registry.rollback``, and by ``python -m tasks registry --spec S sync-serving``): the Triton model repository
``<serving.triton_repository>/<serving.triton_model>/`` gets ``<N>/`` (the export's files: ``model.onnx`` and the
tokenizer beside it) and then, last, ``labels.txt`` and ``config.pbtxt``, whose ``version_policy: { specific:
{ versions: [N] } }`` names the champion. Earlier champions' ``<N>/`` folders stay, so a rollback is one small
write and Triton (polling the repository, or told to load the model) serves exactly the champion's number.

N is the version id's timestamp, to the millisecond (``v20261123-101500123-3fa2c1`` -> ``20261123101500123``):
numeric, as Triton requires, increasing with publish order, and the same number whenever the version is synced.

A sync never undoes or blocks a move that happened: ``after_move`` catches every error, prints it and puts the
report in the returned pointer (``serving``); the next move or ``sync-serving`` repairs the repository.
"""

from __future__ import annotations

import logging
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

from tasks import storage
from tasks.contracts import VERSION_MANIFEST
from tasks.errors import GateFailed
from tasks.manifests import read_version_manifest
from tasks.spec import PipelineSpec

log = logging.getLogger(__name__)

HF_ROLES = ("teacher", "student")
TRITON_DIR = "serving/triton"  # in the version folder
CONFIG_PBTXT = "config.pbtxt"
LABELS_TXT = "labels.txt"
STATE = "registry.json"  # in the Triton model folder: which registry version is served (Triton ignores files)
ONNX_FILE = "model.onnx"
ONNX_EXPORTS = ("onnx", "onnx_int8")
MANIFEST = VERSION_MANIFEST

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER = ("tokenizer.json", "vocab.txt")  # either is enough with tokenizer_config.json

# ONNX TensorProto element types -> Triton data types (model_config.proto's DataType)
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64",
                9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}


class ServingLayoutError(GateFailed):
    """A trained model a serving system could not load as it is (wrong head, labels or missing files)."""


# ---------------------------------------------------------------- Hugging Face directories


def hf_config(source_uri: str, labels: Sequence[str], where: str) -> bytes | None:
    """The config.json to publish for the model folder at ``source_uri``: None when the source's serves as it is,
    else the same config with ``id2label`` / ``label2id`` from ``labels``. ServingLayoutError when no config
    can: not a sequence classifier, or another number of classes."""
    try:
        config = storage.read_json(storage.join(source_uri, "config.json"))
    except storage.NotFound:
        raise ServingLayoutError(f"{where}: no config.json at {source_uri}") from None
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise ServingLayoutError(f"{where}: config.json architectures {architectures} is not a sequence "
                                 "classifier (KServe and transformers.pipeline infer the task from it)")
    # transformers leaves out generic names (LABEL_i) and the default of 2 classes when it saves a config
    classes = len(config["id2label"]) if config.get("id2label") else int(config.get("num_labels", 2))
    if classes != len(labels):
        raise ServingLayoutError(f"{where}: the model has {classes} classes, the spec's data.labels "
                                 f"{list(labels)} {len(labels)}")
    generic = {str(i): f"LABEL_{i}" for i in range(classes)}
    named = {str(k): v for k, v in (config.get("id2label") or generic).items()}
    want_id2label = {str(i): name for i, name in enumerate(labels)}
    want_label2id = {name: i for i, name in enumerate(labels)}
    if named == want_id2label and config.get("label2id") == want_label2id:
        return None
    if named not in (want_id2label, generic):
        raise ServingLayoutError(f"{where}: config.json names the classes {named}, the spec {want_id2label}")
    config["id2label"], config["label2id"] = want_id2label, want_label2id
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def check_files(names: Sequence[str], where: str) -> None:
    """A model folder's file names (relative) hold what a loader needs: config, tokenizer, and weights."""
    present = set(names)
    missing = []
    if "config.json" not in present:
        missing.append("config.json")
    if "tokenizer_config.json" not in present:
        missing.append("tokenizer_config.json")
    if not present & set(TOKENIZER):
        missing.append(" or ".join(TOKENIZER))
    if not present & set(WEIGHTS):
        missing.append(" or ".join(WEIGHTS))
    if missing:
        raise ServingLayoutError(f"{where}: missing {', '.join(missing)} (a serving system could not load it)")


# ---------------------------------------------------------------- Triton: the configuration, at publish


def triton_number(version: str) -> int:
    """The numeric Triton version of a registry version: its timestamp to the millisecond."""
    match = re.fullmatch(r"v(\d{8})-(\d{9})-[0-9a-f]+", version)
    if not match:
        raise ValueError(f"{version!r} is not a registry version id")
    return int(match.group(1) + match.group(2))


def triton_export(spec: PipelineSpec, exports: dict[str, Any]) -> str | None:
    """The student export Triton serves, or None (no ONNX export: no Triton layout)."""
    wanted = spec.serving.triton_export
    if wanted != "auto":
        return wanted if wanted in exports else None
    return next((name for name in ONNX_EXPORTS if name in exports), None)


def graph_signature(onnx_path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """{inputs, outputs}: name, Triton data type and shape (an int, or -1 for a named/dynamic axis) of each."""
    import onnx

    graph = onnx.load_model(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def describe(values) -> list[dict[str, Any]]:
        out = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            if tensor.elem_type not in TRITON_TYPES:
                raise ServingLayoutError(f"ONNX tensor {value.name}: element type {tensor.elem_type} has no "
                                         "Triton data type here")
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            out.append({"name": value.name, "data_type": TRITON_TYPES[tensor.elem_type], "shape": shape})
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


def triton_config(signature: dict[str, list[dict[str, Any]]], *, number: int, max_batch_size: int,
                  version: str, export: str) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig). No ``name``: Triton takes the folder's,
    so the file is right under any ``serving.triton_model``. The batch axis (first, dynamic in our export) is
    Triton's implicit one; with a fixed first axis the model is served unbatched (max_batch_size 0)."""
    tensors = signature["inputs"] + signature["outputs"]
    batched = all(t["shape"] and t["shape"][0] == -1 for t in tensors)

    def block(t: dict[str, Any], labels: bool) -> str:
        dims = t["shape"][1:] if batched else t["shape"]
        extra = f' label_filename: "{LABELS_TXT}"' if labels else ""
        return f'  {{ name: "{t["name"]}" data_type: {t["data_type"]} dims: [ {", ".join(map(str, dims))} ]{extra} }}'

    lines = [
        f"# Written by airflow-retrain at publish: registry version {version}, the student's {export} export.",
        "# Served version: the pipeline's champion (version_policy); a promotion or rollback rewrites this file.",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size if batched else 0}",
        f"version_policy: {{ specific: {{ versions: [ {number} ] }} }}",
        "input [",
        ",\n".join(block(t, False) for t in signature["inputs"]),
        "]",
        "output [",
        ",\n".join(block(t, len(signature["outputs"]) == 1) for t in signature["outputs"]),
        "]",
    ]
    return "\n".join(lines) + "\n"


def publish_triton(spec: PipelineSpec, out: Any, version: str, exports: dict[str, str],
                   labels: Sequence[str]) -> dict[str, Any] | None:
    """Write the version's ``serving/triton/config.pbtxt`` and ``labels.txt`` (through ``out.write_text``, so
    they are in the manifest) from the chosen ONNX export; the manifest entry, or None without one."""
    export = triton_export(spec, exports)
    if export is None:
        log.info("no Triton layout: serving.triton_export is %s, the student's exports are %s (student.export)",
                 spec.serving.triton_export, sorted(exports) or "none")
        return None
    source = storage.join(exports[export], ONNX_FILE)
    with tempfile.TemporaryDirectory(prefix="triton-") as tmp:
        local = storage.local_path(source) if not storage.is_s3(source) else storage.download_file(
            source, Path(tmp) / ONNX_FILE)
        signature = graph_signature(local)
    logits = signature["outputs"][0]["shape"] if len(signature["outputs"]) == 1 else []
    if not logits or logits[-1] != len(labels):
        raise ServingLayoutError(f"exports/{export}/{ONNX_FILE}: one output of {len(labels)} classes expected, "
                                 f"the graph has {signature['outputs']}")
    number = triton_number(version)
    out.write_text(f"{TRITON_DIR}/{CONFIG_PBTXT}", triton_config(
        signature, number=number, max_batch_size=spec.serving.triton_max_batch_size, version=version, export=export))
    out.write_text(f"{TRITON_DIR}/{LABELS_TXT}", "".join(f"{name}\n" for name in labels))
    return {"export": export, "model_dir": f"exports/{export}/", "version_number": number,
            "config": f"{TRITON_DIR}/{CONFIG_PBTXT}", "labels": f"{TRITON_DIR}/{LABELS_TXT}",
            "inputs": [t["name"] for t in signature["inputs"]], "outputs": [t["name"] for t in signature["outputs"]]}


# ---------------------------------------------------------------- Triton: the repository, kept in step


def triton_model_uri(spec: PipelineSpec) -> str | None:
    repository = spec.serving.triton_repository
    return storage.join(repository, spec.serving.triton_model) if repository else None


def _put(source: str, target: str, want: dict[str, Any]) -> bool:
    """Make ``target`` hold the bytes of ``source`` (whose manifest entry is ``want``); False when it already did.
    The repository is derived data: a target that differs (a half-done earlier sync) is overwritten."""
    info = storage.stat(target)
    if info is not None and info.size == want["size"] and storage.sha256_uri(target) == want["sha256"]:
        return False
    storage.copy(source, target)
    return True


def sync(spec: PipelineSpec, attempts: int = 3) -> dict[str, Any]:
    """Make the Triton repository serve the current champion (read here, so concurrent moves converge).

    Order: the version folder's files, then labels.txt, then config.pbtxt (the switch), then registry.json.
    Returns a report: ok, champion, version_number, copied (files written), model_uri, reason.
    """
    model_uri = triton_model_uri(spec)
    report: dict[str, Any] = {"ok": True, "model_uri": model_uri, "champion": None, "version_number": None,
                              "copied": 0, "reason": ""}
    if model_uri is None:
        return report | {"reason": "serving.triton_repository is null: no Triton repository"}
    for _ in range(attempts):
        try:
            champion = storage.read_json(spec.layout.champion)
        except storage.NotFound:
            return report | {"reason": "no champion yet"}
        version = champion["version"]
        vuri = storage.join(spec.layout.models, version)
        manifest = read_version_manifest(vuri)
        entry = manifest.serving.get("triton")
        report |= {"champion": version}
        if not entry:
            if not storage.exists(storage.join(model_uri, STATE)):  # never served here: nothing to keep in step
                return report | {"reason": f"champion {version} has no ONNX export (student.export): nothing for "
                                            "Triton"}
            return report | {"ok": False, "reason": (
                f"champion {version} has no Triton layout (no ONNX export; student.export): the repository "
                "still serves what it served before")}
        files = manifest.files
        number = entry["version_number"]
        copied = 0
        for rel in sorted(r for r in files if r.startswith(entry["model_dir"])):
            target = storage.join(model_uri, str(number), rel[len(entry["model_dir"]):])
            copied += _put(storage.join(vuri, rel), target, files[rel])
        copied += _put(storage.join(vuri, entry["labels"]), storage.join(model_uri, LABELS_TXT), files[entry["labels"]])
        copied += _put(storage.join(vuri, entry["config"]), storage.join(model_uri, CONFIG_PBTXT),
                       files[entry["config"]])
        storage.write_json(storage.join(model_uri, STATE), {
            "pipeline": spec.name, "version": version, "version_uri": vuri, "version_number": number,
            "export": entry["export"], "champion_promoted_at": champion.get("promoted_at"),
            "synced_at": storage.utcnow()})
        report |= {"version_number": number, "copied": report["copied"] + copied}
        if storage.read_json(spec.layout.champion).get("version") == version:
            return report | {"reason": f"serving {version} as Triton version {number}"}
    return report | {"ok": False, "reason": f"the champion kept moving during {attempts} syncs; run sync-serving"}


def after_move(spec: PipelineSpec, pointer: dict[str, Any]) -> dict[str, Any]:
    """Sync after the champion moved; never raises (the move stands). The report goes into ``pointer``."""
    try:
        report = sync(spec)
    except Exception as exc:  # noqa: BLE001 - storage, a bad manifest, anything: the promotion already happened
        log.exception("syncing the Triton repository after the champion moved failed")
        report = {"ok": False, "model_uri": triton_model_uri(spec), "champion": pointer.get("version"),
                  "reason": f"{type(exc).__name__}: {exc}"}
    if not report["ok"]:
        log.warning("Triton repository %s not in step with champion %s: %s; repair with "
                    "`python -m tasks registry --spec SPEC sync-serving`", report["model_uri"], pointer.get("version"),
                    report["reason"])
    elif report["copied"]:
        log.info("%s (%d files written to %s)", report["reason"], report["copied"], report["model_uri"])
    pointer["serving"] = report
    return report


def report_sync(spec: PipelineSpec) -> int:
    """``registry sync-serving`` after the registry verified the champion: sync, print the report; exit 5
    (ServingLayoutError, gate_failed) when the repository cannot be put in step."""
    report = sync(spec)
    print(json.dumps(report, indent=2, sort_keys=True))
    if not report["ok"]:
        raise ServingLayoutError(f"Triton repository not in step: {report['reason']}")
    return 0
