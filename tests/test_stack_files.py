"""The build and deployment files the stack test (scripts/stack_test.py) exercises, checked without an engine:
the Python floor of the builds, the pip build args of every Dockerfile, the build contexts of both builders,
the stand-ins kept out of the shipped compose file, and the compose override that brings them in."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from test_compose import COMPOSE, ENV_EXAMPLE, ROOT, clean_env, compose_command

import check_python  # scripts/ (pytest.ini pythonpath)

PIP_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_FIND_LINKS", "PIP_NO_INDEX")
DOCKERFILES = [ROOT / "docker" / "airflow.Dockerfile", ROOT / "tasks" / "Dockerfile",
               *sorted((ROOT / "docker" / "stack-test").glob("*.Dockerfile"))]
STANDINS = ROOT / "docker" / "stack-test"


def test_the_python_floor_is_the_highest_requires_python_of_the_pinned_packages():
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    pinned = [line.split("==")[0] for line in (ROOT / "constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")]
    floors = {}
    for name in pinned:
        try:
            requires = metadata.metadata(name).get("Requires-Python")
        except metadata.PackageNotFoundError:
            continue
        for spec in SpecifierSet(requires or ""):
            if spec.operator in (">=", ">"):
                floors[name] = Version(spec.version)
    highest = max(floors.values())
    assert Version(".".join(map(str, check_python.MINIMUM))) == highest, (
        f"scripts/check_python.py MINIMUM {check_python.MINIMUM} but the pins need {highest}: "
        f"{sorted(n for n, v in floors.items() if v == highest)}")


def test_an_old_python_fails_at_once_with_a_message():
    assert check_python.problem((3, 11, 7)) is None
    assert "older than 3.11.5" in check_python.problem((3, 11, 2))
    assert "resolved for Python 3.11" in check_python.problem((3, 12, 1))
    old = Path("/usr/bin/python3")  # Debian bookworm's own 3.11.2, where there is one
    if not old.exists():
        pytest.skip("no /usr/bin/python3 to run the check under")
    version = subprocess.run([str(old), "-c", "import sys; print(*sys.version_info[:3])"], capture_output=True,
                             text=True, timeout=30).stdout.split()
    proc = subprocess.run([str(old), str(ROOT / "scripts" / "check_python.py")], capture_output=True, text=True,
                          timeout=30)
    if check_python.problem(tuple(map(int, version))):
        assert proc.returncode == 1 and "error: Python" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr


def stages(dockerfile: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return re.split(r"^FROM ", text, flags=re.M)[1:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_pip_install_takes_the_index_args(dockerfile):
    """pip reads PIP_* from the environment, and a declared ARG is in the environment of the stage's RUNs."""
    installs = 0
    for stage in stages(dockerfile):
        if "pip install" not in stage:
            continue
        installs += stage.count("pip install")
        declared = set(re.findall(r"^ARG (\w+)", stage, re.M))
        assert set(PIP_ARGS) <= declared, f"{dockerfile.name}: a stage with pip install lacks {set(PIP_ARGS) - declared}"
        # An explicit --index-url would override PIP_INDEX_URL: only torch's, and only when TORCH_INDEX_URL is set.
        for flag in re.findall(r"--index-url \S+", stage):
            assert flag == '--index-url "$TORCH_INDEX_URL"}', f"{dockerfile.name}: {flag}"
    if dockerfile.parent != STANDINS:  # the stand-ins' Python and Postgres bases install nothing from PyPI
        assert installs, f"{dockerfile.name}: no pip install found"


@pytest.mark.parametrize("dockerfile", [ROOT / "docker" / "airflow.Dockerfile", ROOT / "tasks" / "Dockerfile"],
                         ids=["airflow", "tasks"])
def test_the_shipped_dockerfiles_check_python_first_and_keep_ca_and_wheelhouse_out_of_the_image(dockerfile):
    parts = stages(dockerfile)
    install = next(s for s in parts if "pip install" in s)
    assert install.index("check_python.py;") < install.index("pip install"), "the Python check must come first"
    assert "COPY docker/pip/" in install or "docker/pip/ /tmp/retrain/pip/" in install
    final = parts[-1]
    assert "docker/pip" not in final and "pip install" not in final, "the final stage copies only what was installed"
    assert "COPY --from=deps" in final


