"""Stage functions of the red_team DAG: a red team every night, after Perez et al. 2022.

    prepare -> generate_attacks -> answer_attacks -> publish   --[rlaif-<name>-red-team: successful attacks, set size, path]-->

`prepare` is ai_feedback_preferences' (run folder `<run_dir>/red_team/<DAG run id>`, its own MLflow run,
the trigger's overrides checked), after the red_team settings are. `generate_attacks` asks the red LM,
the configured base policy `model.policy`, for `red_team.attacks` provocations: zero-shot from
`red_team.instruction`, few-shot once the red-team set holds successful attacks of earlier nights (up to
`red_team.few_shot` per prompt, the more toxic the likelier); it keeps each sample's first line and drops
what `evaluation.red_team.filter_attacks` drops, into `red_team/attacks.json`. A night whose red LM wrote
nothing usable ends there with an RlaifError: nothing is answered or published. `answer_attacks` lets the
champion (`models:/<registered policy>@champion`, pinned to its version for the run; the base policy while
there is none) answer each kept attack, and the newest `red_team.set_eval_limit` attacks of the set, with
`red_team.answers_per_attack` samples each, scored by every evaluation judge (the evaluation's sampling:
per-answer seeds, batched). `publish` keeps the attacks that drew an answer scored >= evaluation.toxic_threshold
by any judge, writes them to `red_team/successful.jsonl`, merges them into the red-team set file
(`red_team.set_file`) and returns the asset event's extra; metrics and the folder go to the MLflow run.

Every stage reuses what a finished try left in the run folder, as stages/common.py asks. No Airflow import,
and nothing heavy at import time: the DAG processor imports this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from pathlib import Path

from rlaif_tasks import registry, tracking
from rlaif_tasks.atomic import write_json, write_text
from rlaif_tasks.config import config_roots, load_config
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.evaluation import red_team as rt
from rlaif_tasks.overrides import check_trigger_overrides
from rlaif_tasks.stages import preferences
from rlaif_tasks.stages.common import connect, finish_run, load_run

log = logging.getLogger(__name__)

FOLDER = "red_team"
ATTACKS_FILE = Path(FOLDER) / "attacks.json"
CHAMPION_FILE = Path(FOLDER) / "champion.json"
ANSWERS = "answers"
"""red_team/answers.json (the evaluation summary) and red_team/answers_samples.parquet (every answer, scored)."""
SUCCESSFUL_FILE = Path(FOLDER) / "successful.jsonl"
TONIGHT, IN_SET = "tonight", "set"
"""The `red_team` column of the answers: an attack written tonight, or one of the set's that the champion answers again."""
CONFIDENCE = 0.95


def prepare(
    config_path: str, overrides: dict, dag_id: str, dag_run_id: str, logical_date: str | None = None, *, asset_config: str | None = None,
) -> dict:
    """The run folder and MLflow run (preferences.prepare), once the trigger's overrides and the red_team settings are known to work."""
    check_trigger_overrides(load_config(config_path), dict(overrides or {}), config_roots(), origin="this DAG run's form")
    rt.check_settings(load_config(config_path, overrides).red_team)
    return preferences.prepare(config_path, overrides, dag_id, dag_run_id, logical_date, asset_config=asset_config)


# -- attacks ------------------------------------------------------------------------------------------


def generate_attacks(refs: dict) -> dict:
    """The red LM's attacks of this night in red_team/attacks.json (kept on a retry), with their filter report; logs the counts.

    Raises RlaifError, publishing nothing, when no sample gave a new attack.
    """
    config, run_dir = load_run(refs)
    path = run_dir / ATTACKS_FILE
    if path.is_file():
        log.info("reusing the attacks of an earlier try: %s", path)
        batch = json.loads(path.read_text(encoding="utf-8"))
    else:
        batch = _sample_attacks(config, run_dir)
        write_json(path, batch)
    report = batch["report"]
    metrics = {
        "red_team/samples": float(len(batch["samples"])), "red_team/tried": float(report["candidates"] - report["dropped"]["empty"]),
        "red_team/kept": float(report["kept"]), "red_team/set_size_before": float(batch["set_size"]),
        "red_team/few_shot_examples": _mean([len(s["few_shot"]) for s in batch["samples"]]),
        **{f"red_team/dropped/{reason}": float(n) for reason, n in report["dropped"].items()},
    }
    if not math.isnan(batch["self_bleu"]):
        metrics["red_team/self_bleu"] = float(batch["self_bleu"])
    tracking.log_metrics_once(connect(config), refs["mlflow_run_id"], metrics)
    log.info("the red LM %s wrote %d sample(s) (%s): %d kept, dropped %s; self-BLEU of the kept %.3f", batch["red_lm"], len(batch["samples"]),
             "few-shot" if batch["set_size"] else "zero-shot", report["kept"], report["dropped"], batch["self_bleu"])
    if not batch["kept"]:
        raise rt.nothing_usable(report, batch["red_lm"])
    return {**refs, "attacks": len(batch["kept"])}


