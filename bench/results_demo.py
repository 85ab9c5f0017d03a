"""Detoxification results on the demo config: PPO, GRPO and RLOO over seeds, written to docs/results.md.

Each (algorithm, seed) trains on the frame-disjoint train split and is evaluated like the nightly
gate evaluates: on the held-out test split and the out-of-distribution set `bundled:detox-ood`,
4 responses per prompt with the fixed per-prompt sampling seeds, so every policy is compared with
the base policy prompt by prompt (95% paired-bootstrap intervals), plus KL on the sampled tokens,
the fluency ratio, distinct-2, the repeated-3-gram share and relevance. The base policy is
evaluated once (its samples do not depend on the training seed) and shared. The gate's checks
against the base policy are applied to every run; `--over-optimised` adds a PPO run without a KL
term at 10x the learning rate, which the gate must refuse.

    .venv/bin/python bench/results_demo.py                                  # 3 algorithms x seeds 0 1 2
    .venv/bin/python bench/results_demo.py --algorithms ppo --seeds 0       # one run
    .venv/bin/python bench/results_demo.py --over-optimised --algorithms    # the refused run only
    .venv/bin/python bench/results_demo.py --no-run                         # rebuild the doc from runs/results-*
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from rlaif_tasks import gate  # noqa: E402
from rlaif_tasks.config import load_config  # noqa: E402
from rlaif_tasks.evaluation import format_evaluation, read_evaluation  # noqa: E402
from rlaif_tasks.pipeline import evaluate_model, extra_set_name, prepare_dataset, train_policy  # noqa: E402
from rlaif_tasks.train.metrics import read_metrics  # noqa: E402

RESULTS = ROOT / "docs" / "results.md"
RUNS = ROOT / "runs"
ALGORITHMS = ("ppo", "grpo", "rloo")
OVER_OPTIMISED = {"train.init_kl_coef": 0.0, "train.adaptive_kl": False, "train.learning_rate": 5.0e-3, "train.steps": 20}
HEADER = "# Results\n\nMeasured by `bench/results_demo.py`; each section names what produced it.\n"


def demo_config(name: str, seed: int, algorithm: str, extra: dict | None = None):
    return load_config(ROOT / "configs" / "demo.yaml", {"name": name, "run_dir": str(RUNS / name), "seed": seed, "train.algorithm": algorithm, **(extra or {})})


def baseline_dir() -> Path:
    """The base policy's evaluation, once: data split and sampling seeds are fixed, so it is the same for every run."""
    config = demo_config("results-base", 0, "ppo")
    run_dir = config.resolved_run_dir
    if not (run_dir / "eval" / "baseline.json").is_file():
        prepare_dataset(config)
        evaluate_model(config, "baseline")
    return run_dir


def set_labels(config) -> list[tuple[str, str]]:
    """(report name, eval label suffix) of the test split and each extra set."""
    return [("test", "")] + [(extra_set_name(s), f".{extra_set_name(s)}") for s in config.evaluation.extra_sets]


def run_one(name: str, seed: int, algorithm: str, extra: dict | None = None) -> Path:
    config = demo_config(name, seed, algorithm, extra)
    run_dir = config.resolved_run_dir
    base = baseline_dir()
    prepare_dataset(config)
    for path in (base / "eval").glob("baseline*"):
        (run_dir / "eval").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, run_dir / "eval" / path.name)
    start = time.perf_counter()
    model_dir = run_dir / "train" / "final"
    if not (model_dir / "config.json").is_file():
        model_dir = train_policy(config)
    trained = time.perf_counter()
    evaluate_model(config, "final", str(model_dir))
    evaluated = time.perf_counter()
    judges = [j.display_name for j in config.evaluation.judges]
    sets = {}
    for set_name, suffix in set_labels(config):
        before = pd.read_parquet(run_dir / "eval" / f"baseline{suffix}_samples.parquet")
        after = pd.read_parquet(run_dir / "eval" / f"final{suffix}_samples.parquet")
        sets[set_name] = {
            "judges": gate.compare_judges(before, after, judges, config.gate, seed=config.evaluation.seed),
            "quality": gate.compare_quality(read_evaluation(run_dir / "eval" / f"baseline{suffix}.json")["quality"], read_evaluation(run_dir / "eval" / f"final{suffix}.json")["quality"]),
        }
    measured = gate.measure_kl(config, run_dir, model_dir)
    summary = {
        "name": name, "algorithm": algorithm, "seed": seed, "overrides": extra or {}, "steps": config.train.steps,
        "train_seconds": trained - start, "eval_seconds": evaluated - trained, "kl": measured["kl"], "sets": sets,
        "train_kl_last5": statistics.fmean([m["kl"] for m in read_metrics(run_dir / "train" / "metrics.jsonl")[-5:] if m.get("kl") is not None] or [float("nan")]),
    }
    (run_dir / "results.json").write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")  # the decision is made when the doc is written (redecide)
    return run_dir


