"""PPO correctness the end-to-end tests cannot see: EOS masks, log-probs vs `generate`, reward placement,
the first ratio, score shaping and whitening, each against numbers worked out by hand.

The loop tests run one `train_ppo` step on a tiny model and record the arguments of the module's own
math functions (monkeypatched wrappers that call the originals), so they check what the loop feeds them.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlaif_tasks.config import GenerationConfig, RunConfig, TrainConfig
from rlaif_tasks.train import ppo
from rlaif_tasks.train.ppo import (
    PolicyWithValueHead,
    lm_forward,
    masked_mean,
    policy_loss,
    rollout,
    shape_scores,
    token_logprobs,
    value_loss,
    whiten,
)

EOS, PAD = 3, 0  # tiny_models.make_tokenizer: </s> and <pad>
GOOD, VERY, BANG = 20, 18, 60  # "good", "very", "!"

# one scripted response per query: EOS early, EOS early, no EOS, EOS on the last of 4 tokens
SCRIPT = {
    "you are": [GOOD, GOOD, EOS],
    "the day is": [VERY, EOS],
    "i think that": [GOOD, VERY, GOOD, VERY],
    "hello my friend": [VERY, GOOD, VERY, EOS],
}
EXPECTED_MASK = {"you are": [1, 1, 1, 0], "the day is": [1, 1, 0, 0], "i think that": [1, 1, 1, 1], "hello my friend": [1, 1, 1, 1]}


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory):
    from tiny_models import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("models") / "causal")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def scripted_generate(queries):
    """A stand-in for `generate` that answers `SCRIPT[query]`, padded like HF pads finished rows.

    Like HF, a chunk is only as wide as its longest response, so chunks differ in width.
    """
    position = 0

    def generate(input_ids, attention_mask, generation_config, logits_processor=None):  # the scripted answer ignores the sampler
        nonlocal position
        rows = [SCRIPT[q] for q in queries[position : position + input_ids.shape[0]]]
        position += input_ids.shape[0]
        width = max(len(r) for r in rows)
        response = torch.tensor([r + [generation_config.pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, response], dim=1)

    return generate


def test_rollout_mask_keeps_eos_and_masks_the_padding_after_it():
    """The mask is True up to AND including the first EOS (EOS is an action whose log-prob is trained),
    False on the padding after it, also where a narrower chunk was padded to the batch's width."""
    from types import SimpleNamespace

    from tiny_models import make_tokenizer

    tok = make_tokenizer()
    queries = list(SCRIPT)  # chunks of 2: the first chunk (both end early) is 3 tokens wide, the second 4
    model = SimpleNamespace(generate=scripted_generate(queries))
    ro = rollout(model, tok, queries, GenerationConfig(max_new_tokens=4, min_new_tokens=0, batch_size=2), False, "cpu")
    assert ro.batch["response_ids"].tolist() == [
        [GOOD, GOOD, EOS, PAD], [VERY, EOS, PAD, PAD], [GOOD, VERY, GOOD, VERY], [VERY, GOOD, VERY, EOS],
    ]
    assert ro.batch["response_mask"].tolist() == [EXPECTED_MASK[q] for q in queries]
    assert ro.ended.tolist() == [True, True, False, True]
    assert ro.texts == ["good good", "very", "good very good very", "very good very"]

    # a stop string ends a response without EOS: the tokens after the stop are masked, and it counts as ended
    model = SimpleNamespace(generate=lambda input_ids, attention_mask, generation_config, logits_processor=None: torch.cat(
        [input_ids, torch.tensor([[GOOD, BANG, VERY, VERY]])], dim=1))
    gen = GenerationConfig(max_new_tokens=4, min_new_tokens=0, batch_size=1, stop_strings=["!"])
    ro = rollout(model, tok, ["i think that"], gen, False, "cpu")
    assert ro.batch["response_mask"].tolist() == [[1, 1, 0, 0]]
    assert ro.ended.tolist() == [True] and ro.texts == ["good"]


def _recording(kwargs: dict) -> dict:
    """`generate`'s arguments with its per-step raw logits and processed scores returned too."""
    import copy

    config = copy.deepcopy(kwargs["generation_config"])
    config.update(output_scores=True, output_logits=True, return_dict_in_generate=True)
    return {**kwargs, "generation_config": config}


