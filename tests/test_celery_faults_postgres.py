"""Fault injection on the production topology: Postgres away for a minute, twice (the stack: tests/celery_fault_stack.py).

Its own module, so that its four minutes run beside test_celery_faults on another worker."""

from __future__ import annotations

import pytest
from celery_fault_stack import (
    DB_OUTAGE_S,
    assert_one_clean_night,
    assert_promoted,
    inject,
    keep_running,
    log_of,
    registry_state,
    release,
    started_stack,
    task_states,
    wait_held,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.celery]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from started_stack(tmp_path_factory)


def test_postgres_unavailable_for_a_minute_during_train_and_during_promotion(stack):
    """Postgres taken away from every component for 60 s while `train` logs step 2, and again for 60 s inside the promotion (lease held, gate decided, no alias moved yet), components that exit meanwhile restarted as compose does: the night completes (retries allowed, `train` resuming from its checkpoint) with one MLflow run, one new version that is the champion and the old champion `previous`, every step logged once."""
    client = stack.mlflow_client()
    before = registry_state(client)
    inject(stack, "train.step-2", "promote.locked")
    run_id = stack.trigger({"config": str(stack.config)})
    restarted: list[str] = []
    for point in ("train.step-2", "promote.locked"):
        wait_held(stack, point, run_id, timeout=900)
        stack.db_proxy.down()  # every connection to Postgres closed, new ones refused
        release(stack, point)
        keep_running(stack, DB_OUTAGE_S, restarted)
        stack.db_proxy.up()
        keep_running(stack, 20, restarted)  # a component that gave up during the outage comes back now
    assert stack.wait_for_run(run_id) == "success", task_states(stack, run_id)
    print(f"restarted during the outages: {restarted}; task states: {task_states(stack, run_id)}")

    assert stack.db_proxy.cuts > 0
    train = stack.task_instances(run_id)["train"]["try_number"]
    if train > 1:  # the outage cost a try: the retry went on from the last checkpoint (or the finished policy), not from scratch
        assert any(line in log_of(stack, run_id, "train", train) for line in ("resuming from checkpoint", "reusing the trained policy"))
    version = assert_one_clean_night(stack, client, run_id)
    assert_promoted(client, before, [version])
