"""Fault injection, a chain of nights on one model: nothing lost, duplicated or wrongly promoted when processes and servers fail.

The stack is tests/fault_stack.py's. Each scenario here builds on the versions the earlier ones
registered; scenarios that need no earlier night are in test_faults_standalone, which runs at the
same time on another worker. `make faults` runs every `faults` scenario and writes docs/reliability.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fault_stack import MODEL, SECRET, STAGES, aliases, fired, inject, mlflow_runs, run_with_mlflow_outages, started_stack, statuses, task_log

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from started_stack(tmp_path_factory)


def test_sigkill_in_each_of_the_eight_tasks_is_retried_without_loss_or_duplication(stack):
    """Every task's process SIGKILLed once (train after step 2 of 4, the others after their work, before Airflow records it): the scheduler's retries finish the night with one MLflow run, one version, the right aliases, training resumed from its checkpoint, each step logged once and no secret anywhere."""
    inject(stack, **{f"{task}.end": "kill" for task in STAGES if task != "train"}, **{"train.step-2": "kill"})
    run_id = stack.trigger({"config": str(stack.config)})
    stack.first_night = run_id
    assert stack.wait_for_run(run_id) == "success", {k: v["state"] for k, v in stack.task_instances(run_id).items()}
    assert fired(stack) == {f"{task}.end" for task in STAGES if task != "train"} | {"train.step-2"}

    tis = stack.task_instances(run_id)
    assert {task: ti["try_number"] for task, ti in tis.items()} == {task: 2 for task in STAGES}
    assert "resuming from checkpoint" in task_log(stack, run_id, "train", 2)
    client = stack.mlflow_client()
    [run] = mlflow_runs(client, run_id)
    assert run.info.status == "FINISHED" and "rlaif.failure" not in run.data.tags
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    assert aliases(client) == {"champion": "1"} and statuses(client) == {"1": "champion"}
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/reward/mean")]
    assert sorted(steps) == [1, 2, 3, 4]
    rows = (Path(stack.xcom(run_id, "report")["run_dir"]) / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4

    # the HF token of the workers' environment is in no param, tag, artefact text or task log
    assert SECRET not in repr(run.data.params) + repr(run.data.tags)
    for artifact in ("report.txt", "run/config.yaml", "eval/report.json"):
        assert SECRET not in Path(client.download_artifacts(run.info.run_id, artifact, str(stack.home / "downloaded"))).read_text()
    logs = "".join(p.read_text(errors="replace") for p in (stack.home / "airflow" / "logs").rglob("*.log"))
    assert "train" in logs and SECRET not in logs


def test_mlflow_server_killed_during_step_logging_register_and_promote(stack):
    """The MLflow server killed (and restarted 5 s later) while `train` logs step 2, between logging and registering the policy, and with the promotion lease held: the night completes with one MLflow run, one new version that is the champion, `previous` the old one, every step once."""
    inject(stack, **{"train.step-2": "hold", "register.logged": "hold", "promote.locked": "hold"})
    run_id = stack.trigger({"config": str(stack.always_promote)})
    outages = run_with_mlflow_outages(stack, run_id)
    assert stack.run_state(run_id) == "success", {k: v["state"] for k, v in stack.task_instances(run_id).items()}
    assert outages == ["train.step-2", "register.logged", "promote.locked"]

    client = stack.mlflow_client()
    [run] = mlflow_runs(client, run_id)
    assert run.info.status == "FINISHED"
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert [str(v.version) for v in versions if v.run_id == run.info.run_id] == ["2"]
    assert aliases(client) == {"champion": "2", "previous": "1"} and statuses(client) == {"1": "previous", "2": "champion"}
    assert not client.get_registered_model(MODEL).tags.get("rlaif.promotion_lock")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/reward/mean")]
    assert sorted(steps) == [1, 2, 3, 4]
    logged = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [str(m.status).rsplit(".", 1)[-1] for m in logged].count("READY") == 1


def test_mlflow_answering_503_for_a_minute_is_retried_not_read_as_no_champion(stack):
    """The tracking server answers 503 to everything for 60 s from the start of `promote_if_better`: the MLflow client's back-off outlasts it, and the gate compares with the real champion (version 2), not with the base policy."""
    inject(stack, **{"promote_if_better.start": "hold"})
    run_id = stack.trigger({"config": str(stack.config)})
    deadline = time.monotonic() + 900
    while not (stack.faults / "promote_if_better.start.held").exists():
        assert stack.run_state(run_id) not in ("success", "failed") and time.monotonic() < deadline
        time.sleep(1)
    refused_before = stack.proxy.refused
    stack.proxy.fail_for(60)
    (stack.faults / "promote_if_better.start.release").write_text("")
    assert stack.wait_for_run(run_id) == "success"
    assert stack.proxy.refused > refused_before  # the outage was met, and outlasted

    tis = stack.task_instances(run_id)
    assert tis["promote_if_better"]["try_number"] == 1  # retried inside the call, not by Airflow
    decision = json.loads(Path(stack.xcom(run_id, "promote_if_better")["decision_path"]).read_text())  # XCom carries the path only
    assert decision["reference"]["kind"] == "champion" and decision["reference"]["version"] == "2"


def test_clearing_an_old_runs_promotion_after_a_newer_one_keeps_the_champion(stack):
    """`promote_if_better` of the first night cleared after later promotions: it runs again and changes no alias or status (its version is `previous` now)."""
    inject(stack)
    client = stack.mlflow_client()
    before_aliases, before_statuses = aliases(client), statuses(client)
    first = stack.first_night
    cleared = stack.api.post("/dags/rlaif_nightly/clearTaskInstances", json={
        "dry_run": False, "dag_run_id": first, "task_ids": ["promote_if_better"], "only_failed": False,
        "include_downstream": False, "reset_dag_runs": True,
    })
    assert cleared.status_code == 200, cleared.text
    assert stack.wait_for_run(first) == "success"
    assert stack.task_instances(first)["promote_if_better"]["try_number"] == 3  # two tries in the first night, one now
    assert aliases(client) == before_aliases and statuses(client) == before_statuses
    assert before_aliases["champion"] != "1"
