"""Model selection: the rows the evaluations during training score (``train.selection``), and how they are drawn:
the whole holdout split, a label-stratified sample of it, or holdout rows drawn like the golden set."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tasks import storage
from tasks.errors import SpecInvalid
from tasks.manifests import SnapshotManifest

log = logging.getLogger(__name__)


def stratified_sample(labels: Sequence[int], size: int, seed: int) -> list[int]:
    """Indices (sorted) of a seeded sample of ``size`` rows with each label's share of ``labels``: per label
    round(size x share) rows, the rounding left over going to the largest remainders, at least one row of every
    label present. All indices when ``size`` covers them. Written here rather than sklearn's
    ``train_test_split(stratify=...)``, which refuses a label with a single row."""
    labels = np.asarray(labels)
    if size >= len(labels):
        return list(range(len(labels)))
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / len(labels)
    take = np.maximum(1, np.floor(exact)).astype(int)
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if take.sum() >= size:
            break
        take[i] = min(counts[i], take[i] + 1)
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, take)]
    return sorted(int(i) for i in np.concatenate(picked))


LENGTH_BINS = 8  # token-length bins, at the golden set's quantiles
MIN_LIKE_GOLDEN_ROWS = 200  # below this a like-golden sample fills scarce cells from nearby lengths instead


@dataclass
class LikeGoldenSample:
    """A holdout sample drawn like the golden set (``like_golden_sample``) and how close it came."""

    indices: list[int]  # into the holdout split, sorted
    edges: list[int]  # token-length bin edges: bin i holds lengths in [edges[i-1], edges[i])
    shortfalls: list[dict[str, Any]] = field(default_factory=list)  # cells the holdout could not fill
    histogram_distance: float = 0.0  # total variation distance of the sample's (length bin, label) mix to golden's

    def summary(self) -> dict[str, Any]:
        return {"mode": "like_golden", "rows": len(self.indices), "length_edges": self.edges,
                "histogram_distance": round(self.histogram_distance, 4), "shortfalls": self.shortfalls}


def length_edges(lengths: Sequence[int], bins: int = LENGTH_BINS) -> list[int]:
    """Inner bin edges at the quantiles of ``lengths`` (integers, distinct): ``bins`` bins of about equal golden
    counts, the first and last open-ended so every holdout row falls in one."""
    inner = np.quantile(np.asarray(lengths), np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({int(np.ceil(x)) for x in inner} - {int(min(lengths))})


def cell_counts(lengths: Sequence[int], labels: Sequence[int], edges: Sequence[int]) -> dict[tuple[int, int], int]:
    """Rows per (length bin, label)."""
    bins = np.searchsorted(np.asarray(edges), np.asarray(lengths), side="right")
    cells, counts = np.unique(np.stack([bins, np.asarray(labels)], axis=1), axis=0, return_counts=True)
    return {(int(b), int(y)): int(n) for (b, y), n in zip(cells, counts)}


def apportion(shares: dict[Any, float], size: int) -> dict[Any, int]:
    """``size`` split by ``shares`` (summing to 1): floors, then the largest remainders (ties by key order)."""
    keys = sorted(shares)
    exact = {k: size * shares[k] for k in keys}
    out = {k: int(exact[k]) for k in keys}
    for k in sorted(keys, key=lambda k: -(exact[k] - out[k]))[:size - sum(out.values())]:
        out[k] += 1
    return out


def like_golden_sample(holdout_lengths: Sequence[int], holdout_labels: Sequence[int], golden_lengths: Sequence[int],
                       golden_labels: Sequence[int], seed: int, max_rows: int | None = None,
                       bins: int = LENGTH_BINS, min_rows: int = MIN_LIKE_GOLDEN_ROWS) -> LikeGoldenSample:
    """A seeded sample of holdout rows whose (token-length bin, label) mix is the golden set's.

    Bins are the golden set's length quantiles (``length_edges``). The size is the largest sample with exactly
    the golden mix that the holdout rows allow, at most the golden set's size and ``max_rows``. When that is
    below ``min_rows`` (a holdout with few rows of some length and label, e.g. the long sentences of SST-2's
    phrase-heavy train file), the sample has ``min_rows`` rows (or all the holdout's) and a cell the holdout cannot
    fill takes what it has, the rest from the nearest length bins of the same label (shorter first on a tie), so
    the label mix stays the golden set's as long as the label has rows; those cells are in ``shortfalls``. The
    golden rows themselves are never sampled: only their lengths and labels are read."""
    h_len, h_lab = np.asarray(holdout_lengths), np.asarray(holdout_labels)
    edges = length_edges(golden_lengths, bins)
    golden = cell_counts(golden_lengths, golden_labels, edges)
    total = sum(golden.values())
    shares = {c: n / total for c, n in golden.items()}
    h_bins = np.searchsorted(np.asarray(edges), h_len, side="right")
    members = {c: np.flatnonzero((h_bins == c[0]) & (h_lab == c[1])) for c in golden}
    exact_fit = min(len(members[c]) / shares[c] for c in golden)
    cap = min(total, len(h_len), max_rows if max_rows is not None else len(h_len))
    size = int(min(cap, np.floor(exact_fit + 1e-9)))
    if size < min_rows:
        size = min(cap, min_rows)
    want = apportion(shares, size)
    take = {c: min(want[c], len(members[c])) for c in golden}
    # Scarce cells: the rest from the same label's nearest length bins that have rows to spare.
    shortfalls = []
    extra: dict[tuple[int, int], int] = {}
    all_cells = {(int(b), int(y)) for b, y in zip(h_bins, h_lab)}
    spare = {c: int(np.sum((h_bins == c[0]) & (h_lab == c[1]))) - take.get(c, 0) for c in all_cells}
    for cell in sorted(golden):
        missing = want[cell] - take[cell]
        if not missing:
            continue
        filled = 0
        near = sorted((c for c in all_cells if c[1] == cell[1] and c != cell), key=lambda c: (abs(c[0] - cell[0]), c[0]))
        for other in near:
            n = min(missing - filled, spare[other])
            if n > 0:
                extra[other] = extra.get(other, 0) + n
                spare[other] -= n
                filled += n
            if filled == missing:
                break
        low = edges[cell[0] - 1] if cell[0] > 0 else 0
        high = edges[cell[0]] if cell[0] < len(edges) else None
        shortfalls.append({"tokens": f"[{low}, {high if high is not None else 'inf'})", "label": cell[1],
                           "wanted": want[cell], "holdout_rows": take[cell], "from_nearby_lengths": filled})
    rng = np.random.default_rng(seed)
    picked = []
    for cell in sorted(all_cells):
        rows = np.flatnonzero((h_bins == cell[0]) & (h_lab == cell[1]))
        n = take.get(cell, 0) + extra.get(cell, 0)
        if n:
            picked.extend(int(i) for i in rng.permutation(rows)[:n])
    got = cell_counts(h_len[picked], h_lab[picked], edges) if picked else {}
    distance = 0.5 * sum(abs(got.get(c, 0) / max(1, len(picked)) - shares.get(c, 0.0))
                         for c in set(got) | set(shares))
    return LikeGoldenSample(sorted(picked), edges, shortfalls, float(distance))


def model_selection_rows(hp, holdout_set, snapshot_uri: str, tokenizer, max_length: int, stage: str,
                         manifest: SnapshotManifest | None = None) -> tuple[Any, dict[str, Any]]:
    """(the rows the evaluations during training score, a summary for the result).

    ``train.selection: like_golden``: holdout rows sampled to the golden set's token-length x label mix
    (``like_golden_sample``; the golden set named by the snapshot's manifest, read for its lengths and
    labels only: no golden row is ever scored during training, so the golden metrics of evaluate and the gates stay
    an unbiased estimate). A snapshot without a golden set falls back to ``holdout``, and says so; so does a
    sample that falls short of the golden mix and has under half the split's rows. ``holdout``:
    the whole split, or a label-stratified sample of ``train.selection_rows``. ``manifest``: the snapshot's,
    when already read."""
    from tasks.data import snapshots

    if hp.selection == "like_golden":
        golden_uri = (manifest if manifest is not None else snapshots.read_manifest(snapshot_uri)).golden_uri
        if not golden_uri:
            log.info(f"[{stage}] train.selection like_golden: snapshot {snapshot_uri} records no golden_uri; model "
                     "selection on the holdout split instead")
        else:
            try:
                golden = snapshots.read_golden(golden_uri)
            except storage.NotFound as exc:
                raise SpecInvalid(f"train.selection like_golden: no golden set at {golden_uri} ({exc})") from None
            if golden.empty:
                raise SpecInvalid(f"train.selection like_golden: the golden set at {golden_uri} has no rows")
            lengths = [len(ids) for ids in tokenizer(list(golden["text"]), truncation=True,
                                                     max_length=max_length)["input_ids"]]
            sample = like_golden_sample(
                [len(ids) for ids in holdout_set["input_ids"]], holdout_set["labels"], lengths,
                golden["label"].astype(int).tolist(), seed=hp.seed, max_rows=hp.selection_rows)
            if sample.shortfalls:
                gaps = "; ".join(f"label {g['label']} with {g['tokens']} tokens: {g['holdout_rows']} of {g['wanted']}"
                                 for g in sample.shortfalls)
                if len(sample.indices) < len(holdout_set) / 2:
                    # Short of the golden mix and under half the split: a sample that is not quite like the golden
                    # set, and scored with more noise than the whole split, picks checkpoints worse on the golden
                    # set (docs/benchmarks.md, "Model selection: where fine-tuning stops"). The whole split it is.
                    log.info(f"[{stage}] model selection on all {len(holdout_set)} holdout rows: a sample like the "
                             f"golden set would be short ({gaps}) and only {len(sample.indices)} rows")
                    return holdout_set, {"mode": "holdout", "rows": len(holdout_set), "golden_uri": golden_uri,
                                         "like_golden_fallback": sample.summary()}
                log.info(f"[{stage}] model selection: the holdout split has fewer rows than the golden mix asks for "
                         f"({gaps}); the rest taken from the nearest lengths of the same label")
            log.info(f"[{stage}] model selection on {len(sample.indices)} of {len(holdout_set)} holdout rows drawn "
                     f"like the golden set ({len(golden)} rows; {len(sample.edges) + 1} token-length bins x labels, "
                     f"distance {sample.histogram_distance:.3f})")
            return holdout_set.select(sample.indices), {**sample.summary(), "golden_uri": golden_uri}
    if hp.selection_rows is not None and hp.selection_rows < len(holdout_set):
        picked = stratified_sample(holdout_set["labels"], hp.selection_rows, hp.seed)
        log.info(f"[{stage}] model selection on a stratified {len(picked)} of {len(holdout_set)} holdout rows")
        return holdout_set.select(picked), {"mode": "holdout", "rows": len(picked)}
    return holdout_set, {"mode": "holdout", "rows": len(holdout_set)}
