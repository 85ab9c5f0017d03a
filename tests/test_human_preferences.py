"""The human_preferences DAG: people label pairs of the policy's responses (Airflow Human-in-the-Loop), the pairs
are published on the preferences Asset.

Integrity as Airflow's DagBag loads it (the diagram's tasks, the mapped HITL task, the same Asset the consumers
run on, rlaif_nightly's settings, a form that cannot name who labels), the HITL operator's execute and timeout
alone, the stage functions on a tiny model, and (slow) a real Airflow: the DAG triggered, every pair answered
through the REST API by its assigned labellers, a non-assigned user refused with 403, one request left to time
out, and the published pairs checked against the answers.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagbag import dagbag_with_config

from rlaif_tasks.errors import RlaifError

DAG_ID = "human_preferences"
SETTINGS = """
name: humantest
orchestration: {queue: gpu-a100, pool: a100, retries: 3, retry_delay_minutes: 2, eval_timeout_minutes: 20, dagrun_timeout_minutes: 300, max_active_runs: 2}
human_preferences: {pairs: 5, labellers: [alice, bob], labels_per_pair: 2, response_timeout_hours: 6}
"""
LABELLERS = "human_preferences: {pairs: 3, labellers: [alice, bob], labels_per_pair: 2, response_timeout_hours: %s}\n"


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    """The dags folder as Airflow's DagBag loads it, with a config named `humantest`."""
    with dagbag_with_config(tmp_path_factory.mktemp("airflow_home"), "humantest", SETTINGS) as bag:
        yield bag


def test_the_dag_reads_like_its_diagram_and_publishes_the_consumers_asset(bag):
    assert bag.import_errors == {}
    dag = bag.dags[DAG_ID]
    assert sorted(dag.task_ids) == ["collect", "label", "prepare", "sample_pairs"]
    upstream = {task.task_id: task.upstream_task_ids for task in dag.tasks}
    assert upstream == {"prepare": set(), "sample_pairs": {"prepare"}, "label": {"sample_pairs"}, "collect": {"label", "prepare"}}
    label = dag.get_task("label")
    assert type(label).__name__ == "MappedOperator" and label.operator_class.__name__ == "LabelPair"
    assert label.operator_class.__mro__[1].__name__ == "HITLOperator"
    [outlet] = dag.get_task("collect").outlets
    assert (outlet.name, outlet.uri) == ("rlaif-humantest-preferences", "rlaif://humantest/preferences")
    assert outlet == bag.dags["ai_feedback_preferences"].get_task("build_preferences").outlets[0]
    for consumer in ("reward_model_training", "dpo_alignment"):
        assert list(bag.dags[consumer].timetable.asset_condition.objects) == [outlet]
    assert type(dag.timetable).__name__ == "NullTimetable" and {"rlaif", "human", "asset"} <= set(dag.tags)


def test_what_the_dag_processor_imports_for_it_loads_no_heavy_library():
    from test_architecture import heavy_at_import

    assert not heavy_at_import("rlaif_tasks.stages.human") and not heavy_at_import("rlaif_tasks.orchestration")
    assert heavy_at_import("rlaif_tasks.preferences.human")  # imported by the stages inside their functions only


def test_settings_are_rlaif_nightlys_and_the_labellers_get_their_time(bag):
    dag = bag.dags[DAG_ID]
    assert dag.catchup is False and dag.max_active_runs == 2 and dag.on_failure_callback
    assert dag.dagrun_timeout == timedelta(minutes=300) + timedelta(hours=6)  # a run is not cut off while people may still answer
    for task in dag.tasks:
        assert (task.queue, task.pool) == (("gpu-a100", "a100") if task.task_id == "sample_pairs" else ("default", "default_pool"))
        assert task.retries == 3
    op = dag.get_task("label").unmap({"request": {"run_dir": "/nowhere", "request": 0}})
    assert op.options == ["A is better", "B is better", "Tie", "Both bad"] and op.response_timeout == timedelta(hours=6)
    assert op.multiple is False and op.defaults is None  # no default answer: a timeout is no label, not a made-up one
    assert list(op.serialized_params) == ["comment"]  # the HITL form: the comment only, not the DAG's trigger form
    assert op.template_fields == ()  # responses are never rendered as Jinja


