"""Preference pairs from AI feedback, published as the Asset that reward_model_training and dpo_alignment run on.

    prepare -> build_preferences  --[rlaif-<name>-preferences: pairs, judge, margin, path, config]-->

The policy samples `preferences.k` responses per train prompt, the `reward` judge scores them, and
the best and worst become a pair when their gap beats `preferences.margin` (rlaif_tasks.preferences);
with `preferences.source` set to a file or hub dataset the pairs are imported instead. The pairs stay
in this DAG run's folder; the asset event names that folder and its sha256, so a consumer reads
exactly these pairs. No schedule: trigger it when new pairs are wanted, e.g.

    airflow dags trigger ai_feedback_preferences -c '{"config": "configs/demo.yaml", "margin": 0.3}'

Retries, pools, timeouts and the failure callback are rlaif_nightly's (rlaif_tasks/orchestration.py); a
cleared task reuses the run folder and MLflow run, but a cleared build_preferences announces its
pairs again, and the consumers run again on them, as Airflow does for any producer task that succeeds.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, result, task

from rlaif_tasks.orchestration import (
    DAG_CONFIG,
    PREFERENCES,
    config_param,
    dag_settings,
    eval_timeout,
    from_config,
    model_param,
    on_gpu,
    prepare_from_form,
    run_stage,
    set_param,
)
from rlaif_tasks.stages import preferences

# Trigger-form param -> config key it overrides.
OVERRIDE_PARAMS = {"policy": "model.policy", "reward": "reward.model", "k": "preferences.k", "margin": "preferences.margin"}


@dag(
    dag_id="ai_feedback_preferences",
    description=f"Preference pairs from the policy and the reward judge, published as the asset {PREFERENCES.name}",
    schedule=None,
    tags=["rlaif", "alignment", "preferences", "asset"],
    doc_md=__doc__,
    params={
        "config": config_param(DAG_CONFIG),
        "policy": model_param("model.policy", "the policy that samples the responses"),
        "reward": model_param("reward.model", "the judge that scores them"),
        "k": Param(None, type=["null", "integer"], minimum=2, description=f"preferences.k, responses sampled per prompt; empty: {from_config('preferences.k')}."),
        "margin": Param(None, type=["null", "number"], minimum=0, description=f"preferences.margin, the score gap a pair must beat; empty: {from_config('preferences.margin')}."),
        "set": set_param(),
    },
    **dag_settings(),
)
def ai_feedback_preferences():
    @task
    def prepare() -> dict:
        return prepare_from_form(preferences.prepare, OVERRIDE_PARAMS)

    @result
    @task(outlets=[PREFERENCES], execution_timeout=eval_timeout, **on_gpu)  # the policy generates, the judge scores
    def build_preferences(refs: dict) -> dict:
        refs = run_stage(preferences.build_preferences, refs)
        event = refs.pop("event")
        get_current_context()["outlet_events"][PREFERENCES].extra = event
        print(f"published {PREFERENCES.name}: {event['pairs']} pairs, judge {event['judge']}, margin {event['margin']}, in {event['path']}")
        return refs

    build_preferences(prepare())


ai_feedback_preferences()
