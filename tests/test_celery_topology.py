"""The production topology, run here: CeleryExecutor on Postgres + Redis, two kinds of Celery worker, MLflow with auth.

Every component is started by `scripts/service.sh` (what docker/compose.yaml runs) on 127.0.0.1,
with databases and a Redis DB number of its own (tests/production_stack.py), and stopped at the
end. The tiny config trains in seconds, so each scenario is a real DAG run of rlaif_nightly.
Outside CI a missing Postgres or Redis skips this module with the line saying what to start; in
CI (`CI=true`) it fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from production_stack import DAG_ID, START_SERVERS, ProductionStack, servers_missing, write_tiny_project

pytestmark = [pytest.mark.slow, pytest.mark.celery]

GPU_TASKS = ["baseline_eval", "train", "evaluate", "promote_if_better"]
DEFAULT_TASKS = ["prepare_dataset", "register", "sign_off", "report"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    missing = servers_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the Celery topology, but the servers do not answer ({missing}): {START_SERVERS}")
        pytest.skip(f"{START_SERVERS} ({missing})")
    home = tmp_path_factory.mktemp("celery_home")
    # the killed-worker scenario asks for 30 steps of the file's 2: more than the default 4x a trigger may, so the operator allows 15x
    config = write_tiny_project(home, orchestration=", max_active_runs: 2, trigger_scale_limit: 15")
    stack = ProductionStack(home, config)
    stack.config = config
    with stack.running():
        yield stack


def mlflow_run_of(client, dag_run_id: str):
    experiment = client.get_experiment_by_name("rlaif-tiny")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`rlaif.dag_run_id` = '{dag_run_id}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def interval(ti: dict) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"])


def test_nightly_run_uses_both_queues_and_the_authenticated_mlflow_server(stack):
    run_id = stack.trigger({"config": str(stack.config)})
    assert stack.wait_for_run(run_id) == "success", stack.task_instances(run_id)
    tis = stack.task_instances(run_id)
    assert {t: (tis[t]["queue"], tis[t]["hostname"]) for t in GPU_TASKS} == {t: ("gpu", "gpu-worker-1") for t in GPU_TASKS}
    assert {t: (tis[t]["queue"], tis[t]["hostname"]) for t in DEFAULT_TASKS} == {t: ("default", "default-worker") for t in DEFAULT_TASKS}
    assert {t: tis[t]["pool"] for t in GPU_TASKS} == {t: "gpu" for t in GPU_TASKS}
    # the workers fork the tasks, so they preload the libraries; the scheduler runs none here, so it does not
    assert all("rlaif warm start: preloaded torch" in stack.log_text(w) for w in ("worker-default", "worker-gpu-1"))
    assert "rlaif warm start" not in stack.log_text("scheduler") and "Starting the scheduler" in stack.log_text("scheduler")
    # scripts/airflow_env.sh's parse interval reaches the DAG processor service.sh started (docs/orchestration.md, DAG parsing)
    environ = Path(f"/proc/{stack.processes['dag-processor'].pid}/environ").read_bytes().split(b"\0")
    assert b"AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL=120" in environ

    client = stack.mlflow_client()
    run = mlflow_run_of(client, run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["rlaif.airflow_url"] == f"{stack.api_url}/dags/rlaif_nightly/runs/{run_id.replace(':', '%3A').replace('+', '%2B')}"
    assert sorted(d.dataset.name for d in client.get_run(run.info.run_id).inputs.dataset_inputs) == ["prompts-test", "prompts-train"]
    assert stack.xcom(run_id, "report")["mlflow_url"] == f"{stack.mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/reward/mean")] == [1, 2]
    assert "eval/final/profanity-check/mean" in run.data.metrics
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri  # served by the server
    assert any((stack.home / "mlflow-artifacts").rglob("MLmodel")), "the logged policy is not in the server's artefact store"
    versions = client.search_model_versions("name = 'rlaif-tiny-policy'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]
    assert str(client.get_model_version_by_alias("rlaif-tiny-policy", "champion").version) == "1"

    api = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/get-by-name"
    assert httpx.get(api, params={"experiment_name": "rlaif-tiny"}, timeout=30).status_code == 401
    assert httpx.get(api, params={"experiment_name": "rlaif-tiny"}, auth=("admin", "wrong"), timeout=30).status_code == 401
    assert httpx.get(api, params={"experiment_name": "rlaif-tiny"}, auth=("admin", stack.mlflow_password), timeout=30).status_code == 200
    # The worker's credentials reach MLflow through the environment (gpu worker) or an Airflow connection
    # (default worker: prepare_dataset created the run above through it), never as params or tags, nor in task logs.
    logs = [p for p in (stack.home / "airflow" / "logs").rglob("*.log") if f"run_id={run_id}" in str(p)]
    assert len(logs) >= len(tis)
    for secret in (stack.mlflow_password, stack.mlflow_worker[1]):
        assert not any(secret in str(v) for v in [*run.data.params.values(), *run.data.tags.values()])
        assert not any(secret in p.read_text(errors="replace") for p in logs)


@contextlib.contextmanager
def mlflow_as(stack, username: str, password: str):
    """An MlflowClient logged in as `username` (MLflow reads the login from the environment); admin again afterwards."""
    from mlflow import MlflowClient

    os.environ.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
    try:
        yield MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    finally:
        stack.mlflow_client()


def refused(call) -> str:
    """The error code of an MLflow call that must fail with HTTP 403."""
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as caught:
        call()
    assert caught.value.get_http_status_code() == 403, caught.value
    return caught.value.error_code


def proc_text(pid: int, what: str) -> str:
    try:
        return Path(f"/proc/{pid}/{what}").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
        return ""


def test_workers_log_in_to_mlflow_as_a_user_with_rights_on_this_project_only(stack):
    """Issue 20: the tasks' MLflow user may log to its experiment and move its model's aliases, and gets 403 on another
    project's experiment and model and on user management; a READ user cannot move an alias (promote). MLflow's admin
    password is in no process but the MLflow server: not in a Celery worker's environment, nor on any command line."""
    import psutil
    from mlflow.server import get_app_client

    worker, reader = stack.mlflow_worker, stack.mlflow_reader
    admin = stack.mlflow_client()
    other_experiment = admin.create_experiment("another-project")
    admin.create_registered_model("another-project-policy")

    with mlflow_as(stack, *worker) as client:
        experiment = client.get_experiment_by_name("rlaif-tiny")
        run = client.create_run(experiment.experiment_id)
        client.log_metric(run.info.run_id, "worker/probe", 1.0)
        client.set_terminated(run.info.run_id)
        client.set_registered_model_alias("rlaif-tiny-policy", "canary", "1")
        assert str(client.get_model_version_by_alias("rlaif-tiny-policy", "canary").version) == "1"
        client.delete_registered_model_alias("rlaif-tiny-policy", "canary")
        assert [e.name for e in client.search_experiments()] == ["rlaif-tiny"]  # default_permission NO_PERMISSIONS: nothing else shows
        assert refused(lambda: client.get_experiment(other_experiment)) == "PERMISSION_DENIED"
        assert refused(lambda: client.create_run(other_experiment)) == "PERMISSION_DENIED"
        assert refused(lambda: client.get_registered_model("another-project-policy")) == "PERMISSION_DENIED"
        assert refused(lambda: client.set_registered_model_alias("another-project-policy", "champion", "1")) == "PERMISSION_DENIED"
        auth = get_app_client("basic-auth", tracking_uri=stack.mlflow_url)
        assert refused(lambda: auth.create_user("intruder", "a-long-enough-password")) == "PERMISSION_DENIED"
        assert refused(lambda: auth.grant_user_permission(worker[0], "experiment", other_experiment, "MANAGE")) == "PERMISSION_DENIED"
        assert refused(lambda: auth.update_user_admin(worker[0], True)) == "PERMISSION_DENIED"
    with mlflow_as(stack, *reader) as client:
        assert client.get_registered_model("rlaif-tiny-policy").aliases["champion"] == "1"
        assert refused(lambda: client.set_registered_model_alias("rlaif-tiny-policy", "champion", "1")) == "PERMISSION_DENIED"
        assert refused(lambda: client.create_run(experiment.experiment_id)) == "PERMISSION_DENIED"
    assert admin.get_run(run.info.run_id).data.metrics == {"worker/probe": 1.0}

    # Which process holds what: the tasks' environment has the worker's login; no process but the server has the admin's,
    # no command line holds any password or the store's URI (scripts/service.sh passes it to mlflow through the environment).
    airflow_logins = list(stack.airflow_passwords.values())
    seen = {}
    for name, process in stack.processes.items():
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        for member in family:
            environ, cmdline = proc_text(member.pid, "environ"), proc_text(member.pid, "cmdline")
            seen[(name, member.pid)] = environ
            assert not any(secret in cmdline for secret in [stack.mlflow_password, worker[1], reader[1], *airflow_logins]), (name, cmdline)
            assert stack.mlflow_store not in cmdline, (name, cmdline)
            assert not any(secret in environ for secret in [reader[1], *airflow_logins]), name  # init's and mlflow-init's alone
            if name != "mlflow":
                assert stack.mlflow_password not in environ, (name, cmdline)
    celery = [(name, pid) for name, pid in seen if name.startswith("worker-")]
    assert {name for name, _ in celery} >= {"worker-default", "worker-gpu-1"}
    gpu = [seen[key] for key in celery if key[0] == "worker-gpu-1"]
    assert all(f"MLFLOW_TRACKING_USERNAME={worker[0]}\n" in env and f"MLFLOW_TRACKING_PASSWORD={worker[1]}\n" in env for env in gpu)
    assert any(f"MLFLOW_AUTH_ADMIN_PASSWORD={stack.mlflow_password}" in env for (name, _), env in seen.items() if name == "mlflow")

    ini = stack.home / f"mlflow-basic-auth-{stack.mlflow_port}.ini"
    assert ini.stat().st_mode & 0o777 == 0o600 and ini.parent.stat().st_mode & 0o077 == 0
    assert "default_permission = NO_PERMISSIONS" in ini.read_text()


