"""Judge `hatesonar`: HateSonar's tweet classifier (hate speech / offensive language / neither).

Toxicity is 1 - P(neither), i.e. hate speech and offensive language both count: the library scores
toxicity in the broad Jigsaw sense, and HateSonar's "offensive" class is where insults and profanity
land. The multinomial model has no single logit for "not toxic", so the reward is the log-odds of
P(neither), which is what a logit would be for the neither-vs-rest split.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rlaif_tasks.models import sonar
from rlaif_tasks.rewards.base import log_odds_non_toxic


class HateSonarBackend:
    """Batched HateSonar scoring through onnxruntime."""

    def __init__(self) -> None:
        self.model: sonar.SonarModel = sonar.load().model
        self.classes = self.model.classes
        self._neither = self.classes.index("neither")

    def class_probabilities(self, texts: Sequence[str]) -> list[dict[str, float]]:
        return [dict(zip(self.classes, row)) for row in self.model.predict_proba(texts).tolist()]

    def toxic_probability(self, texts: list[str]) -> list[float]:
        probs = self.model.predict_proba(texts)
        return np.clip(1.0 - probs[:, self._neither], 0.0, 1.0).tolist()

    def reward(self, texts: list[str]) -> list[float]:
        return [log_odds_non_toxic(p) for p in self.toxic_probability(texts)]
