"""``python -m tasks validate-spec FILE...``: check pipeline spec files before they reach the DAG folder."""

from __future__ import annotations

import argparse
import sys

from tasks.spec import SpecError, load_spec


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks validate-spec")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            print(exc, file=sys.stderr)
            failed += 1
        else:
            print(f"ok: {path} (pipeline {spec.name}, storage {spec.storage.uri})")
    return 1 if failed else 0
