"""The model registry: immutable versions in storage, one champion pointer moved by conditional writes, and an
append-only audit log. Library (used by publish and the DAG) and CLI:

``python -m tasks registry --spec SPEC list | champion | show V | verify V | promote V --expected-champion E |
rollback [--to V] | audit | rerun V [--execute] | copy-spec V --run R | sync-serving``

Layout (``spec.layout``)::

    models/<pipeline>/<version>/teacher/...     the fine-tuned teacher, with its model card (README.md)
    models/<pipeline>/<version>/student/...     the distilled student, with its model card (README.md)
    models/<pipeline>/<version>/exports/...     the student's CPU-serving exports
    models/<pipeline>/<version>/serving/...     the student's Triton config.pbtxt and labels.txt (serving.py)
    models/<pipeline>/<version>/reports/...     gate report, metrics, confusion matrices, the run's spec.json
    models/<pipeline>/<version>/manifest.json   written once (If-None-Match), after every file; sha256 of each
    models/<pipeline>/champion.json             {version, version_uri, snapshot_id, snapshot_uri, promoted_at, previous}
    models/<pipeline>/audit/<ts>-<event>-<version>.json   one object per promotion / rollback, never rewritten

Guarantees: a version is promotable only if its manifest exists and every file re-hashes to the manifest's
sha256 (no missing or extra files); champion.json is written last, with If-Match on the ETag read before the
decision (If-None-Match on the first promotion), so of two concurrent promotions exactly one wins and the
other gets ``PromotionRefused``; the pointer is never touched when anything before it fails.

Error kinds (``tasks.errors``): a request the registry cannot meet as asked (unknown version, nothing to roll
back) is ``SpecInvalid``, a bad argument; a version that fails verification and a refused promotion are
``GateFailed``: nothing was promoted, and running the same command again would fail the same way (the stored
bytes and the champion do not change by waiting), so Airflow does not retry; a pointer that keeps changing
under a read is ``InfrastructureError`` (worth a retry).
"""

from __future__ import annotations

import logging
import argparse
import json
import os
import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from tasks import cli, storage
from tasks.contracts import VERSION_MANIFEST
from tasks.decide import champion_events, serving
from tasks.errors import GateFailed, InfrastructureError, SpecInvalid
from tasks.manifests import VersionManifest, read_version_manifest
from tasks.spec import PipelineSpec, load_spec

log = logging.getLogger(__name__)

MANIFEST = VERSION_MANIFEST


class RegistryError(SpecInvalid):
    """A registry request that cannot be met as asked: an unknown or incomplete version, nothing to roll back."""


class VerificationFailed(GateFailed):
    """A version's files do not match its manifest; it can never become champion."""


class PromotionRefused(GateFailed):
    """The pointer was not moved: the champion changed (expected another) or a concurrent promotion won."""


def file_sha256(uri: str) -> str:
    """sha256 of one stored object, streamed, so a model's weights are never held in memory."""
    return storage.sha256_uri(uri)


# ---------------------------------------------------------------- versions


def new_version_id(now: datetime | None = None) -> str:
    """Sorts by time, to the millisecond: v20261123-101500123-<6 hex> (two runs in one second still sort)."""
    now = now or datetime.now(timezone.utc)
    return f"v{now:%Y%m%d-%H%M%S}{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"


def version_uri(spec: PipelineSpec, version: str) -> str:
    return spec.layout.version(version)


def read_manifest(spec: PipelineSpec, version: str) -> VersionManifest:
    try:
        return read_version_manifest(version_uri(spec, version))
    except storage.NotFound:
        raise RegistryError(f"version {version} has no manifest (unknown or incomplete)") from None


def list_versions(spec: PipelineSpec) -> list[str]:
    """Versions with a manifest (complete ones), oldest first."""
    prefix = spec.layout.models.rstrip("/") + "/"
    out = set()
    for obj in storage.list_objects(prefix):
        rel = obj.uri[len(prefix):]
        parts = rel.split("/")
        if len(parts) == 2 and parts[1] == MANIFEST and parts[0].startswith("v"):
            out.add(parts[0])
    return sorted(out)


def verify(spec: PipelineSpec, version: str) -> dict[str, Any]:
    """Re-hash every file of a version against its manifest. ``ok`` only if nothing is missing, extra or changed."""
    manifest = read_manifest(spec, version)
    base = version_uri(spec, version).rstrip("/") + "/"
    expected = manifest.files
    present = {o.uri[len(base):]: o for o in storage.list_objects(base)}
    present.pop(MANIFEST, None)
    missing = sorted(set(expected) - set(present))
    extra = sorted(set(present) - set(expected))
    mismatched = [rel for rel in sorted(set(expected) & set(present))
                  if present[rel].size != expected[rel]["size"] or file_sha256(base + rel) != expected[rel]["sha256"]]
    ok = bool(expected) and not (missing or extra or mismatched)
    return {"version": version, "ok": ok, "files": len(expected), "missing": missing, "extra": extra,
            "mismatched": mismatched}


