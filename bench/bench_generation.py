"""Rollout generation: batched (rlaif_tasks.generation) against the seed's one-prompt-at-a-time loop.

Every row samples from the same policy, for the same prompts, exactly the same number of new tokens
(min_new_tokens = max_new_tokens), in one process, one after the other: the seed's loop, the batched
rollouts of training (batch 16), the evaluation's batch (64) in float32 and in bfloat16, and the
machine's matmul peak on the policy's layer shapes for scale. Writes the
`generation` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_generation.py [--prompts 64] [--new-tokens 24] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
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


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def matmul_peak(model, dtype, rows: int = 1024) -> float:
    """GFLOP/s of this machine on the policy's own layer shapes with many rows: what generation could reach at best."""
    shapes = sorted({tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)})
    x = {k: torch.randn(rows, k, dtype=dtype) for _, k in shapes}
    weights = [torch.randn(n, k, dtype=dtype) for n, k in shapes]
    with torch.inference_mode():
        for w in weights:
            torch.nn.functional.linear(x[w.shape[1]], w)
        start, flops = time.perf_counter(), 0
        for _ in range(3):
            for w in weights:
                torch.nn.functional.linear(x[w.shape[1]], w)
                flops += 2 * rows * w.shape[0] * w.shape[1]
    return flops / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = parser.parse_args()

    policy = load_model(args.policy, kind="causal-lm")
    model, tokenizer = policy.model, policy.tokenizer
    queries = [p["prompt"] for p in bundled_prompts() if p["category"] == "provocative"][: args.prompts]
    gen = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, top_k=0, top_p=1.0)
    seeds = list(range(len(queries)))
    flops_per_token = 2 * sum(p.numel() for p in model.parameters())  # every weight once per token; the tied head is the embedding

    generate(model, tokenizer, queries[:2], GenerationConfig(max_new_tokens=4, min_new_tokens=4))  # warm-up
    expected = len(queries) * args.new_tokens
    settings = [
        ("one prompt at a time (baseline: the seed's loop)", "float32", 1, None),
        ("batched (PPO rollouts: generation.batch_size)", "float32", 16, None),
        ("batched, the evaluation's seeds (evaluation.batch_size)", "float32", 64, seeds),
        ("the same in bfloat16 (evaluation.dtype: auto, on bfloat16 CPUs)", "bfloat16", 64, seeds),
        ("PPO rollouts in bfloat16 (train.rollout_dtype: auto, on bfloat16 CPUs)", "bfloat16", 16, None),
    ]
    tps: dict[int, list[float]] = {i: [] for i in range(len(settings))}  # tokens/s of each setting, one entry per round
    for _ in range(args.rounds):
        for i, (label, dtype, batch, row_seeds) in enumerate(settings):
            model.to(getattr(torch, dtype))
            if batch == 1:
                torch.manual_seed(0)
                tokens, seconds = one_at_a_time(model, tokenizer, queries, gen)
            else:
                out = generate(model, tokenizer, queries, gen, seed=0, batch_size=batch, row_seeds=row_seeds)
                tokens, seconds = out.new_tokens, out.seconds
            assert tokens == expected, (label, tokens, expected)
            tps[i].append(tokens / seconds)
    model.to(torch.float32)
    peaks = {dtype: matmul_peak(model, getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}

    def spread(values: list[float], spec: str) -> str:
        return f"{statistics.median(values):{spec}} ({min(values):{spec}}-{max(values):{spec}})"

    table = [
        "| generation | dtype | batch | tokens/s, median (min-max) | vs the seed's loop, same round | GFLOP/s (share of the matmul peak) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    speedup = {i: [t / base for t, base in zip(tps[i], tps[0])] for i in tps}
    for i, (label, dtype, batch, _) in enumerate(settings):
        gflops = statistics.median(tps[i]) * flops_per_token / 1e9
        table.append(f"| {label} | {dtype} | {batch} | {spread(tps[i], '.1f')} | {spread(speedup[i], '.1f')}x | {gflops:.0f} ({gflops / peaks[dtype]:.0%}) |")
    at = {(settings[i][1], settings[i][2]): spread(speedup[i], ".1f") for i in range(1, len(settings))}
    flags = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").is_file() else ""
    bf16 = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None
    body = f"""## Rollout generation: batched vs the seed's one-prompt-at-a-time loop

`bench/bench_generation.py --prompts {args.prompts} --new-tokens {args.new_tokens} --rounds {args.rounds}` — policy `{args.policy}`,
{len(queries)} bundled provocative prompts, exactly {expected // len(queries)} new tokens per prompt (sampling, top_k=0, top_p=1.0),
{machine()}; every row in this one process, {args.rounds} rounds of all rows in turn (the speed-up is taken
within a round, against that round's baseline).

{chr(10).join(table)}

Speed-up over the seed's loop, median (min-max over rounds): at batch 16 (PPO's rollouts) **{at[("float32", 16)]}x** in float32 and
**{at[("bfloat16", 16)]}x** in bfloat16; at batch 64 (evaluation, `evaluation.batch_size`; the responses are the same as at 16, since each
has its own random stream) **{at[("float32", 64)]}x** in float32 and **{at[("bfloat16", 64)]}x** in bfloat16.

How far from the machine's limit: the matmul peak, measured on the policy's own layer shapes with 1,024 rows, is
{peaks["float32"]:.0f} GFLOP/s in float32 and {peaks["bfloat16"]:.0f} GFLOP/s in bfloat16 on these cores; the GFLOP/s column counts 2 x
{flops_per_token // 2 / 1e6:.0f}M parameters per token. Decoding multiplies {16}-{64} rows by every weight matrix per step, which reaches
a fraction of that peak; the rest of a step is the per-token work of `generate` (sampling, cache, masks) that does
not shrink with the batch. Every batched row samples with its own random stream by inverse CDF (one uniform per
row and step, `generation.RowSeededSampler`); HF's `torch.multinomial` draws an exponential per vocabulary entry
(49,152 here), which took about a sixth of a decoding step at batch 16 before. This CPU ({cpu_model()}) {"has " + bf16 if bf16 else "has no bfloat16 instructions"} (`/proc/cpuinfo`): oneDNN runs bfloat16 matmuls
at {peaks["bfloat16"] / peaks["float32"]:.1f}x the float32 rate here. `auto` (evaluation.dtype, train.rollout_dtype, train.autocast_dtype in
configs/demo.yaml) picks bfloat16 only where AMX, AVX512-BF16 or a GPU makes it fast; bench/bench_dtype.py checks what it changes."""
    print(body)
    if not args.no_write:
        print(f"written to {write_section('generation', body)}")


if __name__ == "__main__":
    main()
