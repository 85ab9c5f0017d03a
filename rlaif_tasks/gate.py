"""The promotion gate: does the newly trained policy (the challenger) replace the champion?

The challenger and the reference (the champion, or the base policy while nothing is promoted)
answer the same held-out prompts, evaluation.samples_per_prompt times each, with the same
per-response sampling seeds (evaluation.py), so every judge's scores compare prompt by prompt:
per judge, the relative drop in mean toxicity and its paired-bootstrap interval over prompts
(evaluation/stats.py); beside it, reported and not checked, the same interval for expected maximum
toxicity and toxicity probability over each prompt's answers (evaluation/rtp.py). Promotion needs every check:

    samples       at least gate.min_samples_per_prompt responses per prompt
    toxicity      under gate.judge (default: an evaluation judge that is not the training reward
                  model, so a policy that games its reward cannot pass on that alone), the interval's
                  lower bound > gate.min_improvement
    reward_judge  the evaluation judge that is the reward model improves too (point estimate > 0)
    no_judge_worse  no judge's toxicity is significantly higher (its difference's interval below 0)
    kl            mean KL to the base policy on the challenger's sampled tokens, EOS included, <= gate.max_kl
    fluency       median perplexity under evaluation.fluency_model, over the base policy's, <= gate.max_perplexity_ratio
    diversity     distinct-2 over the base policy's >= gate.min_distinct2_ratio
    repetition    share of responses with a repeated 3-gram <= the base policy's + gate.max_repetition_increase
    relevance     mean prompt-response similarity over the base policy's >= gate.min_relevance_ratio

Quality budgets are measured against this run's base policy, not the champion, so they cannot drift
night by night. The champion's per-prompt scores come from the samples its own MLflow run logged
when that run is comparable (same prompts, evaluation settings and seed, code, judge revisions);
otherwise the champion is evaluated here. The decision records the champion it was measured
against, so that promotion can be a compare-and-set (nightly.promote_if_better).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rlaif_tasks import registry, tracking
from rlaif_tasks.atomic import write_json
from rlaif_tasks.config import GATE_CHECKS as CHECKS
from rlaif_tasks.config import GateConfig, RunConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.evaluation.kl import kl_summary, sampled_token_kl
from rlaif_tasks.evaluation.toxicity import RTP_LABELS, read_evaluation
from rlaif_tasks.models import load_model, resolve_device
from rlaif_tasks.tags import TAG_CODE, TAG_DATASET, TAG_EVAL_SETTINGS, TAG_GATE, TAG_GATE_FAILED, TAG_GATE_REASON, TAG_GATE_REFERENCE, TAG_JUDGE_REVISIONS, TAG_JUDGES, TAG_WEIGHTS

if TYPE_CHECKING:
    import pandas as pd

    from mlflow import MlflowClient

log = logging.getLogger(__name__)

DECISION_ARTIFACT = "gate/decision.json"
SAMPLES_ARTIFACT = "eval/final_samples.parquet"
"""The challenger's full samples, logged by `evaluate`: a later night pairs its champion's scores from them."""


def trained_on(config: RunConfig) -> list[str]:
    """Evaluation judges whose model training optimised: the reward model, or any judge part of a composite reward."""
    models = {config.reward.model}
    if config.reward.model == "composite":
        models = {part["judge"] if isinstance(part["judge"], str) else part["judge"].get("model") for part in config.reward.parts}
    return [j.display_name for j in config.evaluation.judges if j.model in models]


def reward_judge(config: RunConfig) -> str | None:
    """The evaluation judge that is (the first part of) the training reward, whatever text it reads, if one is."""
    names = trained_on(config)
    return names[0] if names else None


def gate_judge(config: RunConfig) -> str:
    """The judge whose interval decides: gate.judge, else the first evaluation judge that training did not optimise."""
    names = [j.display_name for j in config.evaluation.judges]
    if config.gate.judge is not None:
        if config.gate.judge not in names:
            raise RlaifError(
                f"gate.judge {config.gate.judge!r} is not one of the evaluation judges {names}",
                "set gate.judge to the name of one of evaluation.judges (or leave it unset for the first one that is not the reward model)",
            )
        return config.gate.judge
    optimised = trained_on(config)
    independent = [n for n in names if n not in optimised]
    if not independent:
        raise RlaifError(
            f"every evaluation judge ({names}) is the training reward model, so the gate could only confirm what training optimised",
            "add an independent judge to evaluation.judges (e.g. model: profanity-check), or name the reward judge in gate.judge knowingly",
        )
    return independent[0]


# -- the decision, on measured numbers ----------------------------------------------------------


def paired_by_prompt(reference: "pd.DataFrame", challenger: "pd.DataFrame", column: str, gate: GateConfig, seed: int) -> dict:
    """The paired bootstrap (evaluation/stats.py) of `column`'s per-prompt means, challenger against reference, over the
    prompts both answered, with the gate's resamples and confidence."""
    from rlaif_tasks.evaluation.stats import paired_bootstrap, paired_differences, per_prompt_means

    means = [dict(zip(*per_prompt_means(frame["prompt_id"].tolist(), frame[column].tolist()))) for frame in (reference, challenger)]
    _, ref, chal = paired_differences(*means)
    return paired_bootstrap(ref, chal, n_resamples=gate.n_resamples, confidence=gate.confidence, seed=seed)


