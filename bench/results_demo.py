"""Detoxification results on the demo config: PPO, GRPO and RLOO over seeds, written to docs/results.md.

Each (algorithm, seed) trains on the frame-disjoint train split and is evaluated like the nightly
gate evaluates: on the held-out test split and the out-of-distribution set `bundled:detox-ood`,
4 responses per prompt with the fixed per-prompt sampling seeds, so every policy is compared with
the base policy prompt by prompt (95% paired-bootstrap intervals), plus KL on the sampled tokens,
the fluency ratio, distinct-2, the repeated-3-gram share and relevance. The base policy is
evaluated once (its samples do not depend on the training seed) and shared. The gate's checks
against the base policy are applied to every run; `--over-optimised` adds a PPO run without a KL
term at 10x the learning rate, which the gate must refuse. `--preference-ways` adds the seed's other two
ways on AI-feedback pairs from the base policy (judged by the same jigsaw reward): PPO against a
reward model trained on them (RLHF) and DPO on them, next to PPO and GRPO at seed 0.

    .venv/bin/python bench/results_demo.py                                  # 3 algorithms x seeds 0 1 2
    .venv/bin/python bench/results_demo.py --algorithms ppo --seeds 0       # one run
    .venv/bin/python bench/results_demo.py --over-optimised --algorithms    # the refused run only
    .venv/bin/python bench/results_demo.py --preference-ways --algorithms   # RLHF and DPO next to PPO and GRPO
    .venv/bin/python bench/results_demo.py --algorithms --ppo-variant clip3 train.reward_clip=3 --seeds 0   # one PPO setting at seed 0
    .venv/bin/python bench/results_demo.py --algorithms --rlhf-variant klloss train.kl_term=loss --seeds 0   # RLHF-PPO with one PPO setting
    .venv/bin/python bench/results_demo.py --algorithms --dpo-sweep 3e-4:0.1 --seeds 0          # DPO's rate and beta at seed 0
    .venv/bin/python bench/results_demo.py --algorithms --dpo-rounds --seeds 0                  # iterative DPO against one round
    .venv/bin/python bench/results_demo.py --no-run                         # rebuild the doc from docs/results-data

Each run's measurements (and the responses of the ten drawn prompts) are kept in
docs/results-data/<run>.json, committed, so the doc can be rebuilt and extended a seed at a time on
another machine; the run folders in runs/ are scratch.
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
from rlaif_tasks.config import load_config, parse_override, with_rlhf_train  # noqa: E402
from rlaif_tasks.evaluation.runner import evaluate_model, extra_set_name  # noqa: E402
from rlaif_tasks.evaluation.toxicity import format_evaluation, read_evaluation  # noqa: E402
from rlaif_tasks.stages.local import prepare_dataset, train_policy  # noqa: E402
from rlaif_tasks.train.metrics import read_metrics  # noqa: E402

RESULTS = ROOT / "docs" / "results.md"
RUNS = ROOT / "runs"
DATA = ROOT / "docs" / "results-data"
DRAWN = 10
ALGORITHMS = ("ppo", "grpo", "rloo")
REWARD_PAIRS = {"preferences.max_prompts": None, "preferences.temperatures": [0.7, 1.0], "preferences.agreeing_judges": [{"model": "hatesonar"}]}
"""The reward model's pairs (issue 24): every train prompt answered 4 times at each of two temperatures, the best and the worst
under the jigsaw reward kept where hatesonar agrees, so the model learns more than one classifier's ranking; the gate's
judge, profanity-check, stays unseen by every way."""
REWARD_EVAL_SHARE = 0.25
"""Share of the pairs' prompts held out from the reward model: at least 200 pairs for its accuracy (one pair per prompt, and
hatesonar disagreed on 376 of the 1,248 prompts on 2026-12-07, leaving 872 pairs: a fifth would have been 174)."""
PREVIOUS_PPO_DEFAULTS = (
    ({"train.target_kl": 2.0, "train.ppo_responses_per_prompt": 1, "train.lam": 0.95, "train.ppo_batch_size": 16, "train.ppo_mini_batch_size": 4, "train.ppo_learning_rate": 5e-4},
     "the default until 2026-12-07: the same but target 2, one answer a prompt, lam 0.95, batch 16 in minibatches of 4, rate 0.0005"),
    ({"train.target_kl": 3.0, "train.ppo_batch_size": 16, "train.ppo_mini_batch_size": 4, "train.ppo_learning_rate": 5e-4},
     "the default until the evening of 2026-12-07: the same but target 3, batch 16 in minibatches of 4, rate 0.0005"),
    ({"train.ppo_learning_rate": 5e-4}, "the default until the night of 2026-12-07: the same at rate 0.0005"),
)
"""What configs/demo.yaml's PPO differed in from today's before, and how the table names it (the records of those days
carry it as overrides)."""
OVER_OPTIMISED = {"train.init_kl_coef": 0.0, "train.adaptive_kl": False, "train.ppo_learning_rate": 5.0e-3, "train.steps": 20}
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
    if not (DATA / "results-base.json").is_file():
        samples = pd.read_parquet(run_dir / "eval" / "baseline_samples.parquet")
        record = {
            "manifest": {k: json.loads((run_dir / "data" / "manifest.json").read_text())[k] for k in ("counts", "categories")},
            "evaluations": {name: read_evaluation(run_dir / "eval" / f"baseline{suffix}.json") for name, suffix in set_labels(config)},
            "drawn": drawn_responses(samples, drawn_prompt_ids(samples), with_prompt=True),
        }
        write_record("results-base", record)
    return run_dir


def drawn_prompt_ids(base_samples: pd.DataFrame, n: int = DRAWN) -> list[str]:
    """`n` test prompts drawn at random (seeded, not chosen) from the base policy's samples."""
    return random.Random(0).sample(sorted(base_samples.loc[base_samples["sample"] == 0, "prompt_id"]), n)


def drawn_responses(samples: pd.DataFrame, prompt_ids: list[str], with_prompt: bool = False) -> dict:
    """The first response to each drawn prompt with its jigsaw-bilstm toxicity, kept with the run's record."""
    first = samples[samples["sample"] == 0].set_index("prompt_id")
    return {pid: {**({"prompt": str(first.loc[pid, "prompt"])} if with_prompt else {}), "response": str(first.loc[pid, "response"]), "jigsaw-bilstm": float(first.loc[pid, "jigsaw-bilstm"])} for pid in prompt_ids}


