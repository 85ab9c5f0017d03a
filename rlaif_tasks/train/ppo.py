"""PPO for language models, in one module that reads top to bottom (CleanRL style).

One training step:

    1. rollout    sample a response for each query of the batch (batched `generate`, KV cache,
                  left padding; with LoRA from a copy with the adapters merged); stop strings
                  cut the text and mask the tokens after the stop
    2. reward     score the decoded texts with any judge (a classifier with its own tokenizer, or a
                  Python callable); optional missing-EOS penalty, clipping, whitening
    3. evaluate   one no-grad forward of the policy (log-probs, values, entropy) and one of the
                  reference (log-probs): with LoRA the reference is the same model with its
                  adapters switched off, so there is no second copy in memory
    4. advantage  per-token reward = -kl_coef * KL estimate, plus the score on the last token;
                  GAE(gamma, lam) advantages and returns; advantages whitened (with `kl_term: loss`
                  the KL is kept out of the reward and kl_coef * k3 is added to the loss instead)
    5. update     `ppo_epochs` passes over shuffled minibatches: clipped policy loss + vf_coef *
                  clipped value loss, gradient clipping, Adam step
    6. KL coef    adaptive controller (Ziegler et al. 2019) or fixed

The value head is one linear layer on the policy's last hidden state (shared trunk); with
`train.value_warmup_steps` it is fitted to the base policy's scores by least squares before step 1. The math in
section 1 is pure functions over tensors, tested against hand-computed numbers. See docs/ppo.md.

Under `accelerate launch` with N processes (CleanRL's multi-GPU PPO): PPO's batch and minibatch
(`train.ppo_sizes()`) are global, each rank rolls out and trains on its 1/N share, the gradients are
averaged over ranks before clipping and the step (so all ranks keep identical weights), whitening,
the KL controller and the metrics use the global batch's statistics, and only rank 0 writes files.
The collectives are in collectives.py; in one process they are the identity.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rlaif_tasks.config import RunConfig, TrainConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.generation import lm_forward, token_logprobs
from rlaif_tasks.models import load_model, resolve_device, resolve_dtype
from rlaif_tasks.rewards import build_scorer
from rlaif_tasks.rewards.base import checked_scores
from rlaif_tasks.train import checkpoint as ckpt
from rlaif_tasks.train import collectives as dist
from rlaif_tasks.train.common import MergedSampler, StepProgress, TrainResult, with_lora
from rlaif_tasks.train.metrics import MetricsWriter

log = logging.getLogger(__name__)

RewardFn = Callable[[list[str], list[str]], list[float]]
"""(responses, prompts) -> one float per response, higher is better."""

METRIC_KEYS = (
    "step", "reward/mean", "reward/std", "kl", "kl_coef", "entropy", "loss/policy", "loss/value",
    "clipfrac", "approx_kl", "response_length", "tokens_per_second",
    "time/generate", "time/score", "time/update", "time/step",
)


# ------------------------------------------------------------------------------------------------
# 1. The math: pure functions over (batch, response_length) tensors; `mask` marks real tokens.
# ------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def _this_process(total: torch.Tensor) -> torch.Tensor:
    """The default `sum_all`: statistics of this process's tensors only."""
    return total


def whiten(
    x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8,
    sum_all: Callable[[torch.Tensor], torch.Tensor] = _this_process,
) -> torch.Tensor:
    """Scale to unit (unbiased) std over the masked entries; also centre them unless `shift_mean=False`.

    Entries outside the mask come back as 0. `sum_all` sums a tensor over processes
    (`collectives.all_reduce_sum`), so that N processes whiten with the statistics of the global batch.
    """
    mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
    m = mask.to(x.dtype)
    count, total = sum_all(torch.stack([m.sum(), (x * m).sum()])).unbind()
    mean = total / count.clamp(min=1)
    var = sum_all(((x - mean) ** 2 * m).sum()) / count.clamp(min=1)
    if count > 1:
        var = var * count / (count - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros_like(out))


