"""The nightly DAG end to end through a real Airflow metadata DB, the REST API and an MLflow store.

A tiny policy, two PPO steps and a dozen prompts, run the way `make run` runs it
(scripts/run_nightly.sh: `airflow dags test` on SQLite), then inspected through the api-server's
REST API with a JWT, and partly re-run by a real scheduler (LocalExecutor) after clearing tasks,
which must reuse the MLflow run and the registered version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from production_stack import free_port, wait_for_http, write_tiny_project

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "rlaif_nightly"
STAGES = ["prepare_dataset", "baseline_eval", "train", "evaluate", "register", "promote_if_better", "sign_off", "report"]
RERUN = ["prepare_dataset", "register", "promote_if_better", "sign_off", "report"]

pytestmark = pytest.mark.slow  # whole DAG runs through `make run` and the scheduler


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A home with its own Airflow DB and MLflow store, a tiny policy, prompts and a run config."""
    home = tmp_path_factory.mktemp("rlaif_home")
    # The tiny config's first night has no champion: any policy within the budgets is promoted; its
    # schedule never fires during the test (the scheduler below only re-runs cleared tasks).
    config = write_tiny_project(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_")) and k not in ("RLAIF_HOME", "RLAIF_DAG_CONFIG")}
    env.update(RLAIF_HOME=str(home), VENV=str(Path(sys.executable).parent.parent), AIRFLOW_PORT=str(free_port()), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return {"home": home, "config": config, "env": env, "url": f"http://127.0.0.1:{env['AIRFLOW_PORT']}"}


def airflow_process(project, command: str, log: Path, **extra_env) -> subprocess.Popen:
    """An Airflow component in the project's environment (scripts/airflow_env.sh), in its own process group."""
    script = f'source scripts/airflow_env.sh "$0" && exec airflow {command}'
    return subprocess.Popen(
        ["bash", "-c", script, str(project["config"])], cwd=ROOT, env={**project["env"], **extra_env},
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def nightly(project):
    """`make run` on the tiny config: one DAG run recorded in the metadata DB, then its report."""
    out = subprocess.run(
        ["bash", "scripts/run_nightly.sh", str(project["config"])], cwd=ROOT, env=project["env"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout


@pytest.fixture(scope="module")
def mlflow_client(project):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project['home'] / '.mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def api(project, nightly):
    """The api-server on a free loopback port, and a client holding a JWT from POST /auth/token."""
    server = airflow_process(project, f"api-server --host 127.0.0.1 --port {project['env']['AIRFLOW_PORT']} --workers 1", project["home"] / "api-server.log")
    try:
        wait_for_http(f"{project['url']}/api/v2/monitor/health", server, project["home"] / "api-server.log", "the api-server")
        passwords = json.loads((project["home"] / ".airflow" / "passwords.json").read_text())
        assert passwords == {"admin": "admin"}  # the documented default login
        assert httpx.post(f"{project['url']}/auth/token", json={"username": "admin", "password": "wrong"}).status_code == 401
        token = httpx.post(f"{project['url']}/auth/token", json={"username": "admin", "password": "admin"})
        assert token.status_code == 201, token.text
        with httpx.Client(base_url=f"{project['url']}/api/v2", headers={"Authorization": f"Bearer {token.json()['access_token']}"}, timeout=30) as client:
            yield client
    finally:
        stop(server)


def get(client: httpx.Client, path: str, **params) -> dict:
    response = client.get(path, params=params)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:500]}"
    return response.json()


def task_instances(client: httpx.Client, run_id: str) -> dict[str, dict]:
    return {ti["task_id"]: ti for ti in get(client, f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]}


def xcom(client: httpx.Client, run_id: str, task_id: str) -> dict:
    return get(client, f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value", deserialize=True)["value"]


def test_make_run_prints_the_report_read_back_from_airflow(nightly):
    assert "Airflow DAG run manual__" in nightly and ": success" in nightly
    assert "  ".join(f"{stage}=success" for stage in STAGES) in nightly
    report = nightly[nightly.index("nightly run tiny"):]
    assert "profanity-check" in report and "mean before" in report
    assert "MLflow run " in report and "model rlaif-tiny-policy version 1: promoted to champion" in report


def test_a_healthy_run_logs_no_error_line_in_any_task_log_or_the_terminal(project, nightly):
    """Issue 23: MLflow's INFO, its model-card warnings and progress bars used to reach the task log as ERROR (stderr)."""
    logs = sorted((project["home"] / ".airflow" / "logs" / f"dag_id={DAG_ID}").rglob("attempt=*.log"))
    assert {path.parent.name for path in logs} == {f"task_id={stage}" for stage in STAGES}
    errors = [f"{path.parent.name}: {line[:300]}" for path in logs for line in path.read_text().splitlines()
              if json.loads(line).get("level") in ("error", "critical")]
    assert errors == []
    assert not [line for line in nightly.splitlines() if " | error " in line]  # the terminal stream of `make run`
    assert "it/s]" not in "".join(path.read_text() for path in logs)  # no progress bar
    [report_log] = [path for path in logs if path.parent.name == "task_id=report"]
    events = [json.loads(line).get("event", "") for line in report_log.read_text().splitlines()]
    verdict = next(i for i, event in enumerate(events) if "promoted to champion" in event)
    assert verdict < events.index("::group::Post Execute") if "::group::Post Execute" in events else True  # visible without expanding
    assert "After `make up`: the run http://127.0.0.1:" in nightly and "/models/rlaif-tiny-policy/versions/1" in nightly


def test_mlflow_holds_the_metrics_and_the_champion(project, nightly, mlflow_client):
    experiment = mlflow_client.get_experiment_by_name("rlaif-tiny")
    runs = mlflow_client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["rlaif.dag_id"] == DAG_ID
    assert run.info.run_id in nightly
    summary = json.loads((Path(run.data.tags["rlaif.run_dir"]) / "nightly.json").read_text())
    toxicity = summary["toxicity"]["profanity-check"]
    assert run.data.metrics["eval/baseline/profanity-check/mean"] == pytest.approx(toxicity["before"])
    assert run.data.metrics["eval/final/profanity-check/mean"] == pytest.approx(toxicity["after"])
    assert [m.step for m in mlflow_client.get_metric_history(run.info.run_id, "train/reward/mean")] == [1, 2]
    versions = mlflow_client.search_model_versions("name = 'rlaif-tiny-policy'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]
    assert str(mlflow_client.get_model_version_by_alias("rlaif-tiny-policy", "champion").version) == "1"


def test_rest_api_reports_the_run_and_its_tasks(project, api):
    assert httpx.get(f"{project['url']}/api/v2/dags/{DAG_ID}/dagRuns").status_code == 401
    runs = get(api, f"/dags/{DAG_ID}/dagRuns")
    assert runs["total_entries"] == 1
    run = runs["dag_runs"][0]
    assert run["state"] == "success" and run["conf"]["config"] == str(project["config"])
    tis = task_instances(api, run["dag_run_id"])
    assert sorted(tis) == sorted(STAGES)
    assert all(ti["state"] == "success" and ti["try_number"] == 1 for ti in tis.values())
    assert (tis["train"]["queue"], tis["train"]["pool"]) == ("gpu", "gpu")
    assert tis["register"]["pool"] == "default_pool"
    assert [ti["task_id"] for ti in sorted(tis.values(), key=lambda ti: ti["start_date"])] == STAGES
    report = xcom(api, run["dag_run_id"], "report")
    assert str(report["model_version"]) == "1" and report["promoted"] is True
    params = get(api, f"/dags/{DAG_ID}/details")["params"]
    assert params["steps"]["description"] and params["config"]["value"] == str(project["config"])


def test_cleared_tasks_rerun_by_the_scheduler_reuse_the_mlflow_run_and_version(project, api, mlflow_client):
    run_id = get(api, f"/dags/{DAG_ID}/dagRuns")["dag_runs"][0]["dag_run_id"]
    mlflow_run_id = xcom(api, run_id, "prepare_dataset")["mlflow_run_id"]
    cleared = api.post(f"/dags/{DAG_ID}/clearTaskInstances", json={
        "dry_run": False, "dag_run_id": run_id, "task_ids": RERUN, "only_failed": False, "include_downstream": False, "reset_dag_runs": True,
    })
    assert cleared.status_code == 200, cleared.text
    assert sorted(ti["task_id"] for ti in cleared.json()["task_instances"]) == sorted(RERUN)
    assert api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200

    scheduler = airflow_process(project, "scheduler --skip-serve-logs", project["home"] / "scheduler.log", AIRFLOW__CORE__PARALLELISM="1")
    try:
        deadline = time.monotonic() + 300
        while (state := get(api, f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]) not in ("success", "failed"):
            assert scheduler.poll() is None, (project["home"] / "scheduler.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"the cleared run is still {state} after 300 s"
            time.sleep(3)
    finally:
        stop(scheduler)
        api.patch(f"/dags/{DAG_ID}", json={"is_paused": True})

    tis = task_instances(api, run_id)
    assert state == "success", {k: v["state"] for k, v in tis.items()}
    assert {k: v["try_number"] for k, v in tis.items()} == {k: 2 if k in RERUN else 1 for k in STAGES}
    assert xcom(api, run_id, "prepare_dataset")["mlflow_run_id"] == mlflow_run_id
    assert get(api, f"/dags/{DAG_ID}/dagRuns")["total_entries"] == 1
    experiment = mlflow_client.get_experiment_by_name("rlaif-tiny")
    assert [r.info.run_id for r in mlflow_client.search_runs([experiment.experiment_id])] == [mlflow_run_id]
    assert [str(v.version) for v in mlflow_client.search_model_versions("name = 'rlaif-tiny-policy'")] == ["1"]
    model = mlflow_client.get_registered_model("rlaif-tiny-policy")
    assert {alias: str(version) for alias, version in model.aliases.items()} == {"champion": "1"}
    assert str(xcom(api, run_id, "report")["model_version"]) == "1"


def test_a_trigger_that_would_switch_off_the_gate_or_reach_a_secret_is_refused_and_makes_no_run(project, api):
    """Issue 20: the form's schema (orchestration.trigger_overrides) answers 4xx through the REST API, and no DAG run exists."""
    from test_dag import FORBIDDEN_SETS

    before = get(api, f"/dags/{DAG_ID}/dagRuns")["total_entries"]
    confs = [{"set": [forbidden]} for forbidden in FORBIDDEN_SETS]
    confs += [{"policy": "meta-llama/Meta-Llama-3.1-8B"}, {"policy": "/etc"}, {"reward": "python:os:system"},
              {"reward": "models:/someone-elses-policy@champion"}]
    for conf in confs:
        response = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"config": str(project["config"]), **conf}})
        assert 400 <= response.status_code < 500, (conf, response.status_code, response.text[:300])
    assert get(api, f"/dags/{DAG_ID}/dagRuns")["total_entries"] == before
