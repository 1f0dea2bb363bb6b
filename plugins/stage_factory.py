"""One stage spec, two ways to run it, and one way to read its result back.

``build_stage(spec, stage, arguments)`` returns the Airflow task for a heavy stage:

- ``kubernetes`` mode: ``KubernetesStageOperator``, a pod running the task image with GPU limits, tolerations,
  node selector, priority class, an in-memory /dev/shm, S3 credentials from a Kubernetes Secret, and the stage's
  result returned through /airflow/xcom/return.json. The cncf provider's KubernetesPodOperator builds and
  watches the pod, but only when the task runs: importing the provider costs ~0.7 s, which every DAG parse
  would otherwise pay;
- ``local`` mode (the embedded default): ``LocalStageOperator``, which runs exactly the same command as a
  subprocess of the Airflow worker and returns the same result JSON.

Both take their command from ``stage_command()``, so the two modes cannot drift apart, and both turn a failed
stage into the same exception: ``tasks.errors`` maps the stage's exit code to its error kind, a deterministic
kind (data rejected, spec invalid, gate failed) fails the task at once (``StageRejected``, an
AirflowFailException: no retries), anything else raises ``StageFailed`` and is retried. The message carries the
stage's own last error line (``error (kind): message``, what ``python -m tasks`` prints), so the failure alert,
which gets the exception as ``context["exception"]``, says why.

``pull_result(ti, task_id)`` reads a task's XCom through its model in ``tasks.contracts``, loudly;
``stage_results`` reads several, with their tasks' states, for the run summary.

This module is also loaded by Airflow's plugin manager, possibly before any DAG file has run, so it imports
nothing from the ``tasks`` package at module level (see docs/triggers.md, "How the DAG files import").
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from retrain_lineage import StageLineage  # OpenLineage inputs/outputs of a stage; imports nothing heavy

if TYPE_CHECKING:
    from tasks.contracts import Result
    from tasks.spec import PipelineSpec, StageSpec

# ESC [ ... final byte (CSI: colours, cursor moves) and the two-byte escapes; ECMA-48. Also what alerts strip.
ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
PROJECT_ROOT = Path(__file__).resolve().parents[1]

def stage_env() -> dict[str, str]:
    """Env every stage gets in both modes: no hub at run time, ever (tasks.cli.OFFLINE_ENV, the one place), output
    unbuffered, and plain text: no library colours it (NO_COLOR, https://no-color.org)."""
    from tasks.cli import OFFLINE_ENV

    return {**OFFLINE_ENV, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "TERM": "dumb"}


# ---------------------------------------------------------------- the command


def stage_command(spec: PipelineSpec, stage: str, arguments: Sequence[Any]) -> tuple[list[str], list[Any]]:
    """(cmds, arguments) for a stage: ``python -m tasks STAGE ...``, or torchrun (DDP) with more than one GPU."""
    gpus = stage_spec(spec, stage).gpus
    if gpus > 1:
        # "--" ends torchrun's own options: its parser would take the stage's --run for its --run-path.
        cmds = ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "-m", "--", "tasks"]
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


def build_stage(spec: PipelineSpec, stage: str, arguments: Sequence[Any], *, task_id: str | None = None,
                mode: str | None = None, **task_kwargs: Any) -> BaseOperator:
    """The Airflow task that runs ``stage`` for ``spec`` in the configured mode.

    ``arguments`` may hold XComArgs (``prepare.output["run_uri"]``): both operators template ``arguments``,
    so Airflow resolves them when the task runs and adds the upstream dependency. Every key of the stage's
    result is also pushed as its own XCom (``multiple_outputs``), so ``ingest.output["snapshot_uri"]`` works.
    """
    mode = mode or spec.stage_mode
    cmds, args = stage_command(spec, stage, arguments)
    resources = stage_spec(spec, stage)
    kwargs = {**retry_args(resources), "multiple_outputs": True, **task_kwargs}
    task_id = task_id or stage
    if mode == "kubernetes":
        return KubernetesStageOperator(task_id=task_id, stage=stage, cmds=cmds, arguments=args,
                                       pod_settings=pod_settings(spec, stage, resources),
                                       storage_conn_id=spec.storage.conn_id, storage_uri=spec.storage.uri, **kwargs)
    if mode == "local":
        return LocalStageOperator(task_id=task_id, stage=stage, cmds=cmds, arguments=args,
                                  storage_conn_id=spec.storage.conn_id, storage_uri=spec.storage.uri, **kwargs)
    raise ValueError(f"unknown stage mode {mode!r}: use local or kubernetes")


