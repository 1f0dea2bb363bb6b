"""scripts/stack_pods.py without Docker: the `docker run` it makes from the provider's pod spec carries the pod's
own argv, env, user and working directory, and a failing container's exit code and log tail reach the operator's
failure as Kubernetes would report them."""

from __future__ import annotations

import pytest

import stack_pods
from conftest import ROOT
from stack_pods import as_list, docker_run_argv, option, retarget, termination_message

RUN = "s3://ml-retrain/runs/sst2/retrain-manual__2026-12-06T10-00-00-00-00"
ARGS = ["--run", RUN, "--snapshot", "s3://ml-retrain/snapshots/sst2/s1", "--teacher", f"{RUN}/finetune/model",
        "--promote"]


def test_rendered_arguments_lose_the_stage_name_and_keep_the_rest():
    assert as_list(["publish", *ARGS], "publish") == ARGS
    assert as_list(repr(["publish", *ARGS]), "publish") == ARGS
    assert as_list(ARGS, "publish") == ARGS


def test_retarget_moves_every_run_uri_and_never_promotes():
    new = RUN.rsplit("/", 1)[0] + "/pod-check-1"
    out = retarget(ARGS, RUN, new, "publish")
    assert option(out, "--run") == new and option(out, "--teacher") == f"{new}/finetune/model"
    assert "--promote" not in out and "--no-promote" in out
    assert option(out, "--snapshot") == "s3://ml-retrain/snapshots/sst2/s1"
    assert "--no-promote" not in retarget(ARGS[:-1], RUN, new, "finetune")


def test_termination_message_is_the_log_tail_kubernetes_keeps():
    logs = "\n".join(f"line {i}" for i in range(200)) + "\nerror (data_rejected): no such snapshot"
    message = termination_message(logs)
    assert message.endswith("error (data_rejected): no such snapshot")
    assert len(message.splitlines()) == 80
    assert len(termination_message("x" * 5000).encode()) == 2048


@pytest.fixture
def pod(tmp_path, monkeypatch):
    monkeypatch.delenv("RETRAIN_STAGE_MODE", raising=False)
    return stack_pods.build_pod(ROOT / "include" / "pipelines" / "sst2.yaml", "finetune", ARGS[:-1],
                                tmp_path / "airflow-home")


def test_docker_run_carries_the_pods_argv_env_user_and_workdir(pod):
    (container,) = [c for c in pod.spec.containers if c.name == "base"]
    cmd, taken = docker_run_argv("docker", "img:1", container, pod.spec, network="net", xcom_dir="/tmp/x",
                                 secret_env={"AWS_ACCESS_KEY_ID": "k"}, name="n")
    argv = container.command + container.args
    assert taken["argv"] == argv and argv[:4] == ["python", "-m", "tasks", "finetune"]
    image_at = cmd.index("img:1")
    assert cmd[image_at - 2:image_at] == ["--entrypoint", argv[0]] and cmd[image_at + 1:] == argv[1:]
    for e in container.env:
        assert f"{e.name}={e.value}" in cmd
    assert "HF_HUB_OFFLINE=1" in cmd and "AWS_ACCESS_KEY_ID=k" in cmd
    assert "/tmp/x:/airflow/xcom" in cmd
    uid, _gid = stack_pods.run_as(container, pod.spec)
    if uid is not None:
        assert cmd[cmd.index("--user") + 1].startswith(f"{uid}:")
    else:
        assert "--user" not in cmd and taken["user"] == "image default"
    if container.working_dir:
        assert cmd[cmd.index("-w") + 1] == container.working_dir


def test_a_failed_container_becomes_the_operators_stage_failure():
    from kubernetes.client import models as k8s

    from stage_factory import pod_failure

    message = termination_message("training...\nerror (data_rejected): snapshot s3://b/x does not exist")
    status = k8s.V1PodStatus(container_statuses=[k8s.V1ContainerStatus(
        name="base", image="i", image_id="", ready=False, restart_count=0,
        state=k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=3, message=message)))])
    error = pod_failure("drift", k8s.V1Pod(status=status))
    assert error is not None and error.exit_code == 3 and error.kind and error.reason


def test_run_as_reads_the_container_first_then_the_pod_in_either_form():
    from types import SimpleNamespace as NS

    from kubernetes.client import models as k8s

    container = NS(security_context=k8s.V1SecurityContext(run_as_user=1000))
    assert stack_pods.run_as(container, NS(security_context={"runAsUser": 5, "runAsGroup": 7})) == (1000, 7)
    assert stack_pods.run_as(NS(security_context=None), NS(security_context={})) == (None, None)
