"""The production topology under faults, for test_celery_faults (the scheduler, Redis, then Postgres, on one stack).

The stack of tests/test_celery_topology.py (CeleryExecutor, Postgres, Redis, an authenticated MLflow
server, each component started by `scripts/service.sh`), with two differences so that this module
can break its servers without touching what other tests share: every Postgres connection of the
stack (Airflow's metadata DB, Celery's results, MLflow's store and users) goes through a TCP proxy
(tests/tcp_proxy.py) that closes them all and refuses new ones, as a database restart does; and the
Celery broker is a private `redis-server` without persistence, SIGKILLed and started again for real.
Tasks are held at the fault points of rlaif_tasks/faults.py while a fault is injected. Each
scenario asserts what a night must end with: the DAG run a success, one MLflow run, one new model
version that is the champion (the one before it `previous`), each training step logged once.
Outside CI a missing server skips this module with one line; in CI (`CI=true`) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from production_stack import START_SERVERS, ProductionStack, free_port, servers_missing, write_tiny_project

NAME = "cfaults"
MODEL = f"rlaif-{NAME}-policy"
STEPS = 4
DB_OUTAGE_S = 60


class RedisServer:
    """A private `redis-server` on 127.0.0.1 without persistence: a SIGKILL loses what it held, as a crashed Redis does."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
            stdout=(self.folder / "redis.log").open("a"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return
            except redis.ConnectionError:
                assert self.process.poll() is None and time.monotonic() < deadline, (self.folder / "redis.log").read_text()
                time.sleep(0.2)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)


def started_stack(tmp_path_factory):
    """The stack, started, for a module-scoped fixture to yield from (skipped, or failed in CI, without its servers)."""
    missing = servers_missing() or (None if shutil.which("redis-server") else "no redis-server on PATH")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the Celery fault scenarios, but the servers do not answer ({missing}): {START_SERVERS}, with redis-server on PATH")
        pytest.skip(f"{START_SERVERS}, with redis-server on PATH ({missing})")
    home = tmp_path_factory.mktemp("celery_faults_home")
    # Every gate passes (no required checks), so every night moves the aliases; two runs may be active at once.
    config = write_tiny_project(home, name=NAME, steps=STEPS, orchestration=", max_active_runs: 2",
                                gate="{judge: profanity-check, min_improvement: -1.0, require: []}")
    (home / "redis").mkdir()
    redis_server = RedisServer(home / "redis")
    stack = ProductionStack(home, config, db_proxy=True, redis_url=redis_server.url)
    stack.config, stack.redis_server = config, redis_server
    stack.faults = home / "faults"
    stack.faults.mkdir()
    stack.env.update(
        RLAIF_FAULTS_DIR=str(stack.faults),
        # A task whose Celery message a Redis crash lost stays `queued` until the scheduler gives up
        # on it and queues it again: after [scheduler] task_queued_timeout, 600 s by default, checked
        # every task_queued_timeout_check_interval (120 s). Shortened so that the test need not wait
        # ten minutes; docs/orchestration.md says what to set in production.
        AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="40",
        AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL="10",
    )
    try:
        with stack.running():
            yield stack
    finally:
        redis_server.kill()


# -- holding a task at a fault point while the test breaks something ---------------------------------


def inject(stack, *points: str) -> None:
    """Hold the next task that reaches each of these points until the test releases it; earlier markers are cleared."""
    for marker in stack.faults.iterdir():
        marker.unlink()
    (stack.faults / "spec").write_text(",".join(f"{point}=hold" for point in points))


def wait_held(stack, point: str, run_id: str, timeout: float = 600) -> None:
    stack.wait_until(lambda: (stack.faults / f"{point}.held").exists() or stack.run_state(run_id) in ("success", "failed") and "ended",
                     timeout, f"a task to hold at {point}", every=1)
    assert (stack.faults / f"{point}.held").exists(), f"run {run_id} ended as {stack.run_state(run_id)} before reaching {point}"


