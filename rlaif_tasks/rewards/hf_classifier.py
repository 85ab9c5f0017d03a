"""Judges from any Hugging Face sequence classifier (hub id or local folder), as in the seed.

The seed rewards with the logit of `facebook/roberta-hate-speech-dynabench-r4-target`'s "nothate"
class (index 0). Indices differ between models, so the classes are found by label name: the
configured `non_toxic_label` / `toxic_label`, else well-known names ("nothate", "non-toxic",
"neutral", ... / "hate", "toxic", "offensive", ...). Evaluation uses the probability of the toxic
class (softmax over the classes, or the sigmoid for multi-label and single-logit heads). Sigmoid
heads such as unitary/toxic-bert have no non-toxic class: their reward is minus the toxic logit,
the log-odds that the text is not toxic.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from rlaif_tasks.config import ScorerConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import load_model

NON_TOXIC_NAMES = ("nothate", "not_hate", "nontoxic", "non_toxic", "not_toxic", "neutral", "normal", "neither", "clean", "safe", "acceptable", "ok")
TOXIC_NAMES = ("hate", "toxic", "toxicity", "offensive", "abusive", "insult", "unsafe", "harmful")


def _norm(label: str) -> str:
    return re.sub(r"[\s\-]+", "_", label.strip().lower())


def find_label(id2label: dict[int, str], wanted: str | None, known: Sequence[str], role: str, spec: str) -> int | None:
    """Index of the configured label, or of the first well-known name; None when nothing matches."""
    by_name = {_norm(name): idx for idx, name in id2label.items()}
    if wanted is not None:
        if _norm(wanted) not in by_name:
            raise RlaifError(
                f"the classifier {spec!r} has no label {wanted!r} (its labels: {sorted(id2label.values())})",
                f"set {role} to one of its labels",
            )
        return by_name[_norm(wanted)]
    for name in known:
        if name in by_name:
            return by_name[name]
    return None


def resolve_labels(id2label: dict[int, str], cfg: ScorerConfig, sigmoid: bool = False) -> tuple[int | None, int]:
    """(non-toxic index, toxic index); a binary head needs only one of the two names.

    With a sigmoid head (`sigmoid=True`) every label is scored on its own, so only the toxic one is
    needed and the non-toxic index may be None.
    """
    spec = cfg.model
    non_toxic = find_label(id2label, cfg.non_toxic_label, NON_TOXIC_NAMES, "non_toxic_label", spec)
    toxic = find_label(id2label, cfg.toxic_label, TOXIC_NAMES, "toxic_label", spec)
    ambiguous = False
    if len(id2label) == 2 and not sigmoid:
        other = {0: 1, 1: 0}
        if non_toxic is None and toxic is not None:
            non_toxic = other[toxic]
            ambiguous = cfg.toxic_label is None and _norm(id2label[non_toxic]) in TOXIC_NAMES
        if toxic is None and non_toxic is not None:
            toxic = other[non_toxic]
            ambiguous = cfg.non_toxic_label is None and _norm(id2label[toxic]) in NON_TOXIC_NAMES
    if sigmoid and toxic is not None and non_toxic is None:
        return None, toxic
    if non_toxic is None or toxic is None or non_toxic == toxic or ambiguous:
        raise RlaifError(
            f"cannot tell which labels of {spec!r} mean toxic and non-toxic (its labels: {sorted(id2label.values())})",
            "set toxic_label and non_toxic_label for this scorer in the config, e.g. toxic_label: hate, non_toxic_label: nothate",
        )
    return non_toxic, toxic


class HFClassifierBackend:
    """Batched scoring with a transformers sequence classifier on its own tokenizer."""

    def __init__(self, cfg: ScorerConfig, device: str = "cpu"):
        loaded = load_model(cfg.model, kind="sequence-classifier", device=device)
        self.model, self.tokenizer = loaded.model.eval(), loaded.tokenizer
        self.tokenizer.padding_side = "right"
        self.max_length = cfg.max_length
        id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        self.sigmoid = getattr(self.model.config, "problem_type", None) == "multi_label_classification" or len(id2label) == 1
        self.non_toxic, self.toxic = resolve_labels(id2label, cfg, sigmoid=self.sigmoid)
        self.device = next(self.model.parameters()).device

    @torch.inference_mode()
    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=self.max_length).to(self.device)
        return self.model(**enc).logits.float()

    def toxic_probability(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        logits = self.logits(texts)
        probs = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=-1)
        return probs[:, self.toxic].tolist()

    def reward(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        logits = self.logits(texts)
        if self.non_toxic is None:
            return (-logits[:, self.toxic]).tolist()
        return logits[:, self.non_toxic].tolist()
