"""The production topology on 127.0.0.1: Postgres + Redis + CeleryExecutor + an authenticated MLflow server.

Every component is started with `scripts/service.sh COMPONENT`, the command docker/compose.yaml
runs, with its own Postgres databases (Airflow metadata + Celery results, MLflow store + users) and
its own Redis DB number, so it never touches another stack on the same servers. Used by
tests/test_celery_topology.py and bench/bench_executors.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "rlaif_nightly"
PG_ADMIN_URL = os.environ.get("RLAIF_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RLAIF_TEST_REDIS_URL", "redis://127.0.0.1:6379")
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
START_SERVERS = (
    "start PostgreSQL on 127.0.0.1:5432 (trust auth for user postgres) and Redis on 127.0.0.1:6379, "
    "or point RLAIF_TEST_PG_URL / RLAIF_TEST_REDIS_URL at them"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, what: str, timeout: float = 180) -> None:
    """Poll `url` until it answers 200, failing with the log's tail if `process` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what} did not answer within {timeout:.0f} s"
        time.sleep(1)


def servers_missing() -> str | None:
    """Why the Postgres/Redis servers cannot be used, or None when both answer."""
    import psycopg2
    import redis

    try:
        psycopg2.connect(PG_ADMIN_URL, connect_timeout=5).close()
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def _admin_sql(*statements: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_URL, connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
    finally:
        conn.close()


def _db_url(database: str, driver: str = "postgresql+psycopg2") -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].split("://", 1)[1]
    return f"{driver}://{base}/{database}"


