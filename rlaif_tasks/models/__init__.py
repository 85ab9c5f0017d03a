"""The model zoo: every model the project uses, from one spec string.

    load_model("smollm2-135m-instruct")                      # bundled, offline
    load_model("runs/demo/policy")                            # a folder written by save_pretrained
    load_model("facebook/roberta-hate-speech-dynabench-r4-target", kind="sequence-classifier")
    load_tokenizer("smollm2-135m-instruct")                   # the tokenizer alone, no weights read

Heavy libraries (torch, transformers) are imported only when a model is loaded.
"""

from rlaif_tasks.models.base import LoadedModel, ModelKind
from rlaif_tasks.models.bundled import BUNDLED_MODELS, BundledModel
from rlaif_tasks.models.cache import cache_root, model_cache_dir
from rlaif_tasks.models.hub import (
    HF_KINDS,
    KINDS,
    SpecInfo,
    describe_spec,
    kind_from_config,
    load_model,
    load_tokenizer,
    model_kind,
    resolve_device,
    resolve_dtype,
    validate_spec,
)

__all__ = [
    "BUNDLED_MODELS",
    "HF_KINDS",
    "KINDS",
    "BundledModel",
    "LoadedModel",
    "ModelKind",
    "SpecInfo",
    "cache_root",
    "describe_spec",
    "kind_from_config",
    "load_model",
    "load_tokenizer",
    "model_kind",
    "model_cache_dir",
    "resolve_device",
    "resolve_dtype",
    "validate_spec",
]
