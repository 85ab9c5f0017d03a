"""Nightly alignment run: data, baseline evaluation, RL training, evaluation, registry, gate, report.

Each task is one stage of `rlaif_tasks.nightly`, imported inside the task so that parsing this file
stays cheap (no torch, transformers or mlflow in the DAG processor). Tasks hand each other only a
small dict of references (run directory, MLflow run id, model version) through XCom; the stages
are idempotent, so a retried or cleared task reuses the MLflow run and the registered version.

Trigger with a config file and optional overrides; an empty override means "as in the config":

    airflow dags test rlaif_nightly -c '{"config": "configs/demo.yaml", "steps": 10}'

The schedule, queue, pool, retries and timeouts come from the `orchestration` section of the
config named by $RLAIF_DAG_CONFIG (default configs/demo.yaml), read when the file is parsed;
$RLAIF_DAG_SCHEDULE overrides the schedule (`none`: manual runs only, as `make run` and `make up`
store it). The trigger form's "Unpause on trigger" is ticked by Airflow: on a DAG with a schedule,
untick it unless this trigger should also start the nightly runs.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag, get_current_context, result, task
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

from rlaif_tasks.config import config_path_pattern, config_roots, load_config, parse_override

PROJECT = Path(__file__).resolve().parent.parent
DAG_CONFIG = os.environ.get("RLAIF_DAG_CONFIG", "configs/demo.yaml")
# A triggered run reads only config files the operator placed: relative paths, or ones under the project,
# $RLAIF_HOME or $RLAIF_CONFIG_DIRS (see rlaif_tasks.config.config_path_pattern), and the default as set.
CONFIG_PATTERN = config_path_pattern(config_roots(PROJECT), exact=[DAG_CONFIG])

# Trigger-form param -> config key it overrides.
OVERRIDE_PARAMS = {
    "algorithm": "train.algorithm",
    "steps": "train.steps",
    "learning_rate": "train.learning_rate",
    "policy": "model.policy",
    "reward": "reward.model",
}


def resolve_config_path(path: str) -> str:
    """Relative config paths are relative to the project folder, wherever the worker process starts."""
    return str(path if Path(path).is_absolute() else PROJECT / path)


def overrides_from_params(params: dict) -> dict:
    """Config overrides from the trigger form: unset, null or empty fields keep the config's value."""
    overrides = {key: params[name] for name, key in OVERRIDE_PARAMS.items() if params.get(name) not in (None, "")}
    overrides.update(parse_override(item) for item in params.get("set") or [] if item and item.strip())
    return overrides


def use_mlflow_connection() -> None:
    """MLflow URI and credentials from the Airflow connection named by $RLAIF_MLFLOW_CONN_ID, if set.

    Otherwise the worker's MLFLOW_TRACKING_URI / _USERNAME / _PASSWORD apply. The values go to this
    task process's environment only, where the MLflow client reads them; never to params or logs.
    """
    conn_id = os.environ.get("RLAIF_MLFLOW_CONN_ID")
    if not conn_id:
        return
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    scheme = conn.schema or "http"
    os.environ["MLFLOW_TRACKING_URI"] = conn.host if "://" in (conn.host or "") else f"{scheme}://{conn.host}:{conn.port or 5000}"
    if conn.login:
        os.environ["MLFLOW_TRACKING_USERNAME"] = conn.login
        os.environ["MLFLOW_TRACKING_PASSWORD"] = conn.password or ""


def stage(name: str, *args, **kwargs):
    """Run one stage of rlaif_tasks.nightly, imported here so that parsing the DAG stays cheap."""
    from rlaif_tasks import nightly
    from rlaif_tasks.faults import fault_point

    use_mlflow_connection()
    refs = getattr(nightly, name)(*args, **kwargs)
    fault_point(f"{name}.end")  # the reliability suite's kill after the work, before Airflow records it
    return refs


def record_failure(context) -> None:
    """Failure callback of the DAG run: say why (e.g. the queue no worker serves) in the log and on the MLflow run."""
    import logging

    from rlaif_tasks import nightly

    log = logging.getLogger("rlaif_nightly")
    dag, run_id = context["dag"], context["run_id"]
    try:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        found = RuntimeTaskInstance.get_task_states(dag_id=dag.dag_id, run_ids=[run_id]).get(run_id, {})
    except Exception as exc:  # the message is still useful without the states
        log.warning("could not read the task states of %s: %s", run_id, exc)
        found = {}
    order = [task.task_id for task in dag.topological_sort()]
    message = nightly.explain_failure(
        context.get("reason"), {t: found.get(t) for t in order}, {t: dag.get_task(t).queue for t in order},
        {t: dag.get_task(t).pool for t in order}, orchestration.dagrun_timeout_minutes,
    )
    log.error("rlaif_nightly %s: %s", run_id, message)
    dag_run = context.get("dag_run")
    params = {**dag.params.dump(), **(getattr(dag_run, "conf", None) or {})}
    try:
        use_mlflow_connection()
        mlflow_run = nightly.record_failure(resolve_config_path(params["config"]), overrides_from_params(params), dag.dag_id, run_id, message)
        log.error("MLflow run %s marked FAILED", mlflow_run)
    except Exception as exc:
        log.warning("could not mark the MLflow run of %s as failed: %s", run_id, exc)


