"""One night against another, each from empty stores: `make run` and `make run SET="<the other's settings>"`, side by side.

Issue 24's rule for DPO: a DPO night as a user starts it (`make run SET="train.algorithm=dpo"`, pairs built on the way)
may take at most 1.5x a PPO night's time on the same machine. Each round runs both nights, each in a fresh home
(`RLAIF_HOME`: its own metadata DB, MLflow store and run folders, so each builds its base evaluation and, for DPO, its
pairs), the order swapped from one round to the next so that a drift in the machine's load falls on both. Per night:
`make run`'s wall time, the DAG run's and each task's running seconds (bench_nightly.py reads them from the metadata DB),
and the report's gate outcome. Writes the `night-versus` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_night_versus.py --versus train.algorithm=dpo [--rounds 2] [--set KEY=VALUE ...] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nightly import TASKS, night, refs_of, stage_rows  # noqa: E402
from common import machine, write_section  # noqa: E402


def one_night(config: str, overrides: list[str], work: Path, label: str) -> dict:
    home = work / f"home-{label}"
    home.mkdir()
    log = work / f"{label}.log"
    wall, load, run_id = night(config, overrides, home, log)
    refs = refs_of(home, run_id)
    rows, dag_wall = stage_rows(home, run_id, refs)
    report = json.loads((Path(refs["run_dir"]) / "nightly.json").read_text(encoding="utf-8"))
    said = report["text"].splitlines()
    print(f"{label}: {wall:.0f} s wall, DAG run {dag_wall:.0f} s, load {load:.1f}; {said[-1]}", flush=True)
    what = [said[0], *(line for line in said if line.startswith("DPO on ")), said[-1]]  # what trained, on what, and the outcome
    return {"wall": wall, "load": load, "dag": dag_wall, "rows": rows, "said": what}


def section(args: argparse.Namespace, rounds: list[dict]) -> str:
    base_label, other_label = "`make run`", f"`make run SET=\"{' '.join(args.versus)}\"`"
    ratios = [r["other"]["wall"] / r["base"]["wall"] for r in rounds]
    worst = max(ratios)
    lines = [
        f"## One night against another: {other_label} against {base_label}",
        "",
        f"`bench/bench_night_versus.py --config {args.config}{''.join(' --set ' + o for o in args.overrides)}"
        f"{''.join(' --versus ' + o for o in args.versus)} --rounds {args.rounds}`; {machine()}.",
        "",
        f"Both with {' '.join(args.overrides) or 'the config as it is'}. {len(rounds)} round(s); each round runs both nights, each from empty stores in a fresh home (so each builds its base "
        "policy's evaluation, and a DPO night its pairs), the order swapped every round. Wall time is `make run`'s, with the "
        "services' start and stop; the ratio is the second night's over the first's within a round.",
        "",
        f"| round | first | {base_label}: wall s (DAG run s, load) | {other_label}: wall s (DAG run s, load) | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for i, r in enumerate(rounds, 1):
        base, other = (f"{r[side]['wall']:.0f} ({r[side]['dag']:.0f}, {r[side]['load']:.1f})" for side in ("base", "other"))
        lines.append(f"| {i} | {r['first']} | {base} | {other} | {r['other']['wall'] / r['base']['wall']:.2f} |")
    lines += [
        "",
        f"Ratio over rounds: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{worst:.2f}: the rule of at most "
        f"{args.max_ratio:g}x is {'met in every round' if worst <= args.max_ratio else 'NOT met in every round'}.",
        "",
        "Where the time went, task by task (running seconds, mean over rounds):",
        "",
        f"| task | {base_label} | {other_label} |",
        "|---|---:|---:|",
    ]
    for i, task in enumerate(TASKS):
        base, other = (statistics.fmean(r[side]["rows"][i][1] for r in rounds) for side in ("base", "other"))
        lines.append(f"| `{task}` | {base:.0f} | {other:.0f} |")
    lines += ["", "What each night's report said (round 1):", "", "```"]
    for side in ("base", "other"):
        lines += [*rounds[0][side]["said"], ""]
    lines[-1] = "```"
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="both nights")
    parser.add_argument("--versus", action="append", required=True, metavar="KEY=VALUE", help="the second night's own settings")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-ratio", type=float, default=1.5)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rlaif-bench-versus-"))
    print(f"work dir {work}", flush=True)
    rounds = []
    for n in range(1, args.rounds + 1):
        order = ("base", "other") if n % 2 else ("other", "base")
        nights = {}
        for side in order:
            overrides = args.overrides + (args.versus if side == "other" else [])
            nights[side] = one_night(args.config, overrides, work, f"round{n}-{side}")
        rounds.append({**nights, "first": "`make run`" if order[0] == "base" else " ".join(args.versus)})
        body = section(args, rounds)
        print(body, flush=True)
        if not args.no_write:
            print(f"written to {write_section('night-versus', body)}")


if __name__ == "__main__":
    main()