def require_verified(spec: PipelineSpec, version: str) -> dict[str, Any]:
    report = verify(spec, version)
    if not report["ok"]:
        raise VerificationFailed(
            f"version {version} failed verification: missing={report['missing']} extra={report['extra']} "
            f"mismatched={report['mismatched']}")
    return report


# ---------------------------------------------------------------- champion pointer and audit


def read_champion_with_etag(spec: PipelineSpec) -> tuple[dict[str, Any] | None, str | None]:
    """The champion pointer and its ETag, or (None, None) before the first promotion.

    The ETag belongs to the bytes returned: the object is stat'ed before and after the read, and read again
    (a bounded number of times) if a concurrent writer changed it in between.
    """
    uri = spec.layout.champion
    for _ in range(5):
        before = storage.stat(uri)
        if before is None:
            return None, None
        try:
            data = storage.read_bytes(uri)
        except storage.NotFound:
            continue
        after = storage.stat(uri)
        if after is not None and after.etag == before.etag:
            return json.loads(data), before.etag
    raise InfrastructureError(f"{uri} keeps changing; try again")


def read_champion(spec: PipelineSpec) -> dict[str, Any] | None:
    return read_champion_with_etag(spec)[0]


def _audit(spec: PipelineSpec, event: str, record: dict[str, Any], actor: str | None = None) -> str:
    ts = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    uri = storage.join(spec.layout.audit, f"{ts}-{event}-{record.get('version', 'none')}.json")
    storage.write_json(uri, {"event": event, "at": storage.utcnow(), "actor": actor or _actor(), **record},
                       if_none_match=True)
    return uri


def append_audit(spec: PipelineSpec, event: str, record: dict[str, Any], actor: str | None = None) -> str:
    """An audit record of a decision that moves no pointer (a version rejected at approval); create-only."""
    return _audit(spec, event, record, actor)


def _actor() -> str:
    return os.environ.get("RETRAIN_ACTOR") or os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or os.environ.get("USER", "unknown")


def read_audit(spec: PipelineSpec) -> list[dict[str, Any]]:
    return [storage.read_json(o.uri) for o in storage.list_objects(spec.layout.audit) if o.uri.endswith(".json")]


def _move_pointer(spec: PipelineSpec, pointer: dict[str, Any], etag: str | None) -> str:
    try:
        if etag is None:
            return storage.write_json(spec.layout.champion, pointer, if_none_match=True)
        return storage.write_json(spec.layout.champion, pointer, if_match=etag)
    except storage.PreconditionFailed as exc:
        raise PromotionRefused(f"champion.json changed while promoting {pointer['version']} "
                               f"(a concurrent promotion or rollback won): {exc}") from exc


