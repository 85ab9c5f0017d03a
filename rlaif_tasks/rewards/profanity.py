"""Judge `profanity-check`: alt-profanity-check's probability that a text is profane.

Toxicity is that probability, as `profanity_check.predict_prob` returns it. The calibrated SVM exposes
only probabilities (an average over calibration folds), so the reward is their log-odds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rlaif_tasks.models import profanity
from rlaif_tasks.rewards.base import log_odds_non_toxic


class ProfanityCheckBackend:
    """Batched profanity-check scoring."""

    def __init__(self) -> None:
        loaded = profanity.load()
        self.classifier = loaded.model
        self.vectorizer = loaded.tokenizer
        self._profane = list(self.classifier.classes_).index(1)

    def toxic_probability(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        probs = self.classifier.predict_proba(self.vectorizer.transform(list(texts)))
        return np.clip(probs[:, self._profane], 0.0, 1.0).tolist()

    def reward(self, texts: Sequence[str]) -> list[float]:
        return [log_odds_non_toxic(p) for p in self.toxic_probability(texts)]
