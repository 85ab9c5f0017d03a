"""The DAGs linked by the preferences Asset: ai_feedback_preferences -> reward_model_training, dpo_alignment.

Integrity as Airflow's DagBag loads them (one Asset, the producer's outlet, is what both consumers are
scheduled on; pools, retries and trigger forms as rlaif_nightly's), the plain stage functions on a tiny
model, and the whole chain in the embedded Airflow: a triggered producer run makes the scheduler start
reward_model_training by itself, which registers `<policy>-reward` in MLflow and publishes its version.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from dagbag import dagbag_with_config
from test_dag import FORBIDDEN_SETS

from rlaif_tasks.errors import RlaifError

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
PRODUCER, REWARD, DPO, NIGHTLY = "ai_feedback_preferences", "reward_model_training", "dpo_alignment", "rlaif_nightly"
NIGHTLY_STAGES = ["prepare_dataset", "baseline_eval", "train", "evaluate", "register", "promote_if_better", "sign_off", "report"]
ORCHESTRATION = """
name: assettest
orchestration:
  queue: gpu-a100
  pool: a100
  retries: 3
  retry_delay_minutes: 2
  train_timeout_minutes: 90
  eval_timeout_minutes: 20
  dagrun_timeout_minutes: 300
  max_active_runs: 2
"""


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    """The dags folder as Airflow's DagBag loads it, with a config named `assettest`."""
    with dagbag_with_config(tmp_path_factory.mktemp("airflow_home"), "assettest", ORCHESTRATION) as bag:
        yield bag


def assets_of(dag) -> list:
    """The assets a DAG is scheduled on (`schedule=[...]` is an AssetAll of them)."""
    return list(dag.timetable.asset_condition.objects)


def test_three_dags_parse_and_the_assets_module_holds_none(bag):
    assert bag.import_errors == {}
    assert {PRODUCER, REWARD, DPO, "rlaif_nightly"} <= set(bag.dags)
    assert not any(Path(dag.fileloc).name == "orchestration.py" for dag in bag.dags.values())


def test_consumers_are_scheduled_on_the_producers_outlet(bag):
    build = bag.dags[PRODUCER].get_task("build_preferences")
    [outlet] = build.outlets
    assert (outlet.name, outlet.uri) == ("rlaif-assettest-preferences", "rlaif://assettest/preferences")
    assert type(bag.dags[PRODUCER].timetable).__name__ == "NullTimetable"  # triggered when pairs are wanted, never on a clock
    for consumer in (REWARD, DPO):
        [asset] = assets_of(bag.dags[consumer])
        assert (asset.name, asset.uri) == (outlet.name, outlet.uri)
    [reward] = bag.dags[REWARD].get_task("register").outlets
    assert (reward.name, reward.uri) == ("rlaif-assettest-policy-reward", "rlaif://assettest/reward-model")


def test_the_nightly_can_also_be_scheduled_on_each_new_reward_model(tmp_path, monkeypatch):
    """orchestration.retrain_on_reward_model: the cron or a reward-model event; without a clock, the event alone."""
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "retrain.yaml"
    config.write_text(ORCHESTRATION + "  retrain_on_reward_model: true\n  schedule: '0 3 * * *'\n")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("RLAIF_DAG_CONFIG", str(config))
    monkeypatch.setenv("RLAIF_HOME", str(tmp_path / "rlaif"))
    for schedule, kind in ((None, "AssetOrTimeSchedule"), ("none", "AssetTriggeredTimetable")):
        if schedule:
            monkeypatch.setenv("RLAIF_DAG_SCHEDULE", schedule)
        monkeypatch.delitem(sys.modules, "rlaif_tasks.orchestration", raising=False)
        nightly = DagBag(dag_folder=str(DAGS / "rlaif_nightly.py")).dags["rlaif_nightly"]
        assert type(nightly.timetable).__name__ == kind
        [asset] = assets_of(nightly)
        assert (asset.name, asset.uri) == ("rlaif-assettest-policy-reward", "rlaif://assettest/reward-model")
        if kind == "AssetOrTimeSchedule":
            assert nightly.timetable.timetable.expression == "0 3 * * *"
    monkeypatch.delitem(sys.modules, "rlaif_tasks.orchestration", raising=False)


