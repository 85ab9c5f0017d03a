"""What a trigger may change: the config's `orchestration.trigger_overrides`, and safe values for the model keys.

In Airflow, who may trigger a DAG (or post an asset event) is a much larger group than who may edit
its config file or its connections. So a trigger's overrides are checked against the allowlist of
the config they apply to, twice: by the trigger form's JSON schema (`set_item_pattern`,
`model_value_pattern`: the REST API answers 400 and no DAG run exists) and by the first stage
(`check_trigger_overrides`), which also sees asset events and `rlaif nightly --set`. A key that decides
trust (config.TRUST_KEYS) cannot be allowed at all.

`model.policy` and `reward.model` load code and weights, so their values are limited too: a bundled
name, this project's registered models (`models:/<registered model>` or its `-reward` model, by alias
or version), or an absolute folder under a configured root (the project, $RLAIF_HOME,
$RLAIF_CONFIG_DIRS). Not a hub id (it could name any repository) and not `python:module:function`.

What a night costs is bounded too: each of config.TRIGGER_WORK_KEYS at most `orchestration.trigger_scale_limit` times
the config's own value (`check_trigger_work`), so a trigger cannot ask for a week of training or a full disk; and a step's
minibatches (batch over minibatch size) at most that multiple of the config's, so a minibatch of 1 cannot multiply a
step's updates either.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from rlaif_tasks.config import REWARD_MODEL_SUFFIX, TRIGGER_WORK_FALLBACKS, TRIGGER_WORK_KEYS, RunConfig, dotted_value, is_trust_key, pattern_escape, with_overrides
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models.bundled import BUNDLED_MODELS

MODEL_KEYS = ("model.policy", "reward.model")
JUDGE_NAMES = ("llm-judge", "composite")
"""Reward names whose settings (endpoint, key, parts) come from the config file, so naming them is safe."""


def registered_names(config: RunConfig) -> list[str]:
    """This project's registered models: the policy and the reward model trained on its pairs."""
    policy = config.tracking.registered_model.format(name=config.name)
    return [policy, f"{policy}{REWARD_MODEL_SUFFIX}"]


def folder_pattern(roots: Iterable[str]) -> str:
    """An unanchored ECMA/Python regex for a path a trigger may name: below one of `roots`, no `..` segment, no control character."""
    return r"(?!(?:.*/)?\.\.(?:/|$))(?:" + "|".join(f"{pattern_escape(r.rstrip('/'))}/[^\\x00-\\x1f]+" for r in roots) + ")"


def model_value_pattern(config: RunConfig, roots: Iterable[str]) -> str:
    """An unanchored ECMA/Python regex for the values `model.policy` and `reward.model` may take from a trigger."""
    names = [pattern_escape(n) for n in (*BUNDLED_MODELS, *JUDGE_NAMES)]
    registry = r"models:/(?:" + "|".join(pattern_escape(n) for n in registered_names(config)) + r")(?:@[A-Za-z0-9_-]+|/[0-9]+)"
    return "(?:" + "|".join([*names, registry, folder_pattern(roots)]) + ")"


def set_item_pattern(config: RunConfig, roots: Iterable[str]) -> str:
    """A JSON-schema `pattern` for one `key=value` line of a trigger form's `set`: allowed keys only, safe model values."""
    roots = list(roots)
    plain = [pattern_escape(k) for k in config.orchestration.trigger_overrides if k not in MODEL_KEYS]
    models = [pattern_escape(k) for k in config.orchestration.trigger_overrides if k in MODEL_KEYS]
    forms = []
    if plain:
        forms.append(r"\s*(?:" + "|".join(plain) + r")\s*=[^\x00-\x1f]*")
    if models:
        forms.append(r"\s*(?:" + "|".join(models) + r")\s*=\s*" + model_value_pattern(config, roots) + r"\s*")
    forms.append(r"\s*")  # an empty line is ignored, as `set` has always done
    return "^(?:" + "|".join(forms) + ")$"