def test_the_trigger_form_may_set_the_number_of_pairs_but_never_who_labels(bag):
    """The check create_dagrun makes on the stored DAG (its params merged with the conf): a REST trigger gets 400, no run."""
    from airflow.sdk.exceptions import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    from rlaif_tasks.config import is_trust_key, load_config
    from rlaif_tasks.overrides import check_trigger_overrides

    form = bag.dags[DAG_ID].params
    assert set(form) == {"config", "policy", "pairs", "set"} and all(form.get_param(n).description for n in form)
    params = DagSerialization.from_dict(DagSerialization.to_dict(bag.dags[DAG_ID])).params
    assert params.deep_merge({"pairs": 3, "set": ["human_preferences.pairs=4"]}).validate()["pairs"] == 3
    for conf in ({"pairs": 0}, {"set": ["human_preferences.labellers=[mallory]"]}, {"set": ["human_preferences.labels_per_pair=1"]},
                 {"set": ["human_preferences.response_timeout_hours=0.001"]}):
        with pytest.raises(ParamValidationError, match=f"param {next(iter(conf))}"):
            params.deep_merge(conf).validate()
    assert is_trust_key("human_preferences.labellers") and not is_trust_key("human_preferences.pairs")
    config = load_config(form["config"])
    with pytest.raises(RlaifError, match=r"\['human_preferences.labellers'\] decide trust"):
        check_trigger_overrides(config, {"human_preferences.labellers": ["mallory"]}, ["/"])
    check_trigger_overrides(config, {"human_preferences.pairs": 2}, ["/"])


def test_a_config_cannot_let_triggers_name_the_labellers(tmp_path):
    from rlaif_tasks.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("orchestration: {trigger_overrides: [train.steps, human_preferences.labellers]}\n")
    with pytest.raises(RlaifError, match="decide trust"):
        load_config(path)


def run_folder(root: Path, texts: list[tuple[str, str, str]], labellers=("alice", "bob"), labels_per_pair=2, hours=0.5) -> Path:
    """A run folder with a config and a labelling batch, as prepare and sample_pairs leave it."""
    from rlaif_tasks.atomic import write_json
    from rlaif_tasks.preferences.labelling import assign_requests

    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("name: humantest\n")
    pairs = [{"pair": i, "prompt": p, "query": p, "response_a": a, "response_b": b} for i, (p, a, b) in enumerate(texts)]
    write_json(root / "human" / "batch.json", {
        "policy": "tiny", "labellers": list(labellers), "labels_per_pair": labels_per_pair, "response_timeout_hours": hours, "report": {},
        "pairs": pairs, "requests": assign_requests(len(pairs), list(labellers), labels_per_pair),
    })
    return root