def test_a_reward_model_event_names_the_version_a_nightly_run_trains_against(bag):
    from types import SimpleNamespace

    import rlaif_tasks.orchestration as orchestration

    event = lambda version: SimpleNamespace(extra={"model_uri": f"models:/rlaif-assettest-policy-reward/{version}"})  # noqa: E731
    assert orchestration.reward_model_of({"triggering_asset_events": {orchestration.REWARD_MODEL: [event(1), event(2)]}}) == "models:/rlaif-assettest-policy-reward/2"
    assert orchestration.reward_model_of({"triggering_asset_events": {}}) is None and orchestration.reward_model_of({}) is None


def test_tasks_read_like_the_diagrams(bag):
    def chain(dag, order):
        assert sorted(dag.task_ids) == sorted(order)
        for upstream, downstream in zip(order, order[1:]):
            assert dag.get_task(downstream).upstream_task_ids == {upstream}

    chain(bag.dags[PRODUCER], ["prepare", "build_preferences"])
    chain(bag.dags[REWARD], ["prepare", "train_reward_model", "register"])
    chain(bag.dags[DPO], NIGHTLY_STAGES)


def test_pools_retries_and_timeouts_are_rlaif_nightlys(bag):
    nightly = bag.dags["rlaif_nightly"]
    heavy = {PRODUCER: ["build_preferences"], REWARD: ["train_reward_model"], DPO: ["baseline_eval", "train", "evaluate", "promote_if_better"]}
    for dag_id, gpu_tasks in heavy.items():
        dag = bag.dags[dag_id]
        assert dag.catchup is False and dag.max_active_runs == 2 and dag.dagrun_timeout == timedelta(minutes=300)
        assert dag.on_failure_callback and {"rlaif", "asset"} <= set(dag.tags)
        for task in dag.tasks:
            assert (task.queue, task.pool) == (("gpu-a100", "a100") if task.task_id in gpu_tasks else ("default", "default_pool"))
            assert task.retries == 3 and task.retry_delay == timedelta(minutes=2) and task.retry_exponential_backoff > 1
            assert type(task.retry_policy) is type(nightly.get_task("train").retry_policy)
    assert bag.dags[REWARD].get_task("train_reward_model").execution_timeout == timedelta(minutes=90)
    assert bag.dags[PRODUCER].get_task("build_preferences").execution_timeout == timedelta(minutes=20)
    for task_id in NIGHTLY_STAGES:
        assert bag.dags[DPO].get_task(task_id).execution_timeout == nightly.get_task(task_id).execution_timeout


def test_trigger_forms(bag):
    from airflow.sdk.exceptions import ParamValidationError

    expected = {PRODUCER: {"config", "policy", "reward", "k", "margin", "set"},
                REWARD: {"pairs", "config", "learning_rate", "epochs", "set"},
                DPO: {"pairs", "config", "steps", "learning_rate", "beta", "rounds", "set"}}
    for dag_id, names in expected.items():
        params = bag.dags[dag_id].params
        assert set(params) == names
        assert all(params.get_param(name).description for name in names)
        config = params.get_param("config")
        assert copy.deepcopy(config).resolve(value="configs/demo.yaml") == "configs/demo.yaml"
        with pytest.raises(ParamValidationError):
            copy.deepcopy(config).resolve(value="/etc/passwd.yaml")
    dpo_module = sys.modules[bag.dags[DPO].get_task("prepare_dataset").python_callable.__module__]
    assert dpo_module.OVERRIDE_PARAMS["learning_rate"] == "train.dpo_learning_rate"  # DPO's own rate, which the demo config sets
    assert bag.dags[PRODUCER].params["config"].endswith("assettest.yaml")
    assert bag.dags[REWARD].params["config"] is None and bag.dags[DPO].params["pairs"] is None  # from the triggering event
    for bad in ({"margin": -0.1}, {"k": 1}):
        [(name, value)] = bad.items()
        with pytest.raises(ParamValidationError):
            copy.deepcopy(bag.dags[PRODUCER].params.get_param(name)).resolve(value=value)


