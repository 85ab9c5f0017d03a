#!/usr/bin/env bash
# `make serve`: serve the champion of the config's registered policy with `mlflow models serve`.
#
#     scripts/serve.sh [CONFIG] [MODEL_URI]
#
# MODEL_URI defaults to models:/<tracking.registered_model>@champion; the store is the one the nightly
# run used (tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else the embedded SQLite store under
# $RLAIF_HOME, the project folder by default). The server answers on 127.0.0.1:$SERVE_PORT (5001):
#     curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
#         -d '{"inputs": ["Honestly, my neighbour is such a"], "params": {"max_new_tokens": 20}}'
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${VENV:-.venv}"
[[ "$venv" = /* ]] || venv="$PWD/$venv"
# mlflow starts uvicorn by name: the venv's bin must be on PATH (not only mlflow itself).
export PATH="$venv/bin:$PATH"
config="${1:-configs/demo.yaml}"
export RLAIF_HOME="${RLAIF_HOME:-$PWD}"
read -r store name < <(python - "$config" <<'PY'
import sys
from rlaif_tasks import stores, tracking
from rlaif_tasks.config import load_config
config = load_config(sys.argv[1])
print(stores.tracking_uri(config.tracking.tracking_uri), tracking.registered_model_name(config))
PY
)
model="${2:-models:/$name@champion}"
export MLFLOW_TRACKING_URI="$store"
echo "serving $model from $store on http://127.0.0.1:${SERVE_PORT:-5001} (Ctrl-C stops it)"
exec mlflow models serve -m "$model" --env-manager local -h 127.0.0.1 -p "${SERVE_PORT:-5001}"
