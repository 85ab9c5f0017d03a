# The embedded Airflow of this project: source it, then use `airflow` as usual.
#
#     source scripts/airflow_env.sh [CONFIG]     # CONFIG: run config the DAG reads its schedule from
#     rlaif_airflow_init                          # first use: metadata DB, pool, logins
#
# DAGs: <project>/dags. State lives under $RLAIF_HOME (default: the project folder): the Airflow
# metadata DB (SQLite) in .airflow/, the embedded MLflow store in .mlflow/ (rlaif_tasks/tracking.py),
# run folders in runs/. Every setting is an environment variable, so anything exported before
# sourcing wins: a Postgres AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, the MLFLOW_TRACKING_URI of a
# tracking server, another AIRFLOW_HOME or RLAIF_HOME.

RLAIF_PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RLAIF_HOME="${RLAIF_HOME:-$RLAIF_PROJECT}"
VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$RLAIF_PROJECT/$VENV" ;; esac
export PATH="$VENV/bin:$PATH"

export RLAIF_DAG_CONFIG="${1:-${RLAIF_DAG_CONFIG:-configs/demo.yaml}}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$RLAIF_HOME/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$RLAIF_PROJECT/dags}"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
# Two task slots at most: a training task already keeps every CPU core busy.
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-2}"
export AIRFLOW_PORT="${AIRFLOW_PORT:-8080}"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="$AIRFLOW_PORT"
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://127.0.0.1:$AIRFLOW_PORT}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-$AIRFLOW__API__BASE_URL/execution/}"
# Simple auth manager: one admin whose password is in $AIRFLOW_HOME/passwords.json (see rlaif_airflow_init).
# Production sets AIRFLOW__CORE__AUTH_MANAGER to FAB's instead: users with roles, made by rlaif_airflow_init.
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/passwords.json}"
# Signing key of the API's JWTs, shared by every Airflow process of this home (written by rlaif_airflow_init).
if [[ -s "$AIRFLOW_HOME/jwt_secret" ]]; then
    export AIRFLOW__API_AUTH__JWT_SECRET="${AIRFLOW__API_AUTH__JWT_SECRET:-$(<"$AIRFLOW_HOME/jwt_secret")}"
fi
# The DAG processor parses a changed DAG file at once (newest first), and every file again after this many seconds
# (Airflow: 30), which picks up a change to the YAML config the DAGs read; 120 s saves about 1 s of CPU a minute on
# 2 cores with seven DAG files (docs/orchestration.md). Restart the dag-processor to apply a config change at once.
export AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="${AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL:-120}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
# Progress bars in task logs arrive as stderr lines at level ERROR; the project logs its own progress.
export HF_HUB_DISABLE_PROGRESS_BARS="${HF_HUB_DISABLE_PROGRESS_BARS:-1}"

rlaif_airflow_init() {
    # Migrate the metadata DB once per Airflow version, create the training pool, write the login.
    mkdir -p "$AIRFLOW_HOME"
    local facts pool version
    facts="$(cd "$RLAIF_PROJECT" && python - "$RLAIF_DAG_CONFIG" <<'EOF'
import sys
from importlib.metadata import version
from pathlib import Path

from rlaif_tasks.config import load_config
from rlaif_tasks.errors import RlaifError

path = Path(sys.argv[1])
try:
    pool = load_config(path if path.is_absolute() else Path.cwd() / path).orchestration.pool
except RlaifError as exc:
    sys.exit(f"error: {exc}")
print(pool, version("apache-airflow"))
EOF
)" || return 1
    read -r pool version <<<"$facts"
    # FAB's own tables are migrated with Airflow's when it is the auth manager: a switch migrates again.
    local migrated="$AIRFLOW_HOME/.migrated-$version"
    [[ "${AIRFLOW__CORE__AUTH_MANAGER:-}" == *FabAuthManager ]] && migrated="$migrated-fab"
    if [[ ! -f "$migrated" || ( -z "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" && ! -f "$AIRFLOW_HOME/airflow.db" ) ]]; then
        rm -f "$AIRFLOW_HOME"/.migrated-* "$AIRFLOW_HOME"/.pool-*
        echo "airflow: migrating the metadata DB in $AIRFLOW_HOME" >&2
        airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/db-migrate.log" >&2; return 1; }
        touch "$migrated"
    fi
    if [[ ! -f "$AIRFLOW_HOME/.pool-$pool" ]]; then
        airflow pools set "$pool" "${RLAIF_GPU_SLOTS:-1}" "GPU slots for training and evaluation tasks" >/dev/null 2>&1 || { echo "error: could not create the Airflow pool $pool" >&2; return 1; }
        touch "$AIRFLOW_HOME/.pool-$pool"
    fi
    if [[ -z "${AIRFLOW__API_AUTH__JWT_SECRET:-}" ]]; then
        (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(64))' >"$AIRFLOW_HOME/jwt_secret")
        export AIRFLOW__API_AUTH__JWT_SECRET="$(<"$AIRFLOW_HOME/jwt_secret")"
    fi
    if [[ "${AIRFLOW__CORE__AUTH_MANAGER:-}" == *FabAuthManager ]]; then
        # Production: FAB's users admin/op/viewer with roles Admin/Op/Viewer, passwords from the
        # environment (RLAIF_AIRFLOW_PASSWORD, _OP_PASSWORD, _VIEWER_PASSWORD), never on a command line.
        (cd "$RLAIF_PROJECT" && python -m rlaif_tasks.access airflow-users) || return 1
        return 0
    fi
    # The simple auth manager's passwords file: a new private file (mktemp: mode 600 from the start,
    # whatever mode an old file had) moved into place; the password goes to python through the
    # environment, not as an argument (a command line is readable by every local user).
    local passwords="$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
    if [[ -n "${RLAIF_AIRFLOW_PASSWORD:-}" || ! -s "$passwords" ]]; then
        local tmp
        tmp="$(umask 077 && mktemp "$passwords.XXXXXX")" || return 1
        RLAIF_AIRFLOW_PASSWORD="${RLAIF_AIRFLOW_PASSWORD:-admin}" python -c '
import json, os
users = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")
print(json.dumps({u.split(":")[0]: os.environ["RLAIF_AIRFLOW_PASSWORD"] for u in users if u}))' >"$tmp" \
            && mv -f "$tmp" "$passwords" || { rm -f "$tmp"; return 1; }
    fi
}
