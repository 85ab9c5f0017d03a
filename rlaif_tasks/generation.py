"""Batched sampling from a policy, shared by evaluation and benchmarks.

Rollouts are the slowest part of an alignment run on CPU, so prompts go through `generate` in
batches with left padding and the KV cache; one prompt at a time wastes most of the matrix units.

Evaluation passes one seed per response (`row_seeds`): each row then samples with its own random
stream (Gumbel-max: argmax of the warped logits plus Gumbel noise drawn from the row's seed and the
step, which is exactly a draw from the softmax), so a response does not depend on which other
prompts share its batch, and two policies answer a prompt with the same randomness (a paired
comparison, evaluation/stats.py).
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import transformers

from rlaif_tasks.config import GenerationConfig

log = logging.getLogger(__name__)


@dataclass
class Generated:
    responses: list[str]
    prompt_index: list[int]
    """For each response, the index of its query (a query repeats `num_samples` times)."""
    new_tokens: int
    seconds: float
    token_ids: list[list[int]] | None = None
    """Each response's sampled token ids up to and including its first EOS (what KL and perplexity are measured on)."""
    logprobs: list[float] | None = None
    """With `with_logprobs`: per response, the sum over `token_ids` of log p(token) under the sampling policy's
    logits divided by the temperature (the distribution that drew them, before top-k/top-p)."""
    logprobs_t1: list[float] | None = None
    """The same at temperature 1 (the policy's perplexity of its own response)."""

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def hf_generation_config(gen: GenerationConfig, tokenizer) -> transformers.GenerationConfig:
    kwargs = dict(
        max_new_tokens=gen.max_new_tokens,
        min_new_tokens=gen.min_new_tokens,
        do_sample=gen.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p)
    return transformers.GenerationConfig(**kwargs)


class RowSeededSampler(transformers.LogitsProcessor):
    """Turns greedy decoding into sampling with one random stream per row, by inverse CDF.

    Step t of row r draws one uniform u from a generator seeded by (seed_r, t) and takes the first
    token whose cumulative probability under softmax(scores) exceeds u * total: a sample from the
    warped distribution, independent of the batch around the row. One number per row and step, where
    torch.multinomial (HF's sampling) and Gumbel-max draw one per vocabulary entry: at SmolLM2's 49,152
    tokens and batch 16 that was a sixth of a decoding step here (bench/bench_generation.py).
    """

    def __init__(self, row_seeds: Sequence[int], prompt_width: int):
        self.row_seeds = [int(s) for s in row_seeds]
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        u = torch.tensor([
            torch.rand(1, generator=torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))).item()
            for seed in self.row_seeds
        ], device=scores.device)
        cdf = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
        token = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).clamp(max=scores.shape[1] - 1)
        chosen = torch.full(scores.shape, float("-inf"), device=scores.device)
        return chosen.scatter_(1, token, 0.0)


def row_seeded_processors(gen: GenerationConfig, row_seeds: Sequence[int], prompt_width: int) -> transformers.LogitsProcessorList:
    """The sampling warpers of `gen` (temperature, top-k, top-p), then the per-row sampler."""
    processors = transformers.LogitsProcessorList()
    if gen.temperature != 1.0:
        processors.append(transformers.TemperatureLogitsWarper(gen.temperature))
    if gen.top_k:
        processors.append(transformers.TopKLogitsWarper(gen.top_k))
    if gen.top_p < 1.0:
        processors.append(transformers.TopPLogitsWarper(gen.top_p))
    processors.append(RowSeededSampler(row_seeds, prompt_width))
    return processors


def sample_with_row_streams(hf_gen: transformers.GenerationConfig, gen: GenerationConfig, row_seeds: Sequence[int], prompt_width: int) -> dict:
    """`generate` kwargs that sample `gen`'s distribution with RowSeededSampler: HF's own sampling is switched off in `hf_gen`.

    Without `gen.do_sample` nothing changes (greedy decoding stays greedy).
    """
    if not gen.do_sample:
        return {}
    hf_gen.do_sample = False
    for key in ("temperature", "top_k", "top_p"):
        setattr(hf_gen, key, None)
    return {"logits_processor": row_seeded_processors(gen, row_seeds, prompt_width)}


