"""Paired comparisons of per-prompt scores: is the challenger's drop in toxicity more than noise?

Both policies answer the same held-out prompts, so the comparison is paired: a prompt that draws
toxic answers from one policy tends to draw them from the other, and resampling prompts jointly
keeps that correlation out of the interval. The prompt is the unit of resampling, because the
prompts are what the test set samples; several responses to one prompt are not independent draws,
so they are averaged first (`per_prompt_means`).

The relative improvement is the seed's `(reference - challenger) / reference` on mean scores where
lower is better (toxicity, so non-negative). Its interval is the percentile bootstrap:

    draw n prompt indices with replacement, B times (the same indices for both policies)
    per draw, the mean score of each policy over the drawn prompts, and their relative difference
    the interval is the (1 - confidence) / 2 and (1 + confidence) / 2 empirical quantiles of the B values

Quantiles are Efron's order statistics (numpy's `inverted_cdf`): no interpolation, so a bound is
always one of the resampled values and infinite values (below) stay well-defined.

A draw whose reference mean is 0 has no ratio; it is given the limit as the reference mean goes to
0 from above: 0 when the challenger's mean is 0 too (nothing to improve, nothing lost), -inf when
it is higher (any toxicity against a clean reference is unboundedly worse). Such draws are kept,
not dropped, since dropping them would leave out exactly the draws that speak against the
challenger; `n_reference_zero` counts them. The point estimate follows the same rule, where
`evaluation.relative_improvement` gives NaN; both fail the gate.

Seeds: challenger and reference answer each prompt with the same per-prompt sampling seed
(`sampling_seeds`), so that sampling noise is shared rather than added; a scheduled run takes its
base seed from its logical date (`seed_for_logical_date`), so a retry samples the same answers.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Hashable, Mapping, Sequence

import numpy as np

RESAMPLE_BLOCK = 1_000
"""Resamples drawn at once: memory stays at block x prompts indices, whatever the test set size."""


def per_prompt_means(prompt_ids: Sequence[Hashable], scores: Sequence[float]) -> tuple[list, np.ndarray]:
    """Average the samples of each prompt, since the prompt, not the sample, is what is resampled.

    Returns the distinct ids in order of first appearance and the mean score of each.
    """
    ids, inverse, scores = group_by_prompt(prompt_ids, scores)
    sums = np.bincount(inverse, weights=scores, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids))
    return ids, sums / counts


def group_by_prompt(prompt_ids: Sequence[Hashable], scores: Sequence[float]) -> tuple[list, np.ndarray, np.ndarray]:
    """The distinct ids in order of first appearance, each score's position among them, and the scores as floats."""
    scores = np.asarray(scores, dtype=float)
    if len(prompt_ids) != len(scores):
        raise ValueError(f"{len(prompt_ids)} prompt ids for {len(scores)} scores")
    index: dict = {}
    for prompt_id in prompt_ids:
        index.setdefault(prompt_id, len(index))
    inverse = np.fromiter((index[p] for p in prompt_ids), dtype=np.intp, count=len(scores))
    return list(index), inverse, scores


def paired_differences(reference: Mapping[Hashable, float], challenger: Mapping[Hashable, float]) -> tuple[list, np.ndarray, np.ndarray]:
    """The pairs to compare: ids both policies answered, with the reference's and the challenger's means.

    Ids are sorted (by str) so that a seeded bootstrap does not depend on the order the scores
    were stored in. A prompt only one side has cannot be paired and is left out.
    """
    ids = sorted(reference.keys() & challenger.keys(), key=str)
    if len(ids) < 2:
        raise ValueError(
            f"{len(ids)} prompt(s) in common between the reference ({len(reference)}) and the challenger ({len(challenger)}); "
            "a paired comparison needs at least 2"
        )
    return ids, np.array([reference[i] for i in ids], dtype=float), np.array([challenger[i] for i in ids], dtype=float)


def relative_change(difference, reference):
    """`difference / reference`; where the reference is 0, its limit as the reference goes to 0 from above."""
    difference, reference = np.asarray(difference, dtype=float), np.asarray(reference, dtype=float)
    limit = np.where(difference == 0, 0.0, np.copysign(np.inf, difference))
    return np.divide(difference, reference, out=limit, where=reference != 0)


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Efron's percentile interval: the order statistics at (1 -+ confidence) / 2, never interpolated."""
    tail = (1.0 - confidence) / 2.0
    lower, upper = np.quantile(values, [tail, 1.0 - tail], method="inverted_cdf")
    return float(lower), float(upper)


