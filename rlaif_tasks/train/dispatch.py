"""The training of one process, dispatched on `train.algorithm` (also what each launched process runs).

`rlaif_tasks.train.train` decides whether to run it here or in `accelerate launch` processes
(distributed.py), whose workers call `train_in_process` too; keeping it apart keeps that one-way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rlaif_tasks.atomic import write_json
from rlaif_tasks.config import RunConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.train.metrics import MetricsWriter


def train_in_process(config: RunConfig, run_dir: str | Path, on_step: Callable[[dict], None] | None = None) -> Path:
    """The training in this process (one of the launched ones when distributed)."""
    from rlaif_tasks.data import load_prompts_split

    run_dir = Path(run_dir)
    check_algorithm(config)
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

    from rlaif_tasks.preferences.run_pairs import ai_feedback_pairs, run_pairs
    from rlaif_tasks.train.dpo import DPOTrainConfig, train_dpo

    t = config.train
    if t.num_processes > 1:
        raise RlaifError("DPO runs in one process here", "set train.num_processes=1 for train.algorithm=dpo (multi-process DPO is not wired yet)")
    cfg = DPOTrainConfig(
        beta=t.dpo_beta, learning_rate=t.rate("dpo"), batch_size=t.batch_size, **t.lora_settings(), max_steps=t.steps, max_epochs=t.dpo_max_epochs,
        seed=config.training_seed, device=config.device,
    )
    final = run_dir / "train" / "final"
    policy: str | Path = config.model.policy
    rounds: list[dict] = []
    writer, finished_rows = MetricsWriter(run_dir / "train" / "metrics.jsonl"), []

    steps_before = 0  # the earlier rounds' steps, so that steps count on across rounds

    def across_rounds(number: int, row: dict) -> dict:
        return {**row, "step": steps_before + row["step"], "round": number}

    def live(number: int, row: dict) -> None:
        row = across_rounds(number, row)
        writer.append(row)
        if on_step is not None:
            on_step(row)

    for number in range(1, t.dpo_rounds + 1):
        round_dir = run_dir / "train" / "rounds" / f"round-{number}"
        if number == 1:
            pairs, manifest = run_pairs(config, run_dir, split)
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
        margins = ("margin_on", "margin_initial", "margin_final", "preferred_initial", "preferred_final", "train_margin_initial", "train_margin_final")
        rounds.append({
            "round": number, "policy": str(policy), "pairs": len(pairs), "steps": metrics["steps"], "sample_reward_mean": manifest.get("report", {}).get("mean_score"),
            **{k: metrics[k] for k in margins},
        })
        finished_rows += [across_rounds(number, row) for row in metrics["history"]]
        steps_before += metrics["steps"]
        policy = out
    writer.reset(finished_rows)
    write_json(run_dir / "train" / "dpo.json", {**metrics, "rounds": rounds})
    return final


def describe_dpo(summary: dict, manifest: dict) -> str:
    """What a DPO night trained on and how far, for the report: where its pairs came from (so a user sees a night that built
    them), the steps, and how often the policy prefers the chosen answer of held-out pairs before and after."""
    if manifest.get("source") == "ai-feedback":
        report = manifest.get("report", {})
        prompts = f"{report.get('prompts')} train prompts drawn by the seed" if manifest.get("prompts_drawn") else f"all {report.get('prompts')} train prompts"
        origin = f"AI feedback built in this run: {prompts}, {manifest.get('k')} answers each, the best and worst under {manifest.get('judge')}"
    else:
        origin = f"imported from {manifest.get('source')}"
    rounds = summary.get("rounds") or []
    steps = f"{summary.get('steps')} step{'' if summary.get('steps') == 1 else 's'}" + (f" in the last of {len(rounds)} rounds" if len(rounds) > 1 else "")
    line = f"DPO on {manifest.get('pairs')} preference pairs ({origin}), {steps}"
    if summary.get("preferred_initial") is not None and summary.get("preferred_final") is not None:
        which = f"the {summary.get('pairs_eval')} held-out pairs" if summary.get("margin_on") == "eval" else "sampled training pairs"
        line += f"; it prefers the chosen answer of {which} {summary['preferred_initial']:.0%} -> {summary['preferred_final']:.0%}"
    return line


def check_algorithm(config: RunConfig) -> None:
    if config.train.algorithm not in ("ppo", "grpo", "rloo", "dpo"):
        raise RlaifError(f"unknown train.algorithm {config.train.algorithm!r}", "set train.algorithm to ppo, grpo, rloo or dpo")
