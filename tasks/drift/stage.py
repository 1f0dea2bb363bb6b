"""``python -m tasks drift --run R --snapshot S --champion C|none``: is the new data unlike what the champion saw?

Reference: the snapshot the champion was trained on (its version manifest names it). Current: rows of the new
snapshot that the reference does not hold. Checks (thresholds in ``spec.drift``; README: Drift checks):

========================  ==============================================================  =====================
check                     statistic                                                       drifted when
========================  ==============================================================  =====================
label_psi                 population stability index of the label mix                     >= psi_threshold
label_chi2                chi-square test of homogeneity, reference vs current labels     p < chi2_alpha
length_ks                 two-sample KS test on text length in model tokens               p < length_ks_alpha
vocab_js                  Jensen-Shannon divergence (bits) of token frequencies, minus   > vocab_js_threshold
                          what sampling alone gives at these sizes
unknown_tokens            rise in the share of [UNK] tokens under the model's tokenizer   > unknown_token_share_threshold
embedding_mmd             MMD (RBF kernel) of mean-pooled champion embeddings,            p < embedding_alpha
                          permutation p-value, on bounded subsamples (reference larger)
prediction                total-variation distance of the champion's predicted-label     > prediction_shift_threshold
                          mix, and the drop in its mean confidence                        (either one)
========================  ==============================================================  =====================

The model checks compare against the reference's *holdout* rows when there are enough of them: the champion
never trained on those, so its confidence there is an honest baseline.
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tasks import results, storage
from tasks.data import snapshots
from tasks.spec import DriftSpec, PipelineSpec, load_spec

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("tasks.drift.stage")

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
        from tokenizers import Tokenizer

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
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

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


# ------------------------------------------------------------------ statistical checks


def _check(statistic: float, threshold: float, drifted: bool, verdict: str, **extra: Any) -> dict[str, Any]:
    return {"statistic": float(statistic), "threshold": float(threshold), "drifted": bool(drifted),
            "verdict": verdict, **extra}


def _shares(labels: "np.ndarray", k: int) -> "np.ndarray":
    import numpy as np

    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=k).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def _mix(shares: "np.ndarray", names: Sequence[str]) -> str:
    return ", ".join(f"{n} {s:.0%}" for n, s in zip(names, shares))


def label_psi(ref: "np.ndarray", cur: "np.ndarray", names: Sequence[str], threshold: float) -> dict[str, Any]:
    import numpy as np

    r = np.clip(_shares(ref, len(names)), _PSI_EPS, None)
    c = np.clip(_shares(cur, len(names)), _PSI_EPS, None)
    psi = float(np.sum((c - r) * np.log(c / r)))
    drifted = psi >= threshold
    verdict = (f"Label mix {'shifted' if drifted else 'is stable'}: PSI {psi:.3f} "
               f"{'>=' if drifted else '<'} {threshold} (reference {_mix(_shares(ref, len(names)), names)}; "
               f"new {_mix(_shares(cur, len(names)), names)}).")
    return _check(psi, threshold, drifted, verdict,
                  reference_shares=dict(zip(names, _shares(ref, len(names)).round(4).tolist())),
                  current_shares=dict(zip(names, _shares(cur, len(names)).round(4).tolist())))


def label_chi2(ref: "np.ndarray", cur: "np.ndarray", names: Sequence[str], alpha: float) -> dict[str, Any]:
    import numpy as np
    from scipy.stats import chi2_contingency

    table = np.vstack([np.bincount(ref, minlength=len(names)), np.bincount(cur, minlength=len(names))])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        stat, p = 0.0, 1.0
    else:
        stat, p, _, _ = chi2_contingency(table, correction=False)
    drifted = p < alpha
    verdict = (f"Label counts {'differ' if drifted else 'do not differ'} significantly: chi-square {stat:.1f}, "
               f"p = {p:.3g} {'<' if drifted else '>='} {alpha}.")
    return _check(stat, alpha, drifted, verdict, p_value=float(p))


def length_ks(ref: "np.ndarray", cur: "np.ndarray", alpha: float) -> dict[str, Any]:
    import numpy as np
    from scipy.stats import ks_2samp

    result = ks_2samp(ref, cur)
    p = float(result.pvalue)
    drifted = p < alpha
    verdict = (f"Text length {'changed' if drifted else 'is unchanged'}: median {np.median(cur):.0f} tokens vs "
               f"{np.median(ref):.0f} in the reference (KS D = {result.statistic:.3f}, p = {p:.3g}).")
    return _check(result.statistic, alpha, drifted, verdict, p_value=p,
                  reference_median=float(np.median(ref)), current_median=float(np.median(cur)),
                  reference_mean=float(np.mean(ref)), current_mean=float(np.mean(cur)))


def _js_bits(p: "np.ndarray", q: "np.ndarray") -> float:
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(p, q, base=2) ** 2)


def vocab_js(ref_counts: "np.ndarray", cur_counts: "np.ndarray", threshold: float, seed: int,
             vocab: list[str] | None = None) -> dict[str, Any]:
    """JS divergence of token frequencies, corrected for the divergence that finite samples show anyway.

    Two samples from one distribution still differ (rare tokens appear in one and not the other), and that
    gap grows as samples shrink. We draw same-size token samples from the pooled distribution and subtract
    their mean JS, so one threshold works for 200 rows and for 200k.
    """
    import numpy as np

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
    return _check(excess, threshold, drifted, verdict, js_bits=js, sampling_js_bits=float(np.mean(null)),
                  reference_tokens=n_ref, current_tokens=n_cur, top_risers=top)


def unknown_tokens(ref_counts: "np.ndarray", cur_counts: "np.ndarray", unk_id: int | None,
                   threshold: float) -> dict[str, Any]:
    if unk_id is None:
        return _check(0.0, threshold, False, "The tokenizer has no unknown token; check skipped.", skipped=True)
    ref_share = float(ref_counts[unk_id] / max(ref_counts.sum(), 1))
    cur_share = float(cur_counts[unk_id] / max(cur_counts.sum(), 1))
    rise = cur_share - ref_share
    drifted = rise > threshold
    verdict = (f"Unknown tokens {'rose' if drifted else 'are steady'}: {cur_share:.2%} of new tokens vs "
               f"{ref_share:.2%} in the reference ({'>' if drifted else '<='} +{threshold:.0%}).")
    return _check(rise, threshold, drifted, verdict, current_share=cur_share, reference_share=ref_share)


@dataclass
class TextSide:
    texts: Sequence[str]
    labels: "np.ndarray"


def statistical_checks(cfg: DriftSpec, label_names: Sequence[str], counter: TokenCounter, ref: TextSide,
                       cur: TextSide) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The label, length and vocabulary checks; returns (checks, data for the plots)."""
    import numpy as np

    ref_len, ref_counts = counter.count(ref.texts)
    cur_len, cur_counts = counter.count(cur.texts)
    ref_labels = np.asarray(ref.labels, dtype=np.int64)
    cur_labels = np.asarray(cur.labels, dtype=np.int64)
    vocab = None
    if cfg.report_top_tokens:
        inverse = {i: t for t, i in counter.backend.get_vocab().items()}
        vocab = [inverse.get(i, "?") for i in range(counter.vocab_size)]
    checks = {
        "label_psi": label_psi(ref_labels, cur_labels, label_names, cfg.psi_threshold),
        "label_chi2": label_chi2(ref_labels, cur_labels, label_names, cfg.chi2_alpha),
        "length_ks": length_ks(ref_len, cur_len, cfg.length_ks_alpha),
        "vocab_js": vocab_js(ref_counts, cur_counts, cfg.vocab_js_threshold, cfg.seed, vocab),
        "unknown_tokens": unknown_tokens(ref_counts, cur_counts, counter.unk_id, cfg.unknown_token_share_threshold),
    }
    plots = {"ref_len": ref_len, "cur_len": cur_len, "ref_labels": ref_labels, "cur_labels": cur_labels}
    return checks, plots