def resampled_means(reference: np.ndarray, challenger: np.ndarray, n_resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each policy's mean over the same resampled prompts (paired), B draws of n prompts with replacement."""
    n = len(reference)
    ref_means, chal_means = [], []
    for start in range(0, n_resamples, RESAMPLE_BLOCK):
        idx = rng.integers(n, size=(min(RESAMPLE_BLOCK, n_resamples - start), n))
        ref_means.append(reference[idx].mean(axis=1))
        chal_means.append(challenger[idx].mean(axis=1))
    return np.concatenate(ref_means), np.concatenate(chal_means)


def paired_bootstrap(
    reference_means: Sequence[float],
    challenger_means: Sequence[float],
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Point estimates and percentile intervals of the relative improvement and the absolute difference.

    Inputs are per-prompt means aligned by prompt (`paired_differences`). `relative` is
    (mean_ref - mean_chal) / mean_ref, `difference` is mean_ref - mean_chal: positive means the
    challenger scores lower (is better). The result is JSON-able.
    """
    reference = np.asarray(reference_means, dtype=float)
    challenger = np.asarray(challenger_means, dtype=float)
    if reference.ndim != 1 or reference.shape != challenger.shape:
        raise ValueError(f"reference and challenger must be 1-D and aligned, got shapes {reference.shape} and {challenger.shape}")
    if len(reference) < 2:
        raise ValueError(f"{len(reference)} prompt(s); a paired bootstrap needs at least 2")
    if not (np.isfinite(reference).all() and np.isfinite(challenger).all()):
        raise ValueError("per-prompt means must be finite (a prompt without a score should be left out, not NaN)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")

    ref_means, chal_means = resampled_means(reference, challenger, n_resamples, np.random.default_rng(seed))
    differences = ref_means - chal_means
    relatives = relative_change(differences, ref_means)
    difference = reference.mean() - challenger.mean()
    rel_lower, rel_upper = percentile_interval(relatives, confidence)
    diff_lower, diff_upper = percentile_interval(differences, confidence)
    return {
        "relative": {"point": float(relative_change(difference, reference.mean())), "lower": rel_lower, "upper": rel_upper},
        "difference": {"point": float(difference), "lower": diff_lower, "upper": diff_upper},
        "reference_mean": float(reference.mean()),
        "challenger_mean": float(challenger.mean()),
        "n_reference_zero": int((ref_means == 0).sum()),
        "n_prompts": int(len(reference)),
        "n_resamples": int(n_resamples),
        "confidence": float(confidence),
        "seed": int(seed),
    }


def significantly_worse(result: dict) -> bool:
    """The challenger scores higher (worse) beyond noise: the difference's whole interval lies below 0.

    Read on the absolute difference, which stays defined when the reference mean is 0; for
    non-negative scores its sign is that of the relative improvement.
    """
    return result["difference"]["upper"] < 0.0


def clears(result: dict, min_improvement: float) -> bool:
    """The relative improvement is above `min_improvement` even at its lower bound."""
    return result["relative"]["lower"] > min_improvement


SEED_BITS = 32
"""Seeds fit every consumer (numpy's legacy seed takes < 2**32; torch and random take more)."""


def _hash_seed(text: str) -> int:
    """A seed from text that is the same in every process and Python version (unlike hash())."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[: SEED_BITS // 8], "big")


def sampling_seeds(base_seed: int, prompt_ids: Sequence[Hashable]) -> list[int]:
    """Per-prompt sampling seeds, so challenger and reference answer each prompt with the same randomness.

    A prompt's seed depends only on the base seed and its id (as str), not on its position or
    which other prompts are evaluated, so a subset or reordered test set keeps the pairing. Two
    ids may share a seed (about n**2 / 2**33 odds), which costs nothing but a little independence.
    """
    return [_hash_seed(f"sampling:{int(base_seed)}:{prompt_id}") for prompt_id in prompt_ids]


def seed_for_logical_date(logical_date_iso: str) -> int:
    """The base seed of a scheduled run: sha256 of its logical date as an instant in UTC.

    A retry or re-run of the same DAG run gets the same seed, another night another one. The
    date is normalised first, so notations of one instant agree ("...Z", "...+00:00",
    "...+02:00" two hours later); a date without an offset is read as UTC, as Airflow's are.
    """
    instant = datetime.fromisoformat(logical_date_iso)
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return _hash_seed(f"logical-date:{instant.astimezone(timezone.utc).isoformat()}")
