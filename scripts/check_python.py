"""Fail at once, with a message, when this Python is older than constraints.txt needs.

pip does not say so by itself: on 3.11.2 it backtracks for minutes through older releases of a package whose
pinned version requires a newer interpreter (soupsieve 4.1.2 requires >= 3.11.5). The Dockerfiles run this
before their first `pip install`; tests/test_stack_files.py checks MINIMUM against the installed packages'
Requires-Python.

    python scripts/check_python.py
"""

from __future__ import annotations

import sys

# The highest lower bound among the Requires-Python of the packages pinned in constraints.txt.
MINIMUM = (3, 11, 5)
SERIES = (3, 11)  # the interpreter constraints.txt was resolved with


def problem(version: tuple[int, int, int]) -> str | None:
    shown = ".".join(map(str, version[:3]))
    need = ".".join(map(str, MINIMUM))
    if tuple(version[:2]) != SERIES:
        return (f"Python {shown}: constraints.txt was resolved for Python {SERIES[0]}.{SERIES[1]} "
                f"(>= {need}); use a Python {SERIES[0]}.{SERIES[1]} base image or interpreter")
    if tuple(version[:3]) < MINIMUM:
        return (f"Python {shown} is older than {need}, which constraints.txt needs (soupsieve 4.1.2 "
                f"requires >= 3.11.5); pip would backtrack for minutes instead of failing. Use Python "
                f">= {need} (e.g. the python:3.11 image, or apache/airflow:3.3.2-python3.11)")
    return None


def main() -> int:
    message = problem(tuple(sys.version_info[:3]))
    if message:
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