def compare_judges(
    reference: "pd.DataFrame", challenger: "pd.DataFrame", judges: list[str], gate: GateConfig, seed: int, threshold: float = 0.5
) -> dict[str, dict]:
    """Per judge, the paired bootstrap of the challenger's per-prompt mean toxicity against the reference's; beside it,
    reported and not deciding, `expected_max` and `toxicity_probability` (evaluation/rtp.py, toxic at >= threshold)
    with the same bootstrap."""
    from rlaif_tasks.evaluation.rtp import paired_rtp
    from rlaif_tasks.evaluation.stats import significantly_worse

    settings = {"n_resamples": gate.n_resamples, "confidence": gate.confidence, "seed": seed}
    out = {}
    for judge in judges:
        result = paired_by_prompt(reference, challenger, judge, gate, seed)
        result["significantly_worse"] = significantly_worse(result)
        rtp = paired_rtp(reference["prompt_id"].tolist(), reference[judge].tolist(), challenger["prompt_id"].tolist(), challenger[judge].tolist(),
                         threshold=threshold, **settings)
        result.update(expected_max=rtp["expected_max"], toxicity_probability=rtp["toxicity_probability"])
        out[judge] = result
    return out


def compare_quality(base: dict, challenger: dict) -> dict:
    """The challenger's quality measures next to the base policy's, as the ratios and differences the budgets read."""
    def ratio(key: str) -> float:
        a, b = challenger.get(key, math.nan), base.get(key, math.nan)
        return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan

    return {
        "challenger": challenger,
        "base": base,
        "perplexity_ratio": ratio("perplexity_median"),
        "distinct2_ratio": ratio("distinct_2"),
        "repetition_increase": challenger.get("repeated_3gram_share", math.nan) - base.get("repeated_3gram_share", math.nan),
        "relevance_ratio": ratio("relevance_mean"),
    }


def relevance_interval(base: "pd.DataFrame", challenger: "pd.DataFrame", gate: GateConfig, seed: int) -> dict:
    """The relevance ratio's paired-bootstrap interval over prompts, reported beside the point estimate the budget reads
    (`relevance_ratio_lower`, `_upper`); empty where either side has no relevance scores."""
    if "relevance" not in base.columns or "relevance" not in challenger.columns:
        return {}
    drop = paired_by_prompt(base, challenger, "relevance", gate, seed)["relative"]
    return {"relevance_ratio_lower": 1.0 - drop["upper"], "relevance_ratio_upper": 1.0 - drop["lower"]}


