"""What a toxicity score cannot see: fluency, diversity and relevance of the responses.

A policy can lower toxicity by saying less: repeating one safe phrase, drifting off topic, or
emitting text no language model would write. Each measure here catches one of those, and the gate
holds the challenger to a budget against the base policy on each (gate.py).

    perplexity   per response, exp(mean NLL of its sampled tokens, EOS included, given the prompt)
                 under a fluency model (evaluation.fluency_model, default the base policy; one with
                 another vocabulary scores the decoded text); the median is reported, since a few
                 degenerate responses have huge perplexities
    distinct-n   distinct word n-grams over all n-grams of all responses (Li et al., 2016)
    repetition   share of responses in which some word 3-gram occurs twice or more
    relevance    cosine similarity of prompt and response embeddings (all-MiniLM-L6-v2, mean-pooled)

Responses are sampled at temperature 1, so the base policy's own samples are not its most likely
text and their perplexity is near exp(entropy) rather than low; the ratio to the base policy's is
what carries meaning, not the level.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import Counter
from typing import Sequence

from rlaif_tasks.errors import RlaifError
from rlaif_tasks.rewards.base import words

log = logging.getLogger(__name__)



def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams of all texts; NaN when there are none."""
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def has_repeated_ngram(text: str, n: int = 3) -> bool:
    counts = Counter(ngrams(words(text), n))
    return any(c > 1 for c in counts.values())


def repeated_ngram_share(texts: Sequence[str], n: int = 3) -> float:
    return sum(has_repeated_ngram(t, n) for t in texts) / len(texts) if texts else math.nan


def require_causal_fluency_model(model) -> None:
    """Perplexity of a response given its prompt needs a causal LM."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise RlaifError("the fluency model is a seq2seq model; perplexity of a response given its prompt needs a causal LM", "set evaluation.fluency_model to a causal LM")


def response_perplexities(model, tokenizer, queries: Sequence[str], responses: Sequence[str], *, batch_size: int = 16) -> list[float]:
    """Per response, exp(mean NLL of its tokens given its query) under a causal LM; NaN for an empty response.

    For a fluency model with a vocabulary of its own (one with the policy's measures the sampled ids,
    evaluation/toxicity.py): the texts are tokenised with its tokenizer.
    Queries are left-padded and responses right-padded (`generation.lm_forward`'s layout), so only the
    response positions go through the output head: a query is often longer than its answer, and the
    head (the vocabulary's width) is the largest matrix of a small LM.
    """
    import torch

    from rlaif_tasks.generation import lm_forward, query_response_batch, token_logprobs

    require_causal_fluency_model(model)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out: list[float] = []
    model.eval()
    with torch.inference_mode():
        for b in range(0, len(queries), batch_size):
            rows = [
                (tokenizer(query, add_special_tokens=True)["input_ids"], tokenizer(response, add_special_tokens=False)["input_ids"])
                for query, response in zip(queries[b : b + batch_size], responses[b : b + batch_size])
            ]
            rows = [(q, r) if q or not r else (r[:1], r[1:]) for q, r in rows]  # a first token with nothing before it is not scored
            batch = query_response_batch([q for q, _ in rows], [r for _, r in rows], pad)
            logits, _ = lm_forward(model, {k: v.to(device) for k, v in batch.items()}, is_seq2seq=False, want_hidden=False)
            logp = token_logprobs(logits.float().cpu(), batch["response_ids"]) * batch["response_mask"]
            for i, (_, r) in enumerate(rows):
                out.append(math.exp(-float(logp[i].sum()) / len(r)) if r else math.nan)
    return out


def summarise_quality(responses: Sequence[str], perplexities: Sequence[float] | None, relevance: Sequence[float] | None) -> dict:
    """The evaluation's quality summary (JSON-able); absent measures are left out."""
    summary = {
        "distinct_1": distinct_n(responses, 1),
        "distinct_2": distinct_n(responses, 2),
        "repeated_3gram_share": repeated_ngram_share(responses, 3),
        "empty_share": sum(not r.strip() for r in responses) / len(responses) if responses else math.nan,
    }
    finite = [p for p in (perplexities or []) if math.isfinite(p)]
    if finite:
        summary["perplexity_median"] = statistics.median(finite)
    if relevance:
        summary["relevance_mean"] = statistics.fmean(relevance)
    return summary
