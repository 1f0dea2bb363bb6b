"""``python -m tasks drift --run R --snapshot S --champion C|none``: is the new data unlike what the champion saw?

Reference: the snapshot the champion was trained on (its version manifest names it). Current: rows of the new
snapshot that the reference does not hold. Checks (thresholds in ``spec.drift``; docs/drift.md has the nulls
and the calibration):

* ``label_psi``: PSI of the label mix; p < chi2_alpha and PSI - its null mean >= psi_threshold.
* ``label_chi2``: label-count homogeneity (chi-square, TVD, largest class move; min-p permutation null);
  p < chi2_alpha and the mix moved >= label_shift_floor beyond sampling noise.
* ``length_ks``: KS test on text length in model tokens; p < length_ks_alpha.
* ``vocab_js``: JS divergence (bits) of token frequencies minus what sampling gives; > vocab_js_threshold.
* ``unknown_tokens``: rise of the [UNK] share under the model's tokenizer; > unknown_token_share_threshold.
* ``embedding_mmd``: MMD of mean-pooled champion embeddings on bounded subsamples; p < embedding_alpha.
* ``prediction``: the champion's predicted-label mix (as label_chi2) or its mean confidence moved, with
  p < prediction_alpha and by >= prediction_shift_threshold.

Apart from the checks, ``label_quality`` compares the champion's agreement with the new rows' labels to its
agreement on the reference holdout, pooled and batch by batch; it is not drift (it does not ask for a retrain):
a flagged batch stops the run, and decide withdraws it from the latest snapshot (tasks.data.withdraw).

The model checks compare against the reference's *holdout* rows when there are enough of them: the champion
never trained on those, so its confidence and agreement there are an honest baseline.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks import cli, results, storage
from tasks.contracts import DriftResult
from tasks.data import snapshots, withdraw
from tasks.drift import report
from tasks.drift.embeddings import model_checks
from tasks.drift.stats import TextSide, TokenCounter, statistical_checks
from tasks.errors import SpecInvalid
from tasks.manifests import VersionManifest, read_version_manifest
from tasks.spec import PipelineSpec, load_spec

log = logging.getLogger("tasks.drift.stage")


@dataclass
class DriftArgs:
    run: str = field(metadata={"help": "the run folder URI (holds spec.json)"})
    snapshot: str = field(metadata={"help": "the snapshot URI to check"})
    champion: str | None = field(metadata={"help": "the champion version URI, or 'none' (first run)"})


def run_drift(spec: PipelineSpec, run_uri: str, snapshot_uri: str, champion_uri: str | None) -> dict[str, Any]:
    """Run every check of the snapshot's new rows against the champion's snapshot; returns the XCom result."""
    cfg, names = spec.drift, spec.data.labels
    out_uri = storage.join(run_uri, "drift")
    current = snapshots.read_snapshot(snapshot_uri)
    result: dict[str, Any] = {"snapshot_uri": snapshot_uri, "report_uri": storage.join(out_uri, "report.json")}

    # 1. No champion: nothing to compare with.
    if champion_uri is None:
        return _finish(out_uri, result, first_run=True, new_rows=len(current), reference_rows=0,
                       summary=f"No champion yet, so there is no reference: drift checks skipped; "
                               f"all {len(current)} rows are new.")

    # 2. Reference = the champion's snapshot; current = the rows it does not hold.
    champion = _champion_manifest(champion_uri)
    reference = snapshots.read_snapshot(champion.snapshot_uri)
    new = current[~current["text"].isin(set(reference["text"]))].reset_index(drop=True)
    result.update(champion_uri=champion_uri, reference_snapshot_uri=champion.snapshot_uri,
                  reference_snapshot_id=champion.snapshot_id, reference_rows=len(reference),
                  new_rows=len(new), reference_label_counts=snapshots.label_counts(reference["label"], names))
    if len(new) < cfg.min_rows:
        return _finish(out_uri, result, summary=f"Only {len(new)} new rows since the champion's snapshot (fewer "
                                                f"than drift.min_rows = {cfg.min_rows}); drift checks skipped.")

    # 3. Statistical checks: every reference row against every new row.
    log.info("%d new rows against the champion's %d: statistical checks", len(new), len(reference))
    model_dir = _champion_encoder(champion_uri)
    started = time.perf_counter()
    checks, plot_data = statistical_checks(
        cfg, names, TokenCounter(model_dir),
        TextSide(reference["text"].tolist(), reference["label"].to_numpy()),
        TextSide(new["text"].tolist(), new["label"].to_numpy()))
    timings = {"statistical_seconds": round(time.perf_counter() - started, 3)}

    # 4. Model checks on bounded subsamples, against the holdout rows when there are enough of them.
    holdout = reference[reference["split"] == "holdout"]
    use_holdout = len(holdout) >= min(cfg.embedding_subsample, 100)
    model_ref = holdout if use_holdout else reference
    log.info("statistical checks done (%.1fs); champion-model checks on at most %d new and %d reference texts",
             timings["statistical_seconds"], cfg.embedding_subsample, cfg.embedding_reference_subsample)
    model, model_data = model_checks(cfg, names, model_dir, model_ref["text"].tolist(), new["text"].tolist(),
                                     max_length=spec.model.max_length, ref_labels=model_ref["label"].to_numpy(),
                                     cur_labels=new["label"].to_numpy(), cur_batches=new["batch"].astype(str).tolist(),
                                     accepted=withdraw.accepted_batches(spec.layout.snapshots))
    checks.update(model)
    plot_data.update(model_data)
    timings["model_seconds"] = round(model_data["model_seconds"], 3)
    quality = model_data["label_quality"] if use_holdout else _quality_skipped(len(holdout))

    # 5. Plots next to the report, then the verdict.
    result["plots"] = _upload_plots(out_uri, names, plot_data)
    drifted = sorted(name for name, c in checks.items() if c["drifted"])
    log.info("model checks done (%.1fs); drifted: %s", timings["model_seconds"], ", ".join(drifted) or "none")
    return _finish(out_uri, result, model_reference="holdout" if use_holdout else "all", checks=checks,
                   drift_detected=bool(drifted), drifted_checks=drifted, summary=report.summarize(checks, len(new)),
                   timings=timings, label_quality=quality,
                   current_label_counts=dict(zip(names, np.bincount(new["label"], minlength=len(names)).tolist())))


def _champion_manifest(champion_uri: str) -> VersionManifest:
    """The champion's version manifest; it must name the snapshot the champion was trained on.

    A version without one cannot serve as a champion: the --champion argument is invalid (SpecInvalid, no
    retry: running again reads the same manifest). It is not the landed data's fault, so not DataRejected."""
    uri = storage.join(champion_uri, "manifest.json")
    try:
        manifest = read_version_manifest(champion_uri)
    except FileNotFoundError as exc:
        raise SpecInvalid(f"--champion {champion_uri} has no manifest.json; it is not a registry version") from exc
    if not manifest.snapshot_uri:
        raise SpecInvalid(f"champion manifest {uri} names no snapshot_uri; cannot tell which data the champion "
                          f"was trained on")
    return manifest


