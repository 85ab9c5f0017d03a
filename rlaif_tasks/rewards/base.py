"""The one interface every judge speaks: texts in, floats out, with what they measure.

A backend (a classifier of any kind) knows two numbers per text: the probability that it is toxic,
used for evaluation, and a reward, higher for less toxic text, used for training (for HF classifiers
the seed's logit of the non-toxic label). `Scorer` wraps a backend for one purpose and adds batching,
the prompt+response option and the NaN check.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Literal, Protocol, Sequence

from rlaif_tasks.errors import RlaifError

Purpose = Literal["reward", "toxicity"]

WORD = re.compile(r"\w+(?:'\w+)?")


def words(text: str) -> list[str]:
    """Lower-cased words as every text measure counts them (length, distinct-n, repetition)."""
    return WORD.findall(text.lower())


class ToxicityBackend(Protocol):
    """What a judge model must provide; both methods take and return equal-length lists."""

    def toxic_probability(self, texts: list[str]) -> list[float]: ...

    def reward(self, texts: list[str]) -> list[float]: ...


@dataclass
class Scorer:
    """A batched judge for one purpose: `toxicity` (lower is better) or `reward` (higher is better)."""

    name: str
    purpose: Purpose
    backend: ToxicityBackend
    input: Literal["response", "prompt+response"] = "response"
    batch_size: int = 32

    @property
    def measure(self) -> str:
        return "toxicity" if self.purpose == "toxicity" else "reward"

    @property
    def higher_is_better(self) -> bool:
        return self.purpose == "reward"

    def texts_for(self, responses: Sequence[str], prompts: Sequence[str] | None) -> list[str]:
        if self.input == "response":
            return list(responses)
        if prompts is None or len(prompts) != len(responses):
            raise RlaifError(
                f"scorer {self.name} reads prompt+response but got {0 if prompts is None else len(prompts)} prompts for {len(responses)} responses",
                "pass one prompt per response, or set input: response for this scorer",
            )
        return [p + r for p, r in zip(prompts, responses)]

    def __call__(self, responses: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        paired = getattr(self.backend, "reward_with_prompts" if self.purpose == "reward" else "toxic_probability_with_prompts", None)
        if paired is not None:
            # a backend that reads prompts apart (rewards/composite.py, a trained reward model) gets them, and the whole call
            # at once: it batches itself, and a composite's per-call statistics then cover the whole training batch
            if prompts is not None and len(prompts) != len(responses):
                raise RlaifError(f"scorer {self.name} got {len(prompts)} prompts for {len(responses)} responses", "pass one prompt per response")
            texts = list(responses)
            batches = [(texts, paired(texts, None if prompts is None else list(prompts)))]
        else:
            texts = self.texts_for(responses, prompts)
            fn = self.backend.toxic_probability if self.purpose == "toxicity" else self.backend.reward
            batches = ((texts[s : s + self.batch_size], fn(texts[s : s + self.batch_size])) for s in range(0, len(texts), self.batch_size))
        scores: list[float] = []
        for batch, raw in batches:
            out = [float(x) for x in raw]
            if len(out) != len(batch):
                raise RlaifError(f"scorer {self.name} returned {len(out)} scores for {len(batch)} texts", "make the scorer return one float per text")
            scores.extend(out)
        return require_finite(scores, texts, f"scorer {self.name}")


def checked_scores(score_fn: Callable[[list[str], list[str]], Sequence[float]], texts: list[str], prompts: list[str], who: str) -> list[float]:
    """`score_fn(texts, prompts)` as one finite float per text, or an error naming `who`."""
    if not texts:
        return []
    scores = [float(s) for s in score_fn(texts, prompts)]
    if len(scores) != len(texts):
        raise RlaifError(f"{who} returned {len(scores)} scores for {len(texts)} texts", f"make {who} return one float per text")
    return require_finite(scores, texts, who)


def require_finite(scores: list[float], texts: Sequence[str], who: str) -> list[float]:
    """`scores`, or an error naming `who` and the first text that got NaN or inf (which would poison a mean or a gradient)."""
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise RlaifError(
            f"{who} returned a non-finite score (NaN or inf) for {len(bad)} text(s), first: {texts[bad[0]][:80]!r}",
            "check the judge model's weights and inputs (empty text, wrong max_length), or use another judge",
        )
    return scores


def log_odds_non_toxic(p_toxic: float, eps: float = 1e-6) -> float:
    """Reward for judges that only give a probability: log-odds of the non-toxic class."""
    p = min(max(p_toxic, eps), 1 - eps)
    return math.log((1 - p) / p)