def _record_generate(model, sink: list) -> None:
    """Make `model.generate` keep (prompt length, full output with scores) in `sink` and return the sequences as usual.

    The scores kept are what the per-row sampler (generation.RowSeededSampler, the last processor) drew each token
    from: the warped logits it was given, not the one-hot it returns.
    """
    from transformers import LogitsProcessor

    real_generate = model.generate

    def generate(**kwargs):
        warped = []

        class Spy(LogitsProcessor):
            def __call__(self, input_ids, scores):
                warped.append(scores.clone())
                return scores

        processors = kwargs.get("logits_processor")
        if processors is not None:
            processors.insert(len(processors) - 1, Spy())
        out = real_generate(**_recording(kwargs))
        if warped:
            out.scores = tuple(warped)
        sink.append((kwargs["input_ids"].shape[1], out))
        return out.sequences

    model.generate = generate


def _eos_prone(model, bias: float):
    """Give the LM head a bias towards EOS, so sampled responses end early at different lengths."""
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[EOS] = bias
    model.lm_head = head
    return model


def _tiny_gpt2(tok):
    """Learned absolute positions: unlike Llama's RoPE (shift-invariant), wrong position ids under left padding show."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(cfg)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_of_sampled_tokens_equal_generates_scores(causal_path, arch, temperature):
    """PPO's old log-probs must be the log-probs of the distribution `generate` sampled from: the
    recomputed forward (left padding, position ids, logits / temperature) matches `generate`'s own
    logits on every real response token, including EOS, across chunks of different widths."""
    from tiny_models import make_tokenizer
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    base = AutoModelForCausalLM.from_pretrained(causal_path) if arch == "llama" else _tiny_gpt2(tok)
    model = _eos_prone(base.eval(), bias=3.0)
    outputs = []
    _record_generate(model, outputs)
    queries = ["you are", "the day is", "i think that you are", "hello", "what is this", "they are very kind"]
    gen = GenerationConfig(max_new_tokens=6, min_new_tokens=0, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, batch_size=3)
    torch.manual_seed(0)
    ro = rollout(model, tok, queries, gen, False, "cpu")
    mask = ro.batch["response_mask"].bool()
    lengths = mask.sum(1)
    assert ro.ended.any() and (lengths < mask.shape[1]).any() and len(set(lengths.tolist())) > 1, "need EOS inside the batch"

    # what generate saw: its raw logits / temperature, and its processed scores (= the same, no other warper here)
    from_logits, from_scores = torch.zeros(mask.shape), torch.zeros(mask.shape)
    row = 0
    for prompt_len, out in outputs:
        sampled = out.sequences[:, prompt_len:]
        raw = torch.stack(out.logits, dim=1).float() / temperature
        scores = torch.stack(out.scores, dim=1).float()
        n, width = sampled.shape
        from_logits[row : row + n, :width] = torch.log_softmax(raw, -1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        from_scores[row : row + n, :width] = torch.log_softmax(scores, -1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        row += n

    with torch.no_grad():
        logits, _ = lm_forward(model, ro.batch, is_seq2seq=False, want_hidden=False)
    ours = token_logprobs(logits / temperature, ro.batch["response_ids"])
    assert torch.allclose(ours[mask], from_logits[mask], atol=1e-5), (ours - from_logits).abs()[mask].max()
    assert torch.allclose(ours[mask], from_scores[mask], atol=1e-5), (ours - from_scores).abs()[mask].max()
    if temperature != 1.0:  # the test can tell: without the division the log-probs are different
        assert not torch.allclose(token_logprobs(logits, ro.batch["response_ids"])[mask], from_scores[mask], atol=1e-3)


def test_padding_cannot_change_real_tokens_or_the_losses(causal_path):
    """Left padding of the query and padding after EOS get other token ids: the logits, values and
    losses on the real tokens do not move (attention mask + causality), and garbage in padded entries
    of log-probs, advantages, values or returns never reaches the loss."""
    from transformers import AutoModelForCausalLM

    model = PolicyWithValueHead(AutoModelForCausalLM.from_pretrained(causal_path), is_seq2seq=False).eval()
    with torch.no_grad():
        model.value_head.weight.normal_(0, 1.0)  # the zero init would hide any effect on values
    batch = {
        "query_ids": torch.tensor([[PAD, PAD, 6, 7], [4, 8, 9, 10]]),
        "query_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
        "response_ids": torch.tensor([[GOOD, EOS, PAD, PAD], [VERY, GOOD, VERY, EOS]]),
        "response_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]),
    }
    other = dict(batch, query_ids=torch.tensor([[25, 30, 6, 7], [4, 8, 9, 10]]), response_ids=torch.tensor([[GOOD, EOS, 41, 12], [VERY, GOOD, VERY, EOS]]))
    mask = batch["response_mask"].bool()
    with torch.no_grad():
        logits, values = model(batch)
        logits2, values2 = model(other)
    assert not torch.allclose(logits[~mask], logits2[~mask]), "the padding tokens differ, so their own outputs do"
    assert torch.allclose(logits[mask], logits2[mask], atol=1e-6)
    assert torch.allclose(values[mask], values2[mask], atol=1e-6)

    logp = token_logprobs(logits, batch["response_ids"])
    old_logp = logp - 0.1 * mask  # ratio e^0.1 on real tokens
    adv = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.5, 0.5, -2.0, 1.0]])
    ret = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    garbage = torch.where(mask, torch.zeros(()), torch.full((), 1e4))
    clean_pg = policy_loss(logp, old_logp, adv, mask, 0.2)
    dirty_pg = policy_loss(logp + garbage, old_logp - garbage, adv + garbage, mask, 0.2)
    assert torch.allclose(torch.stack(clean_pg), torch.stack(dirty_pg))
    clean_vf = value_loss(values, values - 0.05, ret, mask, 0.2)
    dirty_vf = value_loss(values + garbage, values - 0.05 - garbage, ret + garbage, mask, 0.2)
    assert torch.allclose(torch.stack(clean_vf), torch.stack(dirty_vf))


def test_whiten_by_hand_over_masked_tokens():
    """Advantages are whitened over the real tokens of the whole batch (unbiased std), padding -> 0:
    real entries 1, 2, 3 have mean 2 and unbiased std 1, so they become -1, 0, 1."""
    x = torch.tensor([[1.0, 2.0, 50.0], [3.0, -7.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.allclose(whiten(x, mask), torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), atol=1e-6)


@pytest.mark.parametrize(
    "train, expected",
    [
        # nothing configured: the judge's scores as they are
        ({}, [3.0, 0.5, 1.0, -4.0]),
        # missing-EOS penalty subtracted from the responses that did not end (2nd and 4th)
        ({"missing_eos_penalty": 1.0}, [3.0, -0.5, 1.0, -5.0]),
        ({"reward_clip": 2.0}, [2.0, 0.5, 1.0, -2.0]),
        # the clip first, then the penalty, which the clip can then not undo: [2, 0.5, 1, -2] -> [2, -0.5, 1, -3]
        ({"missing_eos_penalty": 1.0, "reward_clip": 2.0}, [2.0, -0.5, 1.0, -3.0]),
        # a score far above the clip still pays the penalty when it did not end
        ({"missing_eos_penalty": 1.0, "reward_clip": 0.25}, [0.25, -0.75, 0.25, -1.25]),
        # then whitening that keeps the mean: mean -1/8, deviations 17/8, -3/8, 9/8, -23/8,
        # unbiased var (289 + 9 + 81 + 529) / 64 / 3 = 908 / 192 -> dev / std - 1/8
        (
            {"missing_eos_penalty": 1.0, "reward_clip": 2.0, "whiten_rewards": True},
            [d / 8 / (908 / 192) ** 0.5 - 1 / 8 for d in (17, -3, 9, -23)],
        ),
    ],
)
def test_shape_scores_by_hand(train, expected):
    scores = torch.tensor([3.0, 0.5, 1.0, -4.0])
    ended = torch.tensor([True, False, True, False])
    assert torch.allclose(shape_scores(scores, ended, TrainConfig(**train)), torch.tensor(expected), atol=1e-6)


def test_whiten_rewards_two_scores_by_hand():
    """[1, 3]: mean 2, unbiased std sqrt(2), so 2 -+ 1/sqrt(2); one score alone is left as it is."""
    t = TrainConfig(whiten_rewards=True)
    out = shape_scores(torch.tensor([1.0, 3.0]), torch.tensor([True, True]), t)
    assert torch.allclose(out, torch.tensor([2 - 1 / math.sqrt(2), 2 + 1 / math.sqrt(2)]), atol=1e-6)
    assert shape_scores(torch.tensor([5.0]), torch.tensor([True]), t).tolist() == [5.0]


# ------------------------------------------------------------------------------------------------
# The loop: one train_ppo step with its math functions recorded.
# ------------------------------------------------------------------------------------------------


def _record(monkeypatch, name: str, calls: dict, result: bool = False):
    real = getattr(ppo, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.setdefault(name, []).append((args, kwargs, out) if result else (args, kwargs))
        return out

    monkeypatch.setattr(ppo, name, wrapper)


def _tiny_run(model_path, temperature: float, **train) -> RunConfig:
    config = RunConfig(name="tiny", seed=0, device="cpu")
    config.model.policy = str(model_path)
    config.generation = GenerationConfig(max_new_tokens=4, min_new_tokens=0, temperature=temperature, top_k=0, top_p=1.0, batch_size=2)
    config.train = TrainConfig(**{"steps": 1, "batch_size": 4, "mini_batch_size": 2, "use_lora": True, "lora_r": 4, "lora_alpha": 8, **train})
    return config


def _rows(part: torch.Tensor, full: torch.Tensor) -> list[int]:
    """Which rows of `full` a minibatch's rows are (the shuffle is not exposed; whitened advantages are distinct)."""
    return [next(i for i in range(full.shape[0]) if torch.equal(full[i], r)) for r in part]


