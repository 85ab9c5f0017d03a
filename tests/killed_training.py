"""The resume tests' crash: run a trainer in a subprocess and SIGKILL it once a step is logged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlaif_tasks.train.metrics import read_metrics

TESTS_DIR = Path(__file__).parent


def count_good(texts, prompts=None):
    """Reward of the tiny-model tests: how often a response says "good"."""
    return [float(t.split().count("good")) for t in texts]


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


def kill_after_step(trainer: str, config, run_dir: Path, queries: list[str], step: int) -> list[dict]:
    """Train with `trainer` ("module:function") until `step` is in metrics.jsonl, SIGKILL, return the rows."""
    metrics_file = run_dir / "train" / "metrics.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, trainer, json.dumps(config.to_dict()), str(run_dir), json.dumps(queries), str(step + 1)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while not any(r["step"] == step for r in read_metrics(metrics_file)):
            if proc.poll() is not None:
                pytest.fail(f"the training subprocess exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"step {step} never appeared in metrics.jsonl")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return read_metrics(metrics_file)
