"""scripts/fortunes_data.py on a tiny fake fortunes tree (never the real .deb: CI must not depend on apt)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fortunes_data", ROOT / "scripts" / "fortunes_data.py")
fortunes_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fortunes_data)

# Multi-line, tab-indented, a blank line inside, like the real files.
ODD = "First line\n\tsecond, indented\n\n\t\t-- Someone"


def fake_tree(folder: Path, sizes: dict[str, int]) -> Path:
    """A fortunes folder: one file per category, entries separated by '%' lines, plus .dat and .u8 companions."""
    folder.mkdir(parents=True)
    for name, n in sizes.items():
        entries = [ODD] if name == "big" else []
        entries += [f"{name} fortune {i}\nsays line two" for i in range(n - len(entries))]
        (folder / name).write_text("\n%\n".join(entries) + "\n%\n", encoding="utf-8")
        (folder / f"{name}.dat").write_bytes(b"\x00\x00\x00\x02\xff" * 8)  # strfile's binary index
        os.symlink(name, folder / f"{name}.u8")
    return folder


def read_jsonl(path: Path) -> list[tuple[str, str]]:
    return [(r["text"], r["label"]) for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())]


SIZES = {"big": 200, "medium": 100, "small": 60, "tiny": 7}


def convert(tmp_path: Path, out: str = "out", **overrides) -> tuple[dict, Path]:
    args = {"min_entries": 50, "golden_fraction": 0.2, "night1_rows": None, "night2_rows": None, "seed": 0,
            **overrides}
    folder = tmp_path / "tree" if (tmp_path / "tree").exists() else fake_tree(tmp_path / "tree", SIZES)
    return fortunes_data.convert(folder, tmp_path / out, **args), tmp_path / out


def test_entries_split_on_percent_lines_exactly():
    text = "one\n%\ntwo\n\tindented\n\nafter a blank\n%\n%\n  \n%\nlast, no trailing percent\n"
    assert fortunes_data.split_entries(text) == ["one", "two\n\tindented\n\nafter a blank",
                                                 "last, no trailing percent"]


def test_small_categories_and_companion_files_are_dropped(tmp_path):
    manifest, out = convert(tmp_path)
    assert manifest["labels"] == ["big", "medium", "small"]
    assert manifest["dropped_categories"] == {"tiny": 7}
    # .dat and .u8 are not categories: each category is read once
    assert manifest["entries_by_category"] == SIZES
    rows = [r for part in ("golden.jsonl", "night1/batch-1.jsonl", "night2/batch-2.jsonl")
            for r in read_jsonl(out / part)]
    assert Counter(label for _, label in rows) == {"big": 200, "medium": 100, "small": 60}
    assert len({t for t, _ in rows}) == 360  # every entry once, in exactly one file
    assert ODD in {t for t, _ in rows}       # newlines and tabs kept as written


def test_golden_and_nights_are_stratified(tmp_path):
    manifest, out = convert(tmp_path)
    golden = Counter(label for _, label in read_jsonl(out / "golden.jsonl"))
    assert golden == {"big": 40, "medium": 20, "small": 12}
    for night in ("night1/batch-1.jsonl", "night2/batch-2.jsonl"):
        counts = Counter(label for _, label in read_jsonl(out / night))
        assert counts == {"big": 80, "medium": 40, "small": 24}
    assert manifest["golden_majority_baseline"]["label"] == "big"
    assert manifest["golden_majority_baseline"]["accuracy"] == pytest.approx(40 / 72, abs=1e-4)


def test_night_sizes_keep_the_label_mix_and_the_golden_set(tmp_path):
    full, out = convert(tmp_path, "full")
    manifest, out = convert(tmp_path, "sized", night1_rows=72, night2_rows=144)
    assert [manifest["files"][p]["rows"] for p in ("golden", "night1", "night2")] == [72, 72, 144]
    assert manifest["files"]["golden"]["sha256"] == full["files"]["golden"]["sha256"]
    assert Counter(label for _, label in read_jsonl(out / "night1/batch-1.jsonl")) == {"big": 40, "medium": 20,
                                                                                       "small": 12}
    assert Counter(label for _, label in read_jsonl(out / "night2/batch-2.jsonl")) == {"big": 80, "medium": 40,
                                                                                       "small": 24}
    with pytest.raises(SystemExit, match="only 144 rows are left"):
        convert(tmp_path, "too_many", night1_rows=144, night2_rows=145)


def test_the_same_input_gives_byte_identical_files(tmp_path):
    first, out1 = convert(tmp_path, "a")
    second, out2 = convert(tmp_path, "b")
    for part in ("golden.jsonl", "night1/batch-1.jsonl", "night2/batch-2.jsonl", "manifest.json"):
        assert (out1 / part).read_bytes() == (out2 / part).read_bytes()
    other, _ = convert(tmp_path, "c", seed=1)
    assert other["files"]["golden"]["sha256"] != first["files"]["golden"]["sha256"]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_main_reads_a_deb(tmp_path, capsys):
    package = tmp_path / "pkg"
    fake_tree(package / fortunes_data.FORTUNES_DIR, SIZES)
    (package / "DEBIAN").mkdir()
    (package / "DEBIAN" / "control").write_text("Package: fortunes\nVersion: 0.1\nArchitecture: all\n"
                                                 "Maintainer: t <t@example.com>\nDescription: test\n")
    deb = tmp_path / "fortunes_0.1_all.deb"
    subprocess.run(["dpkg-deb", "-b", "--root-owner-group", str(package), str(deb)], check=True,
                   capture_output=True, timeout=60)
    assert fortunes_data.main(["--deb", str(deb), "--out", str(tmp_path / "out"), "--golden-fraction", "0.2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["classes"] == 3 and summary["golden"] + summary["night1"] + summary["night2"] == 360
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["package"] == deb.name
