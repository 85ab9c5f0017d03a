"""RL training of the policy: `train(config, run_dir)` dispatches on `config.train.algorithm`.

    ppo         our own PPO (rlaif_tasks.train.ppo): TRL 1.16 has no PPOTrainer
    grpo, rloo  TRL's online trainers (rlaif_tasks.train.trl_online)
    dpo         TRL's DPOTrainer (rlaif_tasks.train.dpo) on preference pairs: AI feedback from the
                policy and `reward`, or human pairs (`preferences`), kept in run_dir/preferences/;
                `dpo_rounds` > 1 iterates, sampling new pairs from each round's policy

With `train.num_processes` > 1 the training runs in that many processes started by `accelerate
launch` (rlaif_tasks.train.distributed), the global batch split between them.

Whatever the algorithm, the result is `run_dir/train/final`: a plain transformers folder (model +
tokenizer, LoRA merged into the base weights) that any HF loader and MLflow's transformers flavour
can read without peft. Adapter checkpoints live in `run_dir/train/checkpoints/step-N` meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import pandas as pd

from rlaif_tasks.config import RunConfig
from rlaif_tasks.errors import RlaifError

__all__ = ["train", "train_in_process"]


def train(config: RunConfig, run_dir: str | Path, on_step: Callable[[dict], None] | None = None) -> Path:
    """Train the configured policy on the run's train prompts; returns the final model folder.

    `on_step(metrics)` is called once per optimisation step with that step's metrics dict. With
    `train.num_processes` > 1 (and not already inside a launch) the training runs in `accelerate
    launch` subprocesses; `on_step` is still called here, once per step.
    """
    from rlaif_tasks.train import distributed

    _check_algorithm(config)
    if config.train.num_processes > 1 and not distributed.in_launch():
        return distributed.launch(config, Path(run_dir), on_step=on_step)
    return train_in_process(config, run_dir, on_step=on_step)


def train_in_process(config: RunConfig, run_dir: str | Path, on_step: Callable[[dict], None] | None = None) -> Path:
    """The training in this process (one of the launched ones when distributed)."""
    from rlaif_tasks.data import load_prompts_split

    run_dir = Path(run_dir)
    _check_algorithm(config)
    split = load_prompts_split(run_dir, "train")
    queries = split["query"].astype(str).tolist()
    prompts = split["prompt"].astype(str).tolist() if "prompt" in split.columns else queries
    if config.train.algorithm == "dpo":
        return train_dpo_on_preferences(config, run_dir, split, on_step=on_step)
    if config.train.algorithm == "ppo":
        from rlaif_tasks.train.ppo import train_ppo

        return train_ppo(config, run_dir, queries, prompts, on_step=on_step).model_dir
    from rlaif_tasks.train.trl_online import train_with_trl

    return train_with_trl(config, run_dir, queries, prompts, on_step=on_step).model_dir


def preference_pairs(config: RunConfig, run_dir: Path, split) -> "pd.DataFrame":
    """The run's preference pairs (run_dir/preferences/pairs.parquet, made once): AI feedback on `split`, or imported."""
    return _run_pairs(config, run_dir, split)[0]


def _run_pairs(config: RunConfig, run_dir: Path, split) -> tuple["pd.DataFrame", dict]:
    """`preference_pairs` with the manifest that describes them."""
    from rlaif_tasks.preferences import load_human_preferences, read_preferences, write_preferences

    out = run_dir / "preferences"
    if (out / "pairs.parquet").is_file():
        return read_preferences(out)
    p = config.preferences
    if p.source == "ai-feedback":
        return ai_feedback_pairs(config, config.model.policy, split, out, seed=config.training_seed)
    pairs, report = load_human_preferences(p.source, column_mapping=p.column_mapping, max_chars=p.max_chars)
    write_preferences(pairs, out, manifest_extra={"source": p.source, "report": report})
    return read_preferences(out)


