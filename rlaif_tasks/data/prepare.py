"""Prompt preparation: load, rename columns, template, filter by length, split, write with a manifest.

    runs/<name>/data/train.parquet   prompt, query, category, source, n_tokens (+ the group column)
    runs/<name>/data/test.parquet
    runs/<name>/data/manifest.json   counts, source, content hash, settings, groups per split

`prompt` is the raw text (what prompt+response judges read), `query` what the policy is given: the
prompt inside the policy's chat template when `data.use_chat_template` is on, else the prompt itself.
The split is a seeded permutation, so the same prompts and seed give the same test set on every
machine, and the content hash in the manifest lets MLflow and the promotion gate tell whether two
runs were judged on the same held-out prompts. With `data.group_column` whole groups (the bundled
set's templates) go to one side, so the test set measures templates the policy never trained on.

`load_eval_set` reads an extra evaluation set (`evaluation.extra_sets`) in the same shape, whole.

The red-team set (rlaif_tasks/evaluation/red_team.py) joins a run here when its config says so:
`train_attacks` are added to the train split after the split (never an attack that is a test prompt),
and `eval_attacks` are copied to `data/red-team.jsonl`, the evaluation set `red-team` of the run. Both
are counted in the manifest and hashed into its `content_sha256`, so a night's cached evaluations and
comparable champions are those judged on the same red-team prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from rlaif_tasks.atomic import atomic_path, write_json
from rlaif_tasks.config import DataConfig
from rlaif_tasks.errors import RlaifError

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
SPLITS = ("train", "test")
COMPUTED_COLUMNS = ("query", "n_tokens")
RED_TEAM_FILE = "red-team.jsonl"
"""The run's copy of the red-team set to evaluate on (`red_team.evaluate`), in its data folder; its stem names the evaluation set."""
RED_TEAM_CATEGORY = "red-team"


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
        from rlaif_tasks.data.detox_prompts import BUNDLED_SETS

        if source not in BUNDLED_SETS:
            raise RlaifError(f"unknown bundled prompt set {source!r}", f"use one of {', '.join(BUNDLED_SETS)}, a hub dataset id or a local file")
        return pd.DataFrame(BUNDLED_SETS[source]())
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise RlaifError(f"prompt file {path} does not exist", "set data.source to an existing .jsonl/.csv/.parquet file, a hub dataset id or bundled:detox-prompts")
        return _read_local(path)
    return _read_hub(cfg)


# -- shaping ---------------------------------------------------------------------------------------


