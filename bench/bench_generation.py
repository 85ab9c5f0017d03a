"""Rollout generation: batched (rlaif_tasks.generation) against the seed's one-prompt-at-a-time loop.

Both sides sample from the same policy, for the same prompts, exactly the same number of new tokens
(min_new_tokens = max_new_tokens), in one process, one after the other. Writes the
`generation` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_generation.py [--prompts 32] [--new-tokens 32] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from rlaif_tasks.config import GenerationConfig  # noqa: E402
from rlaif_tasks.data.detox_prompts import bundled_prompts  # noqa: E402
from rlaif_tasks.generation import generate, hf_generation_config  # noqa: E402
from rlaif_tasks.models import load_model  # noqa: E402


@torch.inference_mode()
def one_at_a_time(model, tokenizer, queries, gen: GenerationConfig) -> tuple[int, float]:
    """The seed's loop: one `generate` call per prompt."""
    hf_gen = hf_generation_config(gen, tokenizer)
    tokens, start = 0, time.perf_counter()
    for query in queries:
        enc = tokenizer(query, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, generation_config=hf_gen)
        tokens += out.shape[1] - enc["input_ids"].shape[1]
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = parser.parse_args()

    policy = load_model(args.policy, kind="causal-lm")
    model, tokenizer = policy.model, policy.tokenizer
    queries = [p["prompt"] for p in bundled_prompts() if p["category"] == "provocative"][: args.prompts]
    gen = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, top_k=0, top_p=1.0, batch_size=args.batch_size)

    generate(model, tokenizer, queries[:2], GenerationConfig(max_new_tokens=4, min_new_tokens=4))  # warm-up
    torch.manual_seed(0)
    seq_tokens, seq_seconds = one_at_a_time(model, tokenizer, queries, gen)
    batched = generate(model, tokenizer, queries, gen, seed=0)
    batched_tokens = len(queries) * args.new_tokens
    assert seq_tokens == batched_tokens, (seq_tokens, batched_tokens)

    seq_tps, bat_tps = seq_tokens / seq_seconds, batched_tokens / batched.seconds
    ratio = bat_tps / seq_tps
    body = f"""## Rollout generation: batched vs the seed's one-prompt-at-a-time loop

`bench/bench_generation.py` — policy `{args.policy}`, {len(queries)} bundled provocative prompts,
exactly {args.new_tokens} new tokens per prompt (sampling, top_k=0, top_p=1.0), {machine()}.

| generation | batch | new tokens | seconds | tokens/s |
|---|---:|---:|---:|---:|
| one prompt at a time (baseline: the seed's loop) | 1 | {seq_tokens} | {seq_seconds:.1f} | {seq_tps:.1f} |
| batched, left padding + KV cache (`rlaif_tasks.generation`) | {args.batch_size} | {batched_tokens} | {batched.seconds:.1f} | {bat_tps:.1f} |

Speed-up: **{ratio:.1f}x** (target: at least 6x at batch 16)."""
    print(body)
    if not args.no_write:
        print(f"written to {write_section('generation', body)}")


if __name__ == "__main__":
    main()