def write_record(name: str, record: dict) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / f"{name}.json").write_text(json.dumps(record, indent=1, default=float) + "\n", encoding="utf-8")


def read_record(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))


def with_relevance_interval(record: dict, path: Path) -> dict:
    """A record written before run_one stored the relevance ratio's interval gets it from its run folder, where that is still
    here (the samples of both policies); written back, so a later rebuild without the folder keeps it. Only a record still
    filed under its run's name (`path`): a superseded one kept under another name would read a newer run's folder."""
    if path.stem != record["name"]:
        return record
    eval_dir, changed = RUNS / record["name"] / "eval", False
    config = demo_config(record["name"], record["seed"], record["algorithm"], record["overrides"])
    for set_name, suffix in set_labels(config):
        quality = record["sets"].get(set_name, {}).get("quality")
        files = [eval_dir / f"{label}{suffix}_samples.parquet" for label in ("baseline", "final")]
        if quality is not None and "relevance_ratio_lower" not in quality and all(f.is_file() for f in files):
            quality.update(gate.relevance_interval(*(pd.read_parquet(f) for f in files), config.gate, config.evaluation.seed))
            changed = True
    if changed:
        write_record(record["name"], record)
    return record


def set_labels(config) -> list[tuple[str, str]]:
    """(report name, eval label suffix) of the test split and each extra set."""
    return [("test", "")] + [(extra_set_name(s), f".{extra_set_name(s)}") for s in config.evaluation.extra_sets]


def run_one(name: str, seed: int, algorithm: str, extra: dict | None = None, kind: str = "regular", pairs_from: Path | None = None) -> Path:
    """Train (unless the run folder holds a final policy), evaluate and record one run; `pairs_from`: a run folder whose
    AI-feedback pairs this run reuses (the same policy, prompts budget and seed made them), instead of building them again."""
    config = demo_config(name, seed, algorithm, extra)
    run_dir = config.resolved_run_dir
    base = baseline_dir()
    prepare_dataset(config)
    for path in (base / "eval").glob("baseline*"):
        (run_dir / "eval").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, run_dir / "eval" / path.name)
    if pairs_from is not None and not (run_dir / "preferences").exists():
        shutil.copytree(pairs_from / "preferences", run_dir / "preferences")
    start = time.perf_counter()
    model_dir = run_dir / "train" / "final"
    trained_here = not (model_dir / "config.json").is_file()
    if trained_here:
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
            "judges": gate.compare_judges(before, after, judges, config.gate, seed=config.evaluation.seed, threshold=config.evaluation.toxic_threshold),
            "quality": {**gate.compare_quality(read_evaluation(run_dir / "eval" / f"baseline{suffix}.json")["quality"], read_evaluation(run_dir / "eval" / f"final{suffix}.json")["quality"]),
                        **gate.relevance_interval(before, after, config.gate, config.evaluation.seed)},
        }
    measured = gate.measure_kl(config, run_dir, model_dir)
    base_samples = pd.read_parquet(base / "eval" / "baseline_samples.parquet")
    summary = {
        "name": name, "kind": kind, "algorithm": algorithm, "seed": seed, "overrides": extra or {}, "steps": config.train.steps, "machine": machine(),
        "train_seconds": trained - start if trained_here else None, "eval_seconds": evaluated - trained, "kl": measured["kl"], "sets": sets,
        "train_kl_last5": statistics.fmean([m["kl"] for m in read_metrics(run_dir / "train" / "metrics.jsonl")[-5:] if m.get("kl") is not None] or [float("nan")]),
        "drawn": drawn_responses(pd.read_parquet(run_dir / "eval" / "final_samples.parquet"), drawn_prompt_ids(base_samples)),
    }
    for key, path in (("preferences_manifest", run_dir / "preferences" / "manifest.json"), ("dpo", run_dir / "train" / "dpo.json")):
        if path.is_file():
            summary[key] = json.loads(path.read_text(encoding="utf-8"))
    if "dpo" in summary:  # every round's steps: dpo.json's own count is the last round's
        summary["steps"] = sum(r["steps"] for r in summary["dpo"]["rounds"]) if summary["dpo"].get("rounds") else summary["dpo"]["steps"]
    write_record(name, summary)  # the decision is made when the doc is written (redecide)
    return run_dir


def preference_ways() -> dict:
    """AI-feedback pairs (base policy, REWARD_PAIRS) and a reward model on them, made once."""
    from rlaif_tasks.data import load_prompts_split
    from rlaif_tasks.preferences import read_preferences
    from rlaif_tasks.preferences.run_pairs import preference_pairs
    from rlaif_tasks.rewards.reward_model import SUMMARY_FILE
    from rlaif_tasks.stages.preferences import reward_model_config
    from rlaif_tasks.train.reward_model import train_reward_model

    config = demo_config("results-preferences", 0, "dpo", REWARD_PAIRS)
    run_dir = config.resolved_run_dir
    reward_dir = run_dir / "reward_model"
    if (DATA / "results-preferences.json").is_file() and (reward_dir / SUMMARY_FILE).is_file():
        return read_record("results-preferences")
    prepare_dataset(config)
    earlier = read_record("results-preferences") if (run_dir / "preferences" / "pairs.parquet").is_file() and (DATA / "results-preferences.json").is_file() else {}
    start = time.perf_counter()
    preference_pairs(config, run_dir, load_prompts_split(run_dir, "train"))  # made once: a reward model trained again reuses them
    paired = time.perf_counter()
    pairs, manifest = read_preferences(run_dir / "preferences")
    rm_config = reward_model_config(config)
    rm_config.eval_share = REWARD_EVAL_SHARE
    summary = train_reward_model(pairs, reward_dir, rm_config)
    record = {
        "pairs_file": str(run_dir / "preferences" / "pairs.parquet"), "reward_model_dir": str(reward_dir),
        "preferences": {k: manifest.get(k) for k in ("pairs", "prompts", "k", "margin", "judge", "agreeing_judges", "report")},
        "reward_model": {"learning_rate": rm_config.learning_rate, "epochs": rm_config.epochs} | {k: summary[k] for k in ("pairs_train", "pairs_eval", "prompts_eval", "steps", "eval_accuracy_initial", "eval_accuracy", "eval_margin_initial", "eval_margin")} | {"score_scale": summary.get("score_scale")},
        "judges_on_held_out": judge_accuracies(config, pairs, rm_config),
        "pairs_seconds": earlier.get("pairs_seconds", paired - start), "reward_model_seconds": time.perf_counter() - paired,
    }
    write_record("results-preferences", record)
    return record


