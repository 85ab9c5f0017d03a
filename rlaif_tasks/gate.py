"""The promotion gate: does the newly trained policy (the challenger) replace the champion?

Three checks on this run's held-out (test) prompts, all of which must pass:

    toxicity   (reference - challenger) / reference >= gate.min_improvement, mean toxicity under
               gate.judge; the reference is the current champion, or the base policy (this run's
               baseline evaluation) when nothing has been promoted yet
    KL         mean sequence KL of the challenger to the base policy on the challenger's own
               held-out responses, sum_t log p_challenger - log p_base, <= gate.max_kl
    fluency    perplexity of the challenger's responses under the base policy, over that of the
               base policy's own responses, <= gate.max_perplexity_ratio

The champion's toxicity is read from its own MLflow run when that run evaluated it on the same
prompts (dataset hash), with the same generation and judge settings, the same code version and the
same resolved judges (revision or file hash of each); otherwise the champion is loaded from the
registry and evaluated here on this run's test prompts. The decision records which champion it
was measured against, so that promotion can be a compare-and-set (nightly.promote_if_better).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rlaif_tasks import registry, tracking
from rlaif_tasks.atomic import write_json
from rlaif_tasks.config import GateConfig, RunConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.evaluation import read_evaluation, relative_improvement

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

DECISION_ARTIFACT = "gate/decision.json"


def gate_judge(config: RunConfig) -> str:
    """The judge whose mean toxicity decides: gate.judge, else the first evaluation judge."""
    names = [j.display_name for j in config.evaluation.judges]
    judge = config.gate.judge or (names[0] if names else None)
    if judge is None or judge not in names:
        raise RlaifError(
            f"gate.judge {judge!r} is not one of the evaluation judges {names}",
            "set gate.judge to the name of one of evaluation.judges (or leave it unset for the first one)",
        )
    return judge


def decide(challenger_toxicity: float, reference_toxicity: float, kl: float, perplexity_ratio: float, gate: GateConfig) -> dict:
    """The three checks on already-measured numbers; `passed` only when all of them pass."""
    improvement = relative_improvement(reference_toxicity, challenger_toxicity)
    checks = {
        "toxicity": math.isfinite(improvement) and improvement >= gate.min_improvement,
        "kl": math.isfinite(kl) and kl <= gate.max_kl,
        "fluency": math.isfinite(perplexity_ratio) and perplexity_ratio <= gate.max_perplexity_ratio,
    }
    reasons = []
    if not checks["toxicity"]:
        reasons.append(
            f"toxicity {challenger_toxicity:.4f} vs reference {reference_toxicity:.4f}: relative drop {improvement:.1%} < required {gate.min_improvement:.1%}"
            if math.isfinite(improvement) else f"the reference toxicity is {reference_toxicity:.4f}: no relative drop to measure"
        )
    if not checks["kl"]:
        reasons.append(f"KL to the base policy {kl:.3f} nats > budget {gate.max_kl:.3f}")
    if not checks["fluency"]:
        reasons.append(f"perplexity ratio {perplexity_ratio:.3f} > budget {gate.max_perplexity_ratio:.3f}")
    return {
        "passed": all(checks.values()),
        "checks": checks,
        "reasons": reasons,
        "challenger_toxicity": challenger_toxicity,
        "reference_toxicity": reference_toxicity,
        "improvement": improvement,
        "min_improvement": gate.min_improvement,
        "kl": kl,
        "max_kl": gate.max_kl,
        "perplexity_ratio": perplexity_ratio,
        "max_perplexity_ratio": gate.max_perplexity_ratio,
    }


# -- KL and fluency ----------------------------------------------------------------------------


def _encode(tokenizer, queries: Sequence[str], responses: Sequence[str], is_seq2seq: bool, decoder_start: int | None):
    """The batch layout of `train.ppo.lm_forward`: left-padded queries, right-padded response tokens."""
    import torch

    if not is_seq2seq:
        tokenizer.padding_side = "left"
    enc = tokenizer(list(queries), return_tensors="pt", padding=True, add_special_tokens=is_seq2seq)
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    width = max(1, max(len(x) for x in ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    response = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        response[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    batch = {"query_ids": enc["input_ids"], "query_mask": enc["attention_mask"], "response_ids": response, "response_mask": mask}
    if is_seq2seq:
        batch["decoder_start"] = torch.full((len(ids), 1), decoder_start if decoder_start is not None else pad, dtype=torch.long)
    return batch


def response_logprobs(
    models: Sequence, tokenizer, queries: Sequence[str], responses: Sequence[str], *, temperature: float = 1.0, batch_size: int = 16
) -> tuple[list[tuple["torch.Tensor", "torch.Tensor"]], "torch.Tensor"]:
    """Log-probs of each response's tokens given its query: per model (at `temperature`, at 1), and the token mask.

    Responses are re-tokenised from their text; all tensors are (n, longest response).
    """
    import torch

    from rlaif_tasks.train.ppo import lm_forward, token_logprobs

    is_seq2seq = bool(getattr(models[0].config, "is_encoder_decoder", False))
    start_id = getattr(models[0].config, "decoder_start_token_id", None)
    out: list[list[list[torch.Tensor]]] = [[[], []] for _ in models]
    masks = []
    width = 1
    batches = []
    for b in range(0, len(queries), batch_size):
        batch = _encode(tokenizer, queries[b : b + batch_size], responses[b : b + batch_size], is_seq2seq, start_id)
        batches.append(batch)
        width = max(width, batch["response_ids"].shape[1])
    with torch.inference_mode():
        for batch in batches:
            pad = width - batch["response_ids"].shape[1]
            masks.append(torch.nn.functional.pad(batch["response_mask"], (0, pad)))
            for m, model in enumerate(models):
                device = next(model.parameters()).device
                logits, _ = lm_forward(model, {k: v.to(device) for k, v in batch.items()}, is_seq2seq, want_hidden=False)
                logits = logits.float().cpu()
                tokens = batch["response_ids"]
                out[m][0].append(torch.nn.functional.pad(token_logprobs(logits / temperature, tokens), (0, pad)))
                out[m][1].append(torch.nn.functional.pad(token_logprobs(logits, tokens), (0, pad)))
    return [(torch.cat(t), torch.cat(o)) for t, o in out], torch.cat(masks)


def kl_and_fluency(
    challenger, base, tokenizer, challenger_samples, base_samples, *, temperature: float = 1.0, batch_size: int = 16
) -> dict:
    """KL of the challenger to the base on its own responses, and the base policy's perplexity ratio.

    `*_samples` are evaluation sample tables (columns `query`, `response`).
    """
    import torch

    queries, responses = challenger_samples["query"].tolist(), challenger_samples["response"].astype(str).tolist()
    [(chal_t, _), (base_t, base_1)], mask = response_logprobs([challenger, base], tokenizer, queries, responses, temperature=temperature, batch_size=batch_size)
    mask = mask.float()
    seq_kl = ((chal_t - base_t) * mask).sum(1)
    tokens = mask.sum()
    nll_challenger = -(base_1 * mask).sum() / tokens.clamp(min=1)

    queries, responses = base_samples["query"].tolist(), base_samples["response"].astype(str).tolist()
    [(_, own_1)], own_mask = response_logprobs([base], tokenizer, queries, responses, temperature=temperature, batch_size=batch_size)
    own_mask = own_mask.float()
    nll_base = -(own_1 * own_mask).sum() / own_mask.sum().clamp(min=1)

    ppl_challenger, ppl_base = math.exp(nll_challenger.item()), math.exp(nll_base.item())
    empty = tokens.item() == 0 or own_mask.sum().item() == 0
    return {
        "kl": seq_kl.mean().item(),
        "kl_std": seq_kl.std(unbiased=False).item() if len(seq_kl) > 1 else 0.0,
        "perplexity_challenger": ppl_challenger,
        "perplexity_base": ppl_base,
        "perplexity_ratio": math.nan if empty else ppl_challenger / ppl_base,
        "n_responses": int(len(seq_kl)),
        "n_tokens": int(tokens.item()),
    }


def measure_kl_and_fluency(config: RunConfig, run_dir: Path, model_dir: str | Path) -> dict:
    """`kl_and_fluency` of the trained policy against `model.policy` on this run's evaluation samples (cached in gate/)."""
    import pandas as pd

    from rlaif_tasks.models import load_model, resolve_device
    from rlaif_tasks.pipeline import load_policy

    cache = run_dir / "gate" / "kl_fluency.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    paths = {label: run_dir / "eval" / f"{label}_samples.parquet" for label in ("final", "baseline")}
    for label, path in paths.items():
        if not path.is_file():
            raise RlaifError(f"{path} is missing", f"run the {'evaluate' if label == 'final' else 'baseline_eval'} stage of this run first")
    base = load_policy(config)
    challenger = load_model(str(model_dir), kind="auto", dtype=config.model.dtype, device=resolve_device(config.device))
    if len(challenger.tokenizer) != len(base.tokenizer):
        raise RlaifError(
            f"the trained policy's tokenizer ({len(challenger.tokenizer)} tokens) differs from the base policy's ({len(base.tokenizer)})",
            "gate a policy trained from model.policy of this run config",
        )
    gen = config.generation
    temperature = gen.temperature if gen.do_sample and gen.temperature > 0 else 1.0
    result = kl_and_fluency(
        challenger.model, base.model, challenger.tokenizer, pd.read_parquet(paths["final"]), pd.read_parquet(paths["baseline"]),
        temperature=temperature, batch_size=gen.batch_size,
    )
    write_json(cache, result)
    return result