def ignore_allows(path: Path) -> set[str]:
    return {line[1:] for line in path.read_text().splitlines() if line.startswith("!")}


def test_the_build_context_is_small_with_either_builder():
    classic = ROOT / ".dockerignore"
    tasks_bk = ROOT / "tasks" / "Dockerfile.dockerignore"
    airflow_bk = ROOT / "docker" / "airflow.Dockerfile.dockerignore"
    for path in (classic, tasks_bk, airflow_bk):
        lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
        assert lines[0] == "*", f"{path.name} must start by excluding everything"
    assert ignore_allows(classic) == ignore_allows(tasks_bk)
    assert ignore_allows(airflow_bk) <= ignore_allows(classic)
    assert not {".env", ".venv", "tests/", "dags/"} & ignore_allows(classic)
    # Every COPY source of both Dockerfiles is let in by both ignore files of its builder.
    for dockerfile, bk in ((ROOT / "tasks" / "Dockerfile", tasks_bk), (ROOT / "docker" / "airflow.Dockerfile", airflow_bk)):
        for line in re.findall(r"^COPY (?!--from)(.*)$", dockerfile.read_text(), re.M):
            sources = [s for s in line.split()[:-1] if not s.startswith("--")]
            for src in sources:
                for allowed in (ignore_allows(classic), ignore_allows(bk)):
                    assert any(src == a or src.startswith(a.rstrip("/") + "/") for a in allowed), (dockerfile, src)


def test_stand_ins_stay_out_of_what_users_run():
    shipped = COMPOSE.read_text() + ENV_EXAMPLE.read_text()
    assert "docker/stack-test" not in shipped and "retrain-standin" not in shipped
    override = yaml.safe_load((STANDINS / "docker-compose.standins.yaml").read_text())
    assert set(override["services"]) <= set(yaml.safe_load(COMPOSE.read_text())["services"])


def test_no_dangling_reference_to_a_missing_doc():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.split()
    for name in tracked:
        path = ROOT / name
        if not path.is_file() or path.suffix in (".png", ".parquet", ".gz"):
            continue
        text = path.read_text(errors="replace")
        for ref in set(re.findall(r"\bdocs/[\w.-]+\.md", text)):
            assert (ROOT / ref).exists(), f"{name} points at {ref}, which does not exist"


def test_job_health_checks_have_time_on_a_small_busy_host():
    """`airflow jobs check` starts a whole Airflow CLI: 6-7 s idle on 2 cores, more while a stage trains."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("airflow-dag-processor", "airflow-triggerer"):
        check = services[name]["healthcheck"]
        assert "jobs check" in " ".join(check["test"])
        seconds = int(check["timeout"].rstrip("s"))
        assert seconds >= 60, f"{name}: health-check timeout {check['timeout']}"


def test_the_override_file_composes_with_the_shipped_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text(ENV_EXAMPLE.read_text())
    extra = {"STACK_TEST_FIND_LINKS": "http://172.17.0.1:1/", "STACK_TEST_TRUSTED_HOST": "172.17.0.1",
             "STACK_TEST_PIPELINES": str(tmp_path / "pipelines")}
    proc = subprocess.run([*compose_command(), "--project-directory", str(ROOT), "-f", str(COMPOSE),
                           "-f", str(STANDINS / "docker-compose.standins.yaml"), "--env-file", str(env), "config"],
                          capture_output=True, text=True, timeout=120, env={**clean_env(), **extra}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    scheduler = config["services"]["airflow-scheduler"]
    assert scheduler["build"]["args"]["AIRFLOW_BASE_IMAGE"].startswith("retrain-standin/")
    assert scheduler["environment"]["RETRAIN_PIPELINES_DIR"] == "/opt/airflow/stack-test/pipelines"
    assert config["services"]["postgres"]["image"].startswith("retrain-standin/")
    # Without the stack test's variables it refuses, rather than building from an empty find-links.
    bare = subprocess.run([*compose_command(), "--project-directory", str(ROOT), "-f", str(COMPOSE),
                           "-f", str(STANDINS / "docker-compose.standins.yaml"), "--env-file", str(env), "config",
                           "-q"], capture_output=True, text=True, timeout=120, env=clean_env(), cwd=ROOT)
    assert bare.returncode != 0
