"""One stage spec, two ways to run it: the real pod spec the provider builds, and the local command."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from conftest import ROOT


@pytest.fixture
def spec(monkeypatch):
    from tasks.spec import load_spec

    monkeypatch.delenv("RETRAIN_STAGE_MODE", raising=False)
    return load_spec(ROOT / "include" / "pipelines" / "sst2.yaml")


ARGS = ["--run", "s3://bucket/runs/sst2/r1", "--snapshot", "s3://bucket/snapshots/sst2/abc"]


def build(spec, stage, mode):
    from airflow.sdk import DAG

    from stage_factory import build_stage

    with DAG(dag_id=f"t_{stage}_{mode}", schedule=None):
        return build_stage(spec, stage, ARGS, mode=mode)


def pod_for(spec, stage="finetune"):
    return build(spec, stage, "kubernetes").build_pod_request_obj(dry_run=True)


def test_pod_has_gpu_limit_tolerations_shm_and_secret_env(spec):
    pod = pod_for(spec)
    (container,) = [c for c in pod.spec.containers if c.name == "base"]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.resources.requests["cpu"] == "4"
    assert container.resources.requests["memory"] == "16Gi"
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [("nvidia.com/gpu", "Exists",
                                                                            "NoSchedule")]
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.spec.service_account_name == "retrain-tasks"
    (shm,) = [v for v in pod.spec.volumes if v.name == "dshm"]
    assert shm.empty_dir.medium == "Memory" and shm.empty_dir.size_limit == "8Gi"
    assert any(m.mount_path == "/dev/shm" and m.name == "dshm" for m in container.volume_mounts)
    assert [e.secret_ref.name for e in container.env_from if e.secret_ref] == ["retrain-s3"]
    env = {e.name: e.value for e in container.env}
    assert env["HF_HUB_OFFLINE"] == "1"
    # The result comes back through /airflow/xcom/return.json, read by the provider's sidecar.
    assert any(c.name == "airflow-xcom-sidecar" for c in pod.spec.containers)
    assert any(m.mount_path == "/airflow/xcom" for m in container.volume_mounts)


def test_pod_command_equals_local_command(spec):
    for stage in ("ingest", "drift", "finetune", "distill", "evaluate", "publish"):
        local = build(spec, stage, "local")
        pod = pod_for(spec, stage)
        (container,) = [c for c in pod.spec.containers if c.name == "base"]
        assert container.command + container.args == local.cmds + local.arguments, stage
        assert local.cmds == ["python", "-m", "tasks"]
        assert container.args[0] == stage


def test_cpu_stage_gets_no_gpu(spec):
    pod = pod_for(spec, "ingest")
    (container,) = [c for c in pod.spec.containers if c.name == "base"]
    assert "nvidia.com/gpu" not in (container.resources.limits or {})
    assert not pod.spec.tolerations


def test_four_gpus_become_torchrun_ddp(spec):
    from tasks.spec import with_overrides

    spec4 = with_overrides(spec, {"stages.finetune.gpus": 4, "stages.finetune.priority_class": "gpu-batch"})
    pod = pod_for(spec4)
    (container,) = [c for c in pod.spec.containers if c.name == "base"]
    assert container.command == ["torchrun", "--standalone", "--nproc_per_node=4", "-m", "--", "tasks"]
    assert container.args[:1] == ["finetune"]
    assert container.resources.limits["nvidia.com/gpu"] == "4"
    assert pod.spec.priority_class_name == "gpu-batch"
    local = build(spec4, "finetune", "local")
    assert container.command + container.args == local.cmds + local.arguments


def test_operator_settings_for_preemption_and_debugging(spec):
    from datetime import timedelta

    op = build(spec, "finetune", "kubernetes")
    assert op.retries == 2 and op.retry_exponential_backoff  # retries belong to the Airflow task
    assert op.execution_timeout == timedelta(minutes=240)
    pod_op = op.pod_operator()  # the provider's operator that runs the pod
    assert pod_op.get_logs is True
    assert pod_op.on_finish_action.value == "delete_succeeded_pod"
    assert pod_op.durable is True
    assert pod_op.do_xcom_push is True
    (container,) = [c for c in pod_for(spec).spec.containers if c.name == "base"]
    # The stage's last log lines become the termination message on failure: how its reason comes back.
    assert container.termination_message_policy == "FallbackToLogsOnError"


def test_mode_from_environment(spec, monkeypatch):
    from airflow.sdk import DAG

    from stage_factory import LocalStageOperator, build_stage

    monkeypatch.setenv("RETRAIN_STAGE_MODE", "kubernetes")
    with DAG(dag_id="t_env_mode", schedule=None):
        op = build_stage(spec, "ingest", ARGS)
    assert type(op).__name__ == "KubernetesStageOperator"
    monkeypatch.setenv("RETRAIN_STAGE_MODE", "local")
    with DAG(dag_id="t_env_mode2", schedule=None):
        assert isinstance(build_stage(spec, "ingest", ARGS), LocalStageOperator)
    monkeypatch.setenv("RETRAIN_STAGE_MODE", "cluster")
    with pytest.raises(Exception, match="local or kubernetes"):
        spec.stage_mode


def test_local_operator_runs_the_command_and_returns_its_result(tmp_path):
    """The local operator really runs `python -m tasks ...` and hands back the JSON the stage emitted."""
    from airflow.sdk import DAG

    # Imported here, not at the top: Airflow's plugin manager (run by other tests' DagBags) re-imports plugins/
    # modules, so a class imported at collection time may not be the one the operator raises.
    from stage_factory import LocalStageOperator, StageFailed

    with DAG(dag_id="t_local_exec", schedule=None):
        op = LocalStageOperator(task_id="probe", cmds=["python", "-c"],
                                arguments=["from tasks.results import emit; emit({'ok': 41 + 1})"])
    assert op.execute(context={}) == {"ok": 42}
    with DAG(dag_id="t_local_fail", schedule=None):
        failing = LocalStageOperator(task_id="probe", cmds=["python", "-m", "tasks"], arguments=["no-such-stage"])
    with pytest.raises(StageFailed, match="exit code 2") as caught:
        failing.execute(context={})
    assert not isinstance(caught.value, AirflowFailException)  # an unclassified crash is retried


def test_local_operator_output_is_plain_text(capsys):
    """Stage output reaches the task log without colour codes: the stage is asked for none, and any that slip
    through are stripped."""
    from airflow.sdk import DAG

    from stage_factory import LocalStageOperator

    code = ("import os; from tasks.results import emit; "
            "print('\\x1b[31mred\\x1b[0m', os.environ.get('NO_COLOR')); emit({'ok': True})")
    with DAG(dag_id="t_local_plain", schedule=None):
        op = LocalStageOperator(task_id="probe", cmds=["python", "-c"], arguments=[code])
    assert op.execute(context={}) == {"ok": True}
    out = capsys.readouterr().out
    assert "red 1" in out and "\x1b" not in out


# A stage that fails the way every stage does: it raises an error kind and `python -m tasks` (tasks.__main__.run)
# prints "error (kind): message" and exits with the kind's code.
FAILING_STAGE = """
import sys
from tasks import __main__ as entry, errors