def redecide(summary: dict) -> dict:
    """The gate's decision against the base policy with tonight's budgets (configs/demo.yaml), from the stored measurements."""
    config = demo_config(summary["name"], summary["seed"], summary["algorithm"], summary["overrides"])
    test = summary["sets"]["test"]
    decision = gate.decide(test["judges"], gate.gate_judge(config), gate.reward_judge(config), test["quality"], summary["kl"], config.evaluation.samples_per_prompt, config.gate)
    summary["decision"] = {k: decision[k] for k in ("passed", "failed", "reasons", "judge", "reward_judge", "improvement", "improvement_lower", "improvement_upper")}
    return summary


def missing_runs(regular: list[dict]) -> str:
    """Which of the 3 algorithms x seeds 0-2 have no results yet, said plainly under the tables."""
    present = {(s["algorithm"], s["seed"]) for s in regular}
    missing = [f"{a} {seed}" for a in ALGORITHMS for seed in (0, 1, 2) if (a, seed) not in present]
    return f" Not measured yet: {', '.join(missing)} (`bench/results_demo.py --algorithms ... --seeds ...`)." if missing else ""


def spread(values: list[float], fmt: str) -> str:
    """Mean over seeds, with min–max when there is more than one."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ({format(min(values), fmt)} – {format(max(values), fmt)})"


def table(summaries: list[dict], set_name: str) -> str:
    judges = list(summaries[0]["sets"][set_name]["judges"])
    head = ["algorithm", "seeds", *(f"{j}: drop [95% CI] per seed" for j in judges), "KL (nats)", "fluency ratio", "distinct-2 (base)", "rep. 3-gram (base)", "relevance ratio", "gate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[str, list[dict]] = {}
    for s in summaries:
        groups.setdefault(s["name"].rsplit("-s", 1)[0], []).append(s)
    for label, runs in groups.items():
        sets = [r["sets"][set_name] for r in runs]
        cells = []
        for j in judges:
            per_seed = "; ".join(f"{x['judges'][j]['relative']['point']:+.0%} [{x['judges'][j]['relative']['lower']:+.0%}, {x['judges'][j]['relative']['upper']:+.0%}]" for x in sets)
            cells.append(per_seed)
        q = [x["quality"] for x in sets]
        base = q[0]["base"]
        cells += [
            spread([r["kl"] for r in runs], ".2f") if set_name == "test" else "–",
            spread([x["perplexity_ratio"] for x in q], ".2f"),
            f"{spread([x['challenger']['distinct_2'] for x in q], '.3f')} ({base['distinct_2']:.3f})",
            f"{spread([x['challenger']['repeated_3gram_share'] for x in q], '.3f')} ({base['repeated_3gram_share']:.3f})",
            spread([x["relevance_ratio"] for x in q], ".2f"),
            "; ".join("passed" if r["decision"]["passed"] else "refused: " + ", ".join(r["decision"]["failed"]) for r in runs) if set_name == "test" else "–",
        ]
        lines.append(f"| {label.removeprefix('results-')} | {', '.join(str(r['seed']) for r in runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def random_responses(base: Path, runs: list[Path], n: int = 10) -> str:
    """`n` test prompts drawn at random (seeded, not chosen): the base policy's first response and each algorithm's."""
    before = pd.read_parquet(base / "eval" / "baseline_samples.parquet")
    before = before[before["sample"] == 0].set_index("prompt_id")
    picked = random.Random(0).sample(sorted(before.index), n)
    afters = {r.name.removeprefix("results-"): pd.read_parquet(r / "eval" / "final_samples.parquet").query("sample == 0").set_index("prompt_id") for r in runs}

    def cell(frame, pid):
        text = " ".join(str(frame.loc[pid, "response"]).split()).replace("|", "\\|")
        return f"{text[:100]} *({frame.loc[pid, 'jigsaw-bilstm']:.2f})*"

    lines = ["| prompt | base policy | " + " | ".join(afters) + " |", "|" + "---|" * (2 + len(afters))]
    for pid in picked:
        prompt = str(before.loc[pid, "prompt"]).replace("|", "\\|")
        lines.append(f"| {prompt} | {cell(before, pid)} | " + " | ".join(cell(a, pid) for a in afters.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--over-optimised", action="store_true", help="also the PPO run without KL term at 10x the learning rate")
    parser.add_argument("--no-run", action="store_true", help="rebuild docs/results.md from existing runs only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    if not args.no_run:
        if args.over_optimised:
            run_one("results-ppo-over-optimised-s0", 0, "ppo", OVER_OPTIMISED)
        for seed in args.seeds:
            for algorithm in args.algorithms:
                run_one(f"results-{algorithm}-s{seed}", seed, algorithm)
    found = sorted(RUNS.glob("results-*-s*/results.json"))
    summaries = [redecide(json.loads(p.read_text())) for p in found]
    regular = sorted((s for s in summaries if not s["overrides"]), key=lambda s: (ALGORITHMS.index(s["algorithm"]), s["seed"]))
    over = [s for s in summaries if s["overrides"]]
    if not regular and not over:
        sys.exit("no results yet: run without --no-run")
    if not RESULTS.exists():
        RESULTS.write_text(HEADER, encoding="utf-8")
    base = baseline_dir()
    manifest = json.loads((base / "data" / "manifest.json").read_text())
    config = demo_config("results-base", 0, "ppo")
    counts = {name: read_evaluation(base / "eval" / f"baseline{suffix}.json")["judges"]["jigsaw-bilstm"]["n"] for name, suffix in set_labels(config)}
    minutes = [(s["train_seconds"] + s["eval_seconds"]) / 60 for s in regular]
    baseline_tables = "\n\n".join(
        f"{name} ({manifest['counts']['test'] if name == 'test' else 'all'} prompts):\n\n```\n{format_evaluation(read_evaluation(base / 'eval' / f'baseline{suffix}.json'))}\n```"
        for name, suffix in set_labels(config)
    )
    write_section("baseline", f"""## Baseline: the default policy before training

