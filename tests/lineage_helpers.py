"""OpenLineage in tests: the provider's file transport configured for a subprocess, its events read back, and the
lineage graph they describe (dataset -> job -> dataset, from each event's inputs and outputs)."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

# Every way the provider can be configured or switched off (conf.is_disabled): a test that wants it off drops all.
OPENLINEAGE_ENV_PREFIXES = ("AIRFLOW__OPENLINEAGE__", "OPENLINEAGE_", "OPENLINEAGE__")


def openlineage_file_env(events: Path) -> dict[str, str]:
    """Env that turns OpenLineage on with the file transport, one JSON event per line appended to ``events``."""
    return {"AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(events),
                                                           "append": True}),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "retrain-test"}


def read_events(events: Path) -> list[dict]:
    return [json.loads(line) for line in events.read_text().splitlines() if line.strip()] if events.exists() else []


def dataset_key(dataset: dict) -> str:
    """namespace/name as one string, e.g. ``file:/tmp/x/models/emotion/v1`` or ``s3://bucket:models/x``."""
    return f"{dataset['namespace']}:{dataset['name']}"


def lineage_graph(events: list[dict]) -> dict[str, set[str]]:
    """Directed edges input dataset -> job -> output dataset, from the COMPLETE events (what a task did read and
    write); jobs are ``job:<namespace>/<name>``."""
    edges: dict[str, set[str]] = {}
    for event in events:
        if event.get("eventType") != "COMPLETE" or "job" not in event:
            continue
        job = f"job:{event['job']['namespace']}/{event['job']['name']}"
        for dataset in event.get("inputs") or []:
            edges.setdefault(dataset_key(dataset), set()).add(job)
        for dataset in event.get("outputs") or []:
            edges.setdefault(job, set()).add(dataset_key(dataset))
    return edges


def path_between(edges: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A shortest directed path from ``start`` to ``goal`` (breadth-first), or None."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = []
            while node is not None:
                path.append(node)
                node = previous[node]
            return path[::-1]
        for nxt in sorted(edges.get(node, ())):
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return None
