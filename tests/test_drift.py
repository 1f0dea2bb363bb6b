"""Drift checks on real SST-2 / emotion text and the drift stage end to end with a fake champion (tiny BERT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, ROOT, read_sst2
from data_helpers import fake_champion, land, make_spec, put_golden, run_folder, tsv_bytes
from tasks import storage
from tasks.drift.stage import run_drift
from tasks.drift.stats import TextSide, TokenCounter, mmd_permutation, statistical_checks
from tasks.data.ingest import run_ingest
from tasks.train.modeling import load_tokenizer
from tasks.errors import SpecInvalid
from tasks.spec import DriftSpec


def read_emotion(limit: int) -> list[tuple[str, int]]:
    rows = []
    with open(DATA / "emotion" / "train.txt", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            text, _, name = line.rstrip("\n").rpartition(";")
            rows.append((text, 1 if name in ("joy", "love", "surprise") else 0))
            if len(rows) >= limit:
                break
    return rows


def side(rows: list[tuple[str, int]]) -> TextSide:
    return TextSide([t for t, _ in rows], np.array([y for _, y in rows]))


@pytest.fixture(scope="module")
def counter(tiny_model_dir):
    return TokenCounter(tiny_model_dir)


def test_token_counter_matches_the_tokenizer(tiny_model_dir, counter):
    texts = [t for t, _ in read_sst2("train", limit=300)] + [t for t, _ in read_emotion(200)]
    texts += ["", "   ", "Café naïve — résumé!!", "日本語のテキスト", "emoji 😀 here", "a_b-c/d"]
    tokenizer = load_tokenizer(tiny_model_dir)
    expected = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths, counts = counter.count(texts)
    assert lengths.tolist() == [len(ids) for ids in expected]
    assert np.array_equal(counts, np.bincount([i for ids in expected for i in ids], minlength=counter.vocab_size))


def test_same_distribution_passes_and_shifts_are_caught(counter):
    cfg = DriftSpec()
    names = ["negative", "positive"]
    reference = side(read_sst2("train", limit=1500))
    same, _ = statistical_checks(cfg, names, counter, reference, side(read_sst2("train", limit=400, offset=3000)))
    assert not any(c["drifted"] for c in same.values()), {k: c["verdict"] for k, c in same.items()}

    emotion, _ = statistical_checks(cfg, names, counter, reference, side(read_emotion(400)))
    assert emotion["vocab_js"]["drifted"] and emotion["length_ks"]["drifted"]
    assert "'feel'" in emotion["vocab_js"]["verdict"] or "'i'" in emotion["vocab_js"]["verdict"]

    pool = read_sst2("train", limit=2000, offset=5000)
    skewed = [r for r in pool if r[1] == 1][:360] + [r for r in pool if r[1] == 0][:40]
    skew, _ = statistical_checks(cfg, names, counter, reference, side(skewed))
    assert skew["label_psi"]["drifted"] and skew["label_chi2"]["drifted"]
    assert skew["label_psi"]["current_shares"] == {"negative": 0.1, "positive": 0.9}
    for check in skew.values():
        assert {"statistic", "threshold", "drifted", "verdict"} <= set(check)


def test_unknown_token_share_rises_on_unknown_script(counter):
    reference = side(read_sst2("train", limit=300))
    alien = side([("\u2603\u2604 \u2605\u2606 \U0001F600 " * 3, 1)] * 100)
    checks, _ = statistical_checks(DriftSpec(), ["negative", "positive"], counter, reference, alien)
    assert checks["unknown_tokens"]["drifted"] and checks["unknown_tokens"]["current_share"] > 0.5


def test_mmd_permutation_p_values():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(150, 16)), rng.normal(size=(150, 16))
    _, p_same, null = mmd_permutation(x, y, 200, seed=1)
    _, p_shift, _ = mmd_permutation(x, y + np.r_[1.5, np.zeros(15)], 200, seed=1)
    assert p_same > 0.05 and p_shift < 0.01 and len(null) == 200


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_drift_stage_end_to_end(backend, tmp_path, tiny_model_dir, request, monkeypatch):
    from tasks import cost

    monkeypatch.setattr(cost, "_meter", None)  # the process's meter as it was, after the test
    monkeypatch.setattr(cost, "_samples", {})
    root = "file://" + str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_env") + "/r"
    spec = make_spec(root, drift={"embedding_subsample": 60, "embedding_permutations": 50})
    put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=200)))
    first = run_ingest(spec)
    champion = fake_champion(spec, first, tiny_model_dir)
    run_uri = run_folder(spec)

    none = run_drift(spec, run_uri, first["snapshot_uri"], None)
    assert none["first_run"] is True and none["drift_detected"] is False and none["new_rows"] == 200

    unchanged = run_drift(spec, run_uri, first["snapshot_uri"], champion)
    assert unchanged["new_rows"] == 0 and unchanged["drift_detected"] is False and unchanged["checks"] == {}
    # What the champion's snapshot holds per class: a class with none there arrives for the first time
    # (the decision then trains on the whole snapshot: tasks/decide/retrain_policy.py).
    assert unchanged["reference_label_counts"] == first["label_counts"] and sum(first["label_counts"].values()) == 200

    land(spec, "emotion.tsv", tsv_bytes(read_emotion(150)))
    second = run_ingest(spec)
    cost.start()
    result = run_drift(spec, run_uri, second["snapshot_uri"], champion)
    # The champion's passes over the model checks' texts (60 new, all 200 reference rows) are the stage's samples.
    assert cost.samples() == {"samples": {"inference": 60 + 200}, "samples_processed": 0}
    assert result["new_rows"] == 150 and result["drift_detected"] is True
    assert set(result["checks"]) == {"label_psi", "label_chi2", "length_ks", "vocab_js", "unknown_tokens",
                                     "embedding_mmd", "prediction"}
    assert "vocab_js" in result["drifted_checks"] and result["summary"].startswith("Drift detected on 150 new rows")
    report = storage.read_json(result["report_uri"])
    assert report["checks"]["vocab_js"]["top_risers"]
    for name in ("length_hist", "label_bars", "embedding_null"):
        assert storage.read_bytes(result["plots"][name])[:4] == b"\x89PNG"
    assert storage.read_json(storage.join(run_uri, "drift", "result.json"))["drift_detected"] is True
    # 17 holdout rows: too few for an honest agreement baseline, so label quality says it was not checked.
    assert result["label_quality"]["skipped"] and "not checked" in result["label_quality"]["verdict"]
    assert "top_moves" in result["checks"]["label_chi2"] and "current_shares" not in result["checks"]["label_psi"]
    assert report["checks"]["label_psi"]["current_shares"] == {"negative": 0.5, "positive": 0.5}


def test_drift_cli(tmp_path, tiny_model_dir):
    spec = make_spec("file://" + str(tmp_path / "s"), drift={"embedding_subsample": 40, "embedding_permutations": 30})
    put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=120)))
    snap = run_ingest(spec)
    run_uri = run_folder(spec)
    xcom = tmp_path / "xcom.json"
    env = {**os.environ, "RETRAIN_XCOM_PATH": str(xcom), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tasks", "drift", "--run", run_uri, "--snapshot",
                           snap["snapshot_uri"], "--champion", "none"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(xcom.read_text())
    assert result["first_run"] is True and result["report_uri"].endswith("drift/report.json")
    # No champion, no reference: every row of the snapshot is new and no check ran.
    assert result["checks"] == {} and result["drift_detected"] is False and result["drifted_checks"] == []
    assert result["new_rows"] == snap["total_rows"] > 0 and result["reference_rows"] == 0


def test_champion_without_snapshot_is_an_invalid_argument(tmp_path, tiny_model_dir):
    spec = make_spec("file://" + str(tmp_path / "s"))
    put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=60)))
    snap = run_ingest(spec)
    champion = fake_champion(spec, snap, tiny_model_dir)
    manifest = storage.read_json(storage.join(champion, "manifest.json"))
    storage.write_json(storage.join(champion, "manifest.json"), {k: v for k, v in manifest.items()
                                                                 if k != "snapshot_uri"})
    with pytest.raises(SpecInvalid, match="names no snapshot_uri"):
        run_drift(spec, run_folder(spec), snap["snapshot_uri"], champion)
    with pytest.raises(SpecInvalid, match="no manifest.json"):
        run_drift(spec, run_folder(spec), snap["snapshot_uri"], storage.join(spec.storage.uri, "nowhere"))


def test_label_quality_is_not_fooled_by_a_label_mix_shift(tmp_path, tiny_model_dir):
    """The tiny champion predicts 'positive' for (almost) everything: it agrees with about half of SST-2's
    labels and with none of a batch labelled all 'negative'. That batch is a label-mix shift (label_chi2
    drifts), not bad labels: on the holdout's negatives the champion agreed as rarely, so nothing is flagged."""
    spec = make_spec("file://" + str(tmp_path / "s"), data={"holdout_fraction": 0.5},
                     drift={"embedding_subsample": 60, "embedding_permutations": 30})
    put_golden(spec)
    land(spec, "a.tsv", tsv_bytes(read_sst2("train", limit=200)))
    first = run_ingest(spec)
    champion = fake_champion(spec, first, tiny_model_dir)
    land(spec, "b.tsv", tsv_bytes([(text, 0) for text, _ in read_sst2("train", limit=100, offset=4000)]))
    result = run_drift(spec, run_folder(spec), run_ingest(spec)["snapshot_uri"], champion)
    quality = result["label_quality"]
    assert result["model_reference"] == "holdout" and quality["reference_sample"] >= 60
    assert quality["reference_agreement"] > 0.3 and quality["current_agreement"] < 0.1, quality
    assert quality["expected_agreement"] < 0.1 and not quality["flagged"], quality["verdict"]
    assert "label_chi2" in result["drifted_checks"] and "label_quality" not in result["checks"]
