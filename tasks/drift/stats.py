"""The statistical drift checks: label mix, text length, vocabulary and unknown tokens, and the shared nulls.

Every check returns ``{statistic, threshold, drifted, verdict, ...}``. The label and prediction checks (here and
in ``tasks.drift.embeddings``) are judged against their own sampling noise: a seeded permutation null gives the
p-value, and a check drifts only when ``p < alpha`` *and* its effect (how far the mix moved beyond what
sampling alone moves it) reaches a floor; for them ``statistic`` is the effect and ``threshold`` the floor, with
``p_value`` and ``alpha`` beside them. The p-value keeps false alarms at ``alpha`` whatever the number of
classes or rows; the floor keeps a large batch from alarming on a real but negligible shift (docs/drift.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from scipy.spatial.distance import cdist
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp
from tokenizers import Tokenizer
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.drift import report
from tasks.drift.report import shares
from tasks.spec import DriftSpec

# Splits a text into the words BERT-style pre-tokenizers see: whitespace, and each punctuation mark alone.
_ISOLATE_PUNCT = r"([^\p{L}\p{N}\p{M}\s])"
_JS_NULL_DRAWS = 10
_PSI_EPS = 1e-4


# ------------------------------------------------------------------ tokens


class TokenCounter:
    """Token lengths and token frequencies under a model's tokenizer, fast enough for 100k texts.

    Texts are split into words with Arrow's vectorized string kernels, and each *distinct* word is tokenized
    once with the model's own (Rust) tokenizer (and cached); per-text lengths and per-token counts are then array sums.
    For WordPiece models this equals tokenizing every text (tests check it).
    """

    def __init__(self, model_dir: str | Path) -> None:
        from tasks.train.modeling import load_tokenizer

        hf = load_tokenizer(model_dir)
        self.backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        self.backend.no_padding()
        self.backend.no_truncation()
        self.vocab_size = self.backend.get_vocab_size()
        self.unk_id = hf.unk_token_id
        self._pieces: dict[str, list[int]] = {}  # word -> token ids; reference and new rows share most words

    def count(self, texts: Sequence[str]) -> tuple["np.ndarray", "np.ndarray"]:
        """(tokens per text, token-id counts of shape (vocab_size,))."""
        arr = pc.replace_substring_regex(pc.utf8_lower(pa.array(list(texts), pa.large_string())),
                                         _ISOLATE_PUNCT, r" \1 ")
        lists = pc.utf8_split_whitespace(arr)
        offsets = lists.offsets.to_numpy()
        encoded = pc.dictionary_encode(pc.list_flatten(lists))
        words = encoded.dictionary.to_pylist()
        word_of_token = encoded.indices.to_numpy()
        missing = [w for w in words if w not in self._pieces]
        if missing:
            for word, enc in zip(missing, self.backend.encode_batch(missing, add_special_tokens=False)):
                self._pieces[word] = enc.ids
        ids = [self._pieces[w] for w in words]
        pieces = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        cumulative = np.concatenate([[0], np.cumsum(pieces[word_of_token])]) if len(word_of_token) else np.zeros(1)
        lengths = (cumulative[offsets[1:]] - cumulative[offsets[:-1]]).astype(np.int64)
        word_counts = np.bincount(word_of_token, minlength=len(words)).astype(np.float64)
        flat_ids = np.fromiter((i for x in ids for i in x), dtype=np.int64, count=int(pieces.sum()))
        counts = np.bincount(flat_ids, weights=np.repeat(word_counts, pieces), minlength=self.vocab_size)
        return lengths, counts


@dataclass
class TextSide:
    """One side of a comparison: texts and their integer labels."""

    texts: Sequence[str]
    labels: "np.ndarray"


# ------------------------------------------------------------------ shared pieces


def check(statistic: float, threshold: float, drifted: bool, verdict: str, **extra: Any) -> dict[str, Any]:
    """The shape every check has in the result and the report."""
    return {"statistic": float(statistic), "threshold": float(threshold), "drifted": bool(drifted),
            "verdict": verdict, **extra}


def permutation_p(observed: float, null: "np.ndarray") -> float:
    """One-sided Monte-Carlo p-value, (1 + #null >= observed) / (1 + draws): never 0, valid at any draw count."""
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def count_null(ref_counts: "np.ndarray", cur_counts: "np.ndarray", resamples: int, seed: int
               ) -> tuple["np.ndarray", "np.ndarray"]:
    """Class counts of ``resamples`` random relabellings of the pooled rows: (reference, current), (resamples, k).

    Shuffling which pooled rows are "reference" and which are "new" is the permutation null of "both sides
    come from one distribution"; the counts it gives follow a multivariate hypergeometric law, which numpy
    draws directly, so the cost is O(resamples * classes), not O(resamples * rows).
    """
    pooled = (np.asarray(ref_counts) + np.asarray(cur_counts)).astype(np.int64)
    rng = np.random.default_rng(seed)
    cur = rng.multivariate_hypergeometric(pooled, int(np.sum(cur_counts)), size=resamples, method="marginals")
    return pooled[None, :] - cur, cur


def _row_shares(counts: "np.ndarray") -> "np.ndarray":
    counts = np.asarray(counts, dtype=np.float64)
    return counts / np.clip(counts.sum(axis=-1, keepdims=True), 1.0, None)


def _mix_statistics(ref_counts: "np.ndarray", cur_counts: "np.ndarray") -> "np.ndarray":
    """(..., 3): total-variation distance, largest single-class move, chi-square of homogeneity."""
    ref, cur = np.asarray(ref_counts, dtype=np.float64), np.asarray(cur_counts, dtype=np.float64)
    move = _row_shares(cur) - _row_shares(ref)
    tvd = 0.5 * np.abs(move).sum(axis=-1)
    largest = np.abs(move).max(axis=-1)
    pooled = ref + cur
    total = np.clip(pooled.sum(axis=-1, keepdims=True), 1.0, None)
    chi2 = np.zeros(tvd.shape)
    for side in (ref, cur):
        expected = pooled * side.sum(axis=-1, keepdims=True) / total
        with np.errstate(divide="ignore", invalid="ignore"):
            chi2 = chi2 + np.where(expected > 0, (side - expected) ** 2 / expected, 0.0).sum(axis=-1)
    return np.stack([tvd, largest, chi2], axis=-1)


def mix_shift(ref_counts: "np.ndarray", cur_counts: "np.ndarray", resamples: int, seed: int) -> dict[str, Any]:
    """Did a class mix (labels, or the champion's predicted labels) move beyond its sampling noise?

    Three statistics are computed on the observed table and on ``resamples`` permutations of it: the
    total-variation distance (catches many classes moving a little), the largest single-class share move
    (catches one class moving a lot, which a distance summed over 77 noisy classes drowns), and the chi-square
    of homogeneity. The p-value is of the *smallest* of their three permutation p-values, calibrated on the
    same permutations (a min-p combination), so it is one valid test with the power of the best statistic.

    The effect is how far the mix moved beyond sampling noise: the larger of (TVD - its null mean) and
    (largest move - its null mean), in share points. With 77 classes and 200 rows the TVD of two samples of
    one distribution is ~0.2; subtracting the null mean takes that out.
    """
    observed = _mix_statistics(ref_counts, cur_counts)
    ref_null, cur_null = count_null(ref_counts, cur_counts, resamples, seed)
    null = _mix_statistics(ref_null, cur_null)  # (resamples, 3)
    ordered = np.sort(null, axis=0)
    draws = len(null)
    # p of each null draw under each statistic (itself included), then the min over statistics.
    null_p = np.stack([(1 + draws - np.searchsorted(ordered[:, j], null[:, j] - 1e-12, side="left")) / (1 + draws)
                       for j in range(3)], axis=1)
    observed_p = np.array([permutation_p(observed[j], null[:, j]) for j in range(3)])
    p_value = float((1 + np.sum(null_p.min(axis=1) <= observed_p.min() + 1e-12)) / (1 + draws))
    noise = null.mean(axis=0)
    effect = float(max(observed[0] - noise[0], observed[1] - noise[1]))
    return {"p_value": p_value, "effect": effect, "tvd": float(observed[0]), "largest_move": float(observed[1]),
            "chi2": float(observed[2]), "noise_tvd": float(noise[0]), "noise_largest_move": float(noise[1]),
            "null_resamples": int(resamples)}


def mix_test(ref_labels: "np.ndarray", cur_labels: "np.ndarray", k: int, resamples: int, seed: int
             ) -> tuple[dict[str, Any], "np.ndarray", "np.ndarray"]:
    """:func:`mix_shift` on two arrays of class ids, with both sides' shares (for the verdict's largest moves)."""
    test = mix_shift(np.bincount(ref_labels, minlength=k), np.bincount(cur_labels, minlength=k), resamples, seed)
    return test, shares(ref_labels, k), shares(cur_labels, k)


def mean_drop(ref_values: "np.ndarray", cur_values: "np.ndarray", resamples: int, seed: int) -> dict[str, Any]:
    """Drop of a mean (reference - new), with a one-sided permutation p-value over ``resamples`` shuffles."""
    ref, cur = np.asarray(ref_values, dtype=np.float64), np.asarray(cur_values, dtype=np.float64)
    pooled = np.concatenate([ref, cur])
    n = len(ref)
    observed = float(ref.mean() - cur.mean()) if len(ref) and len(cur) else 0.0
    rng = np.random.default_rng(seed)
    null = np.empty(resamples)
    total = pooled.sum()
    for start in range(0, resamples, 256):  # bounded memory: 256 shuffles of the pooled values at a time
        size = min(256, resamples - start)
        keys = rng.random((size, len(pooled)))
        ref_sum = np.take(pooled, np.argpartition(keys, n - 1, axis=1)[:, :n]).sum(axis=1) if n else np.zeros(size)
        null[start:start + size] = ref_sum / max(n, 1) - (total - ref_sum) / max(len(cur), 1)
    return {"drop": observed, "p_value": permutation_p(observed, null), "noise_sd": float(null.std())}


# ------------------------------------------------------------------ label checks


def _psi(ref_counts: "np.ndarray", cur_counts: "np.ndarray") -> "np.ndarray":
    r = np.clip(_row_shares(ref_counts), _PSI_EPS, None)
    c = np.clip(_row_shares(cur_counts), _PSI_EPS, None)
    return np.sum((c - r) * np.log(c / r), axis=-1)


def label_psi(ref: "np.ndarray", cur: "np.ndarray", names: Sequence[str], cfg: DriftSpec) -> dict[str, Any]:
    """Population stability index of the label mix, against its permutation null.

    ``statistic`` is PSI minus its null mean (the part sampling does not explain), compared with ``threshold``.

    Drifted when p < ``chi2_alpha`` and PSI minus its null mean >= ``psi_threshold``. With many classes and few
    rows, empty classes alone push PSI above 0.2; the null mean is that sampling part."""
    k = len(names)
    ref_counts, cur_counts = np.bincount(ref, minlength=k), np.bincount(cur, minlength=k)
    psi = float(_psi(ref_counts, cur_counts))
    null = _psi(*count_null(ref_counts, cur_counts, cfg.null_resamples, cfg.seed))
    p_value = permutation_p(psi, null)
    excess = psi - float(null.mean())
    drifted = p_value < cfg.chi2_alpha and excess >= cfg.psi_threshold
    ref_shares, cur_shares = shares(ref, k), shares(cur, k)
    verdict = (f"Label mix {'shifted' if drifted else 'is stable'}: PSI {psi:.3f}, of which sampling alone gives "
               f"{float(null.mean()):.3f} (excess {excess:.3f} {'>=' if excess >= cfg.psi_threshold else '<'} "
               f"{cfg.psi_threshold}; permutation p = {p_value:.3g}); "
               f"{report.moves_text(ref_shares, cur_shares, names)}.")
    return check(excess, cfg.psi_threshold, drifted, verdict, p_value=p_value, alpha=cfg.chi2_alpha, psi=psi,
                 effect=excess, sampling_psi=float(null.mean()),
                 top_moves=report.top_moves(ref_shares, cur_shares, names),
                 reference_shares=dict(zip(names, ref_shares.round(4).tolist())),
                 current_shares=dict(zip(names, cur_shares.round(4).tolist())))


def label_chi2(ref: "np.ndarray", cur: "np.ndarray", names: Sequence[str], cfg: DriftSpec) -> dict[str, Any]:
    """Homogeneity of the label counts (chi-square, TVD and largest move; min-p permutation null), plus a floor.

    ``statistic`` is the effect (share points moved beyond noise), compared with ``threshold`` (the floor).

    Drifted when p < ``chi2_alpha`` and the mix moved >= ``label_shift_floor`` beyond sampling noise: at 60k
    reference rows a 3-point move is "significant" but not worth a retrain."""
    test, ref_shares, cur_shares = mix_test(ref, cur, len(names), cfg.null_resamples, cfg.seed + 1)
    floor = cfg.label_shift_floor
    drifted = test["p_value"] < cfg.chi2_alpha and test["effect"] >= floor
    verdict = (f"Label counts {'differ' if drifted else 'do not differ'}: chi-square {test['chi2']:.1f}, "
               f"permutation p = {test['p_value']:.3g} ({'<' if test['p_value'] < cfg.chi2_alpha else '>='} "
               f"{cfg.chi2_alpha}); beyond sampling noise the mix moved {max(test['effect'], 0.0):.3f} "
               f"({'>=' if test['effect'] >= floor else '<'} {floor}); "
               f"{report.moves_text(ref_shares, cur_shares, names)}.")
    return check(test["effect"], floor, drifted, verdict, alpha=cfg.chi2_alpha, **test,
                 top_moves=report.top_moves(ref_shares, cur_shares, names))


# ------------------------------------------------------------------ text checks


def length_ks(ref: "np.ndarray", cur: "np.ndarray", alpha: float) -> dict[str, Any]:
    result = ks_2samp(ref, cur)
    p = float(result.pvalue)
    drifted = p < alpha
    verdict = (f"Text length {'changed' if drifted else 'is unchanged'}: median {np.median(cur):.0f} tokens vs "
               f"{np.median(ref):.0f} in the reference (KS D = {result.statistic:.3f}, p = {p:.3g}).")
    return check(result.statistic, alpha, drifted, verdict, p_value=p,
                 reference_median=float(np.median(ref)), current_median=float(np.median(cur)),
                 reference_mean=float(np.mean(ref)), current_mean=float(np.mean(cur)))


def _js_bits(p: "np.ndarray", q: "np.ndarray") -> float:
    return float(jensenshannon(p, q, base=2) ** 2)


def vocab_js(ref_counts: "np.ndarray", cur_counts: "np.ndarray", threshold: float, seed: int,
             vocab: list[str] | None = None) -> dict[str, Any]:
    """JS divergence of token frequencies, corrected for the divergence that finite samples show anyway.

    Two samples from one distribution still differ (rare tokens appear in one and not the other), and that
    gap grows as samples shrink. We draw same-size token samples from the pooled distribution and subtract
    their mean JS, so one threshold works for 200 rows and for 200k.
    """
    n_ref, n_cur = int(ref_counts.sum()), int(cur_counts.sum())
    js = _js_bits(ref_counts, cur_counts)
    pooled = (ref_counts + cur_counts) / max(n_ref + n_cur, 1)
    rng = np.random.default_rng(seed)
    null = [_js_bits(rng.multinomial(n_ref, pooled), rng.multinomial(n_cur, pooled)) for _ in range(_JS_NULL_DRAWS)]
    excess = js - float(np.mean(null))
    drifted = excess > threshold
    top: list[dict[str, Any]] = []
    if vocab is not None:
        gain = cur_counts / max(n_cur, 1) - ref_counts / max(n_ref, 1)
        for i in np.argsort(-gain)[:10]:
            top.append({"token": vocab[i], "current_share": round(float(cur_counts[i] / max(n_cur, 1)), 5),
                        "reference_share": round(float(ref_counts[i] / max(n_ref, 1)), 5)})
    risers = ", ".join(repr(t["token"]) for t in top[:5])
    verdict = (f"Vocabulary {'shifted' if drifted else 'is stable'}: Jensen-Shannon divergence {js:.3f} bits, "
               f"{excess:.3f} above sampling noise ({'>' if drifted else '<='} {threshold})"
               + (f"; most over-represented tokens: {risers}." if drifted and risers else "."))
    return check(excess, threshold, drifted, verdict, js_bits=js, sampling_js_bits=float(np.mean(null)),
                 reference_tokens=n_ref, current_tokens=n_cur, top_risers=top)


def unknown_tokens(ref_counts: "np.ndarray", cur_counts: "np.ndarray", unk_id: int | None,
                   threshold: float) -> dict[str, Any]:
    if unk_id is None:
        return check(0.0, threshold, False, "The tokenizer has no unknown token; check skipped.", skipped=True)
    ref_share = float(ref_counts[unk_id] / max(ref_counts.sum(), 1))
    cur_share = float(cur_counts[unk_id] / max(cur_counts.sum(), 1))
    rise = cur_share - ref_share
    drifted = rise > threshold
    verdict = (f"Unknown tokens {'rose' if drifted else 'are steady'}: {cur_share:.2%} of new tokens vs "
               f"{ref_share:.2%} in the reference ({'>' if drifted else '<='} +{threshold:.0%}).")
    return check(rise, threshold, drifted, verdict, current_share=cur_share, reference_share=ref_share)


def statistical_checks(cfg: DriftSpec, label_names: Sequence[str], counter: TokenCounter, ref: TextSide,
                       cur: TextSide) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The label, length and vocabulary checks; returns (checks, data for the plots)."""
    ref_len, ref_counts = counter.count(ref.texts)
    cur_len, cur_counts = counter.count(cur.texts)
    ref_labels = np.asarray(ref.labels, dtype=np.int64)
    cur_labels = np.asarray(cur.labels, dtype=np.int64)
    vocab = None
    if cfg.report_top_tokens:
        inverse = {i: t for t, i in counter.backend.get_vocab().items()}
        vocab = [inverse.get(i, "?") for i in range(counter.vocab_size)]
    checks = {
        "label_psi": label_psi(ref_labels, cur_labels, label_names, cfg),
        "label_chi2": label_chi2(ref_labels, cur_labels, label_names, cfg),
        "length_ks": length_ks(ref_len, cur_len, cfg.length_ks_alpha),
        "vocab_js": vocab_js(ref_counts, cur_counts, cfg.vocab_js_threshold, cfg.seed, vocab),
        "unknown_tokens": unknown_tokens(ref_counts, cur_counts, counter.unk_id, cfg.unknown_token_share_threshold),
    }
    plots = {"ref_len": ref_len, "cur_len": cur_len, "ref_labels": ref_labels, "cur_labels": cur_labels}
    return checks, plots


# ------------------------------------------------------------------ embeddings: the kernel two-sample test


def mmd_permutation(x: "np.ndarray", y: "np.ndarray", permutations: int, seed: int) -> tuple[float, float, "np.ndarray"]:
    """(MMD^2, permutation p-value, null statistics) with an RBF kernel at the median-distance bandwidth.

    Embeddings are L2-normalized first (direction carries the meaning). The kernel matrix is computed once;
    each permutation is a signed weight vector w, and MMD^2 = w' K w, so all permutations are one matmul.
    """
    z = np.vstack([x, y]).astype(np.float64)
    z /= np.clip(np.linalg.norm(z, axis=1, keepdims=True), 1e-12, None)
    sq = cdist(z, z, "sqeuclidean")
    positive = sq[np.triu_indices_from(sq, k=1)]
    bandwidth = float(np.median(positive[positive > 0])) if np.any(positive > 0) else 1.0
    kernel = np.exp(-sq / bandwidth)
    n, m = len(x), len(y)
    rng = np.random.default_rng(seed)
    base = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    weights = np.empty((n + m, permutations + 1))
    weights[:, 0] = base
    for j in range(1, permutations + 1):
        weights[:, j] = rng.permutation(base)
    stats = np.einsum("ij,ij->j", weights, kernel @ weights)
    observed, null = float(stats[0]), stats[1:]
    p_value = float((1 + np.sum(null >= observed)) / (1 + permutations))
    return observed, p_value, null
