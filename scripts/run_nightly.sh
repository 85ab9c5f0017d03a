#!/usr/bin/env bash
# `make run`: one run of the DAG rlaif_nightly through the embedded Airflow's scheduler, then its report.
#
#     scripts/run_nightly.sh [CONFIG] [key.sub=value ...]
#
# Starts the api-server, a scheduler (LocalExecutor, SQLite) and a DAG processor with the production
# start commands (scripts/service.sh), triggers the run through the REST API and follows it
# (scripts/follow_run.py): the terminal shows task starts and ends and the project's log lines, and
# every task's log stays where the Airflow UI of `make up` reads it. The DAG is stored without a
# schedule meanwhile and left paused as it was, so a manual run never switches on the nightly
# schedule. The run's note is its report; the report printed at the end is read back from the
# metadata DB (the `report` task's XCom). Service logs: .airflow/logs/run/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

config="${1:-configs/demo.yaml}"
shift || true
source scripts/airflow_env.sh "$config"
rlaif_airflow_init
export RLAIF_DAG_SCHEDULE=none RLAIF_SKIP_SERVE_LOGS=1

if python -c 'import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$AIRFLOW_PORT"; then
    echo "error: 127.0.0.1:$AIRFLOW_PORT is already in use (is \`make up\` running?)" >&2
    echo "  fix: stop it first (the two would share one SQLite DB), or choose another port: make run AIRFLOW_PORT=8081" >&2
    exit 2
fi

conf="$(python - "$config" "$@" <<'PY'
import json, sys
print(json.dumps({"config": sys.argv[1], "set": sys.argv[2:]}))
PY
)"
logs="$AIRFLOW_HOME/logs/run"
mkdir -p "$logs"
pids=()
# Each service runs in its own process group, so that stopping it stops its children too (the
# LocalExecutor's workers). SIGTERM first; whatever still runs after 30 s gets SIGKILL: the run is
# over by then, and the LocalExecutor has been seen to wait forever on a worker at shutdown.
signal_service() {  # its process group where setsid made one (Linux), else the process alone (no setsid, e.g. macOS)
    kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null || true
}
stop() {
    for pid in "${pids[@]}"; do signal_service TERM "$pid"; done
    for _ in $(seq 60); do
        [[ -z "$(jobs -pr)" ]] && break  # every service has exited
        sleep 0.5
    done
    for pid in "${pids[@]}"; do signal_service KILL "$pid"; done
    wait 2>/dev/null || true
}
trap stop EXIT
own_group=()
if command -v setsid >/dev/null; then own_group=(setsid); fi
for component in api-server scheduler dag-processor; do
    ${own_group[@]+"${own_group[@]}"} bash scripts/service.sh "$component" >"$logs/$component.log" 2>&1 &
    pids+=($!)
done

echo "rlaif_nightly with $conf (Airflow on $AIRFLOW__API__BASE_URL, service logs in $logs)"
set +e
python scripts/follow_run.py "$conf" | tee "$logs/follow.log"
status="${PIPESTATUS[0]}"
set -e
stop
trap - EXIT

run_id="$(sed -n 's/^DAG_RUN_ID //p' "$logs/follow.log" | tail -1)"
echo
if [[ -n "$run_id" ]]; then
    python scripts/nightly_report.py "$run_id" || status=1
else
    echo "the DAG run did not finish; last lines of the scheduler's log:" >&2
    tail -40 "$logs/scheduler.log" >&2
fi
exit "$status"
