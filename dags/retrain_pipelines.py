"""The ingest and retrain DAGs of every pipeline spec in include/pipelines/ (or $RETRAIN_PIPELINES_DIR) that has
no DAG file of its own (``dags/pipeline_<stem>.py``). Drop a YAML file in that folder and its pipeline runs.

A broken spec here gets a ``spec_error_<file>`` stand-in DAG that carries its error, and the other pipelines
keep running; give a pipeline its own file to see a broken spec as that file's import error instead. The DAGs
are built in plugins/pipeline_dags.py.
"""

from pipeline_dags import declare  # plugins/pipeline_dags.py: Airflow's plugins folder is on sys.path

globals().update(declare(__file__))
