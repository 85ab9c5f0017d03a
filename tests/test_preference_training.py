"""RLHF and DPO wired into runs: `train.algorithm: dpo` on imported or AI-feedback pairs, a trained reward model
as the reward of PPO, and an LLM judge as a configured scorer, all on tiny local models."""

from __future__ import annotations

import json
import random

import pytest
from test_reward_dpo import KIND, UNKIND, preference_pairs

from rlaif_tasks.config import RunConfig, ScorerConfig
from rlaif_tasks.rewards import build_scorer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def kind_words(texts):
    """A reward for AI feedback: kind words count up, unkind ones down."""
    return [float(sum(w in KIND for w in t.split()) - sum(w in UNKIND for w in t.split())) for t in texts]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from tiny_models import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("models") / "policy")


def tiny_config(policy, tmp_path, prompts) -> RunConfig:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    config = RunConfig(name="pref", seed=0, device="cpu", run_dir=str(tmp_path / "run"))
    config.model.policy = str(policy)
    config.data.source, config.data.use_chat_template, config.data.test_size, config.data.min_prompt_tokens = str(path), False, 4, 1
    config.generation.max_new_tokens, config.generation.min_new_tokens = 6, 6
    config.train.algorithm = "dpo"
    config.train.lora_target_modules = ["all-linear"]
    config.train.lora_r, config.train.lora_alpha = 8, 8
    return config


def ai_feedback_config(policy, tmp_path, new_tokens: int) -> RunConfig:
    """40 three-word prompts whose pairs come from the policy's own samples, k=6, labelled by `kind_words`."""
    rng = random.Random(0)
    config = tiny_config(policy, tmp_path, [" ".join(rng.sample(["you", "are", "the", "day", "people", "friend", "my"], 3)) for _ in range(40)])
    config.generation.max_new_tokens = config.generation.min_new_tokens = new_tokens
    config.reward = ScorerConfig(model="python:test_preference_training:kind_words")
    config.preferences.k, config.preferences.margin = 6, 0.5
    return config


def test_dpo_run_on_imported_human_pairs_raises_the_margin_and_reports_drops(policy, tmp_path):
    from rlaif_tasks.stages.local import prepare_dataset
    from rlaif_tasks.train import train

    pairs = preference_pairs(160)
    bad = [{"prompt": "you are", "chosen": " same", "rejected": " same"}, {"prompt": "", "chosen": " good", "rejected": " bad"}]
    source = tmp_path / "human.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in [*pairs.to_dict("records"), *bad]))
    config = tiny_config(policy, tmp_path, sorted(set(pairs["prompt"])))
    config.preferences.source = str(source)
    config.train.steps, config.train.batch_size, config.train.learning_rate = 40, 16, 1e-2
    prepare_dataset(config)
    final = train(config, config.resolved_run_dir)

    run_dir = config.resolved_run_dir
    manifest = json.loads((run_dir / "preferences" / "manifest.json").read_text())
    assert manifest["pairs"] == 160 and {"identical", "missing"} <= set(manifest["report"]["dropped"])
    metrics = json.loads((run_dir / "train" / "dpo.json").read_text())
    assert metrics["margin_final"] > metrics["margin_initial"] + 0.5, metrics
    assert (final / "config.json").is_file() and not list(final.glob("adapter_*"))


def test_ai_feedback_pairs_come_from_the_policy_and_the_reward(policy, tmp_path):
    from rlaif_tasks.data import load_prompts_split
    from rlaif_tasks.preferences.run_pairs import preference_pairs as run_pairs
    from rlaif_tasks.stages.local import prepare_dataset

    config = ai_feedback_config(policy, tmp_path, new_tokens=12)
    prepare_dataset(config)
    pairs = run_pairs(config, config.resolved_run_dir, load_prompts_split(config.resolved_run_dir, "train"))
    assert len(pairs) >= 3
    assert (pairs["score_chosen"] - pairs["score_rejected"] > 0.5).all()
    assert kind_words(pairs["chosen"].tolist()) == pairs["score_chosen"].tolist()
    manifest = json.loads((config.resolved_run_dir / "preferences" / "manifest.json").read_text())
    assert manifest["source"] == "ai-feedback" and manifest["k"] == 6 and manifest["judge"] == "python:test_preference_training:kind_words"


