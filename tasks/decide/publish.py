"""Publish stage: copy the candidate into the registry as an immutable version, verify it, and promote it.

``python -m tasks publish --run R --snapshot S --teacher T --student ST --evaluation R/evaluate/result.json
--expected-champion V|none [--no-promote]``

1. The version id is chosen once per run and kept in ``R/publish/state.json`` (create-only), so a retried task
   (after an S3 outage, say) finishes the same version instead of leaving a second half-copied one.
2. Every file of the teacher, the student, the student's CPU-serving exports (``exports/<format>/``, from the
   distill stage's result in the run) and the reports is copied to ``models/<pipeline>/<version>/``; its sha256
   is taken from the bytes copied.
3. ``manifest.json`` is written after every file, create-only: a version folder without a manifest is
   incomplete and invisible to ``registry list``, and can never be promoted.
4. Every file is re-read and re-hashed against the manifest (``registry.verify``). A mismatch fails the stage
   (exit 1) without touching the champion pointer.
5. Promotion (``registry.promote``) only when not ``--no-promote``, the evaluation passed, and the current
   champion is still ``--expected-champion``; champion.json is written last, conditionally, then audited.

Result: version, version_uri, promoted, champion_before, champion_after, reason (+ verified, files).
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Any

from tasks import __version__, results, storage
from tasks.decide import registry
from tasks.data import snapshots
from tasks.spec import dump, load_spec


def code_version() -> str:
    configured = os.environ.get("RETRAIN_CODE_VERSION")
    if configured:
        return configured
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[2],
                              capture_output=True, text=True, timeout=5)
        if head.returncode == 0 and head.stdout.strip():
            return head.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"tasks=={__version__}"


def image_ref() -> str | None:
    return os.environ.get("RETRAIN_TASK_IMAGE") or None


def _version_for_run(run_uri: str) -> str:
    state_uri = storage.join(run_uri, "publish", "state.json")
    try:
        return storage.read_json(state_uri)["version"]
    except storage.NotFound:
        pass
    version = registry.new_version_id()
    try:
        storage.write_json(state_uri, {"version": version, "created_at": storage.utcnow()}, if_none_match=True)
    except storage.PreconditionFailed:  # another attempt of this run chose first
        return storage.read_json(state_uri)["version"]
    return version


def _copy_tree(source_uri: str, dest_uri: str, files: dict[str, dict[str, Any]], rel_prefix: str) -> None:
    source_uri = storage.normalize(source_uri).rstrip("/") + "/"
    objects = storage.list_objects(source_uri)
    if not objects:
        raise storage.NotFound(f"nothing to publish under {source_uri}")
    for obj in objects:
        rel = obj.uri[len(source_uri):]
        _copy_one(obj.uri, dest_uri, f"{rel_prefix}/{rel}", files)


def _copy_one(source: str, dest_uri: str, rel: str, files: dict[str, dict[str, Any]]) -> None:
    data = storage.read_bytes(source)
    storage.write_bytes(storage.join(dest_uri, rel), data)
    files[rel] = {"sha256": storage.sha256_bytes(data), "size": len(data)}


def student_exports(run_uri: str, student_uri: str) -> dict[str, str]:
    """{format: uri} of the exports the distill stage made of this very student (RUN/distill/result.json)."""
    result_uri = storage.join(run_uri, "distill", "result.json")
    if not storage.exists(result_uri):
        return {}
    distilled = storage.read_json(result_uri)
    if storage.normalize(distilled.get("model_uri", "")).rstrip("/") != storage.normalize(student_uri).rstrip("/"):
        print(f"[publish] {result_uri} is about another student; its exports are not published", flush=True)
        return {}
    return dict(sorted((distilled.get("exports") or {}).items()))


def _snapshot_id(snapshot_uri: str) -> str:
    try:
        manifest = snapshots.read_manifest(snapshot_uri)
        return str(manifest.get("snapshot_id") or manifest.get("id") or snapshot_uri.rstrip("/").rsplit("/", 1)[-1])
    except storage.NotFound:
        return snapshot_uri.rstrip("/").rsplit("/", 1)[-1]


def run(run_uri: str, snapshot_uri: str, teacher_uri: str, student_uri: str, evaluation_uri: str,
        expected_champion: str | None, promote: bool = True) -> tuple[dict[str, Any], int]:
    run_uri = storage.normalize(run_uri)
    snapshot_uri = storage.normalize(snapshot_uri)
    spec_uri = storage.join(run_uri, "spec.json")
    spec = load_spec(spec_uri)
    evaluation = storage.read_json(storage.normalize(evaluation_uri))
    version = _version_for_run(run_uri)
    vuri = registry.version_uri(spec, version)
    champion_before = registry.read_champion(spec)
    before = champion_before["version"] if champion_before else None

    if not storage.exists(storage.join(vuri, registry.MANIFEST)):
        files: dict[str, dict[str, Any]] = {}
        _copy_tree(teacher_uri, vuri, files, "teacher")
        _copy_tree(student_uri, vuri, files, "student")
        exports = student_exports(run_uri, student_uri)
        for name, export_uri in exports.items():
            _copy_tree(export_uri, vuri, files, f"exports/{name}")
        eval_dir = storage.parent(storage.normalize(evaluation_uri))
        _copy_tree(eval_dir, vuri, files, "reports")
        _copy_one(spec_uri, vuri, "reports/spec.json", files)
        frozen = dump(spec)
        manifest = {
            "version": version,
            "pipeline": spec.name,
            "created_at": storage.utcnow(),
            "snapshot_id": _snapshot_id(snapshot_uri),
            "snapshot_uri": snapshot_uri,
            "golden_uri": evaluation.get("golden_uri"),
            "parent_champion": expected_champion,
            "code_version": code_version(),
            "image": image_ref(),
            "parameters": {k: frozen[k] for k in ("model", "train", "student", "gates")} | {
                "labels": frozen["data"]["labels"]},
            "run_uri": run_uri,
            "sources": {"teacher": teacher_uri, "student": student_uri, "evaluation": evaluation_uri,
                        "exports": exports},
            "exports": {name: f"exports/{name}/" for name in exports},
            "evaluation": {k: evaluation.get(k) for k in ("passed", "first_run", "failed_gates", "gates", "metrics",
                                                          "report_uri", "report_md_uri")},
            "files": dict(sorted(files.items())),
        }
        try:
            storage.write_json(storage.join(vuri, registry.MANIFEST), manifest, if_none_match=True)
        except storage.PreconditionFailed:
            pass  # an earlier attempt of this run finished the manifest; verification below decides

    check = registry.verify(spec, version)
    result: dict[str, Any] = {"version": version, "version_uri": vuri, "promoted": False,
                              "champion_before": before, "champion_after": before,
                              "verified": check["ok"], "files": check["files"]}
    if not check["ok"]:
        result["reason"] = (f"verification failed (missing={check['missing'][:5]}, extra={check['extra'][:5]}, "
                            f"mismatched={check['mismatched'][:5]}); the champion pointer was not touched")
        results.emit(result, storage.join(run_uri, "publish"))
        return result, 1

    if not promote:
        result["reason"] = f"dry run (--no-promote): {version} published and verified, not promoted"
    elif not evaluation.get("passed"):
        result["reason"] = (f"evaluation did not pass (failed gates: {', '.join(evaluation.get('failed_gates') or [])}); "
                            f"{before or 'no champion'} stays")
    else:
        try:
            pointer = registry.promote(spec, version, expected_champion=expected_champion,
                                       extra={"run_uri": run_uri})
            result.update(promoted=True, champion_after=pointer["version"],
                          reason=f"promoted {version} (previous champion: {pointer['previous'] or 'none'})")
        except registry.PromotionRefused as exc:
            current = registry.read_champion(spec)
            result.update(champion_after=current["version"] if current else None, reason=f"not promoted: {exc}")
    results.emit(result, storage.join(run_uri, "publish"))
    return result, 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks publish", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--snapshot", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--evaluation", required=True, help="the evaluate stage's result.json URI")
    parser.add_argument("--expected-champion", required=True,
                        help="the champion version the candidate was gated against, or none")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-promote", action="store_true", help="publish and verify only (dry run)")
    mode.add_argument("--promote", action="store_true", help="the default; accepted so the DAG can always pass one")
    args = parser.parse_args(argv)
    expected = None if args.expected_champion.lower() in ("none", "") else args.expected_champion
    expected = expected.rstrip("/").rsplit("/", 1)[-1] if expected else None  # a version URI works too
    _, code = run(args.run, args.snapshot, args.teacher, args.student, args.evaluation, expected,
                  promote=not args.no_promote)
    return code