def ai_feedback_pairs(config: RunConfig, policy_path: str | Path, split, out: Path, seed: int) -> tuple["pd.DataFrame", dict]:
    """Pairs from `policy_path`'s own samples on `split`, labelled by `reward`, written to `out` (read back if there), with their manifest."""
    from rlaif_tasks.models import load_model, resolve_device
    from rlaif_tasks.preferences import build_ai_feedback_pairs, read_preferences, write_preferences
    from rlaif_tasks.rewards import build_scorer

    if (out / "pairs.parquet").is_file():
        return read_preferences(out)
    m, p = config.model, config.preferences
    policy = load_model(str(policy_path), kind="causal-lm", revision=m.revision, trust_remote_code=m.trust_remote_code, dtype=m.dtype, device=resolve_device(config.device))
    scorer = build_scorer(config.reward, purpose="reward", device=str(next(policy.model.parameters()).device))
    pairs = build_ai_feedback_pairs(policy.model, policy.tokenizer, split, scorer, config.generation, k=p.k, margin=p.margin, seed=seed)
    extra = {"source": "ai-feedback", "policy": str(policy_path), "judge": config.reward.display_name, "k": p.k, "margin": p.margin, "report": pairs.attrs.get("report", {})}
    write_preferences(pairs, out, manifest_extra=extra)
    return read_preferences(out)


def train_dpo_on_preferences(config: RunConfig, run_dir: Path, split, on_step: Callable[[dict], None] | None = None) -> Path:
    """DPO with the run's train settings: `steps` optimiser steps of `batch_size` pairs, LoRA as configured.

    With `dpo_rounds` > 1, iterative DPO: round r (r >= 2) samples pairs from round r-1's policy and
    trains from it, with it as the reference, so each round learns from what the policy now says.
    Rounds are kept in run_dir/train/rounds/round-R/ (pairs, policy) and a finished round is not
    trained again when the task is retried. Each step's loss and implicit rewards go to
    train/metrics.jsonl (steps counted across rounds) and to `on_step`.
    """
    import json
    from functools import partial

    from rlaif_tasks.atomic import write_json
    from rlaif_tasks.train.dpo import DPOTrainConfig, train_dpo
    from rlaif_tasks.train.metrics import MetricsWriter

    t = config.train
    if t.num_processes > 1:
        raise RlaifError("DPO runs in one process here", "set train.num_processes=1 for train.algorithm=dpo (multi-process DPO is not wired yet)")
    cfg = DPOTrainConfig(
        beta=t.dpo_beta, learning_rate=t.learning_rate, max_steps=t.steps, batch_size=t.batch_size, use_lora=t.use_lora,
        lora_r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, lora_target_modules=t.lora_target_modules,
        seed=config.training_seed, device=config.device,
    )
    final = run_dir / "train" / "final"
    policy: str | Path = config.model.policy
    rounds: list[dict] = []
    writer, finished_rows = MetricsWriter(run_dir / "train" / "metrics.jsonl"), []

    def across_rounds(number: int, row: dict) -> dict:
        return {**row, "step": (number - 1) * t.steps + row["step"], "round": number}

    def live(number: int, row: dict) -> None:
        row = across_rounds(number, row)
        writer.append(row)
        if on_step is not None:
            on_step(row)

    for number in range(1, t.dpo_rounds + 1):
        round_dir = run_dir / "train" / "rounds" / f"round-{number}"
        if number == 1:
            pairs, manifest = _run_pairs(config, run_dir, split)
        else:
            pairs, manifest = ai_feedback_pairs(config, policy, split, round_dir / "preferences", seed=config.training_seed + number - 1)
        out = final if number == t.dpo_rounds else round_dir / "policy"
        summary = round_dir / "dpo.json"
        if summary.is_file() and (out / "config.json").is_file():
            metrics = json.loads(summary.read_text(encoding="utf-8"))
        else:
            writer.reset(finished_rows)  # drops the rows of a round cut short
            metrics = train_dpo(policy, pairs, out, cfg, on_step=partial(live, number))
            write_json(summary, metrics)
        rounds.append({"round": number, "policy": str(policy), "pairs": len(pairs), "sample_reward_mean": manifest.get("report", {}).get("mean_score"), **{k: metrics[k] for k in ("margin_on", "margin_initial", "margin_final", "preferred_initial", "preferred_final", "train_margin_initial", "train_margin_final")}})
        finished_rows += [across_rounds(number, row) for row in metrics["history"]]
        policy = out
    writer.reset(finished_rows)
    write_json(run_dir / "train" / "dpo.json", {**metrics, "rounds": rounds})
    return final


def _check_algorithm(config: RunConfig) -> None:
    if config.train.algorithm not in ("ppo", "grpo", "rloo", "dpo"):
        raise RlaifError(f"unknown train.algorithm {config.train.algorithm!r}", "set train.algorithm to ppo, grpo, rloo or dpo")
