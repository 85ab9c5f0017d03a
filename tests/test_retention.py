"""Retention (issue 20): what gc keeps and deletes in the registry, the artefact store, run folders and the model cache."""

from __future__ import annotations

import os
import time

import pytest
import yaml

from rlaif_tasks import registry, retention, tracking
from rlaif_tasks.cli import main
from rlaif_tasks.config import load_config
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.tags import TAG_RUN_DIR

NAME = "rlaif-tiny-policy"
DAY = 86400


@pytest.fixture
def config_path(home, tmp_path):
    config = {
        "name": "tiny", "device": "cpu",
        "retention": {"keep_challengers": 1, "run_folder_days": 7, "registry_cache_versions": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_folder(home, name: str, days_old: float):
    folder = home / "runs" / "tiny" / name
    (folder / "train").mkdir(parents=True)
    (folder / "config.yaml").write_text("name: tiny\n")
    (folder / "train" / "weights.bin").write_bytes(b"x" * 1000)
    stamp = time.time() - days_old * DAY
    for path in (folder / "config.yaml", folder / "train", folder):
        os.utime(path, (stamp, stamp))
    return folder


@pytest.mark.faults
def test_gc_keeps_the_aliases_and_the_newest_others_and_deletes_the_rest_with_their_artefacts(home, config_path, tmp_path, monkeypatch, capsys):
    from tiny_models import tiny_causal_lm

    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path / "cache"))
    config = load_config(config_path)
    client = tracking.connect(config)
    experiment = tracking.ensure_experiment(client, config)
    old_kept = _run_folder(home, "night-5", days_old=30)  # the champion's: kept however old
    old_gone = _run_folder(home, "night-1", days_old=30)
    recent = _run_folder(home, "night-7", days_old=1)
    unused, used = home / "runs" / "tiny" / ".evaluation-cache" / "old-key", home / "runs" / "tiny" / ".evaluation-cache" / "new-key"
    for entry, days in ((unused, 30), (used, 1)):
        entry.mkdir(parents=True)
        os.utime(entry, (time.time() - days * DAY,) * 2)

    # version 1: a policy logged as MLflow logs it (a logged model); versions 2-7: folders logged as run artefacts
    run = client.create_run(experiment)
    first = registry.register_policy(config, run.info.run_id, tiny_causal_lm(tmp_path / "policy"), client=client)
    logged = client.get_logged_model(client.get_model_version(NAME, "1").source.removeprefix("models:/")).artifact_location
    assert first["version"] == "1" and os.listdir(logged.removeprefix("file://"))
    artefacts = {}
    for night in range(2, 8):
        run = client.create_run(experiment, tags={TAG_RUN_DIR: str(home / "runs" / "tiny" / f"night-{night}")})
        folder = tmp_path / f"weights-{night}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"w" * 5000)
        client.log_artifacts(run.info.run_id, str(folder), "policy")
        artefacts[night] = f"{run.info.artifact_uri}/policy"
        registry.create_version(client, NAME, run.info.run_id, artefacts[night], about="test")
    client.set_registered_model_alias(NAME, "champion", "5")
    client.set_registered_model_alias(NAME, "previous", "3")
    client.set_registered_model_alias(NAME, "challenger", "7")
    for version in range(1, 8):
        (tmp_path / "cache" / "models" / "registry" / NAME / f"v{version}").mkdir(parents=True)

    plan = retention.collect_garbage(config, client, dry_run=True)
    assert plan["keep_versions"][NAME] == ["3", "5", "6", "7"]  # previous, champion, the newest other, challenger
    assert plan["expire_versions"][NAME] == ["1", "2", "4"]
    assert plan["run_folders"] == sorted([str(old_gone), str(unused)])
    assert sorted(os.path.basename(p) for p in plan["cache"]) == ["v1", "v2", "v4"]
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 7 and old_gone.is_dir()  # a dry run touches nothing

    assert main(["gc", "--config", str(config_path)]) == 0
    assert "deleted versions 1, 2, 4; kept 3, 5, 6, 7" in capsys.readouterr().out
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")) == [3, 5, 6, 7]
    assert not os.path.exists(logged.removeprefix("file://"))  # the logged model's files, not only its registry entry
    for night in (2, 4):
        assert not os.path.exists(artefacts[night].removeprefix("file://"))
    for night in (3, 5, 6, 7):
        assert os.path.exists(artefacts[night].removeprefix("file://"))
    assert not old_gone.exists() and old_kept.is_dir() and recent.is_dir()
    assert not unused.exists() and used.is_dir()  # a cached evaluation unused for run_folder_days goes too
    assert sorted(os.listdir(tmp_path / "cache" / "models" / "registry" / NAME)) == ["v3", "v5", "v6", "v7"]
    assert retention.collect_garbage(config, client)["expire_versions"][NAME] == []  # nothing left to expire


def test_checkpoints_go_once_the_policy_is_registered(tmp_path):
    config = load_config(None, {"name": "tiny"})
    run_dir = tmp_path / "run"
    (run_dir / "train" / "checkpoints" / "step-2").mkdir(parents=True)
    (run_dir / "train" / "checkpoints" / "broken-step-3").mkdir()
    (run_dir / "train" / "checkpoints" / "step-2" / "adapter.safetensors").write_bytes(b"c" * 300)
    assert retention.drop_checkpoints(config, run_dir) == 0  # no trained policy yet: a resume may need them
    (run_dir / "train" / "final").mkdir()
    (run_dir / "train" / "final" / "config.json").write_text("{}")
    assert retention.drop_checkpoints(load_config(None, {"retention.delete_checkpoints": False}), run_dir) == 0
    assert retention.drop_checkpoints(config, run_dir) == 300
    assert not (run_dir / "train" / "checkpoints").exists() and (run_dir / "train" / "final" / "config.json").is_file()