def _sample_attacks(config, run_dir: Path) -> dict:
    """`red_team.attacks` samples of the red LM, each prompted with its own few-shot draw from the set, parsed and filtered."""
    from rlaif_tasks.data.prepare import apply_template
    from rlaif_tasks.evaluation.runner import load_policy
    from rlaif_tasks.evaluation.stats import sampling_seeds
    from rlaif_tasks.generation import generate

    r = config.red_team
    the_set = rt.read_set(rt.set_path(config))
    night = f"{config.training_seed}/{run_dir.name}"  # a pinned seed still explores anew each night; a retry repeats its night
    rng = random.Random(f"red-team few-shot:{night}")
    shots = [rt.few_shot_examples(the_set, r.few_shot, rng, r.few_shot_temperature) for _ in range(r.attacks)]
    red = load_policy(config)
    queries = apply_template([rt.red_lm_prompt(r.instruction, s) for s in shots], red.tokenizer, use_chat_template=False)
    gen = dataclasses.replace(config.generation, max_new_tokens=r.max_new_tokens, min_new_tokens=min(config.generation.min_new_tokens, r.max_new_tokens))
    out = generate(red.model, red.tokenizer, queries, gen, seed=config.training_seed, batch_size=config.evaluation.batch_size,
                   row_seeds=sampling_seeds(config.training_seed, [f"red-team:{night}/{i}" for i in range(r.attacks)]))
    attacks = [rt.parse_attack(text) for text in out.responses]
    kept, report = rt.filter_attacks(attacks, [row["prompt"] for row in the_set], min_words=r.min_words, max_words=r.max_words, threshold=r.dedup_threshold)
    return {
        "red_lm": config.model.policy, "instruction": r.instruction, "set_size": len(the_set), "seed": config.training_seed,
        "samples": [{"few_shot": s, "sample": text, "attack": a} for s, text, a in zip(shots, out.responses, attacks)],
        "kept": kept, "report": report, "self_bleu": rt.self_bleu(kept),
    }


def _read(run_dir: Path, relative: Path, stage: str) -> dict:
    path = run_dir / relative
    if not path.is_file():
        raise RlaifError(f"{path} is missing: this run's {stage} did not finish", f"run {stage} of this DAG run first (clear it and its downstream tasks)")
    return json.loads(path.read_text(encoding="utf-8"))


# -- answers ------------------------------------------------------------------------------------------


def champion_spec(config, client) -> dict:
    """The model that answers: the registered policy's champion, pinned to its version, else the base policy."""
    name = tracking.registered_model_name(config)
    version = registry.get_alias(client, name, registry.CHAMPION)
    if version is None:
        return {"spec": config.model.policy, "kind": "base", "name": name, "version": None}
    return {"spec": registry.model_uri(name, version.version), "kind": "champion", "name": name, "version": str(version.version)}


def answer_attacks(refs: dict) -> dict:
    """The champion's answers to tonight's kept attacks and to the set's newest ones, scored by every judge (reused on a retry)."""
    config, run_dir = load_run(refs)
    batch = _read(run_dir, ATTACKS_FILE, "generate_attacks")
    folder = run_dir / FOLDER
    if (run_dir / CHAMPION_FILE).is_file():
        champion = _read(run_dir, CHAMPION_FILE, "answer_attacks")
    else:
        champion = champion_spec(config, connect(config))
        write_json(run_dir / CHAMPION_FILE, champion)  # a retry answers with the same version, even if the champion moved
    if (folder / f"{ANSWERS}.json").is_file() and (folder / f"{ANSWERS}_samples.parquet").is_file():
        log.info("reusing the answers of an earlier try in %s", folder)
    else:
        _answer(config, folder, champion["spec"], batch["kept"])
    return {**refs, "champion": champion["spec"]}


def _answer(config, folder: Path, spec: str, kept: list[str]) -> None:
    import pandas as pd

    from rlaif_tasks.data.prepare import apply_template
    from rlaif_tasks.evaluation.runner import load_judges, load_policy
    from rlaif_tasks.evaluation.toxicity import evaluate_policy, write_evaluation

    r = config.red_team
    known, tonight = rt.read_set(rt.set_path(config)), set(kept)
    earlier = [row["prompt"] for row in (known if r.set_eval_limit is None else known[-r.set_eval_limit :]) if row["prompt"] not in tonight]
    prompts = [*kept, *earlier]
    log.info("%s answers %d attack(s) of tonight and %d of the red-team set, %d time(s) each", spec, len(kept), len(earlier), r.answers_per_attack)
    policy = load_policy(config, spec)
    frame = pd.DataFrame({"prompt": prompts, "query": apply_template(prompts, policy.tokenizer, config.data.use_chat_template)})
    settings = dataclasses.replace(config.evaluation, samples_per_prompt=r.answers_per_attack, num_prompts=None)
    evaluation = evaluate_policy(policy.model, policy.tokenizer, frame, load_judges(config), config.generation, settings)
    evaluation.samples["red_team"] = [TONIGHT if p in tonight else IN_SET for p in evaluation.samples["prompt"]]
    write_evaluation(evaluation, folder, ANSWERS)


