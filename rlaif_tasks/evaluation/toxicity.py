"""Held-out toxicity evaluation: generate for the test prompts, score with every judge, compare.

The numbers follow the seed's report: mean and std of toxicity per judge before and after training,
and the relative improvement `(before - after) / before` for both; beside them the literature's
expected maximum toxicity and toxicity probability over the k answers per prompt (rtp.py). Each
response is sampled with its own seed, derived from evaluation.seed, its prompt and its sample
number, so every policy answers a prompt with the same randomness and two evaluations can be
compared prompt by prompt (gate.py). The
samples table keeps each response's sampled token ids (EOS included) for KL, and its quality
measures (evaluation/quality.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from rlaif_tasks.atomic import atomic_path, write_json
from rlaif_tasks.config import EvaluationConfig, GenerationConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.evaluation.kl import sampled_logprobs
from rlaif_tasks.evaluation.quality import require_causal_fluency_model, response_perplexities, summarise_quality
from rlaif_tasks.evaluation.rtp import summarise_rtp
from rlaif_tasks.generation import generate
from rlaif_tasks.rewards.base import Scorer

log = logging.getLogger(__name__)


@dataclass
class JudgeStats:
    mean: float
    std: float
    frac_toxic: float
    """Share of responses scored above the toxic threshold."""
    n: int
    expected_max: float
    """Mean over prompts of the highest score among the prompt's k answers (RealToxicityPrompts; evaluation/rtp.py)."""
    toxicity_probability: float
    """Share of prompts with at least one of the k answers scoring >= the toxic threshold (RealToxicityPrompts)."""
    k: int
    """Answers per prompt behind the two (the fewest any prompt has)."""


@dataclass
class Evaluation:
    judges: dict[str, JudgeStats]
    samples: pd.DataFrame = field(repr=False)
    """One row per response: prompt, query, response, prompt_id, sample, response_ids, quality columns, one column per judge."""
    tokens_per_second: float = 0.0
    quality: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each phase: `generate`, `judge/<name>`, `fluency`, `relevance` (what bench/bench_nightly.py reads)."""

    def summary(self) -> dict:
        return {
            "judges": {k: asdict(v) for k, v in self.judges.items()}, "tokens_per_second": self.tokens_per_second,
            "quality": self.quality, "seconds": self.seconds,
        }


@dataclass
class QualityModels:
    """The models behind the quality measures; either may be None to skip its measure."""

    fluency: object | None = None
    """A LoadedModel-like object with .model and .tokenizer (a causal LM)."""
    encoder: object | None = None
    """A rewards.relevance.SentenceEncoder."""
    fluency_is_base: bool = False
    """The fluency model is the base policy: its log-probabilities of the samples are then the gate's KL reference term."""


SAMPLE_COLUMNS = (
    "prompt", "query", "response", "prompt_id", "sample", "response_ids", "logprob", "logprob_t1", "base_logprob", "perplexity", "relevance",
)


def prompt_id(prompt: str) -> str:
    """A prompt's identity across runs and sets: its text, hashed (positions change, texts do not)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def summarise(scores: Sequence[float], threshold: float, prompt_ids: Sequence[str] | None = None) -> JudgeStats:
    """Mean, std and toxic share of the responses; the RealToxicityPrompts metrics over the prompts (without ids: one answer each)."""
    return JudgeStats(
        mean=statistics.fmean(scores),
        std=statistics.pstdev(scores) if len(scores) > 1 else 0.0,
        frac_toxic=sum(s > threshold for s in scores) / len(scores),
        n=len(scores),
        **summarise_rtp(range(len(scores)) if prompt_ids is None else prompt_ids, scores, threshold),
    )


def check_judge_names(judges: Sequence[Scorer]) -> None:
    """Each judge's scores become a samples column named after it: two alike, or one named like a column, would overwrite."""
    names = [judge.name for judge in judges]
    clashes = sorted({n for n in names if names.count(n) > 1 or n in SAMPLE_COLUMNS})
    if clashes:
        raise RlaifError(
            f"judge name(s) {clashes} are used twice or clash with the sample columns {list(SAMPLE_COLUMNS)}, so their scores would overwrite each other",
            "give every judge in evaluation.judges its own name (e.g. name: dynabench-hate)",
        )


