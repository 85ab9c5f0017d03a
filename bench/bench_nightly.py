"""Where a nightly run's time goes: `make run` from empty stores, then a second night on the same stores.

Each night is `scripts/run_nightly.sh` (what `make run` calls: the embedded Airflow's scheduler runs
the DAG rlaif_nightly) in one fresh home (`RLAIF_HOME`: its own metadata DB, MLflow store and run
folders), so the second night finds the first night's evaluation cache and champion. Per night:
each task's running time and queue wait from the DAG run's task instances in the metadata DB,
and inside the tasks the stages' own timings (the `seconds` of each evaluation summary, the
training steps' `time/*` metrics, the gate's KL pass); what is left of a task is loading models,
MLflow logging and process start. Writes the `nightly` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_nightly.py [--config configs/demo.yaml] [--set train.steps=5 ...] [--nights 2] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from rlaif_tasks.evaluation.cache import label_files  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent
TASKS = ("prepare_dataset", "baseline_eval", "train", "evaluate", "register", "promote_if_better", "sign_off", "report")


class LoadSampler(threading.Thread):
    """The 1-minute load average every 5 s while a night runs (other work on the 2 cores slows it)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(5):
            self.samples.append(os.getloadavg()[0])

    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else os.getloadavg()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def night(config: str, overrides: list[str], home: Path, log: Path) -> tuple[float, float, str]:
    """One `make run` in `home`: wall seconds, mean load, the DAG run id."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    env.update(RLAIF_HOME=str(home), VENV=str(VENV), AIRFLOW_PORT=str(free_port()), HF_HUB_OFFLINE="1")
    sampler = LoadSampler()
    sampler.start()
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(["bash", "scripts/run_nightly.sh", config, *overrides], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    sampler.stopped.set()
    if code != 0:
        sys.exit(f"scripts/run_nightly.sh failed ({code}); see {log}")
    run_id = next(line.split(" ", 1)[1].strip() for line in reversed(log.read_text().splitlines()) if line.startswith("DAG_RUN_ID "))
    return seconds, sampler.mean(), run_id


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def task_times(home: Path, run_id: str) -> tuple[dict[str, dict], float]:
    """Per task: running seconds and queued -> running seconds; and the DAG run's wall time (from the metadata DB)."""
    db = sqlite3.connect(home / ".airflow" / "airflow.db")
    start, end = db.execute("SELECT start_date, end_date FROM dag_run WHERE dag_id = 'rlaif_nightly' AND run_id = ?", (run_id,)).fetchone()
    tasks = {}
    for task, queued, began, ended in db.execute(
        "SELECT task_id, queued_dttm, start_date, end_date FROM task_instance WHERE dag_id = 'rlaif_nightly' AND run_id = ?", (run_id,)
    ):
        began, ended, queued = _when(began), _when(ended), _when(queued)
        tasks[task] = {"running": (ended - began).total_seconds(), "queued": (began - queued).total_seconds() if queued else 0.0}
    db.close()
    return tasks, (_when(end) - _when(start)).total_seconds()


def _seconds(summary_path: Path) -> dict[str, float]:
    return json.loads(summary_path.read_text())["seconds"] if summary_path.is_file() else {}


