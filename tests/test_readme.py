"""The README tells the truth about the things that can drift: the configuration reference and the two commands."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_configuration_reference_matches_the_spec_schema():
    sys.path.insert(0, str(ROOT / "scripts"))
    from spec_reference import BEGIN, END, reference

    readme = (ROOT / "README.md").read_text()
    embedded = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert embedded == reference(), "README's configuration reference is stale: run scripts/spec_reference.py --write"


def test_readme_commands_exist_in_makefile():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in readme
        assert f"\n{target}:" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_every_stage_in_the_cli_is_documented():
    from tasks.__main__ import STAGES

    readme = (ROOT / "README.md").read_text()
    for stage in STAGES:
        assert f"python -m tasks {stage}" in readme or f"tasks {stage}" in readme, stage
    out = subprocess.run([sys.executable, "-m", "tasks", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "finetune" in out.stderr