KLKind = Literal["k1", "k3", "abs", "mse"]


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the log-probs of the sampled tokens.

    k1 = logp - ref_logp (unbiased, can be negative); k3 = (r - 1) - log r with r = p_ref / p
    (unbiased, always >= 0, Schulman 2020); abs = |k1|; mse = 0.5 * k1^2.
    """
    diff = logp - ref_logp
    if kind == "k1":
        return diff
    if kind == "abs":
        return diff.abs()
    if kind == "mse":
        return 0.5 * diff.square()
    if kind == "k3":
        log_r = -diff
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {kind!r}: use k1, k3, abs or mse")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded sequences; returns (advantages, returns).

    The value after the last real token is 0 (the episode ends there); padded entries are 0.
    """
    mask = mask.to(rewards.dtype)
    rewards, values = rewards * mask, values * mask
    length = rewards.shape[1]
    last = torch.zeros_like(rewards[:, 0])
    reversed_adv = []
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        reversed_adv.append(last)
    advantages = torch.stack(reversed_adv[::-1], dim=1) * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate; returns (loss, clipfrac, approx_kl) with approx_kl = 0.5 * mean(log-ratio^2)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
    approx_kl = 0.5 * masked_mean(log_ratio.square(), mask)
    return loss, clipfrac, approx_kl


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((v - R)^2, (v_clipped - R)^2); returns (loss, value clipfrac)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_err = (values - returns).square()
    clipped_err = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    clipfrac = masked_mean((clipped_err > unclipped_err).to(values.dtype), mask)
    return loss, clipfrac


class AdaptiveKLController:
    """Ziegler et al. (2019): nudge the KL coefficient so the KL to the reference tracks `target`.

    coef <- max(floor, coef * (1 + clip(KL / target - 1, -0.2, 0.2) * n_samples / horizon))

    With the floor at the initial coefficient the target is a budget: the coefficient only rises while the KL is over it.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int, floor: float | None = None):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)
        self.floor = 0.0 if floor is None else float(floor)

    def update(self, current_kl: float, n_samples: int) -> None:
        proportional_error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value = max(self.floor, self.value * (1.0 + proportional_error * n_samples / self.horizon))

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class FixedKLController(AdaptiveKLController):
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        super().__init__(kl_coef, target=1.0, horizon=1)

    def update(self, current_kl: float, n_samples: int) -> None:
        pass


def kl_controller(t: TrainConfig) -> AdaptiveKLController:
    if not t.adaptive_kl:
        return FixedKLController(t.init_kl_coef)
    return AdaptiveKLController(t.init_kl_coef, t.target_kl, t.kl_horizon, t.min_kl_coef)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def fit_linear_value(gram: torch.Tensor, moment: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares for `V(h) = w.h + b` from sums over tokens of the augmented features `x = [h, 1]`:
    `gram = sum x x^T`, `moment = sum x y`. The penalty is `ridge` times each feature's variance (the intercept is free),
    so a few huge hidden dimensions neither dominate nor escape it. Returns (w, b)."""
    gram, moment = gram.double(), moment.double()
    n = gram[-1, -1].clamp(min=1.0)
    variance = (gram.diagonal()[:-1] - gram[-1, :-1].square() / n).clamp(min=0.0)
    penalty = torch.cat([ridge * variance + 1e-8 * n, variance.new_zeros(1)])
    solution = torch.linalg.solve(gram + torch.diag(penalty), moment)
    return solution[:-1], solution[-1]


# ------------------------------------------------------------------------------------------------
# 2. The model: policy LM + linear value head sharing its trunk; one forward gives both.
#    (`lm_forward` and `token_logprobs` live in generation.py: the evaluation's KL uses them too.)
# ------------------------------------------------------------------------------------------------


class PolicyWithValueHead(nn.Module):
    """The policy (plain or PEFT-wrapped) and a `hidden_size -> 1` linear value head on its trunk."""

    def __init__(self, policy, is_seq2seq: bool):
        super().__init__()
        self.policy = policy
        self.is_seq2seq = is_seq2seq
        config = policy.config
        hidden = getattr(config, "hidden_size", None) or config.d_model
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)  # V = 0 at the start: advantages begin as plain returns
        nn.init.zeros_(self.value_head.bias)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, hidden = lm_forward(self.policy, batch, self.is_seq2seq)
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return logits, values