class ProductionStack:
    """Start, use and stop the whole topology; `stop()` drops the databases and flushes the Redis DB."""

    def __init__(self, home: Path, dag_config: Path, *, redis_db: int = 11, executor: str = "CeleryExecutor", mlflow_server: bool = False,
                 db_proxy: bool = False, redis_url: str | None = None):
        """`db_proxy`: every connection of the stack to Postgres goes through a tests/tcp_proxy.py TcpProxy
        (`self.db_proxy`), so a test can take the database away from this stack only; `redis_url`: another
        broker (a private redis-server a test may kill) instead of DB `redis_db` of the shared one."""
        self.home = home
        self.dag_config = dag_config
        self.logs = home / "service-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        self.databases = [f"rlaif_test_{tag}_airflow", f"rlaif_test_{tag}_mlflow"]
        self.redis_db = redis_db
        self.redis_url = redis_url or f"{REDIS_URL}/{redis_db}"
        self.db_proxy = None
        if db_proxy:
            from tcp_proxy import TcpProxy

            admin = urlsplit(PG_ADMIN_URL)
            self.db_proxy = TcpProxy(admin.hostname or "127.0.0.1", admin.port or 5432)
        self.executor = executor
        self.api_port, self.mlflow_port = free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.mlflow_url = f"http://127.0.0.1:{self.mlflow_port}"
        self.mlflow_password = secrets.token_urlsafe(16)  # MLflow's admin: the server and `mlflow-init` only
        # The Celery shape's logins, as in docker/compose.yaml: the tasks log in to MLflow as the worker user, which
        # `mlflow-init` grants this project's experiment and models only; Airflow's FAB auth manager has admin/op/viewer.
        self.mlflow_worker = ("rlaif-worker", secrets.token_urlsafe(16))
        self.mlflow_reader = ("rlaif-reader", secrets.token_urlsafe(16))
        self.airflow_passwords = {user: secrets.token_urlsafe(12) for user in ("admin", "op", "viewer")}
        self.processes: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, tuple[str, dict]] = {}
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_")) and k not in ("RLAIF_HOME", "RLAIF_DAG_CONFIG")}
        self.env = {
            **keep,
            "VENV": str(Path(sys.executable).parent.parent),
            "RLAIF_HOME": str(home),
            "RLAIF_DAG_CONFIG": str(dag_config),
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW_PORT": str(self.api_port),
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__PARALLELISM": "4" if executor == "CeleryExecutor" else "2",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "AIRFLOW__CELERY__BROKER_URL": self.redis_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": self.db_url(self.databases[0], "db+postgresql"),
            "AIRFLOW__CELERY__DEFAULT_QUEUE": "default",
            # A killed worker's task is noticed within half a minute instead of five.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_password,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "RLAIF_SKIP_SERVE_LOGS": "1",
        }
        self.embedded = executor != "CeleryExecutor"
        self.sqlite_mlflow_server = self.embedded and mlflow_server
        if self.embedded:  # `make up`'s shape: SQLite metadata DB, tasks under the scheduler, embedded MLflow store
            self.databases = []
            drop = ("AIRFLOW__CELERY__",) if mlflow_server else ("AIRFLOW__CELERY__", "MLFLOW_")  # or a real server on a SQLite store
            for key in [k for k in self.env if k.startswith(drop)]:
                del self.env[key]
        else:
            self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.db_url(self.databases[0])
            self.env["AIRFLOW__CORE__AUTH_MANAGER"] = FAB_AUTH_MANAGER
            self.env["MLFLOW_TRACKING_USERNAME"], self.env["MLFLOW_TRACKING_PASSWORD"] = self.mlflow_worker

    def db_url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """The URL the stack's components use for `database`: through `self.db_proxy` when there is one."""
        url = _db_url(database, driver)
        if self.db_proxy is None:
            return url
        parts = urlsplit(url)
        login = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{login}{'@' if login else ''}127.0.0.1:{self.db_proxy.port}"))

    # -- processes ------------------------------------------------------------------------------

    def start(self, component: str, name: str | None = None, **env) -> subprocess.Popen:
        """`scripts/service.sh COMPONENT` in its own process group; its output goes to service-logs/NAME.log."""
        name = name or component
        log = (self.logs / f"{name}.log").open("a")
        process = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "service.sh"), component], cwd=ROOT, env={**self.env, **env},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes[name] = process
        self.commands[name] = (component, env)
        return process

    def restart(self, name: str) -> subprocess.Popen:
        """Start the component `name` again as it was started last (after a kill, or after it exited)."""
        self.processes.pop(name, None)
        component, env = self.commands[name]
        return self.start(component, name, **env)

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the component's whole process group (a worker with its running task, say)."""
        import psutil

        process = self.processes.pop(name)
        try:  # the task processes a worker forked may sit in sessions of their own
            family = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGKILL:
            for child in family:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def stop(self, name: str) -> None:
        self.kill(name, signal.SIGTERM)

    def start_all(self, *, gpu_worker: bool = True) -> None:
        """Databases, MLflow, `init`, then api-server, scheduler, dag-processor, triggerer and the workers."""
        if not self.embedded:
            _admin_sql(*(f'CREATE DATABASE "{db}"' for db in self.databases))
            import redis

            redis.Redis.from_url(self.redis_url).flushdb()
            self.start_mlflow(self.db_url(self.databases[1]))
        elif self.sqlite_mlflow_server:
            self.start_mlflow(f"sqlite:///{self.home / 'mlflow.db'}")
        logins = {} if self.embedded else {f"RLAIF_AIRFLOW_{'' if u == 'admin' else u.upper() + '_'}PASSWORD": pw for u, pw in self.airflow_passwords.items()}
        init = subprocess.run(
            ["bash", str(ROOT / "scripts" / "service.sh"), "init"], cwd=ROOT, env={**self.env, **logins}, capture_output=True, text=True, timeout=600,
        )
        assert init.returncode == 0, init.stdout[-3000:] + init.stderr[-3000:]
        if not self.embedded:
            self.mlflow_init()
        self.start("api-server")
        self.start("scheduler")
        self.start("dag-processor")
        self.start("triggerer")
        if self.executor == "CeleryExecutor":
            # The default worker takes MLflow's URI and login from an Airflow connection; its own
            # environment's password is wrong, so its tasks only work if the connection is used.
            connection = {"conn_type": "http", "host": "127.0.0.1", "port": self.mlflow_port, "schema": "http",
                          "login": self.mlflow_worker[0], "password": self.mlflow_worker[1]}
            self.start(
                "worker-default", RLAIF_WORKER_HOSTNAME="default-worker", RLAIF_MLFLOW_CONN_ID="rlaif_mlflow",
                AIRFLOW_CONN_RLAIF_MLFLOW=json.dumps(connection), MLFLOW_TRACKING_PASSWORD="not-the-password",
                MLFLOW_TRACKING_URI="http://127.0.0.1:9",
            )
            if gpu_worker:
                self.start("worker-gpu", "worker-gpu-1", RLAIF_WORKER_HOSTNAME="gpu-worker-1")
        self.wait_until(lambda: self._answers(f"{self.api_url}/api/v2/monitor/health"), 240, "the api-server")
        if not self.embedded or self.sqlite_mlflow_server:
            self.wait_until(lambda: self._answers(f"{self.mlflow_url}/health"), 240, "the MLflow server")
        self.api = self._api_client()
        self.wait_until(lambda: self.api.get(f"/dags/{DAG_ID}").status_code == 200, 300, f"the DAG {DAG_ID} to be parsed")

    @contextlib.contextmanager
    def running(self, **start):
        """The whole stack started, the DAG unpaused, and everything stopped again at the end."""
        try:
            self.start_all(**start)
            assert self.api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
            yield self
        finally:
            self.stop_all()

    def start_mlflow(self, store: str) -> subprocess.Popen:
        """`scripts/service.sh mlflow` (basic auth, artefacts served) on this stack's port; again after a kill."""
        artifacts = self.home / "mlflow-artifacts"
        artifacts.mkdir(exist_ok=True)
        self.mlflow_store = store
        return self.start(
            "mlflow", MLFLOW_BACKEND_STORE_URI=store, MLFLOW_ARTIFACTS_DESTINATION=str(artifacts), MLFLOW_PORT=str(self.mlflow_port),
            MLFLOW_AUTH_ADMIN_PASSWORD=self.mlflow_password, MLFLOW_AUTH_CONFIG_DIR=str(self.home),
            MLFLOW_FLASK_SERVER_SECRET_KEY="rlaif-test-stack",
        )

    def mlflow_init(self) -> None:
        """`scripts/service.sh mlflow-init`: the worker and reader users and their grants; the one step given the admin password."""
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "service.sh"), "mlflow-init"], cwd=ROOT, capture_output=True, text=True, timeout=600,
            env={**self.env, "MLFLOW_AUTH_ADMIN_PASSWORD": self.mlflow_password, "MLFLOW_WORKER_USERNAME": self.mlflow_worker[0],
                 "MLFLOW_WORKER_PASSWORD": self.mlflow_worker[1], "MLFLOW_READER_USERNAME": self.mlflow_reader[0], "MLFLOW_READER_PASSWORD": self.mlflow_reader[1]},
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def stop_all(self, grace: float = 5.0) -> None:
        """SIGTERM to every component at once, then SIGKILL to whatever still runs after `grace` seconds.

        One at a time, each with a minute to stop, this took 74 s in test_faults: a LocalExecutor
        scheduler can wait long on its task processes, and nothing here needs a clean stop.
        """
        import psutil

        processes = list(self.processes.values())
        self.processes.clear()
        families = {}
        for process in processes:
            try:
                families[process.pid] = psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                families[process.pid] = []
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            for child in families[process.pid]:  # task processes in sessions of their own
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        if getattr(self, "api", None) is not None:
            self.api.close()
        if self.embedded:
            return
        import redis

        if self.db_proxy is not None:
            self.db_proxy.close()
        try:
            redis.Redis.from_url(self.redis_url).flushdb()
        finally:
            _admin_sql(*(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)' for db in self.databases))

    # -- waiting and the REST API ---------------------------------------------------------------

    def wait_until(self, ready, timeout: float, what: str, every: float = 2.0):
        deadline = time.monotonic() + timeout
        while True:
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited with {process.returncode}:\n{self.log_text(name)[-3000:]}"
            value = ready()
            if value:
                return value
            assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
            time.sleep(every)

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _api_client(self, username: str = "admin") -> httpx.Client:
        """A REST client with `username`'s JWT: a user of the FAB auth manager (Celery shape), else the simple one's admin."""
        if self.env.get("AIRFLOW__CORE__AUTH_MANAGER") == FAB_AUTH_MANAGER:
            password = self.airflow_passwords[username]
        else:
            password = json.loads((self.home / "airflow" / "passwords.json").read_text())[username]
        token = httpx.post(f"{self.api_url}/auth/token", json={"username": username, "password": password}, timeout=60)
        assert token.status_code == 201, token.text
        return httpx.Client(base_url=f"{self.api_url}/api/v2", headers={"Authorization": f"Bearer {token.json()['access_token']}"}, timeout=60)

    def get(self, path: str, **params) -> dict:
        """GET from the REST API; a 5xx is asked again twice (SQLite's `database is locked` on a loaded embedded stack)."""
        for attempt in range(3):
            response = self.api.get(path, params=params)
            if response.status_code < 500:
                break
            time.sleep(2 * (attempt + 1))
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def trigger(self, conf: dict) -> str:
        response = self.api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
        assert response.status_code == 200, response.text
        return response.json()["dag_run_id"]

    def run_state(self, run_id: str) -> str:
        return self.get(f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]

    def wait_for_run(self, run_id: str, timeout: float = 900) -> str:
        return self.wait_until(
            lambda: (state := self.run_state(run_id)) in ("success", "failed") and state, timeout, f"DAG run {run_id}", every=1,
        )

    def task_instances(self, run_id: str) -> dict[str, dict]:
        return {ti["task_id"]: ti for ti in self.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]}

    def xcom(self, run_id: str, task_id: str) -> dict:
        return self.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value", deserialize=True)["value"]

    def mlflow_client(self):
        """A client holding the admin credentials (they come from MLFLOW_TRACKING_USERNAME/PASSWORD)."""
        from mlflow import MlflowClient

        os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
        os.environ["MLFLOW_TRACKING_PASSWORD"] = self.mlflow_password
        return MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)


