"""The "Model registry" page in a real Airflow (the api-server of tests/live_airflow.py, SimpleAuthManager, SQLite)
seen through a real headless Chromium (Debian's chromium, driven by playwright).

The registry is real: three versions published by the publish stage into local file:// storage (the layout of
tasks/spec.py), gate results computed by the real gates, drift plots drawn by the drift stage's plotting code.
v1 was the first champion, v2 replaced it, v3 failed its gates. The story: an admin logs in through Airflow's
login page, opens "Model registry" from the navigation, sees the champion, its versions with confidence
intervals, gate results, drift plots and the audit trail, and rolls back to v1; a viewer sees the page but may
not roll back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from conftest import ROOT, read_sst2
from live_airflow import LiveAirflow

pytest.importorskip("airflow")
playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PIPELINE = "uidemo"
PREFIX = "/retrain-registry"

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                 reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")]


# ---------------------------------------------------------------- a real registry on file:// storage


def _spec_dict(storage_uri: str) -> dict:
    raw = yaml.safe_load((ROOT / "include" / "pipelines" / "sst2.yaml").read_text())
    raw["name"] = PIPELINE
    raw["description"] = "SST-2 sentiment (UI test registry)"
    raw["storage"] = {"uri": storage_uri, "conn_id": "aws_default"}
    raw["golden"]["source_uri"] = f"{storage_uri}/reference/{PIPELINE}/golden.tsv"
    raw["alerts"].update(email=[], slack_conn_id=None)
    return raw


def _evaluated_run(spec, key: str, cand_acc: float, champ_acc: float | None, seed: int) -> str:
    """A run folder whose drift and evaluate stages ran: real gates on predictions of the given accuracies."""
    from tasks import storage
    from tasks.decide import gates
    from tasks.decide.evaluate import confusion_png
    from tasks.drift.report import write_plots
    from tasks.spec import dump

    run = spec.layout.run(key)
    storage.write_json(storage.join(run, "spec.json"), dump(spec))
    rng = np.random.default_rng(seed)
    n = 872
    y = rng.integers(0, 2, n)
    # paired predictions, as two models of one family make: the candidate fixes or adds errors of the champion's
    base = champ_acc if champ_acc is not None else cand_acc
    champ_right = rng.random(n) < base
    if cand_acc >= base:
        cand_right = champ_right | (rng.random(n) < (cand_acc - base) / (1 - base))
    else:
        cand_right = champ_right & (rng.random(n) < cand_acc / base)
    cand = np.where(cand_right, y, 1 - y)
    scores = gates.ModelScores(cand, float(np.mean(cand == y)), float(np.mean(cand == y)) - 0.003)
    champ = None
    if champ_acc is not None:
        champ_pred = np.where(champ_right, y, 1 - y)
        champ = gates.ModelScores(champ_pred, float(np.mean(champ_pred == y)), float(np.mean(champ_pred == y)))
    passed, first_run, gate_list = gates.evaluate_gates(spec.gates, spec.data.labels, y, teacher=scores,
                                                        student=scores, champion_teacher=champ,
                                                        champion_student=champ, student_latency_ms_p95=4.2,
                                                        student_size_mb=43.1)
    out = storage.join(run, "evaluate")
    summary = {"golden_accuracy": round(scores.accuracy, 4), "golden_macro_f1": round(scores.macro_f1, 4)}
    confusion = [[int(np.sum((y == t) & (cand == p))) for p in (0, 1)] for t in (0, 1)]
    png = storage.join(out, "confusion_student_golden.png")
    storage.write_bytes(png, confusion_png(confusion, spec.data.labels, f"{PIPELINE} student on golden"))
    storage.write_json(storage.join(out, "metrics.json"), {"models": {
        role: {"golden": {"n": n, "accuracy": scores.accuracy}} for role in ("teacher", "student")}})
    gate_dicts = [g.to_dict() for g in gate_list]
    storage.write_json(storage.join(out, "gate_report.json"), {
        "pipeline": PIPELINE, "passed": passed, "first_run": first_run, "gates": gate_dicts,
        "confusion_matrices": {"student_golden": png}})
    storage.write_text(storage.join(out, "gate_report.md"), f"# Gate report {key}\n")
    storage.write_json(storage.join(out, "result.json"), {
        "passed": passed, "first_run": first_run,
        "gates": [{k: g[k] for k in ("name", "passed", "value", "threshold", "reason", "skipped")} for g in gate_dicts],
        "failed_gates": [g.name for g in gate_list if not g.passed],
        "metrics": {"teacher": summary, "student": summary, "champion": None},
        "report_uri": storage.join(out, "gate_report.json"), "report_md_uri": storage.join(out, "gate_report.md")})

    # the drift report and plots the drift stage writes for this run
    texts = [t for t, _ in read_sst2("train", limit=300, offset=300 * seed)]
    lengths = np.array([len(t.split()) for t in texts])
    labels = np.array([label for _, label in read_sst2("train", limit=300, offset=300 * seed)])
    drift_dir = storage.local_path(storage.join(run, "drift"))
    drift_dir.mkdir(parents=True, exist_ok=True)
    paths = write_plots(drift_dir, spec.data.labels, {"ref_len": lengths[:150], "cur_len": lengths[150:],
                                                      "ref_labels": labels[:150], "cur_labels": labels[150:]})
    storage.write_json(storage.join(run, "drift", "report.json"), {
        "drift_detected": seed == 2, "summary": f"{'1 of 2' if seed == 2 else '0 of 2'} checks drifted on 150 new rows",
        "checks": {"label_psi": {"statistic": 0.01 * seed, "threshold": 0.2, "drifted": False},
                   "length_ks": {"statistic": 0.12 if seed == 2 else 0.03, "threshold": 0.1, "drifted": seed == 2}},
        "plots": {p.stem: storage.join(run, "drift", p.name) for p in paths}})

    # what the decision chose and the training stages trained on (v2: an incremental night) and their samples
    mode = "incremental" if seed == 2 else "full"
    storage.write_json(storage.join(run, "decide", "result.json"), {
        "retrain": True, "reasons": ["test"], "training": {"mode": mode, "reasons": [f"{mode}: test"],
                                                           "incremental_streak": int(seed == 2)}})
    for stage, samples in (("finetune", {"train": 1000 * seed, "inference": 50}),
                           ("distill", {"train": 2000 * seed, "inference": 50, "teacher": 2000 * seed + 50})):
        storage.write_json(storage.join(run, stage, "result.json"), {
            "model_uri": storage.join(run, stage, "model"), "training": {"mode": mode, "reasons": []},
            "samples": samples, "samples_processed": samples["train"] + samples.get("teacher", 0)})
    return run


@pytest.fixture(scope="module")
def registry_spec(tmp_path_factory):
    """file:// registry: v1 (first champion), v2 (promoted over v1), v3 (failed its gates, not promoted)."""
    from tasks import storage
    from tasks.decide import publish, registry
    from tasks.spec import parse_spec

    tmp = tmp_path_factory.mktemp("registry-ui")
    root = f"file://{tmp / 'store'}"
    specs_dir = tmp / "pipelines"
    specs_dir.mkdir()
    (specs_dir / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(_spec_dict(root)))
    (specs_dir / "broken.yaml").write_text("name: broken\n")  # invalid: must hide only itself from the index
    spec = parse_spec(_spec_dict(root))
    model = tmp / "model"   # what publish copies: the files of a model folder
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "num_labels": 2,
                                                   "architectures": ["BertForSequenceClassification"]}))
    (model / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("tokenizer.json", "tokenizer_config.json"):  # publish refuses a folder without a tokenizer
        (model / name).write_text("{}")
    snapshot = storage.join(spec.layout.snapshots, "snap-0001")
    storage.write_json(storage.join(snapshot, "manifest.json"), {"snapshot_id": "snap-0001"})
    versions = []
    for seed, (cand, champ) in enumerate([(0.86, None), (0.89, 0.86), (0.78, 0.89)], start=1):
        run = _evaluated_run(spec, f"retrain-r{seed}", cand, champ, seed)
        result = publish.run(run, snapshot, str(model), str(model), storage.join(run, "evaluate", "result.json"),
                             versions[-1] if seed == 2 else (versions[1] if seed == 3 else None))
        versions.append(result.version)
    assert registry.read_champion(spec)["version"] == versions[1]
    return spec, specs_dir, versions, tmp


@pytest.fixture(scope="module")
def airflow(registry_spec):
    """Only the api-server: it serves the UI, the REST API and the plugin's app."""
    spec, specs_dir, _versions, tmp = registry_spec
    af = LiveAirflow(tmp / "home", dags_folder=ROOT / "dags", plugins_folder=ROOT / "plugins", python_path=[ROOT],
                     components=("api-server",),
                     env={"RETRAIN_PIPELINES_DIR": str(specs_dir),
                          "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer"})
    try:
        af.start()
        af.wait_healthy(timeout=90)
        yield af
    finally:
        af.stop()


def _password(af: LiveAirflow, user: str) -> str:
    """SimpleAuthManager generated the viewer's password into the passwords file at start."""
    return json.loads((af.home / "simple_auth_manager_passwords.json").read_text())[user]


def _token(af: LiveAirflow, user: str) -> str:
    resp = httpx.post(f"{af.base_url}/auth/token", json={"username": user, "password": _password(af, user)},
                      timeout=30, trust_env=False)
    assert resp.status_code == 201, resp.text
    return resp.json()["access_token"]


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()


# ---------------------------------------------------------------- tests


def test_plugins_load_cheaply_without_errors():
    """Every Airflow component loads plugins/ (the dag-processor for serialization too): no import error, and
    neither FastAPI nor Airflow's API modules are imported until the api-server serves the page."""
    import subprocess
    import sys

    code = ("import sys; from airflow import plugins_manager; plugins, errors = plugins_manager._get_plugins(); "
            "print(sorted(p.name for p in plugins if p.name == 'retrain_registry'), errors, "
            "[m for m in ('fastapi', 'airflow.api_fastapi.core_api.security', 'torch', 'pandas') if m in sys.modules])")
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['retrain_registry'] {} []", out.stdout + out.stderr


def test_plugin_is_listed_and_the_app_needs_a_login(airflow):
    client = airflow.client()
    plugins = client.ok("GET", "/api/v2/plugins")["plugins"]
    ours = next(p for p in plugins if p["name"] == "retrain_registry")
    assert ours["fastapi_apps"][0]["url_prefix"] == PREFIX
    view = ours["external_views"][0]
    assert (view["name"], view["url_route"], view["href"]) == ("Model registry", "model-registry", f"{PREFIX}/")
    anonymous = httpx.get(f"{airflow.base_url}{PREFIX}/api/pipelines", timeout=30, trust_env=False)
    assert anonymous.status_code == 401
    page = httpx.get(f"{airflow.base_url}{PREFIX}/pipelines/{PIPELINE}", headers={"Accept": "text/html"},
                     timeout=30, trust_env=False)
    assert page.status_code == 303 and "/auth/login" in page.headers["location"]   # to Airflow's login page


def test_viewer_reads_but_may_not_roll_back(airflow, registry_spec):
    _spec, _dir, versions, _tmp = registry_spec
    headers = {"Authorization": f"Bearer {_token(airflow, 'viewer')}"}
    with httpx.Client(base_url=airflow.base_url, headers=headers, timeout=30, trust_env=False) as http:
        index = http.get(f"{PREFIX}/api/pipelines").json()
        assert [p["pipeline"] for p in index["pipelines"]] == [PIPELINE]
        assert index["error"].startswith("broken.yaml: invalid") and "required" not in index["error"]
        view = http.get(f"{PREFIX}/api/pipelines/{PIPELINE}").json()
        assert view["champion"]["version"] == versions[1] and view["may_rollback"] is False
        assert http.get(f"{PREFIX}/api/pipelines/nosuch").status_code == 404
        refused = http.post(f"{PREFIX}/api/pipelines/{PIPELINE}/rollback",
                            json={"to": versions[0], "expected_champion": versions[1]})
        assert refused.status_code == 403, refused.text
        # the data behind the page: metrics with intervals, gate results with the paired-bootstrap CI, drift
        v2 = next(v for v in view["versions"] if v["version"] == versions[1])
        low, high = v2["metrics"]["teacher"]["golden_accuracy_ci"]
        assert low < v2["metrics"]["teacher"]["golden_accuracy"] < high
        ni = next(g for g in view["selected"]["gates"] if g["name"] == "non_inferiority_teacher")
        assert ni["ci"][0] < ni["ci"][1] and ni["value"] == pytest.approx(ni["ci"][0], abs=1e-4)
        assert view["drift"]["run_key"] == "retrain-r2" and "length_hist" in view["drift"]["plots"]
        # per night: full or incremental, and the samples its stages processed (no summary here: the stages')
        assert [v["training"] for v in view["versions"]] == ["full", "incremental", "full"]
        assert v2["samples"] == {"total": 2000 + 8050, "stages": {"finetune": 2000, "distill": 8050}}
        plot = http.get(f"{PREFIX}/pipelines/{PIPELINE}/runs/retrain-r2/drift/length_hist.png")
        assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
        assert http.get(f"{PREFIX}/pipelines/{PIPELINE}/runs/..%2F..%2Fx/drift/length_hist.png").status_code in (400, 404)


def test_admin_sees_the_champion_and_rolls_back_in_chromium(airflow, registry_spec, browser, tmp_path):
    spec, _dir, versions, _tmp = registry_spec
    from tasks.decide import registry

    page = browser.new_page(viewport={"width": 1400, "height": 1700})
    page.set_default_timeout(30_000)
    # log in through Airflow's own login form, as a person does
    page.goto(f"{airflow.base_url}/auth/login")
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(_password(airflow, "admin"))
    page.locator("button[type=submit]").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)

    # the page inside the Airflow UI, from its navigation entry
    page.goto(f"{airflow.base_url}/plugin/model-registry")
    frame = page.frame_locator("iframe").first
    frame.locator("text=" + PIPELINE).first.click()
    champion = frame.locator("[data-testid=champion-version]")
    champion.wait_for()
    assert champion.inner_text() == versions[1]
    assert frame.locator("#versions tr").count() == 1 + len(versions)
    assert frame.locator("#versions tr.champion td.training").inner_text() == "incremental"
    assert frame.locator("#versions tr.champion td.samples").inner_text() == "10,050"
    assert "non_inferiority_teacher" in frame.locator("#gates").inner_text()
    frame.locator("#drift-checks").wait_for()
    page.wait_for_timeout(500)  # the plots' <img> loads
    shot = tmp_path / "registry-ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":  # refresh docs/ui.md's picture (off by default: no test
        shutil.copy(shot, ROOT / "docs" / "img" / "registry-ui.png")  # run should dirty the work tree)

    # rollback to v1 from the page: the pointer moves, the audit trail names the Airflow user
    assert frame.locator("#rollback-to").input_value() == versions[0]   # the champion's previous
    frame.locator("#rollback-button").click()
    assert f"Make {versions[0]} the champion" in frame.locator("#rollback-confirm").inner_text()
    frame.locator("#rollback-yes").click()
    frame.locator(f"[data-testid=champion-version]:text-is('{versions[0]}')").wait_for()
    assert registry.read_champion(spec)["version"] == versions[0]
    last = max(registry.read_audit(spec), key=lambda a: a["at"])
    assert last["event"] == "rollback" and last["actor"] == "admin (Airflow UI)"
    assert "admin (Airflow UI)" in frame.locator("#audit").inner_text()
    page.close()
