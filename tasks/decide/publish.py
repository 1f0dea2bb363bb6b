"""Publish stage: copy the candidate into the registry as an immutable version, verify it, and promote it.

``python -m tasks publish --run R --snapshot S --teacher T --student ST --evaluation R/evaluate/result.json
--expected-champion V|none [--promote | --no-promote]``

1. The version id is chosen once per run and kept in ``R/publish/state.json`` (create-only), so a retried task
   (after an S3 outage, say) finishes the same version instead of leaving a second half-copied one.
2. Every file of the teacher, the student, the student's CPU-serving exports (``exports/<format>/``, from the
   distill stage's result in the run) and the reports is copied to ``models/<pipeline>/<version>/`` with
   ``storage.copy`` (streamed, create-only: a retry keeps what an earlier attempt copied); its sha256 is taken
   from the source, streamed too, so the manifest says what the run produced.
   Each model folder is one a serving system loads as it is (``serving.py``): a sequence classifier whose
   config names the spec's labels (generic ``LABEL_i`` names get them), with weights and tokenizer files.
3. A model card (``README.md``, Hugging Face format) is written into ``teacher/`` and ``student/``, and the Triton
   configuration of the student's ONNX export into ``serving/triton/`` (config.pbtxt, labels.txt).
4. ``manifest.json`` is written after every file, create-only: a version folder without a manifest is
   incomplete and invisible to ``registry list``, and can never be promoted.
5. Every file is re-hashed against the manifest (``registry.verify``). A mismatch fails the stage
   (``VerificationFailed``, kind gate_failed: not retried) without touching the champion pointer.
6. Promotion (``registry.promote``) only when ``--promote``, the evaluation passed, and the current champion is
   still ``--expected-champion``; champion.json is written last, conditionally, then audited. A refused promotion
   (the champion moved since the candidate was gated) fails the stage with ``PromotionRefused`` (gate_failed:
   re-evaluate against the new champion; a retry would be refused again).

The result (``PublishResult``: version, version_uri, promoted, verified, files, champion_before, champion_after,
reason, model_cards) is written to ``R/publish/result.json`` before any of those failures is raised.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import __version__, cli, results, storage
from tasks.contracts import EvaluateResult, PublishResult
from tasks.data import snapshots
from tasks.decide import CandidateArgs, approval as approvals, model_card, registry, remedies, serving
from tasks.manifests import VersionManifest
from tasks.spec import PipelineSpec, dump, load_spec

log = logging.getLogger(__name__)


@dataclass
class PublishArgs(CandidateArgs):
    evaluation: str = field(metadata={"help": "the evaluate stage's result.json URI"})
    expected_champion: str | None = field(metadata={"help": "the champion version (id or URI) the candidate was "
                                                            "gated against, or none"})
    promote: bool = field(default=True, metadata={"help": "promote when the gates passed (--no-promote: publish "
                                                          "and verify only, a dry run)"})
    approval: bool = field(default=False, metadata={"help": "a person's answer decides (spec approval): read "
                                                            "RUN/approve/result.json; no answer there, no promotion"})


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


def version_for_run(run_uri: str) -> dict[str, str]:
    """``{version, created_at}``, chosen by the first attempt of this run and kept (create-only)."""
    state_uri = storage.join(run_uri, "publish", "state.json")
    try:
        return storage.read_json(state_uri)
    except storage.NotFound:
        pass
    state = {"version": registry.new_version_id(), "created_at": storage.utcnow()}
    try:
        storage.write_json(state_uri, state, if_none_match=True)
    except storage.PreconditionFailed:  # another attempt of this run chose first
        return storage.read_json(state_uri)
    return state


# ---------------------------------------------------------------- copying into the version folder


class VersionFiles:
    """The files of a version being assembled: each is copied create-only and recorded as {sha256, size}."""

    def __init__(self, version_uri: str) -> None:
        self.version_uri = version_uri
        self.files: dict[str, dict[str, Any]] = {}

    def copy(self, source: storage.ObjectInfo, rel: str) -> None:
        self.files[rel] = {"sha256": registry.file_sha256(source.uri), "size": source.size}
        try:
            storage.copy(source.uri, storage.join(self.version_uri, rel), if_none_match=True)
        except storage.PreconditionFailed:
            pass  # an earlier attempt of this run copied it; verification compares it with the source's hash

    def copy_tree(self, source_uri: str, rel_prefix: str, skip: tuple[str, ...] = ()) -> None:
        source_uri = storage.normalize(source_uri).rstrip("/") + "/"
        objects = storage.list_objects(source_uri)
        if not objects:
            raise storage.NotFound(f"nothing to publish under {source_uri}")
        for obj in objects:
            rel = obj.uri[len(source_uri):]
            if rel not in skip:
                self.copy(obj, f"{rel_prefix}/{rel}")

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_bytes(self, rel: str, data: bytes) -> None:
        uri = storage.join(self.version_uri, rel)
        try:
            storage.write_bytes(uri, data, if_none_match=True)
            self.files[rel] = {"sha256": storage.sha256_bytes(data), "size": len(data)}
        except storage.PreconditionFailed:  # written by an earlier attempt of this run: that one is the card
            info = storage.stat(uri)
            self.files[rel] = {"sha256": registry.file_sha256(uri), "size": info.size if info else 0}


def student_exports(run_uri: str, student_uri: str) -> dict[str, str]:
    """{format: uri} of the exports the distill stage made of this very student (RUN/distill/result.json)."""
    result_uri = storage.join(run_uri, "distill", "result.json")
    if not storage.exists(result_uri):
        return {}
    distilled = storage.read_json(result_uri)
    if storage.normalize(distilled.get("model_uri", "")).rstrip("/") != storage.normalize(student_uri).rstrip("/"):
        log.warning("%s is about another student; its exports are not published", result_uri)
        return {}
    return dict(sorted((distilled.get("exports") or {}).items()))


def snapshot_manifest(snapshot_uri: str) -> dict[str, Any]:
    """The snapshot's manifest, with at least its id (from the folder name when there is no manifest)."""
    fallback = snapshot_uri.rstrip("/").rsplit("/", 1)[-1]
    try:
        manifest = snapshots.read_manifest(snapshot_uri).dump()  # as stored: the model card renders it
    except storage.NotFound:
        manifest = {}
    manifest["snapshot_id"] = str(manifest.get("snapshot_id") or manifest.get("id") or fallback)
    return manifest


