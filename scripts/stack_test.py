"""The stack test: build every image, start the docker-compose stack, drive it like a user, tear it down.

    make stack-test                      # = .venv/bin/python scripts/stack_test.py
    .venv/bin/python scripts/stack_test.py --cold     # rebuild everything from nothing (no image, no cache)

On a Debian machine with no image registry it needs root (it installs docker.io and docker-compose, and starts
dockerd, when missing) and network access to Debian's mirror and to a Python package index (or an existing
wheelhouse, --wheelhouse). Steps (docs/operations.md, "Production with docker-compose", is the walk-through
they follow):

1. engine: `docker info` answers, or docker.io is installed and dockerd started (and stopped again at the end);
2. stand-in bases (docker/stack-test/, README there): Debian bookworm by debootstrap + `docker import`, a
   Python 3.11 on it, an Airflow 3.3.2 base, Postgres, and one image with moto (S3), boto3 and an SMTP catcher
   standing in for MinIO, mc and Mailpit;
3. a wheelhouse (one `pip download`, docker/pip/README.md) served over HTTP on the docker bridge: every image
   is built with PIP_NO_INDEX=1, the offline path of the Dockerfiles;
4. `docker-compose build` of the shipped docker-compose.yaml plus docker/stack-test/docker-compose.standins.yaml
   (which swaps the images and points the pipelines at a tiny training config), and the task image
   (tasks/Dockerfile) from the plain Python base, run once as a random uid;
5. `up -d`, every service healthy, then through the REST API and the S3 endpoint only: no import errors, the
   registry page answers, a landed batch triggers ingest and then retrain through the Asset, the run succeeds and
   the champion is in the bucket, a forced run with a gate it cannot pass sends an alert mail the catcher gets;
6. `down -v`, and nothing of the project is left (containers, volumes, networks).

The last line printed is one JSON object (the result); the exit code is 0 only when every check passed.
Everything else goes to stderr and to the log file in the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import stack_faults
import stack_pods

ROOT = Path(__file__).resolve().parents[1]
STANDINS = ROOT / "docker" / "stack-test"
OVERRIDE = STANDINS / "docker-compose.standins.yaml"
PROJECT = "retrain-stacktest"
DEBIAN_IMAGE = "retrain-standin/debian:bookworm"
PYTHON_IMAGE = "retrain-standin/python:3.11"
AIRFLOW_BASE_IMAGE = "retrain-standin/airflow:3.3.2-python3.11"
POSTGRES_IMAGE = "retrain-standin/postgres:16"
TOOLS_IMAGE = "retrain-standin/tools:stack-test"
AIRFLOW_IMAGE = "retrain-stacktest/airflow:3.3.2"
TASK_IMAGE = "retrain-stacktest/tasks:latest"
STANDIN_IMAGES = (DEBIAN_IMAGE, PYTHON_IMAGE, AIRFLOW_BASE_IMAGE, POSTGRES_IMAGE, TOOLS_IMAGE)
PIPELINE = "sst2"
BUCKET = "ml-retrain"
HOST = "127.0.0.1"
DATA = Path(os.environ.get("RETRAIN_DATA_DIR", ROOT.parent / "shared" / "data"))

LOG: Any = None


def say(msg: str) -> None:
    line = f"[stack-test {time.strftime('%H:%M:%S')}] {msg}"
    print(line, file=sys.stderr, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


class Failed(RuntimeError):
    pass


def run(cmd: list[str], *, timeout: float, check: bool = True, env: dict[str, str] | None = None,
        cwd: Path = ROOT, nice: bool = False, quiet: bool = False) -> subprocess.CompletedProcess:
    """A bounded subprocess; its output goes to the log (and the tail into the error when it fails)."""
    full = (["nice", "-n", "10"] if nice else []) + [str(c) for c in cmd]
    if not quiet:
        say("$ " + " ".join(full)[:400])
    try:
        proc = subprocess.run(full, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired as exc:
        raise Failed(f"{' '.join(full)[:200]} ran past {timeout}s") from exc
    if LOG:
        LOG.write(proc.stdout[-20000:] + proc.stderr[-20000:])
        LOG.flush()
    if check and proc.returncode != 0:
        raise Failed(f"{' '.join(full)[:300]} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


# ------------------------------------------------------------------------------------------------ the engine

class Engine:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.dockerd: subprocess.Popen | None = None
        # The engine's own CLI (Debian's docker.io ships one of the same release) before any other on PATH.
        self.docker = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")

    def answers(self) -> bool:
        if not shutil.which(self.docker) and not Path(self.docker).exists():
            return False
        return run([self.docker, "info"], timeout=30, check=False, quiet=True).returncode == 0

    def ensure(self) -> None:
        missing = []
        if not Path("/usr/sbin/dockerd").exists() and not shutil.which("dockerd"):
            missing.append("docker.io")
        if not shutil.which("docker-compose"):
            missing.append("docker-compose")
        if not shutil.which("debootstrap"):
            missing.append("debootstrap")
        if missing:
            if os.geteuid() != 0:
                raise Failed(f"missing {missing}; install them (apt-get install -y {' '.join(missing)}) or run as root")
            run(["apt-get", "update", "-qq"], timeout=600)
            run(["apt-get", "install", "-y", "-qq", *missing], timeout=900,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            self.docker = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else self.docker
        if self.answers():
            say("engine: already running")
            return
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        say(f"engine: starting {dockerd}")
        log = open(self.work / "dockerd.log", "ab")
        # Niced, so that every container (and build) it starts is too: the machine is shared.
        self.dockerd = subprocess.Popen(["nice", "-n", "10", dockerd], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.dockerd.poll() is not None:
                raise Failed(f"dockerd exited with {self.dockerd.returncode}; see {self.work / 'dockerd.log'}")
            if self.answers():
                return
            time.sleep(1)
        raise Failed("dockerd did not answer within 90 s")

    def stop(self) -> None:
        if self.dockerd is None or self.dockerd.poll() is not None:
            return
        say("engine: stopping the dockerd this run started")
        self.dockerd.send_signal(signal.SIGTERM)
        try:
            self.dockerd.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.dockerd.kill()
            self.dockerd.wait(timeout=10)

    def has_image(self, name: str) -> bool:
        return run([self.docker, "image", "inspect", name], timeout=60, check=False, quiet=True).returncode == 0

    def image_mb(self, name: str) -> float | None:
        proc = run([self.docker, "image", "inspect", "-f", "{{.Size}}", name], timeout=60, check=False, quiet=True)
        return round(int(proc.stdout.strip()) / 1e6, 1) if proc.returncode == 0 else None

    def build(self, tag: str, context: Path, dockerfile: Path, args: dict[str, str], timeout: float = 1800) -> str:
        """Returns the size of the build context the classic builder sent (its own words, e.g. "6.2MB")."""
        cmd = [self.docker, "build", "-t", tag, "-f", str(dockerfile)]
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        # The classic builder, as docker-compose v1 uses: the root .dockerignore is what keeps its context small.
        proc = run([*cmd, str(context)], timeout=timeout, nice=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        sent = re.search(r"Sending build context to Docker daemon\s+(\S+)", proc.stdout)
        return sent.group(1) if sent else "?"

    def bridge_gateway(self) -> str:
        """The host's address on the default bridge, where `docker build` containers reach it."""
        config = json.loads(run([self.docker, "network", "inspect", "bridge", "-f", "{{json .IPAM.Config}}"],
                                timeout=30, quiet=True).stdout)[0]
        if config.get("Gateway"):
            return config["Gateway"]
        import ipaddress

        # dockerd leaves Gateway out when it picked the default: the subnet's first address (docker0's).
        return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


