"""A run's preference pairs: AI feedback from a configured policy and `reward`, or imported human pairs.

Kept in `<run folder>/preferences/` (pairs.parquet + manifest.json) and read back on a retry, so
the pairs a DAG run trains on are made once. DPO (train/) and the preferences DAG (stages/) ask here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rlaif_tasks.config import RunConfig
from rlaif_tasks.models import load_model, resolve_device
from rlaif_tasks.preferences.ai_feedback import build_ai_feedback_pairs, read_preferences, write_preferences
from rlaif_tasks.preferences.human import load_human_preferences
from rlaif_tasks.rewards import build_scorer

if TYPE_CHECKING:
    import pandas as pd


def preference_pairs(config: RunConfig, run_dir: Path, split) -> "pd.DataFrame":
    """The run's preference pairs (run_dir/preferences/pairs.parquet, made once): AI feedback on `split`, or imported."""
    return run_pairs(config, run_dir, split)[0]


def run_pairs(config: RunConfig, run_dir: Path, split) -> tuple["pd.DataFrame", dict]:
    """`preference_pairs` with the manifest that describes them."""
    out = run_dir / "preferences"
    if (out / "pairs.parquet").is_file():
        return read_preferences(out)
    p = config.preferences
    if p.source == "ai-feedback":
        return ai_feedback_pairs(config, config.model.policy, split, out, seed=config.training_seed)
    pairs, report = load_human_preferences(
        p.source, column_mapping=p.column_mapping, max_chars=p.max_chars, max_rows=p.max_rows, max_file_mb=p.max_file_mb,
    )
    write_preferences(pairs, out, manifest_extra={"source": p.source, "report": report})
    return read_preferences(out)


def ai_feedback_pairs(config: RunConfig, policy_path: str | Path, split, out: Path, seed: int) -> tuple["pd.DataFrame", dict]:
    """Pairs from `policy_path`'s own samples on `split`, labelled by `reward`, written to `out` (read back if there), with their manifest."""
    if (out / "pairs.parquet").is_file():
        return read_preferences(out)
    m, p = config.model, config.preferences
    drawn = p.max_prompts is not None and len(split) > p.max_prompts
    if drawn:
        split = split.sample(n=p.max_prompts, random_state=seed).sort_index()
    policy = load_model(str(policy_path), kind="causal-lm", revision=m.revision, trust_remote_code=m.trust_remote_code, dtype=m.dtype, device=resolve_device(config.device))
    device = str(next(policy.model.parameters()).device)
    scorer = build_scorer(config.reward, purpose="reward", device=device)
    agreeing = {judge.display_name: build_scorer(judge, purpose="reward", device=device) for judge in p.agreeing_judges}
    pairs = build_ai_feedback_pairs(
        policy.model, policy.tokenizer, split, scorer, config.generation, k=p.k, margin=p.margin, seed=seed, temperatures=p.temperatures, agreeing=agreeing,
        batch_size=config.evaluation.batch_size,  # no gradients, as in evaluation: the larger batch
    )
    extra = {"source": "ai-feedback", "policy": str(policy_path), "judge": config.reward.display_name, "agreeing_judges": list(agreeing), "k": p.k, "margin": p.margin,
             "max_prompts": p.max_prompts, "prompts_drawn": drawn, "report": pairs.attrs.get("report", {})}
    write_preferences(pairs, out, manifest_extra=extra)
    return read_preferences(out)