def test_airflow_users_have_roles_a_viewer_cannot_trigger_clear_or_change_an_op_can(stack):
    """Issue 20: production runs Airflow's FAB auth manager with users made by `init` (passwords from the environment):
    a Viewer reads DAG runs but gets 403 on triggering, clearing, changing a task instance or pausing; an Op triggers
    (the run succeeds) and clears, but cannot manage users; a wrong password gets no token."""
    assert stack.env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    assert httpx.post(f"{stack.api_url}/auth/token", json={"username": "viewer", "password": "wrong"}, timeout=60).status_code == 401
    viewer, op = stack._api_client("viewer"), stack._api_client("op")
    try:
        runs = viewer.get(f"/dags/{DAG_ID}/dagRuns")
        assert runs.status_code == 200 and runs.json()["dag_runs"], runs.text
        earlier = runs.json()["dag_runs"][0]["dag_run_id"]
        assert viewer.get(f"/dags/{DAG_ID}/dagRuns/{earlier}/taskInstances").status_code == 200
        assert viewer.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"config": str(stack.config)}}).status_code == 403
        clear = {"dry_run": True, "only_failed": False, "dag_run_id": earlier, "task_ids": ["report"]}
        assert viewer.post(f"/dags/{DAG_ID}/clearTaskInstances", json=clear).status_code == 403
        assert viewer.patch(f"/dags/{DAG_ID}/dagRuns/{earlier}/taskInstances/report", json={"new_state": "failed"}).status_code == 403
        assert viewer.patch(f"/dags/{DAG_ID}/dagRuns/{earlier}", json={"state": "failed"}).status_code == 403
        assert viewer.patch(f"/dags/{DAG_ID}", json={"is_paused": True}).status_code == 403

        triggered = op.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"config": str(stack.config)}})
        assert triggered.status_code == 200, triggered.text
        assert op.post(f"/dags/{DAG_ID}/clearTaskInstances", json=clear).status_code == 200
        assert op.get(f"{stack.api_url}/auth/fab/v1/users").status_code == 403
        assert stack.api.get(f"{stack.api_url}/auth/fab/v1/users").status_code == 200  # admin
        assert stack.wait_for_run(triggered.json()["dag_run_id"]) == "success"
    finally:
        viewer.close()
        op.close()