@pytest.mark.faults
def test_a_night_refuses_to_start_on_a_full_disk_with_the_fix(home, tmp_path):
    from rlaif_tasks.stages import nightly

    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "retention": {"min_free_gb": 1e9}}))  # more than any disk has
    with pytest.raises(RlaifError) as refused:
        nightly.prepare_dataset(str(path), {}, "rlaif_nightly", "manual__full")
    assert "retention.min_free_gb" in refused.value.problem and "rlaif gc" in refused.value.fix
    assert not (home / "runs").exists()


def test_retention_is_no_key_a_trigger_may_set(home, config_path):
    with pytest.raises(RlaifError, match="retention.keep_challengers"):
        load_config(config_path, {"orchestration.trigger_overrides": ["retention.keep_challengers"]})


def test_the_maintenance_dag_runs_gc_daily_with_no_param_a_trigger_could_use(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.delitem(sys.modules, "rlaif_tasks.orchestration", raising=False)
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags" / "rlaif_maintenance.py"))
    assert bag.import_errors == {}
    dag = bag.dags["rlaif_maintenance"]
    assert dag.task_ids == ["collect_garbage"] and dag.timetable.expression == "30 1 * * *" and dict(dag.params) == {}
    monkeypatch.delitem(sys.modules, "rlaif_tasks.orchestration", raising=False)


def _disk_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.faults
def test_five_nights_with_daily_gc_keep_disk_bounded_and_the_kept_versions_serving(home, tmp_path, monkeypatch):
    """Five tiny nights, each promoted and followed by the daily gc (keep one other version, run folders of kept versions only): disk after night 5 within 10% of night 3's (the steady state: three nights' policies and folders), versions 1-2 gone from the registry and their artefact folders from disk, champion (5) and previous (4) load through MLflow and answer."""
    import json
    import random

    from tiny_models import WORDS, tiny_causal_lm

    import mlflow
    from rlaif_tasks.stages import nightly
    from rlaif_tasks.stages.common import safe_run_id

    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path / "cache"))
    rng = random.Random(0)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": " ".join(rng.choices(WORDS, k=rng.randint(2, 5)))}) + "\n" for _ in range(24)))
    path = tmp_path / "nights.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "device": "cpu",
        "model": {"policy": str(tiny_causal_lm(tmp_path / "policy"))},
        "data": {"source": str(prompts), "use_chat_template": False, "test_size": 8},
        "generation": {"max_new_tokens": 4, "min_new_tokens": 4, "batch_size": 16},
        "reward": {"model": "profanity-check"},
        "evaluation": {"judges": [{"model": "profanity-check"}], "num_table_rows": 2, "samples_per_prompt": 4},
        "train": {"steps": 1, "batch_size": 8, "mini_batch_size": 4, "lora_r": 4, "lora_alpha": 8},
        "gate": {"judge": "profanity-check", "min_improvement": -10.0, "require": ["samples", "toxicity"]},
        "retention": {"keep_challengers": 1, "run_folder_days": 0, "registry_cache_versions": 1},
    }))
    config = load_config(path)
    sizes, logged = {}, {}
    for night in range(1, 6):
        result = nightly.run_all(str(path), {}, dag_run_id=f"scheduled__2026-01-0{night}T02:00:00+00:00")
        assert (result["model_version"], result["promoted"]) == (str(night), True), result
        client = tracking.connect(config)
        source = client.get_model_version(NAME, str(night)).source.removeprefix("models:/")
        logged[night] = client.get_logged_model(source).artifact_location.removeprefix("file://")
        retention.collect_garbage(config, client)  # what the rlaif_maintenance DAG does every day
        sizes[night] = _disk_bytes(home)

    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")) == [3, 4, 5]
    assert [os.path.isdir(logged[n]) for n in range(1, 6)] == [False, False, True, True, True]
    runs = {r.data.tags[TAG_RUN_DIR]: r for r in client.search_runs([client.get_experiment_by_name("rlaif-tiny").experiment_id])}
    assert len(runs) == 5 and all(r.data.metrics for r in runs.values())  # every night's history stays
    emptied = sorted(d for d, r in runs.items() if not os.path.isdir(r.info.artifact_uri.removeprefix("file://")))
    assert emptied == sorted(str(home / "runs" / "tiny" / safe_run_id(f"scheduled__2026-01-0{n}T02:00:00+00:00")) for n in (1, 2))
    assert sorted(p.name for p in (home / "runs" / "tiny").iterdir() if (p / "config.yaml").is_file()) == sorted(
        safe_run_id(f"scheduled__2026-01-0{n}T02:00:00+00:00") for n in (3, 4, 5))
    print("disk after each night (bytes):", sizes)
    assert sizes[5] <= 1.1 * sizes[3], sizes
    assert sizes[5] <= 3.5 * sizes[1], sizes  # three nights' policies and folders, and one store
    for alias, version in (("champion", "5"), ("previous", "4")):
        assert str(client.get_model_version_by_alias(NAME, alias).version) == version
        answer = mlflow.pyfunc.load_model(f"models:/{NAME}@{alias}").predict(["you are"])
        assert len(answer) == 1 and isinstance(answer[0], str), answer