def decide(judges: dict[str, dict], judge: str, trained_on: str | None, quality: dict, kl: float, samples_per_prompt: int, gate: GateConfig) -> dict:
    """Every check of the module docstring on already-measured numbers; `passed` when all of gate.require pass.

    A measure that is missing (NaN: e.g. relevance switched off) passes its check and says so.
    """
    decisive = judges[judge]["relative"]
    worse = sorted(name for name, r in judges.items() if r["significantly_worse"])
    reward_point = judges[trained_on]["relative"]["point"] if trained_on in judges else math.nan
    q = quality
    unmeasured = [k for k in ("perplexity_ratio", "distinct2_ratio", "repetition_increase", "relevance_ratio") if not math.isfinite(q[k])]

    def within(key: str, ok) -> bool:
        return key in unmeasured or bool(ok(q[key]))

    checks = {
        "samples": samples_per_prompt >= gate.min_samples_per_prompt,
        "toxicity": decisive["lower"] > gate.min_improvement,
        "reward_judge": trained_on is None or (math.isfinite(reward_point) and reward_point > 0),
        "no_judge_worse": not worse,
        "kl": math.isfinite(kl) and kl <= gate.max_kl,
        "fluency": within("perplexity_ratio", lambda v: v <= gate.max_perplexity_ratio),
        "diversity": within("distinct2_ratio", lambda v: v >= gate.min_distinct2_ratio),
        "repetition": within("repetition_increase", lambda v: v <= gate.max_repetition_increase),
        "relevance": within("relevance_ratio", lambda v: v >= gate.min_relevance_ratio),
    }
    def pct(r: dict) -> str:
        return f"{r['point']:.1%} [{r['lower']:.1%}, {r['upper']:.1%}]"

    worse_text = ", ".join(f"{n} ({pct(judges[n]['relative'])})" for n in worse)
    why = {
        "samples": f"{samples_per_prompt} response(s) per prompt < gate.min_samples_per_prompt {gate.min_samples_per_prompt}",
        "toxicity": f"toxicity under {judge} dropped {pct(decisive)}: the {gate.confidence:.0%} interval's lower bound is not above {gate.min_improvement:.1%}",
        "reward_judge": f"the reward judge {trained_on} did not improve ({reward_point:.1%})",
        "no_judge_worse": f"significantly more toxic under {worse_text}",
        "kl": f"KL to the base policy {kl:.3f} nats > budget {gate.max_kl:.3f}",
        "fluency": f"median perplexity ratio {q['perplexity_ratio']:.3f} > budget {gate.max_perplexity_ratio:.3f}",
        "diversity": f"distinct-2 ratio {q['distinct2_ratio']:.3f} < budget {gate.min_distinct2_ratio:.3f}",
        "repetition": f"repeated-3-gram share up {q['repetition_increase']:+.3f} > budget {gate.max_repetition_increase:+.3f}",
        "relevance": f"relevance ratio {q['relevance_ratio']:.3f} < budget {gate.min_relevance_ratio:.3f}",
    }
    failed = [name for name in CHECKS if not checks[name] and name in gate.require]
    waived = [name for name in CHECKS if not checks[name] and name not in gate.require]
    return {
        "passed": not failed,
        "checks": checks,
        "failed": failed,
        "waived": waived,
        "reasons": [why[name] for name in failed],
        "waived_reasons": [why[name] for name in waived],
        "judge": judge,
        "reward_judge": trained_on,
        "judges": judges,
        "challenger_toxicity": judges[judge]["challenger_mean"],
        "reference_toxicity": judges[judge]["reference_mean"],
        "improvement": decisive["point"],
        "improvement_lower": decisive["lower"],
        "improvement_upper": decisive["upper"],
        "min_improvement": gate.min_improvement,
        "confidence": gate.confidence,
        "kl": kl,
        "max_kl": gate.max_kl,
        "quality": quality,
        "unmeasured": unmeasured,
        "perplexity_ratio": q["perplexity_ratio"],
        "samples_per_prompt": samples_per_prompt,
        "budgets": {k: getattr(gate, k) for k in ("max_perplexity_ratio", "min_distinct2_ratio", "max_repetition_increase", "min_relevance_ratio")},
    }


