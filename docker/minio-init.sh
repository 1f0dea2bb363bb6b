#!/bin/sh
# One-shot MinIO setup for docker-compose.yaml (service minio-init, image minio/mc).
#  - creates the bucket(s) the pipelines store into (MINIO_BUCKETS, space-separated);
#  - enables versioning on them (an overwritten or deleted artifact can be recovered);
#  - creates the pipeline's own access key (RETRAIN_S3_ACCESS_KEY / RETRAIN_S3_SECRET_KEY) with read-write on
#    those buckets only, so Airflow and the stages never use the root credentials. The aws_default connection
#    in .env must carry this key pair (tests/test_compose.py checks that .env.example agrees).
# Idempotent: safe to run on every `docker-compose up`.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${MINIO_BUCKETS:?}"
: "${RETRAIN_S3_ACCESS_KEY:?}" "${RETRAIN_S3_SECRET_KEY:?}"
ENDPOINT="${MINIO_ENDPOINT:-http://minio:9000}"

i=0
until mc alias set local "$ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -ge 30 ]; then
    echo "minio-init: MinIO at $ENDPOINT did not accept the root credentials after 30 tries" >&2
    exit 1
  fi
  sleep 2
done

resources=""
for bucket in $MINIO_BUCKETS; do
  mc mb --ignore-existing "local/$bucket"
  mc version enable "local/$bucket"
  resources="$resources\"arn:aws:s3:::$bucket\",\"arn:aws:s3:::$bucket/*\","
done
resources="${resources%,}"

policy=/tmp/retrain-rw.json
cat > "$policy" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:*"], "Resource": [$resources]}
  ]
}
JSON
mc admin policy create local retrain-rw "$policy"          # creates or replaces
mc admin user add local "$RETRAIN_S3_ACCESS_KEY" "$RETRAIN_S3_SECRET_KEY"
# attach fails when the policy is already attached (a re-run); the check below is what counts.
mc admin policy attach local retrain-rw --user "$RETRAIN_S3_ACCESS_KEY" >/dev/null 2>&1 || true
if ! mc admin user info local "$RETRAIN_S3_ACCESS_KEY" | grep -q retrain-rw; then
  echo "minio-init: policy retrain-rw is not attached to $RETRAIN_S3_ACCESS_KEY" >&2
  exit 1
fi
echo "minio-init: buckets [$MINIO_BUCKETS] ready; user $RETRAIN_S3_ACCESS_KEY has read-write on them"
