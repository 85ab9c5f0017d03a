#!/usr/bin/env bash
# `make run`: one real run of the DAG rlaif_nightly in the embedded Airflow, then its report.
#
#     scripts/run_nightly.sh [CONFIG] [key.sub=value ...]
#
# `airflow dags test` creates the DAG run in the metadata DB and runs its tasks in order in this
# process (retries included); the full log goes to .airflow/logs/runs/, the terminal shows task
# starts and ends and the project's own log lines. The report printed at the end is read back from
# the metadata DB (the `report` task's XCom).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

config="${1:-configs/demo.yaml}"
shift || true
source scripts/airflow_env.sh "$config"
rlaif_airflow_init

conf="$(python - "$config" "$@" <<'EOF'
import json, sys
print(json.dumps({"config": sys.argv[1], "set": sys.argv[2:]}))
EOF
)"
mkdir -p "$AIRFLOW_HOME/logs/runs"
log="$AIRFLOW_HOME/logs/runs/rlaif_nightly-$(date -u +%Y%m%dT%H%M%SZ).log"
echo "airflow dags test rlaif_nightly -c '$conf'   (full log: $log)"

set +e
airflow dags test rlaif_nightly -c "$conf" 2>&1 | tee "$log" \
    | grep --line-buffered -E '\[DAG TEST\] (starting|end task)|\[rlaif|rlaif_tasks|Traceback|Error|DagRun Finished' \
    | sed -u -E 's/ \[airflow\.sdk\.definitions\.dag\].*//; s/ loc=[^ ]+//'
status="${PIPESTATUS[0]}"
set -e

run_id="$(grep -o 'DagRun Finished: dag_id=rlaif_nightly, logical_date=[^,]*, run_id=[^,]*' "$log" | tail -1 | sed 's/.*run_id=//')"
echo
if [[ -n "$run_id" ]]; then
    python scripts/nightly_report.py "$run_id" || status=1
else
    echo "the DAG run did not finish; last lines of $log:" >&2
    tail -40 "$log" >&2
fi
exit "$status"
