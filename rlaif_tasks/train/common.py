"""What every trainer shares: peft's LoraConfig from the one LoRA settings type, and the one result type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlaif_tasks.config import LoraSettings


def lora_config(settings: LoraSettings, task_type: str):
    """peft's LoraConfig from `settings` for `task_type` ("CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS")."""
    from peft import LoraConfig

    targets = settings.lora_target_modules
    return LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout, task_type=task_type,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )


@dataclass
class TrainResult:
    """What an online trainer (PPO, GRPO, RLOO) returns."""

    model_dir: Path
    metrics: list[dict] = field(default_factory=list)
    """Every step's metrics, including the steps of an earlier run this one resumed."""
    resumed_from: int = 0
