"""GRPO and RLOO through TRL on tiny local models: they learn, log PPO's keys, resume after SIGKILL."""

from __future__ import annotations

import logging
import math

import pytest
from killed_training import count_good, kill_after_step

from rlaif_tasks.config import GenerationConfig, RunConfig, TrainConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.train.metrics import read_metrics
from rlaif_tasks.train.trl_online import METRIC_KEYS, train_with_trl

QUERIES = ["you are", "the day is", "i think that", "hello my friend", "what is this", "they are very", "she was so", "we love the"] * 4


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory):
    from tiny_models import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("models") / "causal")


def tiny_config(model_path, algorithm: str, **train) -> RunConfig:
    config = RunConfig(name="tiny", seed=0, device="cpu")
    config.model.policy = str(model_path)
    config.generation = GenerationConfig(max_new_tokens=8, min_new_tokens=8, batch_size=16)
    config.train = TrainConfig(**{"algorithm": algorithm, "steps": 2, "batch_size": 16, "mini_batch_size": 16, "num_generations": 4, "beta": 0.05, "init_kl_coef": 0.3, **train})
    return config


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_learns_to_say_good(algorithm, causal_path, tmp_path):
    config = tiny_config(causal_path, algorithm, steps=24, learning_rate=1e-2, use_lora=False, save_every=10)
    seen = []
    if algorithm == "grpo":  # the scorer path: config.reward names a Python callable
        config.reward.model = "python:test_trl_online:count_good"
        result = train_with_trl(config, tmp_path, QUERIES, on_step=lambda row: seen.append(row["step"]))
    else:
        result = train_with_trl(config, tmp_path, QUERIES, reward_fn=count_good, on_step=lambda row: seen.append(row["step"]))
    rewards = [m["reward/mean"] for m in result.metrics]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 1.0, f"no learning: first 5 steps {first:.2f}, last 5 {last:.2f} ({rewards})"
    assert seen == list(range(1, 25))

    rows = read_metrics(tmp_path / "train" / "metrics.jsonl")
    assert rows == result.metrics
    assert [r["step"] for r in rows] == list(range(1, 25))
    assert all(tuple(r) == METRIC_KEYS for r in rows)
    assert all(r[k] is not None and math.isfinite(r[k]) for r in rows for k in METRIC_KEYS)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference on step 1
    assert rows[-1]["kl"] > 0.1 and rows[-1]["kl"] == pytest.approx(rows[-1]["kl/token"] * rows[-1]["response_length"])
    assert all(r["response_length"] == 8 for r in rows)  # min_new_tokens = max_new_tokens = 8 reached TRL's generate
    assert all(r["kl_coef"] == 0.05 for r in rows)
    checkpoints = sorted(p.name for p in (tmp_path / "train" / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-20", "checkpoint-24"]  # every save_every steps, the last 2 kept, and the end


def test_final_folder_is_a_merged_plain_model_and_prompts_reach_the_reward(causal_path, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    raw = {q: f"raw prompt {i}" for i, q in enumerate(dict.fromkeys(QUERIES))}
    seen_prompts = []

    def reward(texts, prompts):
        seen_prompts.extend(prompts)
        return count_good(texts)

    config = tiny_config(causal_path, "grpo", steps=2, learning_rate=5e-2, use_lora=True, lora_r=4, lora_alpha=8)
    result = train_with_trl(config, tmp_path, QUERIES, [raw[q] for q in QUERIES], reward_fn=reward)
    assert len(seen_prompts) == 2 * 16 and set(seen_prompts) <= set(raw.values())
    final = result.model_dir
    assert final == tmp_path / "train" / "final"
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()
    assert not list(final.glob("adapter_*")), "the final model must be merged, not an adapter"
    assert (tmp_path / "train" / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(causal_path)
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight), "LoRA was not merged"
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 6)


def test_resume_after_sigkill_runs_only_the_remaining_steps(causal_path, tmp_path, caplog):
    config = tiny_config(causal_path, "rloo", steps=6, save_every=2, learning_rate=1e-2, use_lora=True, lora_r=4, lora_alpha=8)
    metrics_file = tmp_path / "train" / "metrics.jsonl"
    killed_rows = kill_after_step("rlaif_tasks.train.trl_online:train_with_trl", config, tmp_path, QUERIES, step=5)
    assert [r["step"] for r in killed_rows] == [1, 2, 3, 4, 5]
    checkpoints = tmp_path / "train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (tmp_path / "train" / "final").exists()
    (checkpoints / "checkpoint-6").mkdir()  # a checkpoint the kill interrupted mid-write: no state file, ignored

    ran = []
    with caplog.at_level(logging.INFO, logger="rlaif_tasks.train.trl_online"):
        result = train_with_trl(config, tmp_path, QUERIES, reward_fn=count_good, on_step=lambda m: ran.append(m["step"]))
    assert ran == [5, 6]
    assert result.resumed_from == 4
    assert "running steps 5-6" in caplog.text
    rows = read_metrics(metrics_file)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[:4] == killed_rows[:4]
    assert rows[4]["reward/mean"] == killed_rows[4]["reward/mean"]  # RNG and sampler state travel with the checkpoint
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert (tmp_path / "train" / "final" / "config.json").is_file()

    changed = tiny_config(causal_path, "rloo", steps=8, save_every=2, learning_rate=5e-3, use_lora=True, lora_r=4, lora_alpha=8)
    with pytest.raises(RlaifError, match="learning_rate"):
        train_with_trl(changed, tmp_path, QUERIES, reward_fn=count_good)


def test_seq2seq_policy_is_refused_with_the_fix(tmp_path):
    from tiny_models import tiny_seq2seq_lm

    config = tiny_config(tiny_seq2seq_lm(tmp_path / "t5"), "grpo")
    with pytest.raises(RlaifError, match="seq2seq") as err:
        train_with_trl(config, tmp_path / "run", QUERIES, reward_fn=count_good)
    assert "train.algorithm=ppo" in err.value.fix
    assert not (tmp_path / "run" / "train" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train.batch_size": 10}, "multiple of train.num_generations"),
        ({"train.num_generations": 1}, "num_generations >= 2"),
        ({"generation.do_sample": False}, "do_sample"),
        ({"generation.stop_strings": ["!"]}, "stop_strings"),
    ],
)
def test_unsupported_settings_are_refused_before_loading(change, message, tmp_path):
    from rlaif_tasks.config import load_config

    config = load_config(None, {"train.algorithm": "rloo", "train.mini_batch_size": 2, "model.policy": str(tmp_path / "missing"), **change})
    with pytest.raises(RlaifError, match=message):
        train_with_trl(config, tmp_path, QUERIES, reward_fn=count_good)
