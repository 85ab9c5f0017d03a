"""Expected maximum toxicity and toxicity probability (RealToxicityPrompts) of a nightly run, before and after, as Markdown.

    .venv/bin/python bench/rtp_metrics.py runs/<name>/<dag run id>                            # print one table per set
    .venv/bin/python bench/rtp_metrics.py runs/<name>/<dag run id> --write docs/results.md    # and put them in its section

Reads the run folder's samples tables, eval/baseline_samples.parquet and eval/final_samples.parquet for the
test split and eval/baseline.<set>_samples.parquet and eval/final.<set>_samples.parquet for each extra set,
and computes what report.json holds (rlaif_tasks.evaluation.runner.rtp_rows): per judge, both metrics
before and after and their relative drop with its paired-bootstrap interval over prompts, under the
run's config.yaml (evaluation.toxic_threshold and .seed, gate.confidence and .n_resamples; the
defaults when the folder has none). `--write` replaces the part of the file between
`<!-- bench:rtp -->` and `<!-- /bench:rtp -->` (bench/common.write_section).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

from rlaif_tasks.config import RunConfig, load_config  # noqa: E402
from rlaif_tasks.evaluation.runner import rtp_rows  # noqa: E402
from rlaif_tasks.evaluation.toxicity import SAMPLE_COLUMNS  # noqa: E402

SECTION = "rtp"


def sample_pairs(run_dir: Path) -> dict[str, tuple[Path, Path]]:
    """The sets both evaluations answered: `test`, then each extra set by name, with the before and after samples tables."""
    eval_dir = run_dir / "eval"
    suffixes = [""] + sorted(p.name[len("baseline"):-len("_samples.parquet")] for p in eval_dir.glob("baseline.*_samples.parquet"))
    pairs = {(suffix[1:] or "test"): (eval_dir / f"baseline{suffix}_samples.parquet", eval_dir / f"final{suffix}_samples.parquet") for suffix in suffixes}
    return {name: pair for name, pair in pairs.items() if all(p.is_file() for p in pair)}


def judges_of(*samples: Path) -> list[str]:
    """The judge columns both tables have: every column that is not one of the evaluation's own."""
    columns = [pq.read_schema(path).names for path in samples]
    return [c for c in columns[0] if c not in SAMPLE_COLUMNS and all(c in other for other in columns[1:])]


def pct(value) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"


def markdown_table(rows: dict[str, dict]) -> str:
    """One row per judge from `rtp_rows`: each metric before, after and its drop [interval], then k and the prompts."""
    confidence = f"{next(iter(rows.values()))['confidence']:.0%}" if rows else "95%"
    lines = [
        f"| judge | expected max toxicity before | after | drop [{confidence} interval] | toxicity probability before | after | drop [{confidence} interval] | k | prompts |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for judge, r in rows.items():
        cells = [judge]
        for metric in ("expected_max", "toxicity_probability"):
            cells += [f"{r[f'{metric}_before']:.4f}", f"{r[f'{metric}_after']:.4f}",
                      f"{pct(r[f'{metric}_improvement'])} [{pct(r[f'{metric}_improvement_lower'])}, {pct(r[f'{metric}_improvement_upper'])}]"]
        cells += [str(r["k"]), str(r["n_prompts"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(run_dir: Path, config: RunConfig) -> str:
    """The section: what was measured, then a table per set."""
    pairs = sample_pairs(run_dir)
    if not pairs:
        raise SystemExit(f"{run_dir / 'eval'} has no pair of baseline and final samples tables")
    e, g = config.evaluation, config.gate
    parts = [
        "## Expected maximum toxicity and toxicity probability (RealToxicityPrompts)",
        f"`bench/rtp_metrics.py` on the run folder `{run_dir}`: per judge, over the k answers to each prompt, the mean of their "
        f"highest score (expected max toxicity) and the share of prompts with at least one answer scoring >= {e.toxic_threshold} "
        f"(toxicity probability), as in Gehman et al. (2020), before (base policy) and after training; the drop is "
        f"`(before - after) / before` with its {g.confidence:.0%} paired-bootstrap interval over prompts ({g.n_resamples} resamples, "
        f"seed {e.seed}). Reported, not deciding: the gate decides on mean toxicity (docs/gate_statistics.md).",
    ]
    for name, (before, after) in pairs.items():
        parts += [f"### {'Held-out test split' if name == 'test' else f'Extra set `{name}`'}", markdown_table(rtp_rows(config, before, after, judges_of(before, after)))]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="runs/<name>/<dag run id>, with eval/baseline_samples.parquet and eval/final_samples.parquet")
    parser.add_argument("--write", type=Path, metavar="MARKDOWN", help="put the tables between <!-- bench:rtp --> markers of this file (e.g. docs/results.md)")
    args = parser.parse_args(argv)
    saved = args.run_dir / "config.yaml"
    text = report(args.run_dir, load_config(saved if saved.is_file() else None))
    print(text)
    if args.write:
        print(f"written to {write_section(SECTION, text, args.write)}")
    return text


if __name__ == "__main__":
    main()
