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

import dataclasses
import logging
from pathlib import Path

from rlaif_tasks.atomic import write_json, write_text
from rlaif_tasks.config import RunConfig
from rlaif_tasks.evaluation import compare, evaluate_policy, read_evaluation, write_evaluation
from rlaif_tasks.errors import RlaifError

log = logging.getLogger(__name__)


def run_dir_of(config: RunConfig) -> Path:
    run_dir = config.resolved_run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", config.to_yaml())
    return run_dir


def load_policy(config: RunConfig, spec: str | None = None):
    from rlaif_tasks.models import load_model, resolve_device

    m = config.model
    return load_model(
        spec or m.policy, kind="auto", revision=m.revision, trust_remote_code=m.trust_remote_code,
        dtype=m.dtype, device=resolve_device(config.device),
    )


def load_judges(config: RunConfig):
    from rlaif_tasks.models import resolve_device
    from rlaif_tasks.rewards import build_scorer

    device = resolve_device(config.device)
    return [build_scorer(j, purpose="toxicity", device=device) for j in config.evaluation.judges]


def prepare_dataset(config: RunConfig) -> Path:
    """Load, filter and split the prompts with the policy's tokenizer (not its weights); returns the manifest path."""
    from rlaif_tasks.data import prepare_prompts
    from rlaif_tasks.models import load_tokenizer

    run_dir = run_dir_of(config)
    m = config.model
    tokenizer = load_tokenizer(m.policy, revision=m.revision, trust_remote_code=m.trust_remote_code)
    splits = prepare_prompts(config.data, tokenizer, run_dir, seed=config.data.seed)
    return splits.manifest_path


def load_quality_models(config: RunConfig, policy=None):
    """The fluency LM (evaluation.fluency_model, else the base policy: `policy` when it is the base) and the relevance encoder."""
    from rlaif_tasks.evaluation import QualityModels
    from rlaif_tasks.evaluation_quality import SentenceEncoder
    from rlaif_tasks.models import resolve_device

    e = config.evaluation
    fluency = policy if (policy is not None and e.fluency_model is None) else load_policy(config, e.fluency_model or config.model.policy)
    encoder = SentenceEncoder(e.relevance_model, device=resolve_device(config.device)) if e.relevance_model else None
    return QualityModels(fluency=fluency, encoder=encoder)


def extra_set_name(source: str) -> str:
    """`bundled:detox-ood` -> `detox-ood`, `data/forum.jsonl` -> `forum`: the suffix of its eval files and metrics."""
    return Path(source.removeprefix("bundled:")).stem


def evaluate_model(config: RunConfig, label: str, model_spec: str | None = None, *, model=None) -> Path:
    """Evaluate a policy (the configured one, `model_spec`, or an already-loaded `model`) on the test split and on
    each extra set; returns the test summary's path (`eval/<label>.json`; extra sets in `eval/<label>.<set>.json`)."""
    from rlaif_tasks.data import load_eval_set, load_prompts_split

    run_dir = run_dir_of(config)
    policy = model if model is not None else load_policy(config, model_spec)
    quality = load_quality_models(config, policy if model_spec is None and model is None else None)
    judges = load_judges(config)
    extra = dataclasses.replace(config.evaluation, samples_per_prompt=config.evaluation.extra_samples_per_prompt, num_prompts=None)
    sets = [(label, load_prompts_split(run_dir, "test"), config.evaluation)]
    for source in config.evaluation.extra_sets:
        sets.append((f"{label}.{extra_set_name(source)}", load_eval_set(source, policy.tokenizer, config.data.use_chat_template), extra))
    paths = []
    for name, prompts, settings in sets:
        evaluation = evaluate_policy(policy.model, policy.tokenizer, prompts, judges, config.generation, settings, quality=quality)
        paths.append(write_evaluation(evaluation, run_dir / "eval", name))
    return paths[0]


def compare_evaluations(config: RunConfig, before: str = "baseline", after: str = "final") -> dict:
    run_dir = config.resolved_run_dir
    paths = [run_dir / "eval" / f"{label}.json" for label in (before, after)]
    for path in paths:
        if not path.is_file():
            raise RlaifError(f"evaluation {path} is missing", f"run `rlaif evaluate --label {path.stem}` for this run first")
    report = {"before": before, "after": after, "judges": compare(*(read_evaluation(p) for p in paths))}
    extra = {}
    for source in config.evaluation.extra_sets:
        name = extra_set_name(source)
        pair = [run_dir / "eval" / f"{label}.{name}.json" for label in (before, after)]
        if all(p.is_file() for p in pair):
            extra[name] = compare(*(read_evaluation(p) for p in pair))
    if extra:
        report["extra_sets"] = extra
    write_json(run_dir / "report.json", report)
    return report


def train_policy(config: RunConfig) -> Path:
    """Train the policy with the configured algorithm; returns the folder of the trained model."""
    from rlaif_tasks.train import train

    return train(config, run_dir_of(config))


def run_pipeline(config: RunConfig) -> dict:
    """The whole run in one process: data, baseline evaluation, training, final evaluation, report."""
    from rlaif_tasks.evaluation import format_comparison, format_evaluation

    run_dir = run_dir_of(config)
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
