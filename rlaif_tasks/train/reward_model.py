"""A learned reward model from preference pairs, trained with TRL's RewardTrainer (Bradley-Terry loss).

    pairs (prompt, chosen, rejected)  ->  split by prompt: train / held out (`eval_share`)
    base model + 1-logit score head   ->  RewardTrainer on prompt+chosen vs prompt+rejected (+ EOS)
    held-out pairs                    ->  pairwise accuracy, mean margin reward(chosen) - reward(rejected)
    out_dir                           ->  plain sequence-classification folder (LoRA merged), num_labels=1,
                                          with reward_model.json (settings and the held-out numbers)

`RewardModelBackend(out_dir)` serves that folder as a judge (`ToxicityBackend`), so a reward model
learned from AI or human preferences can replace a toxicity classifier in training and evaluation.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from rlaif_tasks.atomic import atomic_dir
from rlaif_tasks.config import LoraSettings
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import describe_spec, load_model, resolve_device
from rlaif_tasks.rewards.reward_model import SUMMARY_FILE, score_texts
from rlaif_tasks.train.common import lora_config, progress_callback

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class RewardModelConfig(LoraSettings):
    base_model: str
    """A local folder, hub id or bundled name; a causal LM gets a fresh 1-logit score head."""
    learning_rate: float = 1e-3
    epochs: float = 2.0
    """On SmolLM2-135M with LoRA and 654 AI-feedback pairs (docs/results.md), 1e-3 for two passes ordered 0.968 of 218
    held-out pairs; 1e-4 for one pass left the loss near ln 2 and ordered 0.679 (0.601 untrained)."""
    batch_size: int = 8
    max_length: int = 512
    """Longer pairs are dropped from training (TRL filters them) and truncated when scoring."""
    seed: int = 0
    eval_share: float = 0.1
    """Share of the distinct prompts held out; 0 holds none out (no accuracy is reported)."""
    device: str = "auto"
    rescale: bool = True
    """Put the scores in the units of the judge that labelled the pairs (its mean and spread over the training pairs'
    answers, where the pairs carry `score_chosen`/`score_rejected`; else mean 0, std 1). A Bradley-Terry model's offset
    and scale are arbitrary: trained on 653 pairs its scores spread 2.3x as wide as jigsaw-bilstm's on the same answers,
    so PPO's KL coefficient, set for the judge, weighed 2.3x less against them and the policy drifted to 10 nats
    (docs/preferences.md)."""


SCALE_PAIRS = 256
"""Training pairs (a seeded sample) whose answers set the scale: a few hundred pin a mean and a spread."""


def check_pairs(pairs: pd.DataFrame, what: str = "pairs") -> pd.DataFrame:
    """The three text columns as str, or an error naming what is missing."""
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise RlaifError(f"{what} lack the column(s) {missing} (columns: {list(pairs.columns)})", "pass a DataFrame with prompt, chosen and rejected columns")
    if pairs.empty:
        raise RlaifError(f"no {what} to train on", "build preference pairs first (rlaif_tasks.preferences)")
    empty = int(pairs[list(PAIR_COLUMNS)].isna().any(axis=1).sum())
    if empty:
        raise RlaifError(f"{empty} of the {what} have a missing prompt, chosen or rejected text", "drop them, e.g. with rlaif_tasks.preferences.validate_preferences")
    scores = [c for c in ("score_chosen", "score_rejected") if c in pairs.columns]
    return pd.concat([pairs[list(PAIR_COLUMNS)].astype(str), pairs[scores]], axis=1).reset_index(drop=True)


def split_pairs(pairs: pd.DataFrame, eval_share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train / held-out pairs by prompt, so no held-out prompt was trained on."""
    from rlaif_tasks.preferences import split_pairs_by_prompt

    if eval_share <= 0:
        return pairs, pairs.iloc[:0]
    return split_pairs_by_prompt(pairs, test_size=eval_share, seed=seed)


def hf_location(spec: str) -> str:
    """Where transformers can load `spec` from; a bundled name is loaded once, which converts it into a cached folder."""
    info = describe_spec(spec)
    if info.source != "bundled":
        return info.location
    return load_model(spec, kind="causal-lm").source


def pair_trainer_args(cfg, scratch: str, device: str, **extra) -> dict:
    """The TrainingArguments both pair trainers share: CPU-safe precision, a constant rate, no saving or eval by TRL."""
    return dict(
        output_dir=scratch, seed=cfg.seed, data_seed=cfg.seed, use_cpu=device == "cpu", bf16=False, fp16=False,
        activation_checkpointing=False, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, max_length=cfg.max_length, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, **extra,
    )


def pair_dataset(pairs: pd.DataFrame):
    """TRL's explicit-prompt preference format; the trainer scores prompt+response and appends EOS."""
    import datasets

    return datasets.Dataset.from_dict({c: pairs[c].tolist() for c in PAIR_COLUMNS})