def test_a_trained_reward_model_is_the_reward_of_a_ppo_run(policy, tmp_path):
    """RLHF: RewardTrainer on pairs, then its folder as reward.model; PPO's rewards are that model's scores."""
    from rlaif_tasks.rewards.reward_model import RewardModelBackend
    from rlaif_tasks.stages.local import prepare_dataset
    from rlaif_tasks.train import train
    from rlaif_tasks.train.metrics import read_metrics
    from rlaif_tasks.train.reward_model import RewardModelConfig, train_reward_model

    summary = train_reward_model(preference_pairs(), tmp_path / "rm", RewardModelConfig(base_model=str(policy), use_lora=False, learning_rate=3e-3, epochs=3, batch_size=16, max_length=32, eval_share=0.2, device="cpu"))
    assert summary["eval_accuracy"] >= 0.8
    scorer = build_scorer(ScorerConfig(model=str(tmp_path / "rm")), purpose="reward")
    assert isinstance(scorer.backend, RewardModelBackend)
    nice, nasty = scorer([" you are a good friend", " you are a stupid friend"])
    assert nice > nasty

    config = tiny_config(policy, tmp_path, sorted(set(preference_pairs()["prompt"])))
    config.train.algorithm, config.train.steps, config.train.batch_size, config.train.mini_batch_size = "ppo", 2, 8, 4
    config.reward = ScorerConfig(model=str(tmp_path / "rm"))
    prepare_dataset(config)
    train(config, config.resolved_run_dir)
    rows = read_metrics(config.resolved_run_dir / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["reward/mean"] != 0 and abs(r["reward/mean"]) < 50 for r in rows), rows


def test_an_llm_judge_is_a_configured_scorer(monkeypatch):
    from stub_openai_server import stub_openai_server

    monkeypatch.setenv("JUDGE_KEY", "sk-test-secret")
    with stub_openai_server(answers={"idiot": "9", "thanks": "1"}) as stub:
        cfg = ScorerConfig(model="llm-judge", name="gpt-judge", llm_judge={"backend": "openai", "model": "judge-1", "base_url": stub.url, "api_key_env": "JUDGE_KEY"})
        scorer = build_scorer(cfg, purpose="toxicity")
        assert scorer.name == "gpt-judge"
        assert scorer(["you idiot", "thanks a lot"]) == pytest.approx([0.9, 0.1])
        assert "sk-test-secret" not in repr(cfg)