def test_loop_rewards_masks_and_first_ratio_on_scripted_rollout(causal_path, tmp_path, monkeypatch):
    """Responses ending early, late and never: the shaped score sits on the last real token (EOS where
    there is one), padding is 0 in rewards, values and advantages, and the first minibatch of the
    first epoch has ratio 1 (clipped objective == unclipped) while later ones have moved."""
    calls: dict = {}

    def scripted_rollout(model, tokenizer, queries, gen_cfg, is_seq2seq, device):
        model.generate = scripted_generate(list(queries))
        try:
            ro = rollout(model, tokenizer, queries, gen_cfg, is_seq2seq, device)
        finally:
            del model.generate
        calls["rollout"] = (list(queries), ro)
        return ro

    monkeypatch.setattr(ppo, "rollout", scripted_rollout)
    for name in ("shape_scores", "gae", "whiten", "policy_loss", "value_loss"):
        _record(monkeypatch, name, calls, result=True)
    raw = {"you are": 3.0, "the day is": -0.5, "i think that": -2.0, "hello my friend": 1.2}
    config = _tiny_run(causal_path, 0.7, learning_rate=1e-2, ppo_epochs=2, missing_eos_penalty=1.0, reward_clip=2.5)
    result = ppo.train_ppo(config, tmp_path, list(SCRIPT), reward_fn=lambda texts, prompts: [raw[p] for p in prompts])
    assert result.metrics[0]["kl"] == 0.0  # LoRA starts as the reference: the per-token KL reward is exactly 0

    queries, ro = calls["rollout"]
    mask = ro.batch["response_mask"]
    assert mask.tolist() == [EXPECTED_MASK[q] for q in queries]
    # shaped by hand: 3 -> clip 2.5; -0.5 ended; -2 within the clip, no EOS -> -3 (the penalty comes after the clip); 1.2 ended on its 4th token
    shaped = {"you are": 2.5, "the day is": -0.5, "i think that": -3.0, "hello my friend": 1.2}
    assert calls["shape_scores"][0][2].tolist() == pytest.approx([shaped[q] for q in queries])

    (rewards, values, gae_mask, _, _), _, (advantages, returns) = calls["gae"][0]
    expected_rewards = torch.zeros(4, 4)
    for i, q in enumerate(queries):
        expected_rewards[i, len(SCRIPT[q]) - 1] = shaped[q]  # EOS position, or the 4th token of the one without EOS
    assert torch.allclose(rewards, expected_rewards, atol=1e-6)
    assert torch.equal(gae_mask, mask)
    assert torch.all(values[mask == 0] == 0) and torch.all(advantages[mask == 0] == 0) and torch.all(returns[mask == 0] == 0)
    # value head starts at 0, gamma = 1, lam = 0.95: the return k tokens before the last is score * 0.95^k
    expected_returns = torch.zeros(4, 4)
    for i, q in enumerate(queries):
        last = len(SCRIPT[q]) - 1
        expected_returns[i, : last + 1] = torch.tensor([shaped[q] * 0.95 ** (last - t) for t in range(last + 1)])
    assert torch.allclose(returns, expected_returns, atol=1e-6)

    pg_calls, vf_calls = calls["policy_loss"], calls["value_loss"]
    assert len(pg_calls) == len(vf_calls) == 4  # 2 epochs x 2 minibatches
    (raw_adv, whiten_mask), _, full_adv = calls["whiten"][-1]
    assert torch.equal(raw_adv, advantages) and torch.equal(whiten_mask, mask)
    assert torch.all(full_adv[mask == 0] == 0)
    real = full_adv[mask.bool()]
    assert abs(real.mean().item()) < 1e-6 and abs(real.std().item() - 1.0) < 1e-5  # whitened over the batch's real tokens

    for k, ((logp, old_logp, adv, m, _cliprange), _, (loss, clipfrac, approx_kl)) in enumerate(pg_calls):
        assert torch.equal(m, mask[_rows(adv, full_adv)])  # each minibatch is masked with its own rows' mask
        if k == 0:  # no update yet: ratio 1, so the clipped objective is the plain -mean(A)
            assert torch.allclose(logp[m.bool()], old_logp[m.bool()], atol=1e-6)
            assert clipfrac.item() == 0.0 and approx_kl.item() < 1e-12
            assert loss.item() == pytest.approx(-masked_mean(adv, m).item(), abs=1e-6)
    assert max(c[2][2].item() for c in pg_calls[1:]) > 1e-8, "later minibatches see the updated policy"
    (v, old_v, ret, m, _), _, (vf_first, vf_clipfrac) = vf_calls[0]
    assert torch.allclose(v[m.bool()], old_v[m.bool()], atol=1e-6) and vf_clipfrac.item() == 0.0
    assert vf_first.item() == pytest.approx(0.5 * masked_mean((v - ret).square(), m).item(), abs=1e-6)


