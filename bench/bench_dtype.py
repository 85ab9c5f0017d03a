"""The evaluation in bfloat16 against float32: same policy, prompts, sampling seeds and judges, side by side.

What `evaluation.dtype` and `train.rollout_dtype` trade: on CPUs with AMX (and on GPUs) bfloat16 matmuls
run several times faster, but the samples move with the rounding. This evaluates the demo's base
policy on the demo test split's first `--prompts` prompts x 4 samples in each dtype and reports, with
95% paired-bootstrap intervals, how far each judge's toxicity moves; how far bfloat16's policy is
from float32's (the KL of bfloat16's samples, recorded log-probabilities against a float32 forward
pass); the fluency; and each dtype's wall time over `--rounds` rounds (alternating, in one process).
Writes the `dtype` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_dtype.py [--prompts 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import machine, write_section  # noqa: E402

from rlaif_tasks.config import load_config  # noqa: E402
from rlaif_tasks.data import load_prompts_split, prepare_prompts  # noqa: E402
from rlaif_tasks.evaluation.kl import kl_summary, sampled_logprobs  # noqa: E402
from rlaif_tasks.evaluation.runner import load_judges, load_policy  # noqa: E402
from rlaif_tasks.evaluation.stats import paired_bootstrap, per_prompt_means  # noqa: E402
from rlaif_tasks.evaluation.toxicity import QualityModels, evaluate_policy  # noqa: E402

DTYPES = ("float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config)
    config.evaluation.num_prompts = args.prompts
    policy = load_policy(config)
    judges = load_judges(config)
    with tempfile.TemporaryDirectory(prefix="rlaif-bench-dtype-") as tmp:
        prepare_prompts(config.data, policy.tokenizer, tmp, seed=config.data.seed)
        prompts = load_prompts_split(tmp, "test")
    results, seconds = {}, {d: [] for d in DTYPES}
    for _ in range(args.rounds):
        for dtype in DTYPES:
            policy.model.to(getattr(torch, dtype))
            start = time.perf_counter()
            evaluation = evaluate_policy(policy.model, policy.tokenizer, prompts, judges, config.generation, config.evaluation,
                                         quality=QualityModels(fluency=policy, fluency_is_base=True))
            seconds[dtype].append(time.perf_counter() - start)
            results[dtype] = evaluation  # the same every round: per-response seeds
    policy.model.to(torch.float32)
    bf16 = results["bfloat16"].samples
    float32_t, _ = sampled_logprobs(policy.model, policy.tokenizer, bf16["query"].tolist(), bf16["response_ids"].tolist(),
                                    temperature=config.generation.sampling_temperature, batch_size=config.evaluation.batch_size)
    kl = kl_summary(bf16["logprob"].tolist(), float32_t, bf16["logprob_t1"].tolist(), [len(ids) for ids in bf16["response_ids"]])
    per_response = np.asarray(kl["kl_per_response"])
    boot = np.random.default_rng(0).choice(per_response, size=(10_000, len(per_response))).mean(axis=1)

    rows = []
    for judge in results["float32"].judges:
        ids32, means32 = per_prompt_means(results["float32"].samples["prompt_id"], results["float32"].samples[judge])
        ids16, means16 = per_prompt_means(bf16["prompt_id"], bf16[judge])
        assert list(ids32) == list(ids16)
        result = paired_bootstrap(means32, means16)
        d = result["difference"]
        rows.append(f"| {judge} | {result['reference_mean']:.4f} | {result['challenger_mean']:.4f} | "
                    f"{-d['point']:+.4f} [{-d['upper']:+.4f}, {-d['lower']:+.4f}] |")
    fluency = {d: results[d].quality.get("perplexity_median", float("nan")) for d in DTYPES}
    speed = statistics.median(seconds["float32"]) / statistics.median(seconds["bfloat16"])
    body = f"""## The evaluation in bfloat16 against float32

`bench/bench_dtype.py --prompts {args.prompts} --rounds {args.rounds}` — the demo's base policy (`{config.model.policy}`), the demo test
split's first {args.prompts} prompts x {config.evaluation.samples_per_prompt} samples, the demo's sampling, seeds and judges; {machine()}.
CPU flags: {"AMX" if "amx_bf16" in Path("/proc/cpuinfo").read_text() else "AVX512-BF16" if "avx512_bf16" in Path("/proc/cpuinfo").read_text() else "no bfloat16 instructions"}.

| judge | float32 | bfloat16 | bfloat16 - float32 [95% paired interval] |
|---|---:|---:|---:|
{chr(10).join(rows)}

- KL of bfloat16's policy from float32's, on bfloat16's {kl['n_responses']} samples (recorded log-probabilities against a
  float32 forward pass): **{kl['kl']:.4f} nats per response** [{np.percentile(boot, 2.5):.4f}, {np.percentile(boot, 97.5):.4f}].
- Median perplexity under the policy itself: float32 {fluency['float32']:.3f}, bfloat16 {fluency['bfloat16']:.3f}.
- Wall time of the whole evaluation (generation, judges, fluency), median (min-max) of {args.rounds} rounds: float32
  {statistics.median(seconds['float32']):.1f} s ({min(seconds['float32']):.1f}-{max(seconds['float32']):.1f}), bfloat16
  {statistics.median(seconds['bfloat16']):.1f} s ({min(seconds['bfloat16']):.1f}-{max(seconds['bfloat16']):.1f}): **{speed:.2f}x**.
- Generation alone, tokens/s (last round): float32 {results['float32'].tokens_per_second:.0f}, bfloat16 {results['bfloat16'].tokens_per_second:.0f}.
"""
    print(body)
    if not args.no_write:
        print("wrote", write_section("dtype", body))


if __name__ == "__main__":
    main()
