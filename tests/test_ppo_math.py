"""PPO's pure functions against hand-computed numbers, and the LoRA reference trick on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif_tasks.train.ppo import (
    AdaptiveKLController,
    FixedKLController,
    batch_indices,
    fit_linear_value,
    gae,
    kl_penalty,
    leave_one_out,
    masked_mean,
    policy_loss,
    scale_by_group_std,
    step_prompts,
    token_logprobs,
    until_eos_mask,
    value_loss,
    whiten,
)


def test_gae_three_steps_by_hand():
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    mask = torch.ones(1, 3)
    # deltas: d2 = 2 - 1.5 = 0.5 ; d1 = 0 + 0.9*1.5 - 1 = 0.35 ; d0 = 1 + 0.9*1.0 - 0.5 = 1.4
    # A2 = 0.5 ; A1 = 0.35 + 0.45*0.5 = 0.575 ; A0 = 1.4 + 0.45*0.575 = 1.65875
    adv, ret = gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, torch.tensor([[1.65875, 0.575, 0.5]]))
    assert torch.allclose(ret, torch.tensor([[2.15875, 1.575, 2.0]]))


def test_gae_padding_ends_the_episode():
    # the second sequence has 2 real tokens: its value after token 1 is 0, padding gives 0 advantage
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 3.0, 7.0]])
    values = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv[0], torch.tensor([1.0, 1.0, 1.0]))
    # d1 = 3 + 0 - 2 = 1 ; d0 = 0 + 2 - 1 = 1 ; A0 = 1 + 1 = 2
    assert torch.allclose(adv[1], torch.tensor([2.0, 1.0, 0.0]))
    assert torch.allclose(ret[1], torch.tensor([3.0, 3.0, 0.0]))


def test_whiten_masked_mean_zero_std_one_and_shift_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 6.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]]).bool()
    w = whiten(x, mask)
    real = w[mask]
    assert abs(real.mean().item()) < 1e-6
    assert abs(real.std().item() - 1.0) < 1e-4
    assert torch.equal(w[~mask], torch.zeros(2))
    kept = whiten(x, mask, shift_mean=False)[mask]
    assert abs(kept.mean().item() - 3.5) < 1e-5  # the mean of 1..6 is kept
    assert abs(kept.std().item() - 1.0) < 1e-4


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("k1", [math.log(0.5) - math.log(0.25), math.log(0.2) - math.log(0.4)]),
        ("abs", [math.log(2), math.log(2)]),
        ("mse", [0.5 * math.log(2) ** 2, 0.5 * math.log(2) ** 2]),
        # r = p_ref / p: 0.5 then 2 ; (r - 1) - log r
        ("k3", [(0.5 - 1) - math.log(0.5), (2 - 1) - math.log(2)]),
    ],
)
def test_kl_estimators(kind, expected):
    logp = torch.log(torch.tensor([0.5, 0.2]))
    ref = torch.log(torch.tensor([0.25, 0.4]))
    assert torch.allclose(kl_penalty(logp, ref, kind), torch.tensor(expected), atol=1e-6)


def test_kl_estimator_unknown():
    with pytest.raises(ValueError):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k2")


def test_clipped_policy_loss_and_clipfrac_by_hand():
    # ratios 1.5 (A=+1: clipped to 1.2), 0.5 (A=+1: unclipped wins), 0.5 (A=-1: clipped to 0.8), 1.0 masked out
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.0]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipfrac, approx_kl = policy_loss(logp, old, adv, mask, cliprange=0.2)
    # per token max(-A*r, -A*clip(r)): -1.2, -0.5, 0.8 -> mean -0.3
    assert loss.item() == pytest.approx(-0.3, abs=1e-6)
    assert clipfrac.item() == pytest.approx(2 / 3, abs=1e-6)
    expected_kl = 0.5 * (math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 3
    assert approx_kl.item() == pytest.approx(expected_kl, abs=1e-6)


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 0.0, 1.0]])
    new = torch.tensor([[1.0, -0.1, 1.0]])
    ret = torch.tensor([[2.0, 0.0, 3.0]])
    mask = torch.ones(1, 3)
    loss, clipfrac = value_loss(new, old, ret, mask, cliprange_value=0.5)
    # token 0: v=1 clipped to 0.5: max(1, 2.25) = 2.25 (clipped) ; token 1: 0.01 both ; token 2: 4 both
    assert loss.item() == pytest.approx(0.5 * (2.25 + 0.01 + 4.0) / 3, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 3, abs=1e-6)


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_samples=1000)  # error clip(9/6 - 1) = 0.2 -> x(1 + 0.2 * 0.1) = 1.02
    assert ctl.value == pytest.approx(0.204)
    ctl.update(current_kl=5.4, n_samples=1000)  # error -0.1 -> x0.99
    assert ctl.value == pytest.approx(0.204 * 0.99)
    ctl.update(current_kl=0.0, n_samples=10000)  # error clipped to -0.2 -> x0.8
    assert ctl.value == pytest.approx(0.204 * 0.99 * 0.8)
    fixed = FixedKLController(0.3)
    fixed.update(100.0, 10000)
    assert fixed.value == 0.3
    restored = AdaptiveKLController(1.0, 6.0, 10)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value


def test_a_floored_controller_treats_the_target_as_a_budget():
    """On a 45-step night the KL grows from 0: an unfloored controller first lowers the coefficient, a floored one holds it."""
    free = AdaptiveKLController(init_kl_coef=0.2, target=2.0, horizon=64)
    budget = AdaptiveKLController(init_kl_coef=0.2, target=2.0, horizon=64, floor=0.2)
    for ctl in (free, budget):
        ctl.update(current_kl=0.5, n_samples=16)  # error clipped to -0.2 -> x0.95
    assert free.value == pytest.approx(0.19)
    assert budget.value == 0.2
    for _ in range(3):
        budget.update(current_kl=4.0, n_samples=16)  # over budget: error clipped to 0.2 -> x1.05 a step
    assert budget.value == pytest.approx(0.2 * 1.05**3)
    budget.update(current_kl=1.8, n_samples=16)  # under budget again: error -0.1 -> x0.975, still above the floor
    assert budget.value == pytest.approx(0.2 * 1.05**3 * 0.975)
    for _ in range(20):
        budget.update(current_kl=0.0, n_samples=16)
    assert budget.value == 0.2


def test_the_value_warm_up_fit_recovers_a_linear_value_and_shrinks_only_the_weights():
    torch.manual_seed(0)
    h = torch.randn(500, 6, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1, 1.0, 1.0, 1.0], dtype=torch.float64)
    w, b = torch.tensor([0.5, -0.2, 3.0, 0.0, 1.0, -1.0], dtype=torch.float64), 2.5
    x = torch.cat([h, torch.ones(500, 1, dtype=torch.float64)], 1)
    y = h @ w + b
    weight, bias = fit_linear_value(x.T @ x, x.T @ y, ridge=0.0)
    assert torch.allclose(weight, w, atol=1e-6) and abs(bias.item() - b) < 1e-6
    weight, bias = fit_linear_value(x.T @ x, x.T @ y, ridge=1e6)  # all shrunk: the intercept alone is left, the mean
    assert weight.abs().max().item() < 1e-3 and abs(bias.item() - y.mean().item()) < 1e-2


def test_masked_mean_and_eos_mask():
    assert masked_mean(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]])).item() == 2.0
    response = torch.tensor([[5, 6, 3, 0, 0], [5, 3, 3, 7, 0], [5, 6, 7, 8, 9]])
    assert until_eos_mask(response, [3]).long().tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_token_logprobs_match_log_softmax():
    logits = torch.randn(2, 3, 7)
    tokens = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, tokens), expected, atol=1e-6)


def test_batch_indices_cover_each_epoch_once():
    seen = [i for step in range(1, 6) for i in batch_indices(step, 10, 4, seed=1)]  # 20 draws = 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert batch_indices(3, 10, 4, seed=1) == batch_indices(3, 10, 4, seed=1)
    assert batch_indices(1, 10, 4, seed=1) != batch_indices(1, 10, 4, seed=2)


def test_leave_one_out_compares_each_response_with_its_prompts_others():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert leave_one_out(scores, 2).tolist() == [-1.0, 1.0, -3.0, 3.0]
    assert leave_one_out(scores, 4).tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 6 / 3])
    assert leave_one_out(scores, 1).tolist() == scores.tolist()
    assert leave_one_out(torch.tensor([5.0, 5.0, 1.0, 1.0]), 2).tolist() == [0.0, 0.0, 0.0, 0.0]  # a prompt's level is gone


def test_group_scaling_divides_each_prompts_centred_scores_by_its_spread():
    scores = torch.tensor([1.0, 3.0, 10.0, 10.5])
    centred = leave_one_out(scores, 2)  # [-2, 2, -0.5, 0.5]
    std_a, std_b = torch.tensor([1.0, 3.0]).std().item(), torch.tensor([10.0, 10.5]).std().item()
    scaled = scale_by_group_std(centred, scores, 2)
    assert scaled.tolist() == pytest.approx([-2 / std_a, 2 / std_a, -0.5 / std_b, 0.5 / std_b], rel=1e-3)
    assert scaled[1].item() == pytest.approx(scaled[3].item(), rel=1e-3)  # the closer pair weighs as much as the wider one
    assert scale_by_group_std(torch.zeros(4), torch.full((4,), 2.0), 4).tolist() == [0.0] * 4  # no spread: no push, no division by 0


def test_group_scaling_needs_groups():
    from rlaif_tasks.config import load_config
    from rlaif_tasks.errors import RlaifError

    with pytest.raises(RlaifError, match="a group of one has no spread"):
        load_config(None, {"train.ppo_scale_rewards": "group", "train.ppo_responses_per_prompt": 1})
    assert load_config(None, {"train.ppo_scale_rewards": "group", "train.ppo_responses_per_prompt": 4}).train.ppo_scale_rewards == "group"


def test_step_prompts_repeat_each_prompt_in_a_row_and_keep_the_single_response_draw():
    from rlaif_tasks.config import TrainConfig

    grouped = step_prompts(2, 10, TrainConfig(batch_size=8, ppo_responses_per_prompt=4), seed=1)
    assert grouped == [i for i in batch_indices(2, 10, 2, seed=1) for _ in range(4)] and len(set(grouped)) == 2
    assert step_prompts(2, 10, TrainConfig(batch_size=8), seed=1) == batch_indices(2, 10, 8, seed=1)


def test_ppos_own_batch_sizes_its_steps_and_the_others_keep_the_shared_one():
    """`train.ppo_batch_size` and `ppo_mini_batch_size` size PPO's steps only; unset, PPO takes `batch_size` and `mini_batch_size`."""
    from rlaif_tasks.config import TrainConfig, load_config
    from rlaif_tasks.errors import RlaifError

    own = TrainConfig(batch_size=16, mini_batch_size=4, ppo_batch_size=32, ppo_mini_batch_size=8, ppo_responses_per_prompt=4)
    assert own.ppo_sizes() == own.batch_sizes() == (32, 8)
    assert len(step_prompts(2, 100, own, seed=1)) == 32 and len(set(step_prompts(2, 100, own, seed=1))) == 8
    for algorithm in ("grpo", "rloo", "dpo"):
        assert TrainConfig(algorithm=algorithm, batch_size=16, mini_batch_size=4, ppo_batch_size=32, ppo_mini_batch_size=8).batch_sizes() == (16, 4)
    assert TrainConfig(batch_size=16, mini_batch_size=4).ppo_sizes() == (16, 4)
    with pytest.raises(RlaifError, match="must be a multiple of its minibatch"):
        load_config(None, {"train.ppo_batch_size": 32, "train.ppo_mini_batch_size": 12})
    with pytest.raises(RlaifError, match="must be a multiple of its minibatch"):
        load_config(None, {"train.ppo_batch_size": 0})
    from rlaif_tasks.train.collectives import check_batch_split

    with pytest.raises(RlaifError, match=r"train.ppo_batch_size \(16\) and train.ppo_mini_batch_size \(2\) are global"):
        check_batch_split(TrainConfig(batch_size=16, mini_batch_size=4, ppo_mini_batch_size=2), 4)  # PPO's minibatch alone is set
    with pytest.raises(RlaifError, match="must be >= 1 and divide"):  # the groups must fit PPO's own batch, not the shared one
        load_config(None, {"train.batch_size": 16, "train.ppo_batch_size": 30, "train.ppo_mini_batch_size": 6, "train.ppo_responses_per_prompt": 4})


