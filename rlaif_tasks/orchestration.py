"""What the DAG files share: the Assets, the trigger forms, the MLflow connection, the failure callback,
`run_stage(fn, refs)` and the seven nightly tasks that rlaif_nightly and dpo_alignment both run, a person's sign-off among them.

    ai_feedback_preferences --[rlaif-<name>-preferences]--> reward_model_training --[<policy model>-reward]-->
                                                        \\-> dpo_alignment (rlaif_nightly's stages, DPO on those pairs)

One preferences Asset per config name: the config is the one $RLAIF_DAG_CONFIG names (as for
rlaif_nightly's schedule), read when the DAG files are parsed, and the producer refuses a trigger
whose config has another name. The reward-model Asset stands for the registered model
`<registered policy name>-reward`; its events carry the version, its models:/ URI and the model's
folder (which `reward.model` accepts); with `orchestration.retrain_on_reward_model` rlaif_nightly is
scheduled on it too and trains against the new version (`nightly_schedule`, `reward_model_of`).

The one module of rlaif_tasks that imports Airflow: the DAG files import it and the stage functions
(rlaif_tasks.stages) by name, and stay wiring only. Parsing it stays cheap: the stages import their
heavy libraries (torch, transformers, mlflow) inside the functions.
"""

from __future__ import annotations

import copy
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Asset, Param, get_current_context, result, task
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

from rlaif_tasks.config import PROJECT_DIR, config_path_pattern, config_roots, dotted_value, load_config, parse_override
from rlaif_tasks.faults import fault_point
from rlaif_tasks.overrides import check_trigger_overrides, folder_pattern, model_value_pattern, set_item_pattern
from rlaif_tasks.services import quiet_libraries
from rlaif_tasks.stages import human as human_stages
from rlaif_tasks.stages import nightly, sign_off
from rlaif_tasks.stages.preferences import reward_model_name

PROJECT = PROJECT_DIR
DAG_CONFIG = os.environ.get("RLAIF_DAG_CONFIG", "configs/demo.yaml")
ROOTS = config_roots(PROJECT)
"""Folders whose files a trigger may name (configs, model folders, pairs): the project, $RLAIF_HOME, $RLAIF_CONFIG_DIRS."""
# As rlaif_nightly: a trigger, or an asset event, may name only config files the operator placed.
CONFIG_PATTERN = config_path_pattern(ROOTS, exact=[DAG_CONFIG])


def resolve_config_path(path: str) -> str:
    """Relative config paths are relative to the project folder, wherever the worker process starts."""
    return str(path if Path(path).is_absolute() else PROJECT / path)


def preferences_asset(config_name: str) -> Asset:
    """The preference pairs of one run config: each event is one published pairs folder."""
    return Asset(uri=f"rlaif://{config_name}/preferences", name=f"rlaif-{config_name}-preferences")


def reward_model_asset(model_name: str, config_name: str) -> Asset:
    """A registered reward model: each event is one new version."""
    return Asset(uri=f"rlaif://{config_name}/reward-model", name=model_name)


def red_team_asset(config_name: str) -> Asset:
    """The red-team set of one run config (red_team.set_file): each event is one night's successful attacks, merged into it."""
    return Asset(uri=f"rlaif://{config_name}/red-team", name=f"rlaif-{config_name}-red-team")


CONFIG = load_config(resolve_config_path(DAG_CONFIG))
SET_ITEM_PATTERN = set_item_pattern(CONFIG, ROOTS)
"""What one line of a form's `set` may say: a key of the DAG config's orchestration.trigger_overrides (overrides.py)."""
MODEL_VALUE_PATTERN = "^" + model_value_pattern(CONFIG, ROOTS) + "$"
FOLDER_PATTERN = "^" + folder_pattern(ROOTS) + "$"
PREFERENCES = preferences_asset(CONFIG.name)
REWARD_MODEL = reward_model_asset(reward_model_name(CONFIG), CONFIG.name)
RED_TEAM = red_team_asset(CONFIG.name)

orchestration = CONFIG.orchestration
on_gpu = {"queue": orchestration.queue, "pool": orchestration.pool}
eval_timeout = timedelta(minutes=orchestration.eval_timeout_minutes)
train_timeout = timedelta(minutes=orchestration.train_timeout_minutes)


def nightly_schedule(cron: str | None):
    """rlaif_nightly's schedule: the cron (None: no clock), and with orchestration.retrain_on_reward_model each new reward model."""
    if not orchestration.retrain_on_reward_model:
        return cron
    if cron is None:
        return [REWARD_MODEL]
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=[REWARD_MODEL])


