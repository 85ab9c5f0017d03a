"""MLflow tracking on a real sqlite store: where runs go, one run per DAG run, no duplicated history."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rlaif_tasks import tracking
from rlaif_tasks.config import RunConfig, TrackingConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.tags import TAG_CONFIG_HASH, TAG_DAG_RUN_ID, TAG_DATASET


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "artifact_location": str(root / "artifacts")}


def make_config(store, name="track", **changes) -> RunConfig:
    config = RunConfig(name=name, device="cpu")
    config.tracking = TrackingConfig(**store)
    for key, value in changes.items():
        section, field = key.split("__")
        setattr(getattr(config, section), field, value)
    return config


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RLAIF_HOME", str(tmp_path))
    default = TrackingConfig()
    assert tracking.resolve_tracking_uri(default) == f"sqlite:///{tmp_path / '.mlflow' / 'mlflow.db'}"
    assert tracking.resolve_artifact_location(default) == (tmp_path / ".mlflow" / "artifacts").as_uri()
    assert (tmp_path / ".mlflow" / "artifacts").is_dir()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking.resolve_tracking_uri(default) == "http://mlflow.internal:5000"
    assert tracking.resolve_artifact_location(default) is None  # the server decides

    explicit = TrackingConfig(tracking_uri="sqlite:////srv/runs.db", artifact_location="s3://bucket/rlaif")
    assert tracking.resolve_tracking_uri(explicit) == "sqlite:////srv/runs.db"
    assert tracking.resolve_artifact_location(explicit) == "s3://bucket/rlaif"


def test_one_mlflow_run_per_dag_run(store):
    config = make_config(store)
    client = tracking.connect(config)
    first = tracking.find_or_create_run(client, config, dag_id="rlaif_nightly", dag_run_id="scheduled__2026-01-01T02:00:00+00:00", tags={TAG_DATASET: "abc"})
    again = tracking.find_or_create_run(client, config, dag_id="rlaif_nightly", dag_run_id="scheduled__2026-01-01T02:00:00+00:00")
    other = tracking.find_or_create_run(client, config, dag_id="rlaif_nightly", dag_run_id="scheduled__2026-01-02T02:00:00+00:00")
    assert first == again != other
    run = client.get_run(first)
    assert run.data.tags[TAG_DAG_RUN_ID] == "scheduled__2026-01-01T02:00:00+00:00"
    assert run.data.tags[TAG_CONFIG_HASH] == config.config_hash()
    assert run.data.tags[TAG_DATASET] == "abc"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "rlaif-track"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training view
    assert experiment.artifact_location.startswith("file://") and experiment.artifact_location.endswith("/artifacts")

    changed = make_config(store, train__steps=99)
    with pytest.raises(RlaifError, match="another config|recorded with config"):
        tracking.find_or_create_run(client, changed, dag_id="rlaif_nightly", dag_run_id="scheduled__2026-01-01T02:00:00+00:00")


def test_params_are_the_flattened_config(store):
    config = make_config(store, name="params")
    client = tracking.connect(config)
    run_id = tracking.find_or_create_run(client, config, dag_id="d", dag_run_id="r")
    assert tracking.log_params(client, run_id, config) > 50
    assert tracking.log_params(client, run_id, config) == 0
    params = client.get_run(run_id).data.params
    assert params["train.steps"] == "10"
    assert params["evaluation.judges.1.model"] == "profanity-check"
    assert params["generation.stop_strings"] == "[]"
    assert "run_dir" not in params


def test_training_metrics_are_logged_once_per_step(store, tmp_path):
    config = make_config(store, name="metrics")
    client = tracking.connect(config)
    run_id = tracking.find_or_create_run(client, config, dag_id="d", dag_run_id="r")
    rows = [{"step": s, "reward/mean": 0.1 * s, "kl": 0.5 * s, "entropy": None} for s in (1, 2, 3)]

    live = tracking.TrainingMetricsLogger(client, run_id)
    for row in rows[:2]:
        live(row)  # as on_step during training
    # a retried task: a new logger syncs the whole file, then training went one step further
    assert tracking.TrainingMetricsLogger(client, run_id).log(rows) == 2
    assert tracking.TrainingMetricsLogger(client, run_id).log(rows) == 0
    assert tracking.TrainingMetricsLogger(client, run_id).log(rows + [{"step": 4, "reward/mean": 0.4, "kl": 2.0}]) == 2

    history = client.get_metric_history(run_id, "train/reward/mean")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert len(client.get_metric_history(run_id, "train/kl")) == 4
    assert client.get_metric_history(run_id, "train/entropy") == []  # null (NaN in training) is not logged

    fig = tracking.training_figure(rows)
    tracking.log_figure(client, run_id, fig, "plots/training.png")
    png = client.download_artifacts(run_id, "plots/training.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert [ax.get_title() for ax in fig.axes] == ["reward (mean ± std)", "KL to the reference (nats / sequence)"]
    dpo = tracking.training_figure([{"step": 1, "loss": 0.69, "dpo/reward_margin": 0.0}, {"step": 2, "loss": 0.6, "dpo/reward_margin": 0.3}])
    assert [ax.get_title() for ax in dpo.axes] == ["implicit reward margin, chosen - rejected", "DPO loss"]
    assert list(dpo.axes[0].lines[0].get_ydata()) == [0.0, 0.3]


def test_evaluation_metrics_and_samples_table_once(store, tmp_path):
    config = make_config(store, name="evals")
    client = tracking.connect(config)
    run_id = tracking.find_or_create_run(client, config, dag_id="d", dag_run_id="r")
    before = {"judges": {"jigsaw-bilstm": {"mean": 0.4, "std": 0.2, "frac_toxic": 0.3, "n": 3}}}
    after = {"judges": {"jigsaw-bilstm": {"mean": 0.1, "std": 0.1, "frac_toxic": 0.0, "n": 3}}}
    assert tracking.log_metrics_once(client, run_id, tracking.evaluation_metrics("baseline", before)) == 3
    assert tracking.log_metrics_once(client, run_id, tracking.evaluation_metrics("baseline", before)) == 0
    assert len(client.get_metric_history(run_id, "eval/baseline/jigsaw-bilstm/mean")) == 1
    tracking.log_metrics_once(client, run_id, tracking.evaluation_metrics("final", after))
    logged = client.get_run(run_id).data.metrics
    assert {k: v for k, v in logged.items() if k.startswith("eval/final/")} == {
        "eval/final/jigsaw-bilstm/mean": 0.1, "eval/final/jigsaw-bilstm/std": 0.1, "eval/final/jigsaw-bilstm/frac_toxic": 0.0,
    }
    assert not any(k.startswith("eval/champion/") for k in logged)

    from rlaif_tasks.evaluation.toxicity import compare

    judges = compare(before, after)
    tracking.log_metrics_once(client, run_id, tracking.comparison_metrics(judges))
    assert client.get_run(run_id).data.metrics["improvement/jigsaw-bilstm/mean"] == pytest.approx(0.75)
    tracking.log_figure(client, run_id, tracking.toxicity_figure(judges), "plots/toxicity.png")

    samples = pd.DataFrame({"prompt": ["a", "b", "c"], "query": ["a", "b", "c"], "response": ["x", "y", "z"], "jigsaw-bilstm": [0.9, 0.2, 0.1]})
    assert tracking.log_samples_table(client, run_id, samples, "eval/final_samples.json")
    assert not tracking.log_samples_table(client, run_id, samples, "eval/final_samples.json")
    experiment_id = client.get_run(run_id).info.experiment_id
    table = client.load_table(experiment_id, "eval/final_samples.json", run_ids=[run_id])
    assert len(table) == 3 and table["response"].tolist() == ["x", "y", "z"]
    assert "query" not in table.columns  # the same text as `prompt` when no chat template wraps it
    templated = samples.assign(query=["<user>a", "<user>b", "<user>c"])
    assert tracking.log_samples_table(client, run_id, templated, "eval/chat_samples.json")
    assert client.load_table(experiment_id, "eval/chat_samples.json", run_ids=[run_id])["query"].tolist() == ["<user>a", "<user>b", "<user>c"]
    names = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert names == {"plots/toxicity.png"}
    assert json.loads(open(client.download_artifacts(run_id, "eval/final_samples.json", str(tmp_path))).read())["columns"][0] == "prompt"
