"""``python -m tasks validate-spec PATH...``: check pipeline spec files (or folders of them) before they reach the
DAG folder: each file on its own, then all of them together (duplicate names, overlapping landing zones)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tasks import cli, storage
from tasks.spec import SpecError, folder_problems, load_spec


@dataclass
class ValidateArgs:
    paths: list[str] = field(metadata={"positional": True,
                                       "help": "spec files, or folders whose *.yaml files are checked together"})


def main(argv: list[str]) -> int:
    args = cli.parse(ValidateArgs, argv, prog="python -m tasks validate-spec", description=__doc__)
    files: list[Path] = []
    for raw in args.paths:
        path = Path(raw)
        files.extend(sorted(path.glob("*.y*ml")) if path.is_dir() else [path])
    failed = 0
    loaded = []
    for path in files:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            print(exc, file=sys.stderr)
            failed += 1
        else:
            loaded.append((path, spec))
            print(f"ok: {path} (pipeline {spec.name}, storage {spec.storage.uri})")
            seed = spec.golden.seed_uri
            if seed and not storage.is_s3(seed) and not storage.exists(storage.normalize(seed)):
                # Not an error: only a local run on a fresh storage root needs it (production reads source_uri).
                print(f"warning: {path}: golden.seed_uri {seed} does not exist; a local run (make run / make "
                      f"ingest) on a fresh storage root cannot seed the golden set {spec.golden.source_uri}",
                      file=sys.stderr)
    for _paths, problem in folder_problems(loaded):
        print(f"invalid together: {problem}", file=sys.stderr)
        failed += 1
    return 1 if failed else 0
