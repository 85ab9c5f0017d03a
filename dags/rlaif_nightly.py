"""Nightly alignment run: data, baseline evaluation, RL training, evaluation, registry, gate, report.

    prepare_dataset -> baseline_eval -> train -> evaluate -> register -> promote_if_better -> sign_off -> report

`sign_off` asks a person (gate.approvers) to approve a challenger that passed the gate when the
config says gate.approval: required, and passes straight through otherwise.

Each task runs one stage of `rlaif_tasks.stages.nightly` (run_stage); the stages import torch,
transformers and mlflow inside their functions, so parsing this file stays cheap. Tasks hand each
other only a small dict of references (run directory, MLflow run id, model version) through XCom;
the stages are idempotent, so a retried or cleared task reuses the MLflow run and the registered version.

Trigger with a config file and optional overrides; an empty override means "as in the config":

    airflow dags test rlaif_nightly -c '{"config": "configs/demo.yaml", "steps": 10}'

The schedule, queue, pool, retries and timeouts come from the `orchestration` section of the
config named by $RLAIF_DAG_CONFIG (default configs/demo.yaml), read when the file is parsed;
$RLAIF_DAG_SCHEDULE overrides the schedule (`none`: manual runs only, as `make run` and `make up`
store it). With `orchestration.retrain_on_reward_model` a new version of the reward model that
reward_model_training registers also starts a run, which trains against that version (RLHF).
The trigger form's "Unpause on trigger" is ticked by Airflow: on a DAG with a schedule, untick it
unless this trigger should also start the nightly runs.
"""

from __future__ import annotations

import os

from airflow.sdk import Param, dag, get_current_context, task

from rlaif_tasks.orchestration import (
    CONFIG_PATTERN,
    DAG_CONFIG,
    dag_settings,
    evaluate_train_and_gate,
    from_config,
    learning_rate_key,
    logical_date,
    model_param,
    nightly_schedule,
    orchestration,
    rates_from_config,
    resolve_config_path,
    reward_model_of,
    run_stage,
    set_param,
    trigger_overrides,
)
from rlaif_tasks.stages import nightly

# Trigger-form param -> config key it overrides.
OVERRIDE_PARAMS = {
    "algorithm": "train.algorithm",
    "steps": "train.steps",
    "learning_rate": "train.learning_rate",  # that of the night's algorithm: form_overrides
    "policy": "model.policy",
    "reward": "reward.model",
}

def form_overrides(params: dict, config_path: str) -> dict:
    """The form's overrides, its learning rate set on the key of the night's algorithm (learning_rate_key)."""
    return trigger_overrides(params, {**OVERRIDE_PARAMS, "learning_rate": learning_rate_key(params, config_path)}, config_path)


# `make run` stores the DAG without a schedule (RLAIF_DAG_SCHEDULE=none) while it unpauses it for one
# manual run, so that run does not also start the nightly schedule's latest missed run.
schedule = os.environ.get("RLAIF_DAG_SCHEDULE", orchestration.schedule)
schedule = nightly_schedule(None if schedule.strip().lower() == "none" else schedule)


@dag(
    dag_id="rlaif_nightly",
    description="Align the policy with RL from AI feedback, evaluate it before and after, register it, promote it if the gate passes",
    schedule=schedule,
    tags=["rlaif", "alignment", "nightly", "mlflow"],
    doc_md=__doc__,
    params={
        "config": Param(
            DAG_CONFIG, type="string", minLength=1, pattern=CONFIG_PATTERN,
            description="Run config .yaml/.yml: relative to the project folder (no ..), or absolute under the project, $RLAIF_HOME or $RLAIF_CONFIG_DIRS.",
        ),
        "algorithm": Param(
            None, type=["null", "string"], enum=[None, "ppo", "grpo", "rloo", "dpo"], description=f"train.algorithm; empty: {from_config('train.algorithm')}.",
            values_display={None: "(from the config)", "ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO (preference pairs)"},
        ),
        "steps": Param(None, type=["null", "integer"], minimum=1, description=f"train.steps, PPO/GRPO/RLOO updates; empty: {from_config('train.steps')}."),
        "learning_rate": Param(
            None, type=["null", "number"], exclusiveMinimum=0,
            description="the learning rate of the night's algorithm: train.learning_rate, or train.ppo_learning_rate / train.dpo_learning_rate "
            f"where the config sets PPO's or DPO's own; empty: from the config ({rates_from_config()}).",
        ),
        "policy": model_param("model.policy", "the policy to align (e.g. models:/NAME@champion)"),
        "reward": model_param("reward.model", "the judge used as reward"),
        "set": set_param(),
    },
    **dag_settings(),
)
def rlaif_nightly():
    @task
    def prepare_dataset() -> dict:
        context = get_current_context()
        params = context["params"]
        path = resolve_config_path(params["config"])
        overrides = form_overrides(params, path)
        new_reward_model = reward_model_of(context)
        if new_reward_model and "reward.model" not in overrides:
            print(f"started by a new reward model: training against {new_reward_model}")
            overrides["reward.model"] = new_reward_model
        return run_stage(
            nightly.prepare_dataset, path, overrides, context["dag"].dag_id, context["run_id"],
            logical_date=logical_date(context),
        )

    evaluate_train_and_gate(prepare_dataset())


rlaif_nightly()
