"""Least privilege, without servers (issue 20): who gets which secret in docker/compose.yaml, what the MLflow worker
user may use (rlaif_tasks/access.py), and the checks scripts/service.sh makes before a password goes anywhere.

The same rules on running servers: tests/test_celery_topology.py (the MLflow worker and reader users, the Airflow
roles, the processes' environments and command lines).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlaif_tasks import access
from rlaif_tasks.errors import RlaifError

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "scripts" / "service.sh"


def holders(services: dict, variable: str) -> list[str]:
    """The compose services whose environment uses ${variable...}."""
    return sorted(name for name, svc in services.items() if any(f"${{{variable}:" in str(v) for v in (svc.get("environment") or {}).values()))


def test_compose_gives_each_password_only_to_the_containers_that_use_it():
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    assert holders(services, "MLFLOW_ADMIN_PASSWORD") == ["mlflow", "mlflow-init"]
    for variable in ("AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_OP_PASSWORD", "AIRFLOW_VIEWER_PASSWORD"):
        assert holders(services, variable) == ["airflow-init"], variable
    assert holders(services, "MLFLOW_READER_PASSWORD") == ["mlflow-init"]
    assert holders(services, "AIRFLOW_SECRET_KEY") == ["airflow-api-server"]
    airflow = {name: svc for name, svc in services.items() if name.startswith("airflow-")}
    assert {svc["environment"]["AIRFLOW__CORE__AUTH_MANAGER"] for svc in airflow.values()} == {
        "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"}
    # The tasks (and the DAG processor's failure callback) log in to MLflow as the worker user, once mlflow-init granted it.
    for name in ("airflow-worker", "airflow-worker-gpu", "airflow-dag-processor"):
        env = airflow[name]["environment"]
        assert env["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_WORKER_USERNAME:-rlaif-worker}"
        assert env["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_WORKER_PASSWORD:?")
        assert airflow[name]["depends_on"]["mlflow-init"] == {"condition": "service_completed_successfully"}
    assert services["mlflow-init"]["command"] == ["mlflow-init"] and services["mlflow-init"]["volumes"] == []


def test_the_worker_may_use_each_configs_experiment_and_both_registered_models():
    configs = access.project_configs({"RLAIF_DAG_CONFIG": str(ROOT / "configs" / "demo.yaml"),
                                      "RLAIF_MLFLOW_CONFIGS": f"{ROOT / 'configs' / 'seed-flan-t5-base.yaml'}, {ROOT / 'configs' / 'demo.yaml'}"})
    by_experiment, models = access.project_resources(configs)
    assert [c.name for c in by_experiment] == ["demo", "seed-flan-t5-base"]
    assert models == ["rlaif-demo-policy", "rlaif-demo-policy-reward", "rlaif-seed-flan-t5-base-policy", "rlaif-seed-flan-t5-base-policy-reward"]


@pytest.mark.parametrize("missing", ["MLFLOW_TRACKING_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_WORKER_PASSWORD"])
def test_mlflow_init_names_the_missing_variable(missing):
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-1", "MLFLOW_WORKER_PASSWORD": "worker-password-1",
           "RLAIF_DAG_CONFIG": str(ROOT / "configs" / "demo.yaml")}
    del env[missing]
    with pytest.raises(RlaifError, match=missing):
        access.mlflow_init(env, wait_s=0)


def test_mlflow_init_refuses_to_make_the_admin_a_worker():
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-1", "MLFLOW_WORKER_PASSWORD": "worker-password-1",
           "MLFLOW_WORKER_USERNAME": "admin", "RLAIF_DAG_CONFIG": str(ROOT / "configs" / "demo.yaml")}
    with pytest.raises(RlaifError, match="MLFLOW_WORKER_USERNAME"):
        access.mlflow_init(env, wait_s=0)


def service_env(**extra) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    return {**keep, "VENV": str(Path(sys.executable).parent.parent), **extra}


def test_service_sh_mlflow_init_requires_the_worker_password():
    done = subprocess.run(["bash", str(SERVICE), "mlflow-init"], capture_output=True, text=True, timeout=120,
                          env=service_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9", MLFLOW_AUTH_ADMIN_PASSWORD="admin-password-1"))
    assert done.returncode != 0 and "MLFLOW_WORKER_PASSWORD" in done.stderr


@pytest.mark.parametrize("where", ["shared folder", "inside the artefacts"])
def test_service_sh_mlflow_renders_the_auth_ini_only_into_a_private_folder_outside_the_artefacts(tmp_path, where):
    """The ini holds the auth database's URI (and its password): a folder others may open, or one the server serves
    to every user, is refused before anything is written."""
    artifacts = tmp_path / "artifacts"
    folder = tmp_path / "shared" if where == "shared folder" else artifacts / "auth"
    folder.mkdir(parents=True)
    folder.chmod(0o755 if where == "shared folder" else 0o700)
    done = subprocess.run(
        ["bash", str(SERVICE), "mlflow"], capture_output=True, text=True, timeout=120,
        env=service_env(MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", MLFLOW_ARTIFACTS_DESTINATION=str(artifacts),
                        MLFLOW_AUTH_CONFIG_DIR=str(folder), MLFLOW_PORT="9", MLFLOW_AUTH_ADMIN_PASSWORD="admin-password-1"),
    )
    assert done.returncode != 0, done.stderr[-2000:]
    assert ("not private" if where == "shared folder" else "inside MLFLOW_ARTIFACTS_DESTINATION") in done.stderr and "fix:" in done.stderr
    assert list(folder.iterdir()) == []