# -- the reference: champion or base policy ------------------------------------------------------


def evaluate_registered(config: RunConfig, run_dir: Path, name: str, version: str) -> dict:
    """Evaluate a registered version on this run's test prompts (cached as eval/champion-v<version>.json)."""
    import mlflow

    from rlaif_tasks.data import load_prompts_split
    from rlaif_tasks.evaluation import evaluate_policy, write_evaluation
    from rlaif_tasks.models import resolve_device
    from rlaif_tasks.pipeline import load_judges

    label = f"champion-v{version}"
    path = run_dir / "eval" / f"{label}.json"
    if path.is_file():
        return read_evaluation(path)
    log.info("evaluating %s version %s on this run's test prompts", name, version)
    parts = mlflow.transformers.load_model(registry.model_uri(name, version), return_type="components")
    model = parts["model"].to(resolve_device(config.device))
    evaluation = evaluate_policy(
        model, parts["tokenizer"], load_prompts_split(run_dir, "test"), load_judges(config), config.generation, config.evaluation, seed=config.seed
    )
    return read_evaluation(write_evaluation(evaluation, run_dir / "eval", label))


COMPARABLE_TAGS = (tracking.TAG_DATASET, tracking.TAG_EVAL_SETTINGS, tracking.TAG_CODE_VERSION, tracking.TAG_JUDGES)
"""Run tags that must all be set and equal before the champion's stored numbers stand for tonight's:
the same prompts, sampling and judge settings, code, and judge revisions."""