def check_trigger_overrides(config: RunConfig, overrides: Mapping[str, Any], roots: Iterable[str], *, origin: str = "the trigger") -> None:
    """Refuse any override `config` does not let a trigger make, naming the key and where a change belongs instead."""
    allowed = set(config.orchestration.trigger_overrides)
    refused = sorted(key for key in overrides if key not in allowed)
    if refused:
        trust = [key for key in refused if is_trust_key(key)]
        raise RlaifError(
            f"{origin} sets {refused}, which the config {config.name!r} does not let a trigger change"
            + (f" ({trust} decide trust: gates, stores, judges, code or files)" if trust else ""),
            "put the change in the operator's config file (or a new config under the project, $RLAIF_HOME or $RLAIF_CONFIG_DIRS), "
            "or, for a harmless key, add it to orchestration.trigger_overrides",
        )
    check_trigger_work(config, overrides, origin)
    value_pattern = re.compile(model_value_pattern(config, list(roots)))
    for key in MODEL_KEYS:
        if key in overrides and overrides[key] is not None and not value_pattern.fullmatch(str(overrides[key]).strip()):
            raise RlaifError(
                f"{origin} sets {key}={overrides[key]!r}, which is not a bundled model, a registered model of this project "
                f"({', '.join(registered_names(config))}) or a folder under the configured roots",
                "name one of those, or put a hub id or any other source in the config file",
            )


MINIBATCH_KEYS = ("train.batch_size", "train.mini_batch_size", "train.ppo_batch_size", "train.ppo_mini_batch_size")
"""The sizes whose ratio is a step's optimiser updates: a smaller minibatch is more work, which no TRIGGER_WORK_KEYS bound sees."""


def minibatches_per_step(config: RunConfig) -> dict[str, float]:
    """Minibatches a step's batch is split into: the shared sizes' (GRPO, RLOO) and PPO's own (its sizes, else the shared)."""
    t = config.train
    ppo_batch, ppo_mini = t.ppo_sizes()
    return {"train.batch_size/mini_batch_size": t.batch_size / t.mini_batch_size, "train.ppo_batch_size/ppo_mini_batch_size": ppo_batch / ppo_mini}


def check_trigger_work(config: RunConfig, overrides: Mapping[str, Any], origin: str = "the trigger") -> None:
    """Refuse overrides that ask for more than `orchestration.trigger_scale_limit` times the config's work, or for no bound."""
    asked = with_overrides(config, {key: overrides[key] for key in (*TRIGGER_WORK_KEYS, *MINIBATCH_KEYS) if key in overrides})
    limit = config.orchestration.trigger_scale_limit
    refused = []
    if any(key in overrides for key in MINIBATCH_KEYS):
        for (name, base), value in zip(minibatches_per_step(config).items(), minibatches_per_step(asked).values()):
            if value > limit * base:
                refused.append(f"{name}={value:g} minibatches a step (at most {limit * base:g}, {limit:g} times the config's {base:g})")
    for key in TRIGGER_WORK_KEYS:
        base = dotted_value(config, key)
        if base is None and key in TRIGGER_WORK_FALLBACKS:
            base = dotted_value(config, TRIGGER_WORK_FALLBACKS[key])
        if key not in overrides or base is None:  # the file sets no bound: a trigger's value is no more than it allows
            continue
        value = dotted_value(asked, key)
        cap = limit * max(len(base) if isinstance(base, list) else base, 1)
        if value is None or (len(value) if isinstance(value, list) else value) > cap:
            refused.append(f"{key}={value!r} (at most {f'{cap:g} values' if isinstance(base, list) else f'{cap:g}'}, {limit:g} times the config's {base!r})")
    if refused:
        raise RlaifError(
            f"{origin} asks for more work than the config {config.name!r} lets a trigger: {'; '.join(refused)}",
            "ask for less, or raise the value (or orchestration.trigger_scale_limit) in the operator's config file",
        )
