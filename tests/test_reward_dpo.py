"""Reward model and DPO through TRL on tiny local models: both learn a constructed preference for kind words."""

from __future__ import annotations

import json
import math
import random

import pandas as pd
import pytest

from rlaif_tasks.rewards.reward_model import RewardModelBackend
from rlaif_tasks.train.dpo import DPOTrainConfig, preference_margin, train_dpo
from rlaif_tasks.train.reward_model import RewardModelConfig, split_pairs, train_reward_model

KIND = ["good", "nice", "kind", "great"]
UNKIND = ["bad", "stupid", "awful", "idiot"]
FILLER = ["the", "a", "day", "night", "people", "friend", "this", "that", "my", "your", "very", "so", "really"]
PROMPT_WORDS = ["you", "are", "i", "think", "we", "they", "he", "she", "it", "is", "was", "what", "why", "how", "hello"]


def preference_pairs(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Pairs whose responses differ only in one word: a kind one (chosen) or an unkind one (rejected).

    Responses begin with a space, as generated continuations do: TRL joins prompt and response as strings.
    """
    rng = random.Random(seed)
    prompts = sorted({" ".join(rng.sample(PROMPT_WORDS, 3)) for _ in range(400)})[: n // 4]
    rows = []
    for i in range(n):
        before, after = rng.sample(FILLER, 2), rng.sample(FILLER, 1)
        kind, unkind = rng.choice(KIND), rng.choice(UNKIND)
        rows.append({
            "prompt": prompts[i % len(prompts)],
            "chosen": " " + " ".join([*before, kind, *after]),
            "rejected": " " + " ".join([*before, unkind, *after]),
        })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory):
    from tiny_models import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("models") / "causal")


def test_reward_model_learns_kind_words(causal_path, tmp_path, one_torch_thread, caplog):
    cfg = RewardModelConfig(base_model=str(causal_path), use_lora=False, learning_rate=3e-3, epochs=3, batch_size=16, max_length=32, eval_share=0.2, device="cpu")
    with caplog.at_level("INFO", logger="rlaif_tasks.train.reward_model"):
        summary = train_reward_model(preference_pairs(), tmp_path / "rm", cfg)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]  # issue 23: a line per step, as PPO's
    assert len(progress) == summary["steps"] and progress[-1].startswith(f"step {summary['steps']}/{summary['steps']} loss ")
    assert all(" eta " in line and "s/step" in line for line in progress)

    assert summary["pairs_eval"] >= 30 and summary["pairs_train"] + summary["pairs_eval"] == 200
    assert summary["eval_accuracy"] >= 0.8, summary
    assert summary["eval_margin"] > 0.5, summary
    assert json.loads((tmp_path / "rm" / "reward_model.json").read_text())["eval_accuracy"] == summary["eval_accuracy"]

    backend = RewardModelBackend(tmp_path / "rm")
    assert backend.model.config.num_labels == 1
    nice, nasty = backend.reward(["you are a good friend", "you are a stupid friend"])
    assert nice > nasty
    p_nice, p_nasty = backend.toxic_probability(["you are a good friend", "you are a stupid friend"])
    assert 0.0 < p_nice < p_nasty < 1.0


def test_reward_model_with_lora_saves_merged_folder(causal_path, tmp_path, one_torch_thread):
    from transformers import AutoModelForSequenceClassification

    cfg = RewardModelConfig(base_model=str(causal_path), use_lora=True, lora_r=8, learning_rate=1e-2, epochs=1, batch_size=16, max_length=32, eval_share=0.2, device="cpu")
    summary = train_reward_model(preference_pairs(80), tmp_path / "rm", cfg)

    assert not (tmp_path / "rm" / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert model.config.num_labels == 1 and not any("lora" in name for name, _ in model.named_parameters())
    assert summary["steps"] > 0 and summary["eval_accuracy"] >= 0.8, summary

    _, held_out = split_pairs(preference_pairs(80), cfg.eval_share, cfg.seed)
    backend = RewardModelBackend(tmp_path / "rm")
    chosen = backend.reward((held_out["prompt"] + held_out["chosen"]).tolist())
    rejected = backend.reward((held_out["prompt"] + held_out["rejected"]).tolist())
    margins = [c - r for c, r in zip(chosen, rejected)]
    # the folder is the model evaluated, its scores put on a unit scale (these pairs carry no judge's scores)
    assert summary["score_scale"]["to"] == "unit"
    assert sum(margins) / len(margins) == pytest.approx(summary["eval_margin"] * summary["score_scale"]["scale"], abs=1e-4)


def test_reward_model_scores_come_in_the_units_of_the_judge_that_labelled_the_pairs(causal_path, tmp_path, one_torch_thread):
    """AI-feedback pairs carry the labelling judge's scores: the served model's scores over the training pairs' answers have
    their mean and spread, so PPO's KL settings weigh it as they weigh the judge. A raw Bradley-Terry scale would not."""
    import statistics

    pairs = preference_pairs(120)
    rng = random.Random(1)
    pairs["score_chosen"] = [3.0 + rng.gauss(0, 0.5) for _ in range(len(pairs))]
    pairs["score_rejected"] = [-1.0 + rng.gauss(0, 0.5) for _ in range(len(pairs))]
    cfg = RewardModelConfig(base_model=str(causal_path), use_lora=False, learning_rate=3e-3, epochs=3, batch_size=16, max_length=32, eval_share=0.2, device="cpu")
    summary = train_reward_model(pairs, tmp_path / "rm", cfg)
    assert summary["eval_accuracy"] >= 0.8 and summary["score_scale"]["to"] == "labels", summary

    train_pairs, _ = split_pairs(pairs, cfg.eval_share, cfg.seed)  # fewer than SCALE_PAIRS: all of them set the scale
    labels = [*train_pairs["score_chosen"], *train_pairs["score_rejected"]]
    backend = RewardModelBackend(tmp_path / "rm")
    scores = backend.reward([*(train_pairs["prompt"] + train_pairs["chosen"]), *(train_pairs["prompt"] + train_pairs["rejected"])])
    assert statistics.fmean(scores) == pytest.approx(statistics.fmean(labels), abs=1e-3)
    assert statistics.pstdev(scores) == pytest.approx(statistics.pstdev(labels), rel=1e-3)
    assert summary["score_scale"]["low"] == min(labels) and summary["score_scale"]["high"] == max(labels)
    backend.low = backend.high = 2.0
    assert backend.reward(["you are a good friend", "you are an awful friend"]) == [2.0, 2.0]  # clamped to the labels' range
    backend.scale, backend.shift, backend.low, backend.high = 1.0, 0.0, float("-inf"), float("inf")  # the raw head
    raw = backend.reward([*(train_pairs["prompt"] + train_pairs["chosen"])][:8])
    assert raw != pytest.approx(scores[:8], abs=0.05)


def test_reward_model_reads_the_prompt_before_the_response_as_it_was_trained(causal_path, tmp_path, one_torch_thread):
    """Training scored prompt+response (and fitted the scale and clamp on them): a reward or judge built from the folder scores
    each response after its prompt whatever the scorer's `input` says, not the response alone."""
    from rlaif_tasks.config import ScorerConfig
    from rlaif_tasks.rewards import build_scorer

    cfg = RewardModelConfig(base_model=str(causal_path), use_lora=False, learning_rate=3e-3, epochs=1, batch_size=16, max_length=32, eval_share=0.2, device="cpu")
    train_reward_model(preference_pairs(80), tmp_path / "rm", cfg)
    backend = RewardModelBackend(tmp_path / "rm")
    prompts, responses = ["why are you so", "hello they think", "what is it"], [" very kind", " a stupid day", " my friend"]
    joined = backend.reward([p + r for p, r in zip(prompts, responses)])
    alone = backend.reward(responses)
    assert joined != pytest.approx(alone, abs=1e-3)
    for purpose in ("reward", "toxicity"):
        scorer = build_scorer(ScorerConfig(model=str(tmp_path / "rm"), input="response"), purpose=purpose)
        expected = joined if purpose == "reward" else [1.0 / (1.0 + math.exp(r)) for r in joined]
        assert scorer(responses, prompts) == pytest.approx(expected, abs=1e-5)
        assert scorer(responses) == pytest.approx(alone if purpose == "reward" else [1.0 / (1.0 + math.exp(r)) for r in alone], abs=1e-5)


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_dpo_raises_held_out_margin(use_lora, causal_path, tmp_path, one_torch_thread, caplog):
    """With LoRA the reference is the adapter switched off; without, a second frozen copy of the policy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = preference_pairs()
    if use_lora:  # the tiny random model's logits hardly depend on its linear layers: LoRA moves them slowly
        cfg = DPOTrainConfig(learning_rate=1e-2, epochs=4, batch_size=16, lora_r=8, lora_alpha=8, lora_target_modules=["all-linear"], max_length=32, eval_share=0.2, device="cpu")
    else:
        cfg = DPOTrainConfig(learning_rate=3e-3, epochs=2, batch_size=16, use_lora=False, max_length=32, eval_share=0.2, device="cpu")
    with caplog.at_level("INFO", logger="rlaif_tasks.train.dpo"):
        metrics = train_dpo(causal_path, pairs, tmp_path / "dpo", cfg)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]  # issue 23: a line per step, as PPO's
    assert progress and all(" margin " in line and " eta " in line for line in progress)

    assert metrics["pairs_eval"] >= 30 and metrics["margin_on"] == "eval"
    assert metrics["margin_final"] > metrics["margin_initial"] + 1.0, metrics
    assert metrics["preferred_final"] >= 0.9 > metrics["preferred_initial"], metrics
    assert metrics["train_margin_final"] > metrics["train_margin_initial"] + 1.0, metrics

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "dpo")
    assert not any("lora" in name for name, _ in model.named_parameters())
    _, held_out = split_pairs(pairs, cfg.eval_share, cfg.seed)
    assert preference_margin(model, tokenizer, held_out) == pytest.approx(metrics["margin_final"], rel=1e-4, abs=1e-4)


def test_preference_margin_matches_trl_log_probs(causal_path, tmp_path, one_torch_thread):
    """Our margin and DPOTrainer's summed response log-probs (EOS included) agree on the same pairs."""
    from trl import DPOConfig, DPOTrainer

    from rlaif_tasks.models import load_model
    from rlaif_tasks.train.reward_model import pair_dataset

    pairs = preference_pairs(40)
    loaded = load_model(str(causal_path), kind="causal-lm")
    ours = preference_margin(loaded.model, loaded.tokenizer, pairs)
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, activation_checkpointing=False, per_device_eval_batch_size=len(pairs), report_to="none")
    trainer = DPOTrainer(model=loaded.model, args=args, train_dataset=pair_dataset(pairs), eval_dataset=pair_dataset(pairs), processing_class=loaded.tokenizer)
    logs = trainer.evaluate()
    assert ours == pytest.approx(logs["eval_logps/chosen"] - logs["eval_logps/rejected"], abs=1e-4)