def test_loop_old_logprobs_are_generates_at_the_configured_temperature(causal_path, tmp_path, monkeypatch):
    """The log-probs train_ppo stores as old (and feeds to the KL) equal those of `generate`'s sampling
    distribution at temperature 0.7, taken from generate itself (real sampling, no script)."""
    calls: dict = {}
    seen = []

    def recorded_rollout(model, tokenizer, queries, gen_cfg, is_seq2seq, device):
        _record_generate(model, seen)
        try:
            ro = rollout(model, tokenizer, queries, gen_cfg, is_seq2seq, device)
        finally:
            del model.generate
        calls["rollout"] = ro
        return ro

    monkeypatch.setattr(ppo, "rollout", recorded_rollout)
    _record(monkeypatch, "kl_penalty", calls)
    ppo.train_ppo(_tiny_run(causal_path, 0.7), tmp_path, list(SCRIPT), reward_fn=lambda texts, prompts: [0.0] * len(texts))

    (old_logp, ref_logp, _), _ = calls["kl_penalty"][0]
    expected = torch.zeros_like(old_logp)
    row = 0
    for prompt_len, out in seen:
        sampled = out.sequences[:, prompt_len:]
        scores = torch.stack(out.scores, dim=1).float()
        n, width = sampled.shape
        expected[row : row + n, :width] = torch.log_softmax(scores, -1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        row += n
    eos_mask = calls["rollout"].batch["response_mask"].bool()
    assert torch.allclose(old_logp[eos_mask], expected[eos_mask], atol=1e-5), (old_logp - expected).abs()[eos_mask].max()
    assert torch.equal(old_logp, ref_logp)  # LoRA B = 0: the reference is the policy


def test_with_the_kl_in_the_loss_the_rewards_hold_the_score_alone_and_the_loss_holds_k3(causal_path, tmp_path, monkeypatch):
    """`train.kl_term: loss`: once the policy has moved (step 2), GAE's per-token rewards are 0 except the score on the last
    token, and every minibatch's loss adds the k3 estimate on its current log-probabilities against the reference's."""
    calls: dict = {}
    for name in ("gae", "policy_loss", "kl_penalty"):
        _record(monkeypatch, name, calls, result=True)
    config = _tiny_run(causal_path, 0.7, steps=2, learning_rate=1e-2, kl_term="loss", init_kl_coef=0.5, adaptive_kl=False)
    result = ppo.train_ppo(config, tmp_path, list(SCRIPT), reward_fn=lambda texts, prompts: [float(len(t)) for t in texts])
    assert result.metrics[1]["kl"] != 0.0  # the policy moved in step 1: a KL in the reward would show below

    (rewards, _, mask, _, _), _, _ = calls["gae"][1]
    last = mask.sum(1) - 1
    off_last = rewards.clone()
    off_last[torch.arange(len(last)), last] = 0
    assert torch.count_nonzero(off_last) == 0
    in_loss = [c for c in calls["kl_penalty"] if c[0][2:] == ("k3",)]
    pg_logps = [c[0][0] for c in calls["policy_loss"]]
    assert len(in_loss) == len(pg_logps) == 4  # 2 steps x 2 minibatches
    assert all(k3[0][0] is logp and logp.requires_grad for k3, logp in zip(in_loss, pg_logps))
    assert any(masked_mean(k3[2], m).item() > 0 for k3, m in zip(in_loss, (c[0][3] for c in calls["policy_loss"])))


def test_ppos_own_batch_is_what_a_step_samples_and_splits_into_minibatches(causal_path, tmp_path, monkeypatch):
    """`train.ppo_batch_size` 8 and `ppo_mini_batch_size` 2 over a shared batch of 4: each step samples 8 responses (2
    prompts x 4) and updates on 4 minibatches of 2; the optimiser steps at `ppo_learning_rate`, not the shared rate."""
    calls: dict = {}
    for name in ("rollout", "policy_loss"):
        _record(monkeypatch, name, calls)
    rates = []
    adamw = torch.optim.AdamW

    def recorded_adamw(params, lr, **kwargs):
        rates.append(lr)
        return adamw(params, lr=lr, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", recorded_adamw)
    config = _tiny_run(causal_path, 0.7, steps=2, ppo_batch_size=8, ppo_mini_batch_size=2, ppo_responses_per_prompt=4, learning_rate=1e-3, ppo_learning_rate=2e-4)
    ppo.train_ppo(config, tmp_path, list(SCRIPT), reward_fn=lambda texts, prompts: [float(len(t)) for t in texts])
    assert rates == [2e-4]
    assert [len(args[2]) for args, _ in calls["rollout"]] == [8, 8]
    assert [len(set(args[2])) for args, _ in calls["rollout"]] == [2, 2]
    assert [args[0].shape[0] for args, _ in calls["policy_loss"]] == [2] * 8  # 2 steps x 4 minibatches of 2


def test_the_row_sampler_draws_each_token_with_its_softmax_probability():
    """generation.RowSeededSampler (inverse CDF, one uniform per row and step): 20,000 rows' frequencies are within 4
    standard errors of softmax(scores); a zero-probability token (-inf, e.g. EOS before min_new_tokens) is never drawn."""
    from rlaif_tasks.generation import RowSeededSampler

    rows = 20_000
    logits = torch.tensor([2.0, 0.0, -1.0, float("-inf"), 1.0])
    sampler = RowSeededSampler(range(rows), prompt_width=3)
    chosen = sampler(torch.zeros(rows, 5, dtype=torch.long), logits.expand(rows, 5)).argmax(-1)
    freq = torch.bincount(chosen, minlength=5).double() / rows
    p = torch.softmax(logits.double(), -1)
    assert freq[3] == 0
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / rows).sqrt() + 1e-12).all(), (freq, p)
    again = sampler(torch.zeros(rows, 5, dtype=torch.long), logits.expand(rows, 5)).argmax(-1)
    assert torch.equal(again, chosen)  # each row's stream is fixed by its seed and step
    next_step = sampler(torch.zeros(rows, 6, dtype=torch.long), logits.expand(rows, 5)).argmax(-1)
    assert not torch.equal(next_step, chosen)