# ------------------------------------------------------------------------------------------- stand-in bases

def python_prefix(explicit: str | None) -> Path:
    """A CPython 3.11 >= 3.11.5 built for Debian bookworm to copy into the stand-in base (this interpreter's)."""
    prefix = Path(explicit or sys.base_prefix)
    version = run([str(prefix / "bin" / "python3.11"), "-c", "import sys; print(*sys.version_info[:3])"],
                  timeout=30, quiet=True).stdout.split()
    if tuple(map(int, version)) < (3, 11, 5):
        raise Failed(f"{prefix} holds Python {'.'.join(version)}; the stand-in base needs >= 3.11.5 "
                     "(--python-prefix DIR)")
    return prefix


def build_bases(engine: Engine, work: Path, pip_args: dict[str, str], prefix: Path, cold: bool) -> list[str]:
    built = []
    if cold or not engine.has_image(DEBIAN_IMAGE):
        rootfs_tar = work / "bookworm-rootfs.tar"
        if cold or not rootfs_tar.exists():
            rootfs = work / "rootfs"
            shutil.rmtree(rootfs, ignore_errors=True)
            run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                timeout=1200, nice=True)
            run(["tar", "-C", str(rootfs), "-cf", str(rootfs_tar), "."], timeout=600)
            shutil.rmtree(rootfs, ignore_errors=True)
        run(["sh", "-c", f"{engine.docker} import - {DEBIAN_IMAGE} < {rootfs_tar}"], timeout=600)
        built.append(DEBIAN_IMAGE)
    if cold or not engine.has_image(PYTHON_IMAGE):
        with tempfile.TemporaryDirectory(prefix="stack-python-") as ctx:
            (Path(ctx) / "python").mkdir()
            # The interpreter and its standard library; none of this machine's site-packages, tests or IDLE.
            run(["sh", "-c", f"tar -C {prefix} -cf - --exclude=lib/python3.11/site-packages "
                             "--exclude=lib/python3.11/test --exclude=lib/python3.11/idlelib "
                             "--exclude=lib/python3.11/tkinter --exclude='__pycache__' "
                             "bin/python3.11 lib/libpython3.11.so.1.0 lib/python3.11 include "
                             f"| tar -C {ctx}/python -xf -"], timeout=600)
            shutil.copy(STANDINS / "python.Dockerfile", ctx)
            engine.build(PYTHON_IMAGE, Path(ctx), Path(ctx) / "python.Dockerfile", {"DEBIAN_IMAGE": DEBIAN_IMAGE})
        built.append(PYTHON_IMAGE)
    with tempfile.TemporaryDirectory(prefix="stack-standins-") as ctx:
        for path in STANDINS.iterdir():
            if path.is_file():
                shutil.copy(path, ctx)
        shutil.copy(ROOT / "constraints.txt", ctx)
        for tag, dockerfile, args in (
            (AIRFLOW_BASE_IMAGE, "airflow.Dockerfile", {"PYTHON_IMAGE": PYTHON_IMAGE, **pip_args}),
            (POSTGRES_IMAGE, "postgres.Dockerfile", {"DEBIAN_IMAGE": DEBIAN_IMAGE}),
            (TOOLS_IMAGE, "tools.Dockerfile", {"PYTHON_IMAGE": PYTHON_IMAGE, **pip_args}),
        ):
            if cold or not engine.has_image(tag):
                engine.build(tag, Path(ctx), Path(ctx) / dockerfile, args)
                built.append(tag)
    return built


