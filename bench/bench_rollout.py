"""PPO's rollout with LoRA: through peft's layers (the baseline) against a merged copy (`train.common.MergedSampler`).

The demo's policy and LoRA (SmolLM2-135M, r16 on every linear layer) with the adapters moved off
zero, as after some training; the demo's batch of 16 queries and generation settings; both
settings alternate in one process for `--rounds` rounds, the merged one timed with its refresh.
The policy's frozen weights must equal the originals bit for bit at the end (the reference policy
is made of them). Writes the `rollout` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_rollout.py [--rounds 5]
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

from rlaif_tasks.config import load_config  # noqa: E402
from rlaif_tasks.data.detox_prompts import bundled_prompts  # noqa: E402
from rlaif_tasks.models import load_model  # noqa: E402
from rlaif_tasks.train.common import MergedSampler, with_lora  # noqa: E402
from rlaif_tasks.train.ppo import rollout  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = parser.parse_args()

    config = load_config(args.config)
    t, gen = config.train, config.generation
    loaded = load_model(config.model.policy, kind="causal-lm", dtype=config.model.dtype)
    sampler = MergedSampler(loaded.model)
    policy = with_lora(loaded.model, t, "CAUSAL_LM").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    originals = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    queries = [p["prompt"] for p in bundled_prompts() if p["category"] == "provocative"][: t.batch_size]
    seconds: dict[str, list[float]] = {"unmerged": [], "merged": []}
    tokens: dict[str, list[int]] = {"unmerged": [], "merged": []}
    rollout(policy, loaded.tokenizer, queries[:2], gen, False, "cpu")  # warm-up
    for _ in range(args.rounds):
        for setting in seconds:
            torch.manual_seed(1)
            start = time.perf_counter()
            ro = rollout(sampler.refresh(policy) if setting == "merged" else policy, loaded.tokenizer, queries, gen, False, "cpu")
            seconds[setting].append(time.perf_counter() - start)
            tokens[setting].append(int(ro.batch["response_mask"].sum()))
    changed = [n for n, p in policy.named_parameters() if not p.requires_grad and not torch.equal(p, originals[n])]
    assert not changed, f"frozen weights changed: {changed[:3]}"

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    ratios = [u / m for u, m in zip(seconds["unmerged"], seconds["merged"])]
    body = f"""## PPO rollouts with LoRA: through peft's layers or from a merged copy

`bench/bench_rollout.py --rounds {args.rounds}` — {machine()}. The demo config's policy
(`{config.model.policy}`, {config.model.dtype}) with its LoRA (r{t.lora_r}, {t.lora_target_modules}) moved off zero, its batch of
{len(queries)} bundled provocative prompts and generation settings (up to {gen.max_new_tokens} new tokens); the two settings
alternate in one process, seconds per rollout, median (min-max) over {args.rounds} rounds.

| sampled from | s per rollout of {len(queries)} | response tokens (median) |
|---|---:|---:|
| through peft's LoRA layers (baseline) | {spread(seconds["unmerged"])} | {statistics.median(tokens["unmerged"]):.0f} |
| a copy with the adapters merged, refreshed each time (`train.merge_lora_for_rollouts`, default) | {spread(seconds["merged"])} | {statistics.median(tokens["merged"]):.0f} |

Merged copy / peft's layers, speed-up within a round: **{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}). At the end all
{len(originals)} frozen tensors of the policy equalled the originals bit for bit: the merge goes into the copy
(`train.common.MergedSampler`), so the reference policy (adapters off) is never touched."""
    print(body)
    if not args.no_write:
        print(f"written to {write_section('rollout', body)}")


if __name__ == "__main__":
    main()
