"""PPO's rollout with LoRA: adapters unmerged (the baseline) against merged into the weights while sampling.

The demo's policy and LoRA (SmolLM2-135M, r16 on every linear layer) with the adapters moved off
zero, as after some training, so merging changes the weights; the demo's batch of 16 queries and
generation settings; both settings alternate in one process for `--rounds` rounds. After each
merged rollout the frozen weights must equal the originals bit for bit (the reference policy is
made of them). Writes the `rollout` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_rollout.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
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
from rlaif_tasks.train.common import lora_merged, with_lora  # noqa: E402
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
    policy = with_lora(loaded.model, t, "CAUSAL_LM").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    originals = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    queries = [p["prompt"] for p in bundled_prompts() if p["category"] == "provocative"][: t.batch_size]
    frozen: dict = {}
    seconds: dict[str, list[float]] = {"unmerged": [], "merged": []}
    tokens: dict[str, list[int]] = {"unmerged": [], "merged": []}
    rollout(policy, loaded.tokenizer, queries[:2], gen, False, "cpu")  # warm-up
    for _ in range(args.rounds):
        for setting in seconds:
            torch.manual_seed(1)
            start = time.perf_counter()
            with lora_merged(policy, frozen) if setting == "merged" else contextlib.nullcontext():
                ro = rollout(policy, loaded.tokenizer, queries, gen, False, "cpu")
            seconds[setting].append(time.perf_counter() - start)
            tokens[setting].append(int(ro.batch["response_mask"].sum()))
            if setting == "merged":
                changed = [n for n, p in policy.named_parameters() if not p.requires_grad and not torch.equal(p, originals[n])]
                assert not changed, f"frozen weights changed by merging: {changed[:3]}"

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    ratios = [u / m for u, m in zip(seconds["unmerged"], seconds["merged"])]
    body = f"""## PPO rollouts with LoRA: adapters merged while sampling

`bench/bench_rollout.py --rounds {args.rounds}` — {machine()}. The demo config's policy
(`{config.model.policy}`, {config.model.dtype}) with its LoRA (r{t.lora_r}, {t.lora_target_modules}) moved off zero, its batch of
{len(queries)} bundled provocative prompts and generation settings (up to {gen.max_new_tokens} new tokens); the two settings
alternate in one process, seconds per rollout, median (min-max) over {args.rounds} rounds.

| adapters while sampling | s per rollout of {len(queries)} | response tokens (median) |
|---|---:|---:|
| unmerged (baseline: peft's LoRA layers) | {spread(seconds["unmerged"])} | {statistics.median(tokens["unmerged"]):.0f} |
| merged into the weights (`train.merge_lora_for_rollouts`, default) | {spread(seconds["merged"])} | {statistics.median(tokens["merged"]):.0f} |

Merged / unmerged speed-up within a round: **{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}). After every merged
rollout all {len(originals)} frozen tensors equalled the originals bit for bit (`train.common.lora_merged` copies them back
instead of subtracting the update, whose rounding would move the reference policy)."""
    print(body)
    if not args.no_write:
        print(f"written to {write_section('rollout', body)}")


if __name__ == "__main__":
    main()
