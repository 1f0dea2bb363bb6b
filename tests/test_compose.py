"""docker-compose.yaml: valid for the compose client, every connection the pipelines use is configured, the
mounts reproduce the repository layout, and .env.example is complete and consistent.

Runs `docker-compose config` (the v1 client parses and interpolates without a Docker engine; `docker compose`
v2 works too). CI installs it with scripts/ci_system_deps.sh.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-init")
LONG_RUNNING = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                "postgres", "minio")
# Where the repository's folders live in the Airflow containers (the image's AIRFLOW_HOME).
CONTAINER_ROOT = "/opt/airflow"
LAYOUT = ("dags", "plugins", "include", "tasks")


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.fail("neither docker-compose nor `docker compose` is installed: run scripts/ci_system_deps.sh "
                "(apt-get install -y docker-compose)")


def clean_env() -> dict[str, str]:
    """The process env without anything the compose file interpolates, so only the env file counts."""
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    return {k: v for k, v in os.environ.items() if k not in names and not k.startswith("COMPOSE_")}


def run_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*compose_command(), "--project-directory", str(ROOT), "-f", str(COMPOSE),
                           "--env-file", str(env_file), *args],
                          capture_output=True, text=True, timeout=120, env=clean_env(), cwd=ROOT)


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@pytest.fixture(scope="module")
def config() -> dict:
    proc = run_compose(ENV_EXAMPLE, "config")
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


def service_env(config: dict, service: str) -> dict[str, str]:
    env = config["services"][service].get("environment") or {}
    if isinstance(env, list):  # some clients print KEY=VALUE lists
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def volumes(config: dict, service: str) -> dict[str, str]:
    """container path -> host source (absolute for bind mounts, the volume name otherwise)."""
    out = {}
    for vol in config["services"][service].get("volumes", []):
        if isinstance(vol, dict):
            out[vol["target"]] = vol.get("source", "")
        else:
            source, target = vol.split(":")[:2]
            out[target] = source
    return out


def connection(uri: str):
    from airflow.models.connection import Connection

    return Connection(conn_id="probe", uri=uri)


def test_compose_config_quiet_passes_with_env_example():
    proc = run_compose(ENV_EXAMPLE, "config", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr.upper()


def test_secrets_are_required_not_defaulted(tmp_path):
    """Without an .env, compose refuses and names the variable and .env.example (no silent default secrets)."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = run_compose(empty, "config", "-q")
    assert proc.returncode != 0
    assert ".env.example" in proc.stderr
    assert re.search(r"AIRFLOW_JWT_SECRET|AIRFLOW_CONN_|MINIO_ROOT_PASSWORD|RETRAIN_S3_|_AIRFLOW_WWW_USER_PASSWORD",
                     proc.stderr), proc.stderr


