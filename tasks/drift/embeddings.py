"""The checks that need the champion model: embedding MMD, prediction drift, and label quality.

One forward pass of the champion over bounded subsamples (``drift.embedding_subsample`` new texts,
``drift.embedding_reference_subsample`` reference texts) gives mean-pooled embeddings and class probabilities;
every check here reads those.

* ``embedding_mmd``: kernel two-sample test on the embeddings (permutation p-value).
* ``prediction``: the champion's predicted-label mix (``mix_shift``: permutation null, effect floor) and its mean
  confidence (permutation test of the drop, same floor).
* label quality (not a drift check; the result's ``label_quality``): does the champion agree with the batch's
  *given* labels much less than with the reference holdout's? Two proportions compared class by class
  (stratified permutation null) plus a floor on the drop. Flipped or garbled labels show up here before any
  GPU time is spent.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tasks import cost, metrics
from tasks.drift import report
from tasks.drift.stats import check, mean_drop, mix_test, mmd_permutation, permutation_p
from tasks.spec import DriftSpec


# ------------------------------------------------------------------ the champion's outputs


def model_outputs(model_dir: str | Path, texts: Sequence[str], *, max_length: int = 128,
                  batch_size: int = 64) -> tuple["np.ndarray", "np.ndarray"]:
    """(mean-pooled last-layer embeddings, class probabilities) from one forward pass of the classifier."""
    import torch  # only the model checks need it

    model, tokenizer = _load_champion(str(model_dir))
    cost.count_samples("inference", len(texts))  # the stage's samples processed (tasks.cost)
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


def subsample(n: int, size: int, rng) -> "np.ndarray":
    """Sorted indices of ``size`` rows out of ``n`` (all of them when n <= size)."""
    return np.sort(rng.choice(n, size=size, replace=False)) if n > size else np.arange(n)


# ------------------------------------------------------------------ the checks


def embedding_check(cfg: DriftSpec, ref_emb: "np.ndarray", cur_emb: "np.ndarray") -> tuple[dict[str, Any], Any, float]:
    """(check, permutation null, observed MMD^2)."""
    mmd2, p_value, null = mmd_permutation(ref_emb, cur_emb, cfg.embedding_permutations, cfg.seed)
    drifted = p_value < cfg.embedding_alpha
    result = check(mmd2, cfg.embedding_alpha, drifted,
                   f"Embeddings {'moved' if drifted else 'did not move'}: MMD^2 {mmd2:.4f}, permutation "
                   f"p = {p_value:.3g} ({'<' if drifted else '>='} {cfg.embedding_alpha}) on "
                   f"{len(ref_emb)} reference and {len(cur_emb)} new texts.",
                   p_value=p_value, null_mean=float(null.mean()), null_q99=float(np.quantile(null, 0.99)),
                   reference_sample=len(ref_emb), current_sample=len(cur_emb))
    return result, null, mmd2


def prediction_check(cfg: DriftSpec, label_names: Sequence[str], ref_prob: "np.ndarray",
                     cur_prob: "np.ndarray") -> dict[str, Any]:
    """The champion's predicted-label mix and mean confidence, each against its permutation null.

    Drifted when either moved with p < ``prediction_alpha`` *and* by at least ``prediction_shift_threshold``
    beyond sampling noise (mix) or in mean confidence (drop)."""
    mix, ref_shares, cur_shares = mix_test(ref_prob.argmax(1), cur_prob.argmax(1), len(label_names),
                                           cfg.null_resamples, cfg.seed + 2)
    ref_conf, cur_conf = ref_prob.max(1), cur_prob.max(1)
    confidence = mean_drop(ref_conf, cur_conf, cfg.null_resamples, cfg.seed + 3)
    floor, alpha = cfg.prediction_shift_threshold, cfg.prediction_alpha
    mix_moved = mix["p_value"] < alpha and mix["effect"] >= floor
    confidence_fell = confidence["p_value"] < alpha and confidence["drop"] >= floor
    drifted = mix_moved or confidence_fell
    verdict = (f"Champion predictions {'shifted' if drifted else 'are stable'}: beyond sampling noise the "
               f"predicted mix moved {max(mix['effect'], 0.0):.3f} (TVD {mix['tvd']:.3f}, p = {mix['p_value']:.3g}; "
               f"{report.moves_text(ref_shares, cur_shares, label_names)}); mean confidence "
               f"{float(cur_conf.mean()):.2f} vs {float(ref_conf.mean()):.2f} (p = {confidence['p_value']:.3g}); "
               f"floor {floor}, alpha {alpha}.")
    return check(mix["effect"], floor, drifted, verdict, p_value=mix["p_value"], alpha=alpha, tvd=mix["tvd"],
                 effect=mix["effect"],
                 mix_drifted=mix_moved, confidence_drifted=confidence_fell, largest_move=mix["largest_move"],
                 noise_tvd=mix["noise_tvd"], null_resamples=mix["null_resamples"],
                 confidence_drop=confidence["drop"], confidence_p_value=confidence["p_value"],
                 current_confidence=float(cur_conf.mean()), reference_confidence=float(ref_conf.mean()),
                 top_moves=report.top_moves(ref_shares, cur_shares, label_names),
                 current_predicted_shares=dict(zip(label_names, cur_shares.round(4).tolist())),
                 reference_predicted_shares=dict(zip(label_names, ref_shares.round(4).tolist())))


def label_quality(cfg: DriftSpec, ref_prob: "np.ndarray", ref_labels: "np.ndarray", cur_prob: "np.ndarray",
                  cur_labels: "np.ndarray") -> dict[str, Any]:
    """Do the batch's labels agree with the champion much less than the reference holdout's labels do?

    Compared class by class (by *given* label), then weighted by the new rows' label mix: a batch that is
    simply richer in a class the champion finds hard is a label-mix shift (drift), not bad labels, and must
    not lower the expectation. Expected agreement = sum over classes c of share_new(c) x recall_ref(c).
    The null is stratified: within each class, which of the pooled rows agree is shuffled between the two
    sides (per class a hypergeometric draw; ``drift.null_resamples``, seeded). ``flagged`` when the one-sided
    p < ``label_quality_alpha`` and the drop (expected - observed) >= ``label_quality_floor``. 20% flipped
    labels on a 90%-accurate champion drop agreement by ~0.16 (binary: 0.9 -> 0.74). A real concept shift
    lowers agreement too; the verdict says so.
    """
    ref_labels, cur_labels = np.asarray(ref_labels, dtype=np.int64), np.asarray(cur_labels, dtype=np.int64)
    ref_pred, cur_pred = ref_prob.argmax(1), cur_prob.argmax(1)
    k = int(max(ref_prob.shape[1], ref_labels.max(initial=-1) + 1, cur_labels.max(initial=-1) + 1))
    ref_classes = metrics.per_class(ref_labels, ref_pred, n_classes=k)  # recall of c = agreement on rows labelled c
    m = np.asarray(ref_classes["support"], dtype=np.int64)
    a_ref = np.rint(np.asarray(ref_classes["recall"]) * m).astype(np.int64)
    n = np.bincount(cur_labels, minlength=k)
    a_cur = np.bincount(cur_labels, weights=(cur_pred == cur_labels).astype(np.float64), minlength=k).astype(np.int64)
    usable = (m > 0) & (n > 0)  # a class the reference sample lacks has no baseline
    m, n, a_ref, a_cur = m[usable], n[usable], a_ref[usable], a_cur[usable]
    weights = n / max(n.sum(), 1)
    expected = float(np.sum(weights * a_ref / np.clip(m, 1, None)))
    observed = float(a_cur.sum() / max(n.sum(), 1))
    drop = expected - observed
    if usable.any():
        rng = np.random.default_rng(cfg.seed + 4)
        agree = a_ref + a_cur
        cur_null = rng.hypergeometric(agree, m + n - agree, n, size=(cfg.null_resamples, len(n)))
        null = np.sum(weights * ((agree - cur_null) / m - cur_null / n), axis=1)
        p_value = permutation_p(drop, null)
    else:
        p_value = 1.0
    floor, alpha = cfg.label_quality_floor, cfg.label_quality_alpha
    flagged = bool(p_value < alpha and drop >= floor)
    verdict = (f"Labels {'look unreliable' if flagged else 'look consistent'}: the champion agrees with "
               f"{observed:.1%} of the new rows' labels, {expected:.1%} expected from the reference holdout at the "
               f"new label mix (drop {drop:.3f}, {'>=' if drop >= floor else '<'} {floor}; p = {p_value:.3g})"
               + ("; check the labelling before retraining (a real concept shift lowers agreement too)."
                  if flagged else "."))
    return {"flagged": flagged, "statistic": drop, "threshold": float(floor), "p_value": float(p_value),
            "alpha": float(alpha), "current_agreement": observed, "expected_agreement": expected,
            "reference_agreement": metrics.accuracy(ref_labels, ref_pred),
            "reference_sample": len(ref_labels), "current_sample": len(cur_labels),
            "rows_without_baseline": int(len(cur_labels) - n.sum()), "null_resamples": int(cfg.null_resamples),
            "verdict": verdict}


def label_quality_by_batch(cfg: DriftSpec, ref_prob: "np.ndarray", ref_labels: "np.ndarray",
                           cur_prob: "np.ndarray", cur_labels: "np.ndarray", cur_batches: "np.ndarray | None",
                           accepted: set[str]) -> dict[str, Any]:
    """``label_quality`` over the new rows, plus the same test batch by batch, so that a stopped run can withdraw
    the batch that carries the bad labels and keep the others (tasks.data.withdraw).

    ``flagged_batches``: the batches whose own test flags; when only the pooled test flags (bad labels spread
    thin over several batches, none with enough rows alone), every batch of the sample. Rows of ``accepted``
    batches are left out of both tests."""
    if cur_batches is None:
        return label_quality(cfg, ref_prob, ref_labels, cur_prob, cur_labels)
    checked = np.array([b not in accepted for b in cur_batches], dtype=bool)
    pooled = label_quality(cfg, ref_prob, ref_labels, cur_prob[checked], cur_labels[checked])
    per_batch = {}
    for batch in sorted(set(cur_batches[checked].tolist())):
        rows = checked & (cur_batches == batch)
        if rows.sum() < cfg.min_rows:  # too few sampled rows for a test of its own; the pooled test covers them
            per_batch[batch] = {"flagged": False, "current_sample": int(rows.sum()), "skipped": True}
            continue
        one = label_quality(cfg, ref_prob, ref_labels, cur_prob[rows], cur_labels[rows])
        per_batch[batch] = {k: one[k] for k in ("flagged", "statistic", "p_value", "current_agreement",
                                                "expected_agreement", "current_sample", "verdict")}
    flagged = sorted(b for b, r in per_batch.items() if r["flagged"])
    if pooled["flagged"] and not flagged:
        flagged = sorted(per_batch)
    elif flagged and not pooled["flagged"]:  # one bad batch among good ones: its own verdict says why
        pooled["verdict"] = per_batch[flagged[0]]["verdict"]
    pooled.update(flagged=bool(flagged), flagged_batches=flagged, batches=per_batch,
                  accepted_batches=sorted(set(cur_batches.tolist()) & accepted))
    if flagged:
        pooled["verdict"] += f" Batch{'es' if len(flagged) > 1 else ''} with bad labels: {', '.join(flagged)}."
    return pooled


def model_checks(cfg: DriftSpec, label_names: Sequence[str], model_dir: str | Path, ref_texts: Sequence[str],
                 cur_texts: Sequence[str], *, max_length: int = 128,
                 ref_outputs: tuple["np.ndarray", "np.ndarray"] | None = None,
                 ref_labels: "np.ndarray | None" = None, cur_labels: "np.ndarray | None" = None,
                 cur_batches: Sequence[str] | None = None, accepted: Sequence[str] = (),
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Embedding MMD and prediction drift on at most ``cfg.embedding_subsample`` new texts and
    ``cfg.embedding_reference_subsample`` reference texts; returns (checks, data for the plots).

    ``ref_outputs`` lets a caller reuse the reference's (embeddings, probabilities) across many batches.
    With ``ref_labels`` (of ``ref_texts``, or of ``ref_outputs``' rows when given) and ``cur_labels`` (of
    ``cur_texts``), ``data["label_quality"]`` holds the label-quality result (``label_quality_by_batch``).
    ``cur_batches`` names the ingest batch of each of ``cur_texts``; rows of ``accepted`` batches (readmitted by
    a person) are left out of it."""
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    ref_pick = None
    if ref_outputs is None:
        ref_pick = subsample(len(ref_texts), cfg.embedding_reference_subsample, rng)
        ref_outputs = model_outputs(model_dir, [ref_texts[i] for i in ref_pick], max_length=max_length)
    cur_pick = subsample(len(cur_texts), cfg.embedding_subsample, rng)
    cur_emb, cur_prob = model_outputs(model_dir, [cur_texts[i] for i in cur_pick], max_length=max_length)
    ref_emb, ref_prob = ref_outputs
    embedding, null, mmd2 = embedding_check(cfg, ref_emb, cur_emb)
    checks = {"embedding_mmd": embedding, "prediction": prediction_check(cfg, label_names, ref_prob, cur_prob)}
    data: dict[str, Any] = {"mmd_null": null, "mmd_observed": mmd2}
    if ref_labels is not None and cur_labels is not None:
        ref_y = np.asarray(ref_labels)[ref_pick] if ref_pick is not None else np.asarray(ref_labels)
        batches = np.asarray(cur_batches, dtype=object)[cur_pick] if cur_batches is not None else None
        data["label_quality"] = label_quality_by_batch(cfg, ref_prob, ref_y, cur_prob,
                                                       np.asarray(cur_labels)[cur_pick], batches, set(accepted))
    data["model_seconds"] = time.perf_counter() - started
    return checks, data
