"""Fault injection on the production topology, one stack for three scenarios in turn: the scheduler SIGKILLed, Redis killed,
Postgres away for a minute, twice (the stack: tests/celery_fault_stack.py)."""

from __future__ import annotations

import time

import pytest
from celery_fault_stack import (
    DB_OUTAGE_S,
    assert_one_clean_night,
    assert_promoted,
    inject,
    keep_running,
    log_of,
    queued_messages,
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


def test_scheduler_sigkilled_and_restarted_during_train(stack):
    """The scheduler SIGKILLed while `train` runs (step 2 of 4) on the gpu worker, and started again once its job is overdue (so that the new one adopts the orphaned `train`, as its periodic check would during a long training): the night completes with `train` run once, adopted not reset, one MLflow run, one new version that is the champion, every step logged once."""
    client = stack.mlflow_client()
    before = registry_state(client)
    inject(stack, "train.step-2")
    run_id = stack.trigger({"config": str(stack.config)})
    wait_held(stack, "train.step-2", run_id)
    assert stack.task_instances(run_id)["train"]["state"] == "running"
    stack.kill("scheduler")
    time.sleep(35)  # [scheduler] scheduler_health_check_threshold (30 s): then the killed scheduler's job counts as dead
    offset = len(stack.log_text("scheduler"))
    stack.restart("scheduler")
    stack.wait_until(lambda: "Marked 1 SchedulerJob instances as failed" in stack.log_text("scheduler")[offset:],
                     180, "the restarted scheduler to find the killed one's job dead", every=1)
    assert stack.task_instances(run_id)["train"]["state"] == "running"
    release(stack, "train.step-2")
    assert stack.wait_for_run(run_id) == "success", task_states(stack, run_id)

    assert task_states(stack, run_id)["train"] == ("success", 1)
    assert "Reset the following" not in stack.log_text("scheduler")[offset:]
    assert "resuming from checkpoint" not in log_of(stack, run_id, "train", 1)
    version = assert_one_clean_night(stack, client, run_id)
    assert_promoted(client, before, [version])


def test_redis_killed_with_a_task_queued_and_one_running(stack):
    """The broker SIGKILLed (no persistence: its messages are gone) and started again while one night's `train` runs and another's `prepare_dataset` waits in the queue: both nights complete, the lost task queued again, `train` run once, each night with one MLflow run, one new version and every step logged once; the later promotion is champion, the earlier `previous`."""
    client = stack.mlflow_client()
    before = registry_state(client)
    broker = stack.redis_server
    inject(stack, "train.step-2")
    running = stack.trigger({"config": str(stack.config)})
    wait_held(stack, "train.step-2", running)
    stack.stop("worker-default")  # so that the next night's first task stays in the queue
    queued = stack.trigger({"config": str(stack.config)})
    stack.wait_until(lambda: stack.task_instances(queued).get("prepare_dataset", {}).get("state") == "queued" and queued_messages(broker) == 1,
                     120, "prepare_dataset of the second night to wait in the broker's queue")
    assert stack.task_instances(running)["train"]["state"] == "running"

    broker.kill()
    broker.start()
    assert queued_messages(broker) == 0  # the queued message is lost
    stack.restart("worker-default")
    release(stack, "train.step-2")
    assert [stack.wait_for_run(r) for r in (running, queued)] == ["success", "success"], [task_states(stack, r) for r in (running, queued)]

    assert task_states(stack, running)["train"] == ("success", 1)
    assert f"Task stuck in queued; will try to requeue. task_instance=<TaskInstance: rlaif_nightly.prepare_dataset {queued} [queued]" in stack.log_text("scheduler")
    versions = {r: assert_one_clean_night(stack, client, r) for r in (running, queued)}
    promoted = sorted(versions, key=lambda r: stack.task_instances(r)["promote_if_better"]["end_date"])
    assert_promoted(client, before, [versions[r] for r in promoted])


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
