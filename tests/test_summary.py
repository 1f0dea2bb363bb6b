"""The run summary picks the numbers people act on: golden-set metrics, new rows since the champion, the verdict;
it reads every stage result through its contract, and a malformed one fails loudly."""

import pytest

from tasks.contracts import Outcome
from tasks.decide.summary import MalformedResult, build_summary, format_summary

RUN = {"pipeline": "sst2", "run_key": "retrain-r2", "run_uri": "s3://b/runs/sst2/retrain-r2", "run_type": "scheduled",
       "champion_version": "v1"}


def test_summary_reports_golden_metrics_and_outcome():
    results = {
        "ingest": {"snapshot_id": "s2", "total_rows": 10000, "new_rows": 0, "quarantined_rows": 3},
        "decide": {"retrain": True, "reasons": ["5000 new rows reach decide.retrain_every_rows (5000)."],
                   "new_rows": 5000},
        "finetune": {"model_uri": "s3://b/runs/sst2/retrain-r2/finetune/model",
                     "metrics": {"accuracy": 0.89, "macro_f1": 0.88}, "train_rows": 4500},
        "distill": None,  # did not run: fine
        "evaluate": {"passed": False, "first_run": False, "failed_gates": ["non_inferiority_teacher"],
                     "metrics": {"teacher": {"golden_accuracy": 0.851, "golden_accuracy_ci": [0.8274, 0.8739],
                                             "golden_macro_f1": 0.85},
                                 "champion": {"uri": "s3://b/models/sst2/v1", "teacher": {"golden_accuracy": 0.86},
                                              "student": None}}},
    }
    summary = build_summary(RUN, results)
    assert summary["outcome"] == Outcome.BLOCKED and summary["champion_before"] == "v1"
    assert summary["teacher"]["holdout_accuracy"] == 0.89
    assert summary["evaluation"]["teacher"]["golden_accuracy"] == 0.851
    text = format_summary(summary)
    assert "5000 new since the champion's" in text
    assert "FAILED (non_inferiority_teacher)" in text
    assert "golden_accuracy_ci=[0.8274, 0.8739]" in text
    assert "eval champion_teacher: golden_accuracy=0.8600" in text


def test_typed_results_are_summarized_as_their_json():
    """The DAG reads results through their models (stage_factory.pull_result): build_summary takes those as they
    are and gives the summary their raw JSON gives."""
    from tasks.contracts import RESULT_OF_TASK, RunContext

    results = {
        "ingest": {"snapshot_id": "s2", "total_rows": 10000, "new_rows": 0},
        "decide": {"retrain": True, "reasons": ["forced"], "new_rows": 5000},
        "evaluate": {"passed": True, "first_run": True, "metrics": {"teacher": {"golden_accuracy": 0.85}}},
        "publish": {"version": "v2", "version_uri": "s3://b/models/sst2/v2", "promoted": True},
    }
    typed = {task: RESULT_OF_TASK[task].model_validate(raw) for task, raw in results.items()}
    summary = build_summary(RunContext.model_validate(RUN), typed)
    assert summary == build_summary(RUN, results)
    assert summary["outcome"] == Outcome.PROMOTED and summary["publish"]["version"] == "v2"


def test_skip_outcome_and_no_champion():
    summary = build_summary({**RUN, "run_key": "r3", "champion_version": "none"},
                            {"decide": {"retrain": False, "reasons": ["Skipped: no new snapshot."]}})
    assert summary["outcome"] == Outcome.SKIPPED and summary["champion_before"] is None
    assert "decision: skip - Skipped: no new snapshot." in format_summary(summary)


def test_a_malformed_stage_result_fails_loudly():
    with pytest.raises(MalformedResult, match="evaluate result does not match EvaluateResult"):
        build_summary(RUN, {"decide": {"retrain": True, "reasons": []}, "evaluate": {"passed": "maybe"}})
    with pytest.raises(MalformedResult, match="publish"):
        build_summary(RUN, {"publish": {"promoted": True}})  # no version
    with pytest.raises(MalformedResult, match="prepare_run"):
        build_summary({"pipeline": "sst2"}, {})


def test_the_summary_adds_up_what_each_stage_cost():
    from tasks.decide.summary import build_summary, format_summary

    run = {"pipeline": "sst2", "run_key": "retrain-x", "run_uri": "file:///tmp/x", "run_type": "manual"}
    stage_cost = {"wall_seconds": 10.0, "gpus": 1, "gpu_seconds": 10.0, "energy_kwh": 0.002}
    results = {
        "ingest": {"snapshot_id": "s1", "cost": {"wall_seconds": 2.0, "gpus": 0, "gpu_seconds": 0.0,
                                                  "energy_kwh": None}},
        "decide": {"retrain": True, "reasons": ["forced"]},
        "finetune": {"model_uri": "file:///tmp/t", "cost": stage_cost},
        "distill": {"model_uri": "file:///tmp/s", "cost": stage_cost},
    }
    summary = build_summary(run, results)
    assert set(summary["cost"]["stages"]) == {"ingest", "finetune", "distill"}
    assert summary["cost"]["total"] == {"wall_seconds": 22.0, "gpu_seconds": 20.0, "energy_kwh": 0.004,
                                        "samples_processed": 0}
    assert "cost: 22 s in stages, 20 GPU-seconds, 0.0040 kWh" in format_summary(summary)