def release(stack, point: str) -> None:
    (stack.faults / f"{point}.release").write_text("")


def keep_running(stack, seconds: float, restarted: list[str]) -> None:
    """For `seconds`, start again any component that exits, as `restart: unless-stopped` does in docker/compose.yaml; its name goes to `restarted`.

    Nothing here calls the REST API, which cannot answer while its database is away.
    """
    end, not_before = time.monotonic() + seconds, {}
    while time.monotonic() < end:
        for name, process in list(stack.processes.items()):
            if process.poll() is not None and time.monotonic() >= not_before.get(name, 0):
                restarted.append(f"{name} (exit {process.returncode})")
                stack.restart(name)
                not_before[name] = time.monotonic() + min(2 ** restarted.count(restarted[-1]), 16)  # back off, as compose does
        time.sleep(1)


def queued_messages(broker: RedisServer, queue: str = "default") -> int:
    """Messages waiting in the broker's `queue` (kombu keeps one Redis list per queue and priority)."""
    client = broker.client()
    return sum(client.llen(key) for key in client.scan_iter(f"{queue}*") if client.type(key) == b"list")


# -- what every night must end with -------------------------------------------------------------


def registry_state(client) -> tuple[dict[str, str], dict[str, str]]:
    """(aliases, status tag of each version) of the policy's registered model; empty before the first night."""
    if not client.search_registered_models(f"name = '{MODEL}'"):
        return {}, {}
    aliases = {alias: str(version) for alias, version in client.get_registered_model(MODEL).aliases.items()}
    return aliases, {str(v.version): v.tags.get("rlaif.status", "") for v in client.search_model_versions(f"name = '{MODEL}'")}


def assert_one_clean_night(stack, client, run_id: str) -> str:
    """One FINISHED MLflow run, each training step logged once, one READY logged model and one version of it; returns the version."""
    experiment = client.get_experiment_by_name(f"rlaif-{NAME}")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`rlaif.dag_run_id` = '{run_id}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED" and "rlaif.failure" not in run.data.tags, (run.info.status, run.data.tags.get("rlaif.failure"))
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/reward/mean")]
    assert sorted(steps) == list(range(1, STEPS + 1)), steps
    rows = (Path(stack.xcom(run_id, "report")["run_dir"]) / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == STEPS, rows
    logged = client.search_logged_models([experiment.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [str(m.status).rsplit(".", 1)[-1] for m in logged].count("READY") == 1, [(m.model_id, m.status) for m in logged]
    versions = [str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'") if v.run_id == run.info.run_id]
    assert len(versions) == 1, versions
    return versions[0]


def assert_promoted(client, before: tuple[dict, dict], new_versions: list[str]) -> None:
    """These versions, and no others, were added (in the order they were promoted): the last is champion, the one promoted before it `previous`."""
    (aliases_before, statuses_before), (aliases, statuses) = before, registry_state(client)
    assert sorted(set(statuses) - set(statuses_before), key=int) == sorted(new_versions, key=int), (statuses_before, statuses)
    champion, previous = ([aliases_before.get("champion")] + new_versions)[-1:-3:-1]
    assert aliases.get("champion") == champion and aliases.get("previous") == previous, (aliases, new_versions, aliases_before)
    assert statuses[champion] == "champion" and (previous is None or statuses[previous] == "previous"), statuses


def task_states(stack, run_id: str) -> dict[str, tuple[str, int]]:
    return {task: (ti["state"], ti["try_number"]) for task, ti in stack.task_instances(run_id).items()}


def log_of(stack, run_id: str, task: str, attempt: int) -> str:
    found = list((stack.home / "airflow" / "logs").glob(f"dag_id=rlaif_nightly/run_id={run_id}/task_id={task}/attempt={attempt}.log"))
    return found[0].read_text(errors="replace") if found else ""


# -- the scenarios ------------------------------------------------------------------------------------
