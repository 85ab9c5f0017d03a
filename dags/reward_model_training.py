"""A reward model trained on each set of published preference pairs, registered in MLflow, published as an Asset.

    [rlaif-<name>-preferences] -> prepare -> train_reward_model -> register  --[<policy model>-reward: version]-->

Runs when ai_feedback_preferences publishes pairs: the newest triggering event names the pairs folder
and the config (with its overrides) they were built with; this run's form can add overrides or,
when triggered by hand, name the pairs and config itself. The reward model is the config's policy
with a one-logit score head (TRL's RewardTrainer, rlaif_tasks.train.reward_model), registered as
`<registered policy name>-reward`; its asset event carries the version and the model's folder,
which `reward.model` accepts. Retries, pools and timeouts as in rlaif_nightly; a retried or cleared
task reuses the run folder, the MLflow run and the registered version.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, result, task

from rlaif_tasks.orchestration import (
    CONFIG_PATTERN,
    DAG_CONFIG,
    PREFERENCES,
    REWARD_MODEL,
    ROOTS,
    config_param,
    dag_settings,
    logical_date,
    on_gpu,
    pairs_param,
    resolve_config_path,
    run_stage,
    set_param,
    train_timeout,
    trigger_of,
)
from rlaif_tasks.stages import preferences

OVERRIDE_PARAMS: dict[str, str] = {}  # the reward model's own settings are params of train_reward_model, not config keys


@dag(
    dag_id="reward_model_training",
    description=f"Train a reward model on each published set of preference pairs and register it as {REWARD_MODEL.name}",
    schedule=[PREFERENCES],
    tags=["rlaif", "alignment", "reward-model", "mlflow", "asset"],
    doc_md=__doc__,
    params={
        "pairs": pairs_param(),
        "config": config_param(None),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, description="Reward model learning rate; empty: 1e-3."),
        "epochs": Param(None, type=["null", "number"], exclusiveMinimum=0, description="Passes over the pairs; empty: 2."),
        "set": set_param(),
    },
    **dag_settings(),
)
def reward_model_training():
    @task
    def prepare() -> dict:
        context = get_current_context()
        # checked before run_stage reads the MLflow connection: an event may carry anything
        source = preferences.preference_source(
            trigger_of(context, OVERRIDE_PARAMS), default_config=resolve_config_path(DAG_CONFIG), config_pattern=CONFIG_PATTERN, roots=ROOTS,
        )
        print(f"pairs {source['pairs_dir']} from {source['origin']}, config {source['config']}")
        return run_stage(preferences.prepare_reward_model, source, context["dag"].dag_id, context["run_id"], logical_date(context))

    @task(execution_timeout=train_timeout, **on_gpu)
    def train_reward_model(refs: dict) -> dict:
        params = get_current_context()["params"]
        return run_stage(preferences.train_reward_model, refs, learning_rate=params.get("learning_rate"), epochs=params.get("epochs"))

    @result
    @task(outlets=[REWARD_MODEL])
    def register(refs: dict) -> dict:
        refs = run_stage(preferences.register_reward_model, refs)
        event = refs.pop("event")
        get_current_context()["outlet_events"][REWARD_MODEL].extra = event
        print(f"published {REWARD_MODEL.name} version {event['version']} ({event['model_uri']}, folder {event['folder']})")
        return refs

    register(train_reward_model(prepare()))


reward_model_training()
