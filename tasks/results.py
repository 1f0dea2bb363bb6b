"""How a stage hands its result on: a small JSON object, stored with the run and returned as XCom.

The stage writes ``<out>/result.json`` in storage, and the same JSON to the XCom return file:
``/airflow/xcom/return.json`` in a KubernetesPodOperator pod (the provider's sidecar reads it), or the path in
``RETRAIN_XCOM_PATH`` when the local stage operator runs the command as a subprocess. Keep it small: URIs and
summaries, never data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tasks import cost, storage
from tasks.contracts import Result

POD_XCOM_PATH = "/airflow/xcom/return.json"
MAX_RESULT_BYTES = 64 * 1024


def xcom_path() -> Path | None:
    configured = os.environ.get("RETRAIN_XCOM_PATH")
    if configured:
        return Path(configured)
    if Path(POD_XCOM_PATH).parent.is_dir():
        return Path(POD_XCOM_PATH)
    return None


def emit(result: "dict[str, Any] | Result", out_uri: str | None = None) -> dict[str, Any]:
    """Store the result next to the stage's artifacts (if out_uri) and hand it to Airflow as XCom.

    ``result`` is one of the models in ``tasks.contracts`` (or a plain dict of the same shape)."""
    if isinstance(result, Result):
        result = result.dump()
    stage_cost = cost.reading() if result.get("cost") is None else None  # one NVML read, not two
    if stage_cost is not None:
        result = {**result, "cost": stage_cost}
    text = json.dumps(result, sort_keys=True, default=str)
    if len(text.encode()) > MAX_RESULT_BYTES:
        raise ValueError(f"stage result is {len(text)} bytes; XCom carries URIs and summaries only")
    if out_uri:
        storage.write_json(storage.join(out_uri, "result.json"), result)
    path = xcom_path()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"RESULT {text}", flush=True)  # the stage's output, not a progress line: stdout, as a CLI's result
    return result
