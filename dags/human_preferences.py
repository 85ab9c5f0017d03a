"""Preference pairs labelled by people in Airflow, published as the Asset that reward_model_training and dpo_alignment run on.

    prepare -> sample_pairs -> label (one Required Action per pair and labeller) -> collect  --[rlaif-<name>-preferences: pairs, who labelled, agreement, path]-->

The policy answers `human_preferences.pairs` train prompts twice each; every pair becomes a
Human-in-the-Loop task (`label`, mapped) that shows the prompt and responses A and B and asks
"A is better", "B is better", "Tie" or "Both bad", with an optional comment. Only the config file's
`human_preferences.labellers` may answer (Browse -> Required Actions, or the REST API; anyone else gets
403), within `human_preferences.response_timeout_hours`; an unanswered pair ends without a label.
`collect` turns A/B answers into (chosen, rejected) pairs with who labelled each and when (ties and
both-bad answers are counted, not paired; with `labels_per_pair` >= 2 only agreeing answers make a
pair, and the agreement is reported), checks them as imported pairs are checked, and publishes the
folder on the same preferences Asset as ai_feedback_preferences. No schedule: trigger it when a batch
should be labelled, e.g.

    airflow dags trigger human_preferences -c '{"config": "configs/demo.yaml", "pairs": 8}'

A trigger may set the number of pairs and the policy, never who labels. Retries, pools, timeouts and
the failure callback are rlaif_nightly's; the DAG run's timeout has the labellers' time added.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, result, task

from rlaif_tasks.orchestration import (
    DAG_CONFIG,
    PREFERENCES,
    LabelPair,
    config_param,
    eval_timeout,
    from_config,
    labelling_settings,
    model_param,
    on_gpu,
    prepare_from_form,
    run_stage,
    set_param,
)
from rlaif_tasks.stages import human

# Trigger-form param -> config key it overrides.
OVERRIDE_PARAMS = {"policy": "model.policy", "pairs": "human_preferences.pairs"}


@dag(
    dag_id="human_preferences",
    description=f"Pairs of the policy's responses labelled by people (Required Actions), published as the asset {PREFERENCES.name}",
    schedule=None,
    tags=["rlaif", "alignment", "preferences", "human", "asset"],
    doc_md=__doc__,
    params={
        "config": config_param(DAG_CONFIG),
        "policy": model_param("model.policy", "the policy whose two responses to each prompt are compared"),
        "pairs": Param(None, type=["null", "integer"], minimum=1, description=f"human_preferences.pairs, prompts to label; empty: {from_config('human_preferences.pairs')}."),
        "set": set_param(),
    },
    **labelling_settings(),
)
def human_preferences():
    @task
    def prepare() -> dict:
        return prepare_from_form(human.prepare, OVERRIDE_PARAMS)

    @task(execution_timeout=eval_timeout, **on_gpu)  # the policy answers each prompt twice
    def sample_pairs(refs: dict) -> list[dict]:
        return run_stage(human.sample_pairs, refs)

    @result
    @task(outlets=[PREFERENCES])
    def collect(refs: dict, answers) -> dict:
        refs = run_stage(human.collect, refs, list(answers))
        event = refs.pop("event")
        get_current_context()["outlet_events"][PREFERENCES].extra = event
        print(f"published {PREFERENCES.name}: {event['pairs']} pairs labelled by {', '.join(event['labelled_by'])}; {event['ties']} ties, "
              f"{event['both_bad']} both bad, {event['disagreed']} disagreements, {event['unanswered']} unanswered; in {event['path']}")
        return refs

    refs = prepare()
    collect(refs, LabelPair.partial(task_id="label").expand(request=sample_pairs(refs)).output)


human_preferences()
