"""The promotion lease (rlaif_tasks/lease.py) on a real MLflow store: who may take it, when, and what a late holder may still write."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from mlflow.exceptions import MlflowException

from mlflow import MlflowClient
from rlaif_tasks import lease
from rlaif_tasks.errors import TransientError
from rlaif_tasks.tags import TAG_PROMOTION_LOCK

pytestmark = pytest.mark.faults


@pytest.fixture
def client(tmp_path, monkeypatch):
    """A SQLite store, and an MLflow client whose every call gives up within a second: the lease is 1 + 1 s."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv(lease.WORK_S_ENV, "1")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    client.create_registered_model("m")
    return client


def holder(client) -> str:
    return client.get_registered_model("m").tags.get(TAG_PROMOTION_LOCK, "")


def test_mlflow_clients_retry_budget_is_what_a_black_holed_call_takes():
    """A call to a server that accepts and never answers gives up after the budget computed from MLflow's settings (1 s timeout, 2 retries, back-off factor 1: 3 + 2 s)."""
    silent = socket.create_server(("127.0.0.1", 0))
    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}
    uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
    call = f"from mlflow import MlflowClient; MlflowClient(tracking_uri='{uri}', registry_uri='{uri}').get_registered_model('m')"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", call], env={**clean, **env}, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    silent.close()
    assert done.returncode != 0 and "Max retries exceeded" in done.stderr
    budget = lease.client_retry_budget(timeout=1, retries=2, backoff_factor=1, jitter=0)
    assert budget == 5.0
    assert budget - 0.2 < took < budget + 8, took  # the rest is the interpreter starting and importing MLflow
    assert lease.client_retry_budget(timeout=120, retries=7, backoff_factor=2, jitter=1) == 8 * 120 + 5 + 9 + 17 + 33 + 65 + 120


def test_a_lease_from_another_host_is_waited_out_on_the_waiters_own_clock(client):
    """A lease whose written time is 26 years old, held by another host: the waiter still waits a whole lease (2 s) of its own clock from when it first saw it, then takes it over."""
    client.set_registered_model_tag("m", TAG_PROMOTION_LOCK, "someone elsewhere:1 2 2000-01-01T00:00:00Z")
    with pytest.raises(TransientError, match="another promotion holds"):
        with lease.promotion_lock(client, "m", settle_s=0.05, wait_s=1.0):
            pass
    started = time.monotonic()
    with lease.promotion_lock(client, "m", settle_s=0.05):
        assert not holder(client).startswith("someone")
        assert time.monotonic() - started >= 2.0
    assert holder(client) == ""


def test_a_lease_whose_process_on_this_host_is_gone_is_taken_at_once(client):
    """A lease of 9,999 s held by a process of this host that has exited is taken at once; one held by a live process is not."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client.set_registered_model_tag("m", TAG_PROMOTION_LOCK, f"dead {socket.gethostname()}:{gone.pid} 9999 2026-01-01T00:00:00Z")
    started = time.monotonic()
    with lease.promotion_lock(client, "m", settle_s=0.05, wait_s=5):
        assert holder(client).split(" ")[1] == lease.holder_name()
    assert time.monotonic() - started < 2.0
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        client.set_registered_model_tag("m", TAG_PROMOTION_LOCK, f"live {socket.gethostname()}:{alive.pid} 9999 2026-01-01T00:00:00Z")
        with pytest.raises(TransientError):
            with lease.promotion_lock(client, "m", settle_s=0.05, wait_s=1.0):
                pass
    finally:
        alive.kill()


def test_a_holder_past_its_time_writes_nothing_more_and_leaves_the_lease_to_expire(client, caplog):
    """A holder held up past its writing time (1 s) is refused its next write before it is sent, and does not release the lease, which a later holder may hold by then."""
    with pytest.raises(TransientError, match="nothing more is written"):
        with lease.promotion_lock(client, "m", settle_s=0.05) as fenced:
            fenced.set_registered_model_tag("m", "before", "1")
            time.sleep(1.1)
            fenced.set_registered_model_tag("m", "after", "1")
    tags = client.get_registered_model("m").tags
    assert tags["before"] == "1" and "after" not in tags
    assert tags[TAG_PROMOTION_LOCK].split(" ")[1] == lease.holder_name()
    assert "leaving the promotion lease to expire" in caplog.text


def test_two_first_writes_colliding_in_the_store_leave_one_holder(client):
    """The store refuses our first lease write on its unique key because another taker wrote at the same instant: that taker holds the lease, and we wait it out."""
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    real_set = client.set_registered_model_tag
    collisions = []

    def colliding_set(model, key, value):
        if key == TAG_PROMOTION_LOCK and not collisions:
            collisions.append(value)
            real_set(model, key, "other elsewhere:2 1 2026-01-01T00:00:00Z")
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_tags.key", error_code=BAD_REQUEST)
        return real_set(model, key, value)

    client.set_registered_model_tag = colliding_set
    started = time.monotonic()
    with lease.promotion_lock(client, "m", settle_s=0.05, wait_s=10):
        assert not holder(client).startswith("other")
    assert collisions and time.monotonic() - started >= 2.0  # the other's lease, timed by us


def test_of_two_threads_taking_the_lease_one_holds_it_at_a_time(client):
    """Two takers in a loop, each appending to a shared list inside the lease: the enter/leave marks never interleave."""
    marks: list[str] = []

    def taker(who: str) -> None:
        for _ in range(3):
            with lease.promotion_lock(client, "m", settle_s=0.2, wait_s=30):
                marks.append(f"{who}+")
                time.sleep(0.1)
                marks.append(f"{who}-")

    threads = [threading.Thread(target=taker, args=(w,)) for w in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(marks) == 12
    assert all(marks[i][0] == marks[i + 1][0] and marks[i].endswith("+") for i in range(0, 12, 2)), marks
