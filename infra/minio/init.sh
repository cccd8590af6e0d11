#!/bin/sh
# One-shot MinIO setup for the stack (run by the minio-init service): the bucket, and two users.
#  - the serving user (LoRAX, the engine): read-only on what is served (exports/, cores/, bases/);
#  - the compressor/gateway user: read and write on the whole bucket.
# Idempotent: every step tolerates a previous run.
set -eu
mc alias set soppu http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "soppu/$SOPPU_BUCKET"
for policy in lorax-readonly compressor-readwrite; do
  sed "s/BUCKET/$SOPPU_BUCKET/g" "/policies/$policy.json" > "/tmp/$policy.json"
  mc admin policy create soppu "$policy" "/tmp/$policy.json" >/dev/null
done
mc admin user add soppu "$SOPPU_SERVE_ACCESS_KEY" "$SOPPU_SERVE_SECRET_KEY"
mc admin policy attach soppu lorax-readonly --user "$SOPPU_SERVE_ACCESS_KEY" >/dev/null 2>&1 || true
mc admin user add soppu "$SOPPU_WRITE_ACCESS_KEY" "$SOPPU_WRITE_SECRET_KEY"
mc admin policy attach soppu compressor-readwrite --user "$SOPPU_WRITE_ACCESS_KEY" >/dev/null 2>&1 || true
echo "bucket $SOPPU_BUCKET and users ready"
