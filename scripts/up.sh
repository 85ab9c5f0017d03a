#!/usr/bin/env bash
# `make up`: the Airflow UI and the MLflow UI over the stores `make run` wrote to, until Ctrl-C.
#
#     scripts/up.sh [CONFIG]
#
# Starts the Airflow api-server (UI and REST API) on 127.0.0.1:$AIRFLOW_PORT (8080), a scheduler, a
# DAG processor and a triggerer, and `mlflow server` on 127.0.0.1:$MLFLOW_PORT (5000) over the
# embedded store. Logs: .airflow/logs/up/. Ctrl-C stops them all.
#
# The DAG is stored without a schedule here unless RLAIF_DAG_SCHEDULE says otherwise (e.g.
# RLAIF_DAG_SCHEDULE="0 2 * * *", or "config" for the config's orchestration.schedule): Airflow's
# trigger form ticks "Unpause on trigger" by default, and on a laptop one manual trigger should not
# also start nightly runs. The production components (scripts/service.sh) use the config's schedule.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/airflow_env.sh "${1:-}"
export RLAIF_DAG_SCHEDULE="${RLAIF_DAG_SCHEDULE:-none}"
[[ "$RLAIF_DAG_SCHEDULE" == config ]] && unset RLAIF_DAG_SCHEDULE
rlaif_airflow_init
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
logs="$AIRFLOW_HOME/logs/up"
mkdir -p "$logs"

for port in "$AIRFLOW_PORT" "$MLFLOW_PORT"; do
    if python -c 'import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$port"; then
        echo "error: 127.0.0.1:$port is already in use" >&2
        echo "  fix: stop what listens there, or choose other ports: make up AIRFLOW_PORT=8081 MLFLOW_PORT=5001" >&2
        exit 2
    fi
done

pids=()
stop() {
    trap - INT TERM EXIT
    echo "stopping..."
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # A clean stop gets 20 s; the scheduler's LocalExecutor can otherwise wait on its workers indefinitely.
    for _ in $(seq 40); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.5
    done
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "  $pid did not stop in 20 s: killing it and its children"
            pkill -KILL -P "$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

# The same start commands as the production containers (scripts/service.sh); one host, so the
# api-server reads task logs from local files and no log server is needed.
for component in api-server scheduler dag-processor triggerer; do
    RLAIF_SKIP_SERVE_LOGS=1 bash scripts/service.sh "$component" >"$logs/$component.log" 2>&1 &
    pids+=($!)
done

# MLflow 3.17's UI opens in its GenAI workflow unless the link asks for model training.
mlflow_ui="http://127.0.0.1:$MLFLOW_PORT/#/experiments?workflowType=machine_learning"
if [[ -n "${MLFLOW_TRACKING_URI:-}" && "$MLFLOW_TRACKING_URI" != sqlite:* ]]; then
    mlflow_ui="$MLFLOW_TRACKING_URI (MLFLOW_TRACKING_URI; no local MLflow UI started)"
else
    store="${MLFLOW_TRACKING_URI:-sqlite:///$RLAIF_HOME/.mlflow/mlflow.db}"
    mkdir -p "$RLAIF_HOME/.mlflow/artifacts"
    # No MLflow job workers: this project runs no server-side MLflow jobs.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri "$store" --default-artifact-root "$RLAIF_HOME/.mlflow/artifacts" \
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 >"$logs/mlflow.log" 2>&1 &
    pids+=($!)
fi

user="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS%%:*}"
cat <<EOF
Airflow UI   http://127.0.0.1:$AIRFLOW_PORT   (user: $user, password in $AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE)
MLflow UI    $mlflow_ui
Logs         $logs/
Schedule     ${RLAIF_DAG_SCHEDULE:-from the config} (make up RLAIF_DAG_SCHEDULE="0 2 * * *" to run nightly here)
Ctrl-C stops everything.
EOF
wait -n
echo "a service stopped; see $logs/" >&2