def promote(spec: PipelineSpec, version: str, *, expected_champion: str | None, event: str = "promote",
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Make ``version`` the champion if the current champion is ``expected_champion`` (None = no champion yet).

    Verifies every file first (VerificationFailed), then writes champion.json conditionally (PromotionRefused
    when the champion is not the expected one or a concurrent writer won), then appends the audit record.
    Idempotent: if ``version`` already is the champion, nothing is written again except a missing audit record.
    """
    require_verified(spec, version)
    manifest = read_manifest(spec, version)
    current, etag = read_champion_with_etag(spec)
    current_version = current["version"] if current else None
    if current_version == version:
        _ensure_audited(spec, event, current)
        return current
    if current_version != expected_champion:
        raise PromotionRefused(
            f"champion is {current_version or 'none'}, but {version} was gated against "
            f"{expected_champion or 'none'}; re-evaluate against the current champion")
    pointer = {
        "version": version,
        "version_uri": version_uri(spec, version),
        "snapshot_id": manifest.snapshot_id,
        "snapshot_uri": manifest.snapshot_uri,
        "promoted_at": storage.utcnow(),
        "previous": current_version,
        "training": manifest.training,  # full or incremental: the next decision counts the streak
    }
    new_etag = _move_pointer(spec, pointer, etag)
    _audit(spec, event, {**pointer, "champion_etag": new_etag, **(extra or {})})
    serving.after_move(spec, pointer)  # the Triton repository follows; never raises (the move stands)
    return pointer


def _ensure_audited(spec: PipelineSpec, event: str, pointer: dict[str, Any]) -> None:
    for record in read_audit(spec):
        if record.get("version") == pointer["version"] and record.get("promoted_at") == pointer["promoted_at"]:
            return
    _audit(spec, event, {**pointer, "note": "audit record completed on retry"})


def rollback(spec: PipelineSpec, to: str | None = None, *, actor: str | None = None) -> dict[str, Any]:
    """Re-point the champion to ``to`` (default: the current champion's ``previous``). Verified and audited, as
    ``actor`` (default: RETRAIN_ACTOR, the DAG run, or the user; the UI passes its signed-in user).

    The new pointer's ``previous`` is the target's own parent champion (from its manifest) when rolling back
    to the default, so repeated rollbacks walk back through history; with an explicit ``--to`` it is the
    champion being replaced, so the rollback itself can be undone.
    """
    current, etag = read_champion_with_etag(spec)
    if current is None:
        raise RegistryError("there is no champion to roll back")
    target = to or current.get("previous")
    if not target:
        raise RegistryError(f"champion {current['version']} has no previous version; pass --to VERSION")
    if target == current["version"]:
        raise RegistryError(f"{target} already is the champion")
    require_verified(spec, target)
    manifest = read_manifest(spec, target)
    previous = current["version"] if to else manifest.parent_champion
    pointer = {
        "version": target,
        "version_uri": version_uri(spec, target),
        "snapshot_id": manifest.snapshot_id,
        "snapshot_uri": manifest.snapshot_uri,
        "promoted_at": storage.utcnow(),
        "previous": previous,
        "rolled_back_from": current["version"],
    }
    new_etag = _move_pointer(spec, pointer, etag)
    _audit(spec, "rollback", {**pointer, "champion_etag": new_etag}, actor=actor)
    serving.after_move(spec, pointer)  # the Triton repository follows; never raises (the move stands)
    return pointer


# ---------------------------------------------------------------- rerun


def rerun_commands(spec: PipelineSpec, version: str, run_key: str | None = None) -> list[list[str]]:
    """The stage commands that rebuild a version from its manifest, into a fresh run folder."""
    manifest = read_manifest(spec, version)
    run_key = run_key or f"rerun-{version}"
    run = spec.layout.run(run_key)
    snapshot = manifest.snapshot_uri
    spec_uri = storage.join(version_uri(spec, version), "reports", "spec.json")
    teacher = storage.join(run, "finetune", "model")
    student = storage.join(run, "distill", "model")
    parent = manifest.parent_champion
    champion = version_uri(spec, parent) if parent else "none"
    py = [sys.executable if os.environ.get("RETRAIN_RERUN_PYTHON") == "current" else "python", "-m", "tasks"]
    evaluate = py + ["evaluate", "--run", run, "--snapshot", snapshot, "--teacher", teacher, "--student", student,
                     "--champion", champion]
    if manifest.golden_uri:
        evaluate += ["--golden", manifest.golden_uri]
    return [
        py + ["registry", "--spec", spec_uri, "copy-spec", version, "--run", run],
        py + ["finetune", "--run", run, "--snapshot", snapshot, "--champion", champion],
        py + ["distill", "--run", run, "--snapshot", snapshot, "--teacher", teacher],
        evaluate,
        py + ["publish", "--run", run, "--snapshot", snapshot, "--teacher", teacher, "--student", student,
              "--evaluation", storage.join(run, "evaluate", "result.json"), "--expected-champion",
              parent or "none", "--no-promote"],
    ]


# ---------------------------------------------------------------- CLI


def _fmt_row(version: str, manifest: VersionManifest, champion: str | None) -> str:
    ev = manifest.evaluation
    m = ev.get("metrics", {})
    t = (m.get("teacher") or {}).get("golden_accuracy")
    s = (m.get("student") or {}).get("golden_accuracy")
    verdict = "passed" if ev.get("passed") else f"FAILED {','.join(ev.get('failed_gates', []))}"
    mark = "*" if version == champion else " "
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    return (f"{mark} {version:<27} {manifest.created_at or '':<21} {str(manifest.snapshot_id)[:16]:<17}"
            f" {fmt(t):>7} {fmt(s):>7}  {verdict}")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def cmd_list(spec: PipelineSpec, args: argparse.Namespace) -> int:
    champion = read_champion(spec)
    current = champion["version"] if champion else None
    rows = [(v, read_manifest(spec, v)) for v in list_versions(spec)]
    if args.json:
        _print_json([{"version": v, "champion": v == current, "created_at": m.created_at,
                      "snapshot_id": m.snapshot_id, "passed": m.evaluation.get("passed"),
                      "failed_gates": m.evaluation.get("failed_gates"),
                      "metrics": m.evaluation.get("metrics")} for v, m in rows])
        return 0
    print(f"  {'version':<27} {'created_at':<21} {'snapshot':<17} {'teacher':>7} {'student':>7}  gates")
    for v, m in rows:
        print(_fmt_row(v, m, current))
    return 0


def cmd_champion(spec: PipelineSpec, args: argparse.Namespace) -> int:
    _print_json(read_champion(spec))
    return 0


def cmd_show(spec: PipelineSpec, args: argparse.Namespace) -> int:
    _print_json(read_manifest(spec, args.version).dump())  # the stored JSON, as stored
    return 0


def cmd_verify(spec: PipelineSpec, args: argparse.Namespace) -> int:
    report = verify(spec, args.version)
    _print_json(report)
    if not report["ok"]:
        raise VerificationFailed(f"version {args.version} failed verification (report above)")
    return 0


def cmd_promote(spec: PipelineSpec, args: argparse.Namespace) -> int:
    pointer = promote(spec, args.version, expected_champion=args.expected_champion, event="promote-manual")
    _print_json(pointer)
    champion_events.announce_from_cli(spec, pointer, "promote-manual", _actor())  # an Asset event, when configured
    return 0


def cmd_rollback(spec: PipelineSpec, args: argparse.Namespace) -> int:
    pointer = rollback(spec, args.to)
    _print_json(pointer)
    champion_events.announce_from_cli(spec, pointer, "rollback", _actor())  # an Asset event, when configured
    return 0


def cmd_audit(spec: PipelineSpec, args: argparse.Namespace) -> int:
    _print_json(read_audit(spec))
    return 0


def cmd_sync_serving(spec: PipelineSpec, args: argparse.Namespace) -> int:
    champion = read_champion(spec)
    if champion is not None:
        require_verified(spec, champion["version"])
    return serving.report_sync(spec)


def cmd_copy_spec(spec: PipelineSpec, args: argparse.Namespace) -> int:
    source = storage.join(version_uri(spec, args.version), "reports", "spec.json")
    target = storage.join(args.run, "spec.json")
    try:
        storage.copy(source, target, if_none_match=True)
    except storage.PreconditionFailed:  # a repeated rerun: fine if it is the same spec, never overwritten
        if file_sha256(source) != file_sha256(target):
            raise RegistryError(f"{target} exists and differs from {source}; choose another --run") from None
    print(target)
    return 0


def cmd_rerun(spec: PipelineSpec, args: argparse.Namespace) -> int:
    manifest = read_manifest(spec, args.version)
    commands = rerun_commands(spec, args.version, args.run_key)
    print(f"# rebuild {args.version}: code {manifest.code_version}, image {manifest.image}")
    print("# run inside that image (or a checkout at that commit); the new version is published with "
          "--no-promote for comparison")
    for cmd in commands:
        print(shlex.join(cmd))
    if not args.execute:
        return 0
    for cmd in commands:
        log.info("+ %s", shlex.join(cmd))
        code = subprocess.run(cmd, timeout=args.timeout).returncode
        if code != 0:
            log.error("rerun stopped: exit %d", code)
            return code
    return 0


@dataclass(frozen=True)
class Command:
    run: Callable[[PipelineSpec, argparse.Namespace], int]
    help: str
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()


VERSION = (("version",), {"help": "a version id, e.g. v20261123-101500123-3fa2c1"})

COMMANDS: dict[str, Command] = {
    "list": Command(cmd_list, "versions with their metrics and gate verdicts (* = champion)"),
    "champion": Command(cmd_champion, "print champion.json"),
    "show": Command(cmd_show, "print a version's manifest", (VERSION,)),
    "verify": Command(cmd_verify, "re-hash a version against its manifest (exit 5 on any mismatch)", (VERSION,)),
    "promote": Command(cmd_promote, "make a verified version the champion (audited)", (
        VERSION,
        (("--expected-champion",), {"required": True, "type": cli.optional,
                                    "help": "the version that must be champion now, or none"}))),
    "rollback": Command(cmd_rollback, "re-point the champion to the previous (or --to) version, audited", (
        (("--to",), {"default": None, "help": "the version to re-point to (default: champion.previous)"}),)),
    "audit": Command(cmd_audit, "print the audit log"),
    "rerun": Command(cmd_rerun, "print (or --execute) the stage commands that rebuild a version", (
        VERSION,
        (("--run-key",), {"default": None, "help": "run folder name (default: rerun-<version>)"}),
        (("--execute",), {"action": "store_true", "help": "run the commands, in order"}),
        (("--timeout",), {"type": int, "default": 6 * 3600, "help": "seconds per stage with --execute"}))),
    "sync-serving": Command(cmd_sync_serving, "make the Triton repository serve the champion (after a failed sync)"),
    "copy-spec": Command(cmd_copy_spec, "copy a version's frozen spec into a run folder (first rerun step)", (
        VERSION, (("--run",), {"required": True, "help": "the run folder URI"}))),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks registry", description="The model registry.")
    parser.add_argument("--spec", required=True, help="pipeline YAML file, or a frozen spec.json URI")
    parser.add_argument("--json", action="store_true", help="machine-readable output (list)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        for flags, kwargs in command.arguments:
            p.add_argument(*flags, **kwargs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command].run(load_spec(args.spec), args)