def select_prompts(frame: pd.DataFrame, cfg: DataConfig, keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """Apply the column mapping and keep non-empty, distinct prompt texts with their metadata.

    `keep` names further columns to carry along when the data has them; the group column is always carried.
    """
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
    group = cfg.group_column
    if group is not None:
        if group in COMPUTED_COLUMNS:
            raise RlaifError(f"data.group_column {group!r} names a column that preparation computes", f"rename the data's column with data.column_mapping: {{{group}: <other name>}} and group by that")
        if group not in frame.columns:
            raise RlaifError(
                f"the group column {group!r} is missing from {cfg.source} (columns: {list(frame.columns)})",
                "set data.group_column to a column of the data (the bundled set has `frame`), or unset it to split by row",
            )
        if frame[group].isna().any():
            raise RlaifError(
                f"the group column {group!r} has {int(frame[group].isna().sum())} missing value(s), so those prompts belong to no group",
                "fill the missing values (e.g. each prompt its own id), or choose another data.group_column",
            )
    out = pd.DataFrame({
        "prompt": prompts.fillna("").astype(str).str.strip(),
        "category": frame["category"].astype(str) if "category" in frame.columns else "",
        "source": frame["source"].astype(str) if "source" in frame.columns else cfg.source,
    })
    for name in dict.fromkeys([*keep, *([group] if group else [])]):
        if name in frame.columns and name not in out.columns:
            out[name] = frame[name]
    out = out[out["prompt"] != ""]
    return out.drop_duplicates("prompt").reset_index(drop=True)


def bos_prefix(tokenizer) -> str:
    """The BOS token's text when the tokenizer puts one before every input itself (Llama 3.1 base), else "".

    Queries are tokenised with add_special_tokens=False everywhere (generation, PPO, KL), so a model
    trained with BOS first would never see it; putting its text in the query brings it back for all of them.
    """
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if not bos or bos_id is None:
        return ""
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos_id else ""


def apply_template(prompts: list[str], tokenizer, use_chat_template: bool) -> list[str]:
    """The policy's input for each prompt: a one-turn user message in the chat template, or the text itself
    (after the BOS token where the model expects one; chat templates write their own)."""
    if not use_chat_template:
        prefix = bos_prefix(tokenizer)
        return [p if p.startswith(prefix) else prefix + p for p in prompts]
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


def group_split(frame: pd.DataFrame, column: str, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Whole groups of `column` go to test, in a seeded order, until it is as near `test_size` rows as they allow.

    A greedy pass takes each group that still fits, then at most one more when that lands nearer (or the
    test split would be empty), never the last group left for training. Both splits keep the row order
    of a seeded permutation, so their heads (evaluation.num_prompts, data.max_train_prompts) mix groups.
    """
    sizes = frame[column].value_counts()
    if len(sizes) < 2:
        raise RlaifError(
            f"data.group_column {column!r} has {len(sizes)} distinct value(s); a split by group needs at least 2",
            "set data.group_column to a column with several values (the bundled set has `frame`), or unset it to split by row",
        )
    _, target = split_sizes(len(frame), test_size)
    rng = np.random.default_rng(seed)
    names = sorted(sizes.index, key=str)
    test_groups, taken, left = [], 0, []
    for name in (names[i] for i in rng.permutation(len(names))):
        if taken + sizes[name] <= target:
            test_groups.append(name)
            taken += int(sizes[name])
        else:
            left.append(name)
    if len(left) >= 2:
        nearest = min(left, key=lambda name: abs(taken + sizes[name] - target))
        if not test_groups or abs(taken + sizes[nearest] - target) < target - taken:
            test_groups.append(nearest)
    shuffled = frame.iloc[rng.permutation(len(frame))]
    in_test = shuffled[column].isin(test_groups)
    return shuffled[~in_test].reset_index(drop=True), shuffled[in_test].reset_index(drop=True)


def content_hash(splits: dict[str, pd.DataFrame], red_team: Sequence[str] = ()) -> str:
    """sha256 of the splits' queries, and of the red-team prompts evaluated beside them when there are any."""
    digest = hashlib.sha256()
    for name in SPLITS:
        digest.update(name.encode())
        for query in splits[name]["query"]:
            digest.update(b"\x00" + query.encode("utf-8"))
    if red_team:
        digest.update(RED_TEAM_CATEGORY.encode())
        for prompt in red_team:
            digest.update(b"\x00" + prompt.encode("utf-8"))
    return digest.hexdigest()


def red_team_train_rows(
    attacks: Sequence[str], cfg: DataConfig, tokenizer, taken: set[str], source: str,
) -> tuple[pd.DataFrame, dict]:
    """The red-team attacks as train rows (category `red-team`, the group `red-team` when the split is by group), and counts.

    An attack that is already a prompt of the run (`taken`: train or test) is left out, so a test prompt is never
    trained on; the token limits apply as to every prompt.
    """
    texts = list(dict.fromkeys(t.strip() for t in attacks if isinstance(t, str) and t.strip()))
    fresh = [t for t in texts if t not in taken]
    frame = pd.DataFrame({"prompt": fresh, "category": RED_TEAM_CATEGORY, "source": source})
    if cfg.group_column:
        frame[cfg.group_column] = RED_TEAM_CATEGORY
    frame["query"] = apply_template(fresh, tokenizer, cfg.use_chat_template)
    frame["n_tokens"] = [len(ids) for ids in tokenizer(frame["query"].tolist(), add_special_tokens=False)["input_ids"]] if fresh else []
    fits = (frame["n_tokens"] >= cfg.min_prompt_tokens) & (frame["n_tokens"] <= cfg.max_prompt_tokens)
    counts = {"attacks": len(texts), "added": int(fits.sum()), "already_prompts": len(texts) - len(fresh), "outside_token_limits": int((~fits).sum())}
    return frame[fits].reset_index(drop=True), counts


# -- the stage -------------------------------------------------------------------------------------


def prepare_prompts(
    cfg: DataConfig, tokenizer, run_dir: str | Path, seed: int = 0, *,
    train_attacks: Sequence[str] | None = None, eval_attacks: Sequence[str] | None = None, attacks_source: str = RED_TEAM_CATEGORY,
) -> PromptSplits:
    """Load, template, filter and split the prompts, and write them with their manifest.

    `train_attacks` (red_team.train_on_attacks) join the train split after the split and data.max_train_prompts;
    `eval_attacks` (red_team.evaluate) are written to data/red-team.jsonl. `attacks_source` is where they came from.
    """
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
    group = cfg.group_column
    if group is None:
        train, test = seeded_split(kept, cfg.test_size, seed)
    else:
        train, test = group_split(kept, group, cfg.test_size, seed)
    if cfg.max_train_prompts is not None:
        train = train.head(cfg.max_train_prompts)
    red_team: dict = {}
    if train_attacks is not None:
        rows, red_team["train"] = red_team_train_rows(train_attacks, cfg, tokenizer, set(train["prompt"]) | set(test["prompt"]), attacks_source)
        if len(rows):
            train = pd.concat([train, rows[[c for c in train.columns if c in rows.columns]]], ignore_index=True)
    evaluated = list(dict.fromkeys(t.strip() for t in eval_attacks or () if isinstance(t, str) and t.strip()))
    if eval_attacks is not None:
        red_team["evaluate"] = len(evaluated)
    columns = list(dict.fromkeys(["prompt", "query", "category", "source", "n_tokens", *([group] if group else [])]))
    splits = {"train": train[columns], "test": test[columns]}
    groups = None if group is None else {name: sorted(map(str, split[group].unique())) for name, split in splits.items()}

    out = data_dir(run_dir)
    for name, split in splits.items():
        with atomic_path(out / f"{name}.parquet") as tmp:
            split.to_parquet(tmp, index=False)
    if evaluated:
        with atomic_path(out / RED_TEAM_FILE) as tmp:
            tmp.write_text("".join(json.dumps({"prompt": p, "category": RED_TEAM_CATEGORY}, ensure_ascii=False) + "\n" for p in evaluated), encoding="utf-8")
    manifest = {
        "source": cfg.source,
        "counts": {
            "loaded": len(raw),
            "distinct_non_empty": len(frame),
            "dropped_too_short": int(too_short.sum()),
            "dropped_too_long": int(too_long.sum()),
            "train": len(train),
            "test": len(test),
            **({f"{name}_groups": len(names) for name, names in groups.items()} if groups else {}),
            **({"red_team_train": red_team["train"]["added"]} if "train" in red_team else {}),
            **({"red_team_evaluate": red_team["evaluate"]} if "evaluate" in red_team else {}),
        },
        "categories": {name: split["category"].value_counts().to_dict() for name, split in splits.items()},
        "groups": groups,
        "content_sha256": content_hash(splits, evaluated),
        "seed": seed,
        "settings": {
            "prompt_column": cfg.prompt_column, "column_mapping": cfg.column_mapping, "use_chat_template": cfg.use_chat_template,
            "min_prompt_tokens": cfg.min_prompt_tokens, "max_prompt_tokens": cfg.max_prompt_tokens,
            "test_size": cfg.test_size, "group_column": group, "max_train_prompts": cfg.max_train_prompts,
            "hub_split": cfg.hub_split, "hub_config": cfg.hub_config,
        },
        "tokenizer": getattr(tokenizer, "name_or_path", None),
        "files": {**{name: f"{name}.parquet" for name in SPLITS}, **({RED_TEAM_CATEGORY: RED_TEAM_FILE} if evaluated else {})},
        **({"red_team": {"source": attacks_source, **red_team}} if red_team else {}),
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


def load_eval_set(source: str, tokenizer, use_chat_template: bool) -> pd.DataFrame:
    """An extra evaluation set (an `evaluation.extra_sets` entry) shaped like a prepared split, plus its own columns.

    It is used whole, with no token filter and no split, so every run is judged on the same rows;
    `query` follows the policy's template as the run's own splits do (`data.use_chat_template`).
    """
    cfg = DataConfig(source=source, use_chat_template=use_chat_template)
    raw = load_raw(cfg)
    frame = select_prompts(raw, cfg, keep=tuple(c for c in raw.columns if c not in COMPUTED_COLUMNS))
    if frame.empty:
        raise RlaifError(f"the evaluation set {source!r} holds no prompts", "check evaluation.extra_sets: each entry needs a non-empty `prompt` column")
    frame.insert(1, "query", apply_template(frame["prompt"].tolist(), tokenizer, use_chat_template))
    frame.insert(4, "n_tokens", [len(ids) for ids in tokenizer(frame["query"].tolist(), add_special_tokens=False)["input_ids"]])
    return frame