def pairwise_stats(model, tokenizer, pairs: pd.DataFrame, max_length: int) -> dict[str, float | None]:
    """Share of pairs where reward(chosen) > reward(rejected), and the mean margin between them."""
    if pairs.empty:
        return {"accuracy": None, "margin": None}
    chosen = score_texts(model, tokenizer, (pairs["prompt"] + pairs["chosen"]).tolist(), max_length)
    rejected = score_texts(model, tokenizer, (pairs["prompt"] + pairs["rejected"]).tolist(), max_length)
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"accuracy": sum(m > 0 for m in margins) / len(margins), "margin": sum(margins) / len(margins)}


def score_scale(model, tokenizer, pairs: pd.DataFrame, max_length: int, seed: int) -> dict:
    """`scale` and `shift` such that `raw * scale + shift` has the labels' mean and standard deviation over these pairs'
    chosen and rejected answers (`to: labels`), or mean 0 and std 1 where the pairs carry no scores (`to: unit`); with
    labels also `low` and `high`, their range, outside which a score is extrapolation that PPO would chase."""
    import statistics

    sample = pairs.sample(n=min(len(pairs), SCALE_PAIRS), random_state=seed)
    raw = score_texts(model, tokenizer, (sample["prompt"] + sample["chosen"]).tolist() + (sample["prompt"] + sample["rejected"]).tolist(), max_length)
    labelled = {"score_chosen", "score_rejected"} <= set(sample.columns) and not sample[["score_chosen", "score_rejected"]].isna().any().any()
    if labelled:
        labels = [*sample["score_chosen"], *sample["score_rejected"]]
        mean, std = statistics.fmean(labels), statistics.pstdev(labels)
    else:
        mean, std = 0.0, 1.0
    raw_std = statistics.pstdev(raw) if len(raw) > 1 else 0.0
    scale = std / raw_std if raw_std > 0 and std > 0 else 1.0
    found = {"scale": scale, "shift": mean - scale * statistics.fmean(raw), "to": "labels" if labelled else "unit", "pairs": len(sample)}
    return found | ({"low": min(labels), "high": max(labels)} if labelled else {})


def _reward_progress(logs: dict) -> str:
    """The reward model's progress line: its Bradley-Terry loss, and the share of this step's pairs it orders right."""
    accuracy = logs.get("accuracy", logs.get("rewards/accuracies"))
    return f"loss {logs['loss']:.4f}" + (f" accuracy {accuracy:.2f}" if accuracy is not None else "")


def train_reward_model(pairs_df: pd.DataFrame, out_dir: str | Path, cfg: RewardModelConfig) -> dict:
    """Train a scalar reward model on `pairs_df` and save it to `out_dir`; returns the summary it writes there."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    pairs = check_pairs(pairs_df)
    train_pairs, eval_pairs = split_pairs(pairs, cfg.eval_share, cfg.seed)
    device = resolve_device(cfg.device)
    location = hf_location(cfg.base_model)

    set_seed(cfg.seed)  # the score head is initialised at random
    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    with suppress_seqcls_warning():  # a causal LM's lm_head is dropped and a score head added, as intended
        model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=1, ignore_mismatched_sizes=True, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    initial = pairwise_stats(model.to(device), tokenizer, eval_pairs, cfg.max_length)

    with tempfile.TemporaryDirectory(prefix="reward-trainer-") as scratch:
        args = RewardConfig(**pair_trainer_args(cfg, scratch, device))
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=pair_dataset(train_pairs),
            processing_class=tokenizer,
            peft_config=lora_config(cfg, "SEQ_CLS") if cfg.use_lora else None,
        )
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(progress_callback(log, _reward_progress))
        if len(trainer.train_dataset) == 0:
            raise RlaifError(f"every training pair is longer than max_length={cfg.max_length} tokens", "raise max_length or shorten the pairs")
        result = trainer.train()
        history = [row for row in trainer.state.log_history if "loss" in row]

    trained = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.use_lora:
        trained = trained.merge_and_unload()
    final = pairwise_stats(trained, tokenizer, eval_pairs, cfg.max_length)
    scale = score_scale(trained, tokenizer, train_pairs, cfg.max_length, cfg.seed) if cfg.rescale else None

    summary = {
        "base_model": cfg.base_model,
        "config": asdict(cfg),
        "pairs_train": len(train_pairs),
        "pairs_trained": len(trainer.train_dataset),
        "pairs_eval": len(eval_pairs),
        "prompts_eval": int(eval_pairs["prompt"].nunique()),
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_accuracy_last": history[-1].get("accuracy") if history else None,
        "eval_accuracy_initial": initial["accuracy"],
        "eval_accuracy": final["accuracy"],
        "eval_margin_initial": initial["margin"],
        "eval_margin": final["margin"],
        "appends_eos": tokenizer.eos_token is not None,
        "max_length": cfg.max_length,
        **({"score_scale": scale} if scale else {}),
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        trained.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    log.info(
        "reward model saved to %s: held-out accuracy %s (was %s), margin %s, on %d pairs",
        out_dir, _fmt(final["accuracy"]), _fmt(initial["accuracy"]), _fmt(final["margin"]), len(eval_pairs),
    )
    return summary


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