def remove_everything_built(engine: Engine, work: Path, wheelhouse: Path | None) -> None:
    """--cold: the stack test's images, Docker's build cache, dangling layers, the wheelhouse (unless it is the
    user's) and the Debian tarball, so that the run builds every image from nothing."""
    say("cold: removing the stack test's images, the build cache and the downloads")
    for image in (*STANDIN_IMAGES, AIRFLOW_IMAGE, TASK_IMAGE):
        run([engine.docker, "rmi", "-f", image], timeout=600, check=False)
    # Generous bounds: removing the layers of several GB-sized images took over 10 min on this project's
    # development disk, and a removal cut short leaves layers a "cold" build would still reuse.
    run([engine.docker, "builder", "prune", "-af"], timeout=3600)
    run([engine.docker, "image", "prune", "-f"], timeout=3600)  # dangling layers only: not other projects' images
    if wheelhouse is not None:
        shutil.rmtree(wheelhouse, ignore_errors=True)
    (work / "bookworm-rootfs.tar").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- the wheelhouse

WHEELHOUSE_EXTRAS = ("psycopg2-binary", "asyncpg", "moto[server]", "aiosmtpd", "pip", "setuptools", "wheel")


def wheelhouse_stamp() -> str:
    """What the wheelhouse was filled for: requirements.txt, constraints.txt and the stand-ins' packages."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("requirements.txt", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    digest.update(" ".join(WHEELHOUSE_EXTRAS).encode())
    return digest.hexdigest()


def fill_wheelhouse(wheelhouse: Path) -> bool:
    """docker/pip/README.md's one `pip download`, plus the stand-ins' own packages (pinned in constraints.txt),
    whenever the requirements changed since the last fill (pip fetches only the files missing); False when the
    wheelhouse was already filled for them."""
    stamp = wheelhouse / ".filled-for"
    if stamp.exists() and stamp.read_text().strip() == wheelhouse_stamp():
        return False
    wheelhouse.mkdir(parents=True, exist_ok=True)
    if not any(wheelhouse.glob("torch-*+cpu-*.whl")):
        fetch_cpu_torch(wheelhouse)
    # The wheelhouse's torch X+cpu sorts above PyPI's X, so the rest needs only pip's own index settings.
    run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheelhouse), "--find-links", str(wheelhouse),
         "-r", "requirements.txt", "-c", "constraints.txt", *WHEELHOUSE_EXTRAS],
        timeout=1800, nice=True)
    stamp.write_text(wheelhouse_stamp() + "\n")
    return True


def fetch_cpu_torch(wheelhouse: Path) -> None:
    """The pinned torch as its CPU wheel (X+cpu), from pip's own settings first (a mirror or find-links folder
    may hold it), else from PyTorch's CPU index. The order matters where that index is unreachable: pip, given
    it as an extra index for every requirement, waited out its timeout and retries package by package."""
    pin = next(line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
               if line.startswith("torch=="))
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", str(wheelhouse),
                "--timeout", "30", "--retries", "1", f"{pin}+cpu"]
    if run(download, timeout=900, nice=True, check=False).returncode == 0:
        return
    run([*download, "--extra-index-url", "https://download.pytorch.org/whl/cpu"], timeout=1800, nice=True)


class WheelhouseServer:
    """The wheelhouse as a pip find-links page over HTTP, on the docker bridge only (builds reach it there)."""

    def __init__(self, folder: Path, address: str, port: int) -> None:
        handler = partial(_QuietHandler, directory=str(folder))
        # A fixed port: the find-links URL is a build arg, and a changed build arg voids the build cache.
        self.server = ThreadingHTTPServer((address, port), handler)
        self.url = f"http://{address}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "WheelhouseServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


# ------------------------------------------------------------------------------------------- the test's stack

def env_file(path: Path, secrets_: dict[str, str]) -> None:
    """.env.example with every secret replaced, as docs/operations.md tells a user to do."""
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    retrain_secret = secrets_["RETRAIN_S3_SECRET_KEY"]
    values.update(secrets_)
    values["AIRFLOW_IMAGE_NAME"] = AIRFLOW_IMAGE
    values["AIRFLOW_CONN_AWS_DEFAULT"] = (
        f"aws://retrain:{quote(retrain_secret, safe='')}@/?endpoint_url=http%3A%2F%2Fminio%3A9000"
        "&region_name=us-east-1")
    values["AIRFLOW_PARALLELISM"] = "2"
    leftover = [k for k, v in values.items() if "change-me" in v and k != "AIRFLOW_CONN_SLACK_ALERTS"]
    if leftover:
        raise Failed(f"env file still has change-me values: {leftover}")
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)


def past_daily_slot(hours_ago: int = 1) -> str:
    from datetime import datetime, timedelta, timezone

    slot = datetime.now(timezone.utc) - timedelta(hours=hours_ago)
    return f"{slot.minute} {slot.hour} * * *"


def tiny_specs(folder: Path) -> None:
    """include/pipelines/ with sst2.yaml cut down to a CPU-sized run (MiniLM, a few hundred rows, 1 epoch)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "include" / "pipelines" / "emotion.yaml", folder / "emotion.yaml")
    raw = yaml.safe_load((ROOT / "include" / "pipelines" / "sst2.yaml").read_text())
    raw["model"]["max_length"] = 64
    # A fixed learning rate: "auto" on a first run searches four rates first (four more trainings). Batches of
    # 8 give 30 steps, so the fault run's scheduler kill lands between the checkpoints at steps 10 and 20.
    raw["train"].update(epochs=1, min_epochs=1, batch_size=8, eval_steps=10, checkpoint_steps=10,
                        max_train_rows=240, early_stopping_patience=3, learning_rate=1e-4, selection_rows=64)
    raw["student"].update(layers=2, epochs=1, batch_size=16, export=[])
    raw["drift"].update(embedding_subsample=40, embedding_permutations=50)
    raw["decide"].update(min_new_rows=20, retrain_every_rows=100)
    # Floors a first tiny run clears; the gate-failing run raises min_accuracy from the trigger form.
    raw["gates"].update(min_accuracy=0.0, min_macro_f1=0.0, min_retention=0.0, max_class_recall_drop=1.0,
                        min_accuracy_over_baseline=None, min_macro_f1_over_baseline=None,
                        non_inferiority_margin=1.0, latency_samples=10)
    raw["alerts"]["slack_conn_id"] = None
    raw["schedule"].update(ingest_every_minutes=1, cron=past_daily_slot(), nightly_deadline_minutes=0)
    raw["stages"]["mode"] = "local"
    for stage in ("finetune", "distill"):
        raw["stages"][stage].update(gpus=0, timeout_minutes=30)
    (folder / "sst2.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def sst2_rows(split: str, limit: int, offset: int = 0) -> list[tuple[str, str]]:
    rows = []
    with open(DATA / "sst2" / f"{split}.tsv", encoding="utf-8") as fh:
        next(fh)
        for i, line in enumerate(fh):
            if i < offset:
                continue
            text, label = line.rstrip("\n").rsplit("\t", 1)
            rows.append((text, label))
            if len(rows) >= limit:
                break
    return rows


def tsv(rows: list[tuple[str, str]]) -> bytes:
    return ("sentence\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows)).encode()


class Stack:
    def __init__(self, engine: Engine, work: Path, find_links: str, trusted_host: str) -> None:
        self.engine = engine
        self.project = PROJECT
        self.work = work
        self.env_path = work / "stack.env"
        self.pipelines = work / "pipelines"
        self.secrets = {
            "_AIRFLOW_WWW_USER_PASSWORD": secrets.token_urlsafe(12),
            "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(48),
            "POSTGRES_PASSWORD": secrets.token_urlsafe(12),
            "MINIO_ROOT_PASSWORD": secrets.token_urlsafe(12),
            "RETRAIN_S3_SECRET_KEY": secrets.token_urlsafe(12),
        }
        self.env = {**os.environ, "STACK_TEST_FIND_LINKS": find_links, "STACK_TEST_TRUSTED_HOST": trusted_host,
                    "STACK_TEST_PIPELINES": str(self.pipelines), "COMPOSE_DOCKER_CLI_BUILD": "0",
                    "DOCKER_BUILDKIT": "0"}
        # docker-compose v1 finds `docker` on PATH for a few calls: the engine's own CLI first.
        self.env["PATH"] = f"{Path(engine.docker).parent}:{self.env.get('PATH', '')}"

    def compose(self, *args: str, timeout: float = 600, check: bool = True, nice: bool = False):
        return run(["docker-compose", "-p", PROJECT, "-f", "docker-compose.yaml", "-f", str(OVERRIDE),
                    "--env-file", str(self.env_path), *args], timeout=timeout, check=check, env=self.env, nice=nice)

    def prepare(self) -> None:
        env_file(self.env_path, self.secrets)
        tiny_specs(self.pipelines)
        self.compose("config", "-q", timeout=60)

    def containers(self) -> list[dict[str, Any]]:
        ids = run([self.engine.docker, "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                  timeout=60, quiet=True).stdout.split()
        if not ids:
            return []
        out = json.loads(run([self.engine.docker, "inspect", *ids], timeout=60, quiet=True).stdout)
        return [{"service": c["Config"]["Labels"].get("com.docker.compose.service"),
                 "status": c["State"]["Status"], "exit": c["State"]["ExitCode"],
                 "health": (c["State"].get("Health") or {}).get("Status")} for c in out]

    def wait_healthy(self, timeout: float) -> dict[str, str]:
        one_shot = {"airflow-init", "minio-init"}
        deadline = time.monotonic() + timeout
        while True:
            state = {c["service"]: c for c in self.containers()}
            summary = {}
            for name, c in state.items():
                if name in one_shot:
                    summary[name] = "completed" if c["status"] == "exited" and c["exit"] == 0 else c["status"]
                else:
                    summary[name] = c["health"] or c["status"]
            failed = [n for n in one_shot if n in state and state[n]["status"] == "exited" and state[n]["exit"] != 0]
            if failed:
                raise Failed(f"{failed} failed: " + self.logs(*failed))
            if summary and all(v in ("healthy", "completed") for v in summary.values()) and len(summary) >= 9:
                return summary
            if time.monotonic() > deadline:
                raise Failed(f"not healthy after {timeout}s: {summary}\n" + self.logs())
            time.sleep(3)

    def logs(self, *services: str, tail: int = 60) -> str:
        proc = self.compose("logs", "--no-color", f"--tail={tail}", *services, timeout=120, check=False)
        return proc.stdout[-6000:]

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={PROJECT}"
        d = self.engine.docker
        return {
            "containers": run([d, "ps", "-aq", "--filter", label], timeout=60, quiet=True).stdout.split(),
            "volumes": run([d, "volume", "ls", "-q", "--filter", label], timeout=60, quiet=True).stdout.split(),
            "networks": run([d, "network", "ls", "-q", "--filter", label], timeout=60, quiet=True).stdout.split(),
        }


# ----------------------------------------------------------------------------------------------- the checks

def api_client(password: str):
    import httpx

    sys.path.insert(0, str(ROOT / "tests"))
    from live_airflow import ApiClient

    base = f"http://{HOST}:8080"
    resp = httpx.post(f"{base}/auth/token", json={"username": "airflow", "password": password}, timeout=30,
                      trust_env=False)
    if resp.status_code != 201:
        raise Failed(f"POST /auth/token -> {resp.status_code}: {resp.text[:300]}")
    return ApiClient(base, resp.json()["access_token"], timeout=60)


def s3_client(secret: str):
    import boto3

    return boto3.client("s3", endpoint_url=f"http://{HOST}:9000", region_name="us-east-1",
                        aws_access_key_id="retrain", aws_secret_access_key=secret)


def task_states(api, dag_id: str, run_id: str) -> dict[str, str]:
    return {t["task_id"]: t["state"] for t in api.task_instances(dag_id, run_id)}


def task_seconds(api, dag_id: str, run_id: str) -> dict[str, float]:
    """Each task's duration (the API's, in seconds): where a run's time went."""
    return {t["task_id"]: round(t["duration"], 1) for t in api.task_instances(dag_id, run_id)
            if t.get("duration") is not None}


def drive(stack: Stack, result: dict[str, Any], checks: dict[str, bool], gate_run: bool = False) -> None:
    import httpx

    api = api_client(stack.secrets["_AIRFLOW_WWW_USER_PASSWORD"])
    ingest_dag, retrain_dag = f"ingest_{PIPELINE}", f"retrain_{PIPELINE}"
    for dag_id in (ingest_dag, retrain_dag):
        api.wait_for_dag(dag_id, timeout=300)
    errors = api.import_errors()
    result["import_errors"] = len(errors)
    result["import_error_files"] = [e["filename"] for e in errors]
    checks["no_import_errors"] = not errors

    # The registry page (a FastAPI app the api-server mounts): refused without a token, served with one.
    base = f"http://{HOST}:8080/retrain-registry/"
    anonymous = httpx.get(base, timeout=30, trust_env=False).status_code
    authed = api.request("GET", "/retrain-registry/api/pipelines")
    result["registry_page"] = {"anonymous": anonymous, "with_token": authed.status}
    checks["registry_page_answers"] = anonymous in (401, 403) and authed.status == 200

    # Data in, through the S3 endpoint only: the golden set once, then a labeled batch in the landing folder.
    s3 = s3_client(stack.secrets["RETRAIN_S3_SECRET_KEY"])
    s3.put_object(Bucket=BUCKET, Key=f"reference/{PIPELINE}/golden.tsv", Body=tsv(sst2_rows("dev", 120)))
    s3.put_object(Bucket=BUCKET, Key=f"landing/{PIPELINE}/batch-0001.tsv", Body=tsv(sst2_rows("train", 400)))
    t0 = time.monotonic()
    api.unpause(retrain_dag)
    api.unpause(ingest_dag)
    ingest = api.wait_for_new_run(ingest_dag, timeout=180)
    ingest = api.wait_for_run(ingest_dag, ingest["dag_run_id"], timeout=600)
    result["ingest_run"] = {"state": ingest["state"], "tasks": task_states(api, ingest_dag, ingest["dag_run_id"]),
                            "task_seconds": task_seconds(api, ingest_dag, ingest["dag_run_id"])}
    retrain = api.wait_for_new_run(retrain_dag, timeout=180, run_type="asset_triggered")
    retrain = api.wait_for_run(retrain_dag, retrain["dag_run_id"], timeout=1500)
    result["retrain_run"] = {"run_id": retrain["dag_run_id"], "run_type": retrain["run_type"], "state": retrain["state"],
                             "tasks": task_states(api, retrain_dag, retrain["dag_run_id"]),
                             "task_seconds": task_seconds(api, retrain_dag, retrain["dag_run_id"])}
    result["seconds"]["landed_to_champion"] = round(time.monotonic() - t0, 1)
    checks["ingest_success"] = ingest["state"] == "success"
    checks["retrain_asset_triggered_success"] = retrain["state"] == "success"
    try:
        champion = json.loads(s3.get_object(Bucket=BUCKET, Key=f"models/{PIPELINE}/champion.json")["Body"].read())
    except Exception as exc:  # noqa: BLE001 - reported, and the check fails
        champion = {"error": f"{type(exc).__name__}: {exc}"}
    result["champion_version"] = champion.get("version")
    version_files = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"models/{PIPELINE}/{champion.get('version')}/")
    result["champion_files"] = version_files.get("KeyCount", 0)
    checks["champion_in_bucket"] = bool(champion.get("version")) and result["champion_files"] > 0

    if not gate_run:
        api.close()
        return
    # A forced run with a gate no model passes (the trigger form's min_accuracy = 1.0): the alert mail. A whole
    # second training; the poisoned batch's alert (malformed_file_case) is the default run's alert mail.
    resp = api.trigger(retrain_dag, {"force_retrain": True, "min_accuracy": 1.0})
    if resp.status >= 400:
        raise Failed(f"trigger with a gate override -> {resp.status}: {resp.text[:500]}")
    failing = api.wait_for_run(retrain_dag, resp.body["dag_run_id"], timeout=1500)
    result["gate_failing_run"] = {"state": failing["state"],
                                  "tasks": task_states(api, retrain_dag, failing["dag_run_id"])}
    mails: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        mails = httpx.get(f"http://{HOST}:8025/api/v1/messages", timeout=30, trust_env=False).json()["messages"]
        if mails:
            break
        time.sleep(3)
    result["gate_failing_run"]["mails"] = [m["Subject"] for m in mails][:5]
    checks["gate_failure_alert_mail_caught"] = len(mails) >= 1
    after = json.loads(s3.get_object(Bucket=BUCKET, Key=f"models/{PIPELINE}/champion.json")["Body"].read())
    checks["gate_failure_kept_the_champion"] = after.get("version") == champion.get("version")
    api.close()


def bucket_etags(s3) -> dict[str, str]:
    """{key: ETag} of every object in the bucket: what "nothing stored changes" compares."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        out.update({obj["Key"]: obj["ETag"] for obj in page.get("Contents", [])})
    return out


def alert_mails(contains: str) -> list[str]:
    import httpx

    messages = httpx.get(f"http://{HOST}:8025/api/v1/messages", timeout=30, trust_env=False).json()["messages"]
    return [m["Subject"] for m in messages if contains in m["Subject"]]


def malformed_file_case(stack: Stack, result: dict[str, Any], checks: dict[str, bool],
                        wait_for_retrain: bool = True) -> None:
    """A file that is not a table lands, twice:

    1. alone: it is the whole batch, so its bad share is 100% and by design the batch is rejected with nothing
       committed (tasks/data/ingest.py check_bad_share): the ingest fails with the reason, a "data rejected"
       alert mail goes out (the poisoned batch's alert), and no stored object changes;
    2. beside a few good rows: the ingest succeeds, the file is quarantined whole with its reason
       (quarantine/<pipeline>/<batch>/summary.json), the good rows make the new snapshot, and no object stored
       before changes except the latest-snapshot pointer. Ten rows are below decide.min_new_rows, so the
       asset-triggered retrain that follows skips training; with ``wait_for_retrain`` (more cases follow) it is
       waited for, so that they run alone."""
    api = api_client(stack.secrets["_AIRFLOW_WWW_USER_PASSWORD"])
    s3 = s3_client(stack.secrets["RETRAIN_S3_SECRET_KEY"])
    ingest_dag, retrain_dag = f"ingest_{PIPELINE}", f"retrain_{PIPELINE}"
    garbage = b"\x00\x9f\x92\x96 not a table \xff\xfe\x00\x00" * 40
    seen: dict[str, Any] = {}
    result["malformed_file"] = seen

    # 1. alone
    before = bucket_etags(s3)
    runs_before = {r["dag_run_id"] for r in api.dag_runs(ingest_dag)}
    name = "batch-0002-malformed.tsv"
    s3.put_object(Bucket=BUCKET, Key=f"landing/{PIPELINE}/{name}", Body=garbage)
    run_ = api.wait_for_new_run(ingest_dag, timeout=180, exclude=runs_before)
    run_ = api.wait_for_run(ingest_dag, run_["dag_run_id"], timeout=600)
    mails: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not mails:
        mails = alert_mails("data rejected")
        if not mails:
            time.sleep(3)
    after = bucket_etags(s3)
    alone = {"ingest_state": run_["state"], "tasks": task_states(api, ingest_dag, run_["dag_run_id"]),
             "rejection_mails": mails,
             "changed_or_removed": stack_faults.changed_keys(before, after, allowed=())}
    seen["alone"] = alone
    checks["poisoned_batch_rejected_with_alert_mail"] = run_["state"] == "failed" and bool(mails)
    checks["alert_mail_caught"] = bool(mails)
    # Take it back out of the landing folder, or every later ingest rejects the same batch again.
    s3.delete_object(Bucket=BUCKET, Key=f"landing/{PIPELINE}/{name}")

    # 2. beside good rows
    before = bucket_etags(s3)
    runs_before = {r["dag_run_id"] for r in api.dag_runs(ingest_dag)}
    retrains_before = {r["dag_run_id"] for r in api.dag_runs(retrain_dag)}
    good_rows = sst2_rows("train", 10, offset=400)
    name = "batch-0003-malformed.tsv"
    s3.put_object(Bucket=BUCKET, Key=f"landing/{PIPELINE}/batch-0003-good.tsv", Body=tsv(good_rows))
    s3.put_object(Bucket=BUCKET, Key=f"landing/{PIPELINE}/{name}", Body=garbage)
    run_ = api.wait_for_new_run(ingest_dag, timeout=180, exclude=runs_before)
    run_ = api.wait_for_run(ingest_dag, run_["dag_run_id"], timeout=600)
    reasons = []
    for key in bucket_etags(s3):
        if key.startswith(f"quarantine/{PIPELINE}/") and key.endswith("summary.json") and key not in before:
            summary = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            reasons += [f"{f.get('reason')}: {f.get('detail')}"[:200] for f in summary.get("whole_files", [])
                        if str(f.get("key", "")).endswith(name)]
    after = bucket_etags(s3)
    beside = {"ingest_state": run_["state"], "tasks": task_states(api, ingest_dag, run_["dag_run_id"]),
              "quarantine_reasons": reasons,
              "changed_or_removed": stack_faults.changed_keys(before, after,
                                                              allowed=(f"snapshots/{PIPELINE}/latest.json",))}
    seen["beside_good_rows"] = beside
    checks["malformed_file_quarantined_with_reason"] = run_["state"] == "success" and bool(reasons)
    checks["malformed_file_changed_nothing"] = not alone["changed_or_removed"] and not beside["changed_or_removed"]
    if run_["state"] == "success" and wait_for_retrain:  # the new snapshot's retrain: decide skips training
        retrain = api.wait_for_new_run(retrain_dag, timeout=180, exclude=retrains_before)
        retrain = api.wait_for_run(retrain_dag, retrain["dag_run_id"], timeout=900)
        beside["retrain_after"] = {"state": retrain["state"],
                                   "tasks": task_states(api, retrain_dag, retrain["dag_run_id"])}
    api.close()


def task_image_check(engine: Engine, result: dict[str, Any], checks: dict[str, bool]) -> None:
    """The task image runs as an arbitrary uid in group 0 (as Kubernetes may run it) and validates the specs."""
    proc = run([engine.docker, "run", "--rm", "--user", "12345:0", "--network", "none", TASK_IMAGE,
                "validate-spec", "include/pipelines/sst2.yaml", "include/pipelines/emotion.yaml"],
               timeout=300, check=False)
    probe = run([engine.docker, "run", "--rm", "--user", "12345:0", "--network", "none", "--entrypoint", "python",
                 TASK_IMAGE, "-c", "import torch, transformers, tasks.cli; print(torch.__version__)"],
                timeout=300, check=False)
    result["task_image"] = {"validate_spec_exit": proc.returncode, "torch": probe.stdout.strip()[-40:]}
    checks["task_image_runs"] = proc.returncode == 0 and probe.returncode == 0


# ------------------------------------------------------------------------------------------------------ main

def commit() -> str:
    proc = run(["git", "rev-parse", "--short", "HEAD"], timeout=30, check=False, quiet=True)
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"], timeout=30, check=False, quiet=True)
    return proc.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    global LOG
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/var/tmp/retrain-stack-test",
                        help="cache and log folder (debootstrap tarball, wheelhouse, env file, log)")
    parser.add_argument("--cold", action="store_true",
                        help="build everything from nothing: remove the images, build cache and downloads first")
    parser.add_argument("--python-prefix", help="a CPython 3.11 (>= 3.11.5) for bookworm (default: this one's)")
    parser.add_argument("--wheelhouse", help="an existing wheelhouse folder (default: WORK/wheelhouse, filled once)")
    parser.add_argument("--faults", action="store_true",
                        help="also the run-time fault cases (scripts/stack_faults.py): the scheduler killed "
                             "mid-fine-tune, Postgres restarted mid-run, S3 gone during publish")
    parser.add_argument("--pod-stages", action="store_true",
                        help="also every heavy stage in the task image with the argv, env, user and workdir of the "
                             "pod spec the provider builds (scripts/stack_pods.py)")
    parser.add_argument("--gate-run", action="store_true",
                        help="also a forced retrain with a gate it cannot pass (a second training) and its alert")
    parser.add_argument("--wheelhouse-port", type=int, default=41721,
                        help="where the wheelhouse is served on the docker bridge (fixed, for the build cache)")
    parser.add_argument("--keep-engine", action="store_true", help="leave a dockerd this run started running")
    parser.add_argument("--no-down", action="store_true", help="leave the stack up (debugging); skips the down check")
    args = parser.parse_args(argv)
    # stdout carries the JSON line alone: the pod-stages step builds pods with the provider, and Airflow prints its
    # log lines to the stdout it sees when first imported, so until the result everything goes to stderr.
    result_out, sys.stdout = sys.stdout, sys.stderr

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    LOG = open(work / "stack-test.log", "a")
    started = time.monotonic()
    result: dict[str, Any] = {"stack_test": "docker-compose", "commit": commit(), "cold": args.cold,
                              "seconds": {}, "images_mb": {}}
    checks: dict[str, bool] = {}
    engine = Engine(work)
    stack: Stack | None = None

    def lap(name: str, since: float) -> float:
        result["seconds"][name] = round(time.monotonic() - since, 1)
        return time.monotonic()

    try:
        t = time.monotonic()
        engine.ensure()
        t = lap("engine", t)
        wheelhouse = Path(args.wheelhouse) if args.wheelhouse else work / "wheelhouse"
        if args.cold:
            remove_everything_built(engine, work, wheelhouse if not args.wheelhouse else None)
            t = lap("cold_removal", t)  # deleting ~20 GB of layers is disk time, not build time: its own lap
        if not args.wheelhouse:  # a given wheelhouse is the user's; ours follows requirements.txt
            result["wheelhouse_filled"] = fill_wheelhouse(wheelhouse)
        t = lap("wheelhouse", t)
        gateway = engine.bridge_gateway()
        with WheelhouseServer(wheelhouse, gateway, args.wheelhouse_port) as server:
            pip_args = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": server.url, "PIP_TRUSTED_HOST": gateway}
            built = build_bases(engine, work, pip_args, python_prefix(args.python_prefix), args.cold)
            result["standins_built"] = built
            t = lap("standin_bases", t)
            stack = Stack(engine, work, server.url, gateway)
            stack.prepare()
            stack.compose("build", timeout=1800, nice=True)
            t = lap("airflow_image_build", t)
            result["task_image_context"] = engine.build(
                TASK_IMAGE, ROOT, ROOT / "tasks" / "Dockerfile",
                {"BASE_IMAGE": PYTHON_IMAGE, "TORCH_INDEX_URL": "", **pip_args})
            t = lap("task_image_build", t)
        for image in (AIRFLOW_IMAGE, TASK_IMAGE, *STANDIN_IMAGES):
            result["images_mb"][image] = engine.image_mb(image)
        task_image_check(engine, result, checks)
        t = time.monotonic()
        stack.compose("up", "-d", timeout=600)
        t = lap("up", t)
        result["services"] = stack.wait_healthy(timeout=600)
        checks["all_services_healthy"] = True
        t = lap("healthy", t)
        drive(stack, result, checks, gate_run=args.gate_run)
        t = lap("pipeline", t)
        malformed_file_case(stack, result, checks, wait_for_retrain=args.faults or args.pod_stages)
        t = lap("malformed_file", t)
        result["seconds"]["stack_test_so_far"] = round(time.monotonic() - started, 1)
        if args.faults:
            stack_faults.fault_cases(
                stack, lambda: api_client(stack.secrets["_AIRFLOW_WWW_USER_PASSWORD"]),
                s3_client(stack.secrets["RETRAIN_S3_SECRET_KEY"]), PIPELINE, say, run, result, checks)
            t = lap("faults", t)
        if args.pod_stages:
            secret = stack.secrets["RETRAIN_S3_SECRET_KEY"]
            stack_pods.pod_stages(
                api=api_client(stack.secrets["_AIRFLOW_WWW_USER_PASSWORD"]), s3=s3_client(secret), bucket=BUCKET,
                pipeline=PIPELINE, run_id=result["retrain_run"]["run_id"], spec_path=stack.pipelines / "sst2.yaml",
                work=work, docker=engine.docker, image=TASK_IMAGE, network=f"{PROJECT}_default",
                # What the retrain-s3 secret gives a pod (docs/operations.md, Kubernetes mode).
                secret_env={"AWS_ACCESS_KEY_ID": "retrain", "AWS_SECRET_ACCESS_KEY": secret,
                            "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "us-east-1"},
                run=run, say=say, result=result, checks=checks)
            lap("pod_stages", t)
    except Failed as exc:
        result["error"] = str(exc)[-4000:]
        say(f"FAILED: {exc}")
        if stack is not None:
            result["logs_tail"] = stack.logs(tail=25)[-6000:]
    except Exception as exc:  # noqa: BLE001 - any error is reported in the JSON line
        result["error"] = f"{type(exc).__name__}: {exc}"[-4000:]
        say(f"FAILED: {result['error']}")
    finally:
        if stack is not None and not args.no_down:
            t = time.monotonic()
            stack.compose("down", "-v", "--remove-orphans", timeout=600, check=False)
            left = stack.leftovers()
            result["left_after_down"] = {k: len(v) for k, v in left.items()}
            checks["down_leaves_nothing"] = not any(left.values())
            lap("down", t)
        if not args.keep_engine:
            engine.stop()
        result["seconds"]["total"] = round(time.monotonic() - started, 1)
        result["checks"] = checks
        expected = {"task_image_runs", "all_services_healthy", "no_import_errors", "registry_page_answers",
                    "ingest_success", "retrain_asset_triggered_success", "champion_in_bucket",
                    "alert_mail_caught", "poisoned_batch_rejected_with_alert_mail",
                    "malformed_file_quarantined_with_reason", "malformed_file_changed_nothing", "down_leaves_nothing"}
        if args.gate_run:
            expected |= {"gate_failure_alert_mail_caught", "gate_failure_kept_the_champion"}
        if args.faults:
            expected |= set(stack_faults.judge({}, None))
        if args.pod_stages:
            expected |= {"pod_stages_ran_in_task_image", "failing_pod_stage_reaches_the_operator"}
        result["ok"] = "error" not in result and expected <= set(checks) and all(checks.values())
        LOG.write(json.dumps(result) + "\n")
        LOG.close()
        sys.stdout = result_out
        print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
