"""The nightly alignment run with DPO on each published set of preference pairs: evaluate, register, gate, report.

    [rlaif-<name>-preferences] -> prepare_dataset -> baseline_eval -> train -> evaluate -> register -> promote_if_better -> sign_off -> report

Runs when ai_feedback_preferences publishes pairs. prepare_dataset takes the pairs folder and the
config from the newest triggering event (or from this run's form), and sets `train.algorithm=dpo`
and `preferences.source=<that pairs.parquet>`; every later task is rlaif_nightly's
(`evaluate_train_and_gate`, the stages of rlaif_tasks.stages.nightly), so the policy is registered
under the nightly run's model name and promoted only if the same gate passes. Retries, pools,
timeouts and idempotent re-runs as in rlaif_nightly. With `rounds` >= 2 the train task runs
iterative DPO: the published pairs are round 1, and each later round samples and labels new pairs
from the last round's policy.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from rlaif_tasks.orchestration import (
    CONFIG_PATTERN,
    DAG_CONFIG,
    PREFERENCES,
    ROOTS,
    config_param,
    dag_settings,
    evaluate_train_and_gate,
    from_config,
    logical_date,
    pairs_param,
    resolve_config_path,
    run_stage,
    set_param,
    trigger_of,
)
from rlaif_tasks.stages import preferences

# Trigger-form param -> config key it overrides (on top of the triggering event's overrides).
OVERRIDE_PARAMS = {"steps": "train.steps", "learning_rate": "train.dpo_learning_rate", "beta": "train.dpo_beta", "rounds": "train.dpo_rounds"}


@dag(
    dag_id="dpo_alignment",
    description="Align the policy with DPO on each published set of preference pairs, evaluate, register, promote if the gate passes",
    schedule=[PREFERENCES],
    tags=["rlaif", "alignment", "dpo", "mlflow", "asset"],
    doc_md=__doc__,
    params={
        "pairs": pairs_param(),
        "config": config_param(None),
        "steps": Param(
            None, type=["null", "integer"], minimum=1,
            description=f"train.steps, DPO optimiser steps (at most train.dpo_max_epochs passes over the pairs); empty: {from_config('train.steps')}.",
        ),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, description=f"train.dpo_learning_rate; empty: {from_config('train.dpo_learning_rate')} (None: train.learning_rate)."),
        "beta": Param(None, type=["null", "number"], exclusiveMinimum=0, description=f"train.dpo_beta, the pull towards the base policy; empty: {from_config('train.dpo_beta')}."),
        "rounds": Param(
            None, type=["null", "integer"], minimum=1,
            description=f"train.dpo_rounds; 2 or more: iterative DPO on pairs sampled from each round's policy; empty: {from_config('train.dpo_rounds')}.",
        ),
        "set": set_param(),
    },
    **dag_settings(),
)
def dpo_alignment():
    @task
    def prepare_dataset() -> dict:
        context = get_current_context()
        # checked before run_stage reads the MLflow connection: an event may carry anything
        source = preferences.preference_source(
            trigger_of(context, OVERRIDE_PARAMS), default_config=resolve_config_path(DAG_CONFIG), config_pattern=CONFIG_PATTERN, roots=ROOTS,
        )
        print(f"pairs {source['pairs_dir']} from {source['origin']}, config {source['config']}")
        return run_stage(preferences.prepare_dpo, source, context["dag"].dag_id, context["run_id"], logical_date(context))

    evaluate_train_and_gate(prepare_dataset())


dpo_alignment()