# ------------------------------------------------------------------ model checks


def model_outputs(model_dir: str | Path, texts: Sequence[str], *, max_length: int = 128,
                  batch_size: int = 64) -> tuple["np.ndarray", "np.ndarray"]:
    """(mean-pooled last-layer embeddings, class probabilities) from one forward pass of the classifier."""
    import numpy as np
    import torch

    model, tokenizer = _load_champion(str(model_dir))
    emb = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad together
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            hidden = out.hidden_states[-1]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
            probs[idx] = torch.softmax(out.logits.float(), dim=-1).numpy()
    return emb, probs


@functools.lru_cache(maxsize=2)
def _load_champion(model_dir: str):
    """The classifier and tokenizer, loaded once per process (benchmarks call model_outputs per batch)."""
    from tasks.train.modeling import load_classifier, load_tokenizer

    model = load_classifier(model_dir)
    model.eval()
    return model, load_tokenizer(model_dir)


def mmd_permutation(x: "np.ndarray", y: "np.ndarray", permutations: int, seed: int) -> tuple[float, float, "np.ndarray"]:
    """(MMD^2, permutation p-value, null statistics) with an RBF kernel at the median-distance bandwidth.

    Embeddings are L2-normalized first (direction carries the meaning). The kernel matrix is computed once;
    each permutation is a signed weight vector w, and MMD^2 = w' K w, so all permutations are one matmul.
    """
    import numpy as np
    from scipy.spatial.distance import cdist

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