def reward_model_of(context) -> str | None:
    """The `models:/NAME/VERSION` of the newest reward model whose registration started this run, if one did."""
    events = (context.get("triggering_asset_events") or {}).get(REWARD_MODEL, [])
    return dict(events[-1].extra or {}).get("model_uri") if events else None


# -- the trigger forms ---------------------------------------------------------------------------


def config_param(default: str | None) -> Param:
    if default is None:
        return Param(None, type=["null", "string"], minLength=1, pattern=CONFIG_PATTERN,
                     description="Run config .yaml/.yml, as in rlaif_nightly; empty: the one the triggering preferences were built with.")
    return Param(default, type="string", minLength=1, pattern=CONFIG_PATTERN,
                 description="Run config .yaml/.yml: relative to the project folder (no ..), or absolute under the project, $RLAIF_HOME or $RLAIF_CONFIG_DIRS.")


def pairs_param() -> Param:
    return Param(None, type=["null", "string"], minLength=1, pattern=FOLDER_PATTERN,
                 description="A preferences folder (pairs.parquet + manifest.json) under the project or $RLAIF_HOME; empty: the one the triggering asset event names.")


def set_param() -> Param:
    allowed = ", ".join(CONFIG.orchestration.trigger_overrides)
    return Param([], type=["null", "array"], items={"type": "string", "pattern": SET_ITEM_PATTERN},
                 description=f"More overrides, one key.sub=value per line, as `rlaif run --set`; only these keys (orchestration.trigger_overrides): {allowed}.")


def from_config(key: str) -> str:
    """`from the config (45)`: what an empty field of a trigger form means, with the value of the config the DAG was parsed with."""
    return f"from the config ({dotted_value(CONFIG, key)})"


def rates_from_config() -> str:
    """`PPO 0.0004, GRPO 0.0005, RLOO 0.0005, DPO 0.0003`: the rate each algorithm trains at in the config the DAG was
    parsed with (`TrainConfig.rate`), what an empty learning-rate field means."""
    return ", ".join(f"{a.upper()} {CONFIG.train.rate(a):g}" for a in ("ppo", "grpo", "rloo", "dpo"))


def model_param(key: str, what: str) -> Param:
    """`model.policy` or `reward.model` from a form: a bundled name, this project's registered models or a folder under the roots."""
    return Param(None, type=["null", "string"], pattern=MODEL_VALUE_PATTERN,
                 description=f"{key}: {what}: a bundled name, models:/NAME@ALIAS of this project's registered models, or an absolute folder "
                 f"under the project or $RLAIF_HOME; empty: {from_config(key)}.")


def trigger_overrides(params: dict, mapping: dict[str, str], config_path: str) -> dict:
    """The form's overrides, refused unless the named config lets a trigger make them (before any secret is read)."""
    overrides = overrides_from_params(params, mapping)
    check_trigger_overrides(load_config(config_path), overrides, ROOTS, origin="this DAG run's form")
    return overrides


def learning_rate_key(params: dict, config_path: str) -> str:
    """The key a form's learning rate sets: the rate the night's algorithm trains at (`TrainConfig.rate_key`: PPO's or
    DPO's own where the config sets one), so the field never sets a rate the night does not use."""
    algorithm = overrides_from_params(params, {"algorithm": "train.algorithm"}).get("train.algorithm")
    return "train." + load_config(config_path, {"train.algorithm": algorithm} if algorithm else None).train.rate_key()


def overrides_from_params(params: dict, mapping: dict[str, str]) -> dict:
    """Config overrides from a trigger form (`mapping`: param -> config key); unset, null or empty keep the config's value."""
    overrides = {key: params[name] for name, key in mapping.items() if params.get(name) not in (None, "")}
    overrides.update(parse_override(item) for item in params.get("set") or [] if item and item.strip())
    return overrides


def logical_date(context) -> str:
    """A manual or asset-triggered run may have no logical date: its run_after stands in (it seeds an unpinned run)."""
    return (context.get("logical_date") or context["dag_run"].run_after).isoformat()


def trigger_of(context, mapping: dict[str, str]) -> dict:
    """What a consumer run was started with: the preferences events behind it (plain dicts) and its form."""
    events = (context.get("triggering_asset_events") or {}).get(PREFERENCES, [])
    params = context["params"]
    return {
        "events": [
            {"extra": dict(e.extra or {}), "timestamp": e.timestamp.isoformat(), "source_dag_id": e.source_dag_id, "source_run_id": e.source_run_id}
            for e in events
        ],
        "pairs": params.get("pairs"),
        "config": resolve_config_path(params["config"]) if params.get("config") else None,
        "overrides": overrides_from_params(params, mapping),
    }


