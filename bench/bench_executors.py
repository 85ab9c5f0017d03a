"""The same tiny-config nightly run on the embedded LocalExecutor (SQLite) and on Celery + Postgres + Redis, cold and warm.

Both topologies are started with scripts/service.sh by tests/production_stack.py (the Celery one
with an authenticated MLflow server on Postgres, the embedded one with MLflow's SQLite store), one
after the other, and run `rounds` DAG runs each on the tiny policy, so the numbers are Airflow's
overhead rather than training. Each topology runs twice: cold (RLAIF_PRELOAD empty: every task
process imports torch, transformers, mlflow & co. itself, as before rlaif_tasks/warm_start.py; the
baseline) and warm (the default: the scheduler or worker imported them before forking the task).
Per task: queued -> running (the executor's pick-up delay) and running time; per run: the DAG
run's wall time. Writes the `executors` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_executors.py [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_section  # noqa: E402
from production_stack import ProductionStack, servers_missing, write_tiny_project  # noqa: E402

STAGES = ["prepare_dataset", "baseline_eval", "train", "evaluate", "register", "promote_if_better", "report"]


def seconds(a: str | None, b: str | None) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def measure(executor: str, rounds: int, warm: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{executor}-") as tmp:
        home = Path(tmp)
        config = write_tiny_project(home)
        stack = ProductionStack(home, config, executor=executor, redis_db=12)
        if warm:
            stack.env.pop("RLAIF_PRELOAD", None)
        else:
            stack.env["RLAIF_PRELOAD"] = ""
        started = time.monotonic()
        try:
            stack.start_all()
            startup = time.monotonic() - started
            stack.api.patch("/dags/rlaif_nightly", json={"is_paused": False})
            walls, pickups, gaps, tasks = [], [], [], {}
            for _ in range(rounds):
                run_id = stack.trigger({"config": str(config)})
                assert stack.wait_for_run(run_id) == "success", stack.task_instances(run_id)
                run = stack.get(f"/dags/rlaif_nightly/dagRuns/{run_id}")
                walls.append(seconds(run["start_date"], run["end_date"]))
                tis = stack.task_instances(run_id)
                for before, after in zip(STAGES, STAGES[1:]):
                    gaps.append(seconds(tis[before]["end_date"], tis[after]["start_date"]))
                for task in STAGES:
                    ti = tis[task]
                    pickup = seconds(ti["queued_when"], ti["start_date"])
                    pickups.append(pickup)
                    tasks.setdefault(task, []).append((pickup, seconds(ti["start_date"], ti["end_date"])))
        finally:
            stack.stop_all()
    return {"startup": startup, "walls": walls, "pickups": pickups, "gaps": gaps, "tasks": tasks}


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    missing = servers_missing()
    if missing:
        sys.exit(f"Postgres and Redis are needed for the Celery side: {missing}")
    results = {}
    for name, executor in (("LocalExecutor, SQLite", "LocalExecutor"), ("Celery, Postgres + Redis", "CeleryExecutor")):
        for start, warm in (("cold (baseline)", False), ("warm", True)):
            results[f"{name}, {start}"] = measure(executor, args.rounds, warm)
    local_cold, local, celery_cold, celery = results.values()
    ratio = statistics.mean(celery["walls"]) / statistics.mean(local["walls"])
    warm_gain = {name: statistics.mean(cold["walls"]) / statistics.mean(hot["walls"]) for name, cold, hot in (("LocalExecutor", local_cold, local), ("Celery", celery_cold, celery))}
    lines = [
        "## Scheduling overhead: embedded LocalExecutor against Celery + Postgres + Redis",
        "",
        f"`bench/bench_executors.py --rounds {args.rounds}`, {machine()}. The tiny config of the tests (a 2-layer "
        "policy, 2 PPO steps, 8 test prompts), so the run is mostly Airflow: each topology is started with "
        "`scripts/service.sh` (tests/production_stack.py), then runs the DAG that many times in a row. "
        "Celery: two workers (`default`, `gpu`) and an MLflow server with basic auth on Postgres; "
        "embedded: the scheduler runs the tasks and MLflow writes to SQLite. Cold: `RLAIF_PRELOAD=` (empty), so every task "
        "process imports torch, transformers, mlflow & co. itself (the baseline, as before the warm start); warm: the default, "
        "the scheduler or Celery worker imported them before forking the task process (rlaif_tasks/warm_start.py). "
        "Mean (min-max) over the runs.",
        "",
        "| | startup (s) | DAG run wall time (s) | task end -> next task running (s) | queued -> running, per task (s) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['startup']:.0f} | {spread(r['walls'])} | {spread(r['gaps'])} | {spread(r['pickups'])} |")
    lines += [
        "",
        f"Warm over cold, DAG run wall time: **{warm_gain['LocalExecutor']:.1f}x faster** on the LocalExecutor, "
        f"**{warm_gain['Celery']:.1f}x** on Celery. Celery over embedded (both warm), whole run: **{ratio:.2f}x**. "
        "Per task, queued -> running / running time (s), mean over the runs:",
        "",
        "| task | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for task in STAGES:
        cells = [f"{statistics.mean(p for p, _ in r['tasks'][task]):.1f} / {statistics.mean(d for _, d in r['tasks'][task]):.1f}" for r in results.values()]
        lines.append(f"| `{task}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "A task's running time includes its process start (the Task SDK supervisor, and cold, the imports) and, on Celery, every "
        "MLflow call going over HTTP with a login to the server instead of into a local SQLite file: `register` "
        "uploads the policy through the server. "
        "On a GPU night the tasks run for minutes to hours, so a few seconds of pick-up per task is noise; "
        "what the Celery set-up buys is GPU tasks on GPU hosts, the `gpu` pool across them and workers that "
        "can die and be replaced (tests/test_celery_topology.py).",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        print("wrote", write_section("executors", body))


if __name__ == "__main__":
    main()