def write_tiny_project(
    home: Path, name: str = "tiny", *, steps: int = 2, orchestration: str = "", filename: str | None = None,
    gate: str = "{judge: profanity-check, min_improvement: -1.0, require: [samples, toxicity]}",
) -> Path:
    """A tiny policy, 24 prompts and a run config that trains it in seconds; returns the config path.

    Its gate promotes any policy within the budgets on the first night, and its schedule never fires.
    Another gate (`gate`, a YAML mapping) comes from the file, as an operator would set it: a trigger cannot.
    """
    import random

    from tiny_models import WORDS, tiny_causal_lm

    policy = home / "policy"
    if not (policy / "config.json").is_file():
        tiny_causal_lm(policy)
    prompts = home / "prompts.jsonl"
    if not prompts.is_file():
        rng = random.Random(0)
        rows = [{"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))), "category": "tiny"} for _ in range(24)]
        prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = home / (filename or f"{name}.yaml")
    config.write_text(f"""
name: {name}
seed: 0
device: cpu
model: {{policy: {policy}}}
data: {{source: {prompts}, use_chat_template: false, test_size: 8, min_prompt_tokens: 1}}
generation: {{max_new_tokens: 8, min_new_tokens: 8, batch_size: 8}}
reward: {{model: profanity-check}}
evaluation: {{judges: [{{model: profanity-check}}], relevance_model: null}}
train: {{steps: {steps}, batch_size: 4, mini_batch_size: 2, save_every: 1, learning_rate: 1.0e-3, lora_target_modules: [all-linear]}}
gate: {gate}
orchestration: {{schedule: "0 0 29 2 *", retries: 1, retry_delay_minutes: 0.02, train_timeout_minutes: 10, eval_timeout_minutes: 10{orchestration}}}
""")
    return config
