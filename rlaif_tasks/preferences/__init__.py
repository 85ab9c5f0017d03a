"""Preference data (prompt, chosen, rejected) for reward models and DPO: human imports and AI feedback."""

from __future__ import annotations

from rlaif_tasks.preferences.ai_feedback import (
    build_ai_feedback_pairs,
    position_bias_check,
    read_preferences,
    split_pairs_by_prompt,
    write_preferences,
)
from rlaif_tasks.preferences.human import load_human_preferences, read_preference_source, validate_preferences

__all__ = [
    "build_ai_feedback_pairs",
    "load_human_preferences",
    "position_bias_check",
    "read_preference_source",
    "read_preferences",
    "split_pairs_by_prompt",
    "validate_preferences",
    "write_preferences",
]