# -- the plain stage functions -----------------------------------------------------------------------


def event(path: str, timestamp: str, config: str, **extra) -> dict:
    return {"extra": {"path": path, "config": config, "overrides": {"preferences.margin": 0.2}, **extra}, "timestamp": timestamp,
            "source_dag_id": PRODUCER, "source_run_id": f"manual__{timestamp}"}


@pytest.fixture
def project(tmp_path):
    """A root folder with two run configs (the demo's) in it; pairs folders are paths under it."""
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    for name in ("demo.yaml", "other.yaml"):
        (root / "configs" / name).write_text((ROOT / "configs" / "demo.yaml").read_text())
    return root


def test_a_consumer_takes_the_newest_event_and_its_form_wins(project):
    from rlaif_tasks.stages.preferences import preference_source

    pattern, roots, demo = rf"^{project}/.+\.ya?ml$", [str(project)], str(project / "configs" / "demo.yaml")
    trigger = {"events": [event(f"{project}/pairs/new", "2026-02-02T00:00:00+00:00", demo), event(f"{project}/pairs/old", "2026-01-01T00:00:00+00:00", demo)],
               "overrides": {"train.steps": 3}}
    source = preference_source(trigger, default_config=demo, config_pattern=pattern, roots=roots)
    assert source == {"pairs_dir": f"{project}/pairs/new", "config": demo, "origin": f"{PRODUCER}/manual__2026-02-02T00:00:00+00:00",
                      "overrides": {"preferences.margin": 0.2, "train.steps": 3}}
    other = str(project / "configs" / "other.yaml")
    form = preference_source({**trigger, "pairs": f"{project}/pairs/mine", "config": other}, default_config="x", config_pattern=pattern, roots=roots)
    assert (form["pairs_dir"], form["config"], form["overrides"]) == (f"{project}/pairs/mine", other, {"train.steps": 3})
    by_hand = preference_source({"pairs": f"{project}/pairs/mine"}, default_config=demo, config_pattern=pattern, roots=roots)
    assert (by_hand["config"], by_hand["origin"]) == (demo, "trigger form")


def test_a_consumer_refuses_no_pairs_and_an_events_config_outside_the_roots(project):
    from rlaif_tasks.stages.preferences import preference_source

    pattern, roots, demo = rf"^{project}/.+$", [str(project)], str(project / "configs" / "demo.yaml")
    with pytest.raises(RlaifError, match="no preferences asset event"):
        preference_source({"events": []}, default_config=demo, config_pattern=pattern, roots=roots)
    posted = {"events": [event(f"{project}/pairs/x", "2026-01-01T00:00:00+00:00", config="/tmp/evil.yaml")]}  # e.g. posted through the REST API
    with pytest.raises(RlaifError, match="not one a run may read"):
        preference_source(posted, default_config=demo, config_pattern=pattern, roots=roots)


@pytest.mark.parametrize("forbidden", FORBIDDEN_SETS)
def test_an_asset_event_that_would_switch_off_the_gate_or_reach_a_secret_is_refused(project, forbidden):
    """Issue 20: anyone allowed to post an asset event could write its overrides; the consumer refuses them as a form's."""
    from rlaif_tasks.config import parse_override
    from rlaif_tasks.stages.preferences import preference_source

    demo = str(project / "configs" / "demo.yaml")
    key, value = parse_override(forbidden)
    posted = {"events": [event(f"{project}/pairs/x", "2026-01-01T00:00:00+00:00", demo, overrides={key: value})]}
    with pytest.raises(RlaifError, match=re.escape(key)):
        preference_source(posted, default_config=demo, config_pattern=rf"^{project}/.+$", roots=[str(project)])
    elsewhere = {"events": [event("/etc/ssl/private", "2026-01-01T00:00:00+00:00", demo)]}
    with pytest.raises(RlaifError, match="pairs folder '/etc/ssl/private'"):
        preference_source(elsewhere, default_config=demo, config_pattern=rf"^{project}/.+$", roots=[str(project)])


