"""KL of a trained policy to its base, measured on the tokens it actually sampled.

Re-tokenising decoded text loses what the policy emitted (merges differ, the EOS token is gone),
and much of what training changes sits in when to stop. So evaluation stores each response's
sampled ids up to and including its first EOS (`response_ids`), and the KL here is, per response,

    sum over sampled tokens t of  log pi_T(y_t | x, y_<t) - log base_T(y_t | x, y_<t)

with both policies' logits divided by the sampling temperature T (the distribution that sampled
them), averaged over responses: a Monte-Carlo estimate of KL(pi || base) per sequence. The
challenger's perplexity of its own samples at temperature 1, exp(-mean log pi_1), comes with it.
"""

from __future__ import annotations

import math
from typing import Sequence


def _batch(tokenizer, query_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], is_seq2seq: bool, decoder_start: int | None) -> dict:
    """`generation.lm_forward`'s layout: left-padded queries (ids as generation tokenised them), right-padded sampled ids."""
    import torch

    from rlaif_tasks.generation import query_response_batch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = query_response_batch(query_ids, response_ids, pad, left_pad_queries=not is_seq2seq)
    if is_seq2seq:
        batch["decoder_start"] = torch.full((len(response_ids), 1), decoder_start if decoder_start is not None else pad, dtype=torch.long)
    return batch


def sampled_logprobs(
    model, tokenizer, queries: Sequence[str], response_ids: Sequence[Sequence[int]], *, temperature: float = 1.0, batch_size: int = 16
) -> tuple[list[float], list[float]]:
    """Per response, the sum of log p(sampled token) under `model`'s logits divided by `temperature`, and at temperature 1.

    `tokenizer` is the one that tokenised the queries for sampling; `model` must share its vocabulary.
    Rows go through in order of length, so a batch's padding is what its longest row needs (queries
    vary several-fold in length; padding is computed like any token).
    """
    import torch

    from rlaif_tasks.generation import lm_forward, token_logprobs

    is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    start_id = getattr(model.config, "decoder_start_token_id", None)
    device = next(model.parameters()).device
    query_ids = [tokenizer(q, add_special_tokens=is_seq2seq)["input_ids"] for q in queries]
    order = sorted(range(len(queries)), key=lambda i: (len(query_ids[i]), len(response_ids[i])))
    at_t = [math.nan] * len(queries)
    at_1 = [math.nan] * len(queries)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            rows = order[b : b + batch_size]
            batch = _batch(tokenizer, [query_ids[i] for i in rows], [response_ids[i] for i in rows], is_seq2seq, start_id)
            mask = batch["response_mask"].double()
            logits, _ = lm_forward(model, {k: v.to(device) for k, v in batch.items()}, is_seq2seq, want_hidden=False)
            logits = logits.float().cpu()
            sums_t = (token_logprobs(logits / temperature, batch["response_ids"]).double() * mask).sum(1).tolist()
            sums_1 = (token_logprobs(logits, batch["response_ids"]).double() * mask).sum(1).tolist()
            for i, st, s1 in zip(rows, sums_t, sums_1):
                at_t[i], at_1[i] = st, s1
    return at_t, at_1


def kl_summary(policy_logprobs: Sequence[float], base_logprobs: Sequence[float], policy_logprobs_t1: Sequence[float], lengths: Sequence[int]) -> dict:
    """Mean and std of the per-response KL (sums of log-ratios at the sampling temperature) and the policy's perplexity."""
    per_response = [p - b for p, b in zip(policy_logprobs, base_logprobs)]
    tokens = int(sum(lengths))
    mean = sum(per_response) / len(per_response) if per_response else math.nan
    std = math.sqrt(sum((x - mean) ** 2 for x in per_response) / len(per_response)) if len(per_response) > 1 else 0.0
    return {
        "kl": mean,
        "kl_std": std,
        "kl_per_response": per_response,
        "policy_perplexity": math.exp(-sum(policy_logprobs_t1) / tokens) if tokens else math.nan,
        "n_responses": len(per_response),
        "n_tokens": tokens,
    }


def sampled_token_kl(
    policy, base, tokenizer, queries: Sequence[str], response_ids: Sequence[Sequence[int]], *, temperature: float = 1.0, batch_size: int = 16
) -> dict:
    """`kl_summary` of `policy` against `base` on the policy's sampled ids, both measured by a forward pass."""
    policy_t, policy_1 = sampled_logprobs(policy, tokenizer, queries, response_ids, temperature=temperature, batch_size=batch_size)
    base_t, _ = sampled_logprobs(base, tokenizer, queries, response_ids, temperature=temperature, batch_size=batch_size)
    return kl_summary(policy_t, base_t, policy_1, [len(ids) for ids in response_ids])