# ------------------------------------------------------------------------------------------------
# 3. Rollout and reward.
# ------------------------------------------------------------------------------------------------


def _pad_cat(tensors: list[torch.Tensor], value: int, left: bool) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (width - t.shape[1], 0) if left else (0, width - t.shape[1]), value=value) for t in tensors])


def without_shared_left_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rows with the query columns that are padding in every one of them dropped (a causal batch, queries left-padded).

    A minibatch's queries are padded to the whole batch's longest, and queries vary several-fold in
    length: the dropped columns were masked out of attention and their positions skipped, so the
    result is the same at less cost.
    """
    used = batch["query_mask"].any(0).nonzero()
    first = int(used[0]) if len(used) else batch["query_mask"].shape[1]
    return {**batch, "query_ids": batch["query_ids"][:, first:], "query_mask": batch["query_mask"][:, first:]}


def _eos_ids(tokenizer, hf_gen) -> list[int]:
    eos = hf_gen.eos_token_id if hf_gen.eos_token_id is not None else tokenizer.eos_token_id
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))


def until_eos_mask(response: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """True up to and including the first EOS; the padding `generate` adds after it is False."""
    if not eos_ids:
        return torch.ones_like(response, dtype=torch.bool)
    is_eos = torch.isin(response, torch.tensor(list(eos_ids), device=response.device)).long()
    return (is_eos.cumsum(1) - is_eos) == 0


def cut_at_stop(tokenizer, ids: list[int], stop_strings: Sequence[str]) -> tuple[str, int]:
    """(text before the first stop string, tokens to keep: up to the one that completes the stop)."""
    from rlaif_tasks.generation import truncate_at_stop

    text = tokenizer.decode(ids, skip_special_tokens=True)
    if not stop_strings:
        return text, len(ids)
    cut = truncate_at_stop(text, stop_strings)
    if cut == text:
        return text, len(ids)
    for n in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:n], skip_special_tokens=True)
        if truncate_at_stop(prefix, stop_strings) != prefix:
            return cut, n
    return cut, len(ids)


@dataclass
class Rollout:
    batch: dict[str, torch.Tensor]
    """query_ids, query_mask, response_ids, response_mask (the action tokens), decoder_start (seq2seq)."""
    texts: list[str]
    ended: torch.Tensor
    """True where the response ended with EOS or a stop string (False: cut by max_new_tokens)."""


def rollout(model, tokenizer, queries: Sequence[str], gen_cfg, is_seq2seq: bool, device) -> Rollout:
    """Sample one response per query with `generate` (KV cache, left padding), `gen_cfg.batch_size` at a time."""
    from rlaif_tasks.generation import draw_row_seeds, hf_generation_config, sample_with_row_streams

    hf_gen = hf_generation_config(gen_cfg, tokenizer)
    hf_gen.use_cache = True
    eos_ids = _eos_ids(tokenizer, hf_gen)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    if not is_seq2seq:
        tokenizer.padding_side = "left"
    parts: dict[str, list[torch.Tensor]] = {"query_ids": [], "query_mask": [], "response_ids": [], "decoder_start": []}
    with torch.inference_mode():
        for start in range(0, len(queries), gen_cfg.batch_size):
            chunk = list(queries[start : start + gen_cfg.batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=is_seq2seq).to(device)
            width = 1 if is_seq2seq else enc["input_ids"].shape[1]
            sampling = sample_with_row_streams(hf_gen, gen_cfg, draw_row_seeds(len(chunk)), width)
            out = model.generate(**enc, generation_config=hf_gen, **sampling)
            parts["query_ids"].append(enc["input_ids"])
            parts["query_mask"].append(enc["attention_mask"])
            if is_seq2seq:
                parts["decoder_start"].append(out[:, :1])
                parts["response_ids"].append(out[:, 1:])
            else:
                parts["response_ids"].append(out[:, enc["input_ids"].shape[1] :])
    left = not is_seq2seq
    # clone: inference-mode tensors cannot take part in the autograd graph of the update
    batch = {
        "query_ids": _pad_cat(parts["query_ids"], pad_id, left).clone(),
        "query_mask": _pad_cat(parts["query_mask"], 0, left).clone(),
        "response_ids": _pad_cat(parts["response_ids"], pad_id, left=False).clone(),
    }
    if is_seq2seq:
        batch["decoder_start"] = torch.cat(parts["decoder_start"]).clone()
    response = batch["response_ids"]
    mask = until_eos_mask(response, eos_ids)
    lengths = mask.sum(1)
    has_eos = torch.isin(response, torch.tensor(eos_ids or [-1], device=response.device)) & mask
    ended = has_eos.any(1)
    texts = []
    for i in range(response.shape[0]):
        ids = response[i, : int(lengths[i])].tolist()
        text, keep = cut_at_stop(tokenizer, ids, gen_cfg.stop_strings)
        if keep < len(ids):  # a stop string ended the response: the tokens after it are not actions
            mask[i, keep:] = False
            ended[i] = True
        texts.append(text)
    batch["response_mask"] = mask.long()
    return Rollout(batch=batch, texts=texts, ended=ended)


def shape_scores(
    scores: torch.Tensor, ended: torch.Tensor, t: TrainConfig, sum_all: Callable[[torch.Tensor], torch.Tensor] = _this_process
) -> torch.Tensor:
    """Clipping to +-reward_clip, then the missing-EOS penalty (subtracted), then optional whitening (scale only).

    The penalty comes after the clip so that it always costs what it says: applied first, a score above
    the clip by more than the penalty would be clipped back to the same value and the penalty lost.
    `sum_all`: as for `whiten`, the whitening statistics of the global batch under N processes.
    """
    if t.reward_clip is not None:
        scores = scores.clamp(-t.reward_clip, t.reward_clip)
    if t.missing_eos_penalty is not None:
        scores = scores - t.missing_eos_penalty * (~ended).to(scores.dtype)
    if t.whiten_rewards and sum_all(torch.tensor(float(scores.numel()))) > 1:
        scores = whiten(scores, shift_mean=False, sum_all=sum_all)
    return scores


def leave_one_out(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Each score less the mean of the k-1 other responses to its prompt (consecutive groups of k), as RLOO's baseline:
    unbiased, because a response's own score is not in what it is compared with. k=1 leaves the scores as they are."""
    if k == 1:
        return scores
    groups = scores.view(-1, k)
    return (groups - (groups.sum(1, keepdim=True) - groups) / (k - 1)).view(-1)


