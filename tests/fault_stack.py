"""The fault-injection stack and its helpers, for test_faults (a chain of nights on one model, then scenarios that
need no earlier night).

The embedded stack of `make up` (Airflow's scheduler with the LocalExecutor on SQLite) with a real
`mlflow server` (basic auth, SQLite store, artefacts served) started by `scripts/service.sh`, reached
through a proxy that can answer 503. Faults are injected at named points (rlaif_tasks/faults.py):
the task process SIGKILLed, held while the test kills and restarts the MLflow server, or while the
proxy refuses. Each scenario asserts the end state in Airflow, MLflow and the run folder.
"""

from __future__ import annotations

import time

from flaky_proxy import FlakyProxy
from production_stack import ProductionStack, write_tiny_project

STAGES = ["prepare_dataset", "baseline_eval", "train", "evaluate", "register", "promote_if_better", "sign_off", "report"]
MODEL = "rlaif-faults-policy"
SECRET = "hf_rlaif_fault_suite_secret_0123456789"


def started_stack(tmp_path_factory):
    """The stack, started, for a module-scoped fixture to yield from; stopped when the module is done."""
    home = tmp_path_factory.mktemp("faults_home")
    config = write_tiny_project(home, name="faults", steps=4)
    stack = ProductionStack(home, config, executor="LocalExecutor", mlflow_server=True)
    stack.config = config
    # a gate that passes, so that every night moves the aliases: from a config file, since no trigger may waive checks
    stack.always_promote = write_tiny_project(home, name="faults", steps=4, filename="faults-always-promote.yaml", gate="{judge: profanity-check, min_improvement: -1.0, require: []}")
    stack.faults = home / "faults"
    stack.faults.mkdir()
    stack.proxy = FlakyProxy(stack.mlflow_url)
    stack.env.update(MLFLOW_TRACKING_URI=stack.proxy.url, RLAIF_FAULTS_DIR=str(stack.faults), HF_TOKEN=SECRET)
    try:
        with stack.running():
            yield stack
    finally:
        stack.proxy.close()


def inject(stack, **points: str) -> None:
    """Arm these fault points (`point=action`) for the next run; earlier markers are cleared."""
    for marker in stack.faults.iterdir():
        marker.unlink()
    (stack.faults / "spec").write_text(",".join(f"{point}={action}" for point, action in points.items()))


def fired(stack) -> set[str]:
    return {p.name.removesuffix(".fired") for p in stack.faults.glob("*.fired")}


def task_log(stack, run_id: str, task: str, attempt: int) -> str:
    found = list((stack.home / "airflow" / "logs").glob(f"dag_id=rlaif_nightly/run_id={run_id}/task_id={task}/attempt={attempt}.log"))
    return found[0].read_text(errors="replace") if found else ""


def mlflow_runs(client, dag_run_id: str):
    experiment = client.get_experiment_by_name("rlaif-faults")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`rlaif.dag_run_id` = '{dag_run_id}'")


def aliases(client) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(MODEL).aliases.items()}


def statuses(client) -> dict[str, str]:
    return {str(v.version): v.tags.get("rlaif.status", "") for v in client.search_model_versions(f"name = '{MODEL}'")}


def run_with_mlflow_outages(stack, run_id: str, down_s: float = 5.0, timeout: float = 900) -> list[str]:
    """Wait for the run; whenever a task holds at a fault point, kill the MLflow server, let the task go on, restart the server later."""
    outages = []
    deadline = time.monotonic() + timeout
    while (state := stack.run_state(run_id)) not in ("success", "failed"):
        for held in stack.faults.glob("*.held"):
            point = held.name.removesuffix(".held")
            if (stack.faults / f"{point}.release").exists():
                continue
            stack.kill("mlflow")
            (stack.faults / f"{point}.release").write_text("")
            time.sleep(down_s)  # the task's MLflow calls meet a dead server and retry
            stack.start_mlflow(stack.mlflow_store)
            outages.append(point)
        assert time.monotonic() < deadline, f"run {run_id} still {state}"
        time.sleep(1)
    return outages
