"""AI-feedback preference pairs per second: batched sampling vs one prompt's k samples at a time.

`build_ai_feedback_pairs` samples k responses per prompt, scores them with the reward judge and keeps
(best, worst) when the gap beats the margin; its `batch_size` is how many sequences share a forward
pass. Both settings do the same work (the same prompts, exactly `--new-tokens` tokens per response,
the same judge and seeds); they alternate round by round, so drift in the load of a shared machine
hits both alike. Pairs/s depends on the margin and the samples (batching changes the random
streams, so pair counts may differ a little); responses/s is the throughput the batching buys.
Writes the `preferences` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_preferences.py [--prompts 16] [--k 4] [--new-tokens 24] [--batch-sizes 16 4] [--rounds 2] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import machine, write_section  # noqa: E402

from rlaif_tasks.config import GenerationConfig, ScorerConfig  # noqa: E402
from rlaif_tasks.data.detox_prompts import bundled_prompts  # noqa: E402
from rlaif_tasks.models import load_model  # noqa: E402
from rlaif_tasks.preferences import build_ai_feedback_pairs  # noqa: E402
from rlaif_tasks.rewards import build_scorer  # noqa: E402

POLICY = "smollm2-135m-instruct"


class TimedScorer:
    """The judge, with the seconds spent in it summed, so a round splits into sampling and judging."""

    def __init__(self, scorer):
        self.scorer, self.seconds = scorer, 0.0

    def __call__(self, responses, prompts):
        t0 = time.perf_counter()
        try:
            return self.scorer(responses, prompts)
        finally:
            self.seconds += time.perf_counter() - t0


def one_round(loaded, prompts_df, scorer, gen, *, k, margin, seed, batch_size) -> dict:
    timed = TimedScorer(scorer)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    pairs = build_ai_feedback_pairs(loaded.model, loaded.tokenizer, prompts_df, timed, gen, k=k, margin=margin, seed=seed, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    responses = pairs.attrs["report"]["responses"]
    return {
        "seconds": seconds, "judge_seconds": timed.seconds, "pairs": len(pairs), "responses": responses,
        "pairs_per_s": len(pairs) / seconds, "responses_per_s": responses / seconds, "load": (load + os.getloadavg()[0]) / 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4, help="responses sampled per prompt")
    parser.add_argument("--new-tokens", type=int, default=24, help="exactly this many new tokens per response")
    parser.add_argument("--margin", type=float, default=0.5, help="the score gap a pair needs (preferences.margin's default)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 4], help="sequences per forward pass; k = one prompt at a time")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads: on a busy 2-core machine a second thread spin-waits and slows generation several-fold")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = bundled_prompts()[: args.prompts]
    prompts_df = pd.DataFrame({"prompt": [r["prompt"] for r in rows], "query": [r["prompt"] for r in rows]})
    gen = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, batch_size=max(args.batch_sizes))
    loaded = load_model(POLICY, kind="causal-lm", device="cpu")
    scorer = build_scorer(ScorerConfig(model="jigsaw-bilstm"), purpose="reward")
    build_ai_feedback_pairs(loaded.model, loaded.tokenizer, prompts_df.head(1), scorer, GenerationConfig(max_new_tokens=2, min_new_tokens=2), k=2, margin=0.0)

    results: dict[int, list[dict]] = {b: [] for b in args.batch_sizes}
    for r in range(args.rounds):
        for batch_size in args.batch_sizes:
            out = one_round(loaded, prompts_df, scorer, gen, k=args.k, margin=args.margin, seed=r, batch_size=batch_size)
            results[batch_size].append(out)
            print(f"round {r} batch {batch_size}: {out['pairs']} pairs, {out['responses']} responses in {out['seconds']:.1f}s "
                  f"(judge {out['judge_seconds']:.2f}s, load {out['load']:.1f})", flush=True)

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    base = statistics.median(o["responses_per_s"] for o in results[args.batch_sizes[-1]])
    table = [
        "| batch_size (sequences per forward pass) | pairs/s, median (min–max) | responses/s, median (min–max) | pairs per round | seconds per round (judge) | mean load | responses/s vs batch " + f"{args.batch_sizes[-1]} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for batch_size, outs in results.items():
        label = f"{batch_size}" + (" (one prompt's k samples at a time)" if batch_size == args.k else "")
        pairs = ", ".join(str(o["pairs"]) for o in outs)
        seconds = ", ".join(f"{o['seconds']:.1f} ({o['judge_seconds']:.2f})" for o in outs)
        table.append(
            f"| {label} | {spread([o['pairs_per_s'] for o in outs])} | {spread([o['responses_per_s'] for o in outs])} | {pairs} | {seconds} | "
            f"{statistics.fmean(o['load'] for o in outs):.1f} | {statistics.median(o['responses_per_s'] for o in outs) / base:.2f}x |"
        )
    command = "`.venv/bin/python bench/bench_preferences.py" + "".join(f" {a}" for a in sys.argv[1:]) + "`"
    body = "\n".join([
        "## AI-feedback preference pairs: batched sampling vs one prompt at a time",
        "",
        f"`bench/bench_preferences.py` — command: {command}; {machine()}.",
        "",
        f"`rlaif_tasks.preferences.build_ai_feedback_pairs` end to end (sampling, judging, pairing): policy `{POLICY}` (bundled, "
        f"float32, CPU), judge `jigsaw-bilstm` (reward purpose), the first {args.prompts} bundled prompts (query = the prompt text, "
        f"no chat template), k={args.k} responses per prompt, exactly {args.new_tokens} new tokens each (pure sampling), margin "
        f"{args.margin:g}, {args.threads} torch thread(s); {args.rounds} rounds per setting, the settings alternating, round r seeded r in both, after one warm-up call. "
        f"Pairs/s = pairs kept / wall time; responses/s = {args.prompts * args.k} responses / wall time.",
        "",
        *table,
        "",
        "The machine was shared with a long-running benchmark job while this ran (the load column is the mean 1-minute load "
        f"average on its {os.cpu_count()} cores), so absolute rates are noisy and low; the settings ran interleaved in one "
        "process, and the ratio is the figure to read. Torch runs one thread (`--threads`): with two, the second one's "
        "spin-waiting against the other job made generation several times slower in a check before this run. The judge's share "
        "is small: generation is what batching speeds up. Pair counts can differ between settings, since batching changes the "
        "random streams and with them which gaps beat the margin.",
    ])
    print("\n" + "\n".join(table))
    if not args.no_write:
        print(f"wrote {write_section('preferences', body)}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
