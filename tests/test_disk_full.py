"""A disk that fills up (issue 20): a real tmpfs of a few hundred KB under the run folder or the artefact store.

A full disk is an `OSError` (ENOSPC), not an `RlaifError`, so Airflow retries the task; these tests
check what the retry finds: no half-written checkpoint trusted, no half-logged model registered,
and success once space is freed. Mounting needs root (as in CI); elsewhere the module skips.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from killed_training import count_good
from tiny_models import tiny_run_config

from rlaif_tasks.train import checkpoint as ckpt
from rlaif_tasks.train.metrics import read_metrics

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_torch_thread")]

QUERIES = ["you are", "the day is", "i think that", "hello my friend", "what is this", "they are very", "she was so", "we love the"] * 4


class SmallDisk:
    """A tmpfs of `size_kb` at `path`; `grow()` frees space as an operator would, without touching what is on it."""

    def __init__(self, path: Path, size_kb: int):
        self.path = path
        path.mkdir(parents=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            message = f"cannot mount a small tmpfs to fill up ({done.stderr.strip() or 'not root'}): run as root, as CI does"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)

    def grow(self, size_kb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    disks = []

    def make(name: str, size_kb: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / name, size_kb))
        return disks[-1]

    yield make
    for disk in disks:
        disk.unmount()


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory):
    from tiny_models import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("models") / "causal")


def test_a_full_disk_during_a_checkpoint_is_retried_from_the_last_whole_one(causal_path, tmp_path, small_disk):
    """PPO's run folder on a 500 KB disk: the first checkpoint (336 KB) fits, the second fills the disk mid-write; the task fails with ENOSPC and leaves only whole checkpoints; once the disk is grown, the retry resumes from step 1 and ends with every step logged once and the same rewards as a run that never ran out."""
    from rlaif_tasks.train.ppo import train_ppo

    config = tiny_run_config(causal_path, save_every=1, learning_rate=1e-2, steps=3, use_lora=False)
    reference = train_ppo(config, tmp_path / "reference", QUERIES, reward_fn=count_good)

    disk = small_disk("disk", 500)
    with pytest.raises(OSError) as failure:
        train_ppo(config, disk.path, QUERIES, reward_fn=count_good)
    assert failure.value.errno == errno.ENOSPC
    checkpoints = disk.path / "train" / "checkpoints"
    assert [p.name for _, p in ckpt.list_checkpoints(checkpoints)] == ["step-1"]
    ckpt.verify_files(checkpoints / "step-1")

    disk.grow(4096)
    resumed = train_ppo(config, disk.path, QUERIES, reward_fn=count_good)
    assert resumed.resumed_from == 1
    rows = read_metrics(disk.path / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["reward/mean"] for r in rows] == [r["reward/mean"] for r in reference.metrics]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-2", "step-3"]  # the partial folder is gone
    assert (disk.path / "train" / "final" / "config.json").is_file()


def test_a_full_artefact_store_during_registration_registers_nothing_until_space_is_freed(causal_path, tmp_path, small_disk):
    """The artefact store on a 64 KB disk, the policy 116 KB: registration fails with ENOSPC and no version exists; once the disk is grown, the retry registers exactly one READY version whose weights hash to the trained folder's."""
    from mlflow.entities import LoggedModelStatus

    from rlaif_tasks import registry, tracking
    from rlaif_tasks.config import RunConfig, TrackingConfig

    disk = small_disk("artefacts", 64)
    config = RunConfig(name="diskfull", seed=0, device="cpu", run_dir=str(tmp_path / "run"))
    config.model.policy = str(causal_path)
    config.tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(disk.path))
    client = tracking.connect(config)
    run_id = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id="diskfull-1")
    name = tracking.registered_model_name(config)

    with pytest.raises(OSError) as failure:
        registry.register_policy(config, run_id, causal_path, client=client)
    assert failure.value.errno == errno.ENOSPC or "No space left" in str(failure.value)
    assert registry.versions_of_run(client, name, run_id) == []

    disk.grow(8192)
    registered = registry.register_policy(config, run_id, causal_path, client=client)
    versions = client.search_model_versions(f"name = '{name}'")
    assert [str(v.version) for v in versions] == [registered["version"]] == ["1"]
    source = versions[0].source.removeprefix("models:/")
    assert str(client.get_logged_model(source).status) == str(LoggedModelStatus.READY)
    assert registry.verify_registered_weights(client, name, "1", causal_path) == registry.weights_sha256(causal_path)
