"""Non-inferiority sized to the evidence: how often the gate promotes a candidate of known quality, per golden size.

    python bench/small_golden.py [--sizes 40 200 1000] [--trials 4000] [--trials-large 400] \
        [--churn 0.005 0.01 0.02 0.03 0.05] [--holdout-rows 0 100 400]

Simulated golden sets, no model: in each trial a champion (accuracy ``--champion-accuracy``) and a candidate
``d`` points better or worse are scored on ``n`` golden rows. The two agree on most rows; ``churn`` is the share
of rows each loses that the other gets right beyond the true difference: P(only the candidate right) =
churn + max(d, 0), P(only the champion right) = churn + max(-d, 0). Two retrains of one model on mostly the same
data disagree on few rows (low churn); unrelated models on many. The gate is the pipeline's own
(``tasks.decide.gates.sized_non_inferiority_gate`` with the shipped ``gates`` defaults); it depends only on the
counts of gain, loss and tie rows, so each distinct count is computed once.

For each size, churn and true difference it reports the share of trials the gate passes under:
``today`` (the bootstrap interval whatever the size: ``gates.expected_difference: null``), and each
``gates.underpowered`` action (``bayes``, the default: the small-set rule at any size, as shipped;
``bayes_min_rows_100``: the same with ``gates.small_set_min_rows: 100``, a set under 100 rows never passes; ``floors``: the comparison skipped, so the floors alone
decide, and the simulation has no floors: every candidate passes; ``require_rows``: no candidate passes on an
underpowered set). Also how often the set was underpowered and the median ``rows_needed``.

With ``--holdout-rows H`` (H > 0) each trial also scores both models on H holdout rows neither trained on, drawn
like the golden rows (the same true difference and churn), and the ``holdout_H`` columns are the shipped gate
with them (``gates.underpowered_evidence: golden_and_holdout``, the default): the golden rows alone first, the
holdout added only when those cannot decide.

For n <= 200 it also gives the information limit (``best_possible_...``): the share of +8-point candidates the
most powerful test on these counts would promote while promoting a -3-point one in at most 5% of trials, knowing
the churn. Prints one JSON line per (size, churn), then a summary line with the bars of issue 25 (n = 40: +8 points passed in
>= 80% of trials, -3 points in <= 5%; n = 1,000: the same as today).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_json  # noqa: E402

DIFFS = (0.08, 0.03, 0.0, -0.03)


def paired(n: int, gains: int, losses: int) -> tuple[np.ndarray, np.ndarray]:
    """Correct-or-not vectors of a candidate and a champion on n rows with these discordant counts."""
    cand = np.zeros(n, dtype=bool)
    champ = np.zeros(n, dtype=bool)
    cand[:gains] = True  # gains: only the candidate right
    champ[gains:gains + losses] = True  # losses: only the champion right
    ties_right = (n - gains - losses) * 85 // 100  # most ties both right; their split does not matter
    cand[gains + losses:gains + losses + ties_right] = True
    champ[gains + losses:gains + losses + ties_right] = True
    return cand, champ


def gate_for(n: int, gains: int, losses: int, settings: dict, cache: dict,
             holdout: tuple[int, int, int] | None = None) -> tuple[bool, bool, int]:
    """(passed, underpowered, rows_needed) of the real gate on rows with these counts; ``holdout``: (rows, gains,
    losses) of the holdout rows the gate may add."""
    from tasks.decide import gates
    from tasks.spec import GatesSpec

    if holdout:
        alone = gate_for(n, gains, losses, settings, cache)
        if not alone[1]:  # a golden set that can decide never looks at the holdout: the same verdict
            return alone
    key = (n, gains, losses, tuple(sorted(settings.items())), holdout)
    if key not in cache:
        extra = gates.HoldoutEvidence(*paired(*holdout)) if holdout else None
        gate = gates.sized_non_inferiority_gate("ni", *paired(n, gains, losses), GatesSpec(**settings), extra)
        sized = gate.details.get("power") or {}
        cache[key] = (bool(gate.passed), bool(sized.get("underpowered")), int(sized.get("rows_needed") or 0))
    return cache[key]


def best_possible(n: int, churn: float, better: float = 0.08, worse: float = -0.03, alpha: float = 0.05) -> float:
    """The most a test on this golden set's paired counts can promote a candidate ``better`` than the champion
    while promoting one ``worse`` in at most ``alpha`` of trials, knowing the churn (an upper bound no rule can
    beat): the Neyman-Pearson set of (gains, losses) counts, taken in order of their likelihood ratio, exactly (no
    sampling). Only for n <= 200 (its count pairs grow as n^2 / 2)."""
    from scipy.stats import multinomial

    gains, losses = np.array([(g, l) for g in range(n + 1) for l in range(n + 1 - g)]).T
    counts = np.stack([gains, losses, n - gains - losses], axis=1)

    def pmf(d: float) -> np.ndarray:
        p_gain, p_loss = churn + max(d, 0.0), churn + max(-d, 0.0)
        return multinomial.pmf(counts, n, [p_gain, p_loss, 1 - p_gain - p_loss])

    good, bad = pmf(better), pmf(worse)
    order = np.argsort(-(good / np.maximum(bad, 1e-300)), kind="stable")
    inside = np.searchsorted(np.cumsum(bad[order]), alpha, side="right")
    return float(good[order][:inside].sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[40, 200, 1000])
    ap.add_argument("--churn", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.03, 0.05])
    ap.add_argument("--trials", type=int, default=4000)
    ap.add_argument("--trials-large", type=int, default=400,
                    help="trials at sizes >= 500 (each distinct count there runs the 1,000-resample bootstrap)")
    ap.add_argument("--champion-accuracy", type=float, default=0.85)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout-rows", type=int, nargs="+", default=[0],
                    help="holdout rows neither model trained on, beside the golden rows (0: none)")
    args = ap.parse_args(argv)

    modes = {"today": {"expected_difference": None}, "bayes": {"underpowered": "bayes"},
             "bayes_min_rows_100": {"underpowered": "bayes", "small_set_min_rows": 100},
             "floors": {"underpowered": "floors"}, "require_rows": {"underpowered": "require_rows"}}
    cache: dict = {}
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in args.sizes:
        for churn in args.churn:
            trials = args.trials if n < 500 else args.trials_large
            line = {"n": n, "churn": churn, "trials": trials, "champion_accuracy": args.champion_accuracy}
            for d in DIFFS:
                p_gain, p_loss = churn + max(d, 0.0), churn + max(-d, 0.0)
                counts = rng.multinomial(n, [p_gain, p_loss, 1 - p_gain - p_loss], size=trials)
                label = f"{d * 100:+.0f}pts"
                for mode, settings in modes.items():
                    results = [gate_for(n, int(g), int(l), settings, cache) for g, l, _ in counts]
                    line[f"{mode}_passed_{label}"] = round(float(np.mean([r[0] for r in results])), 4)
                    if mode == "bayes":
                        line[f"underpowered_{label}"] = round(float(np.mean([r[1] for r in results])), 4)
                        line[f"rows_needed_median_{label}"] = int(np.median([r[2] for r in results]))
                for h in (h for h in args.holdout_rows if h > 0):
                    extra = rng.multinomial(h, [p_gain, p_loss, 1 - p_gain - p_loss], size=trials)
                    results = [gate_for(n, int(g), int(l), {}, cache, (h, int(hg), int(hl)))
                               for (g, l, _), (hg, hl, _) in zip(counts, extra)]
                    line[f"holdout_{h}_passed_{label}"] = round(float(np.mean([r[0] for r in results])), 4)
            if n <= 200:
                line["best_possible_passed_+8pts_at_most_5pct_-3pts"] = round(best_possible(n, churn), 4)
            print_json(line)
            rows.append(line)
    small = [r for r in rows if r["n"] == 40]
    large = [r for r in rows if r["n"] == 1000]
    def bar(r: dict, mode: str) -> bool:
        return r[f"{mode}_passed_+8pts"] >= 0.8 and r[f"{mode}_passed_-3pts"] <= 0.05

    print_json({"summary": True,
                "n40_bar_met_at_churn": [r["churn"] for r in small if bar(r, "bayes")],
                "n40_bar_possible_at_churn": [r["churn"] for r in small
                                              if r.get("best_possible_passed_+8pts_at_most_5pct_-3pts", 0) >= 0.8],
                "smallest_size_the_small_set_rule_meets_the_bar": {
                    str(c): min([r["n"] for r in rows if r["churn"] == c and bar(r, "bayes")], default=None)
                    for c in args.churn},
                "n40_bar_met_with_holdout_rows": {
                    str(h): [r["churn"] for r in small if bar(r, f"holdout_{h}")]
                    for h in args.holdout_rows if h > 0},
                "n1000_same_as_today": all(r[f"bayes_passed_{k}"] == r[f"today_passed_{k}"]
                                           for r in large for k in ("+8pts", "+3pts", "+0pts", "-3pts"))})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
