"""bench/gpu_check.py, the command a lent GPU runs, on tiny shapes on the CPU so that it cannot rot (issue 22)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_every_check_and_writes_its_table(tmp_path):
    out = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout[done.stdout.index("{"):])
    assert results["card"] == "none (CPU, --tiny)"
    for check in ("ppo_135m", "ppo_8b"):
        assert results[check]["steps"] >= 1 and results[check]["episodes_per_second"] > 0 and results[check]["generate_tokens_per_second"] > 0
    assert results["ppo_8b"]["batch"] == 16  # configs/seed-llama-3.1-8b.yaml's batch
    assert results["generation_135m"]["tokens_per_second"] > 0
    assert results["grpo_135m"].get("episodes_per_second", 0) > 0 or "skipped" in results["grpo_135m"]
    table = out.read_text()
    assert "| PPO (ours), LoRA |" in table and "| one PPO step, LoRA as configs/seed-llama-3.1-8b.yaml |" in table
    assert "proves the script runs, not the GPU numbers" in table