def draw_row_seeds(n: int) -> list[int]:
    """One seed per row from torch's global generator: what a training seed fixes, as HF's own sampling did."""
    return torch.randint(0, 2**62, (n,)).tolist()


def _ids_through_eos(row: torch.Tensor, eos_token_id) -> list[int]:
    """A row's ids up to its first EOS; a row without one ran to max_new_tokens, so all of it was sampled."""
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or [])
    ids: list[int] = []
    for token in row.tolist():
        ids.append(token)
        if token in eos:
            break
    return ids


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    cut = min((i for s in stop_strings if (i := text.find(s)) >= 0), default=-1)
    return text if cut < 0 else text[:cut]


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    queries: Sequence[str],
    gen: GenerationConfig,
    *,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    row_seeds: Sequence[int] | None = None,
    with_logprobs: bool = False,
) -> Generated:
    """Sample `num_samples` responses per query, `batch_size` sequences per forward pass.

    `row_seeds` (one per response, query-major: query 0's samples first) gives every response its
    own random stream; without it, the streams' seeds are drawn from torch's generator seeded by `seed`.
    `with_logprobs` keeps `generate`'s raw logits to sum each response's log-probabilities, which
    spares the evaluation a second forward pass of the policy over its own samples.
    """
    batch_size = batch_size or gen.batch_size
    is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    if not is_seq2seq:
        tokenizer.padding_side = "left"
    hf_gen = hf_generation_config(gen, tokenizer)
    expanded = [(i, q) for i, q in enumerate(queries) for _ in range(num_samples)]
    if row_seeds is not None and len(row_seeds) != len(expanded):
        raise ValueError(f"{len(row_seeds)} row seeds for {len(expanded)} responses")
    torch.manual_seed(seed)
    if row_seeds is None:
        row_seeds = draw_row_seeds(len(expanded))
    model.eval()
    device = next(model.parameters()).device
    responses: list[str] = []
    token_ids: list[list[int]] = []
    logprobs: list[float] = []
    logprobs_t1: list[float] = []
    if with_logprobs:
        hf_gen.output_logits = True
        hf_gen.return_dict_in_generate = True
    new_tokens = 0
    start = time.perf_counter()
    for b in range(0, len(expanded), batch_size):
        batch = [q for _, q in expanded[b : b + batch_size]]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=is_seq2seq).to(device)
        width = 1 if is_seq2seq else enc["input_ids"].shape[1]
        extra = sample_with_row_streams(hf_gen, gen, row_seeds[b : b + batch_size], width)
        out = model.generate(**enc, generation_config=hf_gen, **extra)
        step_logits = out.logits if with_logprobs else None
        out = out.sequences if with_logprobs else out
        if not is_seq2seq:
            out = out[:, enc["input_ids"].shape[1] :]
        else:
            out = out[:, 1:]
        rows = [_ids_through_eos(row, tokenizer.eos_token_id) for row in out]
        token_ids.extend(rows)
        if step_logits is not None:
            at_t, at_1 = _sampled_logprob_sums(step_logits, out, [len(r) for r in rows], gen.sampling_temperature)
            logprobs.extend(at_t)
            logprobs_t1.extend(at_1)
        mask = (out != tokenizer.pad_token_id) & (out != tokenizer.eos_token_id) if tokenizer.pad_token_id is not None else torch.ones_like(out, dtype=torch.bool)
        new_tokens += int(mask.sum())
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        responses.extend(truncate_at_stop(t, gen.stop_strings) for t in texts)
        done = min(b + batch_size, len(expanded))
        log.info("generated %d/%d responses (%.1f tok/s)", done, len(expanded), new_tokens / max(time.perf_counter() - start, 1e-9))
    return Generated(
        responses, [i for i, _ in expanded], new_tokens, time.perf_counter() - start, token_ids,
        logprobs if with_logprobs else None, logprobs_t1 if with_logprobs else None,
    )


