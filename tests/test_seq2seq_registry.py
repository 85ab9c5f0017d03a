"""Registered policies read back whatever their flavour: causal LMs (transformers) and seq2seq LMs (pyfunc from code)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlaif_tasks import registry, tracking
from rlaif_tasks.config import TrackingConfig
from rlaif_tasks.errors import RlaifError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return TrackingConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=str(root / "artifacts"))


def tracked_run(name, model_dir, store):
    """A config named `name` for `model_dir`, a client on the store and a fresh MLflow run."""
    from tiny_models import tiny_run_config

    config = tiny_run_config(model_dir)
    config.name, config.tracking = name, store
    client = tracking.connect(config)
    return config, client, tracking.find_or_create_run(client, config, dag_id="test", dag_run_id=f"{name}-1")


def registered(name, model_dir, store):
    """`model_dir` registered as version 1 of rlaif-<name>-policy."""
    config, client, run_id = tracked_run(name, model_dir, store)
    return client, registry.register_policy(config, run_id, model_dir, client=client)


@pytest.mark.parametrize("flavour", ["causal", "seq2seq"])
def test_a_registered_policy_downloads_as_one_save_pretrained_folder(flavour, store, tmp_path):
    """The weights check and the champion's evaluation read this folder; the causal layout is put back together."""
    from tiny_models import tiny_causal_lm, tiny_seq2seq_lm

    from rlaif_tasks.models import load_model

    trained = (tiny_causal_lm if flavour == "causal" else tiny_seq2seq_lm)(tmp_path / "trained")
    client, version = registered(f"download-{flavour}", trained, store)
    folder = registry.download_policy(client, version["name"], version["version"], tmp_path / "download")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    assert load_model(str(folder)).kind == ("causal-lm" if flavour == "causal" else "seq2seq-lm")
    assert registry.weights_sha256(folder) == registry.weights_sha256(trained)
    assert registry.verify_registered_weights(client, version["name"], version["version"], trained) == registry.weights_sha256(trained)


@pytest.mark.slow  # starts a model server in a venv without this project
def test_a_seq2seq_policy_serves_without_rlaif_tasks_installed(store, tmp_path):
    """Logged from code, the pyfunc model needs only the pinned runtime: a process that cannot import rlaif_tasks answers."""
    from tiny_models import tiny_seq2seq_lm

    import mlflow

    _, version = registered("serve-t5", tiny_seq2seq_lm(tmp_path / "t5"), store)
    requirements = mlflow.pyfunc.get_model_dependencies(version["model_uri"])
    assert not any("rlaif" in line for line in open(requirements).read().splitlines())
    script = (
        "import sys; sys.modules['rlaif_tasks'] = None\n"
        "import json, mlflow\n"
        f"mlflow.set_tracking_uri({store.tracking_uri!r})\n"
        f"model = mlflow.pyfunc.load_model({version['model_uri']!r})\n"
        "print(json.dumps(model.predict(['you are a good friend', 'the day is'], params={'max_new_tokens': 3})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(answers) == 2 and all(isinstance(a, str) and len(a.split()) <= 3 for a in answers)


def test_a_model_that_is_not_a_language_model_is_refused_before_anything_is_logged(store, tmp_path):
    from tiny_models import tiny_classifier

    classifier = tiny_classifier(tmp_path / "classifier")
    config, client, run_id = tracked_run("classifier", classifier, store)
    with pytest.raises(RlaifError, match="holds a sequence-classifier"):
        registry.register_policy(config, run_id, classifier, client=client)
    assert client.search_logged_models([client.get_run(run_id).info.experiment_id], filter_string=f"source_run_id = '{run_id}'") == []