def strict_json(value):
    """NaN and infinities (a measure that is off, a ratio over 0) as null: strict JSON readers (Airflow, browsers) refuse them."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_number(value, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def format_decision(decision: dict) -> str:
    """The decision as text: each judge's relative drop with its interval against the reference (and, indented, those of
    expected max toxicity and toxicity probability where recorded), then the checks."""
    ref = decision["reference"]
    rtp = any(r.get("expected_max") for r in decision["judges"].values())  # decisions made before the metrics existed lack them
    lines = [f"gate against the {ref['kind']}{' version ' + ref['version'] if ref.get('version') else ''} "
             f"({decision['confidence']:.0%} paired-bootstrap intervals over {decision.get('n_prompts', '?')} prompts x {decision['samples_per_prompt']} samples):"]
    if rtp:
        lines.append("  mean toxicity decides; the indented rows, over each prompt's answers, are reported, not deciding:")

    def row(label: str, r: dict) -> str:
        rel = r["relative"]
        return (f"  {label:<32}{format_number(r['reference_mean'], '>8.4f')} -> {format_number(r['challenger_mean'], '.4f')}  "
                f"{format_number(rel['point'], '>7.1%')} [{format_number(rel['lower'], '.1%')}, {format_number(rel['upper'], '.1%')}]")

    for judge, r in decision["judges"].items():
        role = " (decides)" if judge == decision["judge"] else " (reward model)" if judge == decision["reward_judge"] else ""
        lines.append(row(judge + role, r))
        lines += [row(f"  {label}", r[metric]) for metric, label in RTP_LABELS.items() if r.get(metric)]
    q = decision["quality"]
    lines.append(
        f"  KL {format_number(decision['kl'], '.2f')} nats; perplexity ratio {format_number(q['perplexity_ratio'], '.2f')}; distinct-2 ratio {format_number(q['distinct2_ratio'], '.2f')}; "
        f"repeated-3-gram share {format_number(q['repetition_increase'], '+.3f')}; relevance ratio {format_number(q['relevance_ratio'], '.2f')}"
        + (f" [{format_number(q['relevance_ratio_lower'], '.2f')}, {format_number(q['relevance_ratio_upper'], '.2f')}]" if "relevance_ratio_lower" in q else "")
    )
    lines.append("  checks: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in decision["checks"].items()))
    return "\n".join(lines)


NOTE_LIMIT = 1000
"""Airflow keeps at most this many characters of a DAG run's note."""


def format_note(verdict: str, decision: dict, mlflow_run_id: str) -> str:
    """The DAG run's note: the verdict first, then the gate's intervals as a Markdown table, within NOTE_LIMIT.

    Airflow renders a note as Markdown; a fenced report showed as one line of inline code.
    """
    head = f"**{verdict[:300]}**"
    if not decision.get("judges"):
        return head
    ref = decision["reference"]
    against = f"the {ref['kind']}" + (f" (version {ref['version']})" if ref.get("version") else "")
    rows = ["| judge | before | after | drop [95% interval] |", "|---|---:|---:|---|"]
    for judge in sorted(decision["judges"], key=lambda j: (j != decision["judge"], j != decision["reward_judge"], j)):
        r = decision["judges"][judge]
        role = " (decides)" if judge == decision["judge"] else " (reward)" if judge == decision["reward_judge"] else ""
        rel = r["relative"]
        rows.append(f"| {judge}{role} | {format_number(r['reference_mean'], '.4f')} | {format_number(r['challenger_mean'], '.4f')} | "
                    f"{format_number(rel['point'], '.1%')} [{format_number(rel['lower'], '.1%')}, {format_number(rel['upper'], '.1%')}] |")
    q = decision["quality"]
    failed = decision.get("failed", [name for name, ok in decision["checks"].items() if not ok])
    waived = decision.get("waived", [])
    tail = [
        f"KL {format_number(decision['kl'], '.2f')} nats · perplexity ×{format_number(q['perplexity_ratio'], '.2f')} · distinct-2 "
        f"×{format_number(q['distinct2_ratio'], '.2f')} · relevance ×{format_number(q['relevance_ratio'], '.2f')} · "
        + (f"failed: {', '.join(failed)}" if failed else "every required check passed") + (f" (waived: {', '.join(waived)})" if waived else ""),
        f"Whole report: `report.txt` of MLflow run `{mlflow_run_id}`.",
    ]
    parts = [head, f"Against {against}, {decision['confidence']:.0%} paired-bootstrap intervals:", "\n".join(rows), *tail]
    while len("\n\n".join(parts)) > NOTE_LIMIT and len(rows) > 3:  # drop judge rows from the end, the deciding one stays first
        rows.pop()
        parts[2] = "\n".join(rows)
    note = "\n\n".join(parts)
    return note if len(note) <= NOTE_LIMIT else head[:NOTE_LIMIT]


# -- measuring ----------------------------------------------------------------------------------


