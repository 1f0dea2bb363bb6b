"""The ingest and retrain DAGs of include/pipelines/emotion.yaml (or $RETRAIN_PIPELINES_DIR/emotion.yaml) alone: a file
named pipeline_<stem>.py declares the spec <stem>.yaml. If that spec breaks, Airflow shows this file's import
error and every other pipeline keeps running. For another pipeline, copy this file as pipeline_<its stem>.py
(docs/operations.md). The DAGs are built in plugins/pipeline_dags.py.
"""

from pipeline_dags import declare  # plugins/pipeline_dags.py: Airflow's plugins folder is on sys.path

globals().update(declare(__file__))