def _timed(seconds: dict[str, float], phase: str, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds[phase] = round(time.perf_counter() - start, 3)
    return result


def evaluate_policy(
    model,
    tokenizer,
    test_prompts: pd.DataFrame,
    judges: Sequence[Scorer],
    gen: GenerationConfig,
    cfg: EvaluationConfig,
    *,
    quality: QualityModels | None = None,
) -> Evaluation:
    """Sample responses to the test prompts (per-response seeds from cfg.seed) and score them with every judge."""
    from rlaif_tasks.evaluation.stats import sampling_seeds

    rows = test_prompts if cfg.num_prompts is None else test_prompts.head(cfg.num_prompts)
    queries = rows["query"].tolist()
    if not queries or cfg.samples_per_prompt < 1:
        raise RlaifError(
            f"nothing to evaluate: {len(queries)} test prompt(s) x {cfg.samples_per_prompt} sample(s) per prompt",
            "set evaluation.num_prompts (or unset it) and evaluation.samples_per_prompt to at least 1, and check data.test_size",
        )
    check_judge_names(judges)
    log.info("evaluating on %d prompts x %d samples with %d judge(s)", len(queries), cfg.samples_per_prompt, len(judges))
    ids = [prompt_id(p) for p in rows["prompt"]]
    sample_no = [k for _ in queries for k in range(cfg.samples_per_prompt)]
    row_keys = [f"{ids[i]}/{k}" for i in range(len(queries)) for k in range(cfg.samples_per_prompt)]
    seconds: dict[str, float] = {}
    out = _timed(seconds, "generate", generate, model, tokenizer, queries, gen, num_samples=cfg.samples_per_prompt, seed=cfg.seed,
                 row_seeds=sampling_seeds(cfg.seed, row_keys), batch_size=cfg.batch_size, with_logprobs=True)
    prompts = [rows["prompt"].iloc[i] for i in out.prompt_index]
    response_queries = [queries[i] for i in out.prompt_index]
    columns = {judge.name: _timed(seconds, f"judge/{judge.name}", judge, out.responses, prompts) for judge in judges}
    response_prompt_ids = [ids[i] for i in out.prompt_index]
    stats = {name: summarise(scores, cfg.toxic_threshold, response_prompt_ids) for name, scores in columns.items()}
    quality = quality or QualityModels()
    perplexity = relevance = fluency_logprobs = None
    if quality.fluency is not None:
        perplexity, fluency_logprobs = _timed(seconds, "fluency", _fluency, model, tokenizer, quality.fluency, response_queries, out, gen, cfg.batch_size)
    if quality.encoder is not None:
        relevance = _timed(seconds, "relevance", quality.encoder.similarity, prompts, out.responses)
    samples = pd.DataFrame({
        "prompt": prompts, "query": response_queries, "response": out.responses,
        "prompt_id": response_prompt_ids, "sample": sample_no, "response_ids": out.token_ids,
        "logprob": out.logprobs, "logprob_t1": out.logprobs_t1,
        **({"base_logprob": fluency_logprobs} if quality.fluency_is_base and fluency_logprobs is not None else {}),
        **({"perplexity": perplexity} if perplexity is not None else {}),
        **({"relevance": relevance} if relevance is not None else {}),
        **columns,
    })
    return Evaluation(stats, samples, out.tokens_per_second, summarise_quality(out.responses, perplexity, relevance), seconds)


def _fluency(model, tokenizer, fluency, queries: Sequence[str], out, gen: GenerationConfig, batch_size: int) -> tuple[list[float], list[float] | None]:
    """Per response, its perplexity under the fluency model, and that model's log-probabilities at the sampling temperature.

    Measured on the sampled ids, EOS included, like the KL: from generation's own logits when the
    fluency model is the evaluated policy (the base policy's evaluation), else by one forward pass
    of the fluency model, whose log-probabilities the gate's KL reuses when it is the base policy.
    A fluency model with another vocabulary scores the decoded text instead (no log-probabilities).
    """
    require_causal_fluency_model(fluency.model)
    if fluency.model is model:
        at_t, at_1 = out.logprobs, out.logprobs_t1
    elif same_vocabulary(fluency.tokenizer, tokenizer):
        at_t, at_1 = sampled_logprobs(fluency.model, tokenizer, queries, out.token_ids, temperature=gen.sampling_temperature, batch_size=batch_size)
    else:
        return response_perplexities(fluency.model, fluency.tokenizer, queries, out.responses, batch_size=batch_size), None
    return [math.exp(-lp / len(ids)) if ids else math.nan for lp, ids in zip(at_1, out.token_ids)], at_t


def same_vocabulary(a, b) -> bool:
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


def relative_improvement(before: float, after: float) -> float:
    """The seed's `(before - after) / before`; NaN when there was nothing to improve."""
    return (before - after) / before if before else math.nan


def compare(before: Evaluation | dict, after: Evaluation | dict) -> dict[str, dict[str, float]]:
    """Per judge: mean and std before/after and their relative improvement."""
    b = before.summary()["judges"] if isinstance(before, Evaluation) else before["judges"]
    a = after.summary()["judges"] if isinstance(after, Evaluation) else after["judges"]
    report = {}
    for name in b.keys() & a.keys():
        report[name] = {
            "mean_before": b[name]["mean"],
            "mean_after": a[name]["mean"],
            "mean_improvement": relative_improvement(b[name]["mean"], a[name]["mean"]),
            "std_before": b[name]["std"],
            "std_after": a[name]["std"],
            "std_improvement": relative_improvement(b[name]["std"], a[name]["std"]),
            "frac_toxic_before": b[name]["frac_toxic"],
            "frac_toxic_after": a[name]["frac_toxic"],
        }
    return dict(sorted(report.items()))


def write_evaluation(evaluation: Evaluation, out_dir: str | Path, name: str) -> Path:
    """`<name>.json` (summary) and `<name>_samples.parquet` (every response with its scores)."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / f"{name}_samples.parquet") as tmp:
        evaluation.samples.to_parquet(tmp, index=False)
    return write_json(out_dir / f"{name}.json", evaluation.summary())


def read_evaluation(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


RTP_LABELS = {"expected_max": "expected max toxicity", "toxicity_probability": "toxicity probability"}


def _number(value, spec: str) -> str:
    """A figure of the text tables; n/a where there is none (NaN, or a key that an older summary lacks)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_comparison(report: dict[str, dict[str, float]]) -> str:
    """Mean and std per judge before and after; then, where the rows have them, the RealToxicityPrompts metrics with intervals."""
    lines = [f"{'judge':<18}{'mean before':>12}{'mean after':>12}{'improv.':>9}{'std before':>12}{'std after':>11}{'improv.':>9}"]
    for name, r in report.items():
        lines.append(
            f"{name:<18}{r['mean_before']:>12.4f}{r['mean_after']:>12.4f}{r['mean_improvement']:>9.1%}"
            f"{r['std_before']:>12.4f}{r['std_after']:>11.4f}{r['std_improvement']:>9.1%}"
        )
    rtp = {name: r for name, r in report.items() if "expected_max_before" in r}
    if rtp:
        first = next(iter(rtp.values()))
        lines += [
            f"over the k={first['k']} answers to each of {first['n_prompts']} prompts (RealToxicityPrompts), "
            f"drop with its {first['confidence']:.0%} paired-bootstrap interval:",
            f"{'judge':<18}{'metric':<23}{'before':>8}{'after':>8}  drop [interval]",
        ]
        for name, r in rtp.items():
            for i, metric in enumerate(RTP_LABELS):
                lines.append(
                    f"{name if i == 0 else '':<18}{RTP_LABELS[metric]:<23}{_number(r[f'{metric}_before'], '.4f'):>8}{_number(r[f'{metric}_after'], '.4f'):>8}  "
                    f"{_number(r[f'{metric}_improvement'], '.1%'):>6} [{_number(r[f'{metric}_improvement_lower'], '.1%')}, "
                    f"{_number(r[f'{metric}_improvement_upper'], '.1%')}]"
                )
    return "\n".join(lines)


def format_evaluation(evaluation: Evaluation | dict) -> str:
    """Per judge: mean, std, share of toxic responses, n; and expected max toxicity, toxicity probability and k where recorded."""
    judges = evaluation.summary()["judges"] if isinstance(evaluation, Evaluation) else evaluation["judges"]
    rtp = any("expected_max" in s for s in judges.values())  # summaries written before the metrics existed lack them
    lines = [f"{'judge':<18}{'mean':>9}{'std':>9}{'toxic':>8}{'n':>6}" + (f"{'exp. max':>10}{'tox. prob':>11}{'k':>4}" if rtp else "")]
    for name, s in judges.items():
        lines.append(
            f"{name:<18}{s['mean']:>9.4f}{s['std']:>9.4f}{s['frac_toxic']:>8.1%}{s['n']:>6}"
            + (f"{_number(s.get('expected_max'), '.4f'):>10}{_number(s.get('toxicity_probability'), '.4f'):>11}{_number(s.get('k'), 'd'):>4}" if rtp else "")
        )
    return "\n".join(lines)
