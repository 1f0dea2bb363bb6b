"""The sentences of tasks/decide/remedies.py where people read them: the gate-failure alert and the registry page
(the real Jinja template over a version manifest that publish's run_remedies filled from a run's results)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("airflow")

import registry_ui_app  # noqa: E402  (plugins/ is on sys.path: pytest.ini pythonpath)
import retrain_alerts  # noqa: E402
from data_helpers import make_spec  # noqa: E402
from tasks import metrics, storage  # noqa: E402
from tasks.contracts import DriftResult, EvaluateResult, IngestResult  # noqa: E402
from tasks.decide import evaluate, gates, publish, registry, remedies  # noqa: E402
from tasks.decide.decision import decide_retrain  # noqa: E402
from tasks.spec import GatesSpec  # noqa: E402

CHAMPION = {"version": "v1", "snapshot_id": "aaaa"}
COLLAPSED = ("the warm start from the champion collapsed: it predicts 'negative' for 97% of the holdout rows, which "
             "are 50% 'negative'; retrained once from model.base in the same run (train.epochs). To skip the warm "
             "start, set train.init_from: base")


def _blocked_evaluation() -> EvaluateResult:
    """A 97/3 golden set and a candidate that answers the majority class for everything."""
    y = np.array([0] * 970 + [1] * 30)
    majority = np.zeros_like(y)
    scores = gates.ModelScores(majority, metrics.accuracy(y, majority), metrics.macro_f1(y, majority, 2))
    passed, first_run, out = gates.evaluate_gates(GatesSpec(), ["negative", "positive"], y, teacher=scores,
                                                  student=scores)
    return EvaluateResult(passed=passed, first_run=first_run, gates=out,
                          failed_gates=[g.name for g in out if not g.passed])


def _new_class_decision(spec):
    ingest = IngestResult(snapshot_id="bbbb", new_rows=300)
    drift = DriftResult(new_rows=300, reference_rows=1000, reference_label_counts={"negative": 1000},
                        current_label_counts={"negative": 150, "positive": 150})
    return decide_retrain(spec, ingest, drift, CHAMPION)


def test_the_gate_failure_alert_ends_each_case_with_what_to_do():
    spec = make_spec("file:///unused", decide={"min_new_rows": 10, "retrain_every_rows": 100})
    decision, evaluation = _new_class_decision(spec), _blocked_evaluation()
    info = retrain_alerts.AlertInfo(pipeline="sst2", dag_id="retrain_sst2", run_id="r1",
                                    base_url="http://airflow.example:8080", decision=decision, evaluation=evaluation)
    text = retrain_alerts.gate_failure_message(info).text
    failed = [g for g in evaluation.gates if not g.passed]
    assert failed and all(g.remedy.case == remedies.BELOW_BASELINE for g in failed)
    assert remedies.BELOW_BASELINE_ACTION in text  # the failed gate's reason, as the alert lists it
    assert decision.remedies[0].action in text  # the decision's reasons: the new class's fresh start


def test_the_alert_says_what_no_reason_says_a_collapsed_warm_start(tmp_path):
    spec = make_spec(tmp_path.as_uri(), decide={"min_new_rows": 10, "retrain_every_rows": 100})
    run_uri = spec.layout.run("r1")
    teacher = storage.join(run_uri, "finetune", "model")
    storage.write_json(storage.join(run_uri, "finetune", "result.json"), {"model_uri": teacher,
                                                                            "fresh_start": COLLAPSED})
    assert evaluate.teacher_training(run_uri, storage.join(run_uri, "finetune", "other")) is None
    finetune = evaluate.teacher_training(run_uri, teacher)  # what evaluate reads for its result's remedies
    evaluation = _blocked_evaluation()
    evaluation.remedies = remedies.of_run(None, evaluation.dump(), finetune)
    assert [r.case for r in evaluation.remedies] == [remedies.COLLAPSED, remedies.SKEWED_GOLDEN,
                                                     remedies.BELOW_BASELINE]
    info = retrain_alerts.AlertInfo(pipeline="sst2", dag_id="retrain_sst2", run_id="r1",
                                    base_url="http://airflow.example:8080", evaluation=evaluation)
    text = retrain_alerts.gate_failure_message(info).text
    told = text[text.index("What would change it:"):].split("\n\n")[0].splitlines()[1:]
    # the collapse and the skipped (skewed) gate's sentence; the failed gates' sentence is in their reasons above
    assert told == ["  - " + evaluation.remedies[0].action, "  - " + evaluation.remedies[1].action]
    assert text.count(remedies.BELOW_BASELINE_ACTION) == 2  # teacher's and student's failed gate, not a third


def test_the_registry_page_lists_the_runs_remedies(tmp_path):
    spec = make_spec(tmp_path.as_uri(), decide={"min_new_rows": 10, "retrain_every_rows": 100})
    run_uri = spec.layout.run("r1")
    storage.write_json(storage.join(run_uri, "decide", "result.json"), _new_class_decision(spec).dump())
    storage.write_json(storage.join(run_uri, "finetune", "result.json"), {"model_uri": "x", "fresh_start": COLLAPSED})
    evaluation = _blocked_evaluation()
    found = publish.run_remedies(run_uri, evaluation)
    assert [r["case"] for r in found] == [remedies.NEW_CLASS, remedies.COLLAPSED, remedies.SKEWED_GOLDEN,
                                          remedies.BELOW_BASELINE]
    version = "v20261206-000000000-abc123"
    storage.write_json(storage.join(registry.version_uri(spec, version), registry.MANIFEST),
                       {"version": version, "run_uri": run_uri, "evaluation": evaluation.dump(), "remedies": found})
    view = registry_ui_app.pipeline_view(spec, version)
    assert view["selected"]["remedies"] == found
    page = registry_ui_app._templates().get_template("pipeline.html").render(
        prefix="", user="admin", may_rollback=False, **view)
    listed = page[page.index('<ul id="remedies">'):]
    for remedy in found:
        assert f'data-case="{remedy["case"]}"' in listed
    assert "set train.init_from: base." in listed and "train.class_weights: logit_adjusted" in listed