def test_gpu_pool_keeps_two_runs_from_training_at_once(stack):
    """Two gpu workers could take two tasks; the pool's one slot must still run them one at a time."""
    stack.start("worker-gpu", "worker-gpu-2", RLAIF_WORKER_HOSTNAME="gpu-worker-2")
    try:
        runs = [stack.trigger({"config": str(stack.config)}), stack.trigger({"config": str(stack.config)})]
        assert [stack.wait_for_run(r) for r in runs] == ["success", "success"]
    finally:
        stack.stop("worker-gpu-2")
    tis = [stack.task_instances(r) for r in runs]
    gpu = sorted((interval(ti[t]) for ti in tis for t in GPU_TASKS), key=lambda i: i[0])
    for (_, end), (start, _) in zip(gpu, gpu[1:]):
        assert start >= end, f"two gpu-pool tasks overlapped: {gpu}"
    trains = sorted(interval(ti["train"]) for ti in tis)
    assert trains[1][0] >= trains[0][1]
    assert all(ti[t]["pool"] == "gpu" and ti[t]["state"] == "success" for ti in tis for t in GPU_TASKS)


def test_killed_gpu_worker_task_is_retried_on_a_new_worker_and_resumes(stack):
    steps = 30
    run_id = stack.trigger({"config": str(stack.config), "steps": steps})
    run_dir = Path(stack.wait_until(lambda: stack.task_instances(run_id)["prepare_dataset"]["state"] == "success"
                                    and stack.xcom(run_id, "prepare_dataset")["run_dir"], 300, "prepare_dataset"))
    checkpoints = run_dir / "train" / "checkpoints"

    def a_checkpoint_after_step_one() -> bool:  # only the newest two are kept, so step-2 itself may be gone already
        return any(int(p.name.split("-")[1]) >= 2 for p in checkpoints.glob("step-*") if p.name.split("-")[1].isdigit())

    stack.wait_until(a_checkpoint_after_step_one, 300, "train's second checkpoint", every=0.3)
    assert not (run_dir / "train" / "final").exists() and stack.task_instances(run_id)["train"]["state"] == "running"
    stack.kill("worker-gpu-1")  # SIGKILL: the worker and the task process it runs
    stack.start("worker-gpu", "worker-gpu-3", RLAIF_WORKER_HOSTNAME="gpu-worker-3")
    assert stack.wait_for_run(run_id) == "success", stack.task_instances(run_id)

    train = stack.task_instances(run_id)["train"]
    assert (train["try_number"], train["hostname"]) == (2, "gpu-worker-3")
    logged = [json.loads(line)["step"] for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(logged)) == list(range(1, steps + 1))
    retry_log = next((stack.home / "airflow" / "logs").rglob(f"*run_id={run_id}*/task_id=train/attempt=2.log"))
    assert "resuming from checkpoint" in retry_log.read_text(errors="replace")
    assert [m.step for m in stack.mlflow_client().get_metric_history(mlflow_run_of(stack.mlflow_client(), run_id).info.run_id, "train/reward/mean")] == list(range(1, steps + 1))


