"""The typed contracts between stages: each stage's result, and the ids of the Airflow tasks that carry them.

A stage builds its result as one of these models and hands it to ``tasks.results.emit``; the DAG, the alerts
and the run summary read XCom back through the same models (``IngestResult.read(xcom)``), so a key is
spelled once, here. Results carry URIs and short summaries only (XCom is capped at 64 KiB).

Writing and reading follow two rules (docs/architecture.md, "Typed records"):

- a stage WRITES only declared fields: building a result with an undeclared one raises (``extra="forbid"``);
- a reader (``Model.read``: XCom, a stored ``result.json``) takes a result written by an older release: fields
  this release no longer declares are dropped with a logged warning, declared ones are validated as usual.

No Airflow import: the task image uses this module too.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_serializer, model_validator

log = logging.getLogger("tasks.contracts")

# The validation context key under which ``read`` validates: a result drops what it does not declare, a record
# keeps it.
READING = "reading"

# A registry version's manifest, at <version_uri>/manifest.json (tasks/decide/registry.py writes it; the
# training and serving code reads it without importing the registry, which sits above them).
VERSION_MANIFEST = "manifest.json"


class Outcome:
    """A retrain run's verdict, as its summary says it (tasks.decide.summary); the DAG and the stage operators
    read it back (which runs trained on their snapshot, which are final)."""

    FAILED_BEFORE_DECISION = "failed before the decision"
    STOPPED = "stopped: labels failed the quality check"
    SKIPPED = "skipped"
    PROMOTED = "promoted"
    PUBLISHED_NOT_PROMOTED = "published, not promoted"
    BLOCKED = "blocked by gates"
    FAILED_IN_TRAINING = "failed during training or evaluation"
    NOT_APPROVED = "not approved: no answer in time"  # approval.timeout_minutes passed; nothing published

    TRAINED = (PROMOTED, BLOCKED)  # the snapshot counts as trained on: one training per data change
    REDOABLE = (FAILED_BEFORE_DECISION, FAILED_IN_TRAINING)  # no verdict yet: a cleared run may run again


class TaskIds:
    """Airflow task ids, one place (the DAG factory, the alerts and the summary use these)."""

    PREPARE_RUN = "prepare_run"
    INGEST = "ingest"
    ANNOUNCE_SNAPSHOT = "announce_snapshot"
    DRIFT = "drift"
    DECIDE = "decide"
    FINETUNE = "finetune"
    DISTILL = "distill"
    EVALUATE = "evaluate"
    GATE = "gate"
    PUBLISH = "publish"
    NOTIFY = "notify"
    ANNOUNCE_CHAMPION = "announce_champion"  # the champion moved: an Asset event (tasks/decide/champion_events.py)
    FAIL_IF_ANY_FAILED = "fail_if_any_failed"

    STAGES = (INGEST, DRIFT, FINETUNE, DISTILL, EVALUATE, PUBLISH)  # the tasks that run `python -m tasks ...`


class Result(BaseModel):
    """Base for stage results: every field declared and typed. Build one to write it (an undeclared field
    raises); ``read`` one that was written (by this release or an older one)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: DAG parsing validates none

    cost: dict[str, Any] | None = None  # tasks.cost: wall_seconds, gpus, gpu_seconds, energy_kwh (set by emit)

    # Fields a stage sets only in some cases: left out of the dump while None, as the stage never wrote them.
    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={k for k in self.OMIT_WHEN_NONE if getattr(self, k) is None})

    @classmethod
    def read(cls, data: Any) -> Any:
        """A stored or pulled result as this model: fields it does not declare (an older release wrote them)
        are dropped with a warning; a declared field of the wrong type still fails (ValidationError)."""
        return cls.model_validate(data, context={READING: True})

    @model_validator(mode="before")
    @classmethod
    def _drop_undeclared_when_reading(cls, data: Any, info: ValidationInfo) -> Any:
        if not (info.context or {}).get(READING) or not isinstance(data, dict):
            return data
        undeclared = sorted(k for k in data if k not in cls.model_fields)
        if not undeclared:
            return data
        log.warning("%s: ignoring field(s) this release does not declare (written by an older one): %s",
                    cls.__name__, ", ".join(undeclared))
        return {k: v for k, v in data.items() if k in cls.model_fields}