def evaluation_phases(run_dir: Path, label: str) -> dict[str, float]:
    """Generation, judges, fluency and relevance of one evaluation, summed over the test split and the extra sets."""
    phases: dict[str, float] = {}
    for path in (p for p in label_files(run_dir / "eval", label) if p.suffix == ".json"):
        for name, value in _seconds(path).items():
            phase = "judges" if name.startswith("judge/") else name
            phases[phase] = phases.get(phase, 0.0) + value
    order = ["generate", "judges", "fluency", "relevance"]
    return dict(sorted(phases.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def training_phases(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    phases = {}
    for key in ("generate", "score", "update"):
        values = [r[f"time/{key}"] for r in rows if r.get(f"time/{key}") is not None]
        if values:
            phases[key] = sum(values)
    phases["steps"] = len(rows)
    return phases


def stage_rows(home: Path, run_id: str, refs: dict) -> tuple[list[tuple[str, float, float, str]], float]:
    tasks, dag_wall = task_times(home, run_id)
    run_dir = Path(refs["run_dir"])
    cached = refs.get("baseline_source") == "cache"
    kl = json.loads((run_dir / "gate" / "kl.json").read_text()).get("seconds") if (run_dir / "gate" / "kl.json").is_file() else None
    inside = {
        "baseline_eval": {} if cached else evaluation_phases(run_dir, "baseline"),
        "train": training_phases(run_dir),
        "evaluate": evaluation_phases(run_dir, "final"),
        "promote_if_better": {"KL": kl} if kl is not None else {},
    }
    rows = []
    for task in TASKS:
        t = tasks.get(task, {"running": float("nan"), "queued": float("nan")})
        phases = inside.get(task, {})
        steps = phases.pop("steps", None)
        parts = [f"{name} {value:.0f}" for name, value in phases.items()]
        rest = t["running"] - sum(phases.values())
        if task == "baseline_eval" and cached:
            parts = ["evaluation cache hit"]
        elif parts:
            parts.append(f"rest {rest:.0f}")
        if steps:
            parts.insert(0, f"{steps} steps:")
        rows.append((task, t["running"], t["queued"], " · ".join(parts)))
    return rows, dag_wall


def refs_of(home: Path, run_id: str) -> dict:
    """The refs `baseline_eval` returned (its XCom in the metadata DB): the run folder and where the baseline came from."""
    db = sqlite3.connect(home / ".airflow" / "airflow.db")
    (value,) = db.execute(
        "SELECT value FROM xcom WHERE dag_id = 'rlaif_nightly' AND run_id = ? AND task_id = 'baseline_eval' AND key = 'return_value'", (run_id,)
    ).fetchone()
    db.close()
    refs = json.loads(value)
    return json.loads(refs) if isinstance(refs, str) else refs


def replaced_passes(config_path: str, overrides: list[str], home: Path, first_run_dir: Path, last_run_dir: Path) -> list[str]:
    """The forward passes the evaluation's recorded log-probabilities replaced, timed on these nights' own samples.

    Before: the gate measured KL by running the challenger and the base policy over the challenger's
    final samples, and the base policy's evaluation ran it again over its own samples for fluency
    (on the re-tokenised text). Now both come from log-probabilities the evaluation already has.
    """
    import pandas as pd

    from rlaif_tasks.config import load_config, parse_override
    from rlaif_tasks.evaluation.kl import sampled_token_kl
    from rlaif_tasks.evaluation.quality import response_perplexities
    from rlaif_tasks.evaluation.runner import load_policy
    from rlaif_tasks.models import load_model

    os.environ["RLAIF_HOME"] = str(home)
    config = load_config(config_path, dict(parse_override(o) for o in overrides))
    base = load_policy(config)
    challenger = load_model(str(last_run_dir / "train" / "final"), kind="auto", dtype=config.model.dtype)
    final = pd.read_parquet(last_run_dir / "eval" / "final_samples.parquet")
    batch = config.evaluation.batch_size
    start = time.perf_counter()
    forward = sampled_token_kl(challenger.model, base.model, challenger.tokenizer, final["query"].tolist(), [list(i) for i in final["response_ids"]],
                               temperature=config.generation.sampling_temperature, batch_size=batch)
    kl_seconds = time.perf_counter() - start
    recorded = json.loads((last_run_dir / "gate" / "kl.json").read_text())
    baseline = [pd.read_parquet(p) for p in label_files(first_run_dir / "eval", "baseline") if p.suffix == ".parquet"]
    start = time.perf_counter()
    for samples in baseline:
        response_perplexities(base.model, base.tokenizer, samples["query"].tolist(), samples["response"].tolist(), batch_size=batch)
    fluency_seconds = time.perf_counter() - start
    rows = sum(len(s) for s in baseline)
    return [
        "",
        "What the recorded log-probabilities replaced (`promote_if_better`'s KL pass, `baseline_eval`'s fluency pass), timed "
        "after the nights in this process on the same machine and the nights' own samples (the baseline: the code before 2026-12-06):",
        "",
        "| pass | before: forward passes, s | now, s | result |",
        "|---|---:|---:|---|",
        f"| gate KL, challenger and base policy over the last night's {len(final)} final samples | {kl_seconds:.0f} | {recorded['seconds']:.1f} | "
        f"KL {forward['kl']:.4f} by forward passes, {recorded['kl']:.4f} recorded |",
        f"| base policy's fluency over its own {rows} samples (test split and extra sets) | {fluency_seconds:.0f} | 0 | "
        "now from its sampling logits (on the sampled ids) |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--nights", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rlaif-bench-nightly-"))
    home = work / "home"
    home.mkdir()
    print(f"work dir {work}", flush=True)
    nights, run_dirs = [], []
    for n in range(1, args.nights + 1):
        wall, load, run_id = night(args.config, args.overrides, home, work / f"night-{n}.log")
        refs = refs_of(home, run_id)
        run_dirs.append(Path(refs["run_dir"]))
        rows, dag_wall = stage_rows(home, run_id, refs)
        nights.append({"wall": wall, "load": load, "dag": dag_wall, "rows": rows})
        print(f"night {n}: {wall:.0f} s wall, DAG run {dag_wall:.0f} s, load {load:.1f}", flush=True)

    lines = [
        "## A nightly run, stage by stage: first night and a second night on the same stores",
        "",
        f"`bench/bench_nightly.py --config {args.config}{''.join(' --set ' + o for o in args.overrides)}`; {machine()}.",
        "",
        f"{args.nights} night(s) of `make run` (scripts/run_nightly.sh: the embedded Airflow, LocalExecutor, SQLite) in one fresh "
        "home, one after the other. The first starts from empty stores; later ones find the base policy's evaluation in the "
        "evaluation cache (evaluation/cache.py) and the first night's champion for the gate. Running and queued seconds are read "
        "from the DAG run's task instances in the metadata DB; the phases inside a task from the stages' own timings (each "
        "evaluation's `seconds`, summed over the test split and the extra sets; the training steps' `time/*`, where `update` includes the no-grad forwards for old log-probs, values and the reference; the gate's KL pass); "
        "`rest` is loading models, MLflow logging and process start.",
        "",
        "| task | " + " | ".join(f"night {i + 1}: running s (queued s) | night {i + 1}: inside the task, s" for i in range(len(nights))) + " |",
        "|---|" + "---:|---|" * len(nights),
    ]
    for i, task in enumerate(TASKS):
        cells = [f"{night['rows'][i][1]:.0f} ({night['rows'][i][2]:.1f}) | {night['rows'][i][3]}" for night in nights]
        lines.append(f"| `{task}` | " + " | ".join(cells) + " |")
    tasks_sum = [sum(r[1] for r in night["rows"]) for night in nights]
    lines.append("| Airflow between tasks (DAG run wall - task running time) | " + " | ".join(f"{night['dag'] - s:.0f} | " for night, s in zip(nights, tasks_sum)) + " |")
    lines.append("| **DAG run** | " + " | ".join(f"**{night['dag']:.0f}** | " for night in nights) + " |")
    lines.append("| **`make run` wall** (with services' start and stop) | " + " | ".join(f"**{night['wall']:.0f}** ({night['wall'] / 60:.1f} min) | " for night in nights) + " |")
    lines.append("| mean 1-minute load average on the cores meanwhile | " + " | ".join(f"{night['load']:.1f} | " for night in nights) + " |")
    for final in (False, True):  # the nights' table is written before the replaced passes run, in case they fail
        if final:
            lines += replaced_passes(args.config, args.overrides, home, run_dirs[0], run_dirs[-1])
        body = "\n".join(lines)
        print(body)
        if not args.no_write:
            print(f"written to {write_section('nightly', body)}")


if __name__ == "__main__":
    main()
