"""Evaluating a configured policy in a run folder: load it, its judges and quality models, evaluate, compare.

What `rlaif evaluate`, the nightly baseline/final evaluations and the gate's re-evaluation of a
champion all call: the policy answers the test split (and each `evaluation.extra_sets` entry, and with
`red_team.evaluate` the run's copy of the red-team set), every judge scores the answers, and the
summaries land in `eval/<label>.json` beside their samples.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from rlaif_tasks.atomic import write_json
from rlaif_tasks.config import RunConfig, open_run_dir
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.evaluation.rtp import paired_rtp, report_row
from rlaif_tasks.evaluation.toxicity import QualityModels, compare, evaluate_policy, read_evaluation, write_evaluation
from rlaif_tasks.models import load_model, resolve_device, resolve_dtype
from rlaif_tasks.rewards import build_scorer
from rlaif_tasks.rewards.relevance import SentenceEncoder

log = logging.getLogger(__name__)


def evaluation_dtype(config: RunConfig) -> str:
    """evaluation.dtype resolved on this machine: what the evaluated policies run in."""
    return resolve_dtype(config.evaluation.dtype, config.model.dtype, resolve_device(config.device))


def load_policy(config: RunConfig, spec: str | None = None):
    """The configured policy (or `spec`) as the evaluation runs it: in `evaluation.dtype`."""
    m = config.model
    return load_model(
        spec or m.policy, kind="auto", revision=m.revision, trust_remote_code=m.trust_remote_code,
        dtype=evaluation_dtype(config), device=resolve_device(config.device),
    )


def load_judges(config: RunConfig):
    device = resolve_device(config.device)
    return [build_scorer(j, purpose="toxicity", device=device) for j in config.evaluation.judges]


def load_quality_models(config: RunConfig, policy=None):
    """The fluency LM (evaluation.fluency_model, else the base policy: `policy` when it is the base) and the relevance encoder."""
    e = config.evaluation
    fluency = policy if (policy is not None and e.fluency_model is None) else load_policy(config, e.fluency_model or config.model.policy)
    encoder = SentenceEncoder(e.relevance_model, device=resolve_device(config.device)) if e.relevance_model else None
    return QualityModels(fluency=fluency, encoder=encoder, fluency_is_base=e.fluency_model is None)


def extra_set_name(source: str) -> str:
    """`bundled:detox-ood` -> `detox-ood`, `data/forum.jsonl` -> `forum`: the suffix of its eval files and metrics."""
    return Path(source.removeprefix("bundled:")).stem


def extra_sources(config: RunConfig, run_dir: Path | None = None) -> list[str]:
    """The extra evaluation sets of a run: `evaluation.extra_sets`, then with `red_team.evaluate` the red-team set as the run
    prepared it (`data/red-team.jsonl`, named `red-team`; absent when the set was empty then)."""
    from rlaif_tasks.data.prepare import RED_TEAM_FILE, data_dir

    sources = list(config.evaluation.extra_sets)
    copy = data_dir(run_dir or config.resolved_run_dir) / RED_TEAM_FILE
    if config.red_team.evaluate and copy.is_file():
        sources.append(str(copy))
    return sources


def evaluate_model(config: RunConfig, label: str, model_spec: str | None = None, *, model=None) -> Path:
    """Evaluate a policy (the configured one, `model_spec`, or an already-loaded `model`) on the test split and on
    each extra set; returns the test summary's path (`eval/<label>.json`; extra sets in `eval/<label>.<set>.json`)."""
    from rlaif_tasks.data import load_eval_set, load_prompts_split

    run_dir = open_run_dir(config)
    policy = model if model is not None else load_policy(config, model_spec)
    quality = load_quality_models(config, policy if model_spec is None and model is None else None)
    judges = load_judges(config)
    extra = dataclasses.replace(config.evaluation, samples_per_prompt=config.evaluation.extra_samples_per_prompt, num_prompts=None)
    sets = [(label, load_prompts_split(run_dir, "test"), config.evaluation)]
    for source in extra_sources(config, run_dir):
        sets.append((f"{label}.{extra_set_name(source)}", load_eval_set(source, policy.tokenizer, config.data.use_chat_template), extra))
    paths = []
    for name, prompts, settings in sets:
        evaluation = evaluate_policy(policy.model, policy.tokenizer, prompts, judges, config.generation, settings, quality=quality)
        paths.append(write_evaluation(evaluation, run_dir / "eval", name))
    return paths[0]


def compare_evaluations(config: RunConfig, before: str = "baseline", after: str = "final") -> dict:
    """report.json: per judge, `compare` of the two summaries and the RealToxicityPrompts metrics with intervals
    (`rtp_rows`), on the test split (`judges`) and on each extra set both evaluations have (`extra_sets`)."""
    run_dir = config.resolved_run_dir
    paths = [run_dir / "eval" / f"{label}.json" for label in (before, after)]
    for path in paths:
        if not path.is_file():
            raise RlaifError(f"evaluation {path} is missing", f"run `rlaif evaluate --label {path.stem}` for this run first")
    report = {"before": before, "after": after, "judges": _compare_labels(config, before, after)}
    extra = {}
    for source in extra_sources(config, run_dir):
        name = extra_set_name(source)
        pair = [run_dir / "eval" / f"{label}.{name}.json" for label in (before, after)]
        if all(p.is_file() for p in pair):
            extra[name] = _compare_labels(config, f"{before}.{name}", f"{after}.{name}")
    if extra:
        report["extra_sets"] = extra
    write_json(run_dir / "report.json", report)
    return report


def _compare_labels(config: RunConfig, before: str, after: str) -> dict[str, dict]:
    eval_dir = config.resolved_run_dir / "eval"
    rows = compare(*(read_evaluation(eval_dir / f"{label}.json") for label in (before, after)))
    samples = [eval_dir / f"{label}_samples.parquet" for label in (before, after)]
    if not all(p.is_file() for p in samples):
        log.warning("no samples table for %s or %s, so no expected max toxicity or toxicity probability", before, after)
        return rows
    for judge, extra in rtp_rows(config, *samples, list(rows)).items():
        rows[judge].update(extra)
    return rows


def rtp_rows(config: RunConfig, before_samples: str | Path, after_samples: str | Path, judges: list[str]) -> dict[str, dict[str, float]]:
    """Per judge, expected max toxicity and toxicity probability before and after, with their paired-bootstrap intervals
    over prompts (`rtp.report_row` keys), from two samples tables; the gate's confidence and resamples, evaluation.seed."""
    import pandas as pd

    before, after = (pd.read_parquet(path, columns=["prompt_id", *judges]) for path in (before_samples, after_samples))
    settings = {
        "threshold": config.evaluation.toxic_threshold, "n_resamples": config.gate.n_resamples,
        "confidence": config.gate.confidence, "seed": config.evaluation.seed,
    }
    return {
        judge: report_row(paired_rtp(before["prompt_id"].tolist(), before[judge].to_numpy(), after["prompt_id"].tolist(), after[judge].to_numpy(), **settings))
        for judge in judges
    }
