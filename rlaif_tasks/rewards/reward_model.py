"""A trained reward model (a transformers sequence classifier with one logit) as a scorer.

Trained by `train/reward_model.py` (TRL's RewardTrainer), read here: a reward or judge only needs the
folder, so scoring lives with the other scorers and training stays a layer above.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from rlaif_tasks.config import REWARD_MODEL_FILE
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import resolve_device

SUMMARY_FILE = REWARD_MODEL_FILE
"""Written beside the weights by training: max_length, accuracies, the settings."""


def score_texts(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 32) -> list[float]:
    """The score head's scalar per text, with EOS appended as in training (the head reads the last token)."""
    import torch

    eos = tokenizer.eos_token or ""
    texts = [t if not eos or t.endswith(eos) else t + eos for t in texts]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(device)
            scores.extend(model(**enc).logits[:, 0].float().tolist())
    model.train(was_training)
    return scores


class RewardModelBackend:
    """A saved reward model as a judge: `reward` is its scalar (higher = preferred).

    `toxic_probability` is sigmoid(-reward) so that evaluation code can rank texts with it; a
    Bradley-Terry reward has an arbitrary offset and scale, so this is an ordering, not a calibrated
    probability. Training stores an affine `score_scale` (the labelling judge's units) in the summary,
    applied here, so a PPO run's KL settings mean the same against the reward model as against the judge,
    and clamped to the range of those labels: beyond the best answer it was trained on, a score is extrapolation.
    """

    def __init__(self, folder: str | Path, device: str = "cpu", batch_size: int = 32):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise RlaifError(f"{folder} is not a saved reward model (no config.json)", "point at the out_dir of train_reward_model")
        summary_path = folder / SUMMARY_FILE
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
        self.folder, self.batch_size = folder, batch_size
        self.max_length = int(summary.get("max_length", 512))
        scale = summary.get("score_scale") or {}
        self.scale, self.shift = float(scale.get("scale", 1.0)), float(scale.get("shift", 0.0))
        self.low, self.high = float(scale.get("low", -math.inf)), float(scale.get("high", math.inf))
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).to(resolve_device(device)).eval()
        if self.model.config.num_labels != 1:
            raise RlaifError(f"{folder} has {self.model.config.num_labels} labels; a reward model has one", "use HFClassifierBackend for classifiers")

    def reward(self, texts: list[str]) -> list[float]:
        return self.reward_with_prompts(texts, None)

    def reward_with_prompts(self, responses: list[str], prompts: list[str] | None) -> list[float]:
        """Each response scored after its prompt, as training scored the pairs (and fitted the scale and clamp), whatever
        the scorer's `input` says; the response alone only where no prompts come."""
        if not responses:
            return []
        texts = list(responses) if prompts is None else [p + r for p, r in zip(prompts, responses, strict=True)]
        raw = score_texts(self.model, self.tokenizer, texts, self.max_length, self.batch_size)
        return [min(self.high, max(self.low, r * self.scale + self.shift)) for r in raw]

    def toxic_probability(self, texts: list[str]) -> list[float]:
        return self.toxic_probability_with_prompts(texts, None)

    def toxic_probability_with_prompts(self, responses: list[str], prompts: list[str] | None) -> list[float]:
        return [_sigmoid(-r) for r in self.reward_with_prompts(responses, prompts)]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
