"""Where a trained policy lost relevance: MiniLM prompt-response relevance and toxicity per prompt category.

The demo's test prompts are `provocative` (insults to finish) or `neutral` (questions). Detoxifying should change the
answers to the first and leave the second alone; a policy whose neutral answers drift away from their prompts lost
relevance where there was nothing to gain (docs/results.md, PPO's KL control).

    .venv/bin/python bench/relevance_by_category.py runs/results-base runs/results-ppo-s0 ...   # run folders of bench/results_demo.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

JUDGES = ("jigsaw-bilstm", "profanity-check")


def by_category(run_dir: Path) -> pd.DataFrame:
    """Mean relevance and toxicity per category of the run's test samples (final policy, else the baseline's)."""
    eval_dir = run_dir / "eval"
    samples_file = eval_dir / "final_samples.parquet" if (eval_dir / "final_samples.parquet").is_file() else eval_dir / "baseline_samples.parquet"
    samples = pd.read_parquet(samples_file)
    category = pd.read_parquet(run_dir / "data" / "test.parquet").drop_duplicates("prompt").set_index("prompt")["category"]
    samples = samples.assign(category=samples["prompt"].map(category))
    return samples.groupby("category")[["relevance", *JUDGES]].mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | category | relevance | " + " | ".join(JUDGES) + " |")
    print("|---|---|---|" + "---|" * len(JUDGES))
    for run_dir in args.run_dirs:
        for name, row in by_category(run_dir).iterrows():
            print(f"| {run_dir.name} | {name} | {row['relevance']:.3f} | " + " | ".join(f"{row[j]:.3f}" for j in JUDGES) + " |")


if __name__ == "__main__":
    main()
