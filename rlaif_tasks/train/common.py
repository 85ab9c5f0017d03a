"""What every trainer shares: peft's LoraConfig from the one LoRA settings type, the one result type, the progress line."""

from __future__ import annotations

import copy
import logging
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from rlaif_tasks.config import LoraSettings


def with_lora(model, settings: LoraSettings, task_type: str):
    """peft's get_peft_model with `settings`; peft still asks transformers' deprecated `is_gradient_checkpointing`,
    a FutureWarning we cannot act on, so it is silenced here."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, lora_config(settings, task_type))


def lora_config(settings: LoraSettings, task_type: str):
    """peft's LoraConfig from `settings` for `task_type` ("CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS")."""
    from peft import LoraConfig

    targets = settings.lora_target_modules
    return LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout, task_type=task_type,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )


class MergedSampler:
    """A plain copy of the policy with its LoRA adapters folded into the weights: what PPO samples from.

    Through peft's layers every adapted linear layer adds two small matmuls and a Python call per
    generated token (bench/bench_rollout.py measures what that costs). Merging into the policy itself
    would move the weights the reference policy (adapters off) is made of, and un-merging by
    subtraction leaves rounding error behind, so the merge goes into a copy, refreshed before each
    rollout. It costs one more model in memory: a large model on a full GPU may turn it off
    (`train.merge_lora_for_rollouts`).
    """

    def __init__(self, model, dtype: str | None = None):
        """`model`: the policy before peft wraps it (peft replaces its layers in place); `dtype`: the copy's, if not the policy's."""
        import torch

        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        if dtype is not None:
            self.model.to(getattr(torch, dtype))

    def to(self, device) -> "MergedSampler":
        self.model.to(device)
        return self

    def refresh(self, peft_model):
        """The copy with W + the adapters' update for every adapted layer of `peft_model`, now."""
        import torch
        from peft.tuners.lora import LoraLayer

        with torch.no_grad():
            for name, layer in peft_model.base_model.model.named_modules():
                if isinstance(layer, LoraLayer):
                    weight = layer.get_base_layer().weight
                    for adapter in layer.active_adapters:
                        weight = weight + layer.get_delta_weight(adapter)
                    self.model.get_submodule(name).weight.copy_(weight)
        return self.model


@dataclass
class TrainResult:
    """What an online trainer (PPO, GRPO, RLOO) returns."""

    model_dir: Path
    metrics: list[dict] = field(default_factory=list)
    """Every step's metrics, including the steps of an earlier run this one resumed."""
    resumed_from: int = 0


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class StepProgress:
    """The one per-step line every trainer prints: `step 3/45 reward 0.812 kl 0.104 | 9.8s/step (generate 4.1) eta 6m52s`.

    The eta is the mean step time so far times the steps left; the line goes to the trainer's logger, which
    a task's log and `make run`'s terminal both show.
    """

    def __init__(self, total: int, logger: logging.Logger):
        self.total, self.log, self.times, self.last = total, logger, [], time.perf_counter()

    def __call__(self, step: int, metrics: str, seconds: float | None = None, detail: str = "") -> None:
        now = time.perf_counter()
        seconds = now - self.last if seconds is None else seconds
        self.last = now
        self.times.append(seconds)
        eta = statistics.fmean(self.times) * max(self.total - step, 0)
        self.log.info("step %d/%d %s | %.1fs/step%s eta %s", step, self.total, metrics, seconds, f" ({detail})" if detail else "", format_seconds(eta))


def progress_callback(logger: logging.Logger, metrics):
    """A transformers TrainerCallback printing StepProgress for each logged optimiser step; `metrics(logs)` says what to show."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        progress: StepProgress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = StepProgress(state.max_steps, logger)  # known once training starts

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "train_loss" not in logs and state.is_world_process_zero and self.progress is not None:
                self.progress(state.global_step, metrics(logs))

    return ProgressCallback()
