"""Batched sampling from a policy, shared by evaluation and benchmarks.

Rollouts are the slowest part of an alignment run on CPU, so prompts go through `generate` in
batches with left padding and the KV cache; one prompt at a time wastes most of the matrix units.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import transformers

from rlaif_tasks.config import GenerationConfig

log = logging.getLogger(__name__)


@dataclass
class Generated:
    responses: list[str]
    prompt_index: list[int]
    """For each response, the index of its query (a query repeats `num_samples` times)."""
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def hf_generation_config(gen: GenerationConfig, tokenizer) -> transformers.GenerationConfig:
    kwargs = dict(
        max_new_tokens=gen.max_new_tokens,
        min_new_tokens=gen.min_new_tokens,
        do_sample=gen.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p)
    return transformers.GenerationConfig(**kwargs)


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    cut = min((i for s in stop_strings if (i := text.find(s)) >= 0), default=-1)
    return text if cut < 0 else text[:cut]


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    queries: Sequence[str],
    gen: GenerationConfig,
    *,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
) -> Generated:
    """Sample `num_samples` responses per query, `batch_size` sequences per forward pass."""
    batch_size = batch_size or gen.batch_size
    is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    if not is_seq2seq:
        tokenizer.padding_side = "left"
    hf_gen = hf_generation_config(gen, tokenizer)
    expanded = [(i, q) for i, q in enumerate(queries) for _ in range(num_samples)]
    torch.manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    responses: list[str] = []
    new_tokens = 0
    start = time.perf_counter()
    for b in range(0, len(expanded), batch_size):
        batch = [q for _, q in expanded[b : b + batch_size]]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=is_seq2seq).to(device)
        out = model.generate(**enc, generation_config=hf_gen)
        if not is_seq2seq:
            out = out[:, enc["input_ids"].shape[1] :]
        mask = (out != tokenizer.pad_token_id) & (out != tokenizer.eos_token_id) if tokenizer.pad_token_id is not None else torch.ones_like(out, dtype=torch.bool)
        new_tokens += int(mask.sum())
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        responses.extend(truncate_at_stop(t, gen.stop_strings) for t in texts)
        done = min(b + batch_size, len(expanded))
        log.info("generated %d/%d responses (%.1f tok/s)", done, len(expanded), new_tokens / max(time.perf_counter() - start, 1e-9))
    return Generated(responses, [i for i, _ in expanded], new_tokens, time.perf_counter() - start)
