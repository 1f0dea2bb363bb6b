"""The rows a training stage trains on: a snapshot's train and holdout splits, tokenized, and what a user should
know about them (rows cut at ``model.max_length``, declared classes with no rows)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset

from tasks import storage
from tasks.errors import DataRejected, SpecInvalid
from tasks.manifests import SnapshotManifest

if TYPE_CHECKING:
    import pandas as pd


def load_splits(snapshot_uri: str, max_train_rows: int | None,
                manifest: SnapshotManifest | None = None) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """(train, holdout) rows of a snapshot (``manifest``: its manifest, when already read). With a cap, the newest
    rows win: parts are stored oldest batch first, so the cap keeps the tail of the train split."""
    from tasks.data.snapshots import read_snapshot

    try:
        frame = read_snapshot(snapshot_uri, manifest)
    except storage.NotFound as exc:
        raise SpecInvalid(f"--snapshot {snapshot_uri}: no snapshot there ({exc})") from None
    train = frame[frame["split"] == "train"]
    holdout = frame[frame["split"] == "holdout"]
    if max_train_rows is not None and len(train) > max_train_rows:
        train = train.iloc[len(train) - max_train_rows:]
    if train.empty:
        raise DataRejected(f"snapshot {snapshot_uri} has no train rows")
    if holdout.empty:
        raise DataRejected(f"snapshot {snapshot_uri} has no holdout rows; early stopping needs them")
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def tokenize(tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int):
    """A datasets.Dataset of unpadded token ids; padding happens per batch (DataCollatorWithPadding)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    columns = {key: enc[key] for key in enc.keys()}
    columns["labels"] = [int(label) for label in labels]
    return Dataset.from_dict(columns)


def train_data_report(dataset, labels: Sequence[str], max_length: int) -> dict[str, Any]:
    """What a user should know about the rows a stage trains on, and is told nowhere else: how many reach
    ``model.max_length`` (cut there: long documents), and which declared classes have no train row at all (the
    model cannot learn them; a class may arrive with a later batch)."""
    lengths = np.asarray(token_counts(dataset))
    ids = dataset.select_columns(["labels"]).with_format("arrow")["labels"]
    counts = np.bincount(pc.cast(ids, "int64").to_numpy(zero_copy_only=False), minlength=len(labels))
    at_max = int((lengths >= max_length).sum())
    return {"rows": int(lengths.size), "rows_at_max_length": at_max,
            "share_at_max_length": round(at_max / lengths.size, 4) if lengths.size else 0.0,
            "max_length": max_length, "median_tokens": int(np.median(lengths)) if lengths.size else 0,
            "classes_without_rows": [label for label, n in zip(labels, counts) if n == 0]}


def train_data_warnings(report: dict[str, Any]) -> list[str]:
    """The report's lines worth a warning: a quarter or more of the rows cut, or a class with no rows."""
    out = []
    if report["share_at_max_length"] >= 0.25:
        out.append(f"{report['rows_at_max_length']} of {report['rows']} train rows "
                   f"({report['share_at_max_length']:.0%}) reach model.max_length {report['max_length']} and are cut "
                   f"there (median {report['median_tokens']} tokens): raise model.max_length if their ends matter")
    if report["classes_without_rows"]:
        out.append(f"no train rows of {len(report['classes_without_rows'])} declared class(es) "
                   f"{report['classes_without_rows']}: the model cannot predict them until rows of them land")
    return out


def token_counts(dataset) -> list[int]:
    """Each row's number of tokens, from the Arrow column (a Python list of every row's ids would cost a read of
    the whole split into objects); a ``select``-ed split gives its selected rows."""
    column = dataset.select_columns(["input_ids"]).with_format("arrow")["input_ids"]
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).tolist()
