"""The rules the code keeps, checked by the tools that define them: ruff's lint rules and import-linter's
contracts (the layers and no import cycles), both configured in pyproject.toml; and the package, installed
into this interpreter's environment, with no sys.path edits in the product code (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PRODUCT = ("dags", "plugins", "tasks")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_passes():
    out = run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_import_contracts_hold():
    """dags -> plugins -> tasks; inside tasks: entrypoint -> stages -> data -> spec, storage, contracts;
    tasks imports neither Airflow nor the plugins; no import cycles."""
    out = run(str(Path(sys.executable).with_name("lint-imports")), "--no-cache")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout, out.stdout[-2000:]


def contract(type_name: str, name_start: str) -> dict:
    return next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"]
                if c["type"] == type_name and c["name"].startswith(name_start))


def test_every_module_of_tasks_has_a_layer():
    """A module missing from the layers would be checked by nothing: a new one must be given its layer."""
    layered = {name.strip() for layer in contract("layers", "tasks:")["layers"] for name in layer.split(":")}
    modules = {f"tasks.{p.stem}" for p in (ROOT / "tasks").glob("*.py") if p.stem != "__init__"}
    packages = {f"tasks.{p.parent.name}" for p in (ROOT / "tasks").glob("*/__init__.py")}
    assert modules | packages == layered


def test_every_module_of_tasks_train_has_a_layer():
    """The training stage's modules are layered too (stages -> runner -> helpers): a new one must be given its."""
    layered = {name.strip() for layer in contract("layers", "tasks.train:")["layers"] for name in layer.split(":")}
    assert {p.stem for p in (ROOT / "tasks" / "train").glob("*.py") if p.stem != "__init__"} == layered


def test_tasks_may_import_no_plugin_module():
    """Plugin modules are imported by their top-level names; the forbidden contract must name all of them."""
    forbidden = set(contract("forbidden", "tasks imports neither")["forbidden_modules"])
    assert forbidden == {"airflow"} | {p.stem for p in (ROOT / "plugins").glob("*.py")}


def sys_path_edits(path: Path) -> list[str]:
    """Every use of ``sys.path`` in a file (an append, an insert, an assignment), as file:line."""
    source = path.read_text()
    if "sys" not in source or "path" not in source:
        return []
    tree = ast.parse(source, str(path))
    return [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "path"
            and isinstance(node.value, ast.Name) and node.value.id == "sys"]


def test_no_sys_path_edits_in_dags_plugins_or_tasks():
    """The package is installed (pyproject.toml) and Airflow puts its dags and plugins folders on sys.path."""
    edits = [hit for folder in PRODUCT for path in sorted((ROOT / folder).rglob("*.py")) for hit in sys_path_edits(path)]
    assert edits == []


def test_the_project_is_installed_editable_from_this_checkout():
    """`make` installs it (pip install -e .): `tasks` imports from any folder, with nothing on PYTHONPATH."""
    import tasks

    assert importlib.metadata.version(PYPROJECT["project"]["name"]) == tasks.__version__
    out = subprocess.run([sys.executable, "-c", "import tasks; print(tasks.__file__)"], cwd="/",
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()) == ROOT / "tasks" / "__init__.py"


def test_the_test_tiers_name_existing_files():
    """tests/conftest.py sorts files into tiers by name: a renamed file must not fall silently out of its tier."""
    from conftest import E2E_FILES, SLOW_FILES, UNIT_FILES

    files = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    listed = UNIT_FILES | SLOW_FILES | E2E_FILES
    assert listed <= files, f"conftest.py lists test files that do not exist: {sorted(listed - files)}"
    assert len(listed) == len(UNIT_FILES) + len(SLOW_FILES) + len(E2E_FILES), "a file is in two tiers"
    from conftest import LONGEST_FILES

    assert set(LONGEST_FILES) <= files, f"LONGEST_FILES names missing files: {sorted(set(LONGEST_FILES) - files)}"


