"""Direct preference optimisation of the policy on preference pairs, with TRL's DPOTrainer.

    pairs (prompt, chosen, rejected)  ->  split by prompt: train / held out (`eval_share`)
    policy + LoRA (peft)              ->  DPOTrainer, sigmoid loss, reference = the frozen base policy
                                          (the adapter switched off; without LoRA a second frozen copy)
    before / after training           ->  `preference_margin` on the held-out pairs (and a sample of the
                                          training pairs), measured here, not by TRL
    out_dir                           ->  plain transformers folder (LoRA merged), as `save_final_policy` writes

DPO needs no reward model and no sampling: it raises log p(chosen|prompt) - log p(rejected|prompt)
relative to the reference, so that margin, on prompts it never trained on, is the number to watch.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from rlaif_tasks.config import LoraSettings
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import load_model, resolve_device
from rlaif_tasks.train.common import lora_config, progress_callback
from rlaif_tasks.train.reward_model import check_pairs, pair_dataset, pair_trainer_args, split_pairs

log = logging.getLogger(__name__)

TRAIN_MARGIN_SAMPLE = 256
"""Training pairs whose margin is measured before and after (a seeded sample): enough to spot overfitting."""


@dataclass
class DPOTrainConfig(LoraSettings):
    beta: float = 0.1
    """Strength of the pull towards the reference: higher keeps the policy closer to it."""
    learning_rate: float = 5e-5
    epochs: float = 1.0
    max_steps: int | None = None
    """When set, overrides `epochs`."""
    max_epochs: float | None = None
    """With `max_steps`: stop after this many passes over the training pairs if that comes first."""
    batch_size: int = 8
    max_length: int = 512
    """Prompt+response tokens kept per sequence (the end is cut); pairs whose prompt alone fills it are dropped."""
    seed: int = 0
    eval_share: float = 0.1
    """Share of the distinct prompts held out for the margin; 0 measures it on the training pairs only."""
    device: str = "auto"


def _response_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of prompt+response+EOS and where the response starts, split as DPOTrainer splits them."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    eos = tokenizer.eos_token or ""
    text = prompt + response
    full = tokenizer(text if not eos or text.endswith(eos) else text + eos)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
        start += 1
    return full, max(start, 1)


def response_log_probs(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16) -> list[float]:
    """log p(response | prompt) per pair, summed over the response tokens (EOS included, as DPO trains it; never truncated)."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    out: list[float] = []
    with torch.inference_mode():
        for first in range(0, len(prompts), batch_size):
            seqs = [_response_ids(tokenizer, p, r) for p, r in zip(prompts[first : first + batch_size], responses[first : first + batch_size])]
            width = max(len(ids) for ids, _ in seqs)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in seqs], device=device)
            attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in seqs], device=device)
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
            token_logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            for row, (ids, start) in enumerate(seqs):
                out.append(token_logps[row, start - 1 : len(ids) - 1].sum().item())
    model.train(was_training)
    return out


def preference_margins(model, tokenizer, pairs_df: pd.DataFrame, batch_size: int = 16) -> list[float]:
    """Per pair: log p(chosen|prompt) - log p(rejected|prompt)."""
    prompts = pairs_df["prompt"].astype(str).tolist()
    chosen = response_log_probs(model, tokenizer, prompts, pairs_df["chosen"].astype(str).tolist(), batch_size)
    rejected = response_log_probs(model, tokenizer, prompts, pairs_df["rejected"].astype(str).tolist(), batch_size)
    return [c - r for c, r in zip(chosen, rejected)]


def preference_margin(model, tokenizer, pairs_df: pd.DataFrame, batch_size: int = 16) -> float:
    """Mean over pairs of log p(chosen|prompt) - log p(rejected|prompt), each summed over response tokens."""
    margins = preference_margins(model, tokenizer, pairs_df, batch_size)
    return sum(margins) / len(margins) if margins else float("nan")


def _margin_stats(model, tokenizer, pairs: pd.DataFrame, batch_size: int) -> tuple[float | None, float | None]:
    """(mean margin, share of pairs where the policy prefers chosen); None for no pairs."""
    if pairs.empty:
        return None, None
    margins = preference_margins(model, tokenizer, pairs, batch_size)
    return sum(margins) / len(margins), sum(m > 0 for m in margins) / len(margins)


def step_row(step: int, logs: dict) -> dict:
    """One optimiser step of DPOTrainer's log as a metrics row: its loss and implicit rewards (beta * log-ratio)."""
    return {
        "step": step,
        "loss": logs.get("loss"),
        "grad_norm": logs.get("grad_norm"),
        "dpo/reward_margin": logs.get("rewards/margins"),
        "dpo/reward_accuracy": logs.get("rewards/accuracies"),
        "dpo/reward_chosen": logs.get("rewards/chosen"),
        "dpo/reward_rejected": logs.get("rewards/rejected"),
    }


