"""Trigger one run of `rlaif_nightly` through the api-server and follow it to the end (`make run`).

    python scripts/follow_run.py CONF_JSON

The embedded scheduler executes the run (LocalExecutor), so every task writes its log where the
Airflow UI reads it; this script prints each task's start and end and the project's log lines from
those files as they grow. It unpauses the DAG only for this run and restores the paused state after,
so a manual run never switches on the nightly schedule (`make run` starts the DAG processor with
RLAIF_DAG_SCHEDULE=none, and this script waits until the DAG is stored without a schedule before
unpausing it). At the end the run's note is set to its report, which the UI shows as markdown.
Prints `DAG_RUN_ID <id>` last; exits 0 when the run succeeded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx

DAG_ID = "rlaif_nightly"
FINISHED = {"success", "failed", "upstream_failed", "skipped", "removed"}
SHOWN_LEVELS = {"warning", "error", "critical"}


def client() -> httpx.Client:
    base = os.environ["AIRFLOW__API__BASE_URL"].rstrip("/")
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{base}/api/v2/monitor/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"error: the api-server at {base} did not answer within 300 s (see {os.environ['AIRFLOW_HOME']}/logs/run/)")
        time.sleep(1)
    user = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin").split(":")[0]
    password = json.loads(Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())[user]
    token = httpx.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=30)
    token.raise_for_status()
    return httpx.Client(base_url=f"{base}/api/v2", headers={"Authorization": f"Bearer {token.json()['access_token']}"}, timeout=60)


def wait_for_unscheduled_dag(api: httpx.Client) -> dict:
    """The DAG as the DAG processor stored it for this run: present, and with no schedule."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        response = api.get(f"/dags/{DAG_ID}")
        if response.status_code == 200 and response.json().get("timetable_summary") in (None, "None", ""):
            return response.json()
        time.sleep(1)
    sys.exit(f"error: the DAG processor did not store {DAG_ID} without a schedule within 300 s (see {os.environ['AIRFLOW_HOME']}/logs/run/dag-processor.log)")


class LogFollower:
    """Prints the new lines of each task's log files: the project's own lines, warnings and errors."""

    def __init__(self, run_id: str):
        self.folder = Path(os.environ["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
        self.offsets: dict[Path, int] = {}

    def poll(self, task_id: str) -> None:
        for path in sorted((self.folder / f"task_id={task_id}").glob("attempt=*.log")):
            with path.open("rb") as handle:
                handle.seek(self.offsets.get(path, 0))
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for line in complete.decode(errors="replace").splitlines():
                self.show(task_id, line)

    @staticmethod
    def show(task_id: str, line: str) -> None:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return
        logger, level = str(record.get("logger", "")), str(record.get("level", "")).lower()
        event = str(record.get("event", "")).rstrip()
        if "%|" in event or "it/s]" in event:  # a progress bar on the task's stderr
            return
        if logger.startswith("rlaif") or level in SHOWN_LEVELS or record.get("error_detail"):
            print(f"{task_id:>17} | {level:<7} {event}", flush=True)


NOTE_LIMIT = 1000
"""Airflow keeps at most this many characters of a DAG run's note."""


def run_note(outcome: str, text: str) -> str:
    """The outcome in bold, then as many whole lines of the report as fit; the full report is report.txt in MLflow."""
    lines = text.splitlines()
    for keep in range(len(lines), -1, -1):
        body = "\n".join(lines[:keep]) + ("" if keep == len(lines) else "\n... (the whole report: report.txt in the MLflow run)")
        note = f"**{outcome}**\n\n```\n{body}\n```"
        if len(note) <= NOTE_LIMIT:
            return note
    return f"**{outcome}**"[:NOTE_LIMIT]


def main() -> int:
    conf = json.loads(sys.argv[1])
    api = client()
    dag = wait_for_unscheduled_dag(api)
    was_paused = bool(dag.get("is_paused"))
    api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
    try:
        response = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
        if response.status_code >= 400:
            print(f"error: Airflow refused the run ({response.status_code}): {response.text[:1000]}", file=sys.stderr)
            return 2
        run_id = response.json()["dag_run_id"]
        print(f"DAG run {run_id}: follow it in the Airflow UI at {os.environ['AIRFLOW__API__BASE_URL']}/dags/{DAG_ID}/runs/{run_id}", flush=True)
        follower, seen = LogFollower(run_id), {}
        while True:
            state = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"]
            for ti in api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]:
                task, ti_state = ti["task_id"], ti["state"]
                if ti_state in ("running", *FINISHED) and ti_state != "skipped":
                    follower.poll(task)
                if ti_state != seen.get(task) and ti_state in ("running", "up_for_retry", *FINISHED):
                    print(f"{task:>17} | {ti_state}" + (f" (try {ti['try_number']})" if ti["try_number"] > 1 else ""), flush=True)
                    seen[task] = ti_state
            if state in ("success", "failed"):
                break
            time.sleep(2)
        report = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/report/xcomEntries/return_value", params={"deserialize": True})
        if report.status_code == 200:
            value = report.json()["value"]
            outcome = value["text"].splitlines()[-1]  # "model NAME version N: promoted ...": what the note's preview shows
            note = value.get("note") or run_note(outcome, value["text"])  # the report stage's Markdown note (gate.format_note)
            noted = api.patch(f"/dags/{DAG_ID}/dagRuns/{run_id}", json={"note": note})
            if noted.status_code >= 400:
                print(f"could not set the run's note ({noted.status_code}): {noted.text[:200]}", flush=True)
        print(f"DAG_RUN_ID {run_id}", flush=True)
        return 0 if state == "success" else 1
    finally:
        if was_paused:
            api.patch(f"/dags/{DAG_ID}", json={"is_paused": True})


if __name__ == "__main__":
    sys.exit(main())
