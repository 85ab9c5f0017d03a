"""The promotion lease: one promotion or rollback of a registered model at a time, without trusting clocks.

The MLflow registry has no transactions and no locks, so the lease is a tag on the registered
model (`rlaif.promotion_lock`) holding a random token. Three rules make it safe while the tracking
server is slow, black-holed or restarted, and while hosts' clocks disagree:

- **A holder writes only while the lease has room for that write's retries.** MLflow's client
  retries one call for up to `client_retry_budget()` seconds (every try timing out, plus back-off).
  The lease lasts that budget plus `work_s`; the holder sends a write only within `work_s` of taking
  the lease, so every write it sends has landed or been given up before the lease ends.
- **A waiter times the lease on its own clock.** It takes the lease over only after it has seen the
  same token for a whole lease (monotonic time), never by comparing a time another host wrote. A
  holder on this host whose process is gone is seen at once.
- **Of two takers at once, one wins.** A taker writes its token, waits `settle_s` and reads it back.

Operators shorten the lease by lowering MLflow's own settings (`MLFLOW_HTTP_REQUEST_TIMEOUT`,
`MLFLOW_HTTP_REQUEST_MAX_RETRIES`), and `RLAIF_PROMOTION_WORK_S` (default 120) bounds how long
a promotion may keep writing; none of these is a config key, so no trigger can change them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
import uuid
from typing import TYPE_CHECKING

from rlaif_tasks.errors import TransientError, mlflow_not_found
from rlaif_tasks.tags import TAG_PROMOTION_LOCK

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

WORK_S_ENV = "RLAIF_PROMOTION_WORK_S"
_URLLIB3_BACKOFF_MAX = 120.0
_WRITES = ("set_", "delete_", "create_", "update_", "transition_", "rename_")


def client_retry_budget(timeout: float | None = None, retries: int | None = None, backoff_factor: float | None = None, jitter: float | None = None) -> float:
    """The longest one MLflow client call can take before it gives up, from MLflow's own settings.

    Every one of the `retries + 1` tries may time out, and urllib3 sleeps `factor * 2**(n-1)` (plus
    up to `jitter`, at most 120 s) after the n-th failure from the second on.
    """
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_BACKOFF_JITTER,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    timeout = MLFLOW_HTTP_REQUEST_TIMEOUT.get() if timeout is None else timeout
    retries = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() if retries is None else retries
    factor = MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() if backoff_factor is None else backoff_factor
    jitter = MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get() if jitter is None else jitter
    backoff = sum(min(_URLLIB3_BACKOFF_MAX, factor * 2 ** (n - 1) + jitter) for n in range(2, retries + 1))
    return float((retries + 1) * timeout + backoff)


def work_seconds() -> float:
    return float(os.environ.get(WORK_S_ENV, "120"))


def lease_seconds() -> float:
    """How long a taken lease lasts: room for one more write's retries after the holder's last write."""
    return client_retry_budget() + work_seconds()


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class FencedClient:
    """The client as a lease holder uses it: a write is sent only while the lease has room for its retries."""

    def __init__(self, client: "MlflowClient", name: str, taken_at: float, work_s: float):
        self._client, self._name, self._taken_at, self._work_s = client, name, taken_at, work_s

    def seconds_left(self) -> float:
        return self._work_s - (time.monotonic() - self._taken_at)

    def check(self) -> None:
        if self.seconds_left() <= 0:
            raise TransientError(
                f"{self._name}: the promotion lease was taken {time.monotonic() - self._taken_at:.0f} s ago, so a registry write "
                f"now might land after it ends ({WORK_S_ENV}={self._work_s:.0f}); nothing more is written, and a retry takes the lease again"
            )

    def __getattr__(self, attr: str):
        value = getattr(self._client, attr)
        if not attr.startswith(_WRITES):
            return value

        def write(*args, **kwargs):
            self.check()
            return value(*args, **kwargs)

        return write


def _holder_gone(held: str) -> bool:
    """A holder on this host whose process no longer exists; another host's holder is never judged so."""
    try:
        host, pid = held.split(" ")[1].rsplit(":", 1)
        pid = int(pid)
    except (IndexError, ValueError):
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _lease_of(held: str) -> float:
    try:
        return float(held.split(" ")[2])
    except (IndexError, ValueError):
        return 0.0


@contextlib.contextmanager
def promotion_lock(client: "MlflowClient", name: str, *, settle_s: float = 1.0, wait_s: float | None = None):
    """Hold the model's promotion lease while aliases move; yields the client to write with (a `FencedClient`).

    A waiter gives up with `TransientError` after `wait_s` (default: one lease and a minute), so
    Airflow retries it later.
    """
    from mlflow.exceptions import MlflowException

    token, lease_s, work_s = uuid.uuid4().hex, lease_seconds(), work_seconds()
    deadline = time.monotonic() + (lease_s + 60 if wait_s is None else wait_s)
    seen, seen_since = None, time.monotonic()
    while True:
        held = client.get_registered_model(name).tags.get(TAG_PROMOTION_LOCK, "")
        if held != seen:
            seen, seen_since = held, time.monotonic()
        outlived = time.monotonic() - seen_since >= max(lease_s, _lease_of(held))
        if not held or outlived or _holder_gone(held):
            if held:
                log.warning("%s: taking over the promotion lease %r (%s)", name, held, "its process is gone" if not outlived else "unchanged for a whole lease")
            taken_at = time.monotonic()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            try:
                client.set_registered_model_tag(name, TAG_PROMOTION_LOCK, f"{token} {holder_name()} {lease_s:.0f} {stamp}")
            except MlflowException as exc:  # two first writes at once can collide in the store (a UNIQUE constraint)
                if mlflow_not_found(exc):
                    raise
                log.info("the promotion lease write for %s collided with another (%s); reading who holds it", name, exc.message[:200])
            time.sleep(settle_s)
            if client.get_registered_model(name).tags.get(TAG_PROMOTION_LOCK, "").startswith(token):
                break
        if time.monotonic() > deadline:
            raise TransientError(f"{name}: another promotion holds the registry lease ({held})")
        time.sleep(settle_s * (0.5 + random.random()))
    fenced = FencedClient(client, name, taken_at, work_s)
    try:
        yield fenced
    finally:
        try:
            if client.get_registered_model(name).tags.get(TAG_PROMOTION_LOCK, "").startswith(token):
                fenced.delete_registered_model_tag(name, TAG_PROMOTION_LOCK)
        except TransientError:
            log.warning("%s: leaving the promotion lease to expire, since a release now might remove a later holder's", name)
