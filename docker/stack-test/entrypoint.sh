#!/bin/bash
# The stand-in image's entrypoint: the part of the official one docker-compose.yaml uses.
set -euo pipefail
# As root (airflow-init runs as 0:0), Python does not look in the airflow user's ~/.local, where everything is
# installed: the official entrypoint adds it to PYTHONPATH the same way.
if [ "$(id -u)" = "0" ]; then
  pyver=$(python -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
  export PYTHONPATH="/home/airflow/.local/lib/python${pyver}/site-packages:${PYTHONPATH:-}"
fi
if [ "${_AIRFLOW_DB_MIGRATE:-false}" = "true" ]; then
  for i in $(seq 1 30); do
    airflow db check >/dev/null 2>&1 && break
    [ "$i" = 30 ] && { echo "entrypoint: the metadata database did not answer" >&2; exit 1; }
    sleep 2
  done
  airflow db migrate
fi
case "${1:-}" in
  ""|--help) exec airflow --help ;;
  airflow|bash|sh|python|python3|/*) exec "$@" ;;
  *) exec airflow "$@" ;;
esac