def test_services_follow_the_official_airflow3_layout(config):
    services = config["services"]
    for name in ("postgres", "minio", "minio-init", *AIRFLOW_SERVICES):
        assert name in services, f"missing service {name}"
    commands = {name: services[name].get("command") for name in AIRFLOW_SERVICES[:-1]}
    assert commands == {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                        "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in AIRFLOW_SERVICES[:-1]:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["minio-init"]["condition"] == "service_completed_successfully", name
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    # The scheduler's health check needs its health server on.
    assert service_env(config, "airflow-scheduler")["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_airflow_services_share_executor_database_and_secrets(config):
    envs = [service_env(config, name) for name in AIRFLOW_SERVICES]
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API_AUTH__JWT_SECRET",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"):
        values = {env.get(key) for env in envs}
        assert len(values) == 1 and None not in values and "" not in values, f"{key} differs or is unset: {values}"
    env = envs[0]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert urlparse(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == "postgres"
    assert urlparse(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).hostname == "airflow-apiserver"


def used_connection_ids() -> dict[str, set[str]]:
    """conn_id -> the kinds of connection it must be, from every pipeline spec and every DAG task."""
    from tasks.spec import load_specs

    wanted: dict[str, set[str]] = {}
    specs = load_specs(ROOT / "include" / "pipelines")
    assert specs, "no pipeline specs in include/pipelines"
    for _path, spec in specs:
        wanted.setdefault(spec.storage.conn_id, set()).add("aws")
        wanted.setdefault(spec.alerts.smtp_conn_id, set()).add("smtp")
        if spec.alerts.slack_conn_id:
            wanted.setdefault(spec.alerts.slack_conn_id, set()).add("slack")
        wanted.setdefault(spec.stages.kubernetes.conn_id, set()).add("kubernetes")
    return wanted


# Attribute names that say which kind of connection they need.
ATTR_KINDS = {"slack_webhook_conn_id": "slackwebhook", "smtp_conn_id": "smtp", "kubernetes_conn_id": "kubernetes",
              "aws_conn_id": "aws", "storage_conn_id": "aws"}
KINDS = {"aws": {"aws"}, "smtp": {"smtp"}, "slack": {"slack", "slackwebhook"}, "slackwebhook": {"slackwebhook"},
         "kubernetes": {"kubernetes"}}


def _collect_conn_ids(obj, found: dict[str, set[str]], depth: int = 0, seen: set[int] | None = None) -> None:
    """Walk an operator, callback, notifier or deadline object for ``*conn_id`` string attributes."""
    seen = set() if seen is None else seen
    if depth > 4 or id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return
    seen.add(id(obj))
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, (list, tuple, set)):
        items = [(None, v) for v in obj]
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and type(obj).__module__.split(".")[0] in (
            "airflow", "retrain_alerts", "stage_factory", "unusual_prefix"):
        items = list(vars(obj).items())
    else:
        return
    for key, value in items:
        if isinstance(key, str) and key.endswith("conn_id") and isinstance(value, str) and value:
            kinds = found.setdefault(value, set())
            if key in ATTR_KINDS:
                kinds.add(ATTR_KINDS[key])
        elif not isinstance(key, str) or not key.startswith("_") or key in ("_callbacks",):
            _collect_conn_ids(value, found, depth + 1, seen)


def dag_connection_ids(monkeypatch) -> dict[str, set[str]]:
    """conn_id -> kinds, from every task, task callback, DAG callback and deadline of the real DAGs, both modes."""
    from airflow.dag_processing.dagbag import DagBag

    found: dict[str, set[str]] = {}
    for mode in ("local", "kubernetes"):
        monkeypatch.setenv("RETRAIN_STAGE_MODE", mode)
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert not bag.import_errors, bag.import_errors
        assert bag.dags, "no DAGs in dags/"
        for dag in bag.dags.values():
            for name in ("on_failure_callback", "on_success_callback", "deadline", "sla_miss_callback"):
                _collect_conn_ids(getattr(dag, name, None), found)
            for task in dag.tasks:
                _collect_conn_ids(task, found)
                for name in ("on_failure_callback", "on_retry_callback", "on_success_callback",
                             "on_execute_callback", "on_skipped_callback"):
                    _collect_conn_ids(getattr(task, name, None), found)
    return found


def test_every_connection_id_has_a_compose_connection(config, monkeypatch):
    wanted = used_connection_ids()
    from_dags = dag_connection_ids(monkeypatch)
    # The DAGs really reference connections (storage in local mode, kubernetes in kubernetes mode).
    assert from_dags, "found no conn_id in the DAGs: the scan is broken"
    for conn_id, kinds in from_dags.items():
        wanted.setdefault(conn_id, set()).update(kinds)
    for service in AIRFLOW_SERVICES:
        env = service_env(config, service)
        for conn_id, needed in sorted(wanted.items()):
            var = f"AIRFLOW_CONN_{conn_id.upper()}"
            assert env.get(var), f"{service}: connection {conn_id!r} has no {var}"
            conn = connection(env[var])
            for kind in needed:
                assert conn.conn_type in KINDS[kind], f"{var} is a {conn.conn_type!r} connection, not {kind}"


def test_connections_point_at_the_compose_services(config):
    env = service_env(config, "airflow-scheduler")
    services = config["services"]
    aws = connection(env["AIRFLOW_CONN_AWS_DEFAULT"])
    endpoint = urlparse(aws.extra_dejson["endpoint_url"])
    assert endpoint.hostname == "minio" and endpoint.port == 9000
    assert "server /data" in str(services["minio"]["command"])
    # The stages use the pipeline's own MinIO key that minio-init creates, not the root account.
    init_env = service_env(config, "minio-init")
    assert aws.login == init_env["RETRAIN_S3_ACCESS_KEY"]
    assert aws.password == init_env["RETRAIN_S3_SECRET_KEY"]
    assert aws.login != init_env["MINIO_ROOT_USER"]
    bucket = urlparse(env["RETRAIN_STORAGE_URI"]).netloc
    assert urlparse(env["RETRAIN_STORAGE_URI"]).scheme == "s3"
    assert bucket in init_env["MINIO_BUCKETS"].split(), "minio-init does not create the storage bucket"
    smtp = connection(env["AIRFLOW_CONN_SMTP_DEFAULT"])
    assert smtp.host in services and smtp.host == "mailpit"
    kube = connection(env["AIRFLOW_CONN_KUBERNETES_DEFAULT"])
    kube_config = kube.extra_dejson.get("kube_config_path")
    assert kube_config and kube_config.startswith("/opt/airflow/kube/")
    assert "/opt/airflow/kube" in volumes(config, "airflow-scheduler")


def test_mounts_reproduce_the_repository_layout(config):
    """The DAG files in dags/ find tasks/ and plugins/ at parents[1]; the containers must keep that."""
    for service in AIRFLOW_SERVICES:
        mounts = volumes(config, service)
        for folder in LAYOUT:
            target = f"{CONTAINER_ROOT}/{folder}"
            assert target in mounts, f"{service}: {folder}/ is not mounted at {target}"
            assert Path(mounts[target]) == ROOT / folder, f"{service}: {target} comes from {mounts[target]}"
            assert (ROOT / folder).is_dir()
        env = service_env(config, service)
        assert env["PYTHONPATH"] == CONTAINER_ROOT
        pipelines = env["RETRAIN_PIPELINES_DIR"]
        assert pipelines.startswith(f"{CONTAINER_ROOT}/include/")
        host_dir = ROOT / "include" / Path(pipelines).relative_to(f"{CONTAINER_ROOT}/include")
        assert list(host_dir.glob("*.yaml")), f"{service}: RETRAIN_PIPELINES_DIR {pipelines} holds no spec"
        # Default DAGs folder of the image is $AIRFLOW_HOME/dags = /opt/airflow/dags.
        assert env.get("AIRFLOW__CORE__DAGS_FOLDER", f"{CONTAINER_ROOT}/dags") == f"{CONTAINER_ROOT}/dags"
    init_mounts = volumes(config, "minio-init")
    assert Path(init_mounts["/init/minio-init.sh"]) == ROOT / "docker" / "minio-init.sh"


def test_spec_environment_variables_are_provided(config):
    """Every ${VAR} without a default in the pipeline specs is set for the Airflow services."""
    env = service_env(config, "airflow-scheduler")
    for spec_file in sorted((ROOT / "include" / "pipelines").glob("*.yaml")):
        for name, default in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}", spec_file.read_text()):
            if not default:
                assert env.get(name), f"{spec_file.name} needs {name}"
    for name in ("RETRAIN_STORAGE_URI", "RETRAIN_STAGE_MODE", "RETRAIN_TASK_IMAGE", "RETRAIN_ALERT_EMAIL",
                 "RETRAIN_ALERT_FROM", "AIRFLOW_BASE_URL"):
        assert env.get(name), name
    assert env["RETRAIN_STAGE_MODE"] in ("local", "kubernetes")


def test_env_example_is_complete_and_env_is_ignored():
    example = read_env_file(ENV_EXAMPLE)
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?\?)", COMPOSE.read_text()))
    assert required, "expected required variables (${VAR:?...}) in docker-compose.yaml"
    missing = sorted(required - set(example))
    assert not missing, f".env.example lacks {missing}"
    for name in required:
        assert example[name], f".env.example leaves {name} empty"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0, ".env must be git-ignored"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", ".env"], cwd=ROOT, capture_output=True,
                             timeout=30)
    assert tracked.returncode != 0, ".env is tracked by git"


def test_airflow_image_matches_pinned_airflow():
    dockerfile = (ROOT / "docker" / "airflow.Dockerfile").read_text()
    pinned = re.search(r"^apache-airflow==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    base = re.search(r"^ARG AIRFLOW_BASE_IMAGE=apache/airflow:(\S+)", dockerfile, re.M).group(1)
    assert base.split("-")[0] == pinned, f"image {base} vs requirements apache-airflow=={pinned}"
    torch = re.search(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert f"ARG TORCH_VERSION={torch}" in dockerfile
    assert "requirements.txt" in dockerfile and "constraints.txt" in dockerfile