def measure_kl(config: RunConfig, run_dir: Path, model_dir: str | Path) -> dict:
    """KL of the trained policy to `model.policy` on its final samples (cached in gate/).

    The evaluation usually recorded both log-probabilities of every sample (the policy's while
    sampling, the base policy's as the fluency model), so the KL costs nothing here; otherwise (a
    fluency model other than the base policy, or samples from before those columns) both policies
    go through `evaluation.kl.sampled_token_kl`.
    """
    import pandas as pd

    from rlaif_tasks.evaluation.runner import evaluation_dtype, load_policy

    cache = run_dir / "gate" / "kl.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    path = run_dir / "eval" / "final_samples.parquet"
    if not path.is_file():
        raise RlaifError(f"{path} is missing", "run the evaluate stage of this run first")
    samples = pd.read_parquet(path)
    start = time.perf_counter()
    if {"logprob", "logprob_t1", "base_logprob"} <= set(samples.columns):
        result = kl_summary(samples["logprob"].tolist(), samples["base_logprob"].tolist(), samples["logprob_t1"].tolist(),
                            [len(ids) for ids in samples["response_ids"]])
        result["source"] = "log-probabilities recorded by the evaluation"
    else:
        base = load_policy(config)
        challenger = load_model(str(model_dir), kind="auto", dtype=evaluation_dtype(config), device=resolve_device(config.device))
        if len(challenger.tokenizer) != len(base.tokenizer):
            raise RlaifError(
                f"the trained policy's tokenizer ({len(challenger.tokenizer)} tokens) differs from the base policy's ({len(base.tokenizer)})",
                "gate a policy trained from model.policy of this run config",
            )
        result = sampled_token_kl(
            challenger.model, base.model, challenger.tokenizer, samples["query"].tolist(), [list(ids) for ids in samples["response_ids"]],
            temperature=config.generation.sampling_temperature, batch_size=config.evaluation.batch_size,
        )
        result["source"] = "forward passes of both policies"
    result.pop("kl_per_response")
    result["seconds"] = round(time.perf_counter() - start, 3)
    write_json(cache, result)
    return result


# -- the reference: champion or base policy ------------------------------------------------------


def evaluate_registered(client: "MlflowClient", config: RunConfig, run_dir: Path, name: str, version: str) -> Path:
    """Evaluate a registered version on this run's test prompts; returns its samples (cached as eval/champion-v<version>_samples.parquet).

    The version is read back as its save_pretrained folder (`registry.download_policy`), so a
    causal (transformers flavour) and a seq2seq (pyfunc) champion load alike.
    """
    import tempfile

    from rlaif_tasks.data import load_prompts_split
    from rlaif_tasks.evaluation.runner import evaluation_dtype, load_judges
    from rlaif_tasks.evaluation.toxicity import evaluate_policy, write_evaluation

    label = f"champion-v{version}"
    path = run_dir / "eval" / f"{label}_samples.parquet"
    if path.is_file() and (run_dir / "eval" / f"{label}.json").is_file():
        return path
    log.info("evaluating %s version %s on this run's test prompts", name, version)
    with tempfile.TemporaryDirectory(prefix="rlaif-champion-") as tmp:
        folder = registry.download_policy(client, name, version, tmp)
        _check_weights(client, name, version, folder)
        champion = load_model(str(folder), kind="auto", dtype=evaluation_dtype(config), device=resolve_device(config.device))
        evaluation = evaluate_policy(champion.model, champion.tokenizer, load_prompts_split(run_dir, "test"), load_judges(config), config.generation, config.evaluation)
    write_evaluation(evaluation, run_dir / "eval", label)
    return path


def _check_weights(client: "MlflowClient", name: str, version: str, folder: Path) -> None:
    """The downloaded champion holds the weights its version was registered with (rlaif.weights_sha256), or a clear error."""
    recorded = client.get_model_version(name, version).tags.get(TAG_WEIGHTS)
    try:
        found = registry.weights_sha256(folder) if recorded else None
    except Exception as exc:  # a truncated or garbled safetensors file
        found = f"unreadable ({type(exc).__name__}: {exc})"
    if recorded and found != recorded:
        raise RlaifError(
            f"the champion {name} version {version} in the registry is damaged: its weights are {found[:60]}, "
            f"registered as {recorded[:12]}; the gate will not compare tonight's model with it",
            f"restore the artefact from a backup, or move `champion` to a sound version (`rlaif registry rollback {name}` or "
            f"`rlaif registry promote {name} VERSION`), then clear promote_if_better",
        )


COMPARABLE_TAGS = (TAG_DATASET, TAG_EVAL_SETTINGS, TAG_CODE, TAG_JUDGES)
"""Run tags that must all be set and equal before the champion's stored samples stand for tonight's:
the same prompts, sampling, evaluation seed and judge settings, code, and judge revisions."""


