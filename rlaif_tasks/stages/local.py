"""The stages of one alignment run as plain functions over a run directory.

Each stage reads the run config and the run directory and writes its output there, so the same
functions serve the one-process CLI (`rlaif run`) and the Airflow tasks, which pass only the run
directory and small ids between them.

    runs/<name>/config.yaml            the effective config
    runs/<name>/data/                  train.parquet, test.parquet, manifest.json
    runs/<name>/eval/<label>.json      per-judge and quality summary (+ <label>_samples.parquet)
    runs/<name>/eval/<label>.<set>.json  the same on each evaluation.extra_sets entry
    runs/<name>/train/                 metrics.jsonl, checkpoints/, final/ (the trained policy)
    runs/<name>/report.json            before/after comparison
"""

from __future__ import annotations

import logging
from pathlib import Path

from rlaif_tasks.config import RunConfig, open_run_dir
from rlaif_tasks.evaluation import red_team
from rlaif_tasks.evaluation.runner import compare_evaluations, evaluate_model
from rlaif_tasks.evaluation.toxicity import format_comparison, format_evaluation, read_evaluation
from rlaif_tasks.models import load_tokenizer
from rlaif_tasks.train import train

log = logging.getLogger(__name__)


def prepare_dataset(config: RunConfig) -> Path:
    """Load, filter and split the prompts with the policy's tokenizer (not its weights); returns the manifest path.

    With red_team.train_on_attacks the red-team set's prompts join the train split, with red_team.evaluate a copy of
    the set becomes the run's evaluation set `red-team` (data/red-team.jsonl): the set as it is now, for the whole run.
    """
    from rlaif_tasks.data import prepare_prompts

    run_dir = open_run_dir(config)
    m, r = config.model, config.red_team
    tokenizer = load_tokenizer(m.policy, revision=m.revision, trust_remote_code=m.trust_remote_code)
    attacks, source = None, red_team.set_path(config)
    if r.train_on_attacks or r.evaluate:
        attacks = [row["prompt"] for row in red_team.read_set(source)]
        log.info("the red-team set %s holds %d attack(s)%s%s", source, len(attacks), "; training on them" * r.train_on_attacks,
                 "; evaluating on them" * r.evaluate)
    splits = prepare_prompts(
        config.data, tokenizer, run_dir, seed=config.data.seed, train_attacks=attacks if r.train_on_attacks else None,
        eval_attacks=attacks if r.evaluate else None, attacks_source=str(source),
    )
    return splits.manifest_path


def train_policy(config: RunConfig) -> Path:
    """Train the policy with the configured algorithm; returns the folder of the trained model."""
    return train(config, open_run_dir(config))


def run_pipeline(config: RunConfig) -> dict:
    """The whole run in one process: data, baseline evaluation, training, final evaluation, report."""
    run_dir = open_run_dir(config)
    log.info("run %s in %s (config %s)", config.name, run_dir, config.config_hash())
    prepare_dataset(config)
    baseline = read_evaluation(evaluate_model(config, "baseline"))
    if config.train.steps == 0:
        return {"run_dir": str(run_dir), "baseline": baseline, "text": "baseline toxicity (no training: train.steps=0)\n" + format_evaluation(baseline)}
    model_dir = train_policy(config)
    evaluate_model(config, "final", str(model_dir))
    report = compare_evaluations(config, "baseline", "final")
    report["model_dir"] = str(model_dir)
    report["text"] = f"toxicity before -> after training ({config.train.describe()})\n" + format_comparison(report["judges"])
    return report
