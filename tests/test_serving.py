"""Serving layouts on real S3 (moto's server over HTTP), each loaded the way its consumer loads it:
``transformers.pipeline`` on the version's teacher and student folders (what KServe's Hugging Face runtime does
with a storageUri), and ONNX Runtime on the Triton repository's ``<N>/model.onnx`` with the tokenizer shipped
beside it, its config.pbtxt parsed as Triton's ModelConfig; both reproduce the registry model's golden-set
predictions. A promotion and a rollback move the Triton repository's served version; a failed sync never undoes
a promotion, and ``registry sync-serving`` repairs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, read_sst2
from decision_support import make_spec, train_tiny, write_run, write_snapshot
from tasks import errors, storage
from tasks.decide import publish, registry, serving
from tasks.spec import with_overrides

pytestmark = pytest.mark.timeout(240)

GOLDEN = read_sst2("dev", limit=60)


# ---------------------------------------------------------------- Triton's ModelConfig, for text_format


def triton_model_config_class():
    """The part of Triton's ModelConfig (model_config.proto, package inference) that our config.pbtxt uses: field
    names, numbers and types as upstream's, so protobuf's own text-format parser reads the file the way Triton
    does and rejects any field Triton's schema lacks. tritonclient (which ships the generated module) cannot be
    installed beside our pins (it caps ml-dtypes and protobuf below ours)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="retrain_test_model_config.proto", package="inference",
                                               syntax="proto3")
    dtype = proto.enum_type.add(name="DataType")
    for number, name in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
                                   "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16",
                                   "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]):
        dtype.value.add(name=name, number=number)

    def message(name, fields, parent=None):
        msg = (parent.nested_type if parent is not None else proto.message_type).add(name=name)
        for fname, number, ftype, label, type_name in fields:
            msg.field.add(name=fname, number=number, type=ftype, label=label, type_name=type_name or None)
        return msg

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("ModelInput", [("name", 1, F.TYPE_STRING, opt, ""),
                           ("data_type", 2, F.TYPE_ENUM, opt, ".inference.DataType"),
                           ("dims", 4, F.TYPE_INT64, rep, "")])
    message("ModelOutput", [("name", 1, F.TYPE_STRING, opt, ""),
                            ("data_type", 2, F.TYPE_ENUM, opt, ".inference.DataType"),
                            ("dims", 3, F.TYPE_INT64, rep, ""), ("label_filename", 4, F.TYPE_STRING, opt, "")])
    policy = message("ModelVersionPolicy", [])
    message("Latest", [("num_versions", 1, F.TYPE_UINT32, opt, "")], policy)
    message("All", [], policy)
    message("Specific", [("versions", 1, F.TYPE_INT64, rep, "")], policy)
    policy.oneof_decl.add(name="policy_choice")
    for number, name in enumerate(("latest", "all", "specific"), start=1):
        policy.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=opt, oneof_index=0,
                         type_name=f".inference.ModelVersionPolicy.{name.capitalize()}")
    message("ModelConfig", [("name", 1, F.TYPE_STRING, opt, ""), ("platform", 2, F.TYPE_STRING, opt, ""),
                            ("backend", 17, F.TYPE_STRING, opt, ""),
                            ("version_policy", 3, F.TYPE_MESSAGE, opt, ".inference.ModelVersionPolicy"),
                            ("max_batch_size", 4, F.TYPE_INT32, opt, ""),
                            ("input", 5, F.TYPE_MESSAGE, rep, ".inference.ModelInput"),
                            ("output", 6, F.TYPE_MESSAGE, rep, ".inference.ModelOutput")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_pbtxt(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, triton_model_config_class()())


def test_pbtxt_schema_rejects_what_triton_would():
    from google.protobuf import text_format

    ok = parse_pbtxt('platform: "onnxruntime_onnx"\nversion_policy: { specific: { versions: [ 7 ] } }\n'
                     'input [ { name: "x" data_type: TYPE_INT64 dims: [ -1 ] } ]')
    assert list(ok.version_policy.specific.versions) == [7] and ok.input[0].data_type == 9
    for bad in ('platfrom: "onnxruntime_onnx"', 'input [ { name: "x" data_type: TYPE_LONG } ]',
                'version_policy: { specific: { versions: [ "7" ] } }'):
        with pytest.raises(text_format.ParseError):
            parse_pbtxt(bad)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """The tiny BERT trained a little on SST-2 (so the golden set gets both labels), and its ONNX export."""
    import torch

    from tasks.train import export, modeling

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("serving-models")
        model_dir = train_tiny(tiny_model_dir, read_sst2("train", limit=600, offset=1000), root / "model", epochs=2)
        onnx_dir = export.export_onnx(modeling.load_classifier(model_dir), modeling.load_tokenizer(model_dir),
                                      root / "onnx", max_length=48)
    finally:
        torch.set_num_threads(before)
    return model_dir, onnx_dir


@pytest.fixture
def env(s3_env, trained):
    spec = make_spec(s3_env)
    snap = write_snapshot(spec, read_sst2("train", limit=20), GOLDEN)
    model_dir, onnx_dir = trained
    model_uri = storage.join(s3_env, "scratch", "model")
    storage.upload_dir(model_dir, model_uri)
    onnx_uri = storage.join(s3_env, "scratch", "onnx")
    storage.upload_dir(onnx_dir, onnx_uri)
    return spec, snap, model_uri, onnx_uri


def _publish(spec, snap, model_uri, onnx_uri, key, expected=None, promote=True) -> dict:
    """A run whose distill stage exported the student to ONNX and whose evaluate stage passed, then publish."""
    run = write_run(spec, key)
    out = storage.join(run, "evaluate")
    storage.write_json(storage.join(out, "result.json"), {
        "passed": True, "first_run": expected is None, "gates": [], "failed_gates": [],
        "metrics": {"teacher": {"golden_accuracy": 0.8}, "student": {"golden_accuracy": 0.8}, "champion": None},
        "report_uri": storage.join(out, "gate_report.json"), "report_md_uri": storage.join(out, "gate_report.md")})
    storage.write_text(storage.join(out, "gate_report.md"), "# Gate report\n")
    exports = {"onnx": onnx_uri} if onnx_uri else {}
    storage.write_json(storage.join(run, "distill", "result.json"), {"model_uri": model_uri, "exports": exports})
    return publish.run(run, snap, model_uri, model_uri, storage.join(out, "result.json"), expected,
                       promote=promote).dump()


def _registry_predictions(spec, version: str, tmp: Path) -> np.ndarray:
    """The registry model's golden-set probabilities, computed the way evaluate computes them."""
    from tasks.train import modeling

    local = storage.download_dir(storage.join(registry.version_uri(spec, version), "student"), tmp / "registry")
    return modeling.predict_proba(local, [t for t, _ in GOLDEN], max_length=spec.model.max_length)


def _served(spec) -> tuple[int, str]:
    model_uri = serving.triton_model_uri(spec)
    config = parse_pbtxt(storage.read_text(storage.join(model_uri, serving.CONFIG_PBTXT)))
    (number,) = config.version_policy.specific.versions
    return number, storage.read_json(storage.join(model_uri, serving.STATE))["version"]


# ---------------------------------------------------------------- the layouts, loaded by their consumers


def test_hugging_face_folders_load_with_transformers_pipeline_and_match_the_registry(env, tmp_path, one_torch_thread):
    from transformers import pipeline

    spec, snap, model, onnx = env
    result = _publish(spec, snap, model, onnx, "r1")
    assert result["promoted"] and result["verified"], result["reason"]
    version = result["version"]
    manifest = registry.read_manifest(spec, version)
    assert manifest.serving["huggingface"] == {"teacher": "teacher/", "student": "student/"}
    # The source config has transformers' generic names; the published one names the spec's labels, and is a
    # verified file of the version like every other.
    source_config = json.loads(storage.read_text(storage.join(model, "config.json")))
    assert "id2label" not in source_config or source_config["id2label"]["0"] == "LABEL_0"
    assert registry.verify(spec, version)["ok"]
    expected = _registry_predictions(spec, version, tmp_path)
    assert len(set(expected.argmax(axis=1))) == 2, "a golden set predicted all one class proves little"
    texts = [t for t, _ in GOLDEN]
    for role in ("teacher", "student"):
        config = registry.read_manifest(spec, version).files[f"{role}/config.json"]
        assert config["sha256"] == storage.sha256_uri(storage.join(result["version_uri"], role, "config.json"))
        local = storage.download_dir(storage.join(result["version_uri"], role), tmp_path / role)  # KServe's copy
        saved = json.loads((local / "config.json").read_text())
        assert saved["id2label"] == {"0": "negative", "1": "positive"}
        assert saved["label2id"] == {"negative": 0, "positive": 1}
        classify = pipeline("text-classification", model=str(local), device="cpu")
        out = classify(texts, top_k=None, truncation=True, max_length=spec.model.max_length)
        probs = np.array([[next(s["score"] for s in row if s["label"] == name) for name in spec.data.labels]
                          for row in out])
        # teacher and student are the same model here, so both reproduce the registry student's predictions
        assert [spec.data.labels[i] for i in probs.argmax(axis=1)] == \
            [spec.data.labels[i] for i in expected.argmax(axis=1)]
        assert np.abs(probs - expected).max() < 1e-4, role


def test_triton_repository_serves_the_champion_and_follows_promotion_and_rollback(env, tmp_path, one_torch_thread):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    spec, snap, model, onnx = env
    first = _publish(spec, snap, model, onnx, "r1")
    assert first["promoted"], first["reason"]
    n1 = serving.triton_number(first["version"])
    entry = registry.read_manifest(spec, first["version"]).serving["triton"]
    assert entry["export"] == "onnx" and entry["version_number"] == n1
    assert {"serving/triton/config.pbtxt", "serving/triton/labels.txt"} <= set(
        registry.read_manifest(spec, first["version"]).files)

    model_uri = storage.join(spec.storage.uri, "serving", "triton", "sst2")  # the default repository
    assert serving.triton_model_uri(spec) == model_uri
    local = storage.download_dir(model_uri, tmp_path / "repo" / "sst2")  # what Triton reads, locally
    names = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"config.pbtxt", "labels.txt", "registry.json", f"{n1}/model.onnx", f"{n1}/tokenizer.json",
            f"{n1}/tokenizer_config.json"} <= names
    config = parse_pbtxt((local / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and not config.name  # Triton names it after its folder
    assert config.max_batch_size == spec.serving.triton_max_batch_size
    assert list(config.version_policy.specific.versions) == [n1]
    assert (local / config.output[0].label_filename).read_text().splitlines() == spec.data.labels

    # config.pbtxt against the graph Triton's onnxruntime backend loads: names, types, dims past the batch axis
    session = ort.InferenceSession(str(local / str(n1) / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_types = {"tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32"}
    dtype = triton_model_config_class().DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name[
        "data_type"].enum_type.values_by_number

    def described(tensors):
        return [(t.name, dtype[t.data_type].name, list(t.dims)) for t in tensors]

    def graph(values):
        return [(v.name, onnx_types[v.type], [d if isinstance(d, int) else -1 for d in v.shape[1:]]) for v in values]

    assert described(config.input) == graph(session.get_inputs())
    assert described(config.output) == graph(session.get_outputs()) == [("logits", "TYPE_FP32", [2])]

    # The golden set through the repository's model.onnx and the tokenizer beside it: the registry's labels
    # exactly; probabilities within 1e-4 of the registry's ONNX export (the same runtime) and close to PyTorch's.
    tokenizer = AutoTokenizer.from_pretrained(str(local / str(n1)))
    texts = [t for t, _ in GOLDEN]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=spec.model.max_length, return_tensors="np")
    logits = session.run(["logits"], {t.name: enc[t.name].astype("int64") for t in config.input})[0]
    served = np.exp(logits - logits.max(axis=1, keepdims=True))
    served /= served.sum(axis=1, keepdims=True)
    expected = _registry_predictions(spec, first["version"], tmp_path)
    assert list(served.argmax(axis=1)) == list(expected.argmax(axis=1))
    assert np.abs(served - expected).max() < 1e-3
    from tasks.train.export import OnnxClassifier

    export = storage.download_dir(storage.join(first["version_uri"], "exports", "onnx"), tmp_path / "export")
    registry_onnx = OnnxClassifier(export).logits(texts, max_length=spec.model.max_length)
    registry_onnx = np.exp(registry_onnx) / np.exp(registry_onnx).sum(axis=1, keepdims=True)
    assert np.abs(served - registry_onnx).max() < 1e-4

    # A promotion moves the served version; the earlier one's folder stays for a rollback, which moves it back.
    second = _publish(spec, snap, model, onnx, "r2", expected=first["version"])
    assert second["promoted"], second["reason"]
    n2 = serving.triton_number(second["version"])
    assert n2 > n1 and _served(spec) == (n2, second["version"])
    assert storage.exists(storage.join(model_uri, str(n1), "model.onnx"))
    assert storage.exists(storage.join(model_uri, str(n2), "model.onnx"))
    pointer = registry.rollback(spec)
    assert pointer["version"] == first["version"] and pointer["serving"]["ok"], pointer["serving"]
    assert _served(spec) == (n1, first["version"])
    assert pointer["serving"]["copied"] == 1  # config.pbtxt only: the folder and labels.txt were there already


def test_a_failed_sync_never_undoes_a_promotion_and_sync_serving_repairs_it(env, tmp_path):
    spec, snap, model, onnx = env
    # Without an ONNX export and a repository that never served the pipeline, there is nothing to keep in step.
    plain = _publish(spec, snap, model, None, "r0")
    assert plain["promoted"] and serving.sync(spec)["ok"]
    assert not storage.list_objects(serving.triton_model_uri(spec))
    first = _publish(spec, snap, model, onnx, "r1", expected=plain["version"])
    cand = _publish(spec, snap, model, onnx, "r2", expected=first["version"], promote=False)
    assert cand["promoted"] is False and cand["verified"]
    # A repository in a bucket that does not exist: the promotion happens and says the sync failed.
    broken = with_overrides(spec, {"serving.triton_repository": "s3://no-such-bucket-serving/triton"})
    pointer = registry.promote(broken, cand["version"], expected_champion=first["version"])
    assert registry.read_champion(spec)["version"] == cand["version"]
    assert pointer["serving"]["ok"] is False and pointer["serving"]["reason"]
    assert [a["version"] for a in registry.read_audit(spec)][-1] == cand["version"]
    assert _served(spec) == (serving.triton_number(first["version"]), first["version"])  # the default repo lags

    spec_file = storage.join(spec.layout.run("r1"), "spec.json")
    proc = subprocess.run([sys.executable, "-m", "tasks", "registry", "--spec", spec_file, "sync-serving"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["champion"] == cand["version"]
    assert _served(spec) == (serving.triton_number(cand["version"]), cand["version"])

    # A champion without an ONNX export: promoted, reported as not in step, the repository left serving the last.
    plain = _publish(spec, snap, model, None, "r3", expected=cand["version"])
    assert plain["promoted"] and registry.read_manifest(spec, plain["version"]).serving["triton"] is None
    assert serving.sync(spec)["ok"] is False
    assert _served(spec) == (serving.triton_number(cand["version"]), cand["version"])
    proc = subprocess.run([sys.executable, "-m", "tasks", "registry", "--spec", spec_file, "sync-serving"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == errors.GATE_FAILED.exit_code and "no Triton layout" in proc.stdout


def test_publish_refuses_a_model_with_another_number_of_classes(env):
    spec, snap, model, onnx = env
    wrong = storage.join(spec.storage.uri, "scratch", "three-classes")
    for obj in storage.list_objects(model):
        storage.copy(obj.uri, storage.join(wrong, obj.uri[len(model) + 1:]))
    config = json.loads(storage.read_text(storage.join(model, "config.json")))
    storage.write_json(storage.join(wrong, "config.json"), {**config, "num_labels": 3, "id2label": {
        "0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}})
    with pytest.raises(serving.ServingLayoutError, match="3 classes"):
        _publish(spec, snap, wrong, onnx, "r1")
    result = storage.read_json(storage.join(spec.layout.run("r1"), "publish", "result.json"))
    assert not result["promoted"] and "not published" in result["reason"] and "3 classes" in result["reason"]
    assert registry.list_versions(spec) == [] and registry.read_champion(spec) is None


# ---------------------------------------------------------------- the publish-time checks


def test_publish_names_generic_labels_and_refuses_a_model_serving_systems_could_not_load(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    uri = "file://" + str(root)

    def config(**fields):
        (root / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"], **fields}))

    labels = ["neg", "pos"]
    config(id2label={"0": "neg", "1": "pos"}, label2id={"neg": 0, "pos": 1})
    assert serving.hf_config(uri, labels, "student") is None  # served as it is: copied byte for byte
    config()  # transformers' defaults: 2 classes named LABEL_0, LABEL_1
    fixed = json.loads(serving.hf_config(uri, labels, "student"))
    assert fixed["id2label"] == {"0": "neg", "1": "pos"} and fixed["label2id"] == {"neg": 0, "pos": 1}
    for bad, why in ((dict(id2label={"0": "pos", "1": "neg"}), "names the classes"),
                     (dict(num_labels=3), "3 classes"),
                     (dict(architectures=["BertModel"]), "not a sequence classifier")):
        config(**bad)
        with pytest.raises(serving.ServingLayoutError, match=why):
            serving.hf_config(uri, labels, "student")
    serving.check_files(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"], "student")
    with pytest.raises(serving.ServingLayoutError, match="tokenizer_config.json"):
        serving.check_files(["config.json", "model.safetensors", "tokenizer.json"], "student")
    assert serving.triton_number("v20261123-101500123-3fa2c1") == 20261123101500123
    spec = make_spec("file://" + str(tmp_path / "store"))
    both = {"onnx": "a", "onnx_int8": "b", "int8": "c"}
    assert serving.triton_export(spec, both) == "onnx"
    assert serving.triton_export(spec, {"onnx_int8": "b"}) == "onnx_int8"
    assert serving.triton_export(spec, {"int8": "c"}) is None
    int8 = with_overrides(spec, {"serving.triton_export": "onnx_int8"})
    assert serving.triton_export(int8, both) == "onnx_int8" and serving.triton_export(int8, {"onnx": "a"}) is None
    assert serving.triton_model_uri(spec) == "file://" + str(tmp_path / "store" / "serving" / "triton" / "sst2")
    assert serving.triton_model_uri(with_overrides(spec, {"serving.triton_repository": None}, keep_none=True)) is None
