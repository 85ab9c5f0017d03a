"""A training reward made of several judges: the weighted sum of their normalised scores, each part logged.

One judge as the whole reward invites reward hacking: the policy finds what that judge likes (saying
little, drifting off topic, one safe phrase) rather than what it stands for. A composite adds parts
that pull the other way (relevance to the prompt, conciseness) and logs every part per step
(`reward/part/<name>/raw` and `/normalised` in metrics.jsonl and MLflow), so a run that maximises
one part at the cost of the others shows it in its curves. A part with weight 0 is logged only.

    reward:
      model: composite
      name: detox+relevance
      parts:
        - judge: {model: jigsaw-bilstm}          # any judge build_backend knows, with its own `input`
          weight: 1.0
        - judge: relevance                       # MiniLM cosine of prompt and response
          weight: 0.5
        - judge: length                          # -max(0, words - target_words) / target_words
          weight: 0.2
          normalise: none
          target_words: 20
        - judge: {model: "python:my_pkg.rewards:politeness", name: politeness}
          weight: 0.5
          normalise: {center: 0.0, scale: 2.0}

Normalisation makes the weights mean relative importance, not judges' units (a logit and a cosine
differ by orders of magnitude). Per part, `normalise` is one of:

    running   (default) z-score by a running mean and std over every value this part has scored,
              the current batch included (Welford/Chan update once per call, before normalising: the
              first batch is scored against itself rather than all zero). Scale-free and needs no
              tuning, but the statistics live in this process only: a resumed run restarts them, and
              each process of a distributed run keeps its own, so neither repeats an uninterrupted
              one-process run exactly, and a part's z-score drifts as the policy improves on it.
    {center: c, scale: s}   fixed affine (x - c) / s: deterministic across resume and processes;
              choose it where that matters and the judge's range is known.
    none      the raw score.

The composite reads responses and prompts apart (`reward_with_prompts`, which `Scorer` calls with
the prompts when it has them): relevance needs the prompt on its own, and each judge part joins
prompt and response only when its own `input` says so. The composite's top-level `input` and
`batch_size` are unused (each part batches itself). `reward(texts)` scores texts as responses with
no prompts. It has no toxicity probability: it is a training reward, not an evaluation judge.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from rlaif_tasks.config import ScorerConfig, _build, _coerce
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.rewards.base import words
from rlaif_tasks.rewards.relevance import SentenceEncoder

BUILT_IN = ("relevance", "length")
EPS = 1e-8


@dataclass
class PartConfig:
    """One part of a composite reward, as written under `reward.parts`."""

    judge: Any
    """A judge mapping (ScorerConfig keys), a model spec string as shorthand for {model: spec}, or `relevance` / `length`."""
    weight: float = 1.0
    normalise: Literal["running", "none"] | dict[str, float] = "running"
    """`running` (z-score by running mean/std), `none`, or {center, scale} for (x - center) / scale."""
    name: str | None = None
    """Column name in the logs; defaults to the judge's name, or `relevance` / `length`."""
    target_words: int = 20
    """`length` only: words allowed before the penalty starts."""
    encoder: str = "all-minilm-l6-v2"
    """`relevance` only: the sentence encoder (the bundled MiniLM, a hub id or a folder)."""