@pytest.mark.faults
def test_a_forbidden_event_fails_the_first_task_before_the_mlflow_connection_is_read(bag, project, monkeypatch):
    """dpo_alignment's first task checks the event before run_stage reads the MLflow connection (a secret) into the process."""
    import rlaif_tasks.orchestration as orchestration

    task = bag.dags[DPO].get_task("prepare_dataset")
    module = sys.modules[task.python_callable.__module__]
    demo = str(project / "configs" / "demo.yaml")
    posted = SimpleNamespace(extra={"path": f"{project}/pairs/x", "config": demo, "overrides": {"tracking.tracking_uri": "http://elsewhere:5000"}},
                             timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc), source_dag_id="rest-api", source_run_id=None)
    context = {"triggering_asset_events": {orchestration.PREFERENCES: [posted]}, "params": {"pairs": None, "config": None, "set": []},
               "dag": bag.dags[DPO], "run_id": "asset_triggered__1", "logical_date": None,
               "dag_run": SimpleNamespace(run_after=datetime(2026, 1, 1, tzinfo=timezone.utc))}
    secrets_read = []
    monkeypatch.setattr(module, "get_current_context", lambda: context)
    monkeypatch.setattr(orchestration, "use_mlflow_connection", lambda: secrets_read.append("mlflow connection"))
    monkeypatch.setattr(module, "CONFIG_PATTERN", rf"^{project}/.+$")
    monkeypatch.setattr(module, "ROOTS", [str(project)])
    with pytest.raises(RlaifError, match=r"tracking.tracking_uri"):
        task.python_callable()
    assert secrets_read == []


def test_the_human_import_path_reads_the_produced_pairs_with_their_extra_columns(tmp_path):
    import pandas as pd

    from rlaif_tasks.preferences import load_human_preferences, read_preferences, write_preferences
    from rlaif_tasks.preferences.ai_feedback import PAIR_COLUMNS

    rows = [dict(prompt=f"p{i}", query=f"q{i}", chosen=" nice", rejected=" idiot", score_chosen=-0.1, score_rejected=-0.9, margin=0.8) for i in range(5)]
    write_preferences(pd.DataFrame(rows, columns=list(PAIR_COLUMNS)), tmp_path, {"source": "ai-feedback", "judge": "profanity-check", "margin": 0.5})
    assert read_preferences(tmp_path)[1]["columns"] == list(PAIR_COLUMNS)
    pairs, report = load_human_preferences(tmp_path / "pairs.parquet")
    assert list(pairs.columns) == ["prompt", "chosen", "rejected"] and len(pairs) == 5 and report["rows_out"] == 5


