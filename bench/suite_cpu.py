"""Where the test suite's CPU goes: run a command, sample /proc every second, sum CPU seconds per kind of process.

`make test` is bound by the 2 cores, not by waiting: this says which processes use them (Airflow's
schedulers, api-servers, DAG processors and triggerers, the task processes, the pytest workers'
own tests, MLflow servers) and how busy the machine was, so that a change to the suite can be
aimed at what costs most. A process that lives less than a second is missed, and one sample's
share of a process that exits between samples is lost: the totals are lower bounds.

    python3 bench/suite_cpu.py --out /tmp/suite-cpu.json -- bash .ci/run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
KINDS = [  # (kind, pattern on the command line or process title), first match wins
    ("airflow task processes", r"airflow worker -- |LocalExecutor|task runner|supervisor"),
    ("airflow scheduler", r"scheduler"),
    ("airflow api-server", r"api[-_]server"),
    ("airflow dag-processor", r"dag[-_]processor"),
    ("airflow triggerer", r"triggerer"),
    ("celery workers and their tasks", r"celery"),
    ("mlflow servers", r"mlflow|uvicorn|gunicorn|huey"),
    ("pytest workers (in-process tests)", r"python -u -c import sys|xdist|execnet"),
    ("pytest controller", r"pytest"),
    ("chromium", r"chrom"),
    ("postgres and redis", r"postgres|redis"),
    ("install and lint", r"\bpip\b|\bmake\b|ruff"),
]


def kind_of(command: str, kinds: list[tuple[str, str]] = KINDS) -> str:
    for kind, pattern in kinds:
        if re.search(pattern, command):
            return kind
    return "other"


def machine_ticks() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of /proc/stat's cpu line."""
    values = list(map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]))
    return sum(values), values[3] + values[4]


def sample(seen: dict, totals: dict, first: bool, kinds: list[tuple[str, str]]) -> None:
    """Add each process's CPU since the last sample to its kind; a new one counts from 0 (it started after the last sample)."""
    alive = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            ticks, started = int(fields[11]) + int(fields[12]), fields[19]
            key = (entry, started)
            if key in seen:
                before, kind = seen[key]
            else:
                kind = kind_of(Path(f"/proc/{entry}/cmdline").read_text(errors="replace").replace("\0", " "), kinds)
                before = ticks if first else 0  # what ran before this script started is not counted
            totals[kind] += (ticks - before) / TICK
            seen[key] = (ticks, kind)
            alive.add(key)
        except (OSError, ValueError, IndexError):
            continue
    for key in set(seen) - alive:
        del seen[key]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the summary here as JSON")
    parser.add_argument("--kind", action="append", default=[], metavar="NAME=REGEX", help="a kind of its own, matched before the others")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    kinds = [tuple(k.split("=", 1)) for k in args.kind] + KINDS
    seen, totals, busy = {}, defaultdict(float), []
    started, before = time.monotonic(), machine_ticks()
    sample(seen, totals, first=True, kinds=kinds)
    process = subprocess.Popen(command)
    while process.poll() is None:
        time.sleep(1)
        sample(seen, totals, first=False, kinds=kinds)
        now = machine_ticks()
        busy.append(1 - (now[1] - before[1]) / max(1, now[0] - before[0]))
        before = now
    wall = time.monotonic() - started
    cpu = sum(totals.values())
    summary = {
        "command": command, "exit_code": process.returncode, "wall_s": round(wall, 1), "cores": os.cpu_count(),
        "busy_share": round(sum(busy) / max(1, len(busy)), 3), "cpu_s": round(cpu, 1),
        "by_kind": {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
    }
    print(f"\n{' '.join(command)}: exit {process.returncode}, {wall:.0f} s wall, machine {summary['busy_share']:.0%} busy, "
          f"{cpu:.0f} CPU s sampled", file=sys.stderr)
    for kind, seconds in summary["by_kind"].items():
        print(f"  {seconds:8.0f} s  {seconds / max(cpu, 1):5.1%}  {kind}", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as out:
            json.dump(summary, out, indent=1)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
