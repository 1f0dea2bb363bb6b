"""``python -m tasks STAGE [ARGS]``: the one entrypoint for every stage, in a pod and locally."""

from __future__ import annotations

import importlib
import os
import sys

# Stage name -> module; each module has main(argv: list[str]) -> int | None.
STAGES = {
    "ingest": "tasks.ingest",
    "drift": "tasks.drift",
    "finetune": "tasks.finetune",
    "distill": "tasks.distill",
    "evaluate": "tasks.evaluate",
    "publish": "tasks.publish",
    "registry": "tasks.registry",
    "validate-spec": "tasks.validate_spec",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        known = ", ".join(STAGES)
        print(f"usage: python -m tasks STAGE [ARGS]\nstages: {known}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(STAGES[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
