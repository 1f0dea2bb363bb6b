"""The heavy stages run in the task image exactly as a pod would run them (issue 22 item 4), on the stack test's
stack: ``scripts/stack_test.py --pod-stages``.

For each of ingest, drift, finetune, distill, evaluate and publish, the pod spec is the one the provider builds
(``KubernetesStageOperator.build_pod_request_obj()``, plugins/stage_factory.py) from the arguments Airflow
rendered for that task in the happy path's retrain run (read back through the REST API). Its ``base`` container's
command + args, env, user (security context; the image's own USER when the pod sets none) and working directory
become one ``docker run`` of the task image on the compose network, with the env the ``retrain-s3`` secret gives
a pod (docs/operations.md, Kubernetes mode) and an ``/airflow/xcom`` folder for the stage's return.json.

The stages write into a run folder of their own (``runs/<pipeline>/pod-check-<time>``, seeded with the happy
run's frozen spec and decision, the objects no stage writes), and publish runs with ``--no-promote`` (its dry
run: publish and verify, champion untouched), so the fault cases' counts are not disturbed.

Then one stage is made to fail (drift on a snapshot that does not exist): its exit code and the last log lines,
which Kubernetes would put in the container's termination message (``FallbackToLogsOnError``: the last 80 lines,
at most 2048 bytes), go through ``stage_factory.pod_failure`` as the operator reads them from a pod status.
"""

from __future__ import annotations

import ast
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HEAVY = ("ingest", "drift", "finetune", "distill", "evaluate", "publish")


# ----------------------------------------------------------------------------------------- pure helpers

def as_list(rendered: Any, stage: str) -> list[str]:
    """A rendered ``arguments`` field as the API returns it (a list, or its repr as a string), without the
    stage name ``stage_command`` put first (build_stage puts it back)."""
    if isinstance(rendered, str):
        rendered = ast.literal_eval(rendered)
    args = [str(a) for a in rendered]
    return args[1:] if args[:1] == [stage] else args


def retarget(args: list[str], old_run: str, new_run: str, stage: str) -> list[str]:
    """The happy run's arguments pointed at the check's own run folder; publish without promotion."""
    out = [a.replace(old_run, new_run) for a in args]
    if stage == "publish":
        out = ["--no-promote" if a == "--promote" else a for a in out]
        if "--no-promote" not in out:
            out.append("--no-promote")
    return out


def option(args: list[str], name: str) -> str | None:
    """The value after ``name`` in an argv (``--run URI``), or None."""
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def termination_message(logs: str) -> str:
    """What Kubernetes puts in a failed container's termination message under ``FallbackToLogsOnError``: the
    tail of its log, at most 80 lines and 2048 bytes."""
    tail = "\n".join(logs.splitlines()[-80:]).encode()
    return tail[-2048:].decode("utf-8", "replace")


def _field(obj: Any, snake: str, camel: str) -> Any:
    if isinstance(obj, dict):  # the provider may leave a security context as a plain dict
        return obj.get(snake, obj.get(camel))
    return getattr(obj, snake, None) if obj is not None else None


def run_as(container: Any, pod_spec: Any) -> tuple[int | None, int | None]:
    """(uid, gid) the pod's container runs as: its own security context first, then the pod's; None = the
    image's USER."""
    uid = gid = None
    for context in (container.security_context, pod_spec.security_context):
        uid = uid if uid is not None else _field(context, "run_as_user", "runAsUser")
        gid = gid if gid is not None else _field(context, "run_as_group", "runAsGroup")
    return uid, gid


def docker_run_argv(docker: str, image: str, container: Any, pod_spec: Any, *, network: str, xcom_dir: str,
                    secret_env: dict[str, str], name: str) -> tuple[list[str], dict[str, Any]]:
    """``docker run`` for the pod's ``base`` container: its command/args, env, user and working directory
    (a V1Container / V1PodSpec from build_pod_request_obj()). Also returns what was taken, for the report."""
    argv = list(container.command or []) + list(container.args or [])
    env = {e.name: e.value for e in (container.env or []) if e.value is not None}
    uid, gid = run_as(container, pod_spec)
    cmd = [docker, "run", "--name", name, "--network", network, "-v", f"{xcom_dir}:/airflow/xcom"]
    if uid is not None:
        cmd += ["--user", f"{uid}:{gid if gid is not None else 0}"]
    if container.working_dir:
        cmd += ["-w", container.working_dir]
    for key, value in {**env, **secret_env}.items():
        cmd += ["-e", f"{key}={value}"]
    cmd += ["--entrypoint", argv[0], image, *argv[1:]]
    taken = {"argv": argv, "env": sorted(env), "secret_env": sorted(secret_env),
             "user": f"{uid}:{gid}" if uid is not None else "image default",
             "workdir": container.working_dir or "image default"}
    return cmd, taken


# ------------------------------------------------------------------------------------------------ the run

def build_pod(spec_path: Path, stage: str, args: list[str], airflow_home: Path) -> Any:
    """The provider's pod for one stage (dry run: no cluster is asked)."""
    os.environ.setdefault("AIRFLOW_HOME", str(airflow_home))
    from airflow.sdk import DAG

    from stage_factory import build_stage
    from tasks.spec import load_spec

    spec = load_spec(str(spec_path))
    with DAG(dag_id=f"stack_pod_{stage}", schedule=None):
        operator = build_stage(spec, stage, args, mode="kubernetes")
    return operator.build_pod_request_obj(dry_run=True)


