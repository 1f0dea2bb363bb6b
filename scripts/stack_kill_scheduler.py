"""Fault case 1 by hand, on a retrain run of a stack the stack test started: wait for the run's first complete
fine-tune checkpoint in the bucket, SIGKILL the scheduler container's init from the host, wait for compose's
restart, then for the fine-tune's next try; print what was seen (one JSON line after the kill, one at the end).

    .venv/bin/python scripts/stack_test.py --no-down &            # in another shell, while its retrain fine-tunes:
    .venv/bin/python scripts/stack_kill_scheduler.py RETRAIN_RUN_ID [--work /var/tmp/retrain-stack-test]

Same steps as ``stack_faults.FaultRun`` (which does this inside ``make stack-faults``'s own forced run); this
one attaches to a run already going (docs/benchmarks.md, "The docker-compose stack test")."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import stack_faults
import stack_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_id")
    parser.add_argument("--work", default="/var/tmp/retrain-stack-test")
    args = parser.parse_args()
    env = dict(line.split("=", 1) for line in (Path(args.work) / "stack.env").read_text().splitlines() if "=" in line)

    class Stack:
        project = stack_test.PROJECT
        engine = stack_test.Engine(Path(args.work))

    fr = stack_faults.FaultRun(Stack(), lambda: stack_test.api_client(env["_AIRFLOW_WWW_USER_PASSWORD"]),
                               stack_test.s3_client(env["RETRAIN_S3_SECRET_KEY"]), stack_test.PIPELINE,
                               stack_test.say, stack_test.run)
    key = stack_faults.run_key(args.run_id)
    prefix = f"checkpoints/{stack_test.PIPELINE}/{key}/finetune/"
    t0 = time.monotonic()
    seen: dict = {"run_id": args.run_id}
    steps = stack_faults.Poll(1500, 1).until(lambda: stack_faults.complete_checkpoints(fr.keys(prefix), prefix))
    seen["finetune_state_at_kill"] = fr.states(args.run_id).get("finetune")
    seen["killed_at_checkpoint"] = steps[-1] if steps else None
    seen["checkpoint_seen_after_s"] = round(time.monotonic() - t0, 1)
    scheduler = fr.container("airflow-scheduler")
    before = fr.inspect(scheduler)
    stack_test.run(["kill", "-9", str(before["State"]["Pid"])], timeout=30)
    seen["killed_at"] = time.strftime("%H:%M:%S")
    back = stack_faults.Poll(300, 2).until(lambda: (lambda s: s["State"]["Running"] and s["RestartCount"]
                                                    > before["RestartCount"] and s)(fr.inspect(scheduler)))
    seen["restarted"] = bool(back)
    seen["restart_count"] = back["RestartCount"] if back else None
    seen["restarted_after_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(seen), flush=True)
    done = stack_faults.Poll(2400, 5).until(lambda: fr.states(args.run_id).get("finetune") in ("success", "failed")
                                            and fr.states(args.run_id)["finetune"])
    seen["finetune_state"] = done
    seen["finetune_try_number"] = fr.tries(args.run_id, "finetune")
    result = fr.read_json(f"runs/{stack_test.PIPELINE}/{key}/finetune/result.json") or {}
    seen["resumed_from_step"] = result.get("resumed_from_step")
    seen["train_seconds"] = result.get("train_seconds")
    seen["seconds"] = round(time.monotonic() - t0, 1)
    seen["tasks"] = fr.states(args.run_id)
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