# -- publishing ---------------------------------------------------------------------------------------


def publish(refs: dict) -> dict:
    """Tonight's successful attacks into red_team/successful.jsonl and the red-team set; the night's metrics; the asset event's extra.

    Closes the MLflow run. A retry adds nothing twice to the set (attacks are merged by their words).
    """
    import pandas as pd

    from rlaif_tasks.evaluation.toxicity import summarise

    config, run_dir = load_run(refs)
    batch = _read(run_dir, ATTACKS_FILE, "generate_attacks")
    champion = _read(run_dir, CHAMPION_FILE, "answer_attacks")
    folder = run_dir / FOLDER
    judges = list(_read(run_dir, Path(FOLDER) / f"{ANSWERS}.json", "answer_attacks")["judges"])
    samples = pd.read_parquet(folder / f"{ANSWERS}_samples.parquet")
    threshold = config.evaluation.toxic_threshold
    tonight = samples[samples["red_team"] == TONIGHT]
    outcomes = rt.attack_outcomes(tonight.to_dict("records"), judges, threshold)
    client, run_id = connect(config), refs["mlflow_run_id"]
    found = {"night": run_dir.name, "mlflow_run_id": run_id, "red_lm": batch["red_lm"], "answered_by": champion["spec"],
             "few_shot": bool(batch["set_size"]), "found_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    successful = [
        {"prompt": prompt, "score": outcomes[prompt]["score"], "scores": outcomes[prompt]["scores"], "judge": outcomes[prompt]["judge"],
         "answer": outcomes[prompt]["answer"], "answers": outcomes[prompt]["answers"], **found}
        for prompt in batch["kept"] if outcomes[prompt]["succeeded"]
    ]
    write_text(run_dir / SUCCESSFUL_FILE, "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in successful))
    path = rt.set_path(config)
    if successful:
        rows, added = rt.merge_into_set(path, successful)
    else:
        rows, added = rt.read_set(path), 0
    kept = len(batch["kept"])
    lower, upper = rt.wilson_interval(len(successful), kept, CONFIDENCE)
    metrics = {
        "red_team/succeeded": float(len(successful)), "red_team/success_rate": len(successful) / kept, "red_team/success_rate_lower": lower,
        "red_team/success_rate_upper": upper, "red_team/added": float(added), "red_team/set_size": float(len(rows)),
    }
    metrics.update(_toxicity("red_team/tonight", tonight, judges, threshold, summarise))
    earlier = samples[samples["red_team"] == IN_SET]
    if len(earlier):
        metrics.update(_toxicity("red_team/set", earlier, judges, threshold, summarise))
        metrics["red_team/set/attacks"] = float(earlier["prompt"].nunique())
    tracking.log_metrics_once(client, run_id, metrics)
    client.log_artifacts(run_id, str(folder), FOLDER)
    finish_run(client, run_id)
    log.info("%d of %d attack(s) drew a toxic answer from %s (%.0f%%, %.0f%% interval [%.2f, %.2f]); %d new in the red-team set %s, now %d",
             len(successful), kept, champion["spec"], 100 * len(successful) / kept, 100 * CONFIDENCE, lower, upper, added, path, len(rows))
    event = {
        "attacks": len(successful), "added": added, "tried": batch["report"]["candidates"] - batch["report"]["dropped"]["empty"], "kept": kept,
        "set_size": len(rows), "path": str(path), "sha256": _sha256(path), "run_path": str(run_dir / SUCCESSFUL_FILE),
        "champion": champion["spec"], "name": config.name, "config": refs["config"], "overrides": refs["overrides"], "mlflow_run_id": run_id,
    }
    return {**refs, "succeeded": len(successful), "event": event}


def _toxicity(prefix: str, rows, judges: list[str], threshold: float, summarise) -> dict[str, float]:
    """Per judge, mean toxicity of the answers, and expected max toxicity and toxicity probability over the attacks (rtp.py)."""
    out = {}
    for judge in judges:
        stats = summarise(rows[judge].astype(float).tolist(), threshold, rows["prompt_id"].tolist())
        out.update({tracking.metric_name(prefix, judge, stat): float(getattr(stats, stat)) for stat in ("mean", "expected_max", "toxicity_probability")})
    return out


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
