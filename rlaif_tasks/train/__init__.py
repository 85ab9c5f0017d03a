"""RL training of the policy: `train(config, run_dir)` dispatches on `config.train.algorithm`.

    ppo         our own PPO (rlaif_tasks.train.ppo): TRL 1.16 has no PPOTrainer
    grpo, rloo  TRL's online trainers (rlaif_tasks.train.trl_online)

Whatever the algorithm, the result is `run_dir/train/final`: a plain transformers folder (model +
tokenizer, LoRA merged into the base weights) that any HF loader and MLflow's transformers flavour
can read without peft. Adapter checkpoints live in `run_dir/train/checkpoints/step-N` meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rlaif_tasks.config import RunConfig
from rlaif_tasks.errors import RlaifError

__all__ = ["train"]


def train(config: RunConfig, run_dir: str | Path, on_step: Callable[[dict], None] | None = None) -> Path:
    """Train the configured policy on the run's train prompts; returns the final model folder.

    `on_step(metrics)` is called once per optimisation step with that step's metrics dict.
    """
    run_dir = Path(run_dir)
    algorithm = config.train.algorithm
    if algorithm not in ("ppo", "grpo", "rloo"):
        raise RlaifError(f"unknown train.algorithm {algorithm!r}", "set train.algorithm to ppo, grpo or rloo")
    from rlaif_tasks.data import load_prompts_split

    split = load_prompts_split(run_dir, "train")
    queries = split["query"].astype(str).tolist()
    prompts = split["prompt"].astype(str).tolist() if "prompt" in split.columns else queries
    if algorithm == "ppo":
        from rlaif_tasks.train.ppo import train_ppo

        return train_ppo(config, run_dir, queries, prompts, on_step=on_step).model_dir
    from rlaif_tasks.train.trl_online import train_with_trl

    return train_with_trl(config, run_dir, queries, prompts, on_step=on_step).model_dir
