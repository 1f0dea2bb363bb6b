# Stand-in for python:3.11-slim-bookworm (the task image's default base): Debian bookworm from debootstrap
# (`docker import`ed as retrain-standin/debian:bookworm) plus a CPython 3.11 >= 3.11.5 built for bookworm, copied
# in from the machine running the stack test (scripts/stack_test.py --python-prefix; bookworm's own 3.11.2 is older
# than constraints.txt allows). Not what users run: see README.md.
ARG DEBIAN_IMAGE=retrain-standin/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# The shared libraries CPython's extension modules link against, curl for health checks, tini-like signal
# handling is not needed (compose's init is not used upstream either).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl netbase tzdata libssl3 libffi8 \
      libsqlite3-0 zlib1g libbz2-1.0 liblzma5 libreadline8 libncursesw6 libuuid1 libexpat1 libcrypt1 \
      libnsl2 libtirpc3 libgdbm6 \
 && rm -rf /var/lib/apt/lists/*
COPY python/ /usr/local/
RUN set -eu; ldconfig; \
    ln -sf python3.11 /usr/local/bin/python3; ln -sf python3.11 /usr/local/bin/python; \
    mkdir -p /usr/local/lib/python3.11/site-packages; \
    python3 -m ensurepip --default-pip >/dev/null; \
    python3 -c "import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid, readline; import sys; print(sys.version)"
CMD ["python3"]
