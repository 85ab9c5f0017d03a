"""Detoxification results on the demo config: PPO, GRPO and RLOO side by side, written to docs/results.md.

Each algorithm runs the one-process pipeline (`rlaif run`: prepare data, evaluate the base policy,
train, evaluate again) on its demo config, in `runs/results-<algorithm>`. The tables are rebuilt
from every `runs/results-*/report.json` present, so one algorithm can be re-run alone.

    .venv/bin/python bench/results_demo.py                      # all three
    .venv/bin/python bench/results_demo.py --algorithms ppo     # refresh PPO only
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from rlaif_tasks.config import load_config  # noqa: E402
from rlaif_tasks.evaluation import format_evaluation, read_evaluation  # noqa: E402
from rlaif_tasks.pipeline import run_pipeline  # noqa: E402
from rlaif_tasks.train.metrics import read_metrics  # noqa: E402

RESULTS = ROOT / "docs" / "results.md"
ALGORITHMS = ("ppo", "grpo", "rloo")
HEADER = "# Results\n\nMeasured by `bench/results_demo.py`; each section names what produced it.\n"


def config_path(algorithm: str) -> Path:
    specific = ROOT / "configs" / f"demo-{algorithm}.yaml"
    return specific if specific.is_file() else ROOT / "configs" / "demo.yaml"


def run_one(algorithm: str) -> Path:
    path = config_path(algorithm)
    run_dir = ROOT / "runs" / f"results-{algorithm}"
    overrides = {"name": f"results-{algorithm}", "run_dir": str(run_dir), "train.algorithm": algorithm}
    config = load_config(path, overrides)
    start = time.perf_counter()
    report = run_pipeline(config)
    seconds = time.perf_counter() - start
    summary = {
        "algorithm": algorithm,
        "config": str(path.relative_to(ROOT)),
        "steps": config.train.steps,
        "seconds": seconds,
        "judges": report["judges"],
        "metrics": read_metrics(run_dir / "train" / "metrics.jsonl"),
    }
    (run_dir / "results.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return run_dir


def side_by_side(summaries: list[dict]) -> str:
    judges = sorted({j for s in summaries for j in s["judges"]})
    head = "| algorithm | steps | wall time | final KL (nats) | " + " | ".join(f"{j} mean before → after (improv.)" for j in judges) + " |"
    lines = [head, "|" + "---|" * (4 + len(judges))]
    for s in summaries:
        last = s["metrics"][-5:]
        kl = sum(m["kl"] for m in last if m.get("kl") is not None) / max(1, sum(m.get("kl") is not None for m in last))
        cells = [
            f"{s['judges'][j]['mean_before']:.3f} → {s['judges'][j]['mean_after']:.3f} ({s['judges'][j]['mean_improvement']:+.0%})"
            for j in judges
        ]
        lines.append(f"| {s['algorithm']} (`{s['config']}`) | {s['steps']} | {s['seconds'] / 60:.1f} min | {kl:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Std of toxicity, before → after (improvement `(before - after) / before`):")
    lines.append("")
    lines.append("| algorithm | " + " | ".join(judges) + " |")
    lines.append("|" + "---|" * (1 + len(judges)))
    for s in summaries:
        cells = [f"{s['judges'][j]['std_before']:.3f} → {s['judges'][j]['std_after']:.3f} ({s['judges'][j]['std_improvement']:+.0%})" for j in judges]
        lines.append(f"| {s['algorithm']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def samples(run_dir: Path, n: int = 5) -> str:
    """The first `n` provocative test prompts: base policy's response and the trained one's, with jigsaw toxicity."""
    before = pd.read_parquet(run_dir / "eval" / "baseline_samples.parquet")
    after = pd.read_parquet(run_dir / "eval" / "final_samples.parquet")
    test = pd.read_parquet(run_dir / "data" / "test.parquet")
    provocative = set(test.loc[test["category"] == "provocative", "prompt"])
    judge = "jigsaw-bilstm" if "jigsaw-bilstm" in before.columns else before.columns[3]
    rows = ["| prompt | base policy | trained policy |", "|---|---|---|"]
    shown = 0
    for i in range(len(before)):
        if before["prompt"].iloc[i] not in provocative:
            continue

        def cell(frame):
            text = " ".join(str(frame["response"].iloc[i]).split()).replace("|", "\\|")
            return f"{text[:110]} *({judge} {frame[judge].iloc[i]:.2f})*"

        rows.append(f"| {before['prompt'].iloc[i]} | {cell(before)} | {cell(after)} |")
        shown += 1
        if shown == n:
            break
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--no-run", action="store_true", help="rebuild docs/results.md from existing runs only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    if not args.no_run:
        for algorithm in args.algorithms:
            run_one(algorithm)
    runs = [ROOT / "runs" / f"results-{a}" for a in ALGORITHMS if (ROOT / "runs" / f"results-{a}" / "results.json").is_file()]
    if not runs:
        sys.exit("no results yet: run without --no-run")
    summaries = [json.loads((r / "results.json").read_text()) for r in runs]
    if not RESULTS.exists():
        RESULTS.write_text(HEADER, encoding="utf-8")

    baseline = read_evaluation(runs[0] / "eval" / "baseline.json")
    manifest = json.loads((runs[0] / "data" / "manifest.json").read_text())
    write_section("baseline", f"""## Baseline: the default policy before training

`bench/results_demo.py` (the `baseline` evaluation of the first run) — policy `smollm2-135m-instruct`,
{manifest['counts']['test']} held-out prompts of `bundled:detox-prompts`
({manifest['categories']['test'].get('provocative', 0)} provocative, {manifest['categories']['test'].get('neutral', 0)} neutral),
one sampled response each (pure sampling, up to 24 new tokens), {machine()}.
Toxicity is each judge's probability that a response is toxic; "toxic" is the share above 0.5.

```
{format_evaluation(baseline)}
```

Most responses are harmless, but the provoked ones often finish the insult, so the mean and the
share of toxic responses are high enough for a reduction to be measured: the training judge
(jigsaw-bilstm) and profanity-check flag a few percent of responses with high confidence, which
is where the mean's mass and most of its std come from. HateSonar gives every short text a
probability of about 0.3 of being offensive, so its mean moves less.""", path=RESULTS)

    write_section("algorithms", f"""## Detoxification: PPO, GRPO and RLOO side by side

`bench/results_demo.py` — each algorithm trains `smollm2-135m-instruct` (LoRA) against the
`jigsaw-bilstm` reward on the train split and is evaluated on the same {manifest['counts']['test']} held-out prompts with the same seed,
{machine()}. Before → after mean toxicity per judge and the seed's relative improvement
`(before - after) / before`; KL is the mean sequence KL to the base policy over the last five
training steps; wall time is the whole one-process run (data, two evaluations, training).

{side_by_side(summaries)}""", path=RESULTS)

    write_section("samples", "## Sample responses\n\n" + "\n\n".join(
        f"### {s['algorithm']}\n\n{samples(r)}" for s, r in zip(summaries, runs)
    ), path=RESULTS)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
