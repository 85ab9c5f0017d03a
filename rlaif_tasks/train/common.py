"""What every trainer shares: peft's LoraConfig from the one LoRA settings type, the one result type, the progress line."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def lora_merged(model, frozen: dict):
    """A peft model with its LoRA adapters merged into the weights, for sampling; on exit the weights are the frozen ones again, bit for bit.

    Unmerged, every adapted layer adds two small matmuls and a Python call per generated token: on the
    demo policy that made a rollout about 1.4x slower (bench/bench_rollout.py, docs/benchmarks.md).
    Subtracting the update again (peft's unmerge) would leave rounding error in the weights that the
    reference policy (adapters off) is made of, so they are copied back from `frozen`, which keeps a
    copy of each adapted weight (filled on the first call; the weights are frozen).
    """
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = {name: module for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}
    if not frozen:
        frozen.update({name: module.get_base_layer().weight.detach().clone() for name, module in layers.items()})
    with torch.no_grad():
        model.merge_adapter()
        try:
            yield model
        finally:
            model.unmerge_adapter()
            for name, module in layers.items():
                module.get_base_layer().weight.copy_(frozen[name])


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
