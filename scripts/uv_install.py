"""Install pinned requirements into the running Python's environment with uv (``uv pip install``), configured
from pip's own configuration, so that it installs what ``pip install`` would: the Makefile's install step.

    .venv/bin/python scripts/uv_install.py -r requirements.txt -r requirements-test.txt -c constraints.txt

uv downloads in parallel and installs without pip's per-package overhead: the Makefile's whole install took 87 s
against pip's 144 s on the shared 2-core machine (docs/architecture.md, "Test time"), the same 250 packages at the
same versions (``pip freeze`` identical, torch the same CPU wheel). uv does not read pip's configuration, so
this script passes it on: the index URLs, find-links and constraints pip has from pip.conf and PIP_* variables
(where a machine gets its CPU-only torch wheel), and pip's CA bundle. Where pip's configuration has a setting
it does not translate, or uv itself cannot be installed or fails, it exits non-zero and the Makefile installs
with pip instead.

uv is pinned in constraints.txt (the version this script installs) and requirements-test.txt.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# pip's option -> uv's flag, for the settings that decide what gets installed from where.
LIST_OPTIONS = {"extra-index-url": "--extra-index-url", "find-links": "--find-links", "constraint": "--constraint"}
VALUE_OPTIONS = {"index-url": "--index-url"}
# Settings that change nothing uv would install (cert is passed as SSL_CERT_FILE).
HARMLESS = {"cert", "timeout", "default-timeout", "disable-pip-version-check", "no-cache-dir", "cache-dir",
            "progress-bar", "quiet", "verbose", "root-user-action", "no-input", "no-color", "retries"}
# pip's precedence, lowest first: config files' [global], then [install], then PIP_* variables.
SECTIONS = ("global", "install", ":env:")


class Untranslatable(Exception):
    pass


def pip_settings(python: str = sys.executable) -> dict[str, str]:
    """pip's effective settings for ``pip install``, as ``pip config list`` shows them (files and PIP_*)."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    by_section: dict[str, dict[str, str]] = {section: {} for section in SECTIONS}
    for line in out.splitlines():
        name, sep, raw = line.partition("=")
        section, _, key = name.rpartition(".")
        if sep and section in by_section:
            by_section[section][key] = ast.literal_eval(raw)
    merged: dict[str, str] = {}
    for section in SECTIONS:
        merged.update(by_section[section])
    return merged


def uv_arguments(settings: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv flags and environment that carry pip's settings over; Untranslatable for anything else."""
    args: list[str] = []
    env: dict[str, str] = {}
    for key, value in settings.items():
        if key in LIST_OPTIONS:
            for item in value.split():
                args += [LIST_OPTIONS[key], item]
        elif key in VALUE_OPTIONS:
            args += [VALUE_OPTIONS[key], value]
        elif key == "no-index" and value.lower() in ("1", "true", "yes", "on"):
            args.append("--no-index")
        elif key == "cert":
            env["SSL_CERT_FILE"] = value
        elif key not in HARMLESS:
            raise Untranslatable(f"pip setting {key}={value!r}")
    return args, env


def uv_pin() -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith("uv=="):
            return line.split("#")[0].strip()
    raise Untranslatable("no uv pin in constraints.txt")


def main(argv: list[str]) -> int:
    try:
        args, env = uv_arguments(pip_settings())
        pin = uv_pin()
    except (Untranslatable, subprocess.SubprocessError, ValueError, SyntaxError) as exc:
        print(f"uv_install: {exc}: installing with pip instead", file=sys.stderr)
        return 3
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", pin], timeout=600).returncode != 0:
        print(f"uv_install: could not install {pin}: installing with pip instead", file=sys.stderr)
        return 3
    # unsafe-best-match: the best version across all indexes and find-links, as pip picks (uv's default takes
    # the first index that has the package); --compile-bytecode: the .pyc files pip writes too.
    command = [sys.executable, "-m", "uv", "pip", "install", "--python", sys.executable, "--quiet",
               "--compile-bytecode", "--index-strategy", "unsafe-best-match", *args, *argv]
    code = subprocess.run(command, env={**os.environ, **env}, timeout=3600).returncode
    if code != 0:
        print("uv_install: uv failed: installing with pip instead", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