def _sampled_logprob_sums(step_logits: Sequence[torch.Tensor], sampled: torch.Tensor, lengths: Sequence[int], temperature: float) -> tuple[list[float], list[float]]:
    """Per row, the sum of log p(sampled token) over its first `lengths[row]` steps, at `temperature` and at 1."""
    at_t = torch.zeros(sampled.shape[0], dtype=torch.float64)
    at_1 = torch.zeros_like(at_t)
    lengths_t = torch.tensor(list(lengths))
    for step, logits in enumerate(step_logits):
        if step >= sampled.shape[1]:
            break
        live = lengths_t > step
        logits = logits.float().cpu()
        tokens = sampled[:, step].cpu()
        at_t += torch.where(live, token_logprobs(logits / temperature, tokens).double(), 0.0)
        at_1 += torch.where(live, token_logprobs(logits, tokens).double(), 0.0)
    return at_t.tolist(), at_1.tolist()


# -- log-probabilities of sampled tokens (PPO's loss and the evaluation's KL) -------------------------


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits`, without materialising the full log-softmax."""
    logits = logits.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def query_response_batch(query_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int, *, left_pad_queries: bool = True) -> dict[str, torch.Tensor]:
    """`lm_forward`'s layout from token ids: queries padded on the left (a causal LM; on the right for an encoder), responses on the right."""
    batch = {}
    for name, rows, left, least in (("query", query_ids, left_pad_queries, 0), ("response", response_ids, False, 1)):
        width = max(least, max((len(r) for r in rows), default=0))
        ids, mask = torch.full((len(rows), width), pad_id, dtype=torch.long), torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                span = slice(width - len(row), width) if left else slice(0, len(row))
                ids[i, span], mask[i, span] = torch.tensor(list(row), dtype=torch.long), 1
        batch[f"{name}_ids"], batch[f"{name}_mask"] = ids, mask
    return batch


def lm_forward(model, batch: dict[str, torch.Tensor], is_seq2seq: bool, want_hidden: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits that predict each response token, and the last hidden state at those positions.

    Causal: the input is query (left-padded) + response (right-padded); position ids skip the
    left padding exactly as `generate` does, and only the last T+1 positions' logits are computed.
    Seq2seq: the query is the encoder input and the response tokens are the decoder's actions.
    """
    query, query_mask, response, response_mask = batch["query_ids"], batch["query_mask"], batch["response_ids"], batch["response_mask"]
    length = response.shape[1]
    if is_seq2seq:
        decoder_ids = torch.cat([batch["decoder_start"], response[:, :-1]], dim=1)
        decoder_mask = torch.cat([torch.ones_like(response_mask[:, :1]), response_mask[:, :-1]], dim=1)
        out = model(
            input_ids=query, attention_mask=query_mask, decoder_input_ids=decoder_ids,
            decoder_attention_mask=decoder_mask, output_hidden_states=want_hidden,
        )
        return out.logits, (out.decoder_hidden_states[-1] if want_hidden else None)
    input_ids = torch.cat([query, response], dim=1)
    attention = torch.cat([query_mask, response_mask], dim=1).long()
    kwargs = {}
    params = _forward_params(model)
    if "position_ids" in params:
        kwargs["position_ids"] = (attention.cumsum(1) - 1).clamp(min=0)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = length + 1
    out = model(input_ids=input_ids, attention_mask=attention, output_hidden_states=want_hidden, **kwargs)
    logits = out.logits[:, -(length + 1) : -1]
    hidden = out.hidden_states[-1][:, -(length + 1) : -1] if want_hidden else None
    return logits, hidden


def _forward_params(model) -> set[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cached = getattr(base, "_ppo_forward_params", None)
    if cached is None:
        cached = set(inspect.signature(base.forward).parameters)
        base._ppo_forward_params = cached
    return cached
