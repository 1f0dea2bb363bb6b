# Stand-in for apache/airflow:3.3.2-python3.11: what docker/airflow.Dockerfile relies on, and no more.
#  - user airflow (uid 50000, gid 0), HOME /home/airflow, AIRFLOW_HOME /opt/airflow;
#  - Airflow installed as that user into ~/.local (PIP_USER=true), with the Postgres drivers (psycopg2, asyncpg);
#  - /entrypoint: `_AIRFLOW_DB_MIGRATE=true` migrates the database first; an Airflow subcommand as the first
#    argument runs `airflow <subcommand>`, anything else is exec'd;
#  - curl for the health checks.
# The official image also has the Postgres provider, the FAB auth manager, gosu, tini and more: not stood in.
ARG PYTHON_IMAGE=retrain-standin/python:3.11
FROM ${PYTHON_IMAGE}
ARG AIRFLOW_VERSION=3.3.2
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ENV AIRFLOW_HOME=/opt/airflow \
    PIP_USER=true \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/home/airflow/.local/bin:$PATH
RUN useradd --create-home --home-dir /home/airflow --uid 50000 --gid 0 airflow \
 && mkdir -p /opt/airflow && chown -R 50000:0 /opt/airflow && chmod -R g+rwX /opt/airflow /home/airflow
COPY constraints.txt /tmp/constraints.txt
COPY entrypoint.sh /entrypoint
RUN chmod 755 /entrypoint
USER airflow
RUN pip install "apache-airflow==${AIRFLOW_VERSION}" psycopg2-binary asyncpg -c /tmp/constraints.txt \
 && airflow version
WORKDIR /opt/airflow
ENTRYPOINT ["/entrypoint"]
CMD ["--help"]
