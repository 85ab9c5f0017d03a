"""The resume tests' crash: run a trainer in a subprocess and SIGKILL it once a step is logged.

Also the tests' rewards, importable by worker processes as `python:killed_training:<name>`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from rlaif_tasks.train.metrics import read_metrics

TESTS_DIR = Path(__file__).parent
HANG_ENV = "RLAIF_TEST_HANG_AT_CALL"
"""`count_good_or_hang` hangs on this call number (in each process), so a test can kill the run there."""
REWARD_LOG_ENV = "RLAIF_TEST_REWARD_LOG"
"""`text_length` appends how many responses each call scored to a file per rank in this folder."""


def count_good(texts, prompts=None):
    """Reward of the tiny-model tests: how often a response says "good"."""
    return [float(t.split().count("good")) for t in texts]


def text_length(texts, prompts=None):
    """A reward that varies under greedy decoding too: characters per response, in tens."""
    if os.environ.get(REWARD_LOG_ENV):
        with open(Path(os.environ[REWARD_LOG_ENV]) / f"rank-{os.environ.get('RANK', '0')}.txt", "a") as handle:
            handle.write(f"{len(texts)}\n")
    return [len(t) / 10 for t in texts]


_calls = 0


def count_good_or_hang(texts, prompts=None):
    global _calls
    _calls += 1
    if _calls >= int(os.environ.get(HANG_ENV) or sys.maxsize):
        time.sleep(120)
    return count_good(texts)


SCRIPT = textwrap.dedent(
    """
    import importlib, json, sys, time
    from rlaif_tasks.config import RunConfig, _build

    module, function = sys.argv[1].split(":")
    train = getattr(importlib.import_module(module), function)
    config_dict, run_dir, queries, hang_at = json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
    calls = 0

    def reward(texts, prompts):
        global calls
        calls += 1
        if calls >= hang_at:  # the reward of this step hangs: the test kills the process here
            time.sleep(120)
        return [float(t.split().count("good")) for t in texts]

    train(_build(RunConfig, config_dict), run_dir, queries, reward_fn=reward)
    """
)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR)]), **extra}


def kill_after_step(trainer: str, config, run_dir: Path, queries: list[str], step: int) -> list[dict]:
    """Train with `trainer` ("module:function") until `step` is in metrics.jsonl, SIGKILL, return the rows."""
    command = [sys.executable, "-c", SCRIPT, trainer, json.dumps(config.to_dict()), str(run_dir), json.dumps(queries), str(step + 1)]
    return _kill_once_logged(command, _env(), run_dir, step)


def kill_launch_after_step(config, run_dir: Path, step: int) -> list[dict]:
    """`kill_after_step` for a multi-process run: the real `accelerate launch` command, every process SIGKILLed.

    The config's reward must be `python:killed_training:count_good_or_hang`.
    """
    from rlaif_tasks.atomic import write_text
    from rlaif_tasks.train import distributed

    config_path = write_text(run_dir / "train" / "launch.yaml", config.to_yaml())
    env = {**distributed.launch_env(config), **_env(**{HANG_ENV: str(step + 1)})}
    return _kill_once_logged(distributed.launch_command(config, run_dir, config_path), env, run_dir, step)


def _kill_once_logged(command: list[str], env: dict[str, str], run_dir: Path, step: int) -> list[dict]:
    """Run `command` until `step` is in metrics.jsonl, then SIGKILL it and every process it started (torchrun's workers)."""
    import psutil

    metrics_file = run_dir / "train" / "metrics.jsonl"
    with tempfile.TemporaryFile() as output:  # a file, not a pipe: a full pipe would block the workers
        proc = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while not any(r["step"] == step for r in read_metrics(metrics_file)):
                if proc.poll() is not None:
                    output.seek(0)
                    pytest.fail(f"the training subprocess exited early ({proc.returncode}): {output.read().decode()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"step {step} never appeared in metrics.jsonl")
                time.sleep(0.05)
        finally:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)] if proc.poll() is None else []
            for p in family:
                p.send_signal(signal.SIGKILL)
            psutil.wait_procs(family, timeout=30)
            proc.wait()
    return read_metrics(metrics_file)
