"""The champion's moves as Airflow Asset events: what an event says, and how a move made outside a DAG task gets
one. No Airflow import (tasks/ runs in the task image); plain HTTP to Airflow's REST API.

Every move of ``models/<pipeline>/champion.json`` emits an event on the Asset ``<pipeline>_champion`` (uri: the
pointer's own URI), so a team's deploy DAG schedules on it (dags/deploy_champion.py is the example):

* a promotion in the retrain DAG (gates passed, or approved, or a failed gate overridden): the DAG's
  ``announce_champion`` task, whose outlet is the Asset (plugins/pipeline_dags.py);
* a rollback from the registry page: the api-server's own asset manager, in process, as the REST API's
  ``POST /api/v2/assets/events`` does it (plugins/registry_ui_app.py);
* a rollback or promotion from the CLI (``python -m tasks registry rollback``): ``POST /api/v2/assets/events``
  with a token from ``POST /auth/token``, when ``RETRAIN_AIRFLOW_API_URL`` is set (below). Without it the CLI
  says that no event was sent; the move itself never depends on the event (it is done and audited first).

The event's ``extra`` (``event_extra``): pipeline, event (promote, promote-approved, promote-overridden, rollback,
promote-manual), version, version_uri, previous, promoted_at, headline golden-set metrics of the new champion,
the approval decision when a person answered, and an ``idempotency_key`` (pipeline:version:promoted_at) a
receiver uses to drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tasks import storage
from tasks.manifests import VersionManifest, read_version_manifest

log = logging.getLogger(__name__)

API_URL_ENV = "RETRAIN_AIRFLOW_API_URL"           # e.g. http://airflow-apiserver:8080
TOKEN_ENV = "RETRAIN_AIRFLOW_TOKEN"               # a bearer token, or:
USER_ENV, PASSWORD_ENV = "RETRAIN_AIRFLOW_USERNAME", "RETRAIN_AIRFLOW_PASSWORD"  # for POST /auth/token
HEADLINE = ("golden_accuracy", "golden_accuracy_ci", "golden_macro_f1", "latency_ms_p95", "size_weights_mb")


def asset_name(pipeline: str) -> str:
    return f"{pipeline}_champion"


def headline_metrics(manifest: VersionManifest) -> dict[str, Any]:
    metrics = manifest.evaluation.get("metrics") or {}
    return {role: {k: m[k] for k in HEADLINE if k in m} for role in ("teacher", "student")
            if isinstance(m := metrics.get(role), dict)}


def event_extra(pipeline: str, pointer: dict[str, Any], event: str, manifest: VersionManifest | None = None,
                actor: str | None = None) -> dict[str, Any]:
    """What the Asset event carries about one move of the champion pointer."""
    manifest = manifest or VersionManifest()
    extra = {
        "pipeline": pipeline,
        "event": event,
        "version": pointer["version"],
        "version_uri": pointer.get("version_uri"),
        "previous": pointer.get("previous") if event != "rollback" else pointer.get("rolled_back_from"),
        "promoted_at": pointer.get("promoted_at"),
        "snapshot_id": pointer.get("snapshot_id"),
        "metrics": headline_metrics(manifest),
        "idempotency_key": f"{pipeline}:{pointer['version']}:{pointer.get('promoted_at')}",
    }
    if actor:
        extra["actor"] = actor
    if manifest.approval:
        approval = manifest.approval
        extra["approval"] = {k: approval.get(k) for k in ("decision", "responded_by", "reason")}
    return extra


def extra_for(spec: Any, pointer: dict[str, Any], event: str, actor: str | None = None) -> dict[str, Any]:
    try:  # the manifest read directly (registry.read_manifest's path): the registry imports this module
        manifest = read_version_manifest(spec.layout.version(pointer["version"]))
    except storage.NotFound:
        manifest = None
    return event_extra(spec.name, pointer, event, manifest, actor)


# ---------------------------------------------------------------- the CLI's way: Airflow's REST API


class EventNotSent(RuntimeError):
    pass


def _request(method: str, url: str, body: dict | None = None, token: str | None = None,
             timeout: float = 15) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an env proxy
    try:
        with opener.open(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise EventNotSent(f"{method} {url} -> {exc.code}: {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EventNotSent(f"{method} {url}: {exc}") from None


def _token(base: str) -> str:
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if not (user and password):
        raise EventNotSent(f"set {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV}, to authenticate to {base}")
    return _request("POST", f"{base}/auth/token", {"username": user, "password": password})["access_token"]


def post_event(spec: Any, extra: dict[str, Any], base_url: str | None = None) -> dict[str, Any]:
    """``POST /api/v2/assets/events`` on the pipeline's champion Asset; returns the created event. The Asset must
    be known to Airflow (the retrain DAG declares it as an outlet, so it is once that DAG was parsed)."""
    base = (base_url or os.environ.get(API_URL_ENV) or "").rstrip("/")
    if not base:
        raise EventNotSent(f"{API_URL_ENV} is not set")
    token = _token(base)
    name, uri = asset_name(spec.name), storage.normalize(spec.layout.champion)
    query = urllib.parse.urlencode({"name_pattern": name, "limit": 100})
    assets = _request("GET", f"{base}/api/v2/assets?{query}", token=token).get("assets", [])
    match = [a for a in assets if a.get("name") == name]  # names are unique in Airflow 3; uris it normalizes
    if not match:
        raise EventNotSent(f"Airflow knows no Asset {name} ({uri}); is the retrain DAG of {spec.name} parsed?")
    return _request("POST", f"{base}/api/v2/assets/events", {"asset_id": match[0]["id"], "extra": extra}, token)


def announce_from_cli(spec: Any, pointer: dict[str, Any], event: str, actor: str | None = None) -> bool:
    """After a CLI move: send the event if configured, else say so. Never raises: the move is done and audited."""
    if not os.environ.get(API_URL_ENV):
        log.info("no champion Asset event sent (%s is not set); deploy DAGs scheduled on %s will not run for this "
                 "move", API_URL_ENV, asset_name(spec.name))
        return False
    try:
        created = post_event(spec, extra_for(spec, pointer, event, actor))
    except EventNotSent as exc:
        log.warning("the champion moved, but its Asset event was not sent: %s", exc)
        return False
    log.info("champion Asset event %s sent for %s (%s)", created.get("id"), pointer["version"], asset_name(spec.name))
    return True


# ---------------------------------------------------------------- the optional signed webhook


SIGNATURE_HEADER = "X-Retrain-Signature"          # sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">
TIMESTAMP_HEADER = "X-Retrain-Timestamp"          # unix seconds; a receiver rejects old ones (replays)
IDEMPOTENCY_HEADER = "X-Retrain-Idempotency-Key"  # pipeline:version:promoted_at; drop a key seen before


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 over ``<timestamp>.<body>`` with the shared secret (the scheme Stripe and
    GitHub use; the timestamp in the signed text makes a replayed request detectable)."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (constant-time compare)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def webhook_request(secret: str, extra: dict[str, Any], now: float | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(extra, sort_keys=True, separators=(",", ":")).encode()
    timestamp = str(int(now if now is not None else time.time()))
    return body, {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                  SIGNATURE_HEADER: sign(secret, timestamp, body),
                  IDEMPOTENCY_HEADER: str(extra.get("idempotency_key", ""))}


def post_webhook(url: str, secret: str, extra: dict[str, Any], timeout: float = 10) -> int:
    """One signed POST; raises EventNotSent on a non-2xx answer or no answer (the caller retries)."""
    body, headers = webhook_request(secret, extra)
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        raise EventNotSent(f"POST {url} -> {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EventNotSent(f"POST {url}: {exc}") from None