def reference_toxicity(client: "MlflowClient", config: RunConfig, run_dir: Path, run_id: str, name: str, judge: str) -> dict:
    """What the challenger must beat: the champion's mean toxicity under `judge`, else the base policy's.

    The champion's numbers come from its own MLflow run only when that run is comparable (every tag
    of COMPARABLE_TAGS equal); otherwise the champion is evaluated here on this run's test prompts.
    """
    champion = registry.get_alias(client, name, registry.CHAMPION)
    if champion is None:
        baseline = read_evaluation(run_dir / "eval" / "baseline.json")
        return {"kind": "base", "version": None, "toxicity": _judge_mean(baseline, judge, "baseline"), "source": "baseline evaluation of this run"}
    version = str(champion.version)
    differences = _differences(client.get_run(run_id).data.tags, _run_tags(client, champion.run_id))
    stored = tracking.stored_evaluation(client, champion.run_id, "final") if not differences else None
    key = tracking.metric_name(judge)
    if stored is not None and key in stored["judges"]:
        return {"kind": "champion", "version": version, "toxicity": stored["judges"][key]["mean"], "source": f"MLflow run {champion.run_id} (same prompts, settings, code and judges)"}
    if differences:
        log.info("the run of champion %s version %s (%s) is not comparable with this one, so it is evaluated again: %s",
                 name, version, champion.run_id, "; ".join(differences))
    else:
        log.info("the run of champion %s version %s (%s) holds no final evaluation under %s, so it is evaluated again", name, version, champion.run_id, judge)
    summary = evaluate_registered(config, run_dir, name, version)
    tracking.log_metrics_once(client, run_id, tracking.evaluation_metrics("champion", summary))
    return {"kind": "champion", "version": version, "toxicity": _judge_mean(summary, judge, "champion"), "source": "evaluated on this run's test prompts"}


