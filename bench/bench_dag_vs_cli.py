"""Orchestration overhead: the nightly run as one Airflow DAG run against the same run in one CLI process.

Both sides run the same config and overrides, each in a fresh home (own run folders and MLflow
store), one after the other in this script: `airflow dags test rlaif_nightly` in the embedded
Airflow (SQLite metadata DB, migrated beforehand and timed separately as one-time set-up) and
`rlaif nightly`. Reports the wall time of each, the ratio, and whether both reached the same
toxicity numbers. Writes the `dag_vs_cli` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_dag_vs_cli.py [--config configs/demo.yaml] [--set train.steps=5 ...] [--no-write]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict, log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(f"{shlex.join(cmd)} failed ({code}); see {log}")
    return seconds


def in_airflow_env(config: str, command: str) -> list[str]:
    return ["bash", "-c", f'source scripts/airflow_env.sh "$0" && {command}', config]


def result_of(home: Path) -> dict:
    """The nightly.json the report stage wrote in the (only) run folder of this home."""
    found = glob.glob(str(home / "runs" / "*" / "*" / "nightly.json"))
    assert len(found) == 1, found
    return json.loads(Path(found[0]).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rlaif-bench-dag-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_")) and k not in ("RLAIF_HOME", "RLAIF_DAG_CONFIG")}
    base.update(HF_HUB_OFFLINE="1", VENV=str(VENV_BIN.parent), PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    homes = {side: work / side for side in ("cli", "dag")}
    for home in homes.values():
        home.mkdir()
    env = {side: {**base, "RLAIF_HOME": str(home)} for side, home in homes.items()}

    setup = timed(in_airflow_env(args.config, "rlaif_airflow_init"), env["dag"], work / "setup.log")
    cli_cmd = [str(VENV_BIN / "rlaif"), "nightly", "--config", args.config] + [f"--set={o}" for o in args.overrides]
    conf = json.dumps({"config": args.config, "set": args.overrides})
    dag_cmd = in_airflow_env(args.config, f"exec airflow dags test rlaif_nightly -c {shlex.quote(conf)}")

    print(f"work dir {work}", flush=True)
    load = [os.getloadavg()[0]]
    cli = timed(cli_cmd, env["cli"], work / "cli.log")
    load.append(os.getloadavg()[0])
    print(f"CLI  {cli:8.1f} s", flush=True)
    dag = timed(dag_cmd, env["dag"], work / "dag.log")
    load.append(os.getloadavg()[0])
    print(f"DAG  {dag:8.1f} s   (one-time Airflow set-up before it: {setup:.1f} s)", flush=True)

    results = {side: result_of(home) for side, home in homes.items()}
    same = results["cli"]["toxicity"] == results["dag"]["toxicity"]
    ratio = dag / cli
    rows = "\n".join(
        f"| {judge} | {t['before']:.4f} -> {t['after']:.4f} | {results['dag']['toxicity'][judge]['before']:.4f} -> {results['dag']['toxicity'][judge]['after']:.4f} |"
        for judge, t in results["cli"]["toxicity"].items()
    )
    overrides = " ".join(f"--set {o}" for o in args.overrides) or "(none)"
    body = f"""## Nightly run: Airflow DAG against one CLI process

`{' '.join(['bench/bench_dag_vs_cli.py', '--config', args.config, *(f'--set {o}' for o in args.overrides)])}`; {machine()}.

The same config (overrides: {overrides}) once as `rlaif nightly` (one process) and once as
`airflow dags test rlaif_nightly` (a DAG run in the embedded Airflow, SQLite metadata DB, each of the
seven tasks recorded with its XCom), each in a fresh home with its own MLflow store.

| | wall time |
|---|---|
| `rlaif nightly` (one process) | {cli:.1f} s |
| `airflow dags test rlaif_nightly` | {dag:.1f} s |
| ratio DAG / CLI (target <= 1.15) | {ratio:.3f} |
| one-time Airflow set-up (`db migrate`, pool, login; not in the DAG time) | {setup:.1f} s |

1-minute load average before the CLI run, between the two and after the DAG run: {', '.join(f'{x:.1f}' for x in load)}
(on {os.cpu_count()} cores; other work on the machine slows both sides and blurs the ratio).
Toxicity before -> after (mean), CLI and DAG: {'identical' if same else 'different'}.

| judge | CLI | DAG |
|---|---|---|
{rows}
"""
    print(body)
    if not args.no_write:
        print(f"wrote {write_section('dag_vs_cli', body)}")


if __name__ == "__main__":
    main()
