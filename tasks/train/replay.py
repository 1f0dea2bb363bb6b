"""The rows an incremental retrain trains on: the rows new since the champion's snapshot plus a replay sample of
older ones (``train.replay_multiple`` x the new rows), drawn to keep the history's label mix and token-length mix.

The decision says which kind of training a retrain does (``tasks/decide/retrain_policy.py``, recorded as
``training`` in the run's ``decide/result.json``); both training stages read it here and, when it is
incremental and the stage warm-starts from the champion, train on ``select``-ed rows of the snapshot's tokenized
train split (the token cache still holds the whole split: the next stage and a full retrain share it).

Which rows are new: the train rows whose text the champion's snapshot does not hold (the drift stage counts new
rows the same way). Both sides come from stored snapshots, so every filter a snapshot went through holds for the
replay as for a full retrain: rows withdrawn by the label-quality check (``tasks/data/withdraw.py``) and rows
whose text is in the golden set (dropped at ingest and by a re-freeze) are not in the snapshot, so they are
neither new nor replayed; a relabelled text is quarantined at ingest (``conflicting_labels``) and the stored row
keeps its label. A class with no rows in the champion's snapshot makes the decision choose a full retrain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tasks import storage
from tasks.manifests import VersionManifest, read_version_manifest

log = logging.getLogger(__name__)
LENGTH_BINS = 4  # token-length bins of the history, at its quantiles: the replay keeps its length mix


def decided_training(run_uri: str) -> dict[str, Any] | None:
    """The decision's ``training`` for the run (None when the run has no recorded decision: a stage run by hand
    or a bench, which then trains on the whole snapshot)."""
    uri = storage.join(run_uri, "decide", "result.json")
    return (storage.read_json(uri).get("training") or None) if storage.exists(uri) else None


def replay_sample(labels: Sequence[int], lengths: Sequence[int], size: int, seed: int,
                  bins: int = LENGTH_BINS) -> list[int]:
    """Indices (sorted) of ``size`` rows of the history (``labels``, token ``lengths``) whose (length bin, label)
    mix is the history's: bins at the history's length quantiles, each cell ``size`` x its share (largest
    remainders), a seeded permutation within each cell. All rows when ``size`` covers them."""
    from tasks.train.selection import apportion, cell_counts, length_edges

    labels, lengths = np.asarray(labels), np.asarray(lengths)
    if size >= len(labels):
        return list(range(len(labels)))
    if size <= 0:
        return []
    edges = length_edges(lengths, bins)
    cells = cell_counts(lengths, labels, edges)
    want = apportion({c: n / len(labels) for c, n in cells.items()}, size)
    row_bins = np.searchsorted(np.asarray(edges), lengths, side="right")
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for cell in sorted(cells):
        members = np.flatnonzero((row_bins == cell[0]) & (labels == cell[1]))
        picked.extend(int(i) for i in rng.permutation(members)[:want[cell]])
    return sorted(picked)


@dataclass
class Selection:
    """What a stage trains on: ``indices`` into the snapshot's train split (None: all of it) and the report for
    its result (``training``)."""

    indices: list[int] | None
    report: dict[str, Any]


def mix(labels: Sequence[int], names: Sequence[str]) -> dict[str, float]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    total = max(1, int(counts.sum()))
    return {name: round(int(n) / total, 4) for name, n in zip(names, counts)}


def select(is_old: Sequence[bool], train_labels: Sequence[int], lengths: Sequence[int], *, multiple: float,
           seed: int, names: Sequence[str]) -> Selection:
    """The incremental rows of a train split (per row, in the split's order: whether the champion's snapshot
    holds its text, its label, its token length): every new row plus ``replay_sample`` of the others,
    ``floor(multiple x new rows)`` of them (at most all)."""
    old = np.asarray(is_old, dtype=bool)
    labels, lengths = np.asarray(train_labels), np.asarray(lengths)
    new_idx, old_idx = np.flatnonzero(~old), np.flatnonzero(old)
    size = min(len(old_idx), int(np.floor(multiple * len(new_idx) + 1e-9)))
    replay = old_idx[replay_sample(labels[old_idx], lengths[old_idx], size, seed)] if size else old_idx[:0]
    indices = sorted(int(i) for i in np.concatenate([new_idx, replay]))
    report = {"mode": "incremental", "snapshot_train_rows": int(len(old)), "new_rows": int(len(new_idx)),
              "replay_rows": int(len(replay)), "history_rows": int(len(old_idx)), "train_rows": len(indices),
              "replay_multiple": multiple,
              "label_mix": {"history": mix(labels[old_idx], names), "replay": mix(labels[replay], names),
                            "new": mix(labels[new_idx], names)},
              "median_tokens": {"history": float(np.median(lengths[old_idx])) if len(old_idx) else None,
                                "replay": float(np.median(lengths[replay])) if len(replay) else None}}
    return Selection(indices, report)


def _full(train_rows: int, reasons: list[str], **extra: Any) -> Selection:
    return Selection(None, {"mode": "full", "snapshot_train_rows": train_rows, "train_rows": train_rows,
                            "reasons": reasons, **extra})


def training_rows(spec, run_uri: str, snapshot, champion_uri: str | None, train_set, *, init_from: str,
                  stage: str) -> tuple[Any, dict[str, Any]]:
    """(the train split to train on, the ``training`` report for the stage's result). ``snapshot``: the
    runner's ``token_cache.SnapshotIdentity``; ``train_set`` its tokenized train split; ``init_from`` where the
    stage's weights start (an incremental retrain needs a warm start from the champion)."""
    from tasks import cli
    from tasks.data import snapshots
    from tasks.train import train_data

    decided = decided_training(run_uri)
    rows = len(train_set)
    if not decided or decided.get("mode") != "incremental":
        reasons = (decided or {}).get("reasons") or ["no decision recorded for this run: the whole snapshot"]
        return train_set, _full(rows, list(reasons)).report
    if not init_from.startswith("champion"):
        return train_set, _full(rows, [f"Full retrain on the whole snapshot: this stage starts from {init_from}, "
                                       "not from the champion, and a model not warm-started needs the whole "
                                       "history."]).report
    champion_uri = cli.optional(champion_uri)
    manifest = read_version_manifest(champion_uri) if champion_uri else VersionManifest()
    if not manifest.snapshot_uri:
        return train_set, _full(rows, ["Full retrain on the whole snapshot: the champion names no snapshot, so "
                                       "no row is known to be old."]).report
    frame, _ = train_data.load_splits(snapshot.uri, spec.train.max_train_rows, snapshot.manifest)
    if len(frame) != rows:  # the token cache's split is this one, row for row; anything else is a bug to see
        raise RuntimeError(f"snapshot {snapshot.uri}: {len(frame)} train rows read, {rows} tokenized")
    champion_texts = snapshots.read_snapshot(manifest.snapshot_uri)["text"]
    chosen = select(frame["text"].isin(champion_texts).to_numpy(), frame["label"].astype(int).to_numpy(),
                    train_data.token_counts(train_set), multiple=spec.train.replay_multiple, seed=spec.train.seed,
                    names=spec.data.labels)
    if not chosen.report["new_rows"]:
        return train_set, _full(rows, ["Full retrain on the whole snapshot: none of the new rows is in the train "
                                       "split."]).report
    chosen.report["reasons"] = list(decided.get("reasons") or [])
    chosen.report["champion_snapshot_id"] = manifest.snapshot_id
    r = chosen.report
    log.info(f"[{stage}] incremental retrain: {r['new_rows']} new + {r['replay_rows']} replayed of {r['history_rows']} "
             f"older train rows = {r['train_rows']} of the snapshot's {rows}")
    return train_set.select(chosen.indices), r
