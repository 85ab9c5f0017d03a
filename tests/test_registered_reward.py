"""A registered reward model (`models:/<name>-reward@alias`) as reward.model: pinned once per DAG run."""

from __future__ import annotations

import json

import pytest
import yaml

from rlaif_tasks.errors import RlaifError
from rlaif_tasks.stages import nightly
from rlaif_tasks.tags import TAG_REWARD_MODEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "rlaif-tiny-policy-reward"


@pytest.fixture
def config_path(tmp_path):
    from tiny_models import WORDS, tiny_causal_lm

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i) % len(WORDS)]}"}) + "\n" for i in range(30)))
    config = {
        "name": "tiny", "device": "cpu", "seed": 0, "model": {"policy": str(tiny_causal_lm(tmp_path / "policy"))},
        "data": {"source": str(prompts), "use_chat_template": False, "test_size": 10},
        "reward": {"model": "profanity-check"}, "evaluation": {"judges": [{"model": "profanity-check"}]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _register_reward_model(client, folder, seed: int) -> str:
    """A one-logit classifier folder with reward_model.json, logged and registered as the reward_model_training DAG does."""
    from tiny_models import tiny_classifier

    tiny_classifier(folder, id2label={0: "reward"}, seed=seed)
    (folder / "reward_model.json").write_text(json.dumps({"max_length": 64}))
    run = client.create_run(client.create_experiment(f"reward-model-{seed}", artifact_location=(folder.parent / "artifacts").as_uri()))
    client.log_artifacts(run.info.run_id, str(folder), "reward_model")
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, source=f"{run.info.artifact_uri}/reward_model", run_id=run.info.run_id)
    client.set_registered_model_alias(NAME, "champion", version.version)
    return str(version.version)


def test_a_registered_reward_model_is_pinned_for_the_whole_dag_run(home, config_path, tmp_path):
    from mlflow import MlflowClient
    from rlaif_tasks.config import load_config
    from rlaif_tasks.rewards import build_backend
    from rlaif_tasks.rewards.reward_model import RewardModelBackend

    (home / ".mlflow").mkdir(parents=True)
    store = f"sqlite:///{home / '.mlflow' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    nightly.prepare_dataset(str(config_path), {}, "rlaif_nightly", "manual__store")  # creates the embedded store's tables
    assert _register_reward_model(client, tmp_path / "rm1", seed=1) == "1"

    uri = f"models:/{NAME}@champion"
    refs = nightly.prepare_dataset(str(config_path), {"reward.model": uri}, "rlaif_nightly", "manual__first")
    config = load_config(f"{refs['run_dir']}/config.yaml")
    assert config.reward.model == f"models:/{NAME}/1"
    assert client.get_run(refs["mlflow_run_id"]).data.tags[TAG_REWARD_MODEL] == f"models:/{NAME}/1"
    texts = ["alpha beta", "gamma delta epsilon", "zeta"]
    pinned = build_backend(config.reward).reward(texts)
    assert pinned == pytest.approx(RewardModelBackend(tmp_path / "rm1").reward(texts))

    # the alias moves to a new version: a retry of the same DAG run keeps version 1, a new DAG run takes version 2
    assert _register_reward_model(client, tmp_path / "rm2", seed=2) == "2"
    retried = nightly.prepare_dataset(str(config_path), {"reward.model": uri}, "rlaif_nightly", "manual__first")
    assert retried["mlflow_run_id"] == refs["mlflow_run_id"]
    assert load_config(f"{refs['run_dir']}/config.yaml").reward.model == config.reward.model
    assert build_backend(load_config(f"{refs['run_dir']}/config.yaml").reward).reward(texts) == pytest.approx(pinned)
    second = nightly.prepare_dataset(str(config_path), {"reward.model": uri}, "rlaif_nightly", "manual__second")
    assert client.get_run(second["mlflow_run_id"]).data.tags[TAG_REWARD_MODEL] == f"models:/{NAME}/2"
    new = build_backend(load_config(f"{second['run_dir']}/config.yaml").reward).reward(texts)
    assert new == pytest.approx(RewardModelBackend(tmp_path / "rm2").reward(texts)) and new != pytest.approx(pinned)


def test_a_missing_registered_reward_model_is_refused_with_the_fix(home, config_path):
    with pytest.raises(RlaifError, match="reward_model_training"):
        nightly.prepare_dataset(str(config_path), {"reward.model": f"models:/{NAME}@champion"}, "rlaif_nightly", "manual__none")


def test_a_registered_model_resolves_in_the_store_the_config_names(home, config_path, tmp_path):
    """Only tracking.tracking_uri names the store (no $MLFLOW_TRACKING_URI): models:/ specs resolve there, not in the embedded one."""
    from mlflow import MlflowClient
    from rlaif_tasks.config import load_config
    from rlaif_tasks.rewards import build_backend
    from rlaif_tasks.rewards.reward_model import RewardModelBackend

    store = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    config = yaml.safe_load(config_path.read_text())
    config["tracking"] = {"tracking_uri": store, "artifact_location": str(tmp_path / "elsewhere-artifacts")}
    elsewhere = config_path.with_name("elsewhere.yaml")  # the store is the operator's to name, never a trigger's
    elsewhere.write_text(yaml.safe_dump(config))
    nightly.prepare_dataset(str(elsewhere), {}, "rlaif_nightly", "manual__store")  # creates that store's tables
    client = MlflowClient(store, registry_uri=store)
    assert _register_reward_model(client, tmp_path / "rm1", seed=1) == "1"

    refs = nightly.prepare_dataset(str(elsewhere), {"reward.model": f"models:/{NAME}@champion"}, "rlaif_nightly", "manual__first")
    config = load_config(f"{refs['run_dir']}/config.yaml")
    assert config.reward.model == f"models:/{NAME}/1"
    assert client.get_run(refs["mlflow_run_id"]).data.tags[TAG_REWARD_MODEL] == f"models:/{NAME}/1"
    texts = ["alpha beta", "zeta"]
    assert build_backend(config.reward).reward(texts) == pytest.approx(RewardModelBackend(tmp_path / "rm1").reward(texts))
    assert not (home / ".mlflow" / "mlflow.db").exists()  # nothing looked in the embedded store


def test_a_night_against_a_registered_reward_model_trains_at_rlhf_train(home, config_path, tmp_path, caplog):
    """The file's rlhf_train applies to a night whose reward is a registered reward model, not to a classifier's night, and
    never over a value the night sets itself; a trigger cannot set rlhf_train."""
    import logging

    from mlflow import MlflowClient
    from rlaif_tasks.config import load_config

    config = yaml.safe_load(config_path.read_text())
    config["train"] = {"algorithm": "ppo", "ppo_learning_rate": 1.0e-3, "target_kl": 3.0}
    config["rlhf_train"] = {"ppo_learning_rate": 5.0e-4, "target_kl": 2.0}
    config_path.write_text(yaml.safe_dump(config))
    (home / ".mlflow").mkdir(parents=True)
    store = f"sqlite:///{home / '.mlflow' / 'mlflow.db'}"
    classifier = nightly.prepare_dataset(str(config_path), {}, "rlaif_nightly", "manual__classifier")  # and the store's tables
    _register_reward_model(MlflowClient(store, registry_uri=store), tmp_path / "rm1", seed=1)

    def trained_at(refs: dict) -> tuple[float, float]:
        saved = load_config(f"{refs['run_dir']}/config.yaml")  # as the train task reads it
        return saved.train.rate(), saved.train.target_kl

    assert trained_at(classifier) == (1.0e-3, 3.0)
    with caplog.at_level(logging.INFO, logger="rlaif_tasks.stages.nightly"):
        rlhf = nightly.prepare_dataset(str(config_path), {"reward.model": f"models:/{NAME}@champion"}, "rlaif_nightly", "manual__rlhf")
    assert trained_at(rlhf) == (5.0e-4, 2.0)
    assert "rlhf_train's settings" in caplog.text and "train.ppo_learning_rate=0.0005" in caplog.text
    own = nightly.prepare_dataset(str(config_path), {"reward.model": f"models:/{NAME}/1", "train.ppo_learning_rate": 3.0e-4}, "rlaif_nightly", "manual__own")
    assert trained_at(own) == (3.0e-4, 2.0)
    with pytest.raises(RlaifError, match="rlhf_train"):
        nightly.prepare_dataset(str(config_path), {"rlhf_train": {"ppo_learning_rate": 1.0}}, "rlaif_nightly", "manual__trigger")
