"""Helpers for the decision-side tests: a tiny pipeline spec, snapshot and golden set in storage, and tiny
BERT classifiers trained in seconds on real SST-2 rows (optionally with poisoned labels)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tasks.data import snapshots
from tasks import storage
from tasks.spec import dump, parse_spec


def make_spec(root: str, **gates: Any):
    raw = {
        "name": "sst2",
        "storage": {"uri": root},
        "data": {"labels": ["negative", "positive"]},
        "golden": {"source_uri": "{storage}/reference/{name}/golden.tsv"},
        "model": {"max_length": 48},
        "gates": {"min_accuracy": 0.0, "min_macro_f1": 0.0, "min_accuracy_over_baseline": None,
                  "min_macro_f1_over_baseline": None, "min_retention": 0.0, "latency_samples": 5, **gates},
        "alerts": {"email": ["oncall@example.com"], "smtp_conn_id": "smtp_test", "slack_conn_id": "slack_test",
                   "from_email": "airflow@example.com", "airflow_base_url": "http://airflow.example:8080"},
    }
    return parse_spec(raw)


def write_run(spec, run_key: str) -> str:
    run = spec.layout.run(run_key)
    storage.write_json(storage.join(run, "spec.json"), dump(spec))
    return run


def write_snapshot(spec, rows: list[tuple[str, int]], golden_rows: list[tuple[str, int]],
                   snapshot_id: str = "snap-0001") -> str:
    import pandas as pd

    golden_uri = storage.join(spec.layout.golden, "g1")
    storage.write_bytes(storage.join(golden_uri, "data.parquet"), snapshots.parquet_bytes(
        pd.DataFrame({"text": [t for t, _ in golden_rows], "label": [l for _, l in golden_rows]})))
    frame = pd.DataFrame({"text": [t for t, _ in rows], "label": [l for _, l in rows],
                          "split": ["holdout" if i % 5 == 0 else "train" for i in range(len(rows))],
                          "batch": ["b1"] * len(rows)})
    storage.write_bytes(storage.join(spec.layout.snapshots, "parts", "b1.parquet"), snapshots.parquet_bytes(frame))
    snap = storage.join(spec.layout.snapshots, snapshot_id)
    storage.write_json(snapshots.manifest_uri(snap), {
        "snapshot_id": snapshot_id, "parts": ["parts/b1.parquet"], "golden_uri": golden_uri, "golden_id": "g1",
        "rows": len(frame), "new_rows": len(frame),
        "label_counts": {name: int((frame["label"] == i).sum()) for i, name in enumerate(spec.data.labels)},
        "split_counts": {s: int((frame["split"] == s).sum()) for s in ("train", "holdout")}})
    return snap


def poison(rows: list[tuple[str, int]], fraction: float, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    idx = set(rng.sample(range(len(rows)), int(round(fraction * len(rows)))))
    return [(t, 1 - l) if i in idx else (t, l) for i, (t, l) in enumerate(rows)]


def train_tiny(base_dir: Path, rows: list[tuple[str, int]], out_dir: Path, *, epochs: int = 3, seed: int = 0,
               lr: float = 3e-3, batch_size: int = 16, max_length: int = 48) -> Path:
    """Fine-tune the tiny random-init BERT on (text, label) rows; a few seconds on one CPU core."""
    import torch

    from tasks.train import modeling

    torch.manual_seed(seed)
    model = modeling.load_classifier(base_dir)
    tokenizer = modeling.load_tokenizer(base_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    model.train()
    for _ in range(epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start:start + batch_size]]
            enc = tokenizer([t for t, _ in batch], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([l for _, l in batch])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return modeling.save_model(model, tokenizer, out_dir)


# ---------------------------------------------------------------- real alert receivers on 127.0.0.1


class SmtpReceiver:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps every message it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        from conftest import free_port

        self.messages: list[dict[str, Any]] = []
        receiver = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
                import email

                msg = email.message_from_bytes(envelope.content)
                parts = [p.get_payload(decode=True).decode(p.get_content_charset() or "utf-8")
                         for p in msg.walk() if not p.is_multipart() and p.get_content_maintype() == "text"]
                receiver.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                          "subject": str(email.header.make_header(email.header.decode_header(msg["Subject"]))),
                                          "body": "\n".join(parts)})
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, ready_timeout=10)

    def __enter__(self) -> "SmtpReceiver":
        self.controller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.controller.stop()

    def conn_json(self, from_email: str = "airflow@example.com") -> str:
        import json

        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": self.port, "login": "", "password": "",
                           "extra": {"disable_ssl": True, "disable_tls": True, "from_email": from_email,
                                     "timeout": 10, "retry_limit": 0}})


class WebhookReceiver:
    """A local HTTP server standing in for Slack's incoming webhook (or any webhook): records each POSTed JSON
    body, with its headers and raw text; answers 503 to the first ``fail_first`` POSTs (a receiver that is down)."""

    def __init__(self, fail_first: int = 0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posts: list[dict[str, Any]] = []
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                import json

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if receiver.refused < fail_first:
                    receiver.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.posts.append({"path": self.path, "json": json.loads(body or b"{}"),
                                       "headers": dict(self.headers), "body": body.decode("utf-8")})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def conn_json(self) -> str:
        import json

        return json.dumps({"conn_type": "slackwebhook", "password": f"http://127.0.0.1:{self.port}/services/T0/B0/X"})


def local_pipeline_env(moto_server, pipelines_dir: Path, smtp: SmtpReceiver, hook: WebhookReceiver) -> dict[str, str]:
    """The environment of the DAGs under ``dag.test()`` with local stages: storage on moto's S3, specs from
    ``pipelines_dir``, the alert connections pointed at the test SMTP server and Slack webhook receiver."""
    return {"AWS_ENDPOINT_URL": moto_server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "STORAGE_MAX_ATTEMPTS": "2", "RETRAIN_STAGE_MODE": "local",
            "RETRAIN_PIPELINES_DIR": str(pipelines_dir),
            "AIRFLOW_CONN_SMTP_TEST": smtp.conn_json(),
            "AIRFLOW_CONN_SLACK_TEST": hook.conn_json()}


class FakeTI:
    """The part of a RuntimeTaskInstance the alerts use: ids, tries and xcom_pull over a dict of XComs."""

    def __init__(self, task_id: str, xcoms: dict[tuple[str, str | None], Any], try_number: int = 1,
                 max_tries: int = 0, dag_id: str = "retrain_sst2", run_id: str = "scheduled__2026-11-23T02:00:00+00:00"):
        self.task_id, self.try_number, self.max_tries = task_id, try_number, max_tries
        self.dag_id, self.run_id = dag_id, run_id
        self._xcoms = xcoms

    def xcom_pull(self, task_ids: str, key: str | None = None):
        return self._xcoms.get((task_ids, key))


def failure_context(ti: FakeTI, exception: BaseException) -> dict[str, Any]:
    from types import SimpleNamespace

    from airflow.sdk import DAG

    dag_run = SimpleNamespace(dag_id=ti.dag_id, run_id=ti.run_id, conf={})
    return {"ti": ti, "task_instance": ti, "dag_run": dag_run, "run_id": ti.run_id, "exception": exception,
            "dag": DAG(dag_id=ti.dag_id, schedule=None), "params": {}}
