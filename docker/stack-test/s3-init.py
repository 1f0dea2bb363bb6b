"""Stand-in for docker/minio-init.sh on moto's S3 server: creates the buckets in MINIO_BUCKETS with versioning on.
The IAM part of minio-init.sh (the pipeline's own key with read-write on those buckets only) has no moto
counterpart through MinIO's admin API, so it is NOT exercised by the stack test (moto accepts any key)."""

import os
import sys
import time

import boto3

endpoint = os.environ.get("MINIO_ENDPOINT", "http://minio:9000")
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=os.environ["MINIO_ROOT_USER"],
                  aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"])
for attempt in range(30):
    try:
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        break
    except Exception as exc:  # noqa: BLE001 - not up yet
        if attempt == 29:
            sys.exit(f"s3-init: {endpoint} did not answer: {exc}")
        time.sleep(2)
for bucket in os.environ["MINIO_BUCKETS"].split():
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
print(f"s3-init: buckets [{os.environ['MINIO_BUCKETS']}] ready (versioning on)")