def assemble(spec: PipelineSpec, state: dict[str, str], run_uri: str, snapshot_uri: str, teacher_uri: str,
             student_uri: str, evaluation_uri: str, evaluation: EvaluateResult,
             expected_champion: str | None, approval: dict[str, Any] | None = None) -> dict[str, str]:
    """Copy everything, write the model cards, then the manifest (create-only). Returns {role: card uri}."""
    version = state["version"]
    vuri = registry.version_uri(spec, version)
    out = VersionFiles(vuri)
    for role, source in (("teacher", teacher_uri), ("student", student_uri)):
        config = serving.hf_config(source, spec.data.labels, role)  # None: the source's serves as it is
        out.copy_tree(source, role, skip=(model_card.CARD,) + (("config.json",) if config else ()))
        if config:
            out.write_bytes(f"{role}/config.json", config)
        serving.check_files([rel[len(role) + 1:] for rel in out.files if rel.startswith(f"{role}/")], role)
    exports = student_exports(run_uri, student_uri)
    for name, export_uri in exports.items():
        out.copy_tree(export_uri, f"exports/{name}")
    out.copy_tree(storage.parent(storage.normalize(evaluation_uri)), "reports")
    spec_uri = storage.join(run_uri, "spec.json")
    spec_info = storage.stat(spec_uri)
    if spec_info is None:
        raise storage.NotFound(spec_uri)
    out.copy(spec_info, "reports/spec.json")

    from tasks.decide.retrain_policy import run_training, stage_training

    snapshot = snapshot_manifest(snapshot_uri)
    inputs = model_card.CardInputs(
        spec=spec, version=version, published_at=state["created_at"], snapshot_uri=snapshot_uri, snapshot=snapshot,
        evaluation=evaluation.dump(), parent_champion=expected_champion, run_uri=run_uri,
        code_version=code_version(), image=image_ref(), base_card=model_card.base_card_metadata(spec.model.base),
        training=stage_training(run_uri), approval=approval)
    cards = {}
    for role in ("teacher", "student"):
        out.write_text(f"{role}/{model_card.CARD}", model_card.render(inputs, role))
        cards[role] = storage.join(vuri, role, model_card.CARD)
    triton = serving.publish_triton(spec, out, version, exports, spec.data.labels)

    frozen = dump(spec)
    manifest = VersionManifest(
        version=version,
        pipeline=spec.name,
        created_at=storage.utcnow(),
        snapshot_id=snapshot["snapshot_id"],
        snapshot_uri=snapshot_uri,
        golden_uri=evaluation.golden_uri,
        parent_champion=expected_champion,
        code_version=inputs.code_version,
        image=inputs.image,
        parameters={k: frozen[k] for k in ("model", "train", "student", "gates")} | {
            "labels": frozen["data"]["labels"]},
        run_uri=run_uri,
        training=run_training(run_uri),  # full or incremental, and why
        sources={"teacher": teacher_uri, "student": student_uri, "evaluation": evaluation_uri, "exports": exports},
        exports={name: f"exports/{name}/" for name in exports},
        model_cards={role: f"{role}/{model_card.CARD}" for role in cards},
        serving={"huggingface": {role: f"{role}/" for role in cards}, "triton": triton},
        evaluation=evaluation.model_dump(mode="json", include={
            "passed", "first_run", "failed_gates", "gates", "metrics", "report_uri", "report_md_uri",
            "champion_comparison"}),
        files=dict(sorted(out.files.items())),
    )
    if approval is not None:  # the person's answer, when the spec asked for one (tasks/decide/approval.py)
        manifest.approval = approval
    what_would_change = run_remedies(run_uri, evaluation)
    if what_would_change:  # what setting or data would change the outcome (tasks/decide/remedies.py)
        manifest.remedies = what_would_change
    try:
        storage.write_json(storage.join(vuri, registry.MANIFEST), manifest.dump(), if_none_match=True)
    except storage.PreconditionFailed:
        pass  # an earlier attempt of this run finished the manifest; verification decides
    return cards


