"""Shared bits of the benchmarks: machine description and writing a section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script it names; re-run the script to refresh it.\n"


def cpu() -> str:
    """The CPU's model and its widest matrix units, which decide float32 and bfloat16 speed here (machines differ per session)."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    units = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({units})"


def machine() -> str:
    return (
        f"{os.cpu_count()} CPU cores ({cpu()}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )


def write_section(key: str, body: str, path: Path = DOCS) -> Path:
    """Replace (or append) the section fenced by `<!-- bench:key -->` markers, keeping the others."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def worker_arguments() -> argparse.Namespace:
    """The command line both PPO benchmark workers take, so both sides get the same work.

    Kept to the standard library and torch: the TRL 1.12 worker imports it from its own venv.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", required=True)
    parser.add_argument("--reward-model", required=True)
    parser.add_argument("--prompts", required=True, help="JSON list of query strings")
    parser.add_argument("--steps", type=int, default=5, help="PPO steps, warm-up included")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mini-batch-size", type=int, default=4)
    parser.add_argument("--response-length", type=int, default=24)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--output-dir", required=True)
    return parser.parse_args()
