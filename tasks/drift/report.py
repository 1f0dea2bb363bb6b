"""What the drift stage shows people: verdict fragments, the summary line, the plots, the XCom-sized copy.

Verdicts stay short whatever the number of classes: a mix is described by its (at most) three largest moves,
never class by class (a 77-class verdict used to run to 4,000 characters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

TOP_CONTRIBUTORS = 3
_NAME_CHARS = 24  # a class name longer than this is cut in verdicts (the report keeps it whole)

# Per-check details kept in report.json but left out of the XCom copy (they grow with vocabulary or classes).
BULKY_KEYS = ("top_risers", "reference_shares", "current_shares", "reference_predicted_shares",
              "current_predicted_shares")


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[:_NAME_CHARS - 1] + "\u2026"


def shares(labels: "np.ndarray", k: int) -> "np.ndarray":
    """Each of the ``k`` classes' share of ``labels`` (class ids), for the verdicts' moves and the label plot."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=k).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def top_moves(ref_shares: "np.ndarray", cur_shares: "np.ndarray", names: Sequence[str],
              top: int = TOP_CONTRIBUTORS) -> list[dict[str, Any]]:
    """The classes whose share moved most, largest first: [{class, reference_share, current_share}]."""
    order = np.argsort(-np.abs(np.asarray(cur_shares) - np.asarray(ref_shares)), kind="stable")[:top]
    return [{"class": names[i], "reference_share": round(float(ref_shares[i]), 4),
             "current_share": round(float(cur_shares[i]), 4)} for i in order]


def moves_text(ref_shares: "np.ndarray", cur_shares: "np.ndarray", names: Sequence[str],
               top: int = TOP_CONTRIBUTORS) -> str:
    """'largest moves: joy 30% -> 45%, anger 13% -> 9%' (reference -> new), at most ``top`` classes."""
    moves = top_moves(ref_shares, cur_shares, names, top)
    shown = ", ".join(f"{_short(m['class'])} {m['reference_share']:.0%} -> {m['current_share']:.0%}" for m in moves)
    return f"largest moves: {shown}" + (f" (of {len(names)} classes)" if len(names) > top else "")


def summarize(checks: dict[str, dict[str, Any]], new_rows: int) -> str:
    drifted = [name for name, c in checks.items() if c.get("drifted")]
    if not drifted:
        return f"No drift detected on {new_rows} new rows ({len(checks)} checks passed)."
    return f"Drift detected on {new_rows} new rows by {len(drifted)} of {len(checks)} checks: {', '.join(drifted)}."


def for_xcom(result: dict[str, Any]) -> dict[str, Any]:
    """The XCom copy: the report minus bulky per-check details (the full report stays in storage)."""
    out = dict(result)
    out["checks"] = {name: {k: v for k, v in c.items() if k not in BULKY_KEYS}
                     for name, c in (result.get("checks") or {}).items()}
    return out


def write_plots(out_dir: Path, label_names: Sequence[str], data: dict[str, Any]) -> list[Path]:
    """length_hist.png, label_bars.png (with the statistical checks), embedding_null.png (with the model's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> None:
        paths.append(out_dir / name)
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)

    paths: list[Path] = []
    if "ref_len" in data:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        top = int(max(np.percentile(data["ref_len"], 99), np.percentile(data["cur_len"], 99), 1)) + 1
        bins = np.arange(0, top + 2)
        ax.hist(data["ref_len"], bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(data["cur_len"], bins=bins, density=True, alpha=0.5, label="new rows")
        ax.set(xlabel="tokens per text", ylabel="share", title="Text length")
        ax.legend()
        save(fig, "length_hist.png")

        k = len(label_names)
        fig, ax = plt.subplots(figsize=(max(6, min(0.15 * k, 20)), 3.5))
        x = np.arange(k)
        ax.bar(x - 0.2, shares(data["ref_labels"], k), 0.4, label="reference")
        ax.bar(x + 0.2, shares(data["cur_labels"], k), 0.4, label="new rows")
        ax.set_xticks(x, label_names, rotation=90 if k > 8 else 0, fontsize=8 if k > 8 else None)
        ax.set(ylabel="share", title="Label mix")
        ax.legend()
        save(fig, "label_bars.png")
    if "mmd_null" in data:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(data["mmd_null"], bins=30, alpha=0.7, label="permutation null")
        ax.axvline(data["mmd_observed"], color="red", label="observed")
        ax.set(xlabel="MMD^2", ylabel="permutations", title="Embedding drift")
        ax.legend()
        save(fig, "embedding_null.png")
    return paths