# -- running a stage -------------------------------------------------------------------------------


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


def prepare_from_form(stage: Callable[..., dict], mapping: dict[str, str]) -> dict:
    """A producer DAG's first task (ai_feedback_preferences, human_preferences, red_team): its form's config and the
    overrides it may make (`mapping`: param -> config key), checked, then `stage` (that DAG's `prepare`) in a run folder of its own."""
    context = get_current_context()
    params = context["params"]
    config_path = resolve_config_path(params["config"])
    return run_stage(
        stage, config_path, trigger_overrides(params, mapping, config_path), context["dag"].dag_id, context["run_id"],
        logical_date(context), asset_config=CONFIG.name,
    )


def run_stage(fn: Callable[..., Any], *args, **kwargs):
    """Run one stage function in a task: quiet libraries and the MLflow connection first, the fault point after."""
    quiet_libraries()
    use_mlflow_connection()
    refs = fn(*args, **kwargs)
    fault_point(f"{fn.__name__}.end")  # the reliability suite's kill after the work, before Airflow records it
    return refs


def record_failure(context) -> None:
    """Failure callback: say why in the log and mark the DAG run's MLflow run FAILED (found by its run key)."""
    dag, run_id = context["dag"], context["run_id"]
    log = logging.getLogger(dag.dag_id)
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
    log.error("%s %s: %s", dag.dag_id, run_id, message)
    params = {**dag.params.dump(), **(getattr(context.get("dag_run"), "conf", None) or {})}
    try:
        use_mlflow_connection()
        mlflow_run = nightly.record_failure(resolve_config_path(params.get("config") or DAG_CONFIG), dag.dag_id, run_id, message)
        log.error("MLflow run %s marked FAILED", mlflow_run)
    except Exception as exc:
        log.warning("could not mark the MLflow run of %s as failed: %s", run_id, exc)


# -- what every one of these DAGs sets ---------------------------------------------------------------


def dag_settings() -> dict:
    """Start date, run limits, failure callback, retries and timeouts, as rlaif_nightly sets them (a fresh dict per DAG)."""
    return dict(
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=orchestration.max_active_runs,
        dagrun_timeout=timedelta(minutes=orchestration.dagrun_timeout_minutes),
        on_failure_callback=record_failure,
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
    )


# -- the tasks rlaif_nightly and dpo_alignment share ------------------------------------------------


def evaluate_train_and_gate(refs):
    """baseline_eval -> train -> evaluate -> register -> promote_if_better -> report, after a DAG's prepare_dataset.

    Called inside a @dag function; the task ids are the stage names, so every DAG that runs them
    logs, retries and reports alike.
    """

    @task(execution_timeout=eval_timeout, **on_gpu)
    def baseline_eval(refs: dict) -> dict:
        return run_stage(nightly.baseline_eval, refs)

    @task(execution_timeout=train_timeout, **on_gpu)
    def train(refs: dict) -> dict:
        return run_stage(nightly.train, refs)

    @task(execution_timeout=eval_timeout, **on_gpu)
    def evaluate(refs: dict) -> dict:
        return run_stage(nightly.evaluate, refs)

    @task
    def register(refs: dict) -> dict:
        return run_stage(nightly.register, refs)

    @task(execution_timeout=eval_timeout, **on_gpu)  # the gate loads the trained and the base policy
    def promote_if_better(refs: dict) -> dict:
        return run_stage(nightly.promote_if_better, refs)

    @result
    @task
    def report(refs: dict) -> dict:
        summary = run_stage(nightly.report, refs)
        print(summary["text"], flush=True)  # in the task's main log group, not flushed later into "Post Execute"
        return summary

    refs = baseline_eval(refs)
    refs = train(refs)
    refs = evaluate(refs)
    refs = register(refs)
    refs = promote_if_better(refs)
    refs = SignOff(task_id="sign_off", refs=refs).output
    return report(refs)