def pod_stages(*, api: Any, s3: Any, bucket: str, pipeline: str, run_id: str, spec_path: Path, work: Path,
               docker: str, image: str, network: str, secret_env: dict[str, str], run: Callable[..., Any],
               say: Callable[[str], None], result: dict[str, Any], checks: dict[str, bool]) -> None:
    import sys

    root = Path(__file__).resolve().parents[1]
    for extra in (str(root / "plugins"), str(root)):
        if extra not in sys.path:
            sys.path.insert(0, extra)
    from stage_factory import pod_failure

    seen: dict[str, Any] = {}
    result["pod_stages"] = seen
    dag = f"retrain_{pipeline}"
    old_run = new_run = None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for stage in HEAVY:
        ti = api.ok("GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances/{stage}")
        args = as_list((ti.get("rendered_fields") or {}).get("arguments") or [], stage)
        if old_run is None:
            old_run = option(args, "--run")
            if not old_run:
                raise RuntimeError(f"{stage}: no --run in {args}")
            new_run = old_run.rsplit("/", 1)[0] + f"/pod-check-{stamp}"
            seed_run_folder(s3, bucket, old_run, new_run)
            seen["run"] = new_run
        args = retarget(args, old_run, new_run, stage)
        seen[stage] = one_stage(stage, args, spec_path=spec_path, work=work, docker=docker, image=image,
                                network=network, secret_env=secret_env, run=run, say=say)
        if seen[stage]["exit"] != 0:
            break
    checks["pod_stages_ran_in_task_image"] = all(seen.get(s, {}).get("exit") == 0 for s in HEAVY)

    # One failing stage: its exit code and termination message reach the operator's failure.
    args = seen.get("drift", {}).get("args") or ["--run", new_run or ""]
    snapshot = option(args, "--snapshot")
    bad = [a.replace(snapshot, snapshot.rsplit("/", 1)[0] + "/does-not-exist") if snapshot else a for a in args]
    if snapshot is None:
        bad += ["--snapshot", f"s3://{bucket}/snapshots/{pipeline}/does-not-exist"]
    failing = one_stage("drift", bad, spec_path=spec_path, work=work, docker=docker, image=image,
                        network=network, secret_env=secret_env, run=run, say=say, keep_logs=True)
    from kubernetes.client import models as k8s

    status = k8s.V1PodStatus(container_statuses=[k8s.V1ContainerStatus(
        name="base", image=image, image_id="", ready=False, restart_count=0,
        state=k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(
            exit_code=failing["exit"], message=termination_message(failing.pop("logs", "")))))])
    error = pod_failure("drift", k8s.V1Pod(status=status))
    failing["operator_error"] = {"type": type(error).__name__ if error else None, "message": str(error)[:400],
                                 "kind": getattr(error, "kind", None), "exit_code": getattr(error, "exit_code", None),
                                 "reason": getattr(error, "reason", None)}
    seen["failing_stage"] = failing
    checks["failing_pod_stage_reaches_the_operator"] = (
        failing["exit"] not in (0, None) and error is not None and getattr(error, "exit_code", None) == failing["exit"]
        and bool(getattr(error, "kind", None)) and bool(getattr(error, "reason", None)))


def seed_run_folder(s3: Any, bucket: str, old_run: str, new_run: str) -> None:
    """Copy what no heavy stage writes (the frozen spec, the decision) from the happy run into the new one."""
    old_prefix = old_run.split(f"s3://{bucket}/", 1)[1].rstrip("/") + "/"
    new_prefix = new_run.split(f"s3://{bucket}/", 1)[1].rstrip("/") + "/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=old_prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(old_prefix):]
            if rel.split("/", 1)[0] not in HEAVY:
                s3.copy_object(Bucket=bucket, Key=new_prefix + rel, CopySource={"Bucket": bucket, "Key": obj["Key"]})


def one_stage(stage: str, args: list[str], *, spec_path: Path, work: Path, docker: str, image: str, network: str,
              secret_env: dict[str, str], run: Callable[..., Any], say: Callable[[str], None],
              keep_logs: bool = False) -> dict[str, Any]:
    pod = build_pod(spec_path, stage, args, work / "airflow-home")
    (container,) = [c for c in pod.spec.containers if c.name == "base"]
    name = f"retrain-stacktest-pod-{stage}-{int(time.time())}"
    with tempfile.TemporaryDirectory(prefix=f"xcom-{stage}-") as xcom:
        os.chmod(xcom, 0o777)  # the pod's user is not this one
        cmd, taken = docker_run_argv(docker, image, container, pod.spec, network=network, xcom_dir=xcom,
                                     secret_env=secret_env, name=name)
        say(f"pod stage {stage}: {' '.join(taken['argv'])[:300]}")
        t0 = time.monotonic()
        proc = run(cmd, timeout=1500, check=False, nice=True)
        out: dict[str, Any] = {"exit": proc.returncode, "seconds": round(time.monotonic() - t0, 1), "taken": taken,
                               "args": args}
        result_file = Path(xcom) / "return.json"
        if result_file.exists():
            out["xcom_keys"] = sorted(json.loads(result_file.read_text()))[:20]
        if keep_logs:  # the container's output, stderr (where the stage's error line goes) last
            out["logs"] = proc.stdout + proc.stderr
        elif proc.returncode != 0:
            out["tail"] = (proc.stdout + proc.stderr)[-1500:]
    run([docker, "rm", "-f", name], timeout=60, check=False, quiet=True)
    return out
