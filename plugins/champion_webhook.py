"""The optional signed webhook of the champion's moves: ``champion_webhook_<pipeline>``, a DAG scheduled on the
champion Asset (so every move gets one, whoever made it: the retrain DAG, the registry page, the CLI), that POSTs
the event's extra to a URL, signed with HMAC-SHA256 (``tasks.decide.champion_events.sign``).

Declared only when the spec sets ``events.webhook_conn_id``. The connection holds the URL (``host``: a full
``https://...`` URL, or host/schema/port/path the usual way) and the shared secret (``password``). Airflow's retries
with exponential backoff do the retrying; the webhook runs after the move, in its own DAG, so it never blocks or
undoes a promotion. Each request carries ``X-Retrain-Idempotency-Key`` (pipeline:version:promoted_at): a receiver
drops a key it has seen (a retried POST, or a rollback and re-promotion of the same pointer write never repeat it).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from airflow.sdk import DAG, Asset, task

if TYPE_CHECKING:  # Airflow's plugins manager imports this file too, maybe before the tasks package is on sys.path
    from tasks.spec import PipelineSpec

log = logging.getLogger("champion_webhook")


def webhook_url(conn) -> str:
    host = conn.host or ""
    if host.startswith(("http://", "https://")):
        return host
    scheme = conn.schema or "https"
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{host}{port}"


def build_webhook_dag(spec: PipelineSpec, champion: Asset) -> DAG:
    conn_id = spec.events.webhook_conn_id
    with DAG(
        dag_id=f"champion_webhook_{spec.name}",
        description=f"POST each champion move of {spec.name} to the webhook of connection {conn_id} (HMAC-signed)",
        schedule=[champion],
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,  # configured on purpose (events.webhook_conn_id): on from the start
        default_args={"owner": spec.owner, "retries": spec.events.webhook_retries,
                      "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True,
                      "max_retry_delay": timedelta(minutes=10)},
        tags=["retrain", "webhook", spec.name],
        doc_md=__doc__,
    ) as dag:
        @task(task_id="post_webhook")
        def post_webhook(triggering_asset_events=None) -> list[str]:
            from airflow.sdk import BaseHook

            from tasks.decide import champion_events

            conn = BaseHook.get_connection(conn_id)
            if not conn.password:
                raise ValueError(f"connection {conn_id} has no password: it is the webhook's HMAC secret")
            url = webhook_url(conn)
            sent = []
            for events in (triggering_asset_events or {}).values():
                for event in events:
                    extra = dict(event.extra or {})
                    status = champion_events.post_webhook(url, conn.password, extra)
                    log.info("POST %s: %s for %s", url, status, extra.get("idempotency_key"))
                    sent.append(str(extra.get("idempotency_key")))
            return sent

        post_webhook()
    return dag