orchestration = load_config(resolve_config_path(DAG_CONFIG)).orchestration
# `make run` stores the DAG without a schedule (RLAIF_DAG_SCHEDULE=none) while it unpauses it for one
# manual run, so that run does not also start the nightly schedule's latest missed run.
schedule = os.environ.get("RLAIF_DAG_SCHEDULE", orchestration.schedule)
schedule = None if schedule.strip().lower() == "none" else schedule
eval_timeout = timedelta(minutes=orchestration.eval_timeout_minutes)
on_gpu = {"queue": orchestration.queue, "pool": orchestration.pool}


@dag(
    dag_id="rlaif_nightly",
    description="Align the policy with RL from AI feedback, evaluate it before and after, register it, promote it if the gate passes",
    schedule=schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=orchestration.max_active_runs,
    dagrun_timeout=timedelta(minutes=orchestration.dagrun_timeout_minutes),
    on_failure_callback=record_failure,
    tags=["rlaif", "alignment", "nightly", "mlflow"],
    doc_md=__doc__,
    default_args={
        "owner": "rlaif",
        "retries": orchestration.retries,
        "retry_delay": timedelta(minutes=orchestration.retry_delay_minutes),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(hours=2),
        # A config or data error (RlaifError) fails at once: retrying cannot fix it.
        "retry_policy": ExceptionRetryPolicy(
            rules=[RetryRule(exception="rlaif_tasks.errors.RlaifError", action=RetryAction.FAIL, reason="config or data error: fix and re-trigger")]
        ),
        "execution_timeout": eval_timeout,
    },
    params={
        "config": Param(
            DAG_CONFIG, type="string", minLength=1, pattern=CONFIG_PATTERN,
            description="Run config .yaml/.yml: relative to the project folder (no ..), or absolute under the project, $RLAIF_HOME or $RLAIF_CONFIG_DIRS.",
        ),
        "algorithm": Param(
            None, type=["null", "string"], enum=[None, "ppo", "grpo", "rloo", "dpo"], description="train.algorithm; empty: from the config.",
            values_display={None: "(from the config)", "ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO (preference pairs)"},
        ),
        "steps": Param(None, type=["null", "integer"], minimum=1, description="train.steps, PPO/GRPO/RLOO updates; empty: from the config."),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, description="train.learning_rate; empty: from the config."),
        "policy": Param(None, type=["null", "string"], description="model.policy: a bundled name, hub id, local folder or models:/NAME@ALIAS (e.g. the champion); empty: from the config."),
        "reward": Param(None, type=["null", "string"], description="reward.model: the judge used as reward; empty: from the config."),
        "set": Param([], type=["null", "array"], items={"type": "string"}, description="More overrides, one key.sub=value per line, as `rlaif run --set`."),
    },
)
def rlaif_nightly():
    @task
    def prepare_dataset() -> dict:
        context = get_current_context()
        params = context["params"]
        logical = context.get("logical_date") or context["dag_run"].run_after  # a manual run may have no logical date
        return stage(
            "prepare_dataset", resolve_config_path(params["config"]), overrides_from_params(params), context["dag"].dag_id, context["run_id"],
            logical_date=logical.isoformat(),
        )

    @task(execution_timeout=eval_timeout, **on_gpu)
    def baseline_eval(refs: dict) -> dict:
        return stage("baseline_eval", refs)

    @task(execution_timeout=timedelta(minutes=orchestration.train_timeout_minutes), **on_gpu)
    def train(refs: dict) -> dict:
        return stage("train", refs)

    @task(execution_timeout=eval_timeout, **on_gpu)
    def evaluate(refs: dict) -> dict:
        return stage("evaluate", refs)

    @task
    def register(refs: dict) -> dict:
        return stage("register", refs)

    @task(execution_timeout=eval_timeout, **on_gpu)  # the gate loads the trained and the base policy
    def promote_if_better(refs: dict) -> dict:
        return stage("promote_if_better", refs)

    @result
    @task
    def report(refs: dict) -> dict:
        summary = stage("report", refs)
        print(summary["text"])
        return summary

    refs = prepare_dataset()
    refs = baseline_eval(refs)
    refs = train(refs)
    refs = evaluate(refs)
    refs = register(refs)
    refs = promote_if_better(refs)
    report(refs)


rlaif_nightly()
