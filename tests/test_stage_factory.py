"""One stage spec, two ways to run it: the real pod spec the provider builds, and the local command."""

from __future__ import annotations

import pytest

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
    assert container.command == ["torchrun", "--standalone", "--nproc_per_node=4", "-m", "tasks"]
    assert container.args[:1] == ["finetune"]
    assert container.resources.limits["nvidia.com/gpu"] == "4"
    assert pod.spec.priority_class_name == "gpu-batch"
    local = build(spec4, "finetune", "local")
    assert container.command + container.args == local.cmds + local.arguments


def test_operator_settings_for_preemption_and_debugging(spec):
    from datetime import timedelta

    op = build(spec, "finetune", "kubernetes")
    assert op.get_logs is True
    assert op.on_finish_action.value == "delete_succeeded_pod"
    assert op.durable is True
    assert op.do_xcom_push is True
    assert op.retries == 2 and op.retry_exponential_backoff
    assert op.execution_timeout == timedelta(minutes=240)


def test_mode_from_environment(spec, monkeypatch):
    from airflow.sdk import DAG

    from stage_factory import LocalStageOperator, build_stage

    monkeypatch.setenv("RETRAIN_STAGE_MODE", "kubernetes")
    with DAG(dag_id="t_env_mode", schedule=None):
        op = build_stage(spec, "ingest", ARGS)
    assert type(op).__name__ == "KubernetesPodOperator"
    monkeypatch.setenv("RETRAIN_STAGE_MODE", "local")
    with DAG(dag_id="t_env_mode2", schedule=None):
        assert isinstance(build_stage(spec, "ingest", ARGS), LocalStageOperator)
    monkeypatch.setenv("RETRAIN_STAGE_MODE", "cluster")
    with pytest.raises(Exception, match="local or kubernetes"):
        spec.stage_mode


def test_local_operator_runs_the_command_and_returns_its_result(tmp_path):
    """The local operator really runs `python -m tasks ...` and hands back the JSON the stage emitted."""
    from airflow.sdk import DAG

    from stage_factory import LocalStageOperator

    with DAG(dag_id="t_local_exec", schedule=None):
        op = LocalStageOperator(task_id="probe", cmds=["python", "-c"],
                                arguments=["from tasks.results import emit; emit({'ok': 41 + 1})"])
    assert op.execute(context={}) == {"ok": 42}
    with DAG(dag_id="t_local_fail", schedule=None):
        failing = LocalStageOperator(task_id="probe", cmds=["python", "-m", "tasks"], arguments=["no-such-stage"])
    with pytest.raises(RuntimeError, match="exit code 2"):
        failing.execute(context={})
