#!/usr/bin/env bash
# One start command per component of the production set-up; docker/compose.yaml, `make up` and the
# tests that run the Celery topology here (tests/test_celery_topology.py) all call exactly these.
#
#     scripts/service.sh COMPONENT
#
#   init            airflow db migrate, the `gpu` pool, the JWT key and the logins when not given (idempotent)
#   api-server      UI, REST API and the execution API the workers' tasks talk to
#   scheduler
#   dag-processor
#   triggerer
#   worker-default  airflow celery worker --queues default
#   worker-gpu      airflow celery worker --queues gpu --concurrency 1
#   mlflow          mlflow server with basic auth, a database store and artefacts served by the server
#   mlflow-init     the MLflow worker user and its grants (rlaif_tasks/access.py); the only step besides the
#                   server that is given MLflow's admin password (idempotent; again after a password change)
#
# Everything comes from the environment (scripts/airflow_env.sh lists the Airflow defaults). The
# production values that matter:
#
#   AIRFLOW__CORE__EXECUTOR=CeleryExecutor
#   AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://USER:PASS@HOST:5432/airflow
#   AIRFLOW__CELERY__BROKER_URL=redis://HOST:6379/0
#   AIRFLOW__CELERY__RESULT_BACKEND=db+postgresql://USER:PASS@HOST:5432/airflow
#   AIRFLOW__API_AUTH__JWT_SECRET            the same on every component
#   AIRFLOW__CORE__EXECUTION_API_SERVER_URL  http://API-SERVER:8080/execution/ (workers)
#   RLAIF_HOME                               run folders, mounted at the same path on every worker
#   MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD   (tasks: the worker user, never admin)
#   AIRFLOW__CORE__AUTH_MANAGER=airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager
#       users with roles, made by `init`: admin (Admin, RLAIF_AIRFLOW_PASSWORD), op (Op,
#       RLAIF_AIRFLOW_OP_PASSWORD), viewer (Viewer, RLAIF_AIRFLOW_VIEWER_PASSWORD), each when its password is set;
#       unset: Airflow's simple auth manager, one admin whose password `init` writes to passwords.json
#
# The Celery workers, and the scheduler under the LocalExecutor, start through rlaif_tasks/warm_start.py, which
# imports torch, transformers, mlflow and the like before Airflow forks task processes (RLAIF_PRELOAD: what, or empty).
#
# Optional: RLAIF_API_WORKERS (1), RLAIF_WORKER_CONCURRENCY (default queue, 2), RLAIF_GPU_QUEUE
# (gpu), RLAIF_SKIP_SERVE_LOGS=1 (two workers on one host: the log server takes port 8793),
# RLAIF_WORKER_HOSTNAME (the name task instances record; default the host's FQDN).
#
# The mlflow component reads MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION,
# MLFLOW_AUTH_ADMIN_PASSWORD (required on the first start: MLflow ships no default),
# MLFLOW_AUTH_ADMIN_USERNAME (admin), MLFLOW_AUTH_DATABASE_URI (default: the store's database),
# MLFLOW_AUTH_CACHE_TTL_SECONDS (30: a checked login is trusted that long, instead of a PBKDF2 hash
# on every request, each artefact upload included; a changed password takes as long to apply),
# MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF; the same on every server), MLFLOW_HOST (127.0.0.1),
# MLFLOW_PORT (5000), MLFLOW_WORKERS (1), MLFLOW_ALLOWED_HOSTS, MLFLOW_AUTH_DEFAULT_PERMISSION
# (NO_PERMISSIONS: a user sees only what it was granted).
#
# The mlflow-init component reads MLFLOW_TRACKING_URI, MLFLOW_AUTH_ADMIN_USERNAME (admin),
# MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_WORKER_USERNAME (rlaif-worker), MLFLOW_WORKER_PASSWORD (both
# required), MLFLOW_READER_USERNAME (rlaif-reader) and MLFLOW_READER_PASSWORD (optional: a READ-only
# user), RLAIF_DAG_CONFIG and RLAIF_MLFLOW_CONFIGS (the configs whose experiment and registered
# models the worker may use).
set -euo pipefail
component="${1:?usage: scripts/service.sh init|api-server|scheduler|dag-processor|triggerer|worker-default|worker-gpu|mlflow|mlflow-init}"
shift

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${VENV:-}" ]]; then
    case "$VENV" in /*) ;; *) VENV="$here/../$VENV" ;; esac
    export PATH="$VENV/bin:$PATH"
fi

if [[ "$component" == mlflow ]]; then
    : "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql+psycopg2://mlflow:PASS@HOST:5432/mlflow}"
    : "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION: a folder or s3://bucket/prefix the server writes artefacts to}"
    port="${MLFLOW_PORT:-5000}"
    # The auth app's own config: users and permissions live in a database next to the store. It is
    # mlflow/basic_auth.ini.template with each ${MLFLOW_AUTH_...} filled in (defaults here), written
    # private: the database URI holds its password. The folder is this user's alone (mode 700;
    # created so, or refused), outside the artefact root the server serves, and the file is created
    # with mode 600 (never chmod-ed afterwards) and moved into place. See mlflow/README.md.
    if [[ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
        auth_dir="${MLFLOW_AUTH_CONFIG_DIR:-${TMPDIR:-/tmp}/rlaif-mlflow-auth-$(id -u)}"
        export MLFLOW_AUTH_CONFIG_PATH="$auth_dir/mlflow-basic-auth-$port.ini"
        (umask 077 && mkdir -p "$auth_dir" && MLFLOW_AUTH_DEFAULT_PERMISSION="${MLFLOW_AUTH_DEFAULT_PERMISSION:-NO_PERMISSIONS}" \
            MLFLOW_AUTH_DATABASE_URI="${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}" \
            MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}" \
            MLFLOW_AUTH_CACHE_TTL_SECONDS="${MLFLOW_AUTH_CACHE_TTL_SECONDS:-30}" \
            python -c '
import os, stat, string, sys
path, artifacts = os.environ["MLFLOW_AUTH_CONFIG_PATH"], os.environ["MLFLOW_ARTIFACTS_DESTINATION"]
folder = os.path.dirname(os.path.abspath(path))
info = os.lstat(folder)
if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
    sys.exit(f"mlflow: the auth config folder {folder} is not private to this user ({stat.filemode(info.st_mode)}, uid {info.st_uid})\n"
             f"  fix: chmod 700 {folder} if it is yours, or set MLFLOW_AUTH_CONFIG_DIR to a folder of your own with mode 700")
if "://" not in artifacts or artifacts.startswith("file://"):
    root = os.path.realpath(artifacts.removeprefix("file://"))
    if os.path.commonpath([root, os.path.realpath(folder)]) == root:
        sys.exit(f"mlflow: the auth config folder {folder} is inside MLFLOW_ARTIFACTS_DESTINATION, which the server serves to every user\n"
                 "  fix: set MLFLOW_AUTH_CONFIG_DIR to a private folder outside it")
values = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_AUTH_")}
text = string.Template(open(sys.argv[1], encoding="utf-8").read()).substitute(values)  # a placeholder without a value fails
tmp = f"{path}.{os.getpid()}.tmp"
with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
    out.write(text.encode("utf-8", "surrogateescape"))
os.replace(tmp, path)
' "$here/../mlflow/basic_auth.ini.template")
    fi
    if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
        echo "mlflow: MLFLOW_FLASK_SERVER_SECRET_KEY is not set; using a random one (UI sessions end at each restart; set it, the same on every server)" >&2
        export MLFLOW_FLASK_SERVER_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    fi
    # No server-side job runners: this project starts none, and they cost ~2.5 GiB.
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
    host="${MLFLOW_HOST:-127.0.0.1}"
    # The store URI holds the database password: mlflow reads it from MLFLOW_BACKEND_STORE_URI, so it
    # stays off the command line (/proc/<pid>/cmdline is readable by every local user).
    export MLFLOW_BACKEND_STORE_URI
    exec mlflow server --app-name basic-auth \
        --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
        --host "$host" --port "$port" --workers "${MLFLOW_WORKERS:-1}" \
        --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-localhost,localhost:$port,127.0.0.1,127.0.0.1:$port,mlflow,mlflow:$port}" \
        "$@"
fi

# The one step that logs in as MLflow's admin: the worker user, its password and its grants.
if [[ "$component" == mlflow-init ]]; then
    : "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI: the MLflow server, e.g. http://mlflow:5000}"
    : "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD: the password of the MLflow admin}"
    : "${MLFLOW_WORKER_PASSWORD:?set MLFLOW_WORKER_PASSWORD: the password of the MLflow user the Airflow workers log in as}"
    cd "$here/.."
    exec python -m rlaif_tasks.access mlflow-init
fi

source "$here/airflow_env.sh" ""
serve_logs=()
[[ "${RLAIF_SKIP_SERVE_LOGS:-0}" == 1 ]] && serve_logs=(--skip-serve-logs)
if [[ -n "${RLAIF_WORKER_HOSTNAME:-}" ]]; then
    export AIRFLOW__CORE__HOSTNAME_CALLABLE="rlaif_tasks.services.worker_hostname"
fi

case "$component" in
    init)
        rlaif_airflow_init
        echo "airflow: metadata DB migrated, pool and logins in place" >&2
        ;;
    api-server)
        exec airflow api-server --host "$AIRFLOW__API__HOST" --port "$AIRFLOW__API__PORT" --workers "${RLAIF_API_WORKERS:-1}" "$@"
        ;;
    # The scheduler forks the LocalExecutor's task processes: they start with the libraries imported (rlaif_tasks/warm_start.py).
    # Under another executor it runs no task, so it imports nothing extra (8-10 s of imports on 2 cores and about 0.4 GB saved per start, docs/orchestration.md).
    scheduler)
        if [[ "${AIRFLOW__CORE__EXECUTOR}" == LocalExecutor ]]; then
            exec python -m rlaif_tasks.warm_start scheduler "${serve_logs[@]}" "$@"
        fi
        exec airflow scheduler "${serve_logs[@]}" "$@"
        ;;
    dag-processor)
        exec airflow dag-processor "$@"
        ;;
    triggerer)
        exec airflow triggerer "${serve_logs[@]}" "$@"
        ;;
    worker-default)
        exec python -m rlaif_tasks.warm_start celery worker --queues "${AIRFLOW__CELERY__DEFAULT_QUEUE:-default}" \
            --concurrency "${RLAIF_WORKER_CONCURRENCY:-2}" --celery-hostname "default@%h" "${serve_logs[@]}" "$@"
        ;;
    worker-gpu)
        exec python -m rlaif_tasks.warm_start celery worker --queues "${RLAIF_GPU_QUEUE:-gpu}" --concurrency 1 \
            --celery-hostname "gpu@%h" "${serve_logs[@]}" "$@"
        ;;
    *)
        echo "error: unknown component $component" >&2
        echo "  fix: one of init api-server scheduler dag-processor triggerer worker-default worker-gpu mlflow mlflow-init" >&2
        exit 2
        ;;
esac
