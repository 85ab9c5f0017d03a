"""Stage functions of the three DAGs linked by the preferences Asset (rlaif_tasks/orchestration.py):

    ai_feedback_preferences   prepare -> build_preferences            (publishes the pairs: the asset event's extra)
    reward_model_training     prepare_reward_model -> train_reward_model -> register_reward_model
    dpo_alignment             prepare_dpo -> rlaif_tasks.stages.nightly's baseline_eval ... report (DPO on the published pairs)

The contract is stages/common.py's, and these reuse rlaif_tasks.stages.nightly's stages: small
JSON-able refs between stages, one run folder and one MLflow run per DAG run (found again by the DAG
run's tags), finished work reused, so any task can be retried or cleared. Run folders are
`<run_dir>/<DAG id>/<DAG run id>` (stages/common.run_folder).

A consumer takes the pairs folder, the config and its overrides from the newest triggering asset
event (or from its trigger form when run by hand); the config path in an event must pass the same
check as a trigger form's, since anyone allowed to post asset events could write one. No Airflow import.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from rlaif_tasks import registry, tracking
from rlaif_tasks.config import REWARD_MODEL_SUFFIX, RunConfig, config_roots, load_config
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.overrides import check_trigger_overrides, folder_pattern
from rlaif_tasks.rewards.reward_model import SUMMARY_FILE
from rlaif_tasks.stages import nightly
from rlaif_tasks.stages.common import connect, finish_run, load_run
from rlaif_tasks.tags import TAG_MODEL_KIND, TAG_PREFERENCES, TAG_PREFERENCES_FROM

log = logging.getLogger(__name__)

PRODUCER_DAG = "ai_feedback_preferences"
REWARD_ARTIFACT = "reward_model"


def reward_model_name(config: RunConfig) -> str:
    """`<registered policy name>-reward`: the registered model the reward-model Asset stands for."""
    return f"{tracking.registered_model_name(config)}{REWARD_MODEL_SUFFIX}"


# -- producer: ai_feedback_preferences --------------------------------------------------------------


def prepare(
    config_path: str, overrides: dict, dag_id: str, dag_run_id: str, logical_date: str | None = None, *,
    asset_config: str | None = None, internal: dict | None = None,
) -> dict:
    """nightly.prepare_dataset in this DAG's own folder; remembers the config and overrides the consumers reuse.

    `asset_config` is the config name of the preferences asset the DAG publishes to: pairs built with a
    config of another name would be announced as that config's, so such a config is refused. `overrides`
    come from a trigger and are checked (nightly.prepare_dataset); `internal` are this module's own settings.
    """
    overrides = dict(overrides or {})
    config = load_config(config_path)  # `name` is no key a trigger may set
    if asset_config is not None and config.name != asset_config:
        raise RlaifError(
            f"the config {config_path} is named {config.name!r}; this DAG publishes the preferences asset of {asset_config!r}",
            f"trigger with a config named {asset_config!r}, or run the DAG processor with RLAIF_DAG_CONFIG naming {config_path}",
        )
    refs = nightly.prepare_dataset(config_path, overrides, dag_id, dag_run_id, logical_date, own_folder=True, internal=internal)
    return {**refs, "config": config_path, "overrides": overrides}


def build_preferences(refs: dict) -> dict:
    """The run's preference pairs (AI feedback on its train prompts, or an import), logged and announced.

    Returns the refs, the pairs folder and `event`: the asset event's extra (pair count, judge, margin,
    the folder, its sha256, and the config the consumers should train with). Closes the MLflow run.
    """
    from rlaif_tasks.data import load_prompts_split
    from rlaif_tasks.preferences import read_preferences
    from rlaif_tasks.preferences.run_pairs import preference_pairs

    config, run_dir = load_run(refs)
    preference_pairs(config, run_dir, load_prompts_split(run_dir, "train"))  # reuses run_dir/preferences when a try made it
    pairs_dir = run_dir / "preferences"
    _, manifest = read_preferences(pairs_dir)
    client, run_id = connect(config), refs["mlflow_run_id"]
    tracking.log_metrics_once(client, run_id, {"preferences/pairs": float(manifest["pairs"]), "preferences/prompts": float(manifest["prompts"])})
    client.set_tag(run_id, TAG_PREFERENCES, manifest["sha256"])
    client.log_artifacts(run_id, str(pairs_dir), "preferences")
    finish_run(client, run_id)
    event = {
        "pairs": int(manifest["pairs"]), "prompts": int(manifest["prompts"]), "source": manifest.get("source"),
        "judge": manifest.get("judge"), "margin": manifest.get("margin"), "k": manifest.get("k"),
        "path": str(pairs_dir), "sha256": manifest["sha256"], "name": config.name,
        "config": refs["config"], "overrides": refs["overrides"], "mlflow_run_id": run_id,
    }
    return {**refs, "pairs_dir": str(pairs_dir), "pairs": event["pairs"], "event": event}


# -- consumers: where their pairs and config come from ---------------------------------------------


def preference_source(trigger: dict, *, default_config: str, config_pattern: str, roots: list[str] | None = None) -> dict:
    """Pairs folder, config and overrides for a consumer run: its trigger form's, else the newest event's.

    `trigger` holds `events` (each with `extra`, `timestamp`, `source_dag_id`, `source_run_id`), and the
    form's `pairs`, `config` (None: from the event) and `overrides`, which apply on top of the event's.
    Anyone allowed to post an asset event could write one, so it is checked like a trigger form: the
    config under the roots, the overrides against that config's orchestration.trigger_overrides, the
    pairs folder under `roots` (default: config_roots()). No MLflow, no secret: the DAGs call it first.
    """
    events = sorted(trigger.get("events") or [], key=lambda e: str(e.get("timestamp")))
    newest = events[-1] if events else {}
    extra = newest.get("extra") or {}
    pairs_dir = trigger.get("pairs") or extra.get("path")
    if not pairs_dir:
        raise RlaifError(
            "this run has no preference pairs: no preferences asset event triggered it and its `pairs` param is empty",
            f"trigger {PRODUCER_DAG} (this DAG runs on the pairs it publishes), or set `pairs` to a preferences folder",
        )
    config = trigger.get("config") or extra.get("config") or default_config
    if not re.match(config_pattern, config):
        raise RlaifError(
            f"the config {config!r} named by the asset event from {newest.get('source_dag_id') or 'the REST API'} is not one a run may read",
            "publish preferences with ai_feedback_preferences (whose config param is checked), or name a config "
            "under the project, $RLAIF_HOME or $RLAIF_CONFIG_DIRS",
        )
    from_event = {} if trigger.get("config") else dict(extra.get("overrides") or {})
    origin = f"{newest.get('source_dag_id')}/{newest.get('source_run_id')}" if newest else "trigger form"
    roots = config_roots() if roots is None else roots
    overrides = {**from_event, **(trigger.get("overrides") or {})}
    check_trigger_overrides(load_config(config), overrides, roots, origin=f"the preferences event from {origin}" if newest else "this DAG run's form")
    if not _under(str(pairs_dir), roots):
        raise RlaifError(
            f"the pairs folder {pairs_dir!r} named by {origin} is not under the project, $RLAIF_HOME or $RLAIF_CONFIG_DIRS",
            "publish preferences with ai_feedback_preferences, or name a folder under one of those roots",
        )
    if len(events) > 1:
        log.info("%d preference events triggered this run; using the newest, from %s", len(events), origin)
    return {"pairs_dir": str(pairs_dir), "config": config, "overrides": overrides, "origin": origin}


def _under(path: str, roots: list[str]) -> bool:
    """A path the forms' `pairs` field would accept too (overrides.folder_pattern)."""
    return re.fullmatch(folder_pattern(roots), path) is not None


