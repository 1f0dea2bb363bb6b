"""One stage spec, two ways to run it.

``build_stage(spec, stage, arguments)`` returns the Airflow task for a heavy stage:

- ``kubernetes`` mode: a KubernetesPodOperator running the task image, with GPU limits, tolerations, node
  selector, priority class, an in-memory /dev/shm, S3 credentials from a Kubernetes Secret, and the stage's
  result returned through /airflow/xcom/return.json;
- ``local`` mode (the embedded default): ``LocalStageOperator``, which runs exactly the same command as a
  subprocess of the Airflow worker and returns the same result JSON.

Both take their command from ``stage_command()``, so the two modes cannot drift apart. The mode comes from
the spec (``stages.mode``) or the environment variable RETRAIN_STAGE_MODE.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

from airflow.sdk import BaseOperator

from tasks.spec import PipelineSpec, StageSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Env every stage gets in both modes: no hub at run time, ever.
STAGE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def stage_command(spec: PipelineSpec, stage: str, arguments: Sequence[str]) -> tuple[list[str], list[str]]:
    """(cmds, arguments) for a stage: ``python -m tasks STAGE ...``, or torchrun (DDP) with more than one GPU."""
    gpus = stage_spec(spec, stage).gpus
    if gpus > 1:
        cmds = ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "-m", "tasks"]
    else:
        cmds = ["python", "-m", "tasks"]
    return cmds, [stage, *arguments]


def stage_spec(spec: PipelineSpec, stage: str) -> StageSpec:
    try:
        return getattr(spec.stages, stage)
    except AttributeError:
        raise ValueError(f"pipeline {spec.name}: no stage {stage!r} in stages") from None


def retry_args(resources: StageSpec) -> dict[str, Any]:
    return {
        "retries": resources.retries,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=15),
        "execution_timeout": timedelta(minutes=resources.timeout_minutes),
    }


def build_stage(spec: PipelineSpec, stage: str, arguments: Sequence[str], *, task_id: str | None = None,
                mode: str | None = None, **task_kwargs: Any) -> BaseOperator:
    """The Airflow task that runs ``stage`` for ``spec`` in the configured mode."""
    mode = mode or spec.stage_mode
    cmds, args = stage_command(spec, stage, arguments)
    resources = stage_spec(spec, stage)
    kwargs = {**retry_args(resources), **task_kwargs}
    task_id = task_id or stage
    if mode == "kubernetes":
        return _kubernetes_operator(spec, stage, task_id, cmds, args, resources, kwargs)
    if mode == "local":
        return LocalStageOperator(task_id=task_id, cmds=cmds, arguments=args, storage_conn_id=spec.storage.conn_id,
                                  storage_uri=spec.storage.uri, **kwargs)
    raise ValueError(f"unknown stage mode {mode!r}: use local or kubernetes")


def _kubernetes_operator(spec: PipelineSpec, stage: str, task_id: str, cmds: list[str], args: list[str],
                         resources: StageSpec, kwargs: dict[str, Any]) -> BaseOperator:
    # Imported here: the provider costs ~0.7 s of DAG parse time, which local mode should not pay.
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    kube = spec.stages.kubernetes
    requests = {"cpu": resources.cpu, "memory": resources.memory}
    limits = {"memory": resources.memory_limit or resources.memory}
    if resources.cpu_limit:
        limits["cpu"] = resources.cpu_limit
    if resources.gpus:
        requests["nvidia.com/gpu"] = str(resources.gpus)
        limits["nvidia.com/gpu"] = str(resources.gpus)
    shm = k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                         size_limit=resources.shm_size))
    return KubernetesPodOperator(
        task_id=task_id,
        name=f"{spec.name}-{stage}".replace("_", "-"),
        namespace=kube.namespace,
        image=kube.image,
        image_pull_policy=kube.image_pull_policy,
        cmds=cmds,
        arguments=args,
        container_resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        tolerations=[k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
                     for t in resources.tolerations],
        node_selector=dict(resources.node_selector) or None,
        priority_class_name=resources.priority_class,
        service_account_name=kube.service_account,
        volumes=[shm],
        volume_mounts=[k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")],
        env_vars=dict(STAGE_ENV, RETRAIN_TASK_IMAGE=kube.image),
        # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ... as env from the secret's keys.
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=kube.s3_secret))],
        labels={"app.kubernetes.io/name": "airflow-retrain", "retrain/pipeline": spec.name, "retrain/stage": stage},
        kubernetes_conn_id=kube.conn_id,
        in_cluster=kube.in_cluster,
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",  # failed pods stay for debugging
        durable=True,  # a restarted worker reattaches to the running pod instead of starting over
        startup_timeout_seconds=900,  # GPU nodes may need to scale up
        **kwargs,
    )


def storage_env(conn_id: str | None, storage_uri: str) -> dict[str, str]:
    """AWS_* variables for a stage subprocess, from the Airflow connection (when storage is S3).

    Variables already in the environment win, so tests and pods that set them directly are left alone.
    """
    if not storage_uri.startswith("s3://") or not conn_id:
        return {}
    wanted = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
    if all(os.environ.get(name) for name in wanted[:2]):
        return {}
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
    except Exception:  # no such connection: boto3 falls back to its own credential chain
        return {}
    extra = conn.extra_dejson or {}
    env = {
        "AWS_ACCESS_KEY_ID": conn.login or extra.get("aws_access_key_id", ""),
        "AWS_SECRET_ACCESS_KEY": conn.password or extra.get("aws_secret_access_key", ""),
        "AWS_ENDPOINT_URL": extra.get("endpoint_url", ""),
        "AWS_DEFAULT_REGION": extra.get("region_name", ""),
    }
    return {k: v for k, v in env.items() if v}


def apply_storage_env(spec: PipelineSpec) -> None:
    """For Airflow-side tasks that read storage themselves (prepare_run, decide, notify)."""
    for key, value in storage_env(spec.storage.conn_id, spec.storage.uri).items():
        os.environ.setdefault(key, value)


class LocalStageOperator(BaseOperator):
    """Runs a stage command as a subprocess of the worker: the embedded default, same command as the pod.

    The stage writes its result JSON to $RETRAIN_XCOM_PATH (in a pod: /airflow/xcom/return.json); this
    operator returns it, so downstream tasks see the same XCom in both modes.
    """

    template_fields: Sequence[str] = ("arguments",)
    ui_color = "#e8f4ea"

    def __init__(self, *, cmds: list[str], arguments: list[str], storage_conn_id: str | None = None,
                 storage_uri: str = "", env_vars: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cmds = list(cmds)
        self.arguments = list(arguments)
        self.storage_conn_id = storage_conn_id
        self.storage_uri = storage_uri
        self.env_vars = dict(env_vars or {})
        self._proc: subprocess.Popen | None = None

    def _env(self, xcom_path: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(STAGE_ENV)
        env.update(storage_env(self.storage_conn_id, self.storage_uri))
        env.update(self.env_vars)
        # "python" and "torchrun" resolve to this interpreter's environment, and `-m tasks` to this checkout.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        env["RETRAIN_XCOM_PATH"] = str(xcom_path)
        return env

    def execute(self, context: Any) -> Any:
        command = [*self.cmds, *self.arguments]
        self.log.info("Running stage locally: %s", " ".join(command))
        with tempfile.TemporaryDirectory(prefix="stage-xcom-") as tmp:
            xcom_path = Path(tmp) / "return.json"
            started = time.monotonic()
            self._proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=self._env(xcom_path),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          start_new_session=True)
            assert self._proc.stdout is not None
            # Printed, not logged: Airflow puts a task's stdout in its log, and `make demo` shows it live.
            for line in self._proc.stdout:
                print(line.rstrip(), flush=True)
            returncode = self._proc.wait()
            self.log.info("Stage exited with %s after %.1f s", returncode, time.monotonic() - started)
            if returncode != 0:
                raise RuntimeError(f"stage command failed with exit code {returncode}: {' '.join(command)}")
            if not xcom_path.exists():
                raise RuntimeError("stage finished without writing its result JSON")
            return json.loads(xcom_path.read_text())

    def on_kill(self) -> None:
        if self._proc and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
