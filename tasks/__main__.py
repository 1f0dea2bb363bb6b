"""``python -m tasks STAGE [ARGS]``: the one entrypoint for every stage, in a pod and locally."""

from __future__ import annotations

import importlib
import logging
import os
import sys

from tasks import cost
from tasks.cli import set_offline_env, setup_logging
from tasks.errors import PipelineError

# Stage name -> module; each module has main(argv: list[str]) -> int | None.
STAGES = {
    "ingest": "tasks.data.ingest",
    "withdraw": "tasks.data.withdraw",
    "golden": "tasks.data.golden",
    "drift": "tasks.drift.stage",
    "finetune": "tasks.train.finetune",
    "distill": "tasks.train.distill",
    "evaluate": "tasks.decide.evaluate",
    "publish": "tasks.decide.publish",
    "registry": "tasks.decide.registry",
    "validate-spec": "tasks.validate_spec",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    set_offline_env()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        known = ", ".join(STAGES)
        print(f"usage: python -m tasks STAGE [ARGS]\nstages: {known}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    setup_logging()
    cost.start()  # results.emit adds the stage's wall time, GPU-seconds and energy to its result
    module = importlib.import_module(STAGES[argv[0]])
    return int(module.main(argv[1:]) or 0)


def exit_now(code: int) -> None:
    """Flush and leave without interpreter finalization. Native thread pools (Arrow's, seen in CI) can abort
    while Python tears itself down ("terminate called without an active exception", exit -6), which would turn
    a finished stage, or its clean error exit, into a crash that Airflow retries. Every stage has written its
    outputs and result before it returns, so nothing is lost by skipping the teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run() -> None:
    try:
        code = main()
    except SystemExit as exc:  # argparse errors and --help; sys.exit("message") prints it and exits 1, as Python does
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except PipelineError as exc:  # a classified failure: one clear line, and the kind's exit code
        print(f"error ({exc.kind.name}): {exc}", file=sys.stderr)
        code = exc.kind.exit_code
    except BaseException:  # noqa: BLE001 - print the traceback as Python would, then exit 1
        import traceback

        traceback.print_exc()
        code = 1
    exit_now(code)


if __name__ == "__main__":
    run()