def main():
    print("reading batch-2.tsv")
    raise getattr(errors, sys.argv[1])(sys.argv[2])

entry.main = main
entry.run()
"""


@pytest.mark.parametrize("error, code, retried", [
    ("DataRejected", 3, False), ("SpecInvalid", 4, False), ("GateFailed", 5, False),
    ("InfrastructureError", 75, True),
])
def test_local_operator_fails_by_error_kind_with_the_stage_reason(tmp_path, error, code, retried):
    from airflow.sdk import DAG

    from stage_factory import LocalStageOperator, StageFailed

    script = tmp_path / "stage.py"
    script.write_text(FAILING_STAGE)
    reason = "batch-2.tsv: 45% of rows are bad (limit 20%); quarantined"
    with DAG(dag_id=f"t_local_{code}", schedule=None):
        op = LocalStageOperator(task_id="ingest", cmds=["python", str(script)], arguments=[error, reason])
    with pytest.raises(StageFailed) as caught:
        op.execute(context={})
    exc = caught.value
    assert isinstance(exc, AirflowFailException) is not retried  # AirflowFailException: Airflow never retries
    assert exc.exit_code == code and exc.stage == "ingest"
    kind = {3: "data_rejected", 4: "spec_invalid", 5: "gate_failed", 75: "infrastructure"}[code]
    assert exc.kind == kind
    assert f"error ({kind}): {reason}" in str(exc)  # the alert gets this message as context["exception"]
    assert str(exc).startswith(f"stage ingest failed: {kind} (exit code {code}, {'retried' if retried else 'not retried'}")


def failed_pod(exit_code: int | None, message: str = ""):
    """A stage pod as the Kubernetes API reports it after its container terminated."""
    from kubernetes.client import models as k8s

    state = (k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code, message=message))
             if exit_code is not None else k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(
                 reason="ImagePullBackOff")))
    status = k8s.V1ContainerStatus(name="base", image="img", image_id="", ready=False, restart_count=0,
                                   state=state)
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="sst2-ingest-abc", namespace="ml-retrain"),
                     spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", image="img")]),
                     status=k8s.V1PodStatus(phase="Failed", container_statuses=[status]))


# The termination message (FallbackToLogsOnError): the container log's tail, ending in the stage's error line.
POD_LOG_TAIL = "reading batch-2.tsv\n2000 rows, 900 bad\nerror (data_rejected): batch-2.tsv: 45% of rows are bad\n"


def test_pod_exit_code_decides_retry_and_carries_the_reason():
    from stage_factory import StageFailed, StageRejected, pod_failure

    rejected = pod_failure("ingest", failed_pod(3, POD_LOG_TAIL))
    assert isinstance(rejected, StageRejected) and isinstance(rejected, AirflowFailException)
    assert rejected.kind == "data_rejected"
    assert "error (data_rejected): batch-2.tsv: 45% of rows are bad" in str(rejected)
    oom = pod_failure("finetune", failed_pod(137, "Killed"))
    assert isinstance(oom, StageFailed) and not isinstance(oom, AirflowFailException)
    assert oom.kind == "killed"
    assert pod_failure("ingest", failed_pod(None)) is None  # never ran: the provider's own error stands


class FakeCoreV1Api:
    """Only the Kubernetes API is faked: the calls the provider's cleanup makes for a failed pod."""

    def __init__(self):
        self.patched = []

    def patch_namespaced_pod(self, name, namespace, body, **kwargs):
        self.patched.append((name, namespace, body))

    def list_namespaced_event(self, namespace, **kwargs):
        from kubernetes.client import models as k8s

        return k8s.CoreV1EventList(items=[])

    def read_namespaced_pod(self, name, namespace, **kwargs):
        return failed_pod(3, POD_LOG_TAIL)


def test_pod_operator_cleanup_raises_the_stage_failure(spec):
    """The provider's own cleanup path for a failed pod (faked API) ends in our exception, not a bare
    'Pod returned a failure' that Airflow would retry."""
    from stage_factory import StageRejected

    pod_op = build(spec, "ingest", "kubernetes").pod_operator()
    pod_op.client = FakeCoreV1Api()
    pod = failed_pod(3, POD_LOG_TAIL)
    with pytest.raises(StageRejected, match=r"error \(data_rejected\): batch-2.tsv") as caught:
        pod_op.cleanup(pod, pod)
    assert "returned a failure" in str(caught.value.__cause__)  # the provider's exception, kept as the cause
    assert pod_op.client.patched  # the failed pod was marked checked and kept for debugging