def test_the_summary_says_full_or_incremental_and_the_samples_each_stage_processed():
    from tasks.decide.summary import build_summary, format_summary

    why = "Incremental retrain: the 1,000 rows new since the champion's snapshot plus 1x as many older rows replayed."
    kind = {"mode": "incremental", "train_rows": 1800, "new_rows": 900, "replay_rows": 900,
            "snapshot_train_rows": 18_900, "reasons": [why]}

    def stage(kind_of, samples):
        processed = samples["train"] + samples.get("teacher", 0)
        return {"model_uri": "file:///tmp/m", "training": kind_of, "samples": samples,
                "samples_processed": processed,
                "cost": {"wall_seconds": 5.0, "gpus": 0, "gpu_seconds": 0.0, "energy_kwh": None,
                         "samples": samples, "samples_processed": processed}}

    results = {"decide": {"retrain": True, "reasons": ["1,000 new rows"], "training": {"mode": "incremental",
                                                                                         "reasons": [why]}},
               "finetune": stage(kind, {"train": 1800, "inference": 200}),
               "distill": stage(kind, {"train": 3600, "inference": 200, "teacher": 3800}),
               "evaluate": {"passed": True, "cost": {"wall_seconds": 3.0, "gpus": 0, "gpu_seconds": 0.0,
                                                     "energy_kwh": None, "samples": {"inference": 3000},
                                                     "samples_processed": 0}}}
    summary = build_summary(RUN, results)
    assert summary["training"] == {"mode": "incremental", "reasons": [why], "stages": {
        s: {"mode": "incremental", "train_rows": 1800, "new_rows": 900, "replay_rows": 900,
            "snapshot_train_rows": 18_900} for s in ("finetune", "distill")}}
    assert summary["teacher"]["samples_processed"] == 1800 and summary["student"]["samples_processed"] == 7400
    assert summary["cost"]["total"]["samples_processed"] == 1800 + 7400
    text = format_summary(summary)
    assert ("training: incremental - finetune incremental on 1800 rows (900 new + 900 replayed); distill "
            f"incremental on 1800 rows (900 new + 900 replayed) - {why}") in text
    assert "9,200 samples processed" in text
    assert build_summary(RUN, {"decide": {"retrain": False, "reasons": ["skip"]}})["training"] == {}


def test_golden_rows_left_out_of_the_champion_comparison_are_in_the_summary_only_when_some_were():
    evaluate = {"passed": True, "first_run": False, "champion_comparison": {
        "golden_rows": 872, "compared_rows": 860, "excluded_rows": 0, "too_few": False, "looked": False}}
    results = {"decide": {"retrain": True, "reasons": ["forced"]}, "evaluate": evaluate}
    summary = build_summary(RUN, results)
    assert "champion_comparison" not in summary["gates"] and "champion compared" not in format_summary(summary)
    why = "whose text the champion v1 trained on, as a train row of its snapshot s1"
    evaluate["champion_comparison"].update(excluded_rows=12, why=why)
    summary = build_summary(RUN, results)
    assert summary["gates"]["champion_comparison"] == {"golden_rows": 872, "compared_rows": 860,
                                                       "excluded_rows": 12, "too_few": False, "why": why}
    assert f"champion compared on 860 of 872 golden rows, 12 {why} left out" in format_summary(summary)
    evaluate["champion_comparison"].update(compared_rows=10, excluded_rows=862, too_few=True)
    assert ("champion not compared: only 10 of 872 golden rows, 862 " in format_summary(build_summary(RUN, results)))


def test_the_teachers_train_data_warnings_reach_the_summary_only_when_there_are_some():
    from tasks.decide.summary import format_summary

    finetune = {"model_uri": "s3://b/m", "train_data": {"rows": 40, "warnings": [
        "no train rows of 1 declared class(es) ['fear']: the model cannot predict them until rows of them land"]}}
    summary = build_summary(RUN, {"finetune": finetune, "decide": {"retrain": True, "reasons": ["first run"]}})
    assert summary["warnings"] == finetune["train_data"]["warnings"]
    assert "warning: no train rows of 1 declared class(es) ['fear']" in format_summary(summary)
    clean = build_summary(RUN, {"finetune": {"model_uri": "s3://b/m", "train_data": {"rows": 40, "warnings": []}}})
    assert "warnings" not in clean
