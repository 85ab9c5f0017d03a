"""Prompt preparation: load, rename columns, template, filter by length, split, write with a manifest.

    runs/<name>/data/train.parquet   prompt, query, category, source, n_tokens
    runs/<name>/data/test.parquet
    runs/<name>/data/manifest.json   counts, source, content hash, settings

`prompt` is the raw text (what prompt+response judges read), `query` what the policy is given: the
prompt inside the policy's chat template when `data.use_chat_template` is on, else the prompt itself.
The split is a seeded permutation, so the same prompts and seed give the same test set on every
machine, and the content hash in the manifest lets MLflow and the promotion gate tell whether two
runs were judged on the same held-out prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rlaif_tasks.atomic import atomic_path, write_json
from rlaif_tasks.config import DataConfig
from rlaif_tasks.errors import RlaifError

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
SPLITS = ("train", "test")


@dataclass
class PromptSplits:
    train: pd.DataFrame
    test: pd.DataFrame
    manifest_path: Path


def data_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "data"


# -- loading ---------------------------------------------------------------------------------------


def _read_local(path: Path) -> pd.DataFrame:
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise RlaifError(f"prompt file {path} has an unsupported type {path.suffix!r}", "use a .jsonl, .csv or .parquet file")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RlaifError(
                f"prompt file {path} is not UTF-8 ({exc.reason} at byte {exc.start})",
                f"re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}",
            ) from None
        if kind == "csv":
            return pd.read_csv(path, encoding="utf-8")
        return pd.read_json(path, lines=True, encoding="utf-8")
    except RlaifError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise RlaifError(
            f"prompt file {path} cannot be read as {kind}: {exc}",
            "check the file: jsonl needs one JSON object per line, csv a header row, parquet a valid file",
        ) from exc


def _read_hub(cfg: DataConfig) -> pd.DataFrame:
    import datasets

    try:
        dataset = datasets.load_dataset(cfg.source, cfg.hub_config, split=cfg.hub_split)
    except (ConnectionError, OSError, ValueError, FileNotFoundError) as exc:
        text = str(exc)
        if "split" in text.lower() and "not" in text.lower() and "found" in text.lower():
            fix = f"set data.hub_split to one of the dataset's splits (now {cfg.hub_split!r})"
        else:
            fix = (
                "check the dataset name (owner/name); offline machines need it in the local HF datasets cache "
                "(download it once where the hub is reachable), or point data.source at a local .jsonl/.csv/.parquet file"
            )
        raise RlaifError(f"the hub dataset {cfg.source!r} (split {cfg.hub_split!r}) could not be loaded: {text[:300]}", fix) from exc
    return dataset.to_pandas()


def load_raw(cfg: DataConfig) -> pd.DataFrame:
    """The prompts as a DataFrame, before any renaming or filtering."""
    source = cfg.source
    if source.startswith("bundled:"):
        if source != "bundled:detox-prompts":
            raise RlaifError(f"unknown bundled prompt set {source!r}", "use bundled:detox-prompts, a hub dataset id or a local file")
        from rlaif_tasks.data.detox_prompts import bundled_prompts

        return pd.DataFrame(bundled_prompts())
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise RlaifError(f"prompt file {path} does not exist", "set data.source to an existing .jsonl/.csv/.parquet file, a hub dataset id or bundled:detox-prompts")
        return _read_local(path)
    return _read_hub(cfg)


# -- shaping ---------------------------------------------------------------------------------------


def select_prompts(frame: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Apply the column mapping and keep non-empty, distinct prompt texts with their metadata."""
    missing_renames = sorted(set(cfg.column_mapping) - set(frame.columns))
    if missing_renames:
        raise RlaifError(
            f"data.column_mapping renames column(s) {missing_renames} that the data does not have (columns: {list(frame.columns)})",
            "fix data.column_mapping so its keys are columns of the data",
        )
    frame = frame.rename(columns=cfg.column_mapping)
    column = cfg.prompt_column
    if column not in frame.columns:
        raise RlaifError(
            f"the prompt column {column!r} is missing from {cfg.source} (columns: {list(frame.columns)})",
            f"set data.prompt_column to the column holding the prompts, or map it with data.column_mapping: {{<column>: {column}}}",
        )
    prompts = frame[column]
    non_text = prompts.map(lambda v: v is not None and not isinstance(v, str) and not (isinstance(v, float) and math.isnan(v)))
    if non_text.any():
        example = prompts[non_text].iloc[0]
        raise RlaifError(
            f"the prompt column {column!r} holds non-text values (e.g. {example!r})",
            "point data.prompt_column at a column of plain strings (chat-message lists are not supported; use their text)",
        )
    out = pd.DataFrame({
        "prompt": prompts.fillna("").astype(str).str.strip(),
        "category": frame["category"].astype(str) if "category" in frame.columns else "",
        "source": frame["source"].astype(str) if "source" in frame.columns else cfg.source,
    })
    out = out[out["prompt"] != ""]
    return out.drop_duplicates("prompt").reset_index(drop=True)