def test_each_algorithm_trains_at_its_own_rate_where_the_config_sets_one():
    """`train.ppo_learning_rate` and `dpo_learning_rate` are PPO's and DPO's rates; unset, and for GRPO/RLOO, `learning_rate`."""
    from rlaif_tasks.config import RunConfig, TrainConfig
    from rlaif_tasks.model_card import model_card

    both = {"learning_rate": 5e-4, "ppo_learning_rate": 4e-4, "dpo_learning_rate": 3e-4}
    assert [(TrainConfig(algorithm=a, **both).rate_key(), TrainConfig(algorithm=a, **both).rate()) for a in ("ppo", "grpo", "rloo", "dpo")] == [
        ("ppo_learning_rate", 4e-4), ("learning_rate", 5e-4), ("learning_rate", 5e-4), ("dpo_learning_rate", 3e-4)]
    assert [TrainConfig(algorithm=a, learning_rate=5e-4).rate_key() for a in ("ppo", "dpo")] == ["learning_rate", "learning_rate"]
    assert TrainConfig(algorithm="ppo", **both).rate("dpo") == 3e-4  # what DPO on preferences trains at, whatever the config's algorithm
    card = model_card(RunConfig(train=TrainConfig(algorithm="dpo", **both)), "m", "1", "verdict", {}, [], None)
    assert "learning rate 0.0003," in card  # the version's card says the rate it trained at, not the shared one


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train.ppo_responses_per_prompt": 3}, "must be >= 1 and divide"),  # 16 is no multiple of 3
    ({"train.ppo_responses_per_prompt": 0}, "must be >= 1 and divide"),
    ({"train.ppo_responses_per_prompt": 8, "train.num_processes": 4}, "over 4 process"),  # a process's 4 cannot hold a group of 8
])
def test_a_prompts_responses_must_fit_in_each_processs_batch(overrides, message):
    from rlaif_tasks.config import load_config
    from rlaif_tasks.errors import RlaifError

    with pytest.raises(RlaifError, match=message):
        load_config(None, {"train.batch_size": 16, "train.mini_batch_size": 4, **overrides})
    assert load_config(None, {"train.batch_size": 16, "train.mini_batch_size": 4, "train.ppo_responses_per_prompt": 4}).train.ppo_responses_per_prompt == 4