@pytest.mark.slow
def test_stages_in_one_process_publish_pairs_register_a_reward_model_and_train_dpo_on_them(tmp_path, monkeypatch, one_torch_thread):
    """The three DAGs' stages without Airflow: pairs and their event, a reward model registered once per run, the
    nightly stages training DPO on the published pairs, and the failure callback's mark on a consumer's MLflow run."""
    from production_stack import write_tiny_project

    from rlaif_tasks import tracking
    from rlaif_tasks.config import load_config
    from rlaif_tasks.stages import nightly
    from rlaif_tasks.stages import preferences as ps

    monkeypatch.setenv("RLAIF_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = str(write_tiny_project(tmp_path, name="stages"))
    with pytest.raises(RlaifError, match="publishes the preferences asset of 'other'"):
        ps.prepare(config, {}, PRODUCER, "manual__0", asset_config="other")
    refs = ps.prepare(config, {"preferences.margin": 0.001}, PRODUCER, "manual__1", "2026-01-01T00:00:00+00:00", asset_config="stages")
    assert Path(refs["run_dir"]) == tmp_path / "runs" / "stages" / PRODUCER / "manual__1"
    refs = ps.build_preferences(refs)
    extra = refs.pop("event")
    assert extra["pairs"] == refs["pairs"] > 0 and extra["judge"] == "profanity-check" and extra["margin"] == 0.001
    assert (Path(extra["path"]) / "pairs.parquet").is_file() and extra["overrides"] == {"preferences.margin": 0.001}
    assert ps.build_preferences(refs)["event"]["sha256"] == extra["sha256"]  # a cleared task reuses the pairs

    trigger = {"events": [{"extra": extra, "timestamp": "2026-01-01T00:00:01+00:00", "source_dag_id": PRODUCER, "source_run_id": "manual__1"}]}
    source = ps.preference_source(trigger, default_config=config, config_pattern=r"^/.+\.yaml$")
    reward = ps.train_reward_model(ps.prepare_reward_model(source, REWARD, "asset_triggered__1"), epochs=2)
    scale = json.loads((Path(reward["reward_model_dir"]) / "reward_model.json").read_text())["score_scale"]
    assert scale["to"] == "labels"  # AI-feedback pairs carry the labelling judge's scores: the model speaks in its units
    logged = tracking.connect().get_run(reward["mlflow_run_id"]).data.metrics
    assert logged["reward_model/score_scale/scale"] == pytest.approx(scale["scale"]) and logged["reward_model/score_scale/high"] == pytest.approx(scale["high"])
    first = ps.register_reward_model(reward)
    again = ps.register_reward_model(reward)  # a retried register finds the version
    assert (first["model_name"], first["model_version"], again["model_version"]) == ("rlaif-stages-policy-reward", "1", "1")
    assert first["event"]["model_uri"] == "models:/rlaif-stages-policy-reward/1" and first["event"]["pairs_sha256"] == extra["sha256"]

    dpo = ps.prepare_dpo(source, DPO, "asset_triggered__1")
    dpo_config = load_config(Path(dpo["run_dir"]) / "config.yaml")
    assert dpo_config.train.algorithm == "dpo" and dpo_config.preferences.source == str(Path(extra["path"]) / "pairs.parquet")
    assert Path(dpo["run_dir"]).parent.name == DPO  # not the reward model's folder, though both runs have the same id here
    for stage in (nightly.baseline_eval, nightly.train, nightly.evaluate, nightly.register, nightly.promote_if_better):
        dpo = stage(dpo)
    summary = nightly.report(dpo)
    assert (summary["model_name"], summary["model_version"]) == ("rlaif-stages-policy", "1") and "(dpo, 2 steps)" in summary["text"]
    assert f"DPO on {extra['pairs']} preference pairs (imported from {Path(extra['path']) / 'pairs.parquet'}), 2 steps" in summary["text"]
    margins = tracking.connect().get_metric_history(dpo["mlflow_run_id"], "train/dpo/reward_margin")
    assert sorted(m.step for m in margins) == [1, 2]  # DPO's per-step curves reach the run as PPO's do
    imported = json.loads((Path(dpo["run_dir"]) / "preferences" / "manifest.json").read_text())
    assert imported["pairs"] == extra["pairs"] and imported["report"]["rows_in"] == extra["pairs"]  # every produced pair kept

    failing = ps.prepare_reward_model(source, REWARD, "asset_triggered__2")
    assert nightly.record_failure(config, REWARD, "asset_triggered__2", "train_reward_model failed") == failing["mlflow_run_id"]
    run = tracking.connect().get_run(failing["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["rlaif.failure"] == "train_reward_model failed"


# -- the chain in the embedded Airflow ------------------------------------------------------------------


@pytest.mark.slow
def test_producer_runs_start_the_reward_model_and_the_dpo_dags_by_themselves(tmp_path_factory):
    """Trigger ai_feedback_preferences on the tiny config; the scheduler starts reward_model_training from its asset
    event (dpo_alignment stays paused, so it gets no run), which registers `<policy>-reward` and publishes its version;
    that event starts rlaif_nightly (retrain_on_reward_model), which trains against the version and finishes. Then,
    the other way round, a second set of pairs starts dpo_alignment alone, which runs two rounds of DPO."""
    from production_stack import ProductionStack, write_tiny_project

    from mlflow import MlflowClient

    home = tmp_path_factory.mktemp("assets_home")
    config = write_tiny_project(home, name="assets", orchestration=", retrain_on_reward_model: true")
    stack = ProductionStack(home, config, executor="LocalExecutor")
    try:
        stack.start_all()
        for dag_id in (PRODUCER, REWARD, DPO, NIGHTLY):
            stack.wait_until(lambda dag_id=dag_id: stack.api.get(f"/dags/{dag_id}").status_code == 200, 120, f"{dag_id} to be parsed")
        for dag_id in (PRODUCER, REWARD, NIGHTLY):
            assert stack.api.patch(f"/dags/{dag_id}", json={"is_paused": False}).status_code == 200
        response = stack.api.post(f"/dags/{PRODUCER}/dagRuns", json={"logical_date": None, "conf": {"config": str(config), "margin": 0.001}})
        assert response.status_code == 200, response.text
        produced = response.json()["dag_run_id"]

        def finished(dag_id, run_id):
            state = stack.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            return state in ("success", "failed") and state

        assert stack.wait_until(lambda: finished(PRODUCER, produced), 300, f"{PRODUCER} {produced}", every=1) == "success"
        consumer_runs = lambda: stack.get(f"/dags/{REWARD}/dagRuns")["dag_runs"]  # noqa: E731
        [run] = stack.wait_until(consumer_runs, 60, f"{REWARD} to be started by the asset event", every=2)
        state = stack.wait_until(lambda: finished(REWARD, run["dag_run_id"]), 300, f"{REWARD} {run['dag_run_id']}", every=1)
        tis = {ti["task_id"]: ti for ti in stack.get(f"/dags/{REWARD}/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]}
        assert state == "success", {k: v["state"] for k, v in tis.items()}
        assert run["run_type"] == "asset_triggered" and all(ti["try_number"] == 1 for ti in tis.values())

        [published] = stack.get("/assets/events", source_dag_id=PRODUCER)["asset_events"]
        extra = published["extra"]
        assert published["name"] == "rlaif-assets-preferences" and published["source_run_id"] == produced
        assert extra["pairs"] > 0 and extra["judge"] == "profanity-check" and extra["margin"] == 0.001
        assert json.loads((Path(extra["path"]) / "manifest.json").read_text())["pairs"] == extra["pairs"]
        assert [r["dag_id"] for r in published["created_dagruns"]] == [REWARD]
        [consumed] = stack.get(f"/dags/{REWARD}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents")["asset_events"]
        assert consumed["id"] == published["id"]
        assert stack.get(f"/dags/{DPO}/dagRuns")["total_entries"] == 0  # paused consumers are not queued

        [registered] = stack.get("/assets/events", source_dag_id=REWARD)["asset_events"]
        assert registered["name"] == "rlaif-assets-policy-reward" and registered["extra"]["version"] == "1"
        uri = f"sqlite:///{home / '.mlflow' / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        [version] = client.search_model_versions("name = 'rlaif-assets-policy-reward'")
        result = stack.get(f"/dags/{REWARD}/dagRuns/{run['dag_run_id']}/taskInstances/register/xcomEntries/return_value", deserialize=True)["value"]
        assert version.run_id == result["mlflow_run_id"] == registered["extra"]["mlflow_run_id"]
        mlflow_run = client.get_run(version.run_id)
        assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.tags["rlaif.preferences_sha256"] == extra["sha256"]
        assert mlflow_run.data.tags["rlaif.dag_id"] == REWARD and "reward_model/eval_accuracy" in mlflow_run.data.metrics
        assert client.get_run(extra["mlflow_run_id"]).data.metrics["preferences/pairs"] == extra["pairs"]

        [started] = stack.wait_until(lambda: stack.get(f"/dags/{NIGHTLY}/dagRuns")["dag_runs"], 60, f"{NIGHTLY} to be started by the reward model", every=2)
        assert started["run_type"] == "asset_triggered"
        nightly_run = started["dag_run_id"]
        state = stack.wait_until(lambda: finished(NIGHTLY, nightly_run), 300, f"{NIGHTLY} {nightly_run}", every=1)
        tis = {ti["task_id"]: ti["state"] for ti in stack.get(f"/dags/{NIGHTLY}/dagRuns/{nightly_run}/taskInstances")["task_instances"]}
        assert state == "success", tis
        report = stack.get(f"/dags/{NIGHTLY}/dagRuns/{nightly_run}/taskInstances/report/xcomEntries/return_value", deserialize=True)["value"]
        rlhf_run = client.get_run(report["mlflow_run_id"])
        assert rlhf_run.data.tags["rlaif.reward_model"] == "models:/rlaif-assets-policy-reward/1"
        assert rlhf_run.data.params["reward.model"] == "models:/rlaif-assets-policy-reward/1"
        assert len(client.get_metric_history(rlhf_run.info.run_id, "train/reward/mean")) == 2

        # the other consumer: with reward_model_training paused, new pairs start dpo_alignment, which runs iterative
        # DPO (rounds set in the producer's form travel with the event) and registers the next policy version
        assert stack.api.patch(f"/dags/{REWARD}", json={"is_paused": True}).status_code == 200
        assert stack.api.patch(f"/dags/{DPO}", json={"is_paused": False}).status_code == 200
        conf = {"config": str(config), "margin": 0.001, "set": ["train.dpo_rounds=2"]}
        response = stack.api.post(f"/dags/{PRODUCER}/dagRuns", json={"logical_date": None, "conf": conf})
        assert response.status_code == 200, response.text
        second = response.json()["dag_run_id"]
        assert stack.wait_until(lambda: finished(PRODUCER, second), 300, f"{PRODUCER} {second}", every=1) == "success"
        [dpo_run] = stack.wait_until(lambda: stack.get(f"/dags/{DPO}/dagRuns")["dag_runs"], 60, f"{DPO} to be started by the new pairs", every=2)
        state = stack.wait_until(lambda: finished(DPO, dpo_run["dag_run_id"]), 420, f"{DPO} {dpo_run['dag_run_id']}", every=1)
        tis = {ti["task_id"]: ti["state"] for ti in stack.get(f"/dags/{DPO}/dagRuns/{dpo_run['dag_run_id']}/taskInstances")["task_instances"]}
        assert state == "success" and dpo_run["run_type"] == "asset_triggered", tis
        # a DAG's first asset-triggered run consumes every event of its asset so far (here both); the newest one decides
        events = stack.get(f"/dags/{DPO}/dagRuns/{dpo_run['dag_run_id']}/upstreamAssetEvents")["asset_events"]
        consumed = max(events, key=lambda event: event["timestamp"])
        assert consumed["source_run_id"] == second and {event["source_run_id"] for event in events} <= {produced, second}
        assert stack.get(f"/dags/{REWARD}/dagRuns")["total_entries"] == 1
        report = stack.get(f"/dags/{DPO}/dagRuns/{dpo_run['dag_run_id']}/taskInstances/report/xcomEntries/return_value", deserialize=True)["value"]
        assert (report["model_name"], report["model_version"]) == ("rlaif-assets-policy", "2") and "(dpo, 2 rounds of 2 steps)" in report["text"]
        dpo_mlflow = client.get_run(report["mlflow_run_id"])
        assert dpo_mlflow.data.params["train.algorithm"] == "dpo" and dpo_mlflow.data.params["train.dpo_rounds"] == "2"
        assert dpo_mlflow.data.params["preferences.source"] == str(Path(consumed["extra"]["path"]) / "pairs.parquet")
        assert sorted(m.step for m in client.get_metric_history(dpo_mlflow.info.run_id, "train/dpo/reward_margin")) == [1, 2, 3, 4]
    finally:
        stack.stop_all()