def _differences(mine: dict, theirs: dict) -> list[str]:
    """Each comparability tag that is unset or differs, as `tag: champion's value -> this run's`, judges named."""
    out = []
    for tag in COMPARABLE_TAGS:
        if mine.get(tag) and mine.get(tag) == theirs.get(tag):
            continue
        line = f"{tag}: {theirs.get(tag)} -> {mine.get(tag)}"
        if tag == tracking.TAG_JUDGES:
            before, after = (_json_tag(t, tracking.TAG_JUDGE_REVISIONS) for t in (theirs, mine))
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


def _judge_mean(summary: dict, judge: str, label: str) -> float:
    if judge not in summary["judges"]:
        raise RlaifError(f"the {label} evaluation has no judge {judge!r} (it has {sorted(summary['judges'])})", "set gate.judge to one of those judges")
    return float(summary["judges"][judge]["mean"])


# -- the gate -----------------------------------------------------------------------------------


def run_gate(
    config: RunConfig, run_dir: str | Path, run_id: str, name: str, version: str | int, model_dir: str | Path, *, client: "MlflowClient | None" = None
) -> dict:
    """Measure and decide whether version `version` (trained into `model_dir`) should become the champion.

    The decision (all numbers, the reasons) goes to MLflow as `gate/*` metrics, the artifact
    gate/decision.json and `rlaif.gate*` tags on the run and the model version, and to
    run_dir/gate/decision.json; it is returned as a JSON-able dict.
    """
    client = client if client is not None else tracking.connect(config)
    run_dir = Path(run_dir)
    version = str(version)
    judge = gate_judge(config)
    challenger = _judge_mean(read_evaluation(run_dir / "eval" / "final.json"), judge, "final")
    reference = reference_toxicity(client, config, run_dir, run_id, name, judge)
    measured = measure_kl_and_fluency(config, run_dir, model_dir)
    decision = decide(challenger, reference["toxicity"], measured["kl"], measured["perplexity_ratio"], config.gate)
    decision.update(
        judge=judge, model_name=name, challenger_version=version, reference=reference,
        kl_std=measured["kl_std"], perplexity_challenger=measured["perplexity_challenger"], perplexity_base=measured["perplexity_base"],
        n_responses=measured["n_responses"],
    )
    log_decision(client, run_id, decision)
    write_json(run_dir / "gate" / "decision.json", decision)
    verdict = "passed" if decision["passed"] else "refused: " + "; ".join(decision["reasons"])
    log.info("gate for %s version %s against the %s: %s", name, version, reference["kind"], verdict)
    return decision


def log_decision(client: "MlflowClient", run_id: str, decision: dict) -> None:
    tracking.log_metrics_once(client, run_id, {
        "gate/passed": float(decision["passed"]),
        "gate/challenger_toxicity": decision["challenger_toxicity"],
        "gate/reference_toxicity": decision["reference_toxicity"],
        "gate/improvement": decision["improvement"],
        "gate/kl": decision["kl"],
        "gate/perplexity_ratio": decision["perplexity_ratio"],
        "gate/perplexity_challenger": decision["perplexity_challenger"],
        "gate/perplexity_base": decision["perplexity_base"],
    })
    client.log_dict(run_id, decision, DECISION_ARTIFACT)
    outcome = "passed" if decision["passed"] else "refused"
    reason = "; ".join(decision["reasons"]) or "all checks passed"
    client.set_tag(run_id, "rlaif.gate", outcome)
    client.set_tag(run_id, "rlaif.gate_reference", f"{decision['reference']['kind']} {decision['reference']['version'] or ''}".strip())
    client.set_tag(run_id, "rlaif.gate_reason", reason[:5000])
    name, version = decision["model_name"], decision["challenger_version"]
    client.set_model_version_tag(name, version, "rlaif.gate", outcome)
    client.set_model_version_tag(name, version, "rlaif.gate_reason", reason[:5000])
