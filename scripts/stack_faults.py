"""The stack test's fault cases (issue 22 item 6): faults injected into a running docker-compose stack.

``scripts/stack_test.py --faults`` (``make stack-faults``) runs them after the happy path, on the same stack:

* three faults in ONE forced retrain run (one run keeps the command near its time bar; each fault is reported
  on its own):
  1. the scheduler container's init process is SIGKILLed from the host (a crash: compose's ``restart: always``
     brings it back, which a ``docker kill`` would not) as soon as the fine-tune's first checkpoint is complete
     in the bucket; the fine-tune's next try must resume from that checkpoint (``resumed_from_step`` > 0);
  2. Postgres is restarted (``docker restart``) while a later stage of the same run is running;
  3. the S3 endpoint is taken off the compose network while publish is copying the version (objects of the new
     version in the bucket, no manifest yet) and put back once publish's try has failed: no half-written
     version may be visible (every version folder has its manifest), the retry completes the same version,
     the registry gains exactly one version and the champion moves once (one promote audit record).
  The stand-in S3 (moto's server) keeps its objects in memory, so "stopped" is done by disconnecting it from
  the network (to the clients: the endpoint is gone) rather than by stopping its process, which would lose
  every object; MinIO's own stop/start on its volume is not what this shows.
* the malformed file is in stack_test.py (it runs on every stack test).

Every wait is bounded in time (``Poll``); a fault that could not be injected at its moment (the stage ended
first) fails its check and says so, rather than passing unseen. The pure helpers below are unit-tested without
Docker (tests/test_stack_faults.py).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

BUCKET = "ml-retrain"


# ----------------------------------------------------------------------------------------- pure helpers

def run_key(dag_run_id: str, kind: str = "retrain") -> str:
    """The storage key of a run, as plugins/pipeline_dags.py run_key makes it (kept in step by a test)."""
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", dag_run_id).strip("-")


def versions_in(keys: list[str], pipeline: str) -> dict[str, bool]:
    """{version: has its manifest} of every version folder under models/<pipeline>/ (keys: an object listing)."""
    prefix = f"models/{pipeline}/"
    found: dict[str, bool] = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix):].split("/")
        if len(parts) < 2 or not parts[0].startswith("v"):
            continue
        found[parts[0]] = found.get(parts[0], False) or (len(parts) == 2 and parts[1] == "manifest.json")
    return found


def complete_checkpoints(keys: list[str], prefix: str) -> list[int]:
    """Steps of the checkpoints under ``prefix`` whose upload completed (their COMPLETE marker is there)."""
    steps = set()
    for key in keys:
        match = re.match(re.escape(prefix.rstrip("/") + "/") + r"checkpoint-(\d+)/COMPLETE$", key)
        if match:
            steps.add(int(match.group(1)))
    return sorted(steps)


def changed_keys(before: dict[str, str], after: dict[str, str], allowed: tuple[str, ...]) -> list[str]:
    """Objects stored before that are gone or hold other bytes now (ETags), except the ``allowed`` keys (a
    pointer the case expects to move). New objects are not changes: nothing stored was lost or overwritten."""
    return sorted(k for k, etag in before.items() if k not in allowed and after.get(k) != etag)


def promote_records(audit: list[dict[str, Any]], version: str) -> int:
    """How many audit records promote ``version`` (the champion moved to it)."""
    return sum(1 for rec in audit if rec.get("event") == "promote" and rec.get("version") == version)


def judge(seen: dict[str, Any], champion_before: str | None) -> dict[str, bool]:
    """The fault checks, from what the case saw (pure, so its rules are tested without a stack)."""
    scheduler, postgres, s3 = seen.get("scheduler_kill", {}), seen.get("postgres_restart", {}), seen.get(
        "s3_down_during_publish", {})
    new_versions = seen.get("new_versions", [])
    version = seen.get("published_version")
    return {
        "fault_run_succeeded": seen.get("run_state") == "success",
        "scheduler_kill_injected_mid_finetune": bool(scheduler.get("killed_at_checkpoint"))
        and scheduler.get("finetune_state_at_kill") == "running",
        "scheduler_came_back": bool(scheduler.get("restarted")),
        "finetune_resumed_from_checkpoint": (scheduler.get("resumed_from_step") or 0) > 0,
        "postgres_restart_injected_mid_run": bool(postgres.get("restarted_during")),
        "s3_down_injected_mid_publish": bool(s3.get("disconnected_with_objects")) and not s3.get(
            "manifest_before_disconnect", True),
        "publish_retried_after_s3_came_back": (s3.get("publish_tries") or 0) >= 2,
        "no_half_written_version_visible": "versions_without_manifest" in seen
        and not seen["versions_without_manifest"],
        "one_version_published": len(new_versions) == 1 and new_versions[0] == version,
        "champion_moved_once": seen.get("champion_after") == version and version is not None
        and seen.get("champion_previous") == champion_before and seen.get("promote_records") == 1,
    }


# ------------------------------------------------------------------------------------------ the fault run

@dataclass
class Poll:
    """A bounded wait: ``until(check)`` calls ``check`` every ``every`` s until it returns something truthy or
    ``seconds`` pass (then None). Errors from a stack in the middle of a fault (an API answering 500 while
    Postgres restarts) count as "not yet"; the last one is kept for the report."""

    seconds: float
    every: float = 1.0
    last_error: str | None = None

    def until(self, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.seconds
        for _ in range(int(self.seconds / self.every) + 2):
            try:
                value = check()
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - the stack is mid-fault; reported if it never clears
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if time.monotonic() > deadline:
                return None
            time.sleep(self.every)
        return None


class FaultRun:
    """One forced retrain with the three run-time faults injected in order."""

    def __init__(self, stack: Any, api_factory: Callable[[], Any], s3: Any, pipeline: str,
                 say: Callable[[str], None], run: Callable[..., Any]) -> None:
        self.stack, self.api_factory, self.s3, self.pipeline = stack, api_factory, s3, pipeline
        self.say, self.run = say, run
        self.docker = stack.engine.docker
        self.api = api_factory()
        self.dag = f"retrain_{pipeline}"

    # ---- the stack, from outside

    def container(self, service: str) -> str:
        ids = self.run([self.docker, "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.stack.project}",
                        "--filter", f"label=com.docker.compose.service={service}"], timeout=60, quiet=True).stdout.split()
        if len(ids) != 1:
            raise RuntimeError(f"expected one {service} container, found {ids}")
        return ids[0]

    def inspect(self, cid: str) -> dict[str, Any]:
        return json.loads(self.run([self.docker, "inspect", cid], timeout=60, quiet=True).stdout)[0]

    def keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            out += [obj["Key"] for obj in page.get("Contents", [])]
        return out

    def read_json(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        except self.s3.exceptions.NoSuchKey:
            return None

    def states(self, run_id: str) -> dict[str, str]:
        return {t["task_id"]: t["state"] for t in self.api.task_instances(self.dag, run_id)}

    def tries(self, run_id: str, task_id: str) -> int:
        tis = [t for t in self.api.task_instances(self.dag, run_id) if t["task_id"] == task_id]
        return int(tis[0].get("try_number") or 0) if tis else 0

    def reconnect_api(self) -> None:
        try:
            self.api.close()
        except Exception:  # noqa: BLE001 - a client of a restarted server
            pass
        self.api = Poll(180, 3).until(self.api_factory)
        if self.api is None:
            raise RuntimeError("the API did not answer again within 180 s")

    # ---- the case

    def execute(self, seen: dict[str, Any]) -> None:
        pipeline = self.pipeline
        champion_before = (self.read_json(f"models/{pipeline}/champion.json") or {}).get("version")
        versions_before = versions_in(self.keys(f"models/{pipeline}/"), pipeline)
        seen["champion_before"] = champion_before
        resp = self.api.trigger(self.dag, {"force_retrain": True})
        if resp.status >= 400:
            raise RuntimeError(f"trigger -> {resp.status}: {resp.text[:300]}")
        run_id = resp.body["dag_run_id"]
        key = run_key(run_id)
        seen["run_id"] = run_id
        t0 = time.monotonic()

        # 1. The scheduler crashes as soon as the fine-tune has a complete checkpoint in the bucket.
        kill: dict[str, Any] = {}
        seen["scheduler_kill"] = kill
        ckpt_prefix = f"checkpoints/{pipeline}/{key}/finetune/"
        steps = Poll(1200, 0.5).until(lambda: complete_checkpoints(self.keys(ckpt_prefix), ckpt_prefix)
                                      or (self.states(run_id).get("finetune") in ("success", "failed")
                                          and ["too late"]))
        kill["finetune_state_at_kill"] = self.states(run_id).get("finetune")
        if not steps or steps == ["too late"]:
            kill["error"] = f"no complete fine-tune checkpoint seen while it ran ({steps})"
        else:
            kill["killed_at_checkpoint"] = steps[-1]
            scheduler = self.container("airflow-scheduler")
            before = self.inspect(scheduler)
            pid, restarts = before["State"]["Pid"], before["RestartCount"]
            self.say(f"fault: SIGKILL the scheduler's init (pid {pid}) at checkpoint {steps[-1]}")
            self.run(["kill", "-9", str(pid)], timeout=30)
            kill["killed_after_s"] = round(time.monotonic() - t0, 1)
            back = Poll(180, 2).until(lambda: (lambda s: s["State"]["Running"] and s["RestartCount"] > restarts
                                               and s)(self.inspect(scheduler)))
            kill["restarted"] = bool(back)
            kill["exit_code"] = back["State"]["ExitCode"] if back else None
        # The fine-tune's next try (the restarted scheduler resets the orphaned task) must finish.
        done = Poll(1500, 3).until(lambda: self.states(run_id).get("finetune") in ("success", "failed")
                                   and self.states(run_id)["finetune"])
        result = self.read_json(f"runs/{pipeline}/{key}/finetune/result.json") or {}
        kill["finetune_state"] = done
        kill["finetune_tries"] = self.tries(run_id, "finetune")
        kill["resumed_from_step"] = result.get("resumed_from_step")

        # 2. Postgres restarts while the next stage runs.
        pg: dict[str, Any] = {}
        seen["postgres_restart"] = pg
        during = Poll(600, 1).until(lambda: next((t for t, s in self.states(run_id).items()
                                                  if s == "running" and t in ("distill", "evaluate")), None))
        if during:
            self.say(f"fault: restart Postgres while {during} runs")
            self.run([self.docker, "restart", "-t", "10", self.container("postgres")], timeout=120)
            pg["restarted_during"] = during
            pg["restarted_after_s"] = round(time.monotonic() - t0, 1)
            self.reconnect_api()
        else:
            pg["error"] = f"no distill/evaluate seen running: {self.states(run_id)}"

        # 3. S3 goes away while publish copies the version, and comes back once that try has failed.
        s3: dict[str, Any] = {}
        seen["s3_down_during_publish"] = s3
        state_key = f"runs/{pipeline}/{key}/publish/state.json"

        def copying() -> Any:
            state = self.read_json(state_key)
            if not state:
                return None
            objects = [k for k in self.keys(f"models/{pipeline}/{state['version']}/")]
            return objects and (state["version"], objects)

        caught = Poll(900, 0.3).until(lambda: copying() or (self.states(run_id).get("publish") in (
            "success", "failed", "upstream_failed", "skipped") and ("too late", [])))
        if caught and caught[0] != "too late":
            minio = self.container("minio")
            networks = list(self.inspect(minio)["NetworkSettings"]["Networks"])
            self.run([self.docker, "network", "disconnect", networks[0], minio], timeout=60)
            s3["disconnected_with_objects"] = len(caught[1])
            s3["manifest_before_disconnect"] = any(k.endswith("/manifest.json") for k in caught[1])
            s3["disconnected_after_s"] = round(time.monotonic() - t0, 1)
            self.say(f"fault: S3 off the network with {len(caught[1])} objects of {caught[0]} copied")
            failed_try = Poll(600, 2).until(lambda: self.states(run_id).get("publish") in (
                "up_for_retry", "failed") and self.states(run_id)["publish"])
            s3["publish_state_while_down"] = failed_try
            self.run([self.docker, "network", "connect", "--alias", "minio", networks[0], minio], timeout=60)
            s3["down_s"] = round(time.monotonic() - t0 - s3["disconnected_after_s"], 1)
        else:
            s3["error"] = f"publish never seen copying: {self.states(run_id)}"

        final = Poll(1500, 3).until(lambda: (lambda r: r["state"] in ("success", "failed") and r)(
            self.api.dag_run(self.dag, run_id)))
        seen["run_state"] = final["state"] if final else "timeout"
        seen["tasks"] = self.states(run_id)
        seen["seconds"] = round(time.monotonic() - t0, 1)
        s3["publish_tries"] = self.tries(run_id, "publish")
        published = self.read_json(f"runs/{pipeline}/{key}/publish/result.json") or {}
        seen["published_version"] = published.get("version")
        after = versions_in(self.keys(f"models/{pipeline}/"), pipeline)
        seen["new_versions"] = sorted(v for v in after if v not in versions_before and after[v])
        seen["versions_without_manifest"] = sorted(v for v, complete in after.items() if not complete)
        champion = self.read_json(f"models/{pipeline}/champion.json") or {}
        seen["champion_after"] = champion.get("version")
        seen["champion_previous"] = (champion.get("previous") or {}).get("version") if isinstance(
            champion.get("previous"), dict) else champion.get("previous")
        audit = [self.read_json(k) or {} for k in self.keys(f"models/{pipeline}/audit/")]
        seen["promote_records"] = promote_records(audit, seen["published_version"] or "")
        self.api.close()


def fault_cases(stack: Any, api_factory: Callable[[], Any], s3: Any, pipeline: str, say: Callable[[str], None],
                run: Callable[..., Any], result: dict[str, Any], checks: dict[str, bool]) -> None:
    seen: dict[str, Any] = {}
    result["faults"] = seen
    try:
        FaultRun(stack, api_factory, s3, pipeline, say, run).execute(seen)
    finally:
        checks.update(judge(seen, seen.get("champion_before")))