# ---------------------------------------------------------------- why a stage failed


class StageFailed(AirflowException):
    """A stage exited non-zero with a kind worth a retry (infrastructure, killed, unexpected)."""

    def __init__(self, message: str, *, stage: str | None = None, exit_code: int | None = None,
                 kind: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.stage, self.exit_code, self.kind, self.reason = stage, exit_code, kind, reason


class StageRejected(StageFailed, AirflowFailException):
    """A stage failed deterministically (data rejected, spec invalid, gate failed): the same command would fail
    again, so the task fails at once, without retries."""


# `python -m tasks` prints a classified failure as one line on stderr: "error (data_rejected): message".
ERROR_LINE = re.compile(r"^error \((?P<kind>[a-z_]+)\): ")
MAX_REASON_CHARS = 1500


def failure_reason(output_lines: Iterable[str]) -> str:
    """The stage's own account of its failure: from its last ``error (kind): ...`` line to the end of the output
    (a message may run over several lines); else the last non-blank line (a traceback's exception line)."""
    lines = [line.rstrip() for line in output_lines]
    for i in range(len(lines) - 1, -1, -1):
        if ERROR_LINE.match(lines[i]):
            reason = "\n".join(line for line in lines[i:] if line.strip())
            return reason[:MAX_REASON_CHARS]
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:MAX_REASON_CHARS]
    return "(the stage printed nothing)"


def stage_failure(stage: str, exit_code: int | None, output_lines: Iterable[str]) -> StageFailed:
    """The exception for a failed stage, from its exit code (``tasks.errors``, the one mapping) and output."""
    from tasks import errors

    kind = errors.kind_of_exit(exit_code)
    reason = failure_reason(output_lines)
    retry = "retried" if kind.retry else "not retried"
    message = (f"stage {stage} failed: {kind.name} (exit code {exit_code}, {retry}; {kind.meaning}): {reason}")
    cls = StageFailed if kind.retry else StageRejected
    return cls(message, stage=stage, exit_code=exit_code, kind=kind.name, reason=reason)


# ---------------------------------------------------------------- a finished run is final

def finished_run(run_uri: str | None) -> dict | None:
    """The run summary of a run that reached its verdict (promoted, blocked by gates, published not promoted,
    skipped, stopped), or None: no summary yet (the run is going), or it failed before a verdict
    (``Outcome.REDOABLE``: such a run may be cleared and redone; docs/triggers.md, "Odd triggers, clears and
    reruns")."""
    from tasks import storage
    from tasks.contracts import Outcome

    if not run_uri:
        return None
    try:
        summary = storage.read_json(storage.join(run_uri, "summary.json"))
    except storage.NotFound:
        return None
    return None if summary.get("outcome") in Outcome.REDOABLE else summary


def finished_run_message(task_id: str, summary: dict) -> str:
    publish = summary.get("publish") or {}
    snapshot = (summary.get("ingest") or {}).get("snapshot_id")
    detail = ", ".join(x for x in (f"version {publish['version']}" if publish.get("version") else "",
                                   f"snapshot {snapshot}" if snapshot else "") if x)
    return (f"{task_id}: run {summary.get('run_key')} already finished ({summary.get('outcome')}"
            + (f", {detail}" if detail else "") + "): a cleared task of a finished run redoes nothing, so nothing "
            "stored is overwritten and nothing is published or promoted twice; its summary is "
            f"{summary.get('run_uri')}/summary.json. To train again, trigger a new run (force_retrain: true for the "
            "same snapshot).")


def skip_if_run_finished(run_uri: str | None, task_id: str) -> None:
    """AirflowSkipException when ``run_uri`` already reached its verdict (a task cleared or rerun from the UI)."""
    summary = finished_run(run_uri)
    if summary is not None:
        raise AirflowSkipException(finished_run_message(task_id, summary))


def require_arguments(task_id: str, arguments: Sequence[Any]) -> None:
    """Fail at once when a rendered argument is None: the upstream result it comes from is missing (that task
    was marked success by hand, or its XCom was cleared). Passed on, None would become the string "None", which
    the stages read as the "none" sentinel (tasks.cli.optional): no champion, no teacher."""
    missing = [str(arguments[i - 1]) if i else f"argument {i}" for i, a in enumerate(arguments) if a is None]
    if missing:
        raise MissingResult(f"{task_id}: no value for {', '.join(missing)}: the upstream task that provides it left "
                            "no result (marked success by hand, or cleared); clear that task to run it again",
                            absent=True)


