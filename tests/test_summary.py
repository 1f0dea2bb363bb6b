"""The run summary picks the numbers people act on: golden-set metrics, new rows since the champion, the verdict."""

from tasks.decide.summary import build_summary, format_summary


def test_summary_reports_golden_metrics_and_outcome():
    results = {
        "ingest": {"snapshot_id": "s2", "total_rows": 10000, "new_rows": 0, "quarantined_rows": 3},
        "decide": {"retrain": True, "reasons": ["5000 new rows reach decide.retrain_every_rows (5000)."],
                   "new_rows": 5000},
        "finetune": {"metrics": {"accuracy": 0.89, "macro_f1": 0.88}, "train_rows": 4500},
        "evaluate": {"passed": False, "first_run": False, "failed_gates": ["non_inferiority_teacher"],
                     "metrics": {"teacher": {"golden_accuracy": 0.851, "golden_macro_f1": 0.85},
                                 "champion": {"golden_accuracy": 0.86}}},
    }
    summary = build_summary({"pipeline": "sst2", "run_key": "retrain-r2", "champion_version": "v1"}, results)
    assert summary["outcome"] == "blocked by gates"
    assert summary["teacher"]["holdout_accuracy"] == 0.89
    assert summary["evaluation"]["teacher"]["golden_accuracy"] == 0.851
    text = format_summary(summary)
    assert "5000 new since the champion's" in text
    assert "FAILED (non_inferiority_teacher)" in text
    assert "eval champion: golden_accuracy=0.8600" in text


def test_skip_outcome():
    summary = build_summary({"pipeline": "sst2", "run_key": "r3"},
                            {"decide": {"retrain": False, "reasons": ["Skipped: no new snapshot."]}})
    assert summary["outcome"] == "skipped"
    assert "decision: skip - Skipped: no new snapshot." in format_summary(summary)