@pytest.mark.parametrize("markexpr, tier, imported", [
    ("not integration and not e2e and not slow", None, True),  # make test-fast: unit files only
    ("not integration and not e2e and not slow", "integration", False),
    ("not integration and not e2e and not slow", "e2e", False),
    ("not integration and not e2e and not slow", "slow", False),
    ("e2e", "integration", False),
    ("e2e", "e2e", True),
    ("slow", None, True),  # a unit file may mark one test slow
    ("not slow", "slow", False),
    ("integration or e2e", "integration", True),
    ("not e2e and timeout", "integration", True),  # another mark than the tiers': import the file, -m decides
])
def test_a_file_is_left_unimported_only_when_no_test_of_its_tier_can_match(markexpr, tier, imported):
    from conftest import tier_can_match

    assert tier_can_match(markexpr, tier) is imported



# Imports inside functions. DAG parsing and the stage dispatcher must stay cheap, so the modules they reach import
# third-party libraries lazily; every other module of tasks/ runs only inside a stage and imports at the top. The
# exceptions are optional dependencies, each with its reason. Imports of the project's own modules (tasks.*) may
# stay in functions: they keep a light stage from loading torch through tasks.train.modeling.
LAZY_MODULES = {  # what `python -c "import dags..."` and `python -m tasks` load (test below)
    "tasks/__main__.py", "tasks/cli.py", "tasks/cost.py", "tasks/spec.py", "tasks/storage.py", "tasks/contracts.py",
    "tasks/errors.py", "tasks/matching.py"}
LAZY_IMPORTS = {
    ("tasks/cost.py", "pynvml"): "NVML exists only on a GPU node",
    ("tasks/drift/report.py", "matplotlib"): "plots are drawn only when the report asks for them",
    ("tasks/drift/embeddings.py", "torch"): "only the drift stage's model checks run the champion",
    ("tasks/decide/evaluate.py", "matplotlib"): "the confusion plot only, drawn after the gates",
    ("tasks/decide/serving.py", "onnx"): "only an ONNX export's Triton layout reads the graph",
    ("tasks/train/modeling.py", "torch"): "drift's checks load only a tokenizer through this module",
    ("tasks/train/modeling.py", "transformers"): "cli.set_offline_env() must run first: the hub reads it on import",
}


def lazy_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of each non-project import inside a function of ``path``."""
    out = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    out.append((node.lineno, node.module.split(".")[0]))
    return [(line, mod) for line, mod in out if mod != "tasks"]


def test_stage_modules_import_at_the_top():
    found = []
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in LAZY_MODULES:
            continue
        found += [f"{rel}:{line} {mod}" for line, mod in lazy_imports(path) if (rel, mod) not in LAZY_IMPORTS]
    assert not found, "imports inside functions of stage modules (move them to the top):\n" + "\n".join(found)


def test_the_lazy_modules_are_the_ones_dag_parsing_reaches():
    """The allowance above follows what parsing really imports: every DAG file, each plugin, then the tasks
    modules loaded; none of them may load a heavy library."""
    probe = (
        "import importlib.util, json, pathlib, sys\n"
        "sys.path[:0] = ['.', 'plugins']\n"
        "for p in sorted(pathlib.Path('dags').glob('*.py')):\n"
        "    s = importlib.util.spec_from_file_location('dag_' + p.stem, p)\n"
        "    s.loader.exec_module(importlib.util.module_from_spec(s))\n"
        "import tasks.__main__\n"
        "print(json.dumps({'tasks': sorted(m for m in sys.modules if m.split('.')[0] == 'tasks'),\n"
        "                  'heavy': [m for m in ('numpy', 'pandas', 'pyarrow', 'torch', 'transformers', 'scipy')\n"
        "                            if m in sys.modules]}))\n")
    out = run(sys.executable, "-c", probe)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["heavy"] == []
    files = {("tasks/" + m.removeprefix("tasks.").replace(".", "/") + ".py") if m != "tasks" else "tasks/__init__.py"
             for m in loaded["tasks"]}
    assert files - {"tasks/__init__.py"} <= LAZY_MODULES, sorted(files - LAZY_MODULES)


MAX_FUNCTION_LINES = 80  # issue 23's bar: a function a reader takes in at a glance


def test_no_function_in_the_product_runs_over_80_lines():
    long = []
    for root in PRODUCT:
        for path in sorted((ROOT / root).rglob("*.py")):
            for fn in ast.walk(ast.parse(path.read_text())):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = fn.end_lineno - fn.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({lines} lines)")
    assert not long, "split these into named steps:\n" + "\n".join(long)
