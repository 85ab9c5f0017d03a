"""PPO: our trainer (rlaif_tasks.train.ppo) against TRL 1.12's experimental PPOTrainer, in one run.

Both sides train the bundled SmolLM2-135M-Instruct with LoRA against the same sequence-classifier
reward model, on the same chat-templated prompts, with the same batch, minibatch, epochs and response
length (exactly N sampled tokens per response on both sides), each in its own process so that each
peak RSS is that side's alone. TRL 1.12 lives in its own venv (TRL 1.16, the project's, has no PPO);
it is created on first use. The first step of each side is a warm-up, left out of episodes/s.
Writes the `ppo` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_ppo_vs_trl.py [--steps 5] [--warmup 1] [--rounds 1] [--no-write]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from rlaif_tasks.atomic import atomic_dir  # noqa: E402
from rlaif_tasks.data.detox_prompts import bundled_prompts  # noqa: E402
from rlaif_tasks.data.prepare import apply_template  # noqa: E402
from rlaif_tasks.errors import RlaifError  # noqa: E402
from rlaif_tasks.models.smollm2 import ensure_converted  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = ROOT / ".cache" / "bench-trl112-venv"
WORK = ROOT / ".cache" / "bench-ppo"
TORCH_PIN = "torch==2.13.0"
BASELINE_PINS = ["trl==1.12.*", "transformers==5.24.0", "peft==0.21.2", "datasets==5.2.0", "accelerate==1.15.0"]
"""The project's own versions of everything but TRL, so the trainers are the only difference."""
REWARD_SEED = 0
COMMAND = ".venv/bin/python bench/bench_ppo_vs_trl.py"


# ------------------------------------------------------------------------------------------------
# The baseline's environment and the shared inputs.
# ------------------------------------------------------------------------------------------------


def _baseline_versions(python: Path) -> dict[str, str] | None:
    code = "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in ('trl', 'torch')}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None


def baseline_env(venv: Path) -> Path:
    """The venv's python with TRL 1.12 on CPU torch 2.13, created (torch first, from a local wheel) if missing."""
    python = venv / "bin" / "python"
    found = _baseline_versions(python) if python.exists() else None
    if found and found["trl"].startswith("1.12.") and found["torch"].startswith("2.13.0"):
        return python
    print(f"creating the TRL 1.12 environment in {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # --no-index: only wheels on the configured find-links; PyPI's torch would pull the multi-GB CUDA build
    if subprocess.run([*pip, "--no-index", "--no-deps", TORCH_PIN]).returncode != 0:
        raise RlaifError(
            f"no local CPU wheel for {TORCH_PIN} to install into {venv}",
            "put torch-2.13.0+cpu-*.whl in a folder and set PIP_FIND_LINKS to it (pip download torch==2.13.0 "
            "--index-url <a CPU wheel index>), then re-run",
        )
    if subprocess.run([*pip, TORCH_PIN, *BASELINE_PINS]).returncode != 0:
        raise RlaifError(f"pip could not install {' '.join(BASELINE_PINS)} into {venv}", f"read pip's message above; delete {venv} and re-run")
    return python


def reward_model(policy_dir: Path, folder: Path) -> Path:
    """SmolLM2's trunk with a seeded random 1-logit score head: a reward model sharing the policy's tokenizer."""
    marker = folder / "bench_reward_model.json"
    expected = {"policy": str(policy_dir), "seed": REWARD_SEED, "transformers": importlib.metadata.version("transformers")}
    if marker.is_file() and json.loads(marker.read_text()) == expected:
        return folder
    torch.manual_seed(REWARD_SEED)
    model = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / marker.name).write_text(json.dumps(expected))
    return folder


def pick_queries(policy_dir: Path, n: int) -> tuple[list[str], list[int]]:
    """n chat-templated bundled prompts of near-median length, so neither side draws easier batches."""
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    queries = apply_template([p["prompt"] for p in bundled_prompts()], tokenizer, use_chat_template=True)
    lengths = [len(ids) for ids in tokenizer(queries, add_special_tokens=False)["input_ids"]]
    median = statistics.median_low(lengths)
    chosen = sorted(sorted(range(len(queries)), key=lambda i: (abs(lengths[i] - median), i))[:n])
    return [queries[i] for i in chosen], [lengths[i] for i in chosen]


# ------------------------------------------------------------------------------------------------
# Running one side.
# ------------------------------------------------------------------------------------------------


