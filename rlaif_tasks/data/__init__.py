"""Prompt data: the bundled detoxification prompts, local files or hub datasets, split per run; extra evaluation sets."""

from rlaif_tasks.data.prepare import PromptSplits, load_eval_set, load_prompts_split, prepare_prompts, read_manifest

__all__ = ["PromptSplits", "load_eval_set", "load_prompts_split", "prepare_prompts", "read_manifest"]