def _checked_pairs(source: dict) -> dict:
    """The manifest of the source's pairs, refusing a pairs file its manifest does not describe."""
    from rlaif_tasks.preferences import read_preferences

    return read_preferences(source["pairs_dir"])[1]


def _tag_source(refs: dict, source: dict, manifest: dict) -> None:
    config, _ = load_run(refs)
    client = connect(config)
    client.set_tag(refs["mlflow_run_id"], TAG_PREFERENCES, manifest["sha256"])
    client.set_tag(refs["mlflow_run_id"], TAG_PREFERENCES_FROM, source["origin"])


# -- consumer: reward_model_training ----------------------------------------------------------------


def prepare_reward_model(source: dict, dag_id: str, dag_run_id: str, logical_date: str | None = None) -> dict:
    """Run folder and MLflow run for a reward model on the source's pairs (checked against their manifest)."""
    manifest = _checked_pairs(source)
    refs = prepare(source["config"], source["overrides"], dag_id, dag_run_id, logical_date)
    _tag_source(refs, source, manifest)
    refs = {k: v for k, v in refs.items() if k not in ("config", "overrides")}  # the run folder's config.yaml has them
    return {**refs, "pairs_dir": source["pairs_dir"], "preferences_sha256": manifest["sha256"]}


def reward_model_config(config: RunConfig, *, learning_rate: float | None = None, epochs: float | None = None):
    """RewardModelConfig from the run's policy (the base model), LoRA, batch, seed and device; the rest its defaults."""
    from rlaif_tasks.train.reward_model import RewardModelConfig

    t = config.train
    cfg = RewardModelConfig(
        base_model=config.model.policy, **t.lora_settings(), batch_size=t.batch_size, seed=config.training_seed, device=config.device,
    )
    if learning_rate is not None:
        cfg.learning_rate = float(learning_rate)
    if epochs is not None:
        cfg.epochs = float(epochs)
    return cfg