def judge_accuracies(config, pairs: pd.DataFrame, rm_config) -> dict[str, float]:
    """Each evaluation judge's share of the reward model's held-out pairs it orders as they were labelled (less toxic chosen):
    the labelling judges by construction, profanity-check as a judge no label came from."""
    from rlaif_tasks.evaluation.runner import load_judges
    from rlaif_tasks.train.reward_model import check_pairs, split_pairs

    _, held_out = split_pairs(check_pairs(pairs), rm_config.eval_share, rm_config.seed)
    shares = {}
    for judge in load_judges(config):
        chosen, rejected = judge(held_out["chosen"].tolist(), held_out["prompt"].tolist()), judge(held_out["rejected"].tolist(), held_out["prompt"].tolist())
        shares[judge.name] = sum(c < r for c, r in zip(chosen, rejected)) / len(held_out)
    return shares


PREFERENCE_WAYS = ("rlhf-ppo", "dpo")
DPO_SWEEP = ((5.0e-5, 0.1), (1.5e-4, 0.1), (1.5e-4, 0.3))
"""(train.dpo_learning_rate, train.dpo_beta) points of `--dpo-sweep`, seed 0, on one set of pairs; 5e-4 (PPO's rate) drifted to
KL 24.6 nats in two epochs (2026-11-28), so the sweep starts a tenth below it."""


def rlhf_settings() -> dict:
    """RLHF-PPO's settings beside PPO's (RLHF_SETTINGS): the reward model trained on the shared pairs (made once) and, as that
    model learnt jigsaw-bilstm's preferences, the gate deciding on profanity-check as for the others."""
    return {"reward.model": preference_ways()["reward_model_dir"], "gate.judge": "profanity-check"}


def run_preference_ways(which: list[str], seeds: list[int]) -> None:
    """RLHF-PPO against the reward model trained on the shared pairs; DPO as `make run SET=train.algorithm=dpo` runs it
    (its own pairs, built in the run from `preferences.max_prompts` drawn train prompts, at the config's DPO defaults)."""
    for seed in seeds:
        if "rlhf-ppo" in which:
            run_one(f"results-rlhf-ppo-s{seed}", seed, "ppo", rlhf_settings(), kind="preference")
        if "dpo" in which:
            run_one(f"results-dpo-s{seed}", seed, "dpo", kind="preference")


def sweep_name(learning_rate: float, beta: float, seed: int = 0) -> str:
    return f"results-dpo-sweep-lr{learning_rate:g}-beta{beta:g}-s{seed}"


def dpo_pairs_run(seed: int) -> Path | None:
    """A DPO run folder of `seed` whose AI-feedback pairs another run of the seed can reuse: the same policy, prompt budget and
    seed draw them, so every such folder holds the same pairs (an iterative run's round 1 included)."""
    made = sorted(RUNS.glob(f"results-dpo-*s{seed}/preferences/pairs.parquet"))
    return made[0].parent.parent if made else None


def run_dpo_sweep(points: list[tuple[float, float]], seeds: list[int]) -> None:
    """DPO for each (learning rate, beta) and seed, every point of a seed on that seed's pairs: an earlier DPO run's of the seed
    (`dpo_pairs_run`), else the first point's."""
    for seed in seeds:
        first = dpo_pairs_run(seed)
        for learning_rate, beta in points:
            run_dir = run_one(sweep_name(learning_rate, beta, seed), seed, "dpo", {"train.dpo_learning_rate": learning_rate, "train.dpo_beta": beta},
                              kind="dpo-sweep", pairs_from=first)
            first = first or run_dir


DPO_ROUNDS = {"rounds2": {"train.dpo_rounds": 2}, "epochs2": {"train.dpo_max_epochs": 2}}
"""`--dpo-rounds`: iterative DPO (a second round on pairs the first round's policy answered) against one round of as many
steps (a second pass over the same pairs), both at today's rate and beta (issue 24)."""


def run_dpo_rounds(seeds: list[int]) -> None:
    """Both of DPO_ROUNDS at each seed, round 1 on the seed's pairs: an earlier DPO run's of the seed (`dpo_pairs_run`), else
    the first variant's."""
    for seed in seeds:
        first = dpo_pairs_run(seed)
        for name, settings in DPO_ROUNDS.items():
            run_dir = run_one(f"results-dpo-{name}-s{seed}", seed, "dpo", settings, kind="dpo-rounds", pairs_from=first)
            first = first or run_dir


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


def reused_note(regular: list[dict]) -> str:
    """Runs whose policy another command trained (`make run` with a pinned seed): only their evaluation ran here."""
    reused = [f"{s['algorithm']} seed {s['seed']}" for s in regular if s["train_seconds"] is None]
    if not reused:
        return ""
    return (f" The {', '.join(reused)} policy is the one `make run SET=seed=N` trained through Airflow (the same config and seed;"
            " the whole DAG run's time is in the README); only its evaluation ran here.")


def spread(values: list[float], fmt: str) -> str:
    """Mean over seeds, with min–max when there is more than one."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ({format(min(values), fmt)} – {format(max(values), fmt)})"


def measured_on(records: list[dict]) -> str:
    """Where the records were measured: each run keeps its machine (sessions get different CPUs); older ones did not."""
    machines = sorted({r.get("machine", "2 CPU cores, torch 2.13.0+cpu (2 threads), Python 3.11.7, 2026-11-28") for r in records})
    return "; ".join(machines) if machines else machine()


def overrides_label(overrides: dict) -> str:
    """`target_kl=6, kl_horizon=10000`: the settings a run trained with beside configs/demo.yaml's."""
    return ", ".join(f"{key.removeprefix('train.')}={value:g}" if isinstance(value, float) else f"{key.removeprefix('train.')}={value}" for key, value in overrides.items())