def test_a_label_task_asks_its_assigned_labeller_about_its_pair_and_a_timeout_ends_it_without_a_label(bag, tmp_path, monkeypatch):
    from airflow.providers.standard.operators.hitl import HITLOperator

    folder = run_folder(tmp_path / "run", [("Say hi", "hello {{ var.value.secret }}", "`go` away"), ("p2", "x", "y")], hours=0.25)
    op = bag.dags[DAG_ID].get_task("label").unmap({"request": {"run_dir": str(folder), "request": 3}})
    asked = {}
    monkeypatch.setattr(HITLOperator, "execute", lambda self, context: asked.update(subject=self.subject, body=self.body, users=self.assigned_users,
                                                                                  timeout=self.response_timeout))
    op.execute({})
    assert asked["subject"] == "Pair 2 of 2: which response is better? (each pair goes to 2 labellers)"
    assert asked["users"] == [{"id": "alice", "name": "alice"}] and asked["timeout"] == timedelta(minutes=15)  # the run's settings, not the DAG file's
    first = bag.dags[DAG_ID].get_task("label").unmap({"request": {"run_dir": str(folder), "request": 0}})
    first.execute({})
    assert "```text\nhello {{ var.value.secret }}\n```" in asked["body"] and "```text\n`go` away\n```" in asked["body"]

    assert op.execute_complete({}, {"error": "The Human-in-the-loop response timeout has passed without a response.", "error_type": "timeout"}) == {
        "request": 3, "status": "timeout", "label": None, "labeller": None, "labeller_name": None, "labelled_at": None, "comment": None}
    at = datetime(2026, 3, 1, tzinfo=timezone.utc)
    event = {"chosen_options": ["B is better"], "params_input": {"comment": "less rude"}, "responded_at": at,
             "responded_by_user": {"id": "alice", "name": "alice"}, "timedout": False}
    assert op.execute_complete({}, event) == {"request": 3, "status": "answered", "label": "B is better", "labeller": "alice",
                                              "labeller_name": "alice", "labelled_at": at.isoformat(), "comment": "less rude"}
    with pytest.raises(ValueError, match="not in"):
        op.execute_complete({}, {**event, "chosen_options": ["C is better"]})


# -- the stage functions on a tiny model -------------------------------------------------------------


