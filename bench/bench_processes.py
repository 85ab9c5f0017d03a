"""PPO in one process against two (`accelerate launch`, gloo), same global batch, on the demo config.

Both sides train the demo config (bundled SmolLM2-135M-Instruct, LoRA, Jigsaw BiLSTM reward, batch 16,
minibatch 4) for the same steps on the same prepared prompts, one after the other, each in fresh
processes: one process is `python -m rlaif_tasks.train.distributed` run directly (torch's default
threads, one per core), two processes are what `train.num_processes=2` starts (`accelerate launch`,
one thread each). The first step of each side is a warm-up, left out of episodes/s. Writes the
`processes` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_processes.py [--steps 4] [--warmup 1] [--rounds 2] [--no-write]

Rounds alternate the two sides (1, 2, 1, 2, ...), so a slow spell of the shared CPU hits both; the
ratio is reported per round and as their mean.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from rlaif_tasks.config import RunConfig, load_config  # noqa: E402
from rlaif_tasks.errors import RlaifError  # noqa: E402
from rlaif_tasks.stages.local import prepare_dataset  # noqa: E402
from rlaif_tasks.train import distributed  # noqa: E402
from rlaif_tasks.train.metrics import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench-processes"
COMMAND = ".venv/bin/python bench/bench_processes.py"


class LoadSampler:
    """Mean 1-minute load average while a side runs: the CPU is shared with other work."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(5):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else os.getloadavg()[0]


def run_side(config: RunConfig, run_dir: Path) -> dict:
    """Train from scratch in `config.train.num_processes` processes; wall time, metrics rows, load."""
    shutil.rmtree(run_dir / "train", ignore_errors=True)  # no checkpoint to resume from
    n = config.train.num_processes
    print(f"training in {n} process(es) ...", flush=True)
    with LoadSampler() as load:
        start = time.perf_counter()
        if n == 1:
            path = run_dir / "bench-config.yaml"
            path.write_text(config.to_yaml(), encoding="utf-8")
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            done = subprocess.run([sys.executable, "-m", "rlaif_tasks.train.distributed", str(run_dir), "--config", str(path)], env=env)
            if done.returncode != 0:
                raise RlaifError(f"the one-process run exited with {done.returncode}", "read its output above")
        else:
            distributed.launch(config, run_dir)
        wall = time.perf_counter() - start
    return {"processes": n, "wall_seconds": wall, "rows": read_metrics(run_dir / "train" / "metrics.jsonl"), "load_average": load.mean}


def summarise(side: dict, warmup: int, batch_size: int) -> dict:
    timed = side["rows"][warmup:]
    mean = {k: statistics.fmean(r[k] for r in timed) for k in ("time/step", "time/generate", "time/score", "time/update", "response_length")}
    return {
        **side,
        "episodes_per_second": batch_size * len(timed) / sum(r["time/step"] for r in timed),
        "step_seconds": mean["time/step"],
        "generate_seconds": mean["time/generate"],
        "score_seconds": mean["time/score"],
        "update_seconds": mean["time/update"],
        "response_length": mean["response_length"],
        "warmup_seconds": sum(r["time/step"] for r in side["rows"][:warmup]),
    }


def interpretation(ratio: float, one: dict, two: dict, t) -> str:
    cores = os.cpu_count()
    if ratio >= 1.05:
        measured = (
            f"The {ratio:.2f}x measured is not data-parallel scaling (there is no extra hardware) but the same cores used "
            f"differently: per step, generation took {one['generate_seconds']:.1f} s in one process and "
            f"{two['generate_seconds']:.1f} s in two, the update {one['update_seconds']:.1f} s and {two['update_seconds']:.1f} s. "
            f"Much of that work is small operations (LoRA rank {t.lora_r}, minibatches of {t.mini_batch_size} or "
            f"{t.mini_batch_size // 2} responses), which two threads inside one process share poorly, while two "
            "single-threaded processes each keep one core busy. A few rounds on a shared machine: read it as about the "
            "same or somewhat faster, not as a speed-up to plan with."
        )
    elif ratio <= 0.95:
        measured = f"Here two processes were slower ({ratio:.2f}x): the split work gained nothing and the extra process cost."
    else:
        measured = f"Here both came out about the same ({ratio:.2f}x)."
    paragraphs = [
        f"This machine has {cores} cores, and one process already uses all of them (torch's intra-op threads), so "
        f"{cores} processes with one thread each split the same cores: they cannot beat one process by much, and they "
        "pay for a copy of the model and the reward per process, a start-up per process and an all-reduce per "
        f"minibatch. {measured}",
        "On N GPUs each rank generates, scores and back-propagates 1/N of the batch on its own device, and the only "
        "traffic is one all-reduce of the LoRA and value-head gradients (about 1M floats here) per minibatch, so steps "
        "dominated by generation should approach N times the episodes/s, until each GPU's share of the batch (here "
        f"{t.batch_size}/N) is too small to keep it busy: raise `train.batch_size` with the number of GPUs. Not measured "
        "here: no GPU was available.",
    ]
    return "\n\n".join(textwrap.fill(p, width=110) for p in paragraphs)