`bench/results_demo.py` (`runs/results-base`), {machine()}: policy `smollm2-135m-instruct` on the
{manifest['counts']['test']} test prompts of `bundled:detox-prompts` split by frame ({manifest['categories']['test'].get('provocative', 0)} provocative,
{manifest['categories']['test'].get('neutral', 0)} neutral), 4 sampled responses each, and on `bundled:detox-ood`, 2 each; pure sampling,
up to 24 new tokens. Toxicity is each judge's probability that a response is toxic; "toxic" is the share above 0.5.

{baseline_tables}

Most responses are harmless, but the provoked ones often finish the insult, so the mean and the
share of toxic responses are high enough for a reduction to be measured. HateSonar gives every
short text a probability of about 0.3 of being offensive, so its mean moves less.""", path=RESULTS)
    write_section("algorithms", f"""## Detoxification: PPO, GRPO and RLOO over seeds

`bench/results_demo.py` on `configs/demo.yaml`, {machine()}. Each run trains `smollm2-135m-instruct` (LoRA,
{regular[0]['steps'] if regular else '?'} steps) against the `jigsaw-bilstm` reward on the {manifest['counts']['train']} train prompts, whose
templates (frames) never occur in test. Every policy answers each prompt 4 times with the same per-prompt sampling
seeds as the base policy (twice on the OOD set), so the comparison is paired: "drop" is `(base - trained) / base` of mean toxicity, with
its 95% paired-bootstrap interval over prompts, one entry per seed. jigsaw-bilstm is the training reward;
profanity-check and hatesonar are judges training never saw; the gate decides on profanity-check. KL is measured on
the sampled tokens with EOS; the fluency ratio is the median perplexity of the responses under the base policy over
the base policy's own; distinct-2 and the repeated-3-gram share are shown with the base policy's in brackets;
relevance is the MiniLM prompt-response similarity over the base policy's. Training plus final evaluation took
{spread(minutes, '.1f') if minutes else '?'} min per run here.

### Held-out test split ({counts['test']} responses: {manifest['counts']['test']} prompts of unseen frames x 4)

{table(regular, 'test') if regular else '(no runs yet)'}

### Out-of-distribution set `bundled:detox-ood` ({counts.get('detox-ood', '?')} responses: other registers, never trained on)

{table(regular, 'detox-ood') if regular else '(no runs yet)'}

Seeds present: {', '.join(sorted({f"{s['algorithm']} {s['seed']}" for s in regular}))}.{missing_runs(regular)}""", path=RESULTS)

    if over:
        o = over[0]
        write_section("over-optimised", f"""## An over-optimised run, refused by the gate

`bench/results_demo.py --over-optimised`: PPO as above but with `{', '.join(f'{k}={v}' for k, v in o['overrides'].items())}`
(no KL term, 10x the learning rate, 20 steps), seed {o['seed']}{'' if 'detox-ood' in o['sets'] else ', measured on the test split only'}. Its gate decision against the base policy:

- failed checks: {', '.join(o['decision']['failed']) or 'none (it passed)'}{'' if 'toxicity' in o['decision']['failed'] else ' (its toxicity checks pass: only the KL and quality budgets stop it)'}
{chr(10).join('- ' + r for r in o['decision']['reasons'])}

{table(over, 'test')}""", path=RESULTS)

    if regular:
        seed0 = [RUNS / s["name"] for s in regular if s["seed"] == min(r["seed"] for r in regular)]
        write_section("samples", "## Ten responses drawn at random\n\n"
                      "Test prompts drawn with `random.Random(0)` from the held-out split (not chosen), the first of the 4 responses, "
                      "jigsaw-bilstm toxicity in brackets; one column per algorithm at its lowest seed.\n\n" + random_responses(base, seed0), path=RESULTS)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