@pytest.mark.slow
def test_stages_sample_a_batch_and_publish_what_people_answered(tmp_path, monkeypatch, one_torch_thread):
    """prepare refuses what a run cannot label with before anything is recorded; sample_pairs writes the batch once;
    collect publishes A/B answers as pairs (ties, disagreements and timeouts counted), and fails when none made a pair."""
    import pandas as pd
    from production_stack import write_tiny_project

    from rlaif_tasks import tracking
    from rlaif_tasks.preferences import load_human_preferences, read_preferences
    from rlaif_tasks.stages import human

    monkeypatch.setenv("RLAIF_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = write_tiny_project(tmp_path, name="humans")
    config.write_text(config.read_text() + LABELLERS % 0.5)
    with pytest.raises(RlaifError, match="labelling batch is empty"):
        human.prepare(str(config), {"human_preferences.pairs": 0}, DAG_ID, "manual__0", asset_config="humans")
    with pytest.raises(RlaifError, match=r"human_preferences.labellers.*decide trust"):
        human.prepare(str(config), {"human_preferences.labellers": ["mallory"]}, DAG_ID, "manual__0", asset_config="humans")
    assert not (tmp_path / "runs").exists()  # refused before a run folder or an MLflow run existed

    refs = human.prepare(str(config), {"human_preferences.pairs": 4}, DAG_ID, "manual__1", "2026-01-01T00:00:00+00:00", asset_config="humans")
    requests = human.sample_pairs(refs)
    assert [r["request"] for r in requests] == list(range(8)) and {r["run_dir"] for r in requests} == {refs["run_dir"]}
    batch_file = Path(refs["run_dir"]) / "human" / "batch.json"
    batch = json.loads(batch_file.read_text())
    assert len(batch["pairs"]) == 4 and all(p["response_a"].strip() != p["response_b"].strip() for p in batch["pairs"])
    assert human.sample_pairs(refs) == requests and json.loads(batch_file.read_text()) == batch  # a retry keeps the batch people see

    at = datetime(2026, 3, 1, tzinfo=timezone.utc)
    plan = ["A is better", "A is better", "B is better", "A is better", "Tie", "Tie", "B is better", None]  # request 7 times out

    def answers(plan):
        out = []
        for request, label in zip(requests, plan):
            who = human.label_request(request)["labellers"][0]
            out.append(human.unanswered(request) if label is None else human.answered(request, [label], {"comment": ""}, {"id": who, "name": who}, at))
        return out

    refs_out = human.collect(refs, answers(plan) + [human.answered(requests[0], ["B is better"], {}, {"id": "mallory", "name": "mallory"}, at)])
    event = refs_out["event"]
    assert (event["pairs"], event["ties"], event["disagreed"], event["unanswered"], event["labelled_by"]) == (2, 1, 1, 1, ["alice", "bob"])
    pairs, manifest = read_preferences(event["path"])
    first, last = batch["pairs"][0], batch["pairs"][3]
    assert pairs[["chosen", "rejected", "labelled_by"]].values.tolist() == [
        [first["response_a"], first["response_b"], "alice, bob"], [last["response_b"], last["response_a"], "bob"]]  # pair 3: bob's B, alice timed out
    assert manifest["source"] == "human" and manifest["summary"]["refused_users"] == ["mallory"] and manifest["summary"]["agreement"]["pairs"] == 3
    labels = pd.read_parquet(Path(event["path"]) / "labels.parquet")
    assert "mallory" not in set(labels["labeller"].dropna()) and list(labels["status"]).count("timeout") == 1
    assert load_human_preferences(Path(event["path"]) / "pairs.parquet")[1]["rows_out"] == 2  # what dpo_alignment imports
    run = tracking.connect().get_run(refs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["human/tie"] == 1 and run.data.metrics["preferences/pairs"] == 2

    refs = human.prepare(str(config), {}, DAG_ID, "manual__2", "2026-01-02T00:00:00+00:00", asset_config="humans")
    requests = human.sample_pairs(refs)
    with pytest.raises(RlaifError, match=re.escape("of 3 pair(s), 2 tie(s), 1 both bad")):
        human.collect(refs, answers(["Tie", "Tie", "Both bad", "Both bad", "Tie", "Tie"]))
    assert not (Path(refs["run_dir"]) / "preferences" / "pairs.parquet").exists()  # nothing to publish


# -- a real Airflow ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_people_label_pairs_in_airflow_and_the_pairs_are_published(tmp_path_factory):
    """The embedded Airflow (api-server, scheduler, DAG processor) with users admin, alice, bob and mallory; the DAG
    asks alice and bob about each of 3 pairs. Each answers through the REST API as the assigned user, after mallory
    and the other labeller were refused with 403; bob leaves pair 3 to time out. The preferences Asset gets one
    event, and its pairs.parquet holds the pairs the answers made, with the labellers' names."""
    from production_stack import ProductionStack, write_tiny_project

    home = tmp_path_factory.mktemp("human_home")
    config = write_tiny_project(home, name="humans")
    config.write_text(config.read_text() + LABELLERS % 0.02)  # 72 s to answer
    stack = ProductionStack(home, config, executor="LocalExecutor")
    stack.env.update(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,alice:op,bob:op,mallory:op",
                     AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL="2")  # how often the scheduler looks for HITL timeouts
    plan = {(0, "alice"): "A is better", (0, "bob"): "A is better", (1, "alice"): "B is better", (1, "bob"): "B is better", (2, "alice"): "Tie"}
    try:
        stack.start_all()
        stack.wait_until(lambda: stack.api.get(f"/dags/{DAG_ID}").status_code == 200, 120, f"{DAG_ID} to be parsed")
        assert stack.api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
        response = stack.api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"config": str(config), "pairs": 3}})
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        people = {name: stack._api_client(name) for name in ("alice", "bob", "mallory")}
        shown, refused = {}, []

        def parked(map_index: int, created_at: str) -> bool:
            """Whether the scheduler has handled the parked process's exit: Airflow 3.3.2 takes an answer that resumes the
            task before then for a lost task and asks again (docs/preferences.md). People are never that fast; a script is."""
            handled = rf"TaskInstance Finished: dag_id={DAG_ID}, task_id=label, run_id={re.escape(run_id)}, map_index={map_index}, .*state=awaiting_input"
            waited = datetime.now(timezone.utc) - datetime.fromisoformat(created_at.replace("Z", "+00:00"))
            return re.search(handled, stack.log_text("scheduler")) is not None or waited > timedelta(seconds=30)

        def answer_what_waits():
            details = stack.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/hitlDetails")["hitl_details"]
            for detail in details:
                ti = detail["task_instance"]
                if detail["response_received"] or ti["state"] != "awaiting_input":
                    continue
                [assigned] = [user["id"] for user in detail["assigned_users"]]
                pair = int(re.match(r"Pair (\d+) of 3", detail["subject"]).group(1)) - 1
                label = plan.get((pair, assigned))
                if label is None or ti["map_index"] in shown or not parked(ti["map_index"], detail["created_at"]):
                    continue
                url = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/label/{ti['map_index']}/hitlDetails"
                if not refused:  # someone not assigned: 403, and nothing is recorded
                    other = "bob" if assigned == "alice" else "alice"
                    for intruder in ("mallory", other):
                        denied = people[intruder].patch(url, json={"chosen_options": ["B is better" if label == "A is better" else "A is better"]})
                        refused.append((intruder, denied.status_code))
                    assert stack.get(url)["response_received"] is False
                done = people[assigned].patch(url, json={"chosen_options": [label], "params_input": {"comment": f"{assigned} on pair {pair + 1}"}})
                assert done.status_code == 200, done.text
                assert done.json()["responded_by"] == {"id": assigned, "name": assigned}
                shown[ti["map_index"]] = (pair, assigned, label, detail["body"])
            return len(shown) == len(plan)

        stack.wait_until(answer_what_waits, 240, "the five planned answers", every=2)
        assert [code for _, code in refused] == [403, 403] and refused[0][0] == "mallory"

        def finished():
            state = stack.get(f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            return state in ("success", "failed") and state

        state = stack.wait_until(finished, 300, f"{DAG_ID} {run_id} (bob's last request times out first)", every=3)
        tis = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in stack.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]}
        assert state == "success", tis
        assert sorted(i for (task_id, i) in tis if task_id == "label") == list(range(6))
        [timed_out] = set(range(6)) - set(shown)
        xcom = stack.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/label/xcomEntries/return_value", map_index=timed_out, deserialize=True)
        assert xcom["value"]["status"] == "timeout" and xcom["value"]["label"] is None  # ended without a label, as a success

        [published] = stack.get("/assets/events", source_dag_id=DAG_ID)["asset_events"]
        extra = published["extra"]
        assert published["name"] == "rlaif-humans-preferences" and published["source_run_id"] == run_id
        assert (extra["pairs"], extra["ties"], extra["unanswered"], extra["labelled_by"], extra["source"]) == (2, 1, 1, ["alice", "bob"], "human")
        assert extra["agreement"] == 1.0 and extra["kappa"] == 1.0

        import pandas as pd

        from rlaif_tasks.preferences import read_preferences

        pairs, manifest = read_preferences(extra["path"])
        assert manifest["sha256"] == extra["sha256"] and len(pairs) == 2
        for pair, row in zip((0, 1), pairs.itertuples()):
            bodies = [body for (p, _, _, body) in shown.values() if p == pair]
            a_wins = plan[(pair, "alice")] == "A is better"
            winner, loser = ("Response A", "Response B") if a_wins else ("Response B", "Response A")
            for body in bodies:  # what the labellers read is what the pair holds, the right way round
                assert f"**{winner}**\n\n```text\n{row.chosen}\n```" in body and f"**{loser}**\n\n```text\n{row.rejected}\n```" in body
            assert row.labelled_by == "alice, bob" and row.pair == pair and "alice on pair" in row.comment
            assert datetime.fromisoformat(row.labelled_at) <= datetime.now(timezone.utc)
        labels = pd.read_parquet(Path(extra["path"]) / "labels.parquet")
        assert "mallory" not in set(labels["labeller"].dropna()) and sorted(labels["status"]) == ["answered"] * 5 + ["timeout"]
        assert set(zip(labels["pair"], labels["labeller"], labels["label"])) >= {(p, who, label) for (p, who), label in plan.items()}
    finally:
        stack.stop_all()
