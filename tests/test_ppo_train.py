"""PPO end to end on tiny local models: it learns, it is deterministic, it resumes after SIGKILL."""

from __future__ import annotations

import logging
import math
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from killed_training import count_good, kill_after_step
from tiny_models import tiny_run_config

from rlaif_tasks.errors import RlaifError
from rlaif_tasks.train.metrics import read_metrics
from rlaif_tasks.train.ppo import METRIC_KEYS, cut_at_stop, train_ppo

QUERIES = ["you are", "the day is", "i think that", "hello my friend", "what is this", "they are very", "she was so", "we love the"] * 4
TIMING_KEYS = {"time/generate", "time/score", "time/update", "time/step", "tokens_per_second"}


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory):
    from tiny_models import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("models") / "causal")


@pytest.fixture(scope="module")
def seq2seq_path(tmp_path_factory):
    from tiny_models import tiny_seq2seq_lm

    return tiny_seq2seq_lm(tmp_path_factory.mktemp("models") / "seq2seq")




def test_ppo_learns_to_say_good(causal_path, tmp_path, caplog):
    config = tiny_run_config(causal_path, steps=30, learning_rate=1e-2, use_lora=False, save_every=10)
    result = train_ppo(config, tmp_path, QUERIES, reward_fn=count_good)
    rewards = [m["reward/mean"] for m in result.metrics]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 1.0, f"no learning: first 5 steps {first:.2f}, last 5 {last:.2f} ({rewards})"
    rows = read_metrics(tmp_path / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert all(tuple(r) == METRIC_KEYS for r in rows)
    assert all(math.isfinite(r[k]) for r in rows for k in METRIC_KEYS)
    assert sorted(p.name for p in (tmp_path / "train" / "checkpoints").iterdir()) == ["step-20", "step-30"]  # only the last 2
    assert (tmp_path / "train" / "checkpoints" / "step-30" / "model.safetensors").is_file()  # full weights, no LoRA

    # train.steps may grow between runs: the full-weight checkpoint of step 30 is resumed for 2 more steps
    config.train.steps = 32
    with caplog.at_level(logging.INFO, logger="rlaif_tasks.train.ppo"):
        more = train_ppo(config, tmp_path, QUERIES, reward_fn=count_good)
    assert more.resumed_from == 30 and [m["step"] for m in more.metrics] == list(range(1, 33))
    assert "running steps 31-32" in caplog.text
    assert sum(m["reward/mean"] for m in more.metrics[-2:]) / 2 > first + 1.0


def test_a_value_warm_up_starts_the_value_head_at_each_prompts_score(causal_path, tmp_path, caplog):
    """train.value_warmup_steps: the warmed-up head predicts the base policy's scores at step 1 (their level and part of how
    they differ by prompt), where a zero head's loss is their whole second moment."""
    import re

    def by_prompt(responses, prompts):
        return [4.0 if p in QUERIES[:4] else 2.0 for p in prompts]

    first_value_loss = {}
    for warmup, per_prompt in ((0, 1), (4, 1), (0, 4)):
        config = tiny_run_config(causal_path, steps=1, learning_rate=1e-4, save_every=0, value_warmup_steps=warmup, ppo_responses_per_prompt=per_prompt)
        with caplog.at_level(logging.INFO, logger="rlaif_tasks.train.ppo"):
            result = train_ppo(config, tmp_path / f"warmup{warmup}-k{per_prompt}", QUERIES, reward_fn=by_prompt)
        first_value_loss[warmup, per_prompt] = result.metrics[0]["loss/value"]
    assert first_value_loss[0, 1] > 3.0  # 0.5 * E[score^2] = 5, less what one clipped step can learn
    assert first_value_loss[4, 1] < 0.1 * first_value_loss[0, 1], first_value_loss
    # train.ppo_responses_per_prompt: a score that only the prompt decides is no news to any of its responses
    assert first_value_loss[0, 4] < 1e-3, first_value_loss
    explained = float(re.search(r"value warm-up: 4 rollouts, \d+ tokens, mean return [\d.]+, variance explained ([\d.-]+)", caplog.text)[1])
    assert explained > 0.1  # the hidden states of this 2-layer random model say a little about which prompt it answers


def test_ppo_learns_in_mixed_bfloat16(causal_path, tmp_path):
    """train.autocast_dtype bfloat16: the forward passes in bfloat16, the weights and optimiser in float32; it learns as float32 does (test above), and the first update starts from the sampled policy."""
    import torch

    config = tiny_run_config(causal_path, steps=30, learning_rate=1e-2, use_lora=False, save_every=0, autocast_dtype="bfloat16")
    result = train_ppo(config, tmp_path, QUERIES, reward_fn=count_good)
    rewards = [m["reward/mean"] for m in result.metrics]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 1.0, rewards
    assert all(math.isfinite(m[k]) for m in result.metrics for k in METRIC_KEYS)
    assert max(abs(m["approx_kl"]) for m in result.metrics[:1]) < 0.05
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(tmp_path / "train" / "final" / "model.safetensors").values()} == {torch.float32}