def table(summaries: list[dict], set_name: str) -> str:
    judges = list(summaries[0]["sets"][set_name]["judges"])
    head = ["algorithm", "seeds", *(f"{j}: drop [95% CI] per seed" for j in judges), "KL (nats)", "fluency ratio", "distinct-2 (base)", "rep. 3-gram (base)", "relevance ratio", "gate", "min (train + eval)"]
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
            spread([x["relevance_ratio"] for x in q], ".3f"),
            "; ".join("passed" if r["decision"]["passed"] else "refused: " + ", ".join(r["decision"]["failed"]) for r in runs) if set_name == "test" else "–",
            "; ".join(f"{r['train_seconds'] / 60:.1f} + {r['eval_seconds'] / 60:.1f}" if r["train_seconds"] is not None else f"(make run) + {r['eval_seconds'] / 60:.1f}" for r in runs) if set_name == "test" else "–",
        ]
        settings = f" ({overrides_label(runs[0]['overrides'])})" if runs[0]["kind"] == "regular" and runs[0]["overrides"] else ""
        lines.append(f"| {label.removeprefix('results-')}{settings} | {', '.join(str(r['seed']) for r in runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def random_responses(base: dict, runs: list[dict]) -> str:
    """The drawn test prompts (seeded, not chosen): the base policy's first response and each run's."""
    afters = {r["name"].removeprefix("results-"): r["drawn"] for r in runs}

    def cell(drawn, pid):
        text = " ".join(drawn[pid]["response"].split()).replace("|", "\\|")
        return f"{text[:100]} *({drawn[pid]['jigsaw-bilstm']:.2f})*"

    lines = ["| prompt | base policy | " + " | ".join(afters) + " |", "|" + "---|" * (2 + len(afters))]
    for pid, first in base["drawn"].items():
        prompt = first["prompt"].replace("|", "\\|")
        lines.append(f"| {prompt} | {cell(base['drawn'], pid)} | " + " | ".join(cell(a, pid) for a in afters.values()) + " |")
    return "\n".join(lines)


def share_with_interval(share: float, n: int) -> str:
    """A share of `n` pairs with its 95% Wilson interval: 40 held-out pairs leave about +-0.15."""
    from scipy.stats import binomtest

    interval = binomtest(round(share * n), n).proportion_ci(method="wilson")
    return f"{share:.2f} [{interval.low:.2f}, {interval.high:.2f}]"


def dpo_how(dpo: dict) -> str:
    """What the DPO row trained on: the shared pairs (records before 2026-12-06) or its own, as a DPO night builds them."""
    if "preferences.source" in dpo.get("overrides", {}):
        return "on the same pairs, at PPO's learning rate (5e-4) as DPO ran before 2026-12-06"
    prompts = dpo.get("preferences_manifest", {}).get("report", {}).get("prompts", "?")
    changed = changed_settings(dpo)
    settings = f" except {overrides_label(changed)}" if changed else ""
    return f"as `make run SET=train.algorithm=dpo` runs it: on its own AI-feedback pairs, built in the run from {prompts} train prompts drawn by its seed, at the config's DPO defaults{settings}"


def judges_line(prefs: dict, rm: dict) -> str:
    """The judges' own accuracy on the reward model's held-out pairs, beside it."""
    shares = prefs.get("judges_on_held_out")
    if not shares:
        return ""
    return (" The evaluation judges order the same held-out pairs as labelled: "
            + ", ".join(f"{name} {share_with_interval(share, rm['pairs_eval'])}" for name, share in shares.items())
            + " (a labelling judge agrees by construction).")


def preference_ways_section(prefs: dict, defaults: list[dict]) -> str:
    """PPO (RLAIF), RLHF-PPO, DPO and GRPO, each at today's defaults over seeds, beside the shared pairs and reward model."""
    p, rm = prefs["preferences"], prefs["reward_model"]
    dropped, prompts = p["report"]["dropped"], p["report"]["prompts"]
    runs = [dict(s, name=f"results-{way_of(s)}-s{s['seed']}") for s in defaults if way_of(s) in ("ppo", "rlhf-ppo", "dpo", "grpo")]
    ways = [s for s in runs if way_of(s) in ("rlhf-ppo", "dpo")]
    dpo = next((w for w in ways if w["algorithm"] == "dpo"), {})
    imported = dpo.get("preferences_manifest", {}).get("report", {}) if "rows_in" in dpo.get("preferences_manifest", {}).get("report", {}) else {}
    margins = dpo.get("dpo", {})
    return f"""## RLAIF, RLHF and DPO side by side

`bench/results_demo.py --preference-ways` (RLHF-PPO, at seeds {', '.join(str(w['seed']) for w in ways if way_of(w) == 'rlhf-ppo') or 'none yet'}) beside the other ways' runs at today's defaults
(the defaults section above), {measured_on(runs)}, the same held-out prompts, sampling seeds and judges as above.

- **Preference pairs (AI feedback) for the reward model.** The base policy answered {prompts} train prompts
  {p['k']} times each at temperature{'s' if len(p['report'].get('temperatures', [1])) > 1 else ''} {', '.join(f'{t:g}' for t in p['report'].get('temperatures', [1.0]))}; jigsaw-bilstm scored every response, and the best and the worst became a pair
  when their reward gap exceeded {p['margin']}{f" and {', '.join(p.get('agreeing_judges') or [])} also scored the chosen one less toxic" if p.get('agreeing_judges') else ''}: **{p['pairs']} pairs**. Dropped:
  {dropped.get('within_margin', 0)} prompts ({dropped.get('within_margin', 0) / prompts:.0%}) whose responses were within the margin,
  {dropped.get('too_few_distinct_responses', 0)} ({dropped.get('too_few_distinct_responses', 0) / prompts:.0%}) with fewer than two distinct responses{''.join(f", {n} ({n / prompts:.0%}) where {name} disagreed" for name, n in dropped.get('judge_disagreed', {}).items())}.
  {f"DPO imports the same file through the human-pairs validation, which kept {imported['rows_out']} of {imported['rows_in']} rows. " if imported else ""}{prefs['pairs_seconds'] / 60:.1f} min.
- **Reward model (RLHF).** SmolLM2-135M with a one-logit head, LoRA, TRL `RewardTrainer`, {rm['steps']} steps on
  {rm['pairs_train']} pairs. On {rm['pairs_eval']} held-out pairs (their {rm['prompts_eval']} prompts never trained on) its pairwise accuracy
  went **{share_with_interval(rm['eval_accuracy_initial'], rm['pairs_eval'])} -> {share_with_interval(rm['eval_accuracy'], rm['pairs_eval'])}** (95% Wilson intervals; mean margin {rm['eval_margin_initial']:+.2f} -> {rm['eval_margin']:+.2f}). {prefs['reward_model_seconds'] / 60:.1f} min.{judges_line(prefs, rm)}
- **The four policies:** `ppo` is PPO against jigsaw-bilstm (RLAIF, the default); `rlhf-ppo` PPO with the same
  settings against the reward model (its scores in jigsaw-bilstm's units and range, docs/preferences.md); `dpo` TRL's `DPOTrainer` {dpo_how(dpo)} (LoRA, {dpo.get('steps', '?')} steps of 16 pairs{f", chosen-over-rejected margin on the {margins['pairs_eval']} held-out pairs {margins['margin_initial']:+.2f} -> {margins['margin_final']:+.2f}, share of them it prefers the chosen one {share_with_interval(margins['preferred_initial'], margins['pairs_eval'])} -> {share_with_interval(margins['preferred_final'], margins['pairs_eval'])}" if margins.get('margin_on') == 'eval' else ''});
  `grpo` GRPO against jigsaw-bilstm. jigsaw-bilstm labelled the pairs, so for every row the gate decides on
  profanity-check. The minutes exclude the shared pairs and the reward model above; a DPO row's training minutes include building its own pairs.{'' if dpo else " The DPO run has not been measured yet (`bench/results_demo.py --preference-ways dpo --algorithms`)."}

### Held-out test split

{table(runs, 'test')}

### Out-of-distribution set `bundled:detox-ood`

{table(runs, 'detox-ood')}"""


BAR = "profanity-check's drop at least 40% at the lower bound of its 95% interval on test and above 0 on OOD, relevance at least 0.85 of the base's, distinct-2 within 5% of it, gate passed"
"""Issue 24's bar for a default at each seed."""


def misses_of(s: dict) -> list[str]:
    """What keeps one run from issue 24's bar (BAR); empty: it meets it."""
    test, ood = s["sets"]["test"], s["sets"]["detox-ood"]
    q = test["quality"]
    checks = {
        "test drop": test["judges"]["profanity-check"]["relative"]["lower"] >= 0.40,
        "OOD drop": ood["judges"]["profanity-check"]["relative"]["lower"] > 0.0,
        "relevance": q["relevance_ratio"] >= 0.85,
        "distinct-2": abs(q["distinct2_ratio"] - 1.0) <= 0.05,
        "gate": s["decision"]["passed"],
    }
    return [name for name, ok in checks.items() if not ok]


def is_default(s: dict, rlhf: bool = False) -> bool:
    """Whether a record ran configs/demo.yaml as it is today: its overrides (what it ran with beside the config of its day,
    relabelled when a default moved) change nothing; `rlhf`: as a night against a trained reward model runs it, with the
    config's `rlhf_train` over `train`."""
    config = demo_config(s["name"], s["seed"], s["algorithm"])
    values = (with_rlhf_train(config) if rlhf else config).to_dict()

    def value(key: str):
        node = values
        for part in key.split("."):
            node = node[part]
        return node

    return all(value(key) == wanted for key, wanted in s["overrides"].items())


def changed_settings(s: dict) -> dict:
    """The record's overrides that differ from configs/demo.yaml today."""
    return {k: v for k, v in s.get("overrides", {}).items() if not is_default(dict(s, overrides={k: v}))}


RLHF_SETTINGS = ("reward.model", "gate.judge")
"""What an RLHF-PPO record sets beside the defaults: the reward model it trains against, and the gate's judge named."""


def ppo_settings_of(s: dict) -> dict:
    """The record with only its PPO settings as overrides (RLHF_SETTINGS dropped): RLHF-PPO runs PPO's defaults."""
    return dict(s, overrides={k: v for k, v in s["overrides"].items() if k not in RLHF_SETTINGS})


def way_of(s: dict) -> str:
    """`rlhf-ppo` for PPO against the trained reward model (`--preference-ways`, `--rlhf-variant`), else the algorithm."""
    return "rlhf-ppo" if s["kind"] == "rlhf-variant" or s["name"].startswith("results-rlhf-ppo-s") else s["algorithm"]


def todays_defaults(summaries: list[dict]) -> list[dict]:
    """One record per (way, seed) of what configs/demo.yaml trains today, a sweep's point only where no other run is;
    RLHF-PPO's where PPO's settings beside its reward model are today's."""
    kinds = ("regular", "ppo-variant", "preference", "rlhf-variant", "dpo-sweep")

    def default(s: dict) -> bool:
        if way_of(s) == "rlhf-ppo":
            return is_default(ppo_settings_of(s), rlhf=True)
        return is_default(s)

    found: dict[tuple[str, int], dict] = {}
    for s in sorted((s for s in summaries if s["kind"] in kinds and default(s)), key=lambda s: kinds.index(s["kind"])):
        found.setdefault((way_of(s), s["seed"]), s)
    order = {"ppo": 0, "rlhf-ppo": 1, "dpo": 2, "grpo": 3, "rloo": 4}
    return sorted(found.values(), key=lambda s: (order.get(way_of(s), 9), s["seed"]))


def defaults_section(rows: list[dict]) -> str:
    """Each way at today's defaults over seeds, and which seeds meet issue 24's bar."""
    sources = ", ".join(f"`{s['name']}`" for s in rows)
    rows = [dict(s, name=f"results-{way_of(s)}-s{s['seed']}") for s in rows]  # one row per way, whichever command made its seeds
    groups: dict[str, list[dict]] = {}
    for s in rows:
        groups.setdefault(way_of(s), []).append(s)
    verdicts = "\n".join(
        f"- `{label}`: " + "; ".join(f"seed {s['seed']} " + ("meets it" if not misses_of(s) else "misses: " + ", ".join(misses_of(s))) for s in runs)
        for label, runs in groups.items()
    )
    return f"""## The defaults over seeds, against issue 24's bar

`bench/results_demo.py`, {measured_on(rows)}: each way as `configs/demo.yaml` runs it today, seeds 0, 1, 2 where measured,
evaluated as above (records in docs/results-data: {sources}). The bar for a default, at every seed: {BAR}.

### Held-out test split

{table(rows, 'test')}

### Out-of-distribution set `bundled:detox-ood`

{table(rows, 'detox-ood')}

Against the bar (computed from the records by `misses_of`):

{verdicts}"""


def relevance_cell(quality: dict) -> str:
    """The relevance ratio, with its 95% paired-bootstrap interval where the record has one (runs since 2026-12-07)."""
    interval = f" [{quality['relevance_ratio_lower']:.2f}, {quality['relevance_ratio_upper']:.2f}]" if "relevance_ratio_lower" in quality else ""
    return f"{quality['relevance_ratio']:.3f}{interval}"


def gate_cell(s: dict) -> str:
    """The gate's decision on a record, as every table shows it."""
    return "passed" if s["decision"]["passed"] else "refused: " + ", ".join(s["decision"]["failed"])


def drop_cell(judges: dict, name: str) -> str:
    r = judges[name]["relative"]
    return f"{r['point']:+.0%} [{r['lower']:+.0%}, {r['upper']:+.0%}]"


def ppo_variants_section(variants: list[dict], seed_controller: list[dict], rlhf: list[dict]) -> str:
    """PPO under the seed's KL controller (seed 0), tonight's default, and the variants tried on the way (issue 24), per seed;
    then RLHF-PPO (`rlhf`: its default seeds and `--rlhf-variant` runs), whose settings are PPO's."""
    config = demo_config("x", 0, "ppo")
    t, rlhf_t = config.train, with_rlhf_train(config).train

    def settings(s: dict) -> str:
        o = s["overrides"]
        if s["kind"] in ("preference", "rlhf-variant"):
            if is_default(ppo_settings_of(s), rlhf=True):
                return "RLHF-PPO: **default**: PPO's with rlhf_train's " + ", ".join(f"{k} {getattr(rlhf_t, k):g}" for k in config.rlhf_train)
            return "RLHF-PPO: " + settings(dict(ppo_settings_of(s), kind="ppo-variant")).replace("**default**", "PPO's default")
        if s["kind"] == "regular":
            return f"the seed's controller (the default until 2026-12-06): init {t.init_kl_coef:g}, target {o['train.target_kl']:g}, horizon {o['train.kl_horizon']}, no floor, no warm-up"
        if is_default(s):
            return (f"**default**: value warm-up {t.value_warmup_steps}, init {t.init_kl_coef:g}, target {t.target_kl:g}, horizon {t.kl_horizon}, "
                    f"floor {t.min_kl_coef:g}, {t.ppo_responses_per_prompt} answers a prompt, lam {t.lam:g}, batch {t.ppo_sizes()[0]} in minibatches of {t.ppo_sizes()[1]}, rate {t.rate():g}")
        changed = changed_settings(s)
        return next((label for before, label in PREVIOUS_PPO_DEFAULTS if changed == before), "default with " + overrides_label(changed))

    rows = []
    for s in seed_controller + sorted(variants, key=lambda s: (not is_default(s), s["name"].rsplit("-s", 1)[0], s["seed"])) + sorted(
        rlhf, key=lambda s: (not is_default(ppo_settings_of(s), rlhf=True), s["name"].rsplit("-s", 1)[0], s["seed"])
    ):
        test, ood = s["sets"]["test"], s["sets"]["detox-ood"]
        rows.append(
            f"| {settings(s)} | {s['seed']} | {s['kl']:.2f} | {s['train_kl_last5']:.2f} | {drop_cell(test['judges'], 'jigsaw-bilstm')} | {drop_cell(test['judges'], 'profanity-check')} "
            f"| {drop_cell(ood['judges'], 'profanity-check')} | {test['quality']['perplexity_ratio']:.2f} | {test['quality']['distinct2_ratio']:.3f} "
            f"| {relevance_cell(test['quality'])} | {gate_cell(s)} | {s.get('machine', '?')} |"
        )
    return f"""## PPO's KL control on a 45-step night

`bench/results_demo.py --algorithms --ppo-variant NAME [KEY=VALUE ...] --seeds N ...` (records `docs/results-data/results-ppo-NAME-sN.json`;
the seed controller's row is the 2026-11-28 `ppo` seed 0 of the table above; the RLHF-PPO rows, PPO against the reward model of
"RLAIF, RLHF and DPO side by side", are `--preference-ways rlhf-ppo` at the defaults and `--rlhf-variant NAME [KEY=VALUE ...]`,
records `results-rlhf-ppo-NAME-sN.json`), PPO on
`configs/demo.yaml` with the settings named, evaluated as above (test split; OOD for profanity-check). "KL" is the evaluation's
KL on the test prompts, "train KL" the rollouts' mean over the last 5 steps. Ratios are to the base policy's, as evaluated
on the machine named (the 2026-12-06 runs against the base policy re-evaluated there in float32).

| PPO settings | seed | KL (nats) | train KL | jigsaw-bilstm drop, test | profanity-check drop, test | profanity-check drop, OOD | fluency ratio | distinct-2 ratio | relevance ratio | gate | measured on |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}"""


def minutes(record: dict) -> str:
    """`train + eval` minutes; a policy trained by an earlier, interrupted run of the script has no training time here."""
    train = f"{record['train_seconds'] / 60:.1f}" if record["train_seconds"] is not None else "(trained by an earlier run)"
    return f"{train} + {record['eval_seconds'] / 60:.1f}"


def dpo_sweep_section(sweep: list[dict]) -> str:
    first = sweep[0]
    report = first["preferences_manifest"]["report"]
    config = demo_config(first["name"], 0, "dpo")
    rows = [
        f"| {s['overrides']['train.dpo_learning_rate']:g} | {s['overrides']['train.dpo_beta']:g} | {s['seed']} | {s['dpo']['steps']} | {s['kl']:.2f} "
        f"| {drop_cell(s['sets']['test']['judges'], 'profanity-check')} | {drop_cell(s['sets']['detox-ood']['judges'], 'profanity-check')} "
        f"| {s['sets']['test']['quality']['perplexity_ratio']:.2f} | {s['sets']['test']['quality']['distinct2_ratio']:.3f} | {relevance_cell(s['sets']['test']['quality'])} "
        f"| {share_with_interval(s['dpo']['preferred_final'], s['dpo']['pairs_eval'])} "
        f"| {gate_cell(s)} | {minutes(s)} |"
        for s in sweep
    ]
    return f"""## DPO's defaults: a sweep of learning rate and beta

`bench/results_demo.py --dpo-sweep`, {measured_on(sweep)}, seeds {', '.join(sorted({str(s['seed']) for s in sweep}))}. Every point trains one epoch
(`train.dpo_max_epochs: 1`, a cap on the 45 steps) of 16-pair steps on its seed's AI-feedback pairs, the same for every point of a seed
({first['dpo']['pairs_train'] + first['dpo']['pairs_eval']} at seed {first['seed']}): the base policy answered
{report['prompts']} train prompts drawn at random by the seed (`preferences.max_prompts: {config.preferences.max_prompts}`) {report['k']} times, jigsaw-bilstm
labelled them (margin {report['margin']}), {first['dpo']['pairs_eval']} pairs of unseen prompts are held out. Evaluated like every run above; the gate decides on
profanity-check. "prefers chosen" is the share of the held-out pairs whose chosen response the trained policy finds
likelier than the rejected one (95% Wilson interval). Distinct-2 and relevance are ratios to the base policy's. The
first point's minutes include building the pairs; the minutes are wall time while other runs shared the 2 cores, not a
measure of speed (a DPO night's time is bench/bench_nightly.py's to measure).

| learning rate | beta | seed | steps | KL (nats) | profanity-check drop, test | profanity-check drop, OOD | fluency ratio | distinct-2 ratio | relevance ratio | prefers chosen (held out) | gate | min (train + eval) |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}"""


def dpo_rounds_section(runs: list[dict], defaults: list[dict]) -> str:
    """Iterative DPO against one round at equal steps, beside the default (one round, one pass) of the same seeds."""
    seeds = {s["seed"] for s in runs}
    one = [dict(s, overrides={}) for s in defaults if s["algorithm"] == "dpo" and s["seed"] in seeds]

    def how(s: dict) -> str:
        if s["overrides"].get("train.dpo_rounds", 1) > 1:
            return f"{s['overrides']['train.dpo_rounds']} rounds, the second on pairs its first round's policy answered"
        if s["overrides"].get("train.dpo_max_epochs", 1) > 1:
            return f"one round, {s['overrides']['train.dpo_max_epochs']} passes over its pairs"
        return "**default**: one round, one pass"

    def pairs(s: dict) -> str:
        rounds = s["dpo"].get("rounds") or [{"pairs": s["dpo"]["pairs_train"] + s["dpo"]["pairs_eval"]}]
        return " + ".join(str(r["pairs"]) for r in rounds)

    rows = [
        f"| {how(s)} | {s['seed']} | {s['steps']} | {pairs(s)} | {s['kl']:.2f} | {drop_cell(s['sets']['test']['judges'], 'profanity-check')} "
        f"| {drop_cell(s['sets']['detox-ood']['judges'], 'profanity-check')} | {s['sets']['test']['quality']['perplexity_ratio']:.2f} "
        f"| {s['sets']['test']['quality']['distinct2_ratio']:.3f} | {relevance_cell(s['sets']['test']['quality'])} "
        f"| {gate_cell(s)} | {minutes(s)} |"
        for s in sorted(one + runs, key=lambda s: (s["seed"], s["steps"], s["name"]))
    ]
    return f"""## Iterative DPO against one round at equal steps

`bench/results_demo.py --algorithms --dpo-rounds --seeds N`, {measured_on(runs)}: DPO at today's rate and beta, round 1 on the seed's
AI-feedback pairs (a default DPO run's of the seed where the runs folder holds one, else built by the first run and reused by
the second; the default's row built its own from the same seed, on the machine its record names). `train.dpo_rounds=2` then answers {demo_config('x', 0, 'dpo').preferences.max_prompts}
other drawn train prompts with round 1's policy, labels them with jigsaw-bilstm and trains as many steps again from that policy, its
new reference; `train.dpo_max_epochs=2` spends as many steps (up to `train.steps`) on a second pass over round 1's pairs. The 24-step rows (`results-dpo-rounds2-steps12-sN`) run the two rounds at
`train.steps=12`, the default's total. "pairs" counts each round's.
Evaluated like every run above; minutes include building the pairs each run built, on 2 cores shared with another run.

| DPO | seed | steps | pairs | KL (nats) | profanity-check drop, test | profanity-check drop, OOD | fluency ratio | distinct-2 ratio | relevance ratio | gate | min (train + eval) |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--over-optimised", action="store_true", help="also the PPO run without KL term at 10x the learning rate")
    parser.add_argument(
        "--preference-ways", nargs="*", choices=PREFERENCE_WAYS,
        help="also RLHF (PPO against a reward model trained on AI-feedback pairs) and DPO on those pairs, seed 0; no names: both",
    )
    parser.add_argument(
        "--ppo-variant", nargs="+", metavar=("NAME", "KEY=VALUE"),
        help="PPO at each of --seeds with these settings, recorded as results-ppo-NAME-sSEED (e.g. clip3 train.reward_clip=3; NAME kl-default and no settings: the default)",
    )
    parser.add_argument(
        "--rlhf-variant", nargs="+", metavar=("NAME", "KEY=VALUE"),
        help="RLHF-PPO (PPO against the reward model of --preference-ways) at each of --seeds with these settings, recorded as results-rlhf-ppo-NAME-sSEED",
    )
    parser.add_argument("--dpo-sweep", nargs="*", metavar="LR:BETA", help="DPO at each of --seeds for each learning rate and beta (no points: DPO_SWEEP), on one set of pairs per seed")
    parser.add_argument("--dpo-rounds", action="store_true", help="iterative DPO (2 rounds) and one round of as many steps, at each of --seeds")
    parser.add_argument("--no-run", action="store_true", help="rebuild docs/results.md from existing runs only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    if not args.no_run:
        if args.over_optimised:
            run_one("results-ppo-over-optimised-s0", 0, "ppo", OVER_OPTIMISED, kind="over-optimised")
        if args.ppo_variant:
            name, *settings = args.ppo_variant
            for seed in args.seeds:
                run_one(f"results-ppo-{name}-s{seed}", seed, "ppo", dict(parse_override(s) for s in settings), kind="ppo-variant")
        if args.rlhf_variant:
            name, *settings = args.rlhf_variant
            for seed in args.seeds:
                run_one(f"results-rlhf-ppo-{name}-s{seed}", seed, "ppo", {**rlhf_settings(), **dict(parse_override(s) for s in settings)}, kind="rlhf-variant")
        if args.dpo_sweep is not None:
            run_dpo_sweep([tuple(map(float, p.split(":"))) for p in args.dpo_sweep] or list(DPO_SWEEP), args.seeds)
        if args.dpo_rounds:
            run_dpo_rounds(args.seeds)
        if args.preference_ways is not None:
            run_preference_ways(args.preference_ways or list(PREFERENCE_WAYS), args.seeds)
        for seed in args.seeds:
            for algorithm in args.algorithms:
                run_one(f"results-{algorithm}-s{seed}", seed, algorithm)
    found = sorted(DATA.glob("results-*-s*.json"))
    summaries = [redecide(with_relevance_interval(json.loads(p.read_text(encoding="utf-8")), p)) for p in found]
    regular = sorted((s for s in summaries if s["kind"] == "regular"), key=lambda s: (ALGORITHMS.index(s["algorithm"]), s["seed"]))
    over = [s for s in summaries if s["kind"] == "over-optimised"]
    ways = [s for s in summaries if s["kind"] == "preference"]
    variants = [s for s in summaries if s["kind"] == "ppo-variant"]
    rlhf = [s for s in summaries if s["kind"] == "rlhf-variant" or (s["kind"] == "preference" and way_of(s) == "rlhf-ppo")]
    sweep = [s for s in summaries if s["kind"] == "dpo-sweep"]
    rounds = [s for s in summaries if s["kind"] == "dpo-rounds"]
    points = {(s["overrides"]["train.dpo_learning_rate"], s["overrides"]["train.dpo_beta"], s["seed"]) for s in sweep}
    t = demo_config("x", 0, "dpo").train
    for s in ways:  # DPO runs of `--preference-ways` (a default's seeds) are points of the sweep too
        point = {"train.dpo_learning_rate": t.dpo_learning_rate, "train.dpo_beta": t.dpo_beta, **s["overrides"]}
        if s["algorithm"] == "dpo" and set(point) == {"train.dpo_learning_rate", "train.dpo_beta"} and (*point.values(), s["seed"]) not in points:
            sweep.append(dict(s, overrides=point))
    sweep.sort(key=lambda s: (s["overrides"]["train.dpo_learning_rate"], s["overrides"]["train.dpo_beta"], s["seed"]))
    if not regular and not over:
        sys.exit("no results yet: run without --no-run")
    if not RESULTS.exists():
        RESULTS.write_text(HEADER, encoding="utf-8")
    base = read_record("results-base")
    manifest = base["manifest"]
    counts = {name: evaluation["judges"]["jigsaw-bilstm"]["n"] for name, evaluation in base["evaluations"].items()}
    minutes = [(s["train_seconds"] + s["eval_seconds"]) / 60 for s in regular if s["train_seconds"] is not None]
    baseline_tables = "\n\n".join(
        f"{name} ({manifest['counts']['test'] if name == 'test' else 'all'} prompts):\n\n```\n{format_evaluation(evaluation)}\n```"
        for name, evaluation in base["evaluations"].items()
    )
    write_section("baseline", f"""## Baseline: the default policy before training

`bench/results_demo.py` (`docs/results-data/results-base.json`), {measured_on([base])}: policy `smollm2-135m-instruct` on the
{manifest['counts']['test']} test prompts of `bundled:detox-prompts` split by frame ({manifest['categories']['test'].get('provocative', 0)} provocative,
{manifest['categories']['test'].get('neutral', 0)} neutral), 4 sampled responses each, and on `bundled:detox-ood`, 2 each; pure sampling,
up to 24 new tokens. Toxicity is each judge's probability that a response is toxic; "toxic" is the share above 0.5.

{baseline_tables}

Most responses are harmless, but the provoked ones often finish the insult, so the mean and the
share of toxic responses are high enough for a reduction to be measured. HateSonar gives every
short text a probability of about 0.3 of being offensive, so its mean moves less.""", path=RESULTS)
    write_section("algorithms", f"""## Detoxification: PPO, GRPO and RLOO over seeds

`bench/results_demo.py` on `configs/demo.yaml`, {measured_on(regular)}. Each run trains `smollm2-135m-instruct` (LoRA,
{regular[0]['steps'] if regular else '?'} steps) against the `jigsaw-bilstm` reward on the {manifest['counts']['train']} train prompts, whose
templates (frames) never occur in test. Every policy answers each prompt 4 times with the same per-prompt sampling
seeds as the base policy (twice on the OOD set), so the comparison is paired: "drop" is `(base - trained) / base` of mean toxicity, with
its 95% paired-bootstrap interval over prompts, one entry per seed. jigsaw-bilstm is the training reward;
profanity-check and hatesonar are judges training never saw; the gate decides on profanity-check. KL is measured on
the sampled tokens with EOS; the fluency ratio is the median perplexity of the responses under the base policy over
the base policy's own (in the runs of 2026-11-28 of the re-tokenised text; since 2026-12-06 the evaluation measures it on the
sampled ids with EOS, like the KL, which spares forward passes); distinct-2 and the repeated-3-gram share are shown with the base policy's in brackets;
relevance is the MiniLM prompt-response similarity over the base policy's. Training plus final evaluation took
{spread(minutes, '.1f') if minutes else '?'} min per run here.{reused_note(regular)}

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

    if variants:
        seed_controller = [s for s in regular if s["algorithm"] == "ppo" and s["seed"] == 0 and s["overrides"].get("train.kl_horizon") == 10000]
        write_section("ppo-kl", ppo_variants_section(variants, seed_controller, rlhf), path=RESULTS)
    if sweep:
        write_section("dpo-sweep", dpo_sweep_section(sweep), path=RESULTS)
    defaults = todays_defaults(summaries)
    if defaults:
        write_section("defaults", defaults_section(defaults), path=RESULTS)
    if rounds:
        write_section("dpo-rounds", dpo_rounds_section(rounds, defaults), path=RESULTS)
    if ways:
        write_section("preference-ways", preference_ways_section(read_record("results-preferences"), defaults), path=RESULTS)

    if regular:
        seed0 = [s for s in regular if s["seed"] == min(r["seed"] for r in regular)]
        write_section("samples", "## Ten responses drawn at random\n\n"
                      "Test prompts drawn with `random.Random(0)` from the held-out split (not chosen), the first of the 4 responses, "
                      "jigsaw-bilstm toxicity in brackets; one column per algorithm at its lowest seed.\n\n" + random_responses(base, seed0), path=RESULTS)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
