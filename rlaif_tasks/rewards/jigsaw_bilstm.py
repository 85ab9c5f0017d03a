"""Judge `jigsaw-bilstm`: the Jigsaw-trained BiLSTM of toxic-comment-classifier, ported to PyTorch.

Toxicity is the sigmoid of the "toxic" label: it is the broad Jigsaw label, and the other five
(severe_toxic, obscene, threat, insult, identity_hate) are sub-types annotated mostly on comments that are
already toxic. `label="max"` takes the most alarmed label instead. The reward is the negated pre-sigmoid
logit of that label, i.e. the model's own log-odds that the text is not toxic, so it does not saturate
the way a probability does.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import jigsaw_bilstm


class JigsawBiLSTMBackend:
    """Batched scoring with the ported BiLSTM; `label` is one of its six labels, or "max" over all."""

    def __init__(self, label: str = "toxic", batch_size: int = 512):
        if label != "max" and label not in jigsaw_bilstm.LABELS:
            raise RlaifError(f"jigsaw-bilstm has no label {label!r}", f"use one of {list(jigsaw_bilstm.LABELS)} or 'max'")
        loaded = jigsaw_bilstm.load()
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.labels: tuple[str, ...] = jigsaw_bilstm.LABELS
        self.label = label
        self.batch_size = batch_size

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """Pre-sigmoid scores, shape (len(texts), 6), in the order of `self.labels`."""
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunks.append(self.model(self.tokenizer(texts[start : start + self.batch_size])))
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.labels))

    def label_probabilities(self, texts: Sequence[str]) -> list[dict[str, float]]:
        probs = torch.sigmoid(self.logits(texts))
        return [dict(zip(self.labels, row)) for row in probs.tolist()]

    def _toxic_logit(self, texts: Sequence[str]) -> torch.Tensor:
        logits = self.logits(texts)
        if self.label == "max":
            return logits.amax(dim=1)
        return logits[:, self.labels.index(self.label)]

    def toxic_probability(self, texts: list[str]) -> list[float]:
        return torch.sigmoid(self._toxic_logit(texts)).tolist()

    def reward(self, texts: list[str]) -> list[float]:
        return (-self._toxic_logit(texts)).tolist()
