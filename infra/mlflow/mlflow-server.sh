#!/usr/bin/env bash
# The production MLflow tracking server, as a plain command line: runs, params, metrics and the
# model registry in PostgreSQL; artifacts in S3, proxied by the server, so that clients (training,
# evaluation, Serve replicas, bulk jobs) upload and download through it with mlflow-artifacts:/
# URIs and hold no S3 credentials of their own. infra/mlflow/mlflow-server.yaml runs this script in
# Kubernetes, and tests/test_remote_tracking.py runs it against PostgreSQL and a local S3 server.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@DB_HOST:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/mlflow-artifacts \
#   infra/mlflow/mlflow-server.sh
#
# Credentials come from the standard places only:
#   PostgreSQL  libpq's PGPASSWORD or PGPASSFILE (~/.pgpass); never in the URI, which shows in `ps`.
#   S3          the AWS chain: instance profile / EKS service-account role, or AWS_* variables;
#               MLFLOW_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL) for an S3-compatible store.
# Optional: MLFLOW_HOST (default 127.0.0.1; 0.0.0.0 only inside a private network such as a pod),
# MLFLOW_PORT (5000), MLFLOW_WORKERS (4), MLFLOW_SERVER_ALLOWED_HOSTS (the Host names clients use,
# e.g. mlflow.srgan.svc.cluster.local:*; MLflow answers 403 to any other name).
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI=postgresql://USER@HOST:5432/DATABASE}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/PREFIX}"

case "$MLFLOW_BACKEND_STORE_URI" in
  postgresql://* | postgresql+*://*) ;;
  *) echo "error: MLFLOW_BACKEND_STORE_URI must be a postgresql:// URI" >&2; exit 2 ;;
esac
authority="${MLFLOW_BACKEND_STORE_URI#*://}"
authority="${authority%%/*}"
if [[ "$authority" == *@* && "${authority%@*}" == *:* ]]; then
  echo "error: keep the database password out of MLFLOW_BACKEND_STORE_URI (use PGPASSWORD or ~/.pgpass)" >&2
  exit 2
fi

exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}"
