"""A real Airflow for tests: api-server, scheduler, dag-processor and triggerer as separate processes on
127.0.0.1, with a temporary AIRFLOW_HOME and the LocalExecutor. The metadata database is PostgreSQL, as in
production: a database of its own on a private server that tests/pg_server.py starts on first use; where no
PostgreSQL is installed it falls back to SQLite (Airflow 3 runs the LocalExecutor on it) and says so
(``LIVE_AIRFLOW_DB`` chooses, see tests/pg_server.py).

Used by tests/test_live_airflow.py; usable by hand too::

    with LiveAirflow(tmp / "airflow", dags_folder=ROOT / "dags") as af:
        af.wait_healthy()
        client = af.client()                  # POST /auth/token, like any API client
        client.unpause("ingest_sst2")

Every process is started in its own session and tagged with a unique environment variable. ``stop()`` ends
the components' process groups, every descendant seen while they ran, and every process that still carries
the tag (task supervisors call setpgid and stage subprocesses may start their own sessions, so killing the
component groups alone could leave orphans). It runs from ``__exit__`` and from pytest fixture teardown, so it
runs when a test fails too. Nothing here listens on anything but 127.0.0.1: the log servers are skipped
(``--skip-serve-logs``; all logs are local files under AIRFLOW_HOME/logs) and the scheduler health server is off.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import httpx

import pg_server

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TAG_VAR = "LIVE_AIRFLOW_TAG"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AirflowError(RuntimeError):
    pass


@dataclass
class Response:
    status: int
    body: Any
    text: str


class ApiClient:
    """A thin REST API v2 client holding the bearer token it got from POST /auth/token."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url
        # trust_env=False: never route 127.0.0.1 through a proxy from the environment.
        self._http = httpx.Client(base_url=base_url, timeout=timeout, trust_env=False,
                                  headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        resp = self._http.request(method, path, **kwargs)
        try:
            body = resp.json()
        except ValueError:
            body = None
        return Response(resp.status_code, body, resp.text)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        # SQLite lets one writer in at a time: a read can hit a 500 while the scheduler writes. Retry
        # idempotent reads a few times, as a real client would; never writes.
        for _attempt in range(4):
            if method != "GET" or resp.status < 500:
                break
            time.sleep(1.0)
            resp = self.request(method, path, **kwargs)
        if resp.status >= 400:
            raise AirflowError(f"{method} {path} -> {resp.status}: {resp.text[:2000]}")
        return resp.body

    # ---- the few calls the tests make, named after what a user does in the UI

    def get_dag(self, dag_id: str) -> Response:
        return self.request("GET", f"/api/v2/dags/{dag_id}")

    def unpause(self, dag_id: str) -> Any:
        return self.ok("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, **extra: Any) -> Response:
        """What the UI's trigger form sends: a logical date (null: "now") and the conf."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        body.update(extra)
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def dag_runs(self, dag_id: str, **params: Any) -> list[dict[str, Any]]:
        params.setdefault("limit", 100)
        return self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                       params={"limit": 100})["task_instances"]

    def upstream_asset_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/upstreamAssetEvents")["asset_events"]

    def import_errors(self) -> list[dict[str, Any]]:
        return self.ok("GET", "/api/v2/importErrors", params={"limit": 100})["import_errors"]

    def wait_for_dag(self, dag_id: str, timeout: float, expected_errors: tuple[str, ...] = ()) -> dict[str, Any]:
        """Wait until the dag-processor has parsed and serialized the DAG; import errors fail fast, except those
        of files whose names end with one of ``expected_errors``."""
        deadline = time.monotonic() + timeout
        while True:
            resp = self.get_dag(dag_id)
            if resp.status == 200:
                details = self.request("GET", f"/api/v2/dags/{dag_id}/details")
                if details.status == 200:
                    return resp.body
            errors = [e for e in self.import_errors() if not e["filename"].endswith(expected_errors)]
            if errors:
                raise AirflowError(f"import errors while waiting for {dag_id}: "
                                   + "; ".join(f"{e['filename']}: {e['stack_trace'][-1500:]}" for e in errors))
            if time.monotonic() > deadline:
                raise AirflowError(f"DAG {dag_id} was not parsed within {timeout}s (last: {resp.status} {resp.text[:300]})")
            time.sleep(2)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float,
                     states: Iterable[str] = ("success", "failed")) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        wanted = set(states)
        while True:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in wanted:
                return run
            if time.monotonic() > deadline:
                tis = {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}
                raise AirflowError(f"{dag_id}/{run_id} still {run['state']} after {timeout}s; tasks: {tis}")
            time.sleep(2)

    def wait_for_new_run(self, dag_id: str, timeout: float, exclude: Iterable[str] = (),
                         run_type: str | None = None) -> dict[str, Any]:
        """The first run of dag_id not in ``exclude`` (optionally of one run type), as soon as it exists."""
        deadline = time.monotonic() + timeout
        seen = set(exclude)
        while True:
            params = {"run_type": run_type} if run_type else {}
            fresh = [r for r in self.dag_runs(dag_id, **params) if r["dag_run_id"] not in seen]
            if fresh:
                return sorted(fresh, key=lambda r: r["run_after"])[0]
            if time.monotonic() > deadline:
                raise AirflowError(f"no new {run_type or ''} run of {dag_id} within {timeout}s")
            time.sleep(2)


class LiveAirflow:
    """Start and stop a real Airflow. All settings are environment variables (no airflow.cfg edits)."""

    def __init__(self, home: Path, dags_folder: Path, *, plugins_folder: Path | None = None,
                 env: dict[str, str] | None = None, components: Iterable[str] = COMPONENTS,
                 python_path: Iterable[Path] = (), username: str = "admin",
                 drop_env_prefixes: Iterable[str] = (), max_lifetime: float = 1800) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.components = tuple(components)
        # A hard cap on every component's life, enforced by coreutils `timeout` around it, so that even a
        # SIGKILLed test run (where no teardown can run) leaves nothing behind for long.
        self.max_lifetime = max_lifetime
        self.username = username
        self.password = secrets.token_urlsafe(12)
        self.tag = uuid.uuid4().hex
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, Any] = {}
        self._seen_pids: set[int] = set()
        self._clients: list[ApiClient] = []
        self.database = pg_server.metadata_database(f"airflow_{self.tag}", self.home / "airflow.db")
        if self.database.kind == "sqlite" and "FALLBACK" in self.database.note:
            warnings.warn(f"LiveAirflow metadata database: {self.database.note}", stacklevel=2)

        # The passwords file exists before the api-server starts, so SimpleAuthManager uses our password
        # instead of generating one (the same file the docker-compose init service writes).
        passwords = self.home / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({username: self.password}) + "\n")
        passwords.chmod(0o600)

        # The caller's AIRFLOW__* settings never leak in; drop_env_prefixes removes more (e.g. "AWS_", so that
        # credentials can only come from an Airflow connection).
        dropped = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", *drop_env_prefixes)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        self.env.update({
            TAG_VAR: self.tag,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder or self.home / "plugins"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database.url,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            # Shared by every component: the scheduler signs task tokens, the api-server checks them.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_ISSUER": "live-airflow-test",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # Each file is parsed once at start, then again only when it changes (file_parsing_sort_mode's default,
            # modified_time, queues a changed file at the next refresh): re-parsing unchanged files every 30 s was
            # ~20% of this Airflow's CPU in the test module. A file's DAGs are never deactivated for not being
            # re-parsed (Airflow compares their last parse with the file's own).
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
        })
        extra_path = [str(p) for p in python_path]
        if extra_path:
            self.env["PYTHONPATH"] = os.pathsep.join(extra_path + [self.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.env.update(env or {})
        self.airflow = str(Path(sys.executable).with_name("airflow"))

    # ---------------------------------------------------------------- lifecycle

    def _run(self, args: list[str], timeout: float) -> None:
        log = self.home / f"{args[0]}-{args[1] if len(args) > 1 else ''}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([self.airflow, *args], env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.home)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
                raise AirflowError(f"airflow {' '.join(args)} ran past {timeout}s; log:\n{self.tail(log)}") from None
        if rc != 0:
            raise AirflowError(f"airflow {' '.join(args)} exited {rc}; log:\n{self.tail(log)}")

    def start(self, migrate_timeout: float = 240) -> "LiveAirflow":
        self._run(["db", "migrate"], timeout=migrate_timeout)
        for name in self.components:
            args = {
                "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                "scheduler": ["scheduler", "--skip-serve-logs"],
                "dag-processor": ["dag-processor"],
                "triggerer": ["triggerer", "--skip-serve-logs"],
            }[name]
            fh = open(self.home / f"{name}.log", "wb")
            self._logs[name] = fh
            self.procs[name] = subprocess.Popen([*self._bounded(), self.airflow, *args], env=self.env, stdout=fh,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, cwd=self.home)
        return self

    def _bounded(self) -> list[str]:
        timeout = shutil.which("timeout")
        return [timeout, "--kill-after=10", f"{int(self.max_lifetime)}s"] if timeout else []

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AirflowError(f"airflow {name} exited with {proc.returncode}; log:\n"
                                   f"{self.tail(self.home / f'{name}.log')}")

    def health(self) -> dict[str, Any] | None:
        try:
            resp = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5, trust_env=False)
        except httpx.HTTPError:
            return None
        return resp.json() if resp.status_code == 200 else None

    def wait_healthy(self, timeout: float = 180) -> dict[str, Any]:
        """Until /api/v2/monitor/health reports every started component healthy (a bounded poll)."""
        deadline = time.monotonic() + timeout
        wanted = {"metadatabase"} | {
            {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}[c]
            for c in self.components if c != "api-server"
        }
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            self._remember_descendants()
            last = self.health()
            if last and all((last.get(k) or {}).get("status") == "healthy" for k in wanted):
                return last
            time.sleep(1)
        raise AirflowError(f"Airflow not healthy after {timeout}s: {last}\n" + self.logs_tail())

    def token(self) -> str:
        """POST /auth/token with the user's name and password: what any API client does."""
        resp = httpx.post(f"{self.base_url}/auth/token", timeout=30, trust_env=False,
                          json={"username": self.username, "password": self.password})
        if resp.status_code != 201:
            raise AirflowError(f"POST /auth/token -> {resp.status_code}: {resp.text[:500]}")
        return resp.json()["access_token"]

    def client(self) -> ApiClient:
        client = ApiClient(self.base_url, self.token())
        self._clients.append(client)
        return client

    # ---------------------------------------------------------------- teardown

    def _remember_descendants(self) -> None:
        import psutil

        for proc in self.procs.values():
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    self._seen_pids.add(child.pid)
            except psutil.Error:
                pass

    def _tagged_pids(self) -> set[int]:
        """Our processes that still carry this instance's tag (orphans included)."""
        import psutil

        out: set[int] = set()
        me = os.getuid()
        for proc in psutil.process_iter(["pid", "uids"]):
            try:
                if proc.info["uids"] is None or proc.info["uids"].real != me or proc.pid == os.getpid():
                    continue
                if proc.environ().get(TAG_VAR) == self.tag:
                    out.add(proc.pid)
            except psutil.Error:
                continue
        return out

    def stop(self, grace: float = 8) -> None:
        import psutil

        for client in self._clients:
            client.close()
        self._remember_descendants()
        targets = self._seen_pids | self._tagged_pids() | {p.pid for p in self.procs.values()}
        # SIGTERM the component groups first (clean shutdown), then every other process we know of.
        for proc in self.procs.values():
            if proc.poll() is None:
                _killpg(proc.pid, signal.SIGTERM)
        for pid in targets:
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left gets SIGKILL: groups, known descendants, and anything still tagged.
        for _ in range(3):
            left = {pid for pid in targets | self._tagged_pids() if psutil.pid_exists(pid)}
            for proc in self.procs.values():
                _killpg(proc.pid, signal.SIGKILL)
            for pid in left:
                if _pgid(pid) == pid:  # a group leader of its own (task supervisors call setpgid)
                    _killpg(pid, signal.SIGKILL)
                _kill(pid, signal.SIGKILL)
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            if not self._tagged_pids():
                break
            time.sleep(0.5)
        for fh in self._logs.values():
            fh.close()

    def alive_pids(self) -> set[int]:
        """Processes from this instance that are still running (empty after stop())."""
        import psutil

        alive = {p.pid for p in self.procs.values() if p.poll() is None}
        alive |= {pid for pid in self._tagged_pids() if psutil.pid_exists(pid)}
        return alive

    def __enter__(self) -> "LiveAirflow":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- diagnostics

    @staticmethod
    def tail(path: Path, chars: int = 4000) -> str:
        try:
            return path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return f"({path} missing)"

    def logs_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {name} ---\n{self.tail(self.home / f'{name}.log', chars)}" for name in self.procs)

    def task_logs(self, dag_id: str, run_id: str, chars: int = 4000) -> str:
        """The task log files of one run (local files; nothing is served over the network)."""
        out = []
        base = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        for path in sorted(base.rglob("*.log")) if base.is_dir() else []:
            out.append(f"--- {path.relative_to(base)} ---\n{self.tail(path, chars)}")
        return "\n".join(out) or f"(no task logs under {base})"


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
