# Stand-in for minio/minio, minio/mc and axllent/mailpit: one small image with moto's S3 server (the S3 API on
# :9000), boto3 (the bucket setup minio-init does) and aiosmtpd (an SMTP catcher on :1025 with a Mailpit-shaped
# JSON API on :8025). Built from PyPI under constraints.txt.
ARG PYTHON_IMAGE=retrain-standin/python:3.11
FROM ${PYTHON_IMAGE}
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
COPY constraints.txt /tmp/constraints.txt
RUN pip install "moto[server]" boto3 aiosmtpd -c /tmp/constraints.txt && useradd --uid 10002 --gid 0 standin
COPY mailcatcher.py s3-init.py /opt/standin/
USER 10002