def run_argument(arguments: Sequence[Any]) -> str | None:
    """The value of a stage command's ``--run`` (rendered), or None."""
    args = [str(a) for a in arguments]
    return args[args.index("--run") + 1] if "--run" in args[:-1] else None


def before_stage(task_id: str, arguments: Sequence[Any], storage_conn_id: str | None, storage_uri: str) -> None:
    """What both operators do before they start a stage: storage credentials for this worker (it reads the run's
    summary first), skip a cleared task of a finished run, fail on an argument whose upstream result is missing."""
    set_storage_env(storage_conn_id, storage_uri)
    skip_if_run_finished(run_argument(arguments), task_id)
    require_arguments(task_id, arguments)


# ---------------------------------------------------------------- local mode


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


def set_storage_env(conn_id: str | None, storage_uri: str) -> None:
    """storage_env() into this process's environment, where a variable is not set already."""
    for key, value in storage_env(conn_id, storage_uri).items():
        os.environ.setdefault(key, value)


def apply_storage_env(spec: PipelineSpec) -> None:
    """For Airflow-side tasks that read storage themselves (prepare_run, decide, notify)."""
    set_storage_env(spec.storage.conn_id, spec.storage.uri)


class LocalStageOperator(StageLineage, BaseOperator):
    """Runs a stage command as a subprocess of the worker: the embedded default, same command as the pod.

    The stage writes its result JSON to $RETRAIN_XCOM_PATH (in a pod: /airflow/xcom/return.json); this
    operator returns it, so downstream tasks see the same XCom in both modes.
    """

    template_fields: Sequence[str] = ("arguments",)
    ui_color = "#e8f4ea"
    OUTPUT_TAIL_LINES = 200  # kept to find the stage's error line

    def __init__(self, *, cmds: list[str], arguments: list[Any], stage: str | None = None,
                 storage_conn_id: str | None = None, storage_uri: str = "", env_vars: dict[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage or self.task_id
        self.cmds = list(cmds)
        self.arguments = list(arguments)
        self.storage_conn_id = storage_conn_id
        self.storage_uri = storage_uri
        self.env_vars = dict(env_vars or {})
        self._proc: subprocess.Popen | None = None

    def _env(self, xcom_path: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(stage_env())
        env.update(storage_env(self.storage_conn_id, self.storage_uri))
        env.update(self.env_vars)
        # "python" and "torchrun" resolve to this interpreter's environment, where `-m tasks` is the installed package.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["RETRAIN_XCOM_PATH"] = str(xcom_path)
        return env

    def execute(self, context: Any) -> Any:
        before_stage(self.task_id, self.arguments, self.storage_conn_id, self.storage_uri)
        command = [str(part) for part in (*self.cmds, *self.arguments)]
        self.log.info("Running stage locally: %s", " ".join(command))
        tail: collections.deque[str] = collections.deque(maxlen=self.OUTPUT_TAIL_LINES)
        with tempfile.TemporaryDirectory(prefix="stage-xcom-") as tmp:
            xcom_path = Path(tmp) / "return.json"
            started = time.monotonic()
            self._proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=self._env(xcom_path),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          start_new_session=True)
            assert self._proc.stdout is not None
            # Printed, not logged: Airflow puts a task's stdout in its log, and `make demo` shows it live.
            for line in self._proc.stdout:
                line = ANSI_ESCAPE.sub("", line)  # a colour code that slipped through would garble the log
                print(line.rstrip(), flush=True)
                tail.append(line)
            returncode = self._proc.wait()
            self.log.info("Stage exited with %s after %.1f s", returncode, time.monotonic() - started)
            if returncode != 0:
                raise stage_failure(self.stage, returncode, tail)
            if not xcom_path.exists():
                raise RuntimeError("stage finished without writing its result JSON")
            return self.keep_result(json.loads(xcom_path.read_text()))

    def on_kill(self) -> None:
        if self._proc and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)


# ---------------------------------------------------------------- kubernetes mode


def pod_settings(spec: PipelineSpec, stage: str, resources: StageSpec) -> dict[str, Any]:
    """The pod, as plain data (no kubernetes client objects: those are built when the task runs)."""
    kube = spec.stages.kubernetes
    requests = {"cpu": resources.cpu, "memory": resources.memory}
    limits = {"memory": resources.memory_limit or resources.memory}
    if resources.cpu_limit:
        limits["cpu"] = resources.cpu_limit
    if resources.gpus:
        requests["nvidia.com/gpu"] = str(resources.gpus)
        limits["nvidia.com/gpu"] = str(resources.gpus)
    return {
        "name": f"{spec.name}-{stage}".replace("_", "-"),
        "namespace": kube.namespace,
        "image": kube.image,
        "image_pull_policy": kube.image_pull_policy,
        "requests": requests,
        "limits": limits,
        "tolerations": [t.model_dump() for t in resources.tolerations],
        "node_selector": dict(resources.node_selector),
        "priority_class_name": resources.priority_class,
        "service_account_name": kube.service_account,
        "shm_size": resources.shm_size,
        "env_vars": dict(stage_env(), RETRAIN_TASK_IMAGE=kube.image),
        "s3_secret": kube.s3_secret,
        "labels": {"app.kubernetes.io/name": "airflow-retrain", "retrain/pipeline": spec.name,
                   "retrain/stage": stage},
        "kubernetes_conn_id": kube.conn_id,
        "in_cluster": kube.in_cluster,
    }


class KubernetesStageOperator(StageLineage, BaseOperator):
    """kubernetes mode: runs the stage command in a pod through the cncf provider's KubernetesPodOperator.

    At parse time this holds the pod settings as plain data; ``pod_operator()`` builds the provider's operator
    (``StagePodOperator``) from them, which ``execute`` then runs and ``build_pod_request_obj`` asks for the
    pod it would create.
    """

    template_fields: Sequence[str] = ("arguments",)
    ui_color = "#e4ecf7"

    def __init__(self, *, stage: str, cmds: list[str], arguments: list[Any], pod_settings: dict[str, Any],
                 storage_conn_id: str | None = None, storage_uri: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.storage_conn_id, self.storage_uri = storage_conn_id, storage_uri
        self.cmds = list(cmds)
        self.arguments = list(arguments)
        self.pod_settings = dict(pod_settings)
        self.kubernetes_conn_id = pod_settings["kubernetes_conn_id"]
        self._running: Any = None

    def pod_operator(self) -> Any:
        """The provider's operator for this stage (call it outside a DAG context: it is not a task of its own)."""
        from kubernetes.client import models as k8s

        s = self.pod_settings
        shm = k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                             size_limit=s["shm_size"]))
        return stage_pod_operator_class()(
            task_id=self.task_id,
            stage=self.stage,
            name=s["name"],
            namespace=s["namespace"],
            image=s["image"],
            image_pull_policy=s["image_pull_policy"],
            cmds=list(self.cmds),
            arguments=[str(a) for a in self.arguments],
            container_resources=k8s.V1ResourceRequirements(requests=s["requests"], limits=s["limits"]),
            tolerations=[k8s.V1Toleration(**t) for t in s["tolerations"]],
            node_selector=s["node_selector"] or None,
            priority_class_name=s["priority_class_name"],
            service_account_name=s["service_account_name"],
            volumes=[shm],
            volume_mounts=[k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")],
            env_vars=dict(s["env_vars"]),
            # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ... as env from the secret's keys.
            env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s["s3_secret"]))],
            labels=dict(s["labels"]),
            kubernetes_conn_id=s["kubernetes_conn_id"],
            in_cluster=s["in_cluster"],
            do_xcom_push=True,
            get_logs=True,
            # The last log lines become the container's termination message on a failure, so the stage's
            # "error (kind): ..." line can be read back from the pod status (StagePodOperator.cleanup).
            termination_message_policy="FallbackToLogsOnError",
            on_finish_action="delete_succeeded_pod",  # failed pods stay for debugging
            durable=True,  # a restarted worker reattaches to the running pod instead of starting over
            startup_timeout_seconds=900,  # GPU nodes may need to scale up
        )

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> Any:
        return self.pod_operator().build_pod_request_obj(context, dry_run=dry_run)

    def execute(self, context: Any) -> Any:
        before_stage(self.task_id, self.arguments, self.storage_conn_id, self.storage_uri)
        self._running = self.pod_operator()
        return self.keep_result(self._running.execute(context))

    def on_kill(self) -> None:
        if self._running is not None:
            self._running.on_kill()