def test_disabled_adapter_is_exactly_the_base_model(tmp_path):
    from peft import get_peft_model
    from tiny_models import tiny_causal_lm
    from transformers import AutoModelForCausalLM

    from rlaif_tasks.config import TrainConfig
    from rlaif_tasks.train.common import lora_config

    path = tiny_causal_lm(tmp_path / "tiny")
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        base_logits = base(ids).logits.clone()
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(path), lora_config(TrainConfig(lora_r=4, lora_alpha=8), "CAUSAL_LM")).eval()
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B = 0 at init would make the adapter a no-op
        adapted = policy(ids).logits
        with policy.disable_adapter():
            reference = policy(ids).logits
    assert not torch.allclose(adapted, base_logits, atol=1e-3), "the adapter should change the output"
    assert torch.allclose(reference, base_logits, atol=0, rtol=0)


def test_ppo_samples_from_a_merged_copy_that_follows_the_adapters_and_leaves_the_base_untouched(tmp_path):
    """PPO samples from a copy with the adapters merged; the reference (adapters off) must still be exactly the base."""
    from peft import get_peft_model
    from tiny_models import tiny_causal_lm
    from transformers import AutoModelForCausalLM

    from rlaif_tasks.config import TrainConfig
    from rlaif_tasks.train.common import MergedSampler, lora_config

    path = tiny_causal_lm(tmp_path / "tiny")
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    model = AutoModelForCausalLM.from_pretrained(path)
    sampler = MergedSampler(model)
    policy = get_peft_model(model, lora_config(TrainConfig(lora_r=4, lora_alpha=8), "CAUSAL_LM")).eval()
    with torch.no_grad():
        base_logits = base(ids).logits.clone()
        for step in range(3):
            for name, param in policy.named_parameters():
                if "lora_B" in name or "lora_A" in name:
                    param.add_(torch.randn_like(param) * 0.5)  # training moved the adapters since the last rollout
            adapted = policy(ids).logits
            merged = sampler.refresh(policy)
            assert not any(type(m).__module__.startswith("peft") for m in merged.modules())  # plain layers, no adapter calls
            assert torch.allclose(merged(ids).logits, adapted, atol=1e-4), step  # the same policy
            assert not torch.allclose(adapted, base_logits, atol=1e-3)
            with policy.disable_adapter():
                assert torch.equal(policy(ids).logits, base_logits), step