def train_reward_model(refs: dict, *, learning_rate: float | None = None, epochs: float | None = None) -> dict:
    """Train the reward model into run_dir/reward_model (reused when a try finished it); logs its numbers."""
    from mlflow.entities import Param

    from rlaif_tasks.preferences import read_preferences
    from rlaif_tasks.train.reward_model import train_reward_model as fit

    config, run_dir = load_run(refs)
    out = run_dir / REWARD_ARTIFACT
    if (out / SUMMARY_FILE).is_file():
        log.info("reusing the trained reward model %s", out)
        summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    else:
        pairs, manifest = read_preferences(refs["pairs_dir"])
        if manifest["sha256"] != refs["preferences_sha256"]:
            raise RlaifError(
                f"the pairs in {refs['pairs_dir']} changed since this run started (sha256 {manifest['sha256'][:12]}, was {refs['preferences_sha256'][:12]})",
                "start a new run for the new pairs; a run trains on the pairs it was triggered with",
            )
        summary = fit(pairs, out, reward_model_config(config, learning_rate=learning_rate, epochs=epochs))
    client, run_id = connect(config), refs["mlflow_run_id"]
    keys = ("train_loss", "eval_accuracy", "eval_accuracy_initial", "eval_margin", "eval_margin_initial", "pairs_train", "pairs_eval", "steps")
    numbers = {k: summary.get(k) for k in keys} | {f"score_scale/{k}": v for k, v in (summary.get("score_scale") or {}).items() if isinstance(v, (int, float))}
    tracking.log_metrics_once(client, run_id, {f"reward_model/{k}": float(v) for k, v in numbers.items() if v is not None})
    existing = client.get_run(run_id).data.params
    settings = tracking.flatten(summary.get("config", {}), "reward_model")
    client.log_batch(run_id, params=[Param(k, v) for k, v in settings.items() if k not in existing])
    return {**refs, "reward_model_dir": str(out)}


def register_reward_model(refs: dict) -> dict:
    """Log the reward-model folder into the MLflow run and register it as `<policy name>-reward`; once per run.

    The folder is a plain transformers sequence classifier (one logit) with reward_model.json: it is
    logged as the run's artefacts, not as an MLflow flavour, and the version's source is that folder.
    Returns the refs, the version and `event`: the reward-model asset event's extra.
    """
    config, _ = load_run(refs)
    client, run_id = connect(config), refs["mlflow_run_id"]
    name, folder = reward_model_name(config), Path(refs["reward_model_dir"])
    existing = registry.versions_of_run(client, name, run_id)
    if existing:
        version = existing[0]
        log.info("MLflow run %s already registered %s version %s", run_id, name, version.version)
    else:
        if not (folder / "config.json").is_file():
            raise RlaifError(f"{folder} is not a trained reward model (no config.json)", "run train_reward_model of this DAG run first")
        client.log_artifacts(run_id, str(folder), REWARD_ARTIFACT)  # a retry before registering uploads it again, whole
        run = client.get_run(run_id)
        version = registry.create_version(
            client, name, run_id, f"{run.info.artifact_uri.rstrip('/')}/{REWARD_ARTIFACT}", tags={TAG_MODEL_KIND: "reward-model"},
            about=f"Reward models (sequence classifiers, 1 logit) trained on preference pairs of the rlaif config {config.name!r}.",
            description="A transformers folder (AutoModelForSequenceClassification, num_labels=1) with reward_model.json; "
            "usable as reward.model once downloaded (rlaif_tasks.rewards.reward_model.RewardModelBackend).",
        )
        log.info("registered %s version %s from MLflow run %s", name, version.version, run_id)
    registry.verify_registered_weights(client, name, version.version, folder)  # catches an upload cut short
    summary = json.loads((folder / "reward_model.json").read_text(encoding="utf-8"))
    finish_run(client, run_id)
    event = {
        "name": name, "version": str(version.version), "model_uri": registry.model_uri(name, version.version), "folder": str(folder),
        "pairs_sha256": refs["preferences_sha256"], "eval_accuracy": summary.get("eval_accuracy"), "mlflow_run_id": run_id,
    }
    return {**refs, "model_name": name, "model_version": str(version.version), "event": event}


# -- consumer: dpo_alignment --------------------------------------------------------------------------


def prepare_dpo(source: dict, dag_id: str, dag_run_id: str, logical_date: str | None = None) -> dict:
    """nightly.prepare_dataset for DPO on the source's pairs: the nightly stages then train, gate and register as usual.

    The pairs go in as `preferences.source` (the human-import path reads the parquet and keeps
    prompt, chosen and rejected; the AI-feedback columns beside them are ignored).
    """
    from rlaif_tasks.preferences.ai_feedback import PAIRS_FILE

    manifest = _checked_pairs(source)
    internal = {"train.algorithm": "dpo", "preferences.source": str(Path(source["pairs_dir"]) / PAIRS_FILE)}
    refs = prepare(source["config"], source["overrides"], dag_id, dag_run_id, logical_date, internal=internal)
    _tag_source(refs, source, manifest)
    return {k: v for k, v in refs.items() if k not in ("config", "overrides")}  # the run folder's config.yaml has them
