"""Preference pairs from AI feedback, the position-bias check for pairwise judges, and their files.

A policy samples k responses per prompt and a judge scores them; the best and the worst become a
(chosen, rejected) pair only when their gap beats `margin`, since near-ties are mostly judge noise
and teach DPO/reward models a coin flip. Pairwise LLM judges favour a position (often the first),
so `position_bias_check` asks in both orders and keeps only the verdicts that survive the swap.

    <out_dir>/pairs.parquet   prompt, chosen, rejected (+ query, scores, margin for AI pairs)
    <out_dir>/manifest.json   counts, sha256 of pairs.parquet, and the caller's settings (judges, k, margin, drops)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from rlaif_tasks.atomic import atomic_path, write_json
from rlaif_tasks.config import GenerationConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.rewards.base import checked_scores

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.parquet"
MANIFEST_FILE = "manifest.json"
PAIR_COLUMNS = ("prompt", "query", "chosen", "rejected", "score_chosen", "score_rejected", "margin")

ScoreFn = Callable[[list[str], list[str]], Sequence[float]]
JudgePairFn = Callable[[list[str], list[str], list[str]], Sequence[Any]]
"""(prompts, first responses, second responses) -> per pair 0/"a" when the first is better, 1/"b" when the second is."""


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise RlaifError(f"{what} lacks column(s) {absent}; columns found: {[str(c) for c in frame.columns]}", f"pass a frame with columns {list(columns)}")


# -- AI-feedback pairs -----------------------------------------------------------------------------


def build_ai_feedback_pairs(
    model,
    tokenizer,
    prompts_df: pd.DataFrame,
    score_fn: ScoreFn,
    gen_cfg: GenerationConfig,
    *,
    k: int = 4,
    margin: float = 0.1,
    seed: int = 0,
    batch_size: int | None = None,
    temperatures: Sequence[float] = (),
    agreeing: Mapping[str, ScoreFn] | None = None,
) -> pd.DataFrame:
    """Sample k responses per prompt, score them (higher is better), keep (best, worst) when the gap > margin.

    `score_fn(responses, prompts)` gets the raw `prompt` of each response (what prompt+response
    judges read); the policy is given `query`. Blank responses and repeats of the same text are not
    candidates: a pair needs two different non-blank responses. With `temperatures`, k responses are
    sampled at each (another seed each) and all of them are candidates. Each of the `agreeing` judges
    (name -> score function, higher is better) must also score the chosen response above the rejected
    one, or the prompt gives no pair. The frame's `attrs["report"]` counts prompts, responses, and
    prompts without a pair (too few distinct responses, gap within margin, a judge that disagreed).
    """
    if k < 2:
        raise RlaifError(f"k={k} responses per prompt cannot make a pair", "set k to 2 or more (4 is a good start)")
    if margin < 0 or not math.isfinite(margin):
        raise RlaifError(f"margin must be a finite number >= 0, got {margin}", "set margin to the smallest score gap worth learning from, e.g. 0.1")
    _require_columns(prompts_df, ("prompt", "query"), "prompts_df")
    if prompts_df.empty:
        raise RlaifError("prompts_df has no prompts to sample from", "pass the prepared train split (columns prompt, query)")
    from rlaif_tasks.generation import generate

    prompts = [str(p) for p in prompts_df["prompt"]]
    queries = [str(q) for q in prompts_df["query"]]
    prompt_index: list[int] = []
    responses: list[str] = []
    for number, temperature in enumerate(temperatures or [gen_cfg.temperature]):
        settings = dataclasses.replace(gen_cfg, temperature=float(temperature))
        out = generate(model, tokenizer, queries, settings, num_samples=k, seed=seed + 7919 * number, batch_size=batch_size)
        prompt_index += list(out.prompt_index)
        responses += list(out.responses)
    scores = checked_scores(score_fn, responses, [prompts[i] for i in prompt_index], "score_fn")

    candidates: list[dict[str, float]] = [{} for _ in prompts]
    for i, text, score in zip(prompt_index, responses, scores):
        if text.strip() and text not in candidates[i]:
            candidates[i][text] = score
    rows: list[dict[str, Any]] = []
    too_few = below = 0
    for prompt, query, scored in zip(prompts, queries, candidates):
        if len(scored) < 2:
            too_few += 1
            continue
        chosen = max(scored, key=scored.__getitem__)
        rejected = min(scored, key=scored.__getitem__)
        gap = scored[chosen] - scored[rejected]
        if gap <= margin:
            below += 1
            continue
        rows.append(dict(prompt=prompt, query=query, chosen=chosen, rejected=rejected, score_chosen=scored[chosen], score_rejected=scored[rejected], margin=gap))
    pairs = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    disagreed = {}
    for name, judge in (agreeing or {}).items():
        chosen_scores = checked_scores(judge, pairs["chosen"].tolist(), pairs["prompt"].tolist(), name)
        rejected_scores = checked_scores(judge, pairs["rejected"].tolist(), pairs["prompt"].tolist(), name)
        agrees = np.asarray(chosen_scores) > np.asarray(rejected_scores)
        disagreed[name] = int((~agrees).sum())
        pairs = pairs[agrees].reset_index(drop=True)
    pairs.attrs["report"] = {
        "prompts": len(prompts), "responses": len(responses), "mean_score": sum(scores) / len(scores) if scores else None,
        "pairs": len(pairs), "k": k, "margin": margin, "seed": seed, "temperatures": [float(t) for t in temperatures or [gen_cfg.temperature]],
        "dropped": {"too_few_distinct_responses": too_few, "within_margin": below, **({"judge_disagreed": disagreed} if agreeing else {})},
    }
    log.info("AI feedback: %d pairs from %d prompts (k=%d; %d within margin %.3g, %d with < 2 distinct responses%s)", len(pairs), len(prompts), k, below,
             margin, too_few, "".join(f", {n} where {name} disagreed" for name, n in disagreed.items()))
    return pairs


# -- position bias ---------------------------------------------------------------------------------


def _verdict(answer: Any) -> int | None:
    """0 when the first response wins, 1 when the second does, None for anything else (a tie, a refusal)."""
    if isinstance(answer, (bool, np.bool_)):
        return None
    if isinstance(answer, (int, np.integer)) and int(answer) in (0, 1):
        return int(answer)
    if isinstance(answer, str):
        return {"a": 0, "b": 1, "0": 0, "1": 1}.get(answer.strip().lower())
    return None


def _swap_rows(frame: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    frame = frame.copy()
    pairs = [("chosen", "rejected")] + [(c, c[: -len("_chosen")] + "_rejected") for c in frame.columns if isinstance(c, str) and c.endswith("_chosen")]
    for a, b in pairs:
        if b in frame.columns:
            left, right = frame.loc[mask, a].copy(), frame.loc[mask, b].copy()
            frame.loc[mask, a], frame.loc[mask, b] = right.to_numpy(), left.to_numpy()
    if {"margin", "score_chosen", "score_rejected"} <= set(frame.columns):
        frame.loc[mask, "margin"] = frame.loc[mask, "score_chosen"] - frame.loc[mask, "score_rejected"]
    return frame


def position_bias_check(judge_pair_fn: JudgePairFn, pairs: pd.DataFrame, *, swap: bool = False) -> tuple[pd.DataFrame, dict[str, int]]:
    """Ask the judge about (chosen, rejected) and (rejected, chosen); keep pairs whose verdict survives the swap.

    A verdict that flips with the order is the judge's position bias, not a preference: `disagreed`.
    Answers that are neither side (ties, refusals) count as `invalid`. When both orders agree that the
    rejected response is better (`overruled`), the pair is dropped, or relabelled with `swap=True`
    (also swapping *_chosen/*_rejected columns and recomputing `margin`), for when the judge is the labeller.
    """
    _require_columns(pairs, ("prompt", "chosen", "rejected"), "pairs")
    prompts, chosen, rejected = (pairs[c].astype(str).tolist() for c in ("prompt", "chosen", "rejected"))
    forward = list(judge_pair_fn(prompts, chosen, rejected))
    backward = list(judge_pair_fn(prompts, rejected, chosen))
    if len(forward) != len(pairs) or len(backward) != len(pairs):
        raise RlaifError(
            f"judge_pair_fn returned {len(forward)} and {len(backward)} verdicts for {len(pairs)} pairs",
            "make the judge return one verdict (0/'a' first better, 1/'b' second better) per pair",
        )
    keep = np.zeros(len(pairs), dtype=bool)
    flip = np.zeros(len(pairs), dtype=bool)
    report = {"pairs_in": len(pairs), "pairs_out": 0, "disagreed": 0, "invalid": 0, "overruled": 0, "swapped": 0}
    for i, (f, b) in enumerate(zip(forward, backward)):
        vf, vb = _verdict(f), _verdict(b)
        if vf is None or vb is None:
            report["invalid"] += 1
        elif vf == vb:
            report["disagreed"] += 1
        elif vf == 1:
            report["overruled"] += 1
            keep[i] = flip[i] = swap
        else:
            keep[i] = True
    kept = _swap_rows(pairs, flip) if flip.any() else pairs
    kept = kept[keep].reset_index(drop=True)
    report["swapped"] = int(flip.sum())
    report["pairs_out"] = len(kept)
    if report["disagreed"]:
        log.warning("position bias: the judge flipped its verdict with the order on %d of %d pairs", report["disagreed"], len(pairs))
    return kept, report


# -- split and files -------------------------------------------------------------------------------


def split_pairs_by_prompt(pairs: pd.DataFrame, test_size: float = 0.1, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/test by prompt, so a test prompt's pairs were never trained on; seeded, independent of row order.

    `test_size` below 1 is a fraction of the distinct prompts, 1 or more a number of prompts.
    """
    _require_columns(pairs, ("prompt",), "pairs")
    distinct = sorted(pairs["prompt"].astype(str).unique())
    n_test = int(test_size) if test_size >= 1 else max(1, round(len(distinct) * test_size))
    if test_size <= 0 or n_test >= len(distinct):
        raise RlaifError(
            f"test_size={test_size} asks for {n_test} test prompt(s) out of {len(distinct)} distinct prompts",
            "lower test_size (a fraction of the prompts, or a count below their number), or add pairs",
        )
    order = np.random.default_rng(seed).permutation(len(distinct))
    test_prompts = {distinct[i] for i in order[:n_test]}
    in_test = pairs["prompt"].astype(str).isin(test_prompts).to_numpy()
    return pairs[~in_test].reset_index(drop=True), pairs[in_test].reset_index(drop=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_preferences(pairs: pd.DataFrame, out_dir: str | Path, manifest_extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write pairs.parquet, then manifest.json naming its sha256, each by write-then-rename.

    `manifest_extra` carries the settings that made the pairs (judge ids, k, margin, drop counts);
    the computed keys (file, sha256, pairs, prompts, columns) win over it. Returns the manifest.
    """
    _require_columns(pairs, ("prompt", "chosen", "rejected"), "pairs")
    if pairs.empty:
        raise RlaifError(f"no preference pairs to write to {out_dir}", "lower the margin, raise k, or check why every pair was dropped")
    out_dir = Path(out_dir)
    frame = pairs.reset_index(drop=True)
    frame.attrs = {}
    with atomic_path(out_dir / PAIRS_FILE) as tmp:
        frame.to_parquet(tmp, index=False)
        sha = _sha256(tmp)
    manifest = {
        **dict(manifest_extra or {}),
        "file": PAIRS_FILE,
        "sha256": sha,
        "pairs": len(frame),
        "prompts": int(frame["prompt"].nunique()),
        "columns": [str(c) for c in frame.columns],
    }
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def read_preferences(out_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The pairs and their manifest, refusing a parquet that is not the one the manifest describes."""
    out_dir = Path(out_dir)
    manifest_path, pairs_path = out_dir / MANIFEST_FILE, out_dir / PAIRS_FILE
    if not manifest_path.is_file() or not pairs_path.is_file():
        raise RlaifError(f"{out_dir} has no {PAIRS_FILE} + {MANIFEST_FILE}", "run the preference stage first, or point at its output folder")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    sha = _sha256(pairs_path)
    if sha != manifest.get("sha256"):
        raise RlaifError(
            f"{pairs_path} does not match its manifest (sha256 {sha[:12]} vs {str(manifest.get('sha256'))[:12]}); a write was interrupted or the file was edited",
            "rerun the preference stage to rewrite both files",
        )
    return pd.read_parquet(pairs_path), manifest