def test_same_seed_same_first_step_and_final_folder_is_a_plain_model(causal_path, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    runs = []
    for name in ("a", "b"):
        config = tiny_run_config(causal_path, steps=1, learning_rate=1e-2, use_lora=True, lora_r=4, lora_alpha=8)
        runs.append(train_ppo(config, tmp_path / name, QUERIES, reward_fn=count_good))
    first = [{k: v for k, v in r.metrics[0].items() if k not in TIMING_KEYS} for r in runs]
    assert first[0] == first[1]
    assert first[0]["kl"] == 0.0  # LoRA B starts at 0: the policy is the reference on step 1

    final = runs[0].model_dir
    assert final == tmp_path / "a" / "train" / "final"
    assert (final / "config.json").is_file()
    assert not list(final.glob("adapter_*")), "the final model must be merged, not an adapter"
    assert (tmp_path / "a" / "train" / "checkpoints" / "step-1" / "adapter" / "adapter_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(final)
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 6)


def test_resume_after_sigkill_runs_only_the_remaining_steps(causal_path, tmp_path, caplog):
    config = tiny_run_config(causal_path, steps=6, save_every=2, learning_rate=1e-2, use_lora=True, lora_r=4, lora_alpha=8)
    metrics_file = tmp_path / "train" / "metrics.jsonl"
    killed_rows = kill_after_step("rlaif_tasks.train.ppo:train_ppo", config, tmp_path, QUERIES, step=5)
    assert [r["step"] for r in killed_rows] == [1, 2, 3, 4, 5]
    checkpoints = tmp_path / "train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith(".")) == ["step-2", "step-4"]
    assert not (tmp_path / "train" / "final").exists()

    ran = []
    with caplog.at_level(logging.INFO, logger="rlaif_tasks.train.ppo"):
        result = train_ppo(config, tmp_path, QUERIES, reward_fn=count_good, on_step=lambda m: ran.append(m["step"]))
    assert ran == [5, 6]
    assert result.resumed_from == 4
    assert "resuming from checkpoint" in caplog.text and "running steps 5-6" in caplog.text
    rows = read_metrics(metrics_file)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[:4] == killed_rows[:4]
    # the RNG states travel with the checkpoint: the resumed step 5 samples what the killed run sampled
    assert rows[4]["reward/mean"] == killed_rows[4]["reward/mean"]
    assert rows[4]["response_length"] == killed_rows[4]["response_length"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-4", "step-6"]
    assert (tmp_path / "train" / "final" / "config.json").is_file()

    changed = tiny_run_config(causal_path, steps=8, save_every=2, learning_rate=5e-3, use_lora=True, lora_r=4, lora_alpha=8)
    with pytest.raises(RlaifError, match="learning_rate"):
        train_ppo(changed, tmp_path, QUERIES, reward_fn=count_good)


def test_seq2seq_policy_trains(seq2seq_path, tmp_path):
    config = tiny_run_config(seq2seq_path, steps=2, learning_rate=1e-3, use_lora=True, lora_r=4, lora_alpha=8)
    config.generation.stop_strings = ["!"]
    result = train_ppo(config, tmp_path, QUERIES, reward_fn=count_good)
    assert [m["step"] for m in result.metrics] == [1, 2]
    assert all(math.isfinite(m[k]) for m in result.metrics for k in METRIC_KEYS)
    assert 0 < result.metrics[0]["response_length"] <= 8
    assert (result.model_dir / "config.json").is_file() and not list(result.model_dir.glob("adapter_*"))


def test_stop_string_cuts_text_and_tokens():
    from tiny_models import make_tokenizer

    tok = make_tokenizer()
    ids = tok("you are good ! bad bad", add_special_tokens=False)["input_ids"]
    text, keep = cut_at_stop(tok, ids, ["!"])
    assert keep == 4  # the token that completes the stop string is the last action
    assert "bad" not in text and text.startswith("you are good")
    assert cut_at_stop(tok, ids, []) == (tok.decode(ids), len(ids))


def test_train_dispatches_on_algorithm(causal_path, tmp_path, monkeypatch):
    from rlaif_tasks.train import train

    data = types.ModuleType("rlaif_tasks.data")
    data.load_prompts_split = lambda run_dir, split: pd.DataFrame({"prompt": QUERIES, "query": QUERIES})
    monkeypatch.setitem(sys.modules, "rlaif_tasks.data", data)
    config = tiny_run_config(causal_path, steps=1)
    config.reward.model = "python:test_ppo_train:count_good"
    seen = []
    assert train(config, tmp_path, on_step=seen.append) == tmp_path / "train" / "final"
    assert [m["step"] for m in seen] == [1]

    calls = []
    trl = types.ModuleType("rlaif_tasks.train.trl_online")
    trl.train_with_trl = lambda config, run_dir, queries, prompts, on_step=None: calls.append((config.train.algorithm, len(queries))) or types.SimpleNamespace(model_dir=Path(run_dir) / "train" / "final")
    monkeypatch.setitem(sys.modules, "rlaif_tasks.train.trl_online", trl)
    config.train.algorithm = "grpo"
    train(config, tmp_path)
    assert calls == [("grpo", len(QUERIES))]