def run_side(side: str, python: Path, worker: Path, common_args: list[str], out_dir: Path) -> dict:
    """Run a worker to completion; its JSON result plus `max_rss_mb`, the child's ru_maxrss from wait4."""
    shutil.rmtree(out_dir, ignore_errors=True)  # our trainer resumes from checkpoints it finds there
    out_dir.mkdir(parents=True)
    log_path = out_dir / "worker.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"running {side} ({worker.name}) ...", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([str(python), str(worker), *common_args, "--output-dir", str(out_dir / "run")],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        load = []
        while True:  # poll rather than block, to sample how busy the shared CPU was meanwhile
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            load.append(os.getloadavg()[0])
            time.sleep(5)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(text.splitlines()[-30:])
        raise RlaifError(f"the {side} worker exited with {proc.returncode}:\n{tail}", f"see {log_path}")
    result = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    result["max_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    result["load_average"] = statistics.fmean(load) if load else os.getloadavg()[0]
    return result


def summarise(result: dict, warmup: int) -> dict:
    timed = result["step_seconds"][warmup:]
    return {
        "episodes_per_second": result["episodes_per_step"] * len(timed) / sum(timed),
        "median_step_seconds": statistics.median(timed),
        "warmup_seconds": sum(result["step_seconds"][:warmup]),
        "peak_rss_mb": result["max_rss_mb"],
        "train_peak_rss_mb": result["train_peak_rss_mb"],
        "load_average": result["load_average"],
    }


def time_split(result: dict, warmup: int) -> dict[str, float]:
    """Mean seconds per timed step of ours: generate / score / forward / update / rest."""
    rows = result["metrics"][warmup:]
    mean = {k: statistics.fmean(r[k] for r in rows) for k in ("time/generate", "time/score", "time/update", "time/step")}
    forward = statistics.fmean(r["time/forward"] for r in rows) if all("time/forward" in r for r in rows) else None
    split = {"generate": mean["time/generate"], "score": mean["time/score"]}
    if forward is None:
        split["forward + update"] = mean["time/update"]
    else:
        split["forward (old log-probs, values, reference)"] = forward
        split["update (PPO minibatches)"] = mean["time/update"] - forward
    split["rest (advantages, metrics)"] = mean["time/step"] - mean["time/generate"] - mean["time/score"] - mean["time/update"]
    split["step"] = mean["time/step"]
    return split


# ------------------------------------------------------------------------------------------------
# Report.
# ------------------------------------------------------------------------------------------------


def report(args, trl: dict, ours: dict, trl_runs: list[dict], ours_runs: list[dict], query_lengths: list[int]) -> str:
    t, o = trl["summary"], ours["summary"]
    speed = o["episodes_per_second"] / t["episodes_per_second"]
    memory = o["peak_rss_mb"] / t["peak_rss_mb"]
    verdict = "met" if speed >= 1.5 and memory <= 1.0 else "not met"
    v = trl["result"]["versions"]
    split = time_split(ours["result"], args.warmup)
    split_rows = "\n".join(
        f"| {name} | {seconds:.2f} | {100 * seconds / split['step']:.0f}% |" for name, seconds in split.items() if name != "step"
    )
    rounds = ""
    if args.rounds > 1:
        rounds = "\nEvery round (episodes/s, TRL / ours): " + ", ".join(
            f"{a['episodes_per_second']:.2f} / {b['episodes_per_second']:.2f}" for a, b in zip(trl_runs, ours_runs)
        ) + "; the table shows each side's fastest round and its highest peak RSS.\n"
    span = f"{min(query_lengths)}" if min(query_lengths) == max(query_lengths) else f"{min(query_lengths)}-{max(query_lengths)}"
    timed = args.steps - args.warmup
    tokens = sorted({round(x) for x in trl["result"]["response_tokens"]} | {round(x) for x in ours["result"]["response_tokens"]})
    return f"""## PPO: our trainer vs TRL 1.12's experimental PPOTrainer

`bench/bench_ppo_vs_trl.py` — {machine()}. Command: `{COMMAND} --steps {args.steps} --warmup {args.warmup} --rounds {args.rounds}`.

Baseline: `trl.experimental.ppo.PPOTrainer` from **TRL {v['trl']}** (transformers {v['transformers']}, peft {v['peft']},
accelerate {v['accelerate']}, datasets {v['datasets']}, torch {v['torch']}), installed by the script in its own venv
(`.cache/bench-trl112-venv`): TRL 1.16, the project's version, has no PPO. Ours: `rlaif_tasks.train.ppo.train_ppo`
with the project's stack (same transformers/peft/accelerate/torch versions).

Same work on both sides: policy SmolLM2-135M-Instruct (bundled, float32) with LoRA r={args.lora_r} (alpha {2 * args.lora_r},
q/v projections); reward model = the same SmolLM2 trunk with a seeded random 1-logit score head (TRL gets it as
`reward_model`, ours as a Python callable that tokenizes query + response with the policy tokenizer and scores it);
{len(query_lengths)} chat-templated bundled prompts of {span} tokens; batch {args.batch_size},
minibatch {args.mini_batch_size}, 1 PPO epoch, pure sampling (temperature 1, top_k 0), exactly {args.response_length} new tokens
per response on both sides (TRL: no stop token; ours: min_new_tokens = max_new_tokens; measured: {tokens}),
learning rate 1e-4, no gradient checkpointing (PPOConfig's default is on; ours has none), {args.steps} steps per side, the
first {args.warmup} a warm-up left out of episodes/s. Each side runs in its own process; peak RSS is that
child's ru_maxrss. The CPU is shared with other work (the last column: mean 1-minute load average on these
2 cores while that side ran), so absolute numbers are noisy; both sides ran in the same run, one after the
other, and the ratio is the figure to read.

| trainer | episodes/s | median s/step | warm-up step s | peak RSS MB (at the last step) | load avg meanwhile |
|---|---:|---:|---:|---:|---:|
| TRL {v['trl']} experimental PPOTrainer (baseline) | {t['episodes_per_second']:.3f} | {t['median_step_seconds']:.1f} | {t['warmup_seconds']:.1f} | {t['peak_rss_mb']:.0f} ({t['train_peak_rss_mb']:.0f}) | {t['load_average']:.1f} |
| ours (`train_ppo`) | {o['episodes_per_second']:.3f} | {o['median_step_seconds']:.1f} | {o['warmup_seconds']:.1f} | {o['peak_rss_mb']:.0f} ({o['train_peak_rss_mb']:.0f}) | {o['load_average']:.1f} |
{rounds}
Ours / TRL: **{speed:.2f}x episodes/s** at **{memory:.2f}x peak RSS** (target: >= 1.5x episodes/s at no more peak
memory: {verdict}).

What each side holds in memory:

- TRL {v['trl']}: the policy with its LoRA adapters (the reference is the same model with the adapters disabled,
  since `ref_model=None` with `peft_config`); a separate value model, a whole second SmolLM2 trunk plus score
  head initialised from the reward model and trained in full, so AdamW keeps two fp32 moments for all of its
  weights ({trl['result']['trainable_params']:,} trainable parameters in all); the frozen reward model (a third trunk);
  and the stacked generation scores (batch x response length x vocabulary) it takes the old log-probs from.
- Ours: the policy with its LoRA adapters (reference = adapters disabled, no copy); a linear value head on the
  policy's last hidden state (one shared trunk, one forward gives logits and values); AdamW moments for the
  LoRA and value-head weights only ({ours['result']['trainable_params']:,} trainable parameters); the frozen reward
  model inside the callable.

Where one of our steps goes (mean over the {timed} timed step{'s' if timed > 1 else ''} of the run above, from the
`time/*` metrics rows; forward = the no-grad pass over the rollout for old log-probs, values and reference
log-probs):

| part | seconds | share |
|---|---:|---:|
{split_rows}
| **step** | **{split['step']:.2f}** | 100% |"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="PPO steps per side, warm-up included")
    parser.add_argument("--warmup", type=int, default=1, help="leading steps left out of episodes/s")
    parser.add_argument("--rounds", type=int, default=1, help="run both sides this many times, alternating which goes first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mini-batch-size", type=int, default=4)
    parser.add_argument("--response-length", type=int, default=24)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--venv", type=Path, default=VENV)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        raise RlaifError(f"--steps {args.steps} leaves no timed step after --warmup {args.warmup}", "raise --steps above --warmup")
    os.environ["HF_HUB_OFFLINE"] = "1"

    trl_python = baseline_env(args.venv)
    policy_dir = ensure_converted()
    reward_dir = reward_model(policy_dir, WORK / "reward-model")
    queries, query_lengths = pick_queries(policy_dir, args.batch_size * args.steps)
    prompts_file = WORK / "queries.json"
    prompts_file.write_text(json.dumps(queries), encoding="utf-8")
    common_args = [
        "--policy", str(policy_dir), "--reward-model", str(reward_dir), "--prompts", str(prompts_file),
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--mini-batch-size", str(args.mini_batch_size),
        "--response-length", str(args.response_length), "--lora-r", str(args.lora_r),
    ]
    sides = {
        "trl": (trl_python, BENCH / "ppo_trl112_worker.py"),
        "ours": (Path(sys.executable), BENCH / "ppo_ours_worker.py"),
    }
    runs: dict[str, list[dict]] = {"trl": [], "ours": []}
    for r in range(args.rounds):
        for side in (("trl", "ours") if r % 2 == 0 else ("ours", "trl")):
            result = run_side(side, *sides[side], common_args, WORK / f"{side}-{r}")
            runs[side].append({"result": result, "summary": summarise(result, args.warmup)})
            print(f"  {side}: {json.dumps(runs[side][-1]['summary'])}", flush=True)
    best = {}
    for side, side_runs in runs.items():
        best[side] = dict(max(side_runs, key=lambda x: x["summary"]["episodes_per_second"]))
        best[side]["summary"] = {**best[side]["summary"], "peak_rss_mb": max(x["summary"]["peak_rss_mb"] for x in side_runs),
                                 "train_peak_rss_mb": max(x["summary"]["train_peak_rss_mb"] for x in side_runs)}
    body = report(args, best["trl"], best["ours"], [x["summary"] for x in runs["trl"]], [x["summary"] for x in runs["ours"]], query_lengths)
    print(body)
    if not args.no_write:
        print(f"written to {write_section('ppo', body)}")


if __name__ == "__main__":
    main()
