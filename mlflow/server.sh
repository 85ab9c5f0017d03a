#!/bin/sh
# Start the tracking server. Settings come from the environment:
#   MLFLOW_BACKEND_STORE_URI      runs and registry, e.g. postgresql+psycopg2://mlflow:...@postgres:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION  where the server keeps artefacts: a mounted folder or s3://bucket/prefix
#   MLFLOW_WORKERS                request workers (default 4)
# The store's schema is upgraded first, so a new MLflow version only needs a restart.
set -eu
mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"
exec mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --serve-artifacts \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}" \
    --host 0.0.0.0 --port 5000 \
    --workers "${MLFLOW_WORKERS:-4}" \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1:5000}"