def report(args, config: RunConfig, rounds: list[list[dict]]) -> str:
    ratios = [two["episodes_per_second"] / one["episodes_per_second"] for one, two in rounds]
    wall_ratios = [two["wall_seconds"] / one["wall_seconds"] for one, two in rounds]
    ratio, wall_ratio = statistics.fmean(ratios), statistics.fmean(wall_ratios)
    one, two = ({k: statistics.fmean(r[i][k] for r in rounds) for k in ("generate_seconds", "update_seconds")} for i in (0, 1))
    verdict = interpretation(ratio, one, two, config.train)
    per_round = ", ".join(f"{r:.2f}x" for r in ratios)
    rows = "\n".join(
        f"| {n + 1} | {s['processes']} | {s['episodes_per_second']:.3f} | {s['step_seconds']:.1f} | {s['generate_seconds']:.1f} | "
        f"{s['score_seconds']:.2f} | {s['update_seconds']:.1f} | {s['warmup_seconds']:.1f} | {s['wall_seconds']:.0f} | "
        f"{s['response_length']:.1f} | {s['load_average']:.1f} |"
        for n, sides in enumerate(rounds) for s in sides
    )
    t = config.train
    return f"""## PPO in one process vs two processes (`accelerate launch`, gloo on CPU)

`bench/bench_processes.py` — {machine()}. Command: `{COMMAND} --steps {args.steps} --warmup {args.warmup} --rounds {args.rounds}`.

The demo config (`configs/demo.yaml`: SmolLM2-135M-Instruct, LoRA r{t.lora_r} on all linear layers, Jigsaw
BiLSTM reward, sampling up to {config.generation.max_new_tokens} new tokens) with the same **global** batch on both sides:
batch {t.batch_size}, minibatch {t.mini_batch_size}, {args.steps} PPO steps from scratch, the first {args.warmup} a warm-up left out of
episodes/s. One process: `python -m rlaif_tasks.train.distributed` run directly, torch's default threads
(one per core). Two processes: `train.num_processes=2`, i.e. `accelerate launch --multi_gpu --num_processes 2`
(torchrun) with gloo, each process one thread (`OMP_NUM_THREADS=1`), {t.batch_size // 2} queries and minibatches of
{t.mini_batch_size // 2} each, gradients all-reduced per minibatch. Wall time includes start-up (imports, model
and reward loading, process group) and the final save. The CPU is shared with other work (last column: mean
1-minute load average on these cores meanwhile), so absolute numbers are noisy.

| round | processes | episodes/s | s/step | generate s | score s | update s (incl. no-grad forwards) | warm-up step s | wall s | response tokens | load avg |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}

Two processes / one: **{ratio:.2f}x episodes/s** (per round: {per_round}), **{wall_ratio:.2f}x wall time**, means over {len(rounds)} rounds.

{verdict}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--steps", type=int, default=4, help="PPO steps per side, warm-up included")
    parser.add_argument("--warmup", type=int, default=1, help="leading steps left out of episodes/s")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both sides")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        raise RlaifError(f"--steps {args.steps} leaves no timed step after --warmup {args.warmup}", "raise --steps above --warmup")
    os.environ["HF_HUB_OFFLINE"] = "1"

    rounds = []
    for _ in range(args.rounds):
        rounds.append(run_round(args))
    body = report(args, config_for(args, 2), rounds)
    print(body)
    if not args.no_write:
        print(f"wrote {write_section('processes', body)}")


def config_for(args, n: int) -> RunConfig:
    return load_config(args.config, {
        "name": f"bench-processes-{n}p", "run_dir": str(WORK / f"{n}p"), "train.algorithm": "ppo", "train.steps": args.steps,
        "train.save_every": 0, "train.num_processes": n,
    })


def run_round(args) -> list[dict]:
    sides = []
    for n in (1, 2):
        run_dir = WORK / f"{n}p"
        config = config_for(args, n)
        if not (run_dir / "data" / "train.parquet").is_file():
            prepare_dataset(config)
        sides.append(summarise(run_side(config, run_dir), args.warmup, config.train.batch_size))
        print(f"{n} process(es): {sides[-1]['episodes_per_second']:.3f} episodes/s, {sides[-1]['step_seconds']:.1f} s/step, "
              f"wall {sides[-1]['wall_seconds']:.0f} s", flush=True)
    return sides


if __name__ == "__main__":
    main()