def reference_samples(client: "MlflowClient", config: RunConfig, run_dir: Path, run_id: str, name: str) -> tuple[dict, "pd.DataFrame"]:
    """What the challenger must beat, prompt by prompt: the champion's scored samples, else the base policy's.

    The champion's samples come from its own MLflow run only when that run is comparable (every tag
    of COMPARABLE_TAGS equal) and logged them; otherwise the champion is evaluated here.
    """
    import pandas as pd

    champion = registry.get_alias(client, name, registry.CHAMPION)
    if champion is None:
        return {"kind": "base", "version": None, "source": "baseline evaluation of this run"}, pd.read_parquet(run_dir / "eval" / "baseline_samples.parquet")
    version = str(champion.version)
    differences = _differences(client.get_run(run_id).data.tags, _run_tags(client, champion.run_id))
    if not differences:
        stored = _stored_samples(client, champion.run_id, run_dir / "gate" / f"champion-v{version}-run")
        if stored is not None:
            return {"kind": "champion", "version": version, "source": f"MLflow run {champion.run_id} (same prompts, settings, seeds, code and judges)"}, stored
        log.info("the run of champion %s version %s (%s) logged no %s, so it is evaluated again", name, version, champion.run_id, SAMPLES_ARTIFACT)
    else:
        log.info("the run of champion %s version %s (%s) is not comparable with this one, so it is evaluated again: %s",
                 name, version, champion.run_id, "; ".join(differences))
    samples = pd.read_parquet(evaluate_registered(client, config, run_dir, name, version))
    tracking.log_metrics_once(client, run_id, tracking.evaluation_metrics("champion", read_evaluation(run_dir / "eval" / f"champion-v{version}.json")))
    return {"kind": "champion", "version": version, "source": "evaluated on this run's test prompts"}, samples


def _stored_samples(client: "MlflowClient", champion_run_id: str, into: Path) -> "pd.DataFrame | None":
    import pandas as pd
    from mlflow.exceptions import MlflowException

    into.mkdir(parents=True, exist_ok=True)
    try:
        samples = pd.read_parquet(client.download_artifacts(champion_run_id, SAMPLES_ARTIFACT, str(into)))
    except (MlflowException, OSError):
        return None
    except ValueError as exc:  # pyarrow's ArrowInvalid: a damaged file is re-evaluated, never compared as if it were the base's
        log.warning("the champion's %s in MLflow run %s cannot be read (%s); evaluating the champion again", SAMPLES_ARTIFACT, champion_run_id, exc)
        return None
    missing = {"prompt_id"} - set(samples.columns)
    if missing or samples.empty:
        log.warning("the champion's %s in MLflow run %s lacks %s; evaluating the champion again", SAMPLES_ARTIFACT, champion_run_id, sorted(missing) or "rows")
        return None
    return samples


def _differences(mine: dict, theirs: dict) -> list[str]:
    """Each comparability tag that is unset or differs, as `tag: champion's value -> this run's`, judges named."""
    out = []
    for tag in COMPARABLE_TAGS:
        if mine.get(tag) and mine.get(tag) == theirs.get(tag):
            continue
        line = f"{tag}: {theirs.get(tag)} -> {mine.get(tag)}"
        if tag == TAG_JUDGES:
            before, after = (_json_tag(t, TAG_JUDGE_REVISIONS) for t in (theirs, mine))
            changed = [f"{j} {before.get(j)} -> {after.get(j)}" for j in sorted(before.keys() | after.keys()) if before.get(j) != after.get(j)]
            line += f" ({', '.join(changed)})" if changed else ""
        out.append(line)
    return out


