#!/bin/sh
# One-shot MinIO setup for the stack (run by the minio-init service):
#  - refuses placeholder, empty or short secrets (what .env.example holds), naming the variable, never the value;
#  - the bucket, and three users with their policies (this directory):
#      the serving user (LoRAX, the engine): lorax-readonly, read exports/, cores/, bases/;
#      the gateway's user: gateway-readonly, read pointers/, manifests/, keys/ (it writes nothing);
#      the compressor's user: compressor-readwrite, read and write the bucket;
#  - the bearer token Prometheus scrapes MinIO's metrics with (MINIO_PROMETHEUS_AUTH_TYPE=jwt), written to
#    $METRICS_DIR/token, a volume only Prometheus also mounts. Without it Prometheus just skips MinIO.
# Idempotent: every step tolerates a previous run. Needs only sh builtins and mc (the mc image has little else).
set -eu
POLICY_DIR=${POLICY_DIR:-/policies}
METRICS_DIR=${METRICS_DIR:-/metrics}
WORK_DIR=${WORK_DIR:-/tmp}
MIN_SECRET_LENGTH=16

weak=""
for name in MINIO_ROOT_PASSWORD SOPPU_SERVE_SECRET_KEY SOPPU_WRITE_SECRET_KEY SOPPU_GATEWAY_S3_SECRET_KEY; do
  eval "value=\${$name:-}"
  case "$value" in
    *change-me* | *changeme* | *change_me* | *CHANGE-ME* | *CHANGEME* | *placeholder* | *example* | *EXAMPLE*)
      weak="$weak $name" ;;
    *) [ "${#value}" -ge "$MIN_SECRET_LENGTH" ] || weak="$weak $name" ;;
  esac
done
if [ -n "$weak" ]; then
  echo "minio-init: placeholder, empty or shorter than $MIN_SECRET_LENGTH characters:$weak." >&2
  echo "minio-init: run \`make up\` (it writes random secrets to .env) or set them in .env yourself." >&2
  exit 1
fi

# The policy files name the bucket BUCKET; S3 bucket names are lower case, so the loop ends.
render() {
  while IFS= read -r line || [ -n "$line" ]; do
    while :; do
      case "$line" in
        *BUCKET*) line="${line%%BUCKET*}$SOPPU_BUCKET${line#*BUCKET}" ;;
        *) break ;;
      esac
    done
    printf '%s\n' "$line"
  done < "$1"
}

mc alias set soppu http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "soppu/$SOPPU_BUCKET"
for policy in lorax-readonly gateway-readonly compressor-readwrite; do
  render "$POLICY_DIR/$policy.json" > "$WORK_DIR/$policy.json"
  mc admin policy create soppu "$policy" "$WORK_DIR/$policy.json" >/dev/null
done
add_user() {  # access key, secret key, policy
  mc admin user add soppu "$1" "$2" >/dev/null
  mc admin policy attach soppu "$3" --user "$1" >/dev/null 2>&1 || true  # already attached
}
add_user "$SOPPU_SERVE_ACCESS_KEY" "$SOPPU_SERVE_SECRET_KEY" lorax-readonly
add_user "$SOPPU_GATEWAY_S3_ACCESS_KEY" "$SOPPU_GATEWAY_S3_SECRET_KEY" gateway-readonly
add_user "$SOPPU_WRITE_ACCESS_KEY" "$SOPPU_WRITE_SECRET_KEY" compressor-readwrite

# `mc --json admin prometheus generate` prints {"jobName": ..., "bearerToken": "<jwt>", ...}: a JWT signed with
# the root credentials, for MinIO's metrics routes (100-year expiry; a new one on every `make up`).
token=""
if generated=$(mc --json admin prometheus generate soppu 2>/dev/null); then
  case "$generated" in
    *'"bearerToken"'*)
      token=${generated#*\"bearerToken\"}
      token=${token#*\"}
      token=${token%%\"*}
      ;;
  esac
fi
if [ -n "$token" ] && [ -d "$METRICS_DIR" ]; then
  (umask 022 && printf '%s' "$token" > "$METRICS_DIR/token")
  echo "metrics token for Prometheus ready"
else
  echo "minio-init: no metrics token; Prometheus will not scrape MinIO" >&2
fi
echo "bucket $SOPPU_BUCKET and users ready"
