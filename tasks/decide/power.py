"""Comparisons sized to the evidence: can this golden set tell the candidate from the champion at all?

Before the non-inferiority gate compares a candidate with the champion, :func:`assess` works out the smallest true
accuracy gain the comparison would detect (pass with probability ``POWER``) at ``gates.confidence`` on this many
golden rows, given how often the two models disagree (the paired discordance: the rows where exactly one of them is
right). A golden set whose detectable gain is larger than ``gates.expected_difference`` is *underpowered*: the
bootstrap interval's lower bound cannot clear ``-margin`` for a candidate as good as the team expects, so the
interval rule alone would block every retrain (docs/benchmarks.md, "Small golden sets").
The gate then adds the snapshot's holdout rows neither model trained on (``gates.underpowered_evidence``,
gates.sized_non_inferiority_gate) and asks again; if the rows together still cannot decide,
``gates.underpowered`` says what happens:

* ``bayes`` (default): the gate decides with a rule built for small sets: the posterior probability, under a
  uniform Dirichlet prior on the paired outcome shares (gain, loss, tie), that accuracy(candidate) -
  accuracy(champion) > -margin must reach ``gates.small_set_probability`` (0.85);
* ``floors``: the comparison is skipped, saying why, and the floors decide;
* ``require_rows``: the gate fails and says how many golden rows would make the comparison decisive (an alert).

A golden set large enough to detect the expected difference (the demo's 872 SST-2 rows, or 1,000) is gated by the
bootstrap rule alone.
bench/small_golden.py measures the three at golden sizes 40, 200 and 1,000 (docs/registry.md).

Pure functions over counts; scipy/numpy only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm

POWER = 0.8  # the chance of passing that "detectable" means
PRIOR = 1.0  # uniform (Bayes-Laplace): one pseudo-row for each of gain, loss and tie
POSTERIOR_DRAWS = 20_000


def _z_sum(confidence: float, power: float) -> float:
    return float(norm.isf((1 - confidence) / 2) + norm.ppf(power))


def discordance(gains: int, losses: int, n: int, expected_difference: float) -> float:
    """The share of rows on which the two models disagree, as the power calculation uses it: observed, smoothed
    by one pseudo-row (none seen on 40 rows does not mean none), and never below the expected difference (a gain
    of d needs at least a share d of rows where only the candidate is right)."""
    return max((gains + losses + 1) / (n + 2), expected_difference)


def detectable_difference(n: int, disagree: float, *, confidence: float, margin: float,
                          power: float = POWER) -> float:
    """The smallest true accuracy gain for which the interval's lower bound clears ``-margin`` with probability
    ``power``: (z_(1-alpha/2) + z_power) * sqrt(discordance / n) - margin (normal approximation of the paired
    difference, whose variance is about discordance / n)."""
    if n <= 0:
        return math.inf
    return max(0.0, _z_sum(confidence, power) * math.sqrt(disagree / n) - margin)


def rows_needed(expected_difference: float, disagree: float, *, confidence: float, margin: float,
                power: float = POWER) -> int:
    """Golden rows at which :func:`detectable_difference` falls to ``expected_difference``."""
    reach = expected_difference + margin
    if reach <= 0:
        return 0
    return int(math.ceil(disagree * (_z_sum(confidence, power) / reach) ** 2))


def assess(candidate_correct: Any, champion_correct: Any, *, confidence: float, margin: float,
           expected_difference: float) -> dict[str, Any]:
    """Whether the paired comparison on these rows can detect ``expected_difference``; the numbers behind it."""
    cand = np.asarray(candidate_correct, dtype=bool)
    champ = np.asarray(champion_correct, dtype=bool)
    n = int(cand.size)
    gains = int(np.sum(cand & ~champ))
    losses = int(np.sum(champ & ~cand))
    disagree = discordance(gains, losses, n, expected_difference)
    detectable = detectable_difference(n, disagree, confidence=confidence, margin=margin)
    needed = rows_needed(expected_difference, disagree, confidence=confidence, margin=margin)
    return {"n": n, "gains": gains, "losses": losses, "discordance": round(disagree, 6),
            "detectable_difference": round(detectable, 6), "expected_difference": expected_difference,
            "power": POWER, "confidence": confidence, "margin": margin, "rows_needed": needed,
            "more_rows_needed": max(0, needed - n), "underpowered": bool(detectable > expected_difference)}


def posterior_not_worse(gains: int, losses: int, n: int, *, margin: float, seed: int = 0,
                        draws: int = POSTERIOR_DRAWS) -> float:
    """P(accuracy(candidate) - accuracy(champion) > -margin | the paired counts): the shares of gain, loss and tie
    rows drawn from their Dirichlet posterior (uniform prior), the difference being P(gain) - P(loss). Seeded:
    the same counts give the same probability. Monte Carlo (20,000 draws: +-0.003 at 0.85) because the difference
    of two Dirichlet coordinates has no closed-form tail that scipy offers."""
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet([gains + PRIOR, losses + PRIOR, max(n - gains - losses, 0) + PRIOR], size=draws)
    return float(np.mean(shares[:, 0] - shares[:, 1] > -margin))
