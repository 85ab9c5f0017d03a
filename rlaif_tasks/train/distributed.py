"""Data-parallel training in several processes under `accelerate launch` (gloo on CPU, NCCL on GPUs).

    rlaif_tasks.train.train(config) with train.num_processes = N > 1
      -> `launch`: accelerate launch --multi_gpu --num_processes N -m rlaif_tasks.train.distributed RUN_DIR --config ...
      -> N processes run `main`: each rolls out its 1/N of the global batch (`train.batch_size`),
         gradients are averaged over processes before clipping and the optimizer step, so every rank
         holds the same weights; only rank 0 writes metrics, checkpoints and the final model.

Starting and following the processes is here; what runs inside them (rank, collectives) is in
collectives.py. See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from rlaif_tasks.atomic import write_text
from rlaif_tasks.config import RunConfig, load_config
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import resolve_device
from rlaif_tasks.train.collectives import check_batch_split, state
from rlaif_tasks.train.dispatch import train_in_process

log = logging.getLogger("rlaif_tasks.train.distributed")  # also when run as __main__

STEP_MARKER = "RLAIF_STEP "
"""Rank 0 prints each step's metrics row after this prefix (when $RLAIF_STEP_MARKERS is set, as `launch`
sets it); `launch` hands the row to its `on_step`."""
MARKERS_ENV = "RLAIF_STEP_MARKERS"
ERROR_MARKER = "RLAIF_ERROR "
"""A worker's `RlaifError` (problem and fix) after this prefix, so the launching process can re-raise it."""


# ------------------------------------------------------------------------------------------------


def launch_command(config: RunConfig, run_dir: Path, config_path: Path) -> list[str]:
    """`accelerate launch` for N processes on this machine.

    `--multi_gpu` is accelerate's torchrun launcher, the one that starts N processes (`--cpu` starts
    one unless an mpirun hostfile is configured); on CPU the workers then choose gloo through
    `state(cpu=True)`. `--main_process_port 0` takes a free port, so parallel runs do not collide.
    """
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(config.train.num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "rlaif_tasks.train.distributed", str(run_dir), "--config", str(config_path),
    ]


def launch_env(config: RunConfig) -> dict[str, str]:
    """The workers' environment: unbuffered output, CPU threads split between them, our import path."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", MARKERS_ENV: "1"}
    if resolve_device(config.device) == "cpu" and "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // config.train.num_processes))  # torchrun would set 1
    # a `python:module:function` reward importable here (e.g. from the DAG folder) must import there too
    prefixes = {sys.prefix, sys.base_prefix}
    extra = [p for p in sys.path if p and os.path.isdir(p) and not any(p.startswith(x) for x in prefixes)]
    paths = dict.fromkeys([*extra, *env.get("PYTHONPATH", "").split(os.pathsep)])
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def launch(config: RunConfig, run_dir: str | Path, on_step: Callable[[dict], None] | None = None) -> Path:
    """Train in `config.train.num_processes` processes; returns `run_dir/train/final`.

    The workers' output is streamed to this process's stderr; `on_step(row)` is called here for
    every step they run. A failed launch raises `RlaifError` with the workers' last lines (and their
    own problem and fix, when they raised one). If this process is interrupted (Ctrl-C, an Airflow
    timeout), the workers are stopped too.
    """
    run_dir = Path(run_dir)
    n = config.train.num_processes
    check_batch_split(config.train, n)
    config_path = write_text(run_dir / "train" / "launch.yaml", config.to_yaml())
    cmd = launch_command(config, run_dir, config_path)
    log.info("starting %d training processes: %s", n, " ".join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=40)
    worker_error: dict | None = None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=launch_env(config))
    try:
        for line in proc.stdout:
            if line.startswith(STEP_MARKER):
                if on_step is not None:
                    on_step(json.loads(line[len(STEP_MARKER):]))
                continue
            if line.startswith(ERROR_MARKER):
                worker_error = json.loads(line[len(ERROR_MARKER):])
            tail.append(line)
            sys.stderr.write(line)
            sys.stderr.flush()
        returncode = proc.wait()
    finally:
        _stop(proc)
    final = run_dir / "train" / "final"
    if returncode != 0 or not (final / "config.json").is_file():
        problem = worker_error["problem"] if worker_error else f"the training processes exited with code {returncode}"
        raise RlaifError(
            f"training in {n} processes (accelerate launch) failed: {problem}\n--- last lines of its output ---\n{''.join(tail).rstrip()}",
            (worker_error or {}).get("fix") or "read the output above; train.num_processes=1 runs the same training in this process, for debugging",
        )
    return final


def _stop(proc: subprocess.Popen) -> None:
    """Stop the launcher if it still runs (this process was interrupted): on SIGTERM torchrun stops its workers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    """One worker: `python -m rlaif_tasks.train.distributed RUN_DIR [--config YAML] [--set key=value ...]`.

    Run by `accelerate launch` (or torchrun) on every rank; trains on RUN_DIR's prepared train split.
    The launched process count wins over `train.num_processes`, so a hand-written launch just works.
    """
    parser = argparse.ArgumentParser(prog="python -m rlaif_tasks.train.distributed", description=main.__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--config", type=Path, help="run config (default: RUN_DIR/config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config or args.run_dir / "config.yaml", args.set)
        ps = state(cpu=resolve_device(config.device) == "cpu")
        logging.basicConfig(
            level=logging.INFO, datefmt="%H:%M:%S",
            format=f"%(asctime)s rank {ps.process_index}/{ps.num_processes} %(levelname)s %(name)s: %(message)s",
        )
        if config.train.num_processes != ps.num_processes:
            log.info("train.num_processes is %d; training in the %d launched processes", config.train.num_processes, ps.num_processes)
            config.train.num_processes = ps.num_processes

        def report(row: dict) -> None:
            sys.stdout.write(STEP_MARKER + json.dumps(row) + "\n")  # one write: lines of two ranks never interleave
            sys.stdout.flush()

        train_in_process(config, args.run_dir, on_step=report if os.environ.get(MARKERS_ENV) else None)
    except RlaifError as exc:
        sys.stdout.write(ERROR_MARKER + json.dumps({"problem": exc.problem, "fix": exc.fix}) + "\n")
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
