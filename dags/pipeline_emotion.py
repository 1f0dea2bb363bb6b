"""The ingest and retrain DAGs of include/pipelines/emotion.yaml (or $RETRAIN_PIPELINES_DIR/emotion.yaml) alone: a file
named pipeline_<stem>.py declares the spec <stem>.yaml. If that spec breaks, Airflow shows this file's import
error and every other pipeline keeps running. For another pipeline, copy this file as pipeline_<its stem>.py
(docs/operations.md). The DAGs are built in plugins/pipeline_dags.py.
"""

import sys
from pathlib import Path

_plugins = str(Path(__file__).resolve().parents[1] / "plugins")  # ours, whichever plugins folder Airflow has
if _plugins not in sys.path:
    sys.path.append(_plugins)

from pipeline_dags import declare  # noqa: E402

globals().update(declare(__file__))