class SignOff(HITLOperator):
    """A person approves or rejects a challenger that passed the gate (gate.approval: required); otherwise it passes `refs` on.

    The body is the gate's evidence (stages/sign_off.request); only gate.approvers may answer, under
    Browse -> Required Actions or PATCH .../taskInstances/sign_off/-1/hitlDetails. The run's config,
    not the DAG file's, says who and how long: it is read when the task runs.
    """

    template_fields = ("refs",)

    def __init__(self, *, refs, **kwargs):
        kwargs["params"] = {"comment": Param(None, type=["null", "string"], description="Why (optional; kept with a rejection, in the report).")}
        super().__init__(
            subject="Promote the challenger to champion?", options=sign_off.OPTIONS,
            response_timeout=timedelta(hours=CONFIG.gate.approval_timeout_hours), **kwargs,
        )
        self.refs = refs

    def execute(self, context):
        quiet_libraries()
        use_mlflow_connection()
        if self.refs.get("awaiting_sign_off") and (reply := sign_off.recorded_answer(self.refs)) is not None:
            self.log.info("applying the answer an earlier try received: %s", reply)
            return self._done(sign_off.answer(self.refs, reply))
        asked = sign_off.request(self.refs)
        if asked is None:
            self.log.info("no sign-off to ask for: %s", "gate.approval is none" if self.refs.get("promoted") else "nothing passed the gate")
            return self._done(self.refs)
        self.subject, self.body = asked["subject"], asked["body"]
        self.assigned_users = [{"id": user, "name": user} for user in asked["approvers"]]
        self.response_timeout = timedelta(hours=asked["timeout_hours"])
        self.log.info("waiting up to %g h for %s to approve or reject %s version %s", asked["timeout_hours"], ", ".join(asked["approvers"]),
                      self.refs["model_name"], self.refs["model_version"])
        return super().execute(context)

    def execute_complete(self, context, event: dict):
        quiet_libraries()
        use_mlflow_connection()
        if event.get("error_type") == "timeout":
            reply = {"timed_out": True, "at": datetime.now(timezone.utc).isoformat()}
        else:
            answered = super().execute_complete(context, event)
            reply = {
                "option": answered["chosen_options"][0], "by": (answered["responded_by_user"] or {}).get("id"),
                "at": answered["responded_at"].isoformat(), "comment": (answered["params_input"] or {}).get("comment") or "",
            }
        return self._done(sign_off.answer(self.refs, reply))

    @staticmethod
    def _done(refs: dict) -> dict:
        fault_point("sign_off.end")  # as run_stage: the reliability suite's kill after the work
        return refs


# -- human_preferences: people label pairs of responses -----------------------------------------------


def labelling_settings() -> dict:
    """dag_settings(), with a DAG-run timeout that leaves the labellers their human_preferences.response_timeout_hours too."""
    settings = dag_settings()
    settings["dagrun_timeout"] += timedelta(hours=CONFIG.human_preferences.response_timeout_hours)
    return settings


class LabelPair(HITLOperator):
    """One pair of the policy's responses for a person to compare: human_preferences' mapped `label` task.

    Mapped over sample_pairs' `requests` ({"run_dir", "request"}): the prompt and both responses (the
    Markdown body), who may answer (human_preferences.labellers, as the run's config file says) and the
    response timeout are read from the run folder when the task runs (stages/human.label_request).
    Answered under Browse -> Required Actions or PATCH .../taskInstances/label/<map index>/hitlDetails;
    anyone not assigned gets 403. A timeout ends the task without a label, as a success, so `collect`
    counts it instead of the run failing.
    """

    template_fields = ()  # subject and body are set in execute, from the run folder: responses are never rendered as Jinja

    def __init__(self, *, request, **kwargs):
        params = kwargs.get("params")
        params = dict(params or {}) if params is None or type(params) is dict else copy.copy(params)  # a ParamsDict keeps each Param's source
        params["comment"] = Param(None, type=["null", "string"], description="Optional: why, or what is wrong with both.", source="task")
        kwargs["params"] = params
        super().__init__(
            subject="Which response is better?", options=list(human_stages.OPTIONS),
            response_timeout=timedelta(hours=CONFIG.human_preferences.response_timeout_hours), **kwargs,
        )
        self.request = request

    def execute(self, context):
        quiet_libraries()
        asked = human_stages.label_request(self.request)
        self.subject, self.body = asked["subject"], asked["body"]
        self.assigned_users = [{"id": user, "name": user} for user in asked["labellers"]]
        self.response_timeout = timedelta(hours=asked["timeout_hours"])
        self.log.info("asking %s about pair %d, for up to %g h", ", ".join(asked["labellers"]), asked["pair"], asked["timeout_hours"])
        return super().execute(context)

    def execute_complete(self, context, event: dict):
        if event.get("error_type") == "timeout":
            self.log.warning("nobody answered request %s in time: it ends without a label", self.request.get("request"))
            return human_stages.unanswered(self.request)
        answer = super().execute_complete(context, event)
        return human_stages.answered(self.request, answer["chosen_options"], answer["params_input"], answer["responded_by_user"], answer["responded_at"])