def _dpo_progress(logs: dict) -> str:
    """DPO's progress line: its loss, and the implicit reward margin and accuracy (beta * log-ratio, chosen over rejected)."""
    parts = [f"loss {logs['loss']:.4f}"]
    if logs.get("rewards/margins") is not None:
        parts.append(f"margin {logs['rewards/margins']:.3f}")
    if logs.get("rewards/accuracies") is not None:
        parts.append(f"accuracy {logs['rewards/accuracies']:.2f}")
    return " ".join(parts)


def _step_callback(on_step: Callable[[dict], None]):
    from transformers import TrainerCallback

    class StepCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "train_loss" not in logs and state.is_world_process_zero:
                on_step(step_row(state.global_step, logs))

    return StepCallback()


def _max_steps(cfg: DPOTrainConfig, train_pairs: int) -> int:
    """TRL's max_steps: `max_steps`, capped at `max_epochs` passes over the pairs; -1 lets `epochs` decide."""
    if not cfg.max_steps:
        return -1
    if cfg.max_epochs is None:
        return cfg.max_steps
    return max(1, min(cfg.max_steps, math.ceil(cfg.max_epochs * train_pairs / cfg.batch_size)))


def train_dpo(policy_path: str | Path, pairs_df: pd.DataFrame, out_dir: str | Path, cfg: DPOTrainConfig, on_step: Callable[[dict], None] | None = None) -> dict:
    """DPO-train the causal LM at `policy_path` on `pairs_df`; saves it to `out_dir` and returns the metrics.

    `on_step(row)` gets each optimiser step's `step_row` as it is logged.
    """
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from rlaif_tasks.train.checkpoint import save_final_policy

    pairs = check_pairs(pairs_df)
    train_pairs, eval_pairs = split_pairs(pairs, cfg.eval_share, cfg.seed)
    train_sample = train_pairs.sample(n=min(len(train_pairs), TRAIN_MARGIN_SAMPLE), random_state=cfg.seed)
    device = resolve_device(cfg.device)
    set_seed(cfg.seed)

    loaded = load_model(str(policy_path), kind="causal-lm", dtype="float32", device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    ref_model = None if cfg.use_lora else load_model(str(policy_path), kind="causal-lm", dtype="float32", device="cpu").model
    score_batch = max(cfg.batch_size, 16)
    eval_before = _margin_stats(model.to(device), tokenizer, eval_pairs, score_batch)
    train_before = _margin_stats(model, tokenizer, train_sample, score_batch)

    with tempfile.TemporaryDirectory(prefix="dpo-trainer-") as scratch:
        args = DPOConfig(**pair_trainer_args(cfg, scratch, device, beta=cfg.beta, max_steps=_max_steps(cfg, len(train_pairs))))
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=pair_dataset(train_pairs),
            processing_class=tokenizer,
            peft_config=lora_config(cfg, "CAUSAL_LM") if cfg.use_lora else None,
        )
        trainer.remove_callback(PrinterCallback)
        if on_step is not None:
            trainer.add_callback(_step_callback(on_step))
        trainer.add_callback(progress_callback(log, _dpo_progress))
        if len(trainer.train_dataset) == 0:
            raise RlaifError(f"every training prompt fills max_length={cfg.max_length} tokens", "raise max_length or shorten the prompts")
        result = trainer.train()
        history = [row for row in trainer.state.log_history if "loss" in row]

    trained = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.use_lora:
        trained = trained.merge_and_unload()
    eval_after = _margin_stats(trained, tokenizer, eval_pairs, score_batch)
    train_after = _margin_stats(trained, tokenizer, train_sample, score_batch)
    save_final_policy(trained, tokenizer, Path(out_dir), merge_adapter=True)

    on_eval = not eval_pairs.empty
    before, after = (eval_before, eval_after) if on_eval else (train_before, train_after)
    metrics = {
        "config": asdict(cfg),
        "pairs_train": len(train_pairs),
        "pairs_eval": len(eval_pairs),
        "prompts_eval": int(eval_pairs["prompt"].nunique()),
        "margin_on": "eval" if on_eval else "train",
        "margin_initial": before[0],
        "margin_final": after[0],
        "preferred_initial": before[1],
        "preferred_final": after[1],
        "train_margin_initial": train_before[0],
        "train_margin_final": train_after[0],
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "reward_accuracy_last": history[-1].get("rewards/accuracies") if history else None,
        "history": [step_row(row["step"], row) for row in history],
        "model_dir": str(out_dir),
    }
    log.info(
        "DPO: %s margin %.3f -> %.3f on %d pairs; policy saved to %s",
        metrics["margin_on"], before[0], after[0], len(eval_pairs if on_eval else train_sample), out_dir,
    )
    return metrics