def test_a_bfloat16_rollout_copy_samples_the_same_policy_up_to_rounding_and_leaves_the_policy_in_float32(tmp_path):
    """train.rollout_dtype: bfloat16 makes the merged copy bfloat16; its logits follow the float32 adapted policy within bfloat16's rounding, the policy stays float32."""
    from peft import get_peft_model
    from tiny_models import tiny_causal_lm
    from transformers import AutoModelForCausalLM

    from rlaif_tasks.config import TrainConfig
    from rlaif_tasks.train.common import MergedSampler, lora_config

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm(tmp_path / "tiny"))
    sampler = MergedSampler(model, "bfloat16")
    policy = get_peft_model(model, lora_config(TrainConfig(lora_r=4, lora_alpha=8), "CAUSAL_LM")).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.5)
        adapted = policy(ids).logits
        merged = sampler.refresh(policy)
        assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in policy.parameters()} == {torch.float32}
        logits = merged(ids).logits.float()
    assert torch.allclose(logits, adapted, atol=0.1) and not torch.equal(logits, adapted)
    assert torch.equal(logits.argmax(-1), adapted.argmax(-1))


def test_dropping_the_padding_columns_a_minibatch_shares_changes_no_logit(tmp_path):
    """The update's minibatches drop the left padding all their queries share: same logits and values, fewer columns."""
    from tiny_models import tiny_causal_lm
    from transformers import AutoModelForCausalLM

    from rlaif_tasks.generation import lm_forward, query_response_batch
    from rlaif_tasks.train.ppo import without_shared_left_padding

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm(tmp_path / "tiny")).eval()
    batch = query_response_batch([[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16]], [[20, 21, 22], [23, 24], [25]], 0)
    minibatch = {k: v[1:] for k, v in batch.items()}
    trimmed = without_shared_left_padding(minibatch)
    assert trimmed["query_ids"].shape[1] == 3 < minibatch["query_ids"].shape[1] == 7
    with torch.no_grad():
        full_logits, full_hidden = lm_forward(model, minibatch, is_seq2seq=False)
        logits, hidden = lm_forward(model, trimmed, is_seq2seq=False)
    mask = minibatch["response_mask"].bool()
    assert torch.allclose(logits[mask], full_logits[mask], atol=1e-5) and torch.allclose(hidden[mask], full_hidden[mask], atol=1e-5)
    assert without_shared_left_padding(batch)["query_ids"].shape[1] == 7  # the longest query keeps every column
