"""Damaged checkpoints (issue 11): resumption falls back to the one before, keeps the damaged one aside."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from killed_training import count_good
from tiny_models import tiny_run_config

from rlaif_tasks.config import RunConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.train import checkpoint as ckpt
from rlaif_tasks.train.metrics import read_metrics

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_torch_thread")]

QUERIES = ["you are", "the day is", "i think that", "hello my friend", "what is this", "they are very", "she was so", "we love the"] * 4


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory):
    from tiny_models import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("models") / "causal")


def tiny_config(model_path, **train) -> RunConfig:
    return tiny_run_config(model_path, **{"save_every": 1, "learning_rate": 1e-2, **train})


def truncate(path: Path) -> int:
    size = path.stat().st_size // 2
    with open(path, "r+b") as handle:
        handle.truncate(size)
    return size


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == ckpt.log.name]


def test_ppo_resumes_from_the_checkpoint_before_a_truncated_one(causal_path, tmp_path, caplog):
    """PPO trained 3 steps with a checkpoint each step, the newest checkpoint's weights cut to half: the resume warns naming step-3, continues from step 2 to the end with the same step-3 reward as the first run, and keeps the damaged folder as broken-step-3."""
    from rlaif_tasks.train.ppo import train_ppo

    config = tiny_config(causal_path, steps=3, use_lora=False)
    first = train_ppo(config, tmp_path, QUERIES, reward_fn=count_good)
    checkpoints = tmp_path / "train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-2", "step-3"]
    cut = truncate(checkpoints / "step-3" / "model.safetensors")

    config.train.steps = 4
    ran = []
    with caplog.at_level(logging.INFO):
        result = train_ppo(config, tmp_path, QUERIES, reward_fn=count_good, on_step=lambda m: ran.append(m["step"]))

    [warning] = warnings_of(caplog)
    assert "step-3" in warning and "model.safetensors" in warning and "renamed it to broken-step-3" in warning
    assert "running steps 3-4" in caplog.text
    assert result.resumed_from == 2 and ran == [3, 4]
    rows = read_metrics(tmp_path / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[:2] == first.metrics[:2]
    assert rows[2]["reward/mean"] == first.metrics[2]["reward/mean"]  # step 2's RNG state: step 3 samples as before
    assert sorted(p.name for p in checkpoints.iterdir()) == ["broken-step-3", "step-3", "step-4"]
    assert (checkpoints / "broken-step-3" / "model.safetensors").stat().st_size == cut
    assert (tmp_path / "train" / "final" / "config.json").is_file()


def test_ppo_starts_from_scratch_when_no_checkpoint_loads(causal_path, tmp_path, caplog):
    """Every checkpoint damaged (a truncated optimizer state, an unreadable trainer state): one warning each, then a clean start whose first reward equals a fresh run's."""
    from rlaif_tasks.train.ppo import train_ppo

    config = tiny_config(causal_path, steps=2, use_lora=True, lora_r=4, lora_alpha=8)
    first = train_ppo(config, tmp_path, QUERIES, reward_fn=count_good)
    checkpoints = tmp_path / "train" / "checkpoints"
    truncate(checkpoints / "step-2" / "optimizer.pt")
    (checkpoints / "step-1" / ckpt.STATE_FILE).write_text('{"format": 1, "step": ', encoding="utf-8")

    ran = []
    with caplog.at_level(logging.WARNING):
        result = train_ppo(config, tmp_path, QUERIES, reward_fn=count_good, on_step=lambda m: ran.append(m["step"]))

    warnings = warnings_of(caplog)
    assert len(warnings) == 3
    assert "step-2" in warnings[0] and "optimizer.pt" in warnings[0]
    assert "step-1" in warnings[1] and ckpt.STATE_FILE in warnings[1]
    assert "training starts from scratch" in warnings[2]
    assert result.resumed_from == 0 and ran == [1, 2]
    assert [r["step"] for r in read_metrics(tmp_path / "train" / "metrics.jsonl")] == [1, 2]
    assert result.metrics[0]["reward/mean"] == first.metrics[0]["reward/mean"]  # a clean start, not a half-loaded model
    assert sorted(p.name for p in checkpoints.iterdir()) == ["broken-step-1", "broken-step-2", "step-1", "step-2"]


def test_grpo_resumes_from_the_checkpoint_before_a_truncated_one(causal_path, tmp_path, caplog):
    """GRPO (TRL) with its newest HF checkpoint truncated: set aside as broken-checkpoint-N with a warning, resumed from the one before, all steps finished."""
    from rlaif_tasks.train.trl_online import train_with_trl

    config = tiny_config(causal_path, algorithm="grpo", steps=3, mini_batch_size=16, num_generations=4, beta=0.05,
                         use_lora=True, lora_r=4, lora_alpha=8)
    first = train_with_trl(config, tmp_path, QUERIES, reward_fn=count_good)
    checkpoints = tmp_path / "train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    truncate(checkpoints / "checkpoint-3" / "adapter_model.safetensors")

    config.train.steps = 4
    ran = []
    with caplog.at_level(logging.INFO):
        result = train_with_trl(config, tmp_path, QUERIES, reward_fn=count_good, on_step=lambda m: ran.append(m["step"]))

    [warning] = warnings_of(caplog)
    assert "checkpoint-3" in warning and "adapter_model.safetensors" in warning
    assert result.resumed_from == 2 and ran == [3, 4]
    rows = read_metrics(tmp_path / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[:2] == first.metrics[:2]
    assert (checkpoints / "broken-checkpoint-3").is_dir()
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]


def fake_checkpoint(root: Path, step: int) -> Path:
    path = root / f"step-{step}"
    path.mkdir(parents=True)
    torch.save({"state": {0: {"exp_avg": torch.full((256,), 7, dtype=torch.uint8)}}, "param_groups": []}, path / "optimizer.pt")
    (path / ckpt.STATE_FILE).write_text('{"step": %d}' % step, encoding="utf-8")
    return path


def test_a_flipped_bit_in_a_torch_file_is_caught(tmp_path):
    """One flipped bit in a torch checkpoint file fails its CRC check (a plain torch.load would not notice)."""
    path = fake_checkpoint(tmp_path, 1)
    ckpt.verify_files(path)
    data = bytearray((path / "optimizer.pt").read_bytes())
    data[data.index(bytes([7]) * 256) + 100] ^= 0xFF
    (path / "optimizer.pt").write_bytes(bytes(data))
    assert torch.load(path / "optimizer.pt", weights_only=True)["state"][0]["exp_avg"][100] == 7 ^ 0xFF  # loads, silently wrong
    with pytest.raises(ckpt.DamagedCheckpoint, match="optimizer.pt"):
        ckpt.verify_files(path)


def test_a_refusal_is_not_damage_and_a_half_load_is_not_trained_on(tmp_path, caplog):
    """A changed training setting is refused, not treated as damage (the checkpoint is not renamed); a load that fails half-way with nothing older raises rather than training a half-restored model."""
    found = [(1, fake_checkpoint(tmp_path, 1)), (2, fake_checkpoint(tmp_path, 2))]

    def refuse(step, path):
        raise RlaifError("other training settings", "keep them")

    with pytest.raises(RlaifError, match="other training settings"):
        ckpt.resume_newest(found, refuse)
    assert all(path.is_dir() for _, path in found)

    def fail_midway(step, path):
        raise RuntimeError("size mismatch for lm_head.weight")

    with pytest.raises(RlaifError, match="may have changed the model"):
        ckpt.resume_newest(found, fail_midway)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken-step-1", "broken-step-2"]

    found = [(2, fake_checkpoint(tmp_path, 2))]
    assert ckpt.resume_newest(found, fail_midway, main=False, load_changes_model=False) is None
    assert (tmp_path / "step-2").is_dir(), "only the main process renames"
    assert ckpt.quarantine(tmp_path / "step-2").name == "broken-step-2.2"


class _RunsCode:
    """A pickle that would create a file when loaded: what a tampered rng.pt could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_rng_state_is_json_and_a_pickled_one_is_never_loaded(tmp_path, caplog):
    """Issue 20: checkpoint RNG state without pickle; the JSON round trip restores every generator bit for bit."""
    import random

    import numpy as np

    policy, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(list(policy.parameters()) + list(head.parameters()), lr=0.1)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    ckpt.save_checkpoint(tmp_path, 1, policy=policy, value_head=head, optimizer=optimizer, state={"step": 1})
    saved = tmp_path / "step-1"
    assert (saved / "rng.json").is_file() and not list(saved.glob("rng*.pt"))
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    ckpt.load_checkpoint(saved, policy=policy, value_head=head, optimizer=optimizer)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected

    (saved / "rng.json").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"python": _RunsCode(marker)}, saved / "rng.pt")  # an old-format (or tampered) state
    with caplog.at_level(logging.WARNING):
        ckpt.load_checkpoint(saved, policy=policy, value_head=head, optimizer=optimizer)
    assert not marker.exists() and "not loaded" in caplog.text
