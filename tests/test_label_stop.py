"""A batch with 40% of its labels flipped, against a champion that has learned its task, under the real DAGs
(scripts/local_run.py: dag.test(), stage subprocesses, a real SMTP server on 127.0.0.1):

1. the first batch makes a champion (a tiny random-init BERT; the texts are easy on purpose, so that it learns
   the task well enough for its agreement with the labels to mean something);
2. the flipped batch: the run stops at decide, before any training stage, the batch is withdrawn from the latest
   snapshot (which goes back to the champion's), and on-call gets an e-mail saying why and what was withdrawn;
3. the corrected file, landed under the same name: ingested without conflicts, and the run is not stopped.

The pace (the stop within 60 s, with a real SST-2 champion) is measured by bench/label_quality.py, not here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT
from data_helpers import local_run
from tasks.contracts import Outcome

POSITIVE = ["good", "great", "lovely", "superb", "wonderful", "brilliant", "delightful", "excellent"]
NEGATIVE = ["bad", "awful", "poor", "dreadful", "terrible", "boring", "dull", "horrible"]
FILLER = ["the", "a", "movie", "film", "story", "plot", "was", "and", "very", "really", "quite", "acting", "script"]


def easy_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Texts whose label is told by their sentiment words; a hash keeps every text distinct (drawn alike for
    every seed, so batches differ in nothing the drift checks see)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(0, 2))
        words = list(rng.choice(POSITIVE if label else NEGATIVE, 2)) + list(rng.choice(FILLER, 4))
        rng.shuffle(words)
        rows.append((" ".join(words) + " ref " + hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()[:6], label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")


def easy_spec(tmp: Path, model_dir: Path) -> Path:
    raw = yaml.safe_load((ROOT / "include" / "pipelines" / "sst2.yaml").read_text())
    raw["name"] = "easy"
    seed = tmp / "golden-seed.tsv"
    write_tsv(seed, easy_rows(120, seed=9))
    raw["golden"]["seed_uri"] = str(seed)
    raw["data"]["holdout_fraction"] = 0.25  # enough holdout rows for an honest reference agreement
    raw["model"] = {"base": str(model_dir), "max_length": 32}
    raw["train"].update(epochs=3, batch_size=16, eval_steps=20, checkpoint_steps=20, learning_rate=2e-3,
                        max_train_rows=None)
    raw["student"].update(layers=2, epochs=1, batch_size=16, export=[])
    raw["drift"].update(embedding_subsample=150, embedding_permutations=50)
    raw["decide"].update(min_new_rows=50, retrain_every_rows=100000)
    raw["gates"].update(min_accuracy=0.0, min_macro_f1=0.0, min_retention=0.0, max_class_recall_drop=1.0,
                        min_accuracy_over_baseline=None, min_macro_f1_over_baseline=None,
                        non_inferiority_margin=1.0, latency_samples=5)
    raw["alerts"].update(email=["oncall@example.com"], smtp_conn_id="smtp_test", slack_conn_id=None,
                         from_email="retrain@example.com")
    path = tmp / "easy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path



@pytest.fixture(scope="module")
def nights(tmp_path_factory, tiny_model_dir):
    from decision_support import SmtpReceiver

    tmp = tmp_path_factory.mktemp("label-stop")
    spec, landing, storage = easy_spec(tmp, tiny_model_dir), tmp / "landing", tmp / "storage"
    landing.mkdir()
    out = {"storage": storage}
    with SmtpReceiver() as smtp:
        env = {"AIRFLOW_CONN_SMTP_TEST": smtp.conn_json()}
        write_tsv(landing / "batch-1.tsv", easy_rows(600, seed=1))
        out["first"] = local_run("run", spec, landing, storage, env)
        out["champion"] = json.loads((storage / "models" / "easy" / "champion.json").read_text())
        bad = easy_rows(200, seed=2)
        flipped = [(t, 1 - y) if i % 5 < 2 else (t, y) for i, (t, y) in enumerate(bad)]  # 40%
        write_tsv(landing / "batch-2.tsv", flipped)
        mails = len(smtp.messages)
        out["stopped"] = local_run("run", spec, landing, storage, env)
        out["stop_mails"] = smtp.messages[mails:]
        out["latest_after_stop"] = json.loads((storage / "snapshots" / "easy" / "latest.json").read_text())
        write_tsv(landing / "batch-2.tsv", bad)  # the labels fixed, same file name
        out["fixed"] = local_run("run", spec, landing, storage, env)
    return out


def test_the_first_champion_learned_the_easy_task(nights):
    code, summary, log = nights["first"]
    assert code == 0 and summary["outcome"] == Outcome.PROMOTED, log[-4000:]
    # The premise of the story: a champion whose agreement with correct labels is high.
    assert summary["evaluation"]["teacher"]["golden_accuracy"] >= 0.9, summary["evaluation"]


def test_a_flipped_batch_is_stopped_before_training_withdrawn_and_alerted(nights):
    code, summary, log = nights["stopped"]
    assert code == 1, log[-4000:]
    assert summary["outcome"] == Outcome.STOPPED, summary
    assert summary["decision"]["stopped"] is True and summary["decision"]["retrain"] is False
    states = summary["task_states"]
    assert states["decide"] == "failed" and states["finetune"] != "success" and states["distill"] != "success"
    assert set(summary["cost"]["stages"]) == {"ingest", "drift"} and summary["cost"]["total"]["gpu_seconds"] == 0
    withdrawn = summary["decision"]["withdrawn"]
    assert withdrawn["files"] == {withdrawn["withdrawn"][0]: ["batch-2.tsv"]}
    # The latest snapshot is the champion's again: the next night has nothing new to stop on.
    latest = nights["latest_after_stop"]
    assert latest["snapshot_id"] == withdrawn["snapshot_id"] == nights["champion"]["snapshot_id"]
    reasons = " ".join(summary["decision"]["reasons"])
    assert "Labels look unreliable" in reasons and "--readmit" in reasons
    assert len(nights["stop_mails"]) == 1, nights["stop_mails"]
    mail = nights["stop_mails"][0]
    assert "labels failed the quality check" in mail["subject"] and withdrawn["withdrawn"][0] in mail["subject"]
    assert "nothing was trained" in mail["body"] and "batch-2.tsv" in mail["body"]
    assert "BAD LABELS" in mail["body"]
    assert nights["champion"]["version"] in mail["body"]


def test_the_corrected_file_lands_and_is_not_stopped(nights):
    code, summary, log = nights["fixed"]
    # The ingest DAG took the file in (the retrain run's own ingest then finds nothing new): all 200 rows, none
    # quarantined as conflicting with the withdrawn labels.
    assert summary["ingest"]["total_rows"] == 600 + 200, summary["ingest"]
    assert summary["decision"]["stopped"] is False, summary["decision"]
    assert summary["outcome"] == Outcome.SKIPPED and code == 0, log[-4000:]  # 200 rows, no drift: below the routine bar