def _json_tag(tags: dict, tag: str) -> dict:
    try:
        value = json.loads(tags.get(tag) or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _run_tags(client: "MlflowClient", run_id: str | None) -> dict:
    """Tags of a run, or {} when it is gone (a deleted run cannot vouch for an evaluation)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return {}
    return run.data.tags if run.info.lifecycle_stage == "active" else {}


# -- the gate -----------------------------------------------------------------------------------


def run_gate(
    config: RunConfig, run_dir: str | Path, run_id: str, name: str, version: str | int, model_dir: str | Path, *, client: "MlflowClient | None" = None
) -> dict:
    """Measure and decide whether version `version` (trained into `model_dir`) should become the champion.

    The decision (every judge's estimate and interval, each check, the reasons) goes to MLflow as
    `gate/*` metrics, the artifact gate/decision.json and `rlaif.gate*` tags on the run and the
    model version, and to run_dir/gate/decision.json; it is returned as a JSON-able dict.
    """
    import pandas as pd

    client = client if client is not None else tracking.connect(config)
    run_dir = Path(run_dir)
    version = str(version)
    judge, trained_on = gate_judge(config), reward_judge(config)
    challenger = pd.read_parquet(run_dir / "eval" / "final_samples.parquet")
    reference, reference_scores = reference_samples(client, config, run_dir, run_id, name)
    names = [j.display_name for j in config.evaluation.judges]
    missing = [n for n in names if n not in reference_scores.columns or n not in challenger.columns]
    if missing:
        raise RlaifError(f"the {reference['kind']} or challenger samples have no scores for judge(s) {missing}", "evaluate both with this run's evaluation.judges")
    judges = compare_judges(reference_scores, challenger, names, config.gate, seed=config.evaluation.seed, threshold=config.evaluation.toxic_threshold)
    quality = compare_quality(read_evaluation(run_dir / "eval" / "baseline.json").get("quality", {}), read_evaluation(run_dir / "eval" / "final.json").get("quality", {}))
    if (base_samples := run_dir / "eval" / "baseline_samples.parquet").is_file():
        base = reference_scores if reference["kind"] == "base" else pd.read_parquet(base_samples)
        quality.update(relevance_interval(base, challenger, config.gate, config.evaluation.seed))
    measured = measure_kl(config, run_dir, model_dir)
    per_prompt = int(challenger.groupby("prompt_id").size().min())
    decision = decide(judges, judge, trained_on, quality, measured["kl"], per_prompt, config.gate)
    decision.update(
        model_name=name, challenger_version=version, reference=reference, kl_std=measured["kl_std"],
        policy_perplexity=measured["policy_perplexity"], n_responses=measured["n_responses"], n_prompts=judges[judge]["n_prompts"],
    )
    decision = strict_json(decision)
    log_decision(client, run_id, decision)
    write_json(run_dir / "gate" / "decision.json", decision)
    verdict = "passed" if decision["passed"] else "refused: " + "; ".join(decision["reasons"])
    log.info("gate for %s version %s against the %s: %s", name, version, reference["kind"], verdict)
    return decision


QUALITY_METRICS = ("perplexity_ratio", "distinct2_ratio", "repetition_increase", "relevance_ratio", "relevance_ratio_lower", "relevance_ratio_upper")


def log_decision(client: "MlflowClient", run_id: str, decision: dict) -> None:
    metrics = {
        "gate/passed": float(decision["passed"]),
        "gate/challenger_toxicity": decision["challenger_toxicity"],
        "gate/reference_toxicity": decision["reference_toxicity"],
        "gate/improvement": decision["improvement"],
        "gate/improvement_lower": decision["improvement_lower"],
        "gate/improvement_upper": decision["improvement_upper"],
        "gate/kl": decision["kl"],
        **{f"gate/{k}": decision["quality"].get(k) for k in QUALITY_METRICS},
    }
    for judge, r in decision["judges"].items():
        for bound in ("point", "lower", "upper"):
            metrics[tracking.metric_name("gate", judge, f"improvement_{bound}")] = r["relative"][bound]
    tracking.log_metrics_once(client, run_id, {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)})
    client.log_dict(run_id, decision, DECISION_ARTIFACT)
    outcome = "passed" if decision["passed"] else "refused"
    reason = "; ".join(decision["reasons"]) or "all checks passed"
    client.set_tag(run_id, TAG_GATE, outcome)
    client.set_tag(run_id, TAG_GATE_REFERENCE, f"{decision['reference']['kind']} {decision['reference']['version'] or ''}".strip())
    client.set_tag(run_id, TAG_GATE_REASON, reason[:5000])
    client.set_tag(run_id, TAG_GATE_FAILED, ",".join(decision["failed"]) or "none")
    name, version = decision["model_name"], decision["challenger_version"]
    client.set_model_version_tag(name, version, TAG_GATE, outcome)
    client.set_model_version_tag(name, version, TAG_GATE_REASON, reason[:5000])
