"""A real many-class dataset for a pipeline nobody tuned: Debian's ``fortunes`` package, category = label.

    .venv/bin/python scripts/fortunes_data.py --out .run/fortunes-data [--deb PATH] [--night1-rows N] [--night2-rows N]

writes, from the .deb (``apt-get download fortunes`` into ``--cache``, or ``--deb PATH``):

    OUT/golden.jsonl            the held-out golden set (stratified by category, seeded)
    OUT/night1/batch-1.jsonl    the first landing batch:  make run ... LANDING=OUT/night1
    OUT/night2/batch-2.jsonl    the second one, new rows:  make run ... LANDING=OUT/night2 (same STORAGE)
    OUT/manifest.json           the package, the categories kept and dropped, the counts, the seed

One JSON object a line, ``{"text": ..., "label": ...}``: a fortune is several lines, often with tabs, so JSONL
keeps it exactly as written (the ingest normalizes whitespace itself). Both nights are stratified by category
too, so night 2 brings the same label mix and its retrain simply has more rows. The night sizes bound the cost
of a CPU run; the golden set is the same whatever they are.

The package holds ``/usr/share/games/fortunes/<category>`` files, entries separated by a line holding only
``%``; ``<category>.dat`` is the binary index ``strfile`` builds for ``fortune`` and ``<category>.u8`` a symlink
to the same file (the UTF-8 name of it), so both are skipped. Categories with fewer than ``--min-entries``
entries (pratchett 1, ascii-art 10, translate-me 12, magic 30 in 1.99.1-7.3) are dropped, and named in the
manifest and on stderr: too few to hold out golden rows for and still learn from. Nothing else is changed:
a text that is in two categories stays in both, so the ingest's conflict and golden-hygiene checks see it.

Deterministic: the same package and arguments give byte-identical files. Lives in scripts/ beside demo.py and
local_run.py: it makes the input of ``make run``, it does not measure anything (bench/ is for measurements).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

FORTUNES_DIR = "usr/share/games/fortunes"
SKIPPED_SUFFIXES = (".dat", ".u8")  # strfile's index; a symlink to the same category file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for golden.jsonl, night1/, night2/")
    parser.add_argument("--deb", type=Path, default=None, help="a fortunes_*.deb (default: apt-get download)")
    parser.add_argument("--cache", type=Path, default=Path(".run/fortunes-deb"),
                        help="where apt-get download puts the .deb when --deb is not given")
    parser.add_argument("--min-entries", type=int, default=50, help="drop categories with fewer entries")
    parser.add_argument("--golden-fraction", type=float, default=0.15,
                        help="share of every kept entry held out as golden (whatever the night sizes)")
    parser.add_argument("--night1-rows", type=int, default=None,
                        help="rows landed on night 1 (stratified sample; default: half of the non-golden rows)")
    parser.add_argument("--night2-rows", type=int, default=None,
                        help="rows landed on night 2, none of night 1's (default: all the other non-golden rows)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# --- reading the package ----------------------------------------------------------------------------------------

def download_deb(cache: Path) -> Path:
    """``apt-get download fortunes`` into cache (once); the newest .deb there."""
    cache.mkdir(parents=True, exist_ok=True)
    if not glob.glob(str(cache / "fortunes_*.deb")):
        subprocess.run(["apt-get", "download", "fortunes"], cwd=cache, check=True, timeout=300)
    return Path(sorted(glob.glob(str(cache / "fortunes_*.deb")))[-1])


def extract_deb(deb: Path, into: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True, timeout=300)
    return into / FORTUNES_DIR


def split_entries(text: str) -> list[str]:
    """A fortune file's entries: the lines between lines holding only ``%``, kept exactly (tabs, inner blank
    lines); entries that are only whitespace are dropped."""
    entries, lines = [], []
    for line in text.split("\n"):
        if line.rstrip("\r") == "%":
            entries.append("\n".join(lines))
            lines = []
        else:
            lines.append(line)
    entries.append("\n".join(lines))
    return [e.strip("\n") for e in entries if e.strip()]


def read_categories(folder: Path) -> dict[str, list[str]]:
    """Category name -> its entries, for every regular file in the folder that is not a .dat/.u8 companion."""
    categories = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith(SKIPPED_SUFFIXES) or path.is_symlink() or not path.is_file():
            continue
        categories[path.name] = split_entries(path.read_text(encoding="utf-8"))
    return categories


# --- the split --------------------------------------------------------------------------------------------------

def build_splits(categories: dict[str, list[str]], *, min_entries: int, golden_fraction: float,
                 night1_rows: int | None, night2_rows: int | None, seed: int) -> dict:
    """golden / night1 / night2 rows (lists of (text, label)), each stratified by label, and what was dropped.

    The golden set depends on the corpus and the seed only, so runs with other night sizes share it."""
    kept = {name: entries for name, entries in categories.items() if len(entries) >= min_entries}
    dropped = {name: len(entries) for name, entries in categories.items() if len(entries) < min_entries}
    texts = [t for name in sorted(kept) for t in kept[name]]
    labels = [name for name in sorted(kept) for _ in kept[name]]
    rest_t, golden_t, rest_l, golden_l = train_test_split(texts, labels, test_size=golden_fraction,
                                                          stratify=labels, random_state=seed)
    night1_rows = len(rest_t) // 2 if night1_rows is None else night1_rows
    night1_t, rest_t, night1_l, rest_l = train_test_split(rest_t, rest_l, train_size=night1_rows,
                                                          stratify=rest_l, random_state=seed + 1)
    if night2_rows is not None and night2_rows < len(rest_t):
        rest_t, _, rest_l, _ = train_test_split(rest_t, rest_l, train_size=night2_rows, stratify=rest_l,
                                                random_state=seed + 2)
    elif night2_rows is not None and night2_rows > len(rest_t):
        raise SystemExit(f"--night2-rows {night2_rows}: only {len(rest_t)} rows are left after golden and night 1")
    return {"labels": sorted(kept), "dropped": dropped,
            "golden": list(zip(golden_t, golden_l)), "night1": list(zip(night1_t, night1_l)),
            "night2": list(zip(rest_t, rest_l))}


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n" for t, label in rows)
    path.write_text(data, encoding="utf-8")
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def majority_baseline(rows: list[tuple[str, str]]) -> dict:
    counts = Counter(label for _, label in rows)
    label, n = counts.most_common(1)[0]
    return {"label": label, "accuracy": round(n / len(rows), 4),
            # macro-F1 of always predicting it: F1 = 2p/(1+p) on that class (p its share), 0 on the others
            "macro_f1": round(2 * (n / len(rows)) / (1 + n / len(rows)) / len(counts), 4)}


def convert(folder: Path, out: Path, *, deb_name: str = "", **split_args) -> dict:
    categories = read_categories(folder)
    splits = build_splits(categories, **split_args)
    files = {"golden": out / "golden.jsonl", "night1": out / "night1" / "batch-1.jsonl",
             "night2": out / "night2" / "batch-2.jsonl"}
    manifest = {
        "package": deb_name, "split": split_args, "labels": splits["labels"],
        "dropped_categories": splits["dropped"],
        "entries_by_category": {name: len(entries) for name, entries in categories.items()},
        "files": {part: {"path": str(path.relative_to(out)), "rows": len(splits[part]),
                         "sha256": write_jsonl(path, splits[part]),
                         "label_counts": dict(sorted(Counter(label for _, label in splits[part]).items()))}
                  for part, path in files.items()},
        "golden_majority_baseline": majority_baseline(splits["golden"]),
        "mean_chars": round(float(np.mean([len(t) for part in files for t, _ in splits[part]])), 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deb = args.deb or download_deb(args.cache)
    with tempfile.TemporaryDirectory(prefix="fortunes-") as tmp:
        folder = extract_deb(deb, Path(tmp))
        manifest = convert(folder, args.out, deb_name=os.path.basename(deb), min_entries=args.min_entries,
                           golden_fraction=args.golden_fraction, night1_rows=args.night1_rows,
                           night2_rows=args.night2_rows, seed=args.seed)
    if manifest["dropped_categories"]:
        print(f"dropped (fewer than {args.min_entries} entries): "
              + ", ".join(f"{k} ({v})" for k, v in sorted(manifest["dropped_categories"].items())), file=sys.stderr)
    print(json.dumps({"out": str(args.out), "classes": len(manifest["labels"]),
                      **{part: f["rows"] for part, f in manifest["files"].items()},
                      "golden_majority_baseline": manifest["golden_majority_baseline"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
