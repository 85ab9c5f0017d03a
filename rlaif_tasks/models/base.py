"""What the model zoo hands back, whatever the kind of model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ModelKind = Literal["causal-lm", "seq2seq-lm", "sequence-classifier", "bilstm-classifier", "onnx-classifier", "sklearn-classifier"]


@dataclass
class LoadedModel:
    spec: str
    """What the user asked for: a bundled short name, a hub id or a local folder."""
    kind: ModelKind
    model: Any
    tokenizer: Any | None
    source: str
    """Where it was actually loaded from (a folder or a hub id)."""