def apply_template(prompts: list[str], tokenizer, use_chat_template: bool) -> list[str]:
    """The policy's input for each prompt: a one-turn user message in the chat template, or the text itself."""
    if not use_chat_template:
        return list(prompts)
    if not getattr(tokenizer, "chat_template", None):
        raise RlaifError(
            "data.use_chat_template is on but the policy's tokenizer has no chat template",
            "set data.use_chat_template: false for base (non-chat) models, or use an instruct model",
        )
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def split_sizes(n: int, test_size: float) -> tuple[int, int]:
    n_test = int(test_size) if test_size >= 1 else max(1, round(n * test_size))
    if n_test >= n:
        raise RlaifError(
            f"data.test_size asks for {n_test} test prompts but only {n} prompts are left after filtering",
            "lower data.test_size, widen the token limits, or add prompts",
        )
    return n - n_test, n_test


def seeded_split(frame: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test = the first `n_test` rows of a permutation drawn from `seed`; both keep that order."""
    _, n_test = split_sizes(len(frame), test_size)
    order = np.random.default_rng(seed).permutation(len(frame))
    return frame.iloc[order[n_test:]].reset_index(drop=True), frame.iloc[order[:n_test]].reset_index(drop=True)


def content_hash(splits: dict[str, pd.DataFrame]) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        digest.update(name.encode())
        for query in splits[name]["query"]:
            digest.update(b"\x00" + query.encode("utf-8"))
    return digest.hexdigest()


# -- the stage -------------------------------------------------------------------------------------


def prepare_prompts(cfg: DataConfig, tokenizer, run_dir: str | Path, seed: int = 0) -> PromptSplits:
    """Load, template, filter and split the prompts, and write them with their manifest."""
    raw = load_raw(cfg)
    frame = select_prompts(raw, cfg)
    frame["query"] = apply_template(frame["prompt"].tolist(), tokenizer, cfg.use_chat_template)
    frame["n_tokens"] = [len(ids) for ids in tokenizer(frame["query"].tolist(), add_special_tokens=False)["input_ids"]] if len(frame) else []
    too_short = frame["n_tokens"] < cfg.min_prompt_tokens
    too_long = frame["n_tokens"] > cfg.max_prompt_tokens
    kept = frame[~too_short & ~too_long].reset_index(drop=True)
    if kept.empty:
        raise RlaifError(
            f"no prompts left from {cfg.source}: {len(raw)} loaded, {len(frame)} non-empty and distinct, "
            f"{int(too_short.sum())} under {cfg.min_prompt_tokens} tokens, {int(too_long.sum())} over {cfg.max_prompt_tokens}",
            "widen data.min_prompt_tokens / data.max_prompt_tokens, or check data.prompt_column",
        )
    train, test = seeded_split(kept, cfg.test_size, seed)
    if cfg.max_train_prompts is not None:
        train = train.head(cfg.max_train_prompts)
    columns = ["prompt", "query", "category", "source", "n_tokens"]
    splits = {"train": train[columns], "test": test[columns]}

    out = data_dir(run_dir)
    for name, split in splits.items():
        with atomic_path(out / f"{name}.parquet") as tmp:
            split.to_parquet(tmp, index=False)
    manifest = {
        "source": cfg.source,
        "counts": {
            "loaded": len(raw),
            "distinct_non_empty": len(frame),
            "dropped_too_short": int(too_short.sum()),
            "dropped_too_long": int(too_long.sum()),
            "train": len(train),
            "test": len(test),
        },
        "categories": {name: split["category"].value_counts().to_dict() for name, split in splits.items()},
        "content_sha256": content_hash(splits),
        "seed": seed,
        "settings": {
            "prompt_column": cfg.prompt_column, "column_mapping": cfg.column_mapping, "use_chat_template": cfg.use_chat_template,
            "min_prompt_tokens": cfg.min_prompt_tokens, "max_prompt_tokens": cfg.max_prompt_tokens,
            "test_size": cfg.test_size, "max_train_prompts": cfg.max_train_prompts,
            "hub_split": cfg.hub_split, "hub_config": cfg.hub_config,
        },
        "tokenizer": getattr(tokenizer, "name_or_path", None),
        "files": {name: f"{name}.parquet" for name in SPLITS},
    }
    manifest_path = write_json(out / "manifest.json", manifest)
    log.info("prepared %d train and %d test prompts from %s (%s)", len(train), len(test), cfg.source, manifest_path)
    return PromptSplits(train=splits["train"], test=splits["test"], manifest_path=manifest_path)


def read_manifest(run_dir: str | Path) -> dict:
    path = data_dir(run_dir) / "manifest.json"
    if not path.is_file():
        raise RlaifError(f"{path} is missing: the prompts of this run were not prepared", "run `rlaif data prepare` (or the prepare_dataset task) first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_prompts_split(run_dir: str | Path, split: str) -> pd.DataFrame:
    """One prepared split (`train` or `test`) of a run."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = data_dir(run_dir) / f"{split}.parquet"
    if not path.is_file():
        raise RlaifError(f"{path} is missing: the prompts of this run were not prepared", "run `rlaif data prepare` (or the prepare_dataset task) first")
    return pd.read_parquet(path)