class Record(BaseModel):
    """A stored record (tasks/manifests.py; the champion comparison below): declared fields typed; its dump holds
    the fields set, and only those, so the JSON on disk is what the writer set. Writing, a field the model does not
    declare raises; reading (``read``) a file an older release wrote, fields it lacks stay unset and fields this
    release does not declare are kept (stored data is never dropped)."""

    # Extra fields are kept when reading only (_refuse_undeclared_when_writing). Built on first use, not on
    # import: DAG parsing imports this module and uses no record.
    model_config = ConfigDict(extra="allow", defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_undeclared_when_writing(cls, data: Any, info: ValidationInfo) -> Any:
        if (info.context or {}).get(READING) or not isinstance(data, dict):
            return data
        undeclared = sorted(k for k in data if k not in cls.model_fields)
        if undeclared:
            raise ValueError(f"{cls.__name__} does not declare {', '.join(undeclared)}")
        return data

    @model_serializer(mode="wrap")
    def _only_set_fields(self, handler: Any) -> dict[str, Any]:
        dumped = handler(self)
        kept = self.model_fields_set | set(self.model_extra or {})
        return {k: v for k, v in dumped.items() if k in kept}

    @classmethod
    def read(cls, data: Any) -> Any:
        """A stored record as this model (what an older file may lack or carry: the class doc)."""
        return cls.model_validate(data, context={READING: True})

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RunContext(Result):
    """What ``prepare_run`` freezes for the run and every later task reads."""

    pipeline: str
    run_uri: str
    run_key: str
    run_type: str
    champion: dict[str, Any] | None = None
    champion_uri: str = "none"
    champion_version: str = "none"
    force_retrain: bool = False
    dry_run: bool = False
    overrides: dict[str, Any] = {}
    # Stage arguments derived from the run, so the DAG passes them as XComArgs instead of Jinja expressions.
    evaluation_uri: str | None = None  # the evaluate stage's result.json, which publish reads
    promote_flag: str = "--promote"  # "--no-promote" on a dry run


class SnapshotAnnounced(BaseModel):
    """A new snapshot, as the ingest result's ``asset_extra`` names it."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: DAG parsing validates none

    snapshot_id: str
    snapshot_uri: str
    total_rows: int
    new_rows: int


class IngestResult(Result):
    snapshot_id: str | None = None
    snapshot_uri: str | None = None
    changed: bool = False
    total_rows: int | None = None
    new_rows: int = 0
    golden_uri: str | None = None
    golden_id: str | None = None
    quarantined_rows: int = 0
    duplicates_removed: int = 0
    contaminated_removed: int = 0
    reason: str | None = None
    # After a re-freeze of the golden set (python -m tasks golden --refreeze), the first ingest's snapshot drops the
    # stored rows now in it: {from, from_uri, to, to_uri, removed_rows, removed_by_batch, rewritten_parts}.
    golden_changed: dict[str, Any] | None = None
    # The batch, when there was one (docs/data.md): rows_read = new_rows + quarantined_rows + duplicates_removed
    # + contaminated_removed, and files_count = files_read + quarantined_files + empty_files.
    landing_uri: str | None = None
    batch_id: str | None = None
    parent_snapshot_id: str | None = None
    rows_read: int = 0
    files_count: int = 0
    files_read: int = 0
    files_ingested: list[str] = []  # keys of the files read (first 200)
    quarantined_files: int = 0
    empty_files: int = 0
    quarantine_reasons: dict[str, int] = {}
    quarantine_uri: str | None = None
    label_counts: dict[str, int] = {}
    empty_file_keys: list[str] | None = None  # keys of the zero-byte files (first 200), when there was a batch
    recovered: bool | None = None  # True: a run that died before recording its batch, recorded now (ingest.py)
    asset_extra: SnapshotAnnounced | None = None  # a new snapshot: the Asset event's extra

    OMIT_WHEN_NONE = ("empty_file_keys", "recovered", "asset_extra")


class DriftResult(Result):
    drift_detected: bool = False
    first_run: bool = False
    new_rows: int = 0
    summary: str = ""
    report_uri: str | None = None
    drifted_checks: list[str] = []
    checks: dict[str, Any] = {}
    plots: dict[str, str] = {}
    snapshot_uri: str | None = None
    reference_rows: int = 0
    champion_uri: str | None = None
    reference_snapshot_uri: str | None = None
    reference_snapshot_id: str | None = None
    model_reference: str | None = None  # "holdout" | "all": which reference rows the model checks used
    timings: dict[str, float] = {}
    current_label_counts: dict[str, int] = {}
    reference_label_counts: dict[str, int] = {}  # the champion's snapshot (a class with none there is first-time)
    # Not a drift check (never asks for a retrain): {flagged, statistic, threshold, p_value, verdict,
    # reference_agreement, current_agreement, ...} or {flagged: False, skipped: True, verdict}. None when the
    # checks did not run. The decide step should stop the run (no fine-tuning) when flagged, with the verdict.
    label_quality: dict[str, Any] | None = None


class Remedy(BaseModel):
    """What would change an outcome (docs/registry.md, "What would change it"): the case, the spec settings it
    names, and the sentence that ends the decision's reasons, the gate's reason, the alert and the registry page."""

    case: str  # tasks/decide/remedies.py: underpowered_golden, below_baseline, skewed_golden, new_class, collapsed
    settings: list[str] = []  # the spec settings the sentence names (gates.expected_difference, train.init_from)
    action: str  # the sentence


class Decision(Result):
    retrain: bool
    reasons: list[str]
    first_run: bool = False
    forced: bool = False
    stopped: bool = False  # the batch's labels failed the label-quality check: the run fails, nothing trains
    withdraw_batches: list[str] = []  # when stopped: the batches with bad labels (tasks.data.withdraw)
    withdrawn: dict[str, Any] | None = None  # what the DAG's decide step withdrew: batches, files, snapshot now
    new_rows: int | None = None
    drift_detected: bool = False
    snapshot_id: str | None = None
    # What asked for the retrain: forced, first_run, drift, retrain_every_rows, retrain_every_fraction; [] on a skip.
    triggers: list[str] = []
    champion_snapshot_rows: int | None = None  # drift's reference_rows; None = unknown (absolute trigger only)
    retrain_fraction_rows: int | None = None  # decide.retrain_every_fraction of them, as new rows; None = off/unknown
    # On a retrain: {mode: full|incremental, full_because, reasons, incremental_streak, ...} (tasks/decide/retrain_policy.py)
    training: dict[str, Any] | None = None
    # The settings and numbers the rule read (tasks/decide/decision.py), for the summary and the tests.
    min_new_rows: int | None = None
    retrain_every_rows: int | None = None
    retrain_every_fraction: float | None = None
    new_rows_share: float | None = None
    drifted_checks: list[str] = []
    champion_snapshot_id: str | None = None
    champion_version: str | None = None
    already_trained: bool = False
    # Classes with rows and none in the champion's snapshot: the fine-tune starts fresh (tasks/train/fresh_start.py).
    new_classes: list[str] = []
    # What would change the outcome, when a case of docs/registry.md "What would change it" applies.
    remedies: list[Remedy] = []


class TrainResult(Result):
    """finetune (the teacher) and distill (the student)."""

    model_uri: str
    metrics: dict[str, Any] = {}
    metrics_uri: str | None = None
    curve_uri: str | None = None
    train_rows: int = 0
    global_step: int = 0
    samples_per_second: float | None = None
    resumed_from_step: int | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None  # holdout evaluations during training
    checkpoint_seconds: float | None = None  # what checkpoints cost the training loop: saves, uploads waited for
    checkpoint_upload_seconds: float | None = None  # the uploads' own wall time (in the background on a GPU)
    overhead_share: float | None = None  # (eval_seconds + checkpoint_seconds) / train_seconds
    world_size: int = 1  # processes that trained (DDP under torchrun)
    batch_size: int | None = None  # per device, as trained (on a CUDA GPU: train.gpu_batch_size's pick)
    learning_rate: float | None = None  # peak, as trained (scaled with a GPU batch)
    base_model: str | None = None  # spec.model.base
    init_from: str | None = None  # "base", "champion <version>", "teacher layers"
    parameters: int | None = None
    exports: dict[str, str] = {}  # distill: CPU-serving exports {format: uri}
    teacher_uri: str | None = None  # distill
    student_layers: int | None = None  # distill
    layer_map: list[int] | None = None  # distill: teacher layer copied into each student layer
    learning_rate_source: str | None = None  # "spec", "champion <version>" or "search" (train.learning_rate: auto)
    lr_search: dict[str, Any] | None = None  # the search's trials when it ran (tasks/train/defaults.py)
    epochs: float | None = None  # epochs trained (train.epochs: auto derives them from the train rows)
    token_cache: str | None = None  # "hit": the tokenized splits came from the cache; "miss": tokenized here
    teacher_cache: str | None = None  # distill: "on: <rows, tokens, MiB>" or "off: <why>" (student.teacher_cache)
    teacher_pass_seconds: float | None = None  # distill, teacher cache on: the teacher's one pass before training (None when reused)
    teacher_cache_reused: bool | None = None  # distill, teacher cache on: read from the stored cache (a retry)
    teacher_cache_uri: str | None = None  # distill: the stored copy read or written (None: not stored)
    teacher_pass_rows: int | None = None  # distill, teacher cache on: rows the teacher's pass computed (0: reused)
    teacher_cache_read_seconds: float | None = None  # distill, reused: listing, download, sha256 check, load
    teacher_cache_store_seconds: float | None = None  # distill, stored here: save and upload
    stopped_at_epoch: float | None = None  # the epoch training ended at (early stopping, or all of epochs)
    selection: dict[str, Any] | None = None  # the rows evaluations during training scored (train.selection)
    # The train rows cut at model.max_length and the declared classes with none (training.train_data_report).
    train_data: dict[str, Any] | None = None
    # What the stage trained on (train.retrain_mode): {mode: full|incremental, new_rows, replay_rows, train_rows,
    # snapshot_train_rows, label_mix, reasons} (tasks/train/replay.py).
    training: dict[str, Any] | None = None
    # Samples processed, all processes: {train: forward+backward, teacher: distillation teacher passes, inference:
    # evaluations}; samples_processed = train + teacher, what training cost (also in cost, next to the seconds).
    samples: dict[str, int] = {}
    samples_processed: int = 0
    # Why a retrain with train.init_from: champion started from model.base: a class the champion never saw, or a
    # warm start that collapsed and was retrained once (tasks/train/fresh_start.py); None = as the spec says.
    fresh_start: str | None = None
    # finetune, distill: train.class_weights resolved on the train rows (tasks/train/class_balance.py): setting,
    # method, on, ratio, reason, counts, weights or offsets.
    class_weights: dict[str, Any] | None = None

    OMIT_WHEN_NONE = ("teacher_pass_rows",)


class GateResult(Result):
    name: str
    passed: bool
    value: Any = None
    threshold: Any = None
    reason: str = ""
    skipped: bool = False
    details: dict[str, Any] = {}  # the numbers behind the verdict (interval, p-value, recalls); not in XCom
    remedy: Remedy | None = None  # what would change the verdict; its sentence also ends ``reason``


class ChampionComparison(Record):
    """How many golden rows the comparisons with the champion use (tasks/decide/gates.py champion_comparison),
    and what evaluate read to know (tasks/decide/evaluate.py champion_trained_rows). In the evaluate result, the
    gate report, metrics.json and the version manifest's evaluation."""

    # Always written (gates.champion_comparison); the defaults only read an older file that lacks one.
    golden_rows: int = 0
    compared_rows: int = 0
    excluded_rows: int = 0
    min_compared_rows: int = 0
    too_few: bool = False
    why: str | None = None  # set when rows are left out: a phrase after "N golden rows ..."
    compared_accuracy: dict[str, float] | None = None  # each model's accuracy on the compared rows, when fewer
    # What was looked at: the champion, its version and snapshot, the golden sets they name, parts read.
    champion_uri: str | None = None
    looked: bool | None = None
    champion_version: str | None = None
    note: str | None = None  # why what the champion trained on is unknown (every row compared)
    champion_snapshot_id: str | None = None
    champion_snapshot_uri: str | None = None
    champion_golden_id: str | None = None
    golden_id: str | None = None
    parts: int | None = None
    parts_shared: int | None = None
    parts_read: int | None = None


class EvaluateResult(Result):
    passed: bool
    first_run: bool = False
    gates: list[GateResult] = []
    failed_gates: list[str] = []
    metrics: dict[str, Any] = {}
    golden_uri: str | None = None
    # With a champion: how many golden rows the comparisons with it use (golden_rows, compared_rows,
    # excluded_rows: those whose text it trained on, why, too_few) and what was read to know (evaluate.py).
    champion_comparison: ChampionComparison | None = None
    report_uri: str | None = None
    report_md_uri: str | None = None
    # What would change the outcome (tasks/decide/remedies.py): the gates' and the teacher's fresh start (a class
    # the champion never saw, a collapsed warm start), each once.
    remedies: list[Remedy] = []


class PublishResult(Result):
    version: str
    version_uri: str
    promoted: bool = False
    verified: bool = False
    champion_before: str | None = None
    champion_after: str | None = None
    champion_uri: str | None = None  # the champion pointer (champion.json) this publish read, and moved if promoted
    files: int = 0
    reason: str = ""
    model_cards: dict[str, str] = {}  # {teacher|student: URI of the version's README.md model card}
    approval: dict[str, Any] | None = None  # a person's answer when the spec asked (tasks/decide/approval.py)


RESULT_OF_TASK: dict[str, type[Result]] = {
    TaskIds.PREPARE_RUN: RunContext,
    TaskIds.INGEST: IngestResult,
    TaskIds.DRIFT: DriftResult,
    TaskIds.DECIDE: Decision,
    TaskIds.FINETUNE: TrainResult,
    TaskIds.DISTILL: TrainResult,
    TaskIds.EVALUATE: EvaluateResult,
    TaskIds.PUBLISH: PublishResult,
}
