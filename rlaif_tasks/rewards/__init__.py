"""Build a judge from a `ScorerConfig`: bundled classifiers, any HF sequence classifier, a reward model trained
here (the folder `train_reward_model` wrote), an LLM judge, a Python callable, or a weighted composite of these."""

from __future__ import annotations

import importlib
from pathlib import Path

from rlaif_tasks.config import REWARD_MODEL_FILE, ScorerConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import registry_spec
from rlaif_tasks.rewards.base import Purpose, Scorer, ToxicityBackend
from rlaif_tasks.rewards.llm_judge import LLMJudge
from rlaif_tasks.rewards.reward_model import RewardModelBackend

__all__ = ["Scorer", "ToxicityBackend", "build_scorer", "build_backend"]


class _CallableBackend:
    """`python:package.module:function`, where function(texts) -> rewards (higher is better)."""

    def __init__(self, spec: str):
        target = spec.removeprefix("python:")
        module_name, _, attr = target.partition(":")
        try:
            self.fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise RlaifError(f"reward callable {spec!r} cannot be imported: {exc}", "write it as python:package.module:function, importable from the workers") from exc

    def reward(self, texts):
        return self.fn(texts)

    def toxic_probability(self, texts):
        raise RlaifError("a Python callable reward has no toxicity probability", "use it as train reward only, not as an evaluation judge")


def build_backend(cfg: ScorerConfig, device: str = "cpu") -> ToxicityBackend:
    spec = cfg.model
    if cfg.parts and spec != "composite":
        raise RlaifError(f"judge {cfg.display_name} lists parts but its model is {spec!r}", "set model: composite to sum the parts, or remove parts")
    if spec.startswith("python:"):
        return _CallableBackend(spec)
    if spec == "composite":
        from rlaif_tasks.rewards.composite import CompositeBackend

        return CompositeBackend(cfg.parts, device=device, build_scorer=build_scorer)
    if spec == "jigsaw-bilstm":
        from rlaif_tasks.rewards.jigsaw_bilstm import JigsawBiLSTMBackend

        return JigsawBiLSTMBackend()
    if spec == "hatesonar":
        from rlaif_tasks.rewards.sonar import HateSonarBackend

        return HateSonarBackend()
    if spec == "llm-judge":

        return LLMJudge(**{"device": device, **cfg.llm_judge})
    folder = _reward_model_folder(spec)
    if folder is not None:

        return RewardModelBackend(folder, device=device)
    if spec == "profanity-check":
        from rlaif_tasks.rewards.profanity import ProfanityCheckBackend

        return ProfanityCheckBackend()
    from rlaif_tasks.rewards.hf_classifier import HFClassifierBackend

    return HFClassifierBackend(cfg, device=device)


def _reward_model_folder(spec: str) -> Path | None:
    """The folder of a trained reward model (reward_model.json beside the weights), local or registered (`models:/NAME/N`)."""
    folder = registry_spec.local_folder(spec) if registry_spec.is_registry_spec(spec) else Path(spec)
    return folder if (folder / REWARD_MODEL_FILE).is_file() else None


def build_scorer(cfg: ScorerConfig, purpose: Purpose, device: str = "cpu") -> Scorer:
    return Scorer(name=cfg.display_name, purpose=purpose, backend=build_backend(cfg, device), input=cfg.input, batch_size=cfg.batch_size)