def scale_by_group_std(centred: torch.Tensor, scores: torch.Tensor, k: int, eps: float = 1e-4) -> torch.Tensor:
    """`centred` over the (unbiased) standard deviation of `scores` within each consecutive group of k, as GRPO scales its
    advantages: a prompt whose answers differ little weighs as much as one whose answers differ a lot."""
    std = scores.view(-1, k).std(1, keepdim=True)
    return (centred.view(-1, k) / (std + eps)).view(-1)


# ------------------------------------------------------------------------------------------------
# 4. The training loop.
# ------------------------------------------------------------------------------------------------


def batch_indices(step: int, n: int, size: int, seed: int) -> list[int]:
    """Prompt indices of 1-based `step`: consecutive slices of a fresh permutation per epoch.

    A pure function of (step, seed), so a resumed run draws the same prompts without sampler state.
    """
    start = (step - 1) * size
    out = []
    while len(out) < size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset : offset + size - len(out)].tolist())
    return out


def step_prompts(step: int, n: int, t: TrainConfig, seed: int) -> list[int]:
    """Prompt indices of a step's global batch: `ppo_sizes()[0] / ppo_responses_per_prompt` prompts, each that many times
    in a row, so that every process's share holds whole groups (config.validate checks it divides)."""
    k = t.ppo_responses_per_prompt
    return [i for i in batch_indices(step, n, t.ppo_sizes()[0] // k, seed) for _ in range(k)]


def train_ppo(
    config: RunConfig,
    run_dir: str | Path,
    queries: Sequence[str],
    prompts: Sequence[str] | None = None,
    *,
    reward_fn: RewardFn | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `config.model.policy` with PPO on `queries`; returns the final (merged) model folder.

    `prompts` are the raw prompts given to prompt+response scorers (default: the queries).
    `reward_fn(responses, prompts)` replaces the scorer built from `config.reward`.
    Resumes from the newest complete checkpoint under `run_dir/train/checkpoints` that loads.
    Under `accelerate launch` each of N processes trains on 1/N of every batch (see distributed.py);
    `on_step` is called in the main process only.
    """
    from transformers import set_seed

    t, gen_cfg = config.train, config.generation
    queries = list(queries)
    prompts = list(prompts) if prompts is not None else queries
    if not queries or len(prompts) != len(queries):
        raise RlaifError(f"PPO got {len(queries)} queries and {len(prompts)} prompts", "pass a non-empty list of queries and one prompt per query")
    out_dir = Path(run_dir) / "train"
    ckpt_root = out_dir / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)

    # -- setup: processes, seed, model (+LoRA), value head, reference, optimizer -----------------
    device = resolve_device(config.device)
    procs = dist.state(cpu=device == "cpu")  # one process, or one of N under accelerate launch (gloo on CPU)
    world, rank, main = procs.num_processes, procs.process_index, procs.is_main_process
    dist.check_world(t, world)
    dist.refuse_sharding("PPO")
    local_batch, local_mini = (size // world for size in t.ppo_sizes())
    set_seed(config.training_seed)  # the same initial weights (LoRA init) on every rank
    loaded = load_model(
        config.model.policy, kind="auto", revision=config.model.revision, trust_remote_code=config.model.trust_remote_code,
        dtype=config.model.dtype, device="cpu",
    )
    if loaded.kind not in ("causal-lm", "seq2seq-lm"):
        raise RlaifError(f"the policy {config.model.policy!r} is a {loaded.kind}", "set model.policy to a causal or seq2seq language model")
    is_seq2seq = loaded.kind == "seq2seq-lm"
    policy, tokenizer = loaded.model, loaded.tokenizer
    reference = sampler = None
    amp_dtype = resolve_dtype(t.autocast_dtype, config.model.dtype, str(procs.device))
    mixed = amp_dtype != config.model.dtype

    def autocast():
        """Mixed precision for the forward passes (train.autocast_dtype); a no-op in model.dtype."""
        return torch.autocast(torch.device(procs.device).type, dtype=getattr(torch, amp_dtype), enabled=mixed)

    if t.use_lora:
        sampler = MergedSampler(policy, resolve_dtype(t.rollout_dtype, config.model.dtype, str(procs.device))).to(procs.device) if t.merge_lora_for_rollouts else None
        policy = with_lora(policy, t, "SEQ_2_SEQ_LM" if is_seq2seq else "CAUSAL_LM")
    else:
        reference = copy.deepcopy(policy).eval().requires_grad_(False).to(procs.device)
        policy.requires_grad_(True)
    model = PolicyWithValueHead(policy, is_seq2seq).to(procs.device)
    model.eval()  # no dropout anywhere: PPO's ratios need the same function in rollout and update
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.rate(), weight_decay=0.0)
    if rank:
        set_seed(config.training_seed + rank)  # each rank samples its own responses; rank 0 keeps the one-process stream
    if reward_fn is None:

        reward_fn = build_scorer(config.reward, purpose="reward", device=device)
    kl_ctl = kl_controller(t)
    temperature = gen_cfg.sampling_temperature

    def this_rank(step: int) -> list[int]:
        """This process's share of a step's prompts: whole groups of `ppo_responses_per_prompt`."""
        return step_prompts(step, len(queries), t, config.training_seed)[rank * local_batch : (rank + 1) * local_batch]

    def scored(ro: Rollout, batch_prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reward's raw scores, and the shaped ones advantages start from (clip, EOS penalty, whitening, per-prompt baseline)."""
        raw = torch.tensor(checked_scores(reward_fn, ro.texts, batch_prompts, "the reward"), device=procs.device)
        shaped = shape_scores(raw, ro.ended.to(procs.device), t, sum_all=dist.all_reduce_sum)
        centred = leave_one_out(shaped, t.ppo_responses_per_prompt)
        if t.ppo_scale_rewards == "group":
            centred = scale_by_group_std(centred, shaped, t.ppo_responses_per_prompt)
        return raw, centred

    # -- resume: rank 0 tidies up, then every rank loads the same checkpoint (and its own RNG state) --
    fields = ckpt.training_fields(config, queries)
    metrics: list[dict] = []
    start_step = 0
    writer = MetricsWriter(out_dir / "metrics.jsonl")
    if main:
        ckpt.clean_partial(ckpt_root)
    procs.wait_for_everyone()

    def restore(step_done: int, path: Path) -> list[dict]:
        ckpt.check_compatible(path, ckpt.read_state(path), fields)
        state = ckpt.load_checkpoint(path, policy=model.policy, value_head=model.value_head, optimizer=optimizer, rank=rank)
        kl_ctl.load_state_dict(state["kl_controller"])
        return [m for m in state["metrics"] if m["step"] <= step_done]

    resumed = ckpt.resume_newest(ckpt.list_checkpoints(ckpt_root), restore, main=main)
    if world > 1 and len(steps := set(dist.gather_objects(resumed[0] if resumed else None))) > 1:
        raise RlaifError(
            f"the processes could load different checkpoints under {ckpt_root} (steps {sorted(steps, key=str)}): some rank's files are damaged",
            "look for the failed load in the warnings above, delete that checkpoint and run again",
        )
    if resumed:
        step_done, path, metrics = resumed
        start_step = step_done
        if step_done < t.steps:
            log.info("resuming from checkpoint %s: step %d of %d done, running steps %d-%d", path, step_done, t.steps, step_done + 1, t.steps)
        else:
            log.info("resuming from checkpoint %s: all %d steps already done", path, step_done)
    if main:
        writer.reset(metrics)  # drops lines a killed run wrote after its last checkpoint

    def save(step: int) -> None:
        rng_states = dist.gather_objects(ckpt.rng_state())  # every rank's, so each resumes its own stream
        if main:
            state = {"fingerprint": ckpt.fingerprint(fields), "training_fields": fields, "kl_controller": kl_ctl.state_dict(),
                     "metrics": metrics, "world_size": world}
            path = ckpt.save_checkpoint(ckpt_root, step, policy=model.policy, value_head=model.value_head, optimizer=optimizer,
                                        state=state, rng_states=rng_states)
            log.info("saved checkpoint %s", path)
        procs.wait_for_everyone()

    # -- value warm-up: the head learns what each prompt's responses score before the policy moves ---
    # With fresh LoRA adapters (or none) the policy is the reference, so every token's return is the episode's score.
    if start_step == 0 and t.value_warmup_steps:
        t0 = time.perf_counter()
        width = model.value_head.in_features + 1
        gram = torch.zeros(width, width, dtype=torch.float64, device=procs.device)
        moment = torch.zeros(width, dtype=torch.float64, device=procs.device)
        targets = torch.zeros(2, dtype=torch.float64, device=procs.device)  # sum y, sum y^2
        sampling_model = sampler.refresh(model.policy) if sampler is not None else model.policy  # the policy does not move here
        for warmup_step in range(1, t.value_warmup_steps + 1):  # the prompts of steps 1, 2, ...: the ones training starts on
            idx = this_rank(warmup_step)
            ro = rollout(sampling_model, tokenizer, [queries[i] for i in idx], gen_cfg, is_seq2seq, procs.device)
            batch = {k: v.to(procs.device) for k, v in ro.batch.items()}
            _, scores = scored(ro, [prompts[i] for i in idx])
            with torch.no_grad(), autocast():
                _, hidden = lm_forward(model.policy, batch, is_seq2seq)
            real = batch["response_mask"].bool()
            x = F.pad(hidden.double()[real], (0, 1), value=1.0)
            y = scores.double()[:, None].expand(real.shape)[real]
            gram, moment, targets = gram + x.T @ x, moment + x.T @ y, targets + torch.stack([y.sum(), y.square().sum()])
        gram, moment, targets = dist.all_reduce_sum(gram), dist.all_reduce_sum(moment), dist.all_reduce_sum(targets)
        weight, bias = fit_linear_value(gram, moment, t.value_warmup_ridge)
        with torch.no_grad():
            model.value_head.weight.copy_(weight.to(model.value_head.weight.dtype)[None])
            model.value_head.bias.fill_(bias.item())
        coef = torch.cat([weight, bias[None]])
        n = gram[-1, -1]
        residual = targets[1] - 2 * coef @ moment + coef @ gram @ coef
        explained = 1.0 - (residual / (targets[1] - targets[0] ** 2 / n).clamp(min=1e-12)).item()
        log.info("value warm-up: %d rollouts, %d tokens, mean return %.3f, variance explained %.2f (%.1f s)", t.value_warmup_steps,
                 int(n.item()), (targets[0] / n).item(), explained, time.perf_counter() - t0)

    # -- the loop -------------------------------------------------------------------------------
    progress = StepProgress(t.steps, log)
    for step in range(start_step + 1, t.steps + 1):
        t_step = time.perf_counter()
        idx = this_rank(step)
        batch_queries, batch_prompts = [queries[i] for i in idx], [prompts[i] for i in idx]

        # 1. rollout (this rank's share of the batch)
        t0 = time.perf_counter()
        sampling_model = sampler.refresh(model.policy) if sampler is not None else model.policy
        ro = rollout(sampling_model, tokenizer, batch_queries, gen_cfg, is_seq2seq, procs.device)
        batch = {k: v.to(procs.device) for k, v in ro.batch.items()}
        mask = batch["response_mask"]
        time_generate = time.perf_counter() - t0

        # 2. reward
        t0 = time.perf_counter()
        raw_scores, scores = scored(ro, batch_prompts)
        time_score = time.perf_counter() - t0

        # 3. evaluate the rollout: old log-probs, values, entropy; reference log-probs (no grad)
        t0 = time.perf_counter()
        n = mask.shape[0]
        size = max(gen_cfg.batch_size, local_mini)  # no activations kept: generation-sized chunks fit
        chunks = [torch.arange(i, min(i + size, n)) for i in range(0, n, size)]
        old_logp, old_values, ref_logp, entropy = [], [], [], []
        with torch.no_grad(), autocast():
            for c in chunks:
                sub = {k: v[c] for k, v in batch.items()}
                logits, values = model(sub)
                logits = logits.float() / temperature
                old_logp.append(token_logprobs(logits, sub["response_ids"]))
                entropy.append(token_entropy(logits))
                old_values.append(values.float())
                if reference is None:
                    with model.policy.disable_adapter():
                        ref_logits, _ = lm_forward(model.policy, sub, is_seq2seq, want_hidden=False)
                else:
                    ref_logits, _ = lm_forward(reference, sub, is_seq2seq, want_hidden=False)
                ref_logp.append(token_logprobs(ref_logits.float() / temperature, sub["response_ids"]))
        old_logp, old_values, ref_logp, entropy = (torch.cat(x) for x in (old_logp, old_values, ref_logp, entropy))
        time_forward = time.perf_counter() - t0

        # 4. per-token rewards (KL penalty unless it is in the loss, + score on the last token), GAE, advantages whitened
        #    over the global batch
        kl_coef = kl_ctl.value
        kl_in_reward = kl_coef if t.kl_term == "reward" else 0.0
        rewards = -kl_in_reward * kl_penalty(old_logp, ref_logp, t.kl_penalty) * mask
        last = mask.sum(1) - 1
        rewards[torch.arange(n), last] += scores
        advantages, returns = gae(rewards, old_values * mask, mask, t.gamma, t.lam)
        advantages = whiten(advantages, mask, sum_all=dist.all_reduce_sum)

        # 5. PPO update over minibatches; gradients averaged over processes before clipping
        t0 = time.perf_counter()
        stats = {"loss/policy": [], "loss/value": [], "clipfrac": [], "approx_kl": []}
        for _ in range(t.ppo_epochs):
            for mb in torch.randperm(n).split(local_mini):
                sub = {k: v[mb] for k, v in batch.items()}
                sub = sub if is_seq2seq else without_shared_left_padding(sub)
                with autocast():
                    logits, values = model(sub)
                logp = token_logprobs(logits.float() / temperature, sub["response_ids"])
                m = mask[mb]
                pg_loss, clipfrac, approx_kl = policy_loss(logp, old_logp[mb], advantages[mb], m, t.cliprange)
                vf_loss, _ = value_loss(values.float(), old_values[mb], returns[mb], m, t.cliprange_value)
                loss = pg_loss + t.vf_coef * vf_loss
                if t.kl_term == "loss":
                    loss = loss + kl_coef * masked_mean(kl_penalty(logp, ref_logp[mb], "k3"), m)
                # this rank's share of the global minibatch's tokens: averaging the gradients over ranks
                # then gives the gradient of the mean over all its tokens, as one process would (1.0 there)
                tokens = m.sum().float()
                share = world * tokens / dist.all_reduce_sum(tokens).clamp(min=1)
                (loss * share).backward()
                dist.all_reduce_mean_grads(params)
                if t.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for key, value in zip(stats, (pg_loss, vf_loss, clipfrac, approx_kl)):
                    stats[key].append(value.item())
        time_update = time.perf_counter() - t0 + time_forward
        dist.record_param_digest(step, params)

        # 6. metrics and the KL controller, over the global batch
        seq_kl = ((old_logp - ref_logp) * mask).sum(1)
        gathered = dist.gather(torch.stack([raw_scores, seq_kl, mask.sum(1).float()], dim=1))
        all_scores, all_kl, all_len = gathered[:, 0], gathered[:, 1], gathered[:, 2]
        mean_kl = all_kl.mean().item()
        kl_ctl.update(mean_kl, int(gathered.shape[0]))
        sums = dist.all_reduce_sum(torch.tensor(
            [(entropy * mask).sum().item(), mask.sum().item(), *(float(np.mean(v)) for v in stats.values())], dtype=torch.float64,
        ))
        time_generate_max = dist.all_reduce_max(torch.tensor(time_generate)).item()  # the slowest rank sets the pace
        row = {
            "step": step,
            "reward/mean": all_scores.mean().item(),
            "reward/std": all_scores.std(unbiased=False).item(),
            "kl": mean_kl,
            "kl_coef": kl_coef,
            "entropy": (sums[0] / sums[1].clamp(min=1)).item(),
            **{k: (v / world).item() for k, v in zip(stats, sums[2:])},
            "response_length": all_len.mean().item(),
            "tokens_per_second": float(sums[1].item() / max(time_generate_max, 1e-9)),
            "time/generate": time_generate,
            "time/score": time_score,
            "time/update": time_update,
            "time/step": time.perf_counter() - t_step,
        }
        if parts := getattr(getattr(reward_fn, "backend", None), "last_parts", None):  # a composite reward's parts, mean over processes
            names = sorted(parts)
            means = dist.all_reduce_sum(torch.tensor([parts[k] for k in names], dtype=torch.float64)) / world
            row.update({f"reward/part/{k}": v for k, v in zip(names, means.tolist())})
        metrics.append(row)
        if main:
            writer.append(row)
            progress(
                step, f"reward {row['reward/mean']:.3f} kl {mean_kl:.3f} kl_coef {kl_coef:.3f}", row["time/step"],
                f"generate {time_generate:.1f}, score {time_score:.1f}, forward {time_forward:.1f}, update {time_update - time_forward:.1f}",
            )
            if on_step is not None:
                on_step(dict(row))
        if (t.save_every and step % t.save_every == 0) or step == t.steps:
            save(step)

    # -- final model: LoRA merged into the base, saved as a plain transformers folder (by rank 0) --
    final_dir = out_dir / "final"
    ckpt.save_final_policy(model.policy, tokenizer, final_dir, t.merge_adapter)
    return TrainResult(model_dir=final_dir, metrics=metrics, resumed_from=start_step)