def test_iterative_dpo_samples_each_round_from_the_last_policy(policy, tmp_path):
    """dpo_rounds=2: round 2's pairs come from round 1's policy, and each round raises its own pairs' margin.

    Whether round 1's samples already score higher is not asserted: on this tiny policy it went either way
    (round 2 minus round 1 mean reward +0.25, -0.09, -0.08, +0.10 at seeds 0-3 with HF's sampler; +0.08, -0.07,
    +0.18, -0.04 with the per-row sampler), so it held at seed 0 by chance."""
    from rlaif_tasks.preferences import read_preferences
    from rlaif_tasks.stages.local import prepare_dataset
    from rlaif_tasks.train import train
    from rlaif_tasks.train.metrics import read_metrics

    config = ai_feedback_config(policy, tmp_path, new_tokens=8)
    config.train.dpo_rounds, config.train.steps, config.train.batch_size, config.train.learning_rate = 2, 30, 16, 1e-2
    prepare_dataset(config)
    seen = []
    final = train(config, config.resolved_run_dir, on_step=seen.append)

    run_dir = config.resolved_run_dir
    logged = read_metrics(run_dir / "train" / "metrics.jsonl")
    assert [(r["round"], r["step"]) for r in seen] == [(1, s) for s in range(1, 31)] + [(2, s) for s in range(31, 61)]
    assert logged == seen and all(r["loss"] is not None and r["dpo/reward_margin"] is not None for r in logged)
    first, first_manifest = read_preferences(run_dir / "preferences")
    second, second_manifest = read_preferences(run_dir / "train" / "rounds" / "round-2" / "preferences")
    round_one_policy = run_dir / "train" / "rounds" / "round-1" / "policy"
    assert second_manifest["policy"] == str(round_one_policy) and (round_one_policy / "config.json").is_file()
    assert not set(zip(second["prompt"], second["chosen"])) <= set(zip(first["prompt"], first["chosen"]))  # new samples, not round 1's

    summary = json.loads((run_dir / "train" / "dpo.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and summary["rounds"][1]["policy"] == str(round_one_policy)
    assert [r["steps"] for r in summary["rounds"]] == [30, 30] and summary["steps"] == 30  # the last round's, as the report says
    assert all(r["train_margin_final"] > r["train_margin_initial"] + 1 for r in summary["rounds"]), summary["rounds"]  # 3 held-out pairs are too few to judge
    assert summary["rounds"][1]["sample_reward_mean"] == second_manifest["report"]["mean_score"]

    # a retried train task keeps both finished rounds instead of training them again
    written = {path: path.stat().st_mtime_ns for path in (final / "model.safetensors", round_one_policy / "model.safetensors")}
    assert train(config, run_dir) == final
    assert {path: path.stat().st_mtime_ns for path in written} == written and read_metrics(run_dir / "train" / "metrics.jsonl") == logged


def test_a_dpo_night_draws_its_prompt_budget_and_trains_one_epoch_at_dpos_own_rate(policy, tmp_path):
    """Issue 24: `preferences.max_prompts` bounds the pairs a DPO night builds; `dpo_max_epochs` and `dpo_learning_rate` are DPO's own."""
    import math

    import pandas as pd

    from rlaif_tasks.data import load_prompts_split
    from rlaif_tasks.stages.local import prepare_dataset
    from rlaif_tasks.train import train

    config = ai_feedback_config(policy, tmp_path, new_tokens=12)
    config.preferences.max_prompts = 20
    config.train.steps, config.train.batch_size = 1000, 4  # steps would run for minutes: one epoch caps them
    config.train.learning_rate, config.train.dpo_learning_rate, config.train.dpo_max_epochs = 1e-12, 1e-2, 1.0
    prepare_dataset(config)
    run_dir = config.resolved_run_dir
    train_prompts = set(load_prompts_split(run_dir, "train")["prompt"])
    assert len(train_prompts) > 20
    train(config, run_dir)

    manifest = json.loads((run_dir / "preferences" / "manifest.json").read_text())
    assert manifest["report"]["prompts"] == 20 and manifest["prompts_drawn"] and manifest["max_prompts"] == 20
    pairs = pd.read_parquet(run_dir / "preferences" / "pairs.parquet")
    assert set(pairs["prompt"]) <= train_prompts and pairs["prompt"].nunique() == len(pairs) <= 20
    summary = json.loads((run_dir / "train" / "dpo.json").read_text())
    assert summary["steps"] == math.ceil(summary["pairs_train"] / 4) < 1000
    assert summary["config"]["learning_rate"] == 1e-2
    assert summary["train_margin_final"] > summary["train_margin_initial"] + 0.5  # at 1e-12 nothing would move
    assert config.train.describe() == "dpo, 1000 steps (at most 1 epoch)"
    # what the night's report says it did: pairs built from the drawn prompts, the steps one epoch allowed
    from rlaif_tasks.train.dispatch import describe_dpo

    said = describe_dpo(summary, manifest)
    assert said.startswith(f"DPO on {len(pairs)} preference pairs (AI feedback built in this run: 20 train prompts drawn by the seed, 6 answers each")
    assert f"), {summary['steps']} steps" in said