def _subsample(n: int, size: int, rng) -> "np.ndarray":
    import numpy as np

    return np.sort(rng.choice(n, size=size, replace=False)) if n > size else np.arange(n)


def model_checks(cfg: DriftSpec, label_names: Sequence[str], model_dir: str | Path, ref_texts: Sequence[str],
                 cur_texts: Sequence[str], *, max_length: int = 128,
                 ref_outputs: tuple["np.ndarray", "np.ndarray"] | None = None,
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Embedding MMD and prediction drift on at most ``cfg.embedding_subsample`` new texts and
    ``cfg.embedding_reference_subsample`` reference texts.

    ``ref_outputs`` lets a caller reuse the reference's (embeddings, probabilities) across many batches."""
    import numpy as np

    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    if ref_outputs is None:
        ref_pick = _subsample(len(ref_texts), cfg.embedding_reference_subsample, rng)
        ref_outputs = model_outputs(model_dir, [ref_texts[i] for i in ref_pick], max_length=max_length)
    cur_pick = _subsample(len(cur_texts), cfg.embedding_subsample, rng)
    cur_emb, cur_prob = model_outputs(model_dir, [cur_texts[i] for i in cur_pick], max_length=max_length)
    ref_emb, ref_prob = ref_outputs
    mmd2, p_value, null = mmd_permutation(ref_emb, cur_emb, cfg.embedding_permutations, cfg.seed)
    drifted = p_value < cfg.embedding_alpha
    embedding = _check(mmd2, cfg.embedding_alpha, drifted,
                       f"Embeddings {'moved' if drifted else 'did not move'}: MMD^2 {mmd2:.4f}, permutation "
                       f"p = {p_value:.3g} ({'<' if drifted else '>='} {cfg.embedding_alpha}) on "
                       f"{len(ref_emb)} reference and {len(cur_emb)} new texts.",
                       p_value=p_value, null_mean=float(null.mean()), null_q99=float(np.quantile(null, 0.99)),
                       reference_sample=len(ref_emb), current_sample=len(cur_emb))

    k = len(label_names)
    ref_pred = _shares(ref_prob.argmax(1), k)
    cur_pred = _shares(cur_prob.argmax(1), k)
    tvd = float(0.5 * np.abs(ref_pred - cur_pred).sum())
    ref_conf, cur_conf = float(ref_prob.max(1).mean()), float(cur_prob.max(1).mean())
    drop = ref_conf - cur_conf
    threshold = cfg.prediction_shift_threshold
    drifted = tvd > threshold or drop > threshold
    prediction = _check(tvd, threshold, drifted,
                        f"Champion predictions {'shifted' if drifted else 'are stable'}: predicted mix "
                        f"{_mix(cur_pred, label_names)} vs {_mix(ref_pred, label_names)} (distance {tvd:.3f}); "
                        f"mean confidence {cur_conf:.2f} vs {ref_conf:.2f}.",
                        confidence_drop=drop, current_confidence=cur_conf, reference_confidence=ref_conf,
                        current_predicted_shares=dict(zip(label_names, cur_pred.round(4).tolist())),
                        reference_predicted_shares=dict(zip(label_names, ref_pred.round(4).tolist())))
    seconds = time.perf_counter() - started
    return ({"embedding_mmd": embedding, "prediction": prediction},
            {"mmd_null": null, "mmd_observed": mmd2, "model_seconds": seconds})


# ------------------------------------------------------------------ plots and report


def write_plots(out_dir: Path, label_names: Sequence[str], data: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths: list[Path] = []
    if "ref_len" in data:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        top = int(max(np.percentile(data["ref_len"], 99), np.percentile(data["cur_len"], 99), 1)) + 1
        bins = np.arange(0, top + 2)
        ax.hist(data["ref_len"], bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(data["cur_len"], bins=bins, density=True, alpha=0.5, label="new rows")
        ax.set(xlabel="tokens per text", ylabel="share", title="Text length")
        ax.legend()
        paths.append(out_dir / "length_hist.png")
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 3.5))
        x = np.arange(len(label_names))
        ax.bar(x - 0.2, _shares(data["ref_labels"], len(label_names)), 0.4, label="reference")
        ax.bar(x + 0.2, _shares(data["cur_labels"], len(label_names)), 0.4, label="new rows")
        ax.set_xticks(x, label_names)
        ax.set(ylabel="share", title="Label mix")
        ax.legend()
        paths.append(out_dir / "label_bars.png")
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    if "mmd_null" in data:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(data["mmd_null"], bins=30, alpha=0.7, label="permutation null")
        ax.axvline(data["mmd_observed"], color="red", label="observed")
        ax.set(xlabel="MMD^2", ylabel="permutations", title="Embedding drift")
        ax.legend()
        paths.append(out_dir / "embedding_null.png")
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    return paths


def summarize(checks: dict[str, dict[str, Any]], new_rows: int) -> str:
    drifted = [name for name, c in checks.items() if c.get("drifted")]
    if not drifted:
        return f"No drift detected on {new_rows} new rows ({len(checks)} checks passed)."
    return f"Drift detected on {new_rows} new rows by {len(drifted)} of {len(checks)} checks: {', '.join(drifted)}."


# ------------------------------------------------------------------ the stage


@dataclass
class DriftArgs:
    run: str
    snapshot: str
    champion: str


def run_drift(spec: PipelineSpec, run_uri: str, snapshot_uri: str, champion_uri: str | None) -> dict[str, Any]:
    import numpy as np

    out_uri = storage.join(run_uri, "drift")
    report_uri = storage.join(out_uri, "report.json")
    cfg = spec.drift
    current = snapshots.read_snapshot(snapshot_uri)
    base: dict[str, Any] = {"snapshot_uri": snapshot_uri, "report_uri": report_uri, "plots": {}}

    if champion_uri is None:
        result = {**base, "drift_detected": False, "first_run": True, "new_rows": len(current),
                  "reference_rows": 0, "checks": {},
                  "summary": f"No champion yet, so there is no reference: drift checks skipped; "
                             f"all {len(current)} rows are new."}
        storage.write_json(report_uri, result)
        return results.emit(result, out_uri)

    champion = storage.read_json(storage.join(champion_uri, "manifest.json"))
    reference_uri = champion.get("snapshot_uri")
    if not reference_uri:
        raise ValueError(f"champion manifest {champion_uri}/manifest.json names no snapshot_uri; "
                         f"cannot tell which data the champion was trained on")
    reference = snapshots.read_snapshot(reference_uri)
    new = current[~current["text"].isin(set(reference["text"]))].reset_index(drop=True)
    base.update({"first_run": False, "champion_uri": champion_uri, "reference_snapshot_uri": reference_uri,
                 "reference_snapshot_id": champion.get("snapshot_id"), "reference_rows": len(reference),
                 "new_rows": len(new)})
    if len(new) < cfg.min_rows:
        result = {**base, "drift_detected": False, "checks": {},
                  "summary": f"Only {len(new)} new rows since the champion's snapshot (fewer than "
                             f"drift.min_rows = {cfg.min_rows}); drift checks skipped."}
        storage.write_json(report_uri, result)
        return results.emit(result, out_uri)

    model_dir = _champion_encoder(champion_uri)
    counter = TokenCounter(model_dir)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    checks, plot_data = statistical_checks(
        cfg, spec.data.labels, counter,
        TextSide(reference["text"].tolist(), reference["label"].to_numpy()),
        TextSide(new["text"].tolist(), new["label"].to_numpy()))
    timings["statistical_seconds"] = round(time.perf_counter() - started, 3)

    holdout = reference[reference["split"] == "holdout"]
    model_ref = holdout if len(holdout) >= min(cfg.embedding_subsample, 100) else reference
    model, model_data = model_checks(cfg, spec.data.labels, model_dir, model_ref["text"].tolist(),
                                     new["text"].tolist(), max_length=spec.model.max_length)
    checks.update(model)
    plot_data.update(model_data)
    timings["model_seconds"] = round(model_data["model_seconds"], 3)
    base["model_reference"] = "holdout" if model_ref is holdout else "all"

    with tempfile.TemporaryDirectory(prefix="drift-") as tmp:
        for path in write_plots(Path(tmp), spec.data.labels, plot_data):
            uri = storage.join(out_uri, path.name)
            storage.upload_file(path, uri)
            base["plots"][path.stem] = uri
    drifted = sorted(name for name, c in checks.items() if c["drifted"])
    result = {**base, "drift_detected": bool(drifted), "drifted_checks": drifted, "checks": checks,
              "summary": summarize(checks, len(new)), "timings": timings,
              "current_label_counts": dict(zip(spec.data.labels,
                                               np.bincount(new["label"], minlength=len(spec.data.labels)).tolist()))}
    storage.write_json(report_uri, result)
    return results.emit(_small(result), out_uri)


def _small(result: dict[str, Any]) -> dict[str, Any]:
    """The XCom copy: the report minus bulky per-check details (the full report stays in storage)."""
    out = dict(result)
    out["checks"] = {name: {k: v for k, v in c.items() if k != "top_risers"} for name, c in result["checks"].items()}
    return out


def _champion_encoder(champion_uri: str) -> Path:
    from tasks.train.modeling import materialize

    return materialize(storage.join(champion_uri, "teacher"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks drift", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run folder URI (holds spec.json)")
    parser.add_argument("--snapshot", required=True, help="the snapshot URI to check")
    parser.add_argument("--champion", required=True, help="the champion version URI, or 'none'")
    args = DriftArgs(**vars(parser.parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = load_spec(storage.join(args.run, "spec.json"))
    champion = None if args.champion.strip().lower() in ("", "none", "null") else args.champion
    run_drift(spec, args.run, args.snapshot, champion)
    return 0
