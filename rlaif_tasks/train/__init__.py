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
from typing import Callable

from rlaif_tasks.config import RunConfig
from rlaif_tasks.train.dispatch import check_algorithm, train_in_process

__all__ = ["train", "train_in_process"]


def train(config: RunConfig, run_dir: str | Path, on_step: Callable[[dict], None] | None = None) -> Path:
    """Train the configured policy on the run's train prompts; returns the final model folder.

    `on_step(metrics)` is called once per optimisation step with that step's metrics dict. With
    `train.num_processes` > 1 (and not already inside a launch) the training runs in `accelerate
    launch` subprocesses; `on_step` is still called here, once per step.
    """
    from rlaif_tasks.train import collectives, distributed  # torch

    check_algorithm(config)
    if config.train.num_processes > 1 and not collectives.in_launch():
        return distributed.launch(config, Path(run_dir), on_step=on_step)
    return train_in_process(config, run_dir, on_step=on_step)