def test_task_on_a_queue_no_worker_serves_ends_the_run_with_the_fix(stack):
    for name in [n for n in stack.processes if n.startswith("worker-gpu")]:
        stack.stop(name)
    timeout_config = write_tiny_project(stack.home, orchestration=", max_active_runs: 2, dagrun_timeout_minutes: 0.75", filename="tiny-timeout.yaml")
    stack.stop("dag-processor")
    stack.start("dag-processor", RLAIF_DAG_CONFIG=str(timeout_config))
    stack.wait_until(lambda: stack.get("/dags/rlaif_nightly/details").get("dag_run_timeout") == "PT45S",
                     300, "the DAG with a 45 s dagrun_timeout to be parsed")
    started = time.monotonic()
    run_id = stack.trigger({"config": str(stack.config)})
    assert stack.wait_for_run(run_id, timeout=300) == "failed"
    assert time.monotonic() - started < 45 + 150
    tis = stack.task_instances(run_id)
    assert tis["prepare_dataset"]["state"] == "success"
    assert tis["baseline_eval"]["state"] == "skipped" and not tis["baseline_eval"]["hostname"]

    def failure_recorded():
        run = mlflow_run_of(stack.mlflow_client(), run_id)
        return run if run.info.status == "FAILED" else None

    run = stack.wait_until(failure_recorded, 120, "the failure callback to mark the MLflow run FAILED")
    message = run.data.tags["rlaif.failure"]
    assert "baseline_eval" in message and "queue 'gpu'" in message and "scripts/service.sh worker-gpu" in message
    assert "queue 'gpu'" in stack.log_text("dag-processor") or any(
        "queue 'gpu'" in p.read_text(errors="replace") for p in (stack.home / "airflow" / "logs").rglob("*.log")
    )