def _champion_encoder(champion_uri: str) -> Path:
    from tasks.train.modeling import materialize

    return materialize(storage.join(champion_uri, "teacher"))


def _quality_skipped(holdout_rows: int) -> dict[str, Any]:
    return {"flagged": False, "skipped": True,
            "verdict": f"Label quality not checked: the reference has only {holdout_rows} holdout rows, and the "
                       f"champion's agreement on rows it trained on is no honest baseline."}


def _upload_plots(out_uri: str, names: list[str], plot_data: dict[str, Any]) -> dict[str, str]:
    uris = {}
    with tempfile.TemporaryDirectory(prefix="drift-") as tmp:
        for path in report.write_plots(Path(tmp), names, plot_data):
            uris[path.stem] = storage.join(out_uri, path.name)
            storage.upload_file(path, uris[path.stem])
    return uris


def _finish(out_uri: str, result: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """report.json gets the full result; result.json and XCom get the copy without bulky per-check details."""
    full = DriftResult(**result, **fields).dump()
    storage.write_json(full["report_uri"], full)
    return results.emit(report.for_xcom(full), out_uri)


def main(argv: list[str]) -> int:
    args = cli.parse(DriftArgs, argv, prog="python -m tasks drift", description=__doc__.splitlines()[0])
    spec = load_spec(storage.join(args.run, "spec.json"))
    run_drift(spec, args.run, args.snapshot, args.champion)
    return 0