def base_container_exit_code(pod: Any, container: str = "base") -> int | None:
    """The exit code of the stage's container in a pod status, or None if it has not terminated."""
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    status = next((s for s in statuses if s.name == container), None)
    terminated = status.state.terminated if status and status.state else None
    return terminated.exit_code if terminated else None


def base_container_message(pod: Any, container: str = "base") -> str:
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    status = next((s for s in statuses if s.name == container), None)
    terminated = status.state.terminated if status and status.state else None
    return (terminated.message or "") if terminated else ""


def pod_failure(stage: str, pod: Any, container: str = "base") -> StageFailed | None:
    """The StageFailed/StageRejected for a finished stage pod, or None when its container has no exit code
    (never started, still running): then the provider's own error stands."""
    code = base_container_exit_code(pod, container)
    if code is None or code == 0:
        return None
    return stage_failure(stage, code, base_container_message(pod, container).splitlines())


_STAGE_POD_OPERATOR: type | None = None


def stage_pod_operator_class() -> type:
    """KubernetesPodOperator that fails like LocalStageOperator: by the stage's exit code, with its reason.
    Defined on first use so that only running a pod imports the provider."""
    global _STAGE_POD_OPERATOR
    if _STAGE_POD_OPERATOR is None:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        class StagePodOperator(KubernetesPodOperator):
            def __init__(self, *, stage: str, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.stage = stage

            def cleanup(self, pod, remote_pod, xcom_result=None, context=None):
                try:
                    return super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
                except AirflowException as exc:
                    failure = pod_failure(self.stage, remote_pod, self.base_container_name)
                    if failure is None:
                        raise
                    raise failure from exc

        _STAGE_POD_OPERATOR = StagePodOperator
    return _STAGE_POD_OPERATOR


# ---------------------------------------------------------------- reading results back


class MissingResult(AirflowFailException):
    """A task that should have produced a result did not (``absent``), or produced one that does not fit its
    contract."""

    def __init__(self, message: str, *, absent: bool = False) -> None:
        super().__init__(message)
        self.absent = absent


def task_states(ti: Any, task_ids: Iterable[str]) -> dict[str, str | None]:
    """The states of other tasks of this run (Airflow 3: through the task SDK, no DB access)."""
    task_ids = list(task_ids)
    by_run = ti.get_task_states(dag_id=ti.dag_id, task_ids=task_ids, run_ids=[ti.run_id]) or {}
    states = by_run.get(ti.run_id) or {}
    return {task_id: (None if states.get(task_id) is None else str(states[task_id])) for task_id in task_ids}


def pull_result(ti: Any, task_id: str, *, required: bool = True, state: str | None = None) -> Result | None:
    """``task_id``'s XCom result, validated with its model (``tasks.contracts.RESULT_OF_TASK``).

    None when the task was skipped (a short-circuited stage: explicit, not an error). A required result that
    is missing, or a result that does not fit its model, raises MissingResult naming the task and its state.
    With ``required=False`` a missing result of a task that did not succeed is None as well (the run summary
    after a failure); a task that succeeded without a result still raises.
    """
    from pydantic import ValidationError

    from tasks.contracts import RESULT_OF_TASK

    model = RESULT_OF_TASK[task_id]
    value = ti.xcom_pull(task_ids=task_id)
    if value is None:
        state = state or task_states(ti, [task_id])[task_id]
        if state == "skipped" or (not required and state != "success"):
            return None
        raise MissingResult(f"task {task_id} left no {model.__name__} in XCom (task state: {state}); "
                            f"its result is required here", absent=True)
    try:
        return model.read(value)
    except ValidationError as exc:
        raise MissingResult(f"task {task_id}'s result does not fit {model.__name__}: {exc}") from None


def stage_results(ti: Any, task_ids: Sequence[str],
                  ) -> tuple[dict[str, Result | None], dict[str, str | None], list[str]]:
    """Each task's result (``pull_result``; None: it did not run), the tasks' states, and notes. A task that did
    not succeed has no result (its state says so); one that succeeded must have one, unless someone marked it
    success by hand: a note says so and it counts as not run, instead of failing the reader."""
    states = task_states(ti, task_ids)
    results: dict[str, Result | None] = {}
    notes: list[str] = []
    for task_id in task_ids:
        try:
            results[task_id] = pull_result(ti, task_id, required=False, state=states[task_id])
        except MissingResult as exc:
            if not exc.absent:
                raise
            results[task_id] = None
            notes.append(f"{task_id} is marked success but left no result (marked by hand?): the summary counts "
                         "it as not run")
    return results, states, notes