def run_remedies(run_uri: str, evaluation: EvaluateResult) -> list[dict[str, Any]]:
    """The run's remedies (tasks/decide/remedies.py): its decision's, its fine-tune's fresh start, its gates'."""
    def read(stage: str) -> dict[str, Any] | None:
        uri = storage.join(run_uri, stage, "result.json")
        return storage.read_json(uri) if storage.exists(uri) else None

    return [r.model_dump(mode="json") for r in remedies.of_run(read("decide"), evaluation.dump(), read("finetune"))]


# ---------------------------------------------------------------- the stage


def run(run_uri: str, snapshot_uri: str, teacher_uri: str, student_uri: str, evaluation_uri: str,
        expected_champion: str | None, promote: bool = True, approval: bool = False) -> PublishResult:
    """Publish, verify and (maybe) promote; raises VerificationFailed / PromotionRefused after writing the result."""
    run_uri = storage.normalize(run_uri)
    snapshot_uri = storage.normalize(snapshot_uri)
    spec = load_spec(storage.join(run_uri, "spec.json"))
    evaluation = EvaluateResult.read(storage.read_json(storage.normalize(evaluation_uri)))
    state = version_for_run(run_uri)
    version = state["version"]
    vuri = registry.version_uri(spec, version)
    champion_before = registry.read_champion(spec)
    before = champion_before["version"] if champion_before else None
    out_uri = storage.join(run_uri, "publish")
    answer = None
    if approval:  # no answer on record (never written): a decision that promotes nothing
        answer = approvals.read(run_uri) or {"decision": "missing", "promote": False,
                                             "reason": f"no answer at {approvals.result_uri(run_uri)}"}

    cards = {role: storage.join(vuri, role, model_card.CARD) for role in ("teacher", "student")}
    if not storage.exists(storage.join(vuri, registry.MANIFEST)):
        try:
            cards = assemble(spec, state, run_uri, snapshot_uri, teacher_uri, student_uri, evaluation_uri,
                             evaluation, expected_champion, answer)
        except serving.ServingLayoutError as exc:  # no manifest: the version is incomplete, never promotable
            results.emit(PublishResult(version=version, version_uri=vuri, champion_before=before,
                                       champion_after=before, reason=f"not published: {exc}"), out_uri)
            raise

    check = registry.verify(spec, version)
    result = PublishResult(version=version, version_uri=vuri, champion_before=before, champion_after=before,
                           champion_uri=spec.layout.champion,
                           verified=check["ok"], files=check["files"], model_cards=cards)
    if answer is not None:
        result.approval = answer
    promote_approved, approval_note = approvals.publish_verdict(answer, evaluation.passed)
    if not check["ok"]:
        result.reason = (f"verification failed (missing={check['missing'][:5]}, extra={check['extra'][:5]}, "
                         f"mismatched={check['mismatched'][:5]}); the champion pointer was not touched")
        results.emit(result, out_uri)
        raise registry.VerificationFailed(f"{version}: {result.reason}")

    if not promote:
        result.reason = f"dry run (--no-promote): {version} published and verified, not promoted"
    elif approval_note is not None and not promote_approved:
        result.reason = f"{version} published, not promoted ({approval_note}); {before or 'no champion'} stays"
        registry.append_audit(spec, answer.get("decision") or "not-approved", {
            "version": version, "version_uri": vuri, "champion": before, "run_uri": run_uri, "approval": answer},
            actor=approvals.responder(answer) or "nobody")
    elif not promote_approved:
        result.reason = (f"evaluation did not pass (failed gates: {', '.join(evaluation.failed_gates)}); "
                         f"{before or 'no champion'} stays")
    else:
        extra: dict[str, Any] = {"run_uri": run_uri}
        asked = approval_note is not None  # approved, or failed gates overridden: who and why, on the record
        if asked:
            extra.update(approval=answer, approved_by=approvals.responder(answer))
        try:
            pointer = registry.promote(spec, version, expected_champion=expected_champion,
                                       event=f"promote-{answer['decision']}" if asked else "promote", extra=extra)
        except registry.PromotionRefused as exc:
            current = registry.read_champion(spec)
            result.champion_after = current["version"] if current else None
            result.reason = f"not promoted: {exc}"
            results.emit(result, out_uri)
            raise
        result.promoted, result.champion_after = True, pointer["version"]
        result.reason = f"promoted {version} (previous champion: {pointer['previous'] or 'none'})" + (
            f"; {approval_note}" if approval_note else "")
    results.emit(result, out_uri)
    return result


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(PublishArgs, argv, prog="python -m tasks publish", description=__doc__.split("\n")[0])
    expected = args.expected_champion.rstrip("/").rsplit("/", 1)[-1] if args.expected_champion else None
    run(args.run, args.snapshot, args.teacher, args.student, args.evaluation, expected, promote=args.promote,
        approval=args.approval)
    return 0