class RunningZScore:
    """(x - mean) / std over all values seen so far, merged per batch (Chan et al.'s parallel Welford)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def update(self, values: np.ndarray) -> None:
        n = len(values)
        if not n:
            return
        batch_mean = float(values.mean())
        batch_m2 = float(((values - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    def __call__(self, values: np.ndarray) -> np.ndarray:
        self.update(values)
        std = self.std
        return (values - self.mean) / std if std > EPS else values - self.mean


class Affine:
    """(x - center) / scale with fixed numbers: the same reward whatever was scored before."""

    def __init__(self, center: float = 0.0, scale: float = 1.0):
        self.center, self.scale = center, scale

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return (values - self.center) / self.scale


def _normaliser(spec: str | dict[str, float], where: str) -> Callable[[np.ndarray], np.ndarray]:
    if spec == "running":
        return RunningZScore()
    if spec == "none":
        return Affine()
    unknown = sorted(set(spec) - {"center", "scale"})
    scale = spec.get("scale", 1.0)
    if unknown or not math.isfinite(scale) or scale == 0 or not math.isfinite(spec.get("center", 0.0)):
        raise RlaifError(f"{where}.normalise {spec!r} is not a fixed affine", f"write {where}.normalise as running, none, or {{center: 0.0, scale: 2.0}} (scale non-zero)")
    return Affine(spec.get("center", 0.0), scale)


def _column_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "part"


def length_penalty(responses: Sequence[str], target_words: int) -> list[float]:
    """0 up to `target_words` words, then minus the excess as a fraction of the target."""
    return [-max(0, len(words(r)) - target_words) / target_words for r in responses]


@dataclass
class Part:
    name: str
    weight: float
    normalise: Callable[[np.ndarray], np.ndarray]
    score: Callable[[list[str], list[str] | None], Sequence[float]]


def _build_part(raw: Mapping[str, Any], index: int, device: str, build_scorer: Callable[..., Any] | None) -> Part:
    where = f"reward.parts[{index}]"
    if not isinstance(raw, Mapping):
        raise RlaifError(f"{where} is {raw!r}, not a mapping", f"write {where} as {{judge: ..., weight: 1.0}}")
    if "judge" not in raw:
        raise RlaifError(f"{where} has no judge", f"set {where}.judge to a judge mapping such as {{model: jigsaw-bilstm}}, or to relevance / length")
    cfg: PartConfig = _build(PartConfig, dict(raw), where)
    if not math.isfinite(cfg.weight):
        raise RlaifError(f"{where}.weight is {cfg.weight}", f"set {where}.weight to a finite number (0 logs the part without rewarding it)")
    normalise = _normaliser(cfg.normalise, where)
    judge = cfg.judge
    kind = judge if isinstance(judge, str) and judge in BUILT_IN else None
    if kind is None and (cfg.target_words != PartConfig.target_words or cfg.encoder != PartConfig.encoder):
        raise RlaifError(f"{where} sets target_words or encoder, which only the length / relevance parts read", f"remove them from {where}")
    if kind == "length":
        if cfg.target_words < 1:
            raise RlaifError(f"{where}.target_words must be >= 1, got {cfg.target_words}", "set it to the response length (in words) that costs nothing")
        target = cfg.target_words
        return Part(_column_name(cfg.name or "length"), cfg.weight, normalise, lambda responses, _: length_penalty(responses, target))
    if kind == "relevance":

        encoder = SentenceEncoder(cfg.encoder, device=device)
        name = _column_name(cfg.name or "relevance")

        def relevance(responses: list[str], prompts: list[str] | None) -> list[float]:
            if prompts is None:
                raise RlaifError(
                    f"the composite reward's part {name} compares prompt and response but got no prompts",
                    "score through Scorer(responses, prompts) (training does), or drop the relevance part",
                )
            return encoder.similarity(prompts, responses)

        return Part(name, cfg.weight, normalise, relevance)
    if isinstance(judge, str):
        judge = {"model": judge}
    scorer_cfg: ScorerConfig = _coerce(judge, ScorerConfig, f"{where}.judge")
    if scorer_cfg.model == "composite":
        raise RlaifError(f"{where}.judge is itself a composite", "list its parts in reward.parts instead of nesting them")
    if build_scorer is None:
        raise RlaifError(f"{where}.judge needs a scorer factory", "build composite rewards with rlaif_tasks.rewards.build_backend")
    scorer = build_scorer(scorer_cfg, purpose="reward", device=device)
    return Part(_column_name(cfg.name or scorer_cfg.display_name), cfg.weight, normalise, scorer)


class CompositeBackend:
    """The weighted sum of normalised parts; `last_parts` holds the means of the last call's raw and normalised scores."""

    def __init__(self, parts: Sequence[Mapping[str, Any]], device: str = "cpu", *, build_scorer: Callable[..., Any] | None = None):
        """`build_scorer` makes each judge part: rlaif_tasks.rewards.build_scorer passes itself, so this module never imports its package."""
        if not parts:
            raise RlaifError("reward.model is composite but reward.parts is empty", "list the parts under reward.parts, e.g. [{judge: {model: jigsaw-bilstm}, weight: 1.0}]")
        self.parts = [_build_part(p, i, device, build_scorer) for i, p in enumerate(parts)]
        names = [p.name for p in self.parts]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise RlaifError(f"reward.parts has more than one part named {clashes}, so their logs would overwrite each other", "give each part its own name:")
        self.last_parts: dict[str, float] = {}

    def reward_with_prompts(self, responses: list[str], prompts: list[str] | None) -> list[float]:
        if prompts is not None and len(prompts) != len(responses):
            raise RlaifError(f"the composite reward got {len(prompts)} prompts for {len(responses)} responses", "pass one prompt per response")
        if not responses:
            return []
        total = np.zeros(len(responses))
        logged: dict[str, float] = {}
        for part in self.parts:
            raw = np.asarray([float(x) for x in part.score(list(responses), prompts)], dtype=np.float64)
            if raw.shape != total.shape or not np.isfinite(raw).all():
                raise RlaifError(
                    f"the composite reward's part {part.name} returned {raw.size} scores (finite: {bool(np.isfinite(raw).all())}) for {len(responses)} responses",
                    "make the part's judge return one finite float per text",
                )
            normalised = part.normalise(raw)
            total += part.weight * normalised
            logged[f"{part.name}/raw"] = float(raw.mean())
            logged[f"{part.name}/normalised"] = float(normalised.mean())
        self.last_parts = logged
        return total.tolist()

    def reward(self, texts: list[str]) -> list[float]:
        return self.reward_with_prompts(list(texts), None)

    def toxic_probability(self, texts: list[str]) -> list[float]:
        raise RlaifError(
            "a composite reward has no toxicity probability: it is a training reward, not an evaluation judge",
            "list its toxicity parts' judges under evaluation.judges instead",
        )
