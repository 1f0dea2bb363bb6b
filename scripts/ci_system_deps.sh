#!/bin/sh
# System packages the test suite needs besides the Python ones (call from .ci/run before `make test`):
#  - docker-compose: tests/test_compose.py runs `docker-compose config -q`; Debian's v1 client parses and
#    interpolates a compose file without a Docker engine.
set -eu
if command -v docker-compose >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends docker-compose
docker-compose --version
