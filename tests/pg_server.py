"""The metadata database of the running-Airflow tests (tests/live_airflow.py): PostgreSQL, as in production.

Each test process that starts a LiveAirflow gets one private PostgreSQL server, started here on first use from
the server binaries of Debian's ``postgresql`` package (``/usr/lib/postgresql/<major>/bin``; .ci/run installs
it): a fresh cluster in a temporary folder, listening on 127.0.0.1 only, on a free port, with a random
password. Every LiveAirflow gets a database of its own in it. Nothing is shared with a system cluster, so
developers and parallel test workers never collide, and no root and no running service is needed.

``LIVE_AIRFLOW_DB`` chooses:
- unset or ``auto``: the private server when the binaries are found, else SQLite, with the reason printed in
  the test session's header (tests/conftest.py) and as a warning;
- ``postgres``: the private server, and an error when it cannot start;
- ``sqlite``: SQLite (Airflow 3 runs the LocalExecutor on it; what a developer without PostgreSQL gets);
- a ``postgresql://user:password@host:port/db`` URL: that existing server (a database is created per Airflow).

The server runs under coreutils ``timeout`` like the Airflow components, so even a SIGKILLed test run leaves
nothing behind for long; it is stopped at interpreter exit.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ENV_VAR = "LIVE_AIRFLOW_DB"
# Longer than any test module (the LiveAirflow components are capped at 30 min each).
MAX_LIFETIME_S = 3 * 3600


@dataclass(frozen=True)
class Database:
    url: str           # what AIRFLOW__DATABASE__SQL_ALCHEMY_CONN gets
    kind: str          # "postgresql" or "sqlite"
    note: str          # one line for the test output


def _bin_dir() -> Path | None:
    """The newest PostgreSQL server binaries: PATH first, then Debian's versioned folders."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    dirs.sort(key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0), reverse=True)
    return dirs[0] if dirs else None


def _run_as() -> list[str] | None:
    """PostgreSQL refuses to run as root: as root, run its binaries as the ``postgres`` system user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    setpriv = shutil.which("setpriv")
    if setpriv:  # execs in place (no extra process between us and the server)
        return [setpriv, "--reuid=postgres", "--regid=postgres", "--init-groups"]
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--"] if runuser else None


def choice() -> str:
    return os.environ.get(ENV_VAR, "auto").strip() or "auto"


def unavailable_reason() -> str | None:
    """Why the private server cannot start here (None when it can)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (requirements-test.txt pins psycopg2-binary)"
    if _bin_dir() is None:
        return "no PostgreSQL server binaries (initdb) found; install Debian's postgresql package"
    if _run_as() is None:
        return "running as root and there is no 'postgres' system user to run the server as"
    return None


def describe() -> str:
    """One line for the test session header: which database the running-Airflow tests will use."""
    mode = choice()
    if mode == "sqlite":
        return f"sqlite ({ENV_VAR}=sqlite)"
    if mode not in ("auto", "postgres"):
        return f"postgresql at {_redact(mode)} ({ENV_VAR})"
    reason = unavailable_reason()
    if reason is None:
        return f"postgresql (a private server from {_bin_dir()}, on 127.0.0.1, started by tests/pg_server.py)"
    return f"sqlite, FALLBACK: {reason}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """One private PostgreSQL cluster: initdb, start, create databases, stop."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        run_as = _run_as()
        if bin_dir is None or run_as is None:
            raise RuntimeError(unavailable_reason())
        self.bin_dir = bin_dir
        self.run_as = run_as
        self.dir = Path(tempfile.mkdtemp(prefix="live-airflow-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.user = "airflow"
        self.password = secrets.token_urlsafe(16)
        self.proc: subprocess.Popen | None = None
        self._log = None

    def _cmd(self, name: str, *args: str) -> list[str]:
        return [*self.run_as, str(self.bin_dir / name), *args]

    def start(self, timeout: float = 60) -> "PgServer":
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.run_as:  # root: the cluster folder belongs to the user the server runs as
            pg = pwd.getpwnam("postgres")
            for path in (self.dir, pwfile):
                os.chown(path, pg.pw_uid, pg.pw_gid)
        pwfile.chmod(0o600)
        init = subprocess.run(
            self._cmd("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"),
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        pwfile.unlink()
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stdout[-1500:]}{init.stderr[-1500:]}")
        timeout_bin = shutil.which("timeout")
        bounded = [timeout_bin, "--kill-after=10", f"{MAX_LIFETIME_S}s"] if timeout_bin else []
        self._log = open(self.dir / "postgres.log", "wb")
        # Durability settings off: a throwaway test cluster (fsync and full pages cost seconds per migration).
        self.proc = subprocess.Popen(
            [*bounded, *self._cmd("postgres", "-D", str(self.data), "-p", str(self.port),
                                  "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                                  "-c", "max_connections=300", "-c", "fsync=off",
                                  "-c", "synchronous_commit=off", "-c", "full_page_writes=off")],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _connect(self, dbname: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname=dbname, connect_timeout=5)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self._connect().close()
                return
            except Exception as exc:  # noqa: BLE001 - any connect error means "not yet"
                last = str(exc).strip()
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"postgres not ready after {timeout}s ({last}): {self.log_tail()}")

    def create_database(self, name: str) -> str:
        conn = self._connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{name}"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.dir / "postgres.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no postgres log)"

    def stop(self, grace: float = 15) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), then SIGKILL; the cluster folder is removed."""
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.dir, ignore_errors=True)


_SERVER: PgServer | None = None


def _server() -> PgServer:
    global _SERVER
    if _SERVER is None:
        _SERVER = PgServer().start()
        atexit.register(stop_server)
    return _SERVER


def stop_server() -> None:
    global _SERVER
    if _SERVER is not None:
        _SERVER.stop()
        _SERVER = None


def server_pids() -> set[int]:
    """The private server's process (for leak checks); empty when none runs."""
    if _SERVER is None or _SERVER.proc is None or _SERVER.proc.poll() is not None:
        return set()
    return {_SERVER.proc.pid}


def metadata_database(name: str, sqlite_path: Path) -> Database:
    """A fresh metadata database named ``name`` for one Airflow, per LIVE_AIRFLOW_DB (see the module doc)."""
    mode = choice()
    sqlite = Database(f"sqlite:///{sqlite_path}", "sqlite", "")
    if mode == "sqlite":
        return Database(sqlite.url, "sqlite", f"sqlite ({ENV_VAR}=sqlite)")
    if mode not in ("auto", "postgres"):  # an existing server
        import psycopg2

        conn = psycopg2.connect(mode, connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        parts = urlsplit(mode)
        url = urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{name}"))
        return Database(url, "postgresql", f"postgresql at {_redact(mode)}")
    reason = unavailable_reason()
    if reason is not None:
        if mode == "postgres":
            raise RuntimeError(f"{ENV_VAR}=postgres but {reason}")
        return Database(sqlite.url, "sqlite", f"sqlite, FALLBACK: {reason}")
    server = _server()
    return Database(server.create_database(name), "postgresql",
                    f"postgresql (private server on 127.0.0.1:{server.port})")
