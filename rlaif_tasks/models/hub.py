"""One loader for every model spec: a bundled short name, a local folder, a Hugging Face hub id, or
a registered MLflow model (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, see registry_spec.py).

Local folders and hub ids take the same code path (transformers' Auto classes), so what the tests
prove on tiny local models holds for `meta-llama/Meta-Llama-3.1-8B` too. Hub failures (offline,
gated, missing) become `RlaifError`s that say what to do, because the raw transformers OSError
rarely does. The hub token is read by huggingface_hub from `HF_TOKEN`; it never passes through here.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from rlaif_tasks.errors import RlaifError, TransientError
from rlaif_tasks.models import registry_spec
from rlaif_tasks.models.base import LoadedModel, ModelKind
from rlaif_tasks.models.bundled import BUNDLED_MODELS, BundledModel

HF_KINDS: tuple[ModelKind, ...] = ("causal-lm", "seq2seq-lm", "sequence-classifier")
KINDS: tuple[str, ...] = ("auto", *HF_KINDS, "bilstm-classifier", "onnx-classifier", "sklearn-classifier")
DTYPES = ("float32", "bfloat16", "float16")

T = TypeVar("T")


@dataclass(frozen=True)
class SpecInfo:
    """What a spec refers to, worked out without loading weights or touching the network."""

    spec: str
    source: Literal["bundled", "local", "hub", "registry"]
    location: str
    """The bundled name, the absolute folder path, the hub id, or the cached folder of a registry version."""
    kind: ModelKind | None = None
    """Known for bundled names and local folders (from config.json); None for hub ids."""
    bundled: BundledModel | None = None


def _bundled_names() -> str:
    return ", ".join(BUNDLED_MODELS)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1


def _is_hub_id(spec: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if spec.count("/") != 1:
        return False
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def _unknown_spec(spec: str) -> RlaifError:
    close = difflib.get_close_matches(spec, list(BUNDLED_MODELS), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return RlaifError(
        f"model spec {spec!r} is not a bundled name, an existing folder or a hub id of the form owner/name.{hint}",
        f"use a bundled name ({_bundled_names()}), the path of a folder written by save_pretrained, "
        "a hub id with its owner, e.g. google/flan-t5-base or openai-community/gpt2 (not gpt2), "
        "or a registered model, e.g. models:/rlaif-demo-policy@champion",
    )


def kind_from_config(config: dict[str, Any]) -> ModelKind | None:
    """The model kind a checkpoint was saved as, from its config; None when the config does not say."""
    archs = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "sequence-classifier"
    if config.get("is_encoder_decoder"):
        return "seq2seq-lm"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    return None


def _check_folder(folder: Path, spec: str) -> dict[str, Any]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        if (folder / "adapter_config.json").is_file():
            fix = "this is a LoRA/PEFT adapter, not a full model: point at the merged model folder (train.merge_adapter: true writes one), or at the base model"
        elif any(folder.glob("*.gguf")):
            fix = "GGUF files are not loaded from arbitrary folders: convert with transformers (from_pretrained(folder, gguf_file=...) then save_pretrained) or use the bundled smollm2-135m-instruct"
        else:
            fix = "point at the folder that model.save_pretrained() and tokenizer.save_pretrained() wrote (it holds config.json and the weights)"
        raise RlaifError(f"model folder {folder} (from spec {spec!r}) has no config.json", fix)
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RlaifError(f"{config_file} is not valid JSON: {exc}", "re-save the model with save_pretrained, or restore config.json") from exc


def describe_spec(spec: str) -> SpecInfo:
    """Classify a spec (bundled / registry / local folder / hub id) or raise an RlaifError naming the fix.

    A hub id is never fetched here; a `models:/` spec is resolved in the registry and its version
    downloaded into the model cache on first use (registry_spec.local_folder).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise RlaifError(f"model spec {spec!r} is empty", f"set it to a bundled name ({_bundled_names()}), a folder or a hub id")
    if spec in BUNDLED_MODELS:
        bundled = BUNDLED_MODELS[spec]
        return SpecInfo(spec, "bundled", spec, bundled.kind, bundled)
    if registry_spec.is_registry_spec(spec):
        folder = registry_spec.local_folder(spec)
        return SpecInfo(spec, "registry", str(folder), kind_from_config(_check_folder(folder, spec)))
    path = Path(spec).expanduser()
    if path.is_dir():
        config = _check_folder(path, spec)
        return SpecInfo(spec, "local", str(path.resolve()), kind_from_config(config))
    if path.exists():
        raise RlaifError(
            f"model spec {spec!r} is a file, not a model folder",
            "point at the folder holding config.json and the weights, not at one file inside it",
        )
    if _looks_like_path(spec):
        raise RlaifError(f"model folder {path} does not exist", f"check the path, or use a bundled name ({_bundled_names()}) or a hub id")
    if _is_hub_id(spec):
        return SpecInfo(spec, "hub", spec)
    raise _unknown_spec(spec)


def _check_kind(requested: str, actual: ModelKind | None, spec: str) -> ModelKind:
    if requested not in KINDS:
        raise RlaifError(f"unknown model kind {requested!r}", f"use one of {', '.join(KINDS)}")
    if requested == "auto":
        if actual is None:
            raise RlaifError(
                f"cannot tell from the config of {spec!r} whether it is a causal LM, a seq2seq LM or a sequence classifier",
                f"pass the kind explicitly, one of {', '.join(HF_KINDS)}",
            )
        return actual
    if actual is not None and actual != requested:
        raise RlaifError(
            f"{spec!r} is a {actual} but a {requested} was asked for",
            _kind_fix(requested, actual),
        )
    return requested  # type: ignore[return-value]


def _kind_fix(requested: str, actual: str) -> str:
    if requested == "sequence-classifier":
        return "judges and rewards need a model trained for sequence classification (e.g. facebook/roberta-hate-speech-dynabench-r4-target); a language model's classification head would be random"
    if actual.endswith("classifier"):
        return "the policy must be a language model (causal or seq2seq), e.g. smollm2-135m-instruct or google/flan-t5-base; use classifiers as reward or judges"
    return f"load it with kind='{actual}' or 'auto'"


def validate_spec(spec: str, kind: str = "auto") -> SpecInfo:
    """`describe_spec` plus the kind check, wherever the kind is knowable without the network."""
    info = describe_spec(spec)
    if info.source != "hub":
        _check_kind(kind, info.kind, spec)
    elif kind not in KINDS:
        _check_kind(kind, None, spec)
    return info


def resolve_device(device: str = "auto") -> str:
    """`auto` -> cuda if available, else mps, else cpu; explicit devices are checked to exist."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise RlaifError(f"device {device!r} is not a torch device", "use auto, cpu, cuda, cuda:N or mps") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise RlaifError(f"device {device!r} was asked for but CUDA is not available here", "set device: auto (or cpu)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise RlaifError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)", "pick an index below the device count, or device: auto")
    if parsed.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RlaifError(f"device {device!r} was asked for but MPS is not available here", "set device: auto (or cpu)")
    return str(parsed)


def resolve_dtype(dtype: str | None, fallback: str, device: str) -> str:
    """An inference dtype setting: unset -> `fallback` (model.dtype); `auto` -> bfloat16 where its matmuls are fast
    (a CUDA device that supports it, or a CPU with bfloat16 instructions), else `fallback`; anything else as given."""
    if dtype is None:
        return fallback
    if dtype != "auto":
        return dtype
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else fallback
    return "bfloat16" if device == "cpu" and cpu_has_fast_bfloat16() else fallback


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (Linux's flags): Intel's AMX tiles or AVX512-BF16 (AMD Zen 4, Intel
    Cooper Lake on). bench_generation measured the policy's matmuls at 3.7x float32's rate on AMX cores and 2.7x on
    AVX512-BF16 (EPYC) cores; without either, bfloat16 is emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def torch_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise RlaifError(f"dtype {dtype!r} is not supported", f"use one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        chain.append(node)
        node = node.__cause__ or node.__context__
    return chain


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def hub_error(exc: BaseException, info: SpecInfo, revision: str | None) -> RlaifError | TransientError | None:
    """Translate a huggingface_hub / transformers failure into a fixable error, or None if unrelated.

    A network failure while online, or a 429/5xx, is a `TransientError` (Airflow retries it);
    a model missing from the cache while offline is a config problem (`RlaifError`).
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = info.location
    alternatives = f"point the spec at a local folder, or use a bundled name ({_bundled_names()})"
    if info.spec.count("/") == 1 and not info.spec.startswith("/"):
        alternatives += f"; no folder {Path(info.spec).resolve()} exists either"
    for err in _exception_chain(exc):
        if isinstance(err, GatedRepoError):
            return RlaifError(
                f"{repo} is a gated repository and the hub refused access",
                f"accept its licence on https://huggingface.co/{repo} and export HF_TOKEN=<a read token of that account>",
            )
        if isinstance(err, RevisionNotFoundError):
            return RlaifError(f"revision {revision!r} of {repo} does not exist", "set model.revision to an existing branch, tag or commit, or unset it")
        if isinstance(err, HfHubHTTPError) and _status_code(err) in (401, 403):
            return RlaifError(
                f"the hub refused {repo} (HTTP {_status_code(err)}): the token is missing, invalid or lacks access",
                "export HF_TOKEN=<a read token with access to the repo> (tokens are read from the environment only)",
            )
        if isinstance(err, RepositoryNotFoundError):
            return RlaifError(
                f"{repo} was not found on the hub (it does not exist, or it is private)",
                f"check the spelling; if it is private export HF_TOKEN=<a read token>; or {alternatives}",
            )
        if isinstance(err, HfHubHTTPError) and (_status_code(err) or 0) in _TRANSIENT_STATUS:
            return TransientError(f"the Hugging Face hub answered HTTP {_status_code(err)} for {repo}; retrying may succeed")
        if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)) or _is_network_error(err):
            network = [e for e in _exception_chain(exc) if isinstance(e, (ConnectionError, TimeoutError)) or _is_network_error(e)]
            if network and not _offline():
                return TransientError(f"the Hugging Face hub could not be reached for {repo} ({network[-1]}); retrying may succeed")
            return RlaifError(
                f"the Hugging Face hub cannot be reached (offline, HF_HUB_OFFLINE=1, or no network) and {repo} is not in the local HF cache",
                f"download it once where the hub is reachable (hf download {repo}) and copy the HF cache over, or {alternatives}; "
                "keep HF_HUB_OFFLINE=1 on offline machines so this fails fast",
            )
    return None


_TRANSIENT_STATUS = {429, 500, 502, 503, 504}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _is_network_error(err: BaseException) -> bool:
    """httpx's transport errors (huggingface_hub may vendor httpx under another module name)."""
    return any(cls.__name__ in ("NetworkError", "TimeoutException", "ConnectError") for cls in type(err).__mro__)


def _hf_call(fn: Callable[[], T], info: SpecInfo, revision: str | None, what: str) -> T:
    try:
        return fn()
    except (RlaifError, TransientError):
        raise
    except (OSError, ValueError, ConnectionError) as exc:
        translated = hub_error(exc, info, revision) if info.source == "hub" else None
        if translated is not None:
            raise translated from exc
        if isinstance(exc, ValueError) and "trust_remote_code" in str(exc):
            raise RlaifError(
                f"{info.spec!r} needs custom code from its repository to load its {what}",
                "set model.trust_remote_code: true only if you have read and trust that code",
            ) from exc
        raise RlaifError(
            f"could not load the {what} of {info.spec!r}: {exc}",
            "check that the folder or repo holds a complete transformers checkpoint (config, weights, tokenizer) "
            "that this transformers version supports",
        ) from exc


_AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "sequence-classifier": "AutoModelForSequenceClassification",
}


def _pad_tokenizer(tokenizer, kind: ModelKind | None, spec: str) -> None:
    """Batched rollouts need a pad token, and decoder-only models need it on the left."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RlaifError(
                f"the tokenizer of {spec!r} has neither a pad nor an end-of-sequence token, so batches cannot be padded",
                "add a pad token to the tokenizer (tokenizer.add_special_tokens({'pad_token': '<pad>'})) and re-save the model",
            )
        tokenizer.pad_token = tokenizer.eos_token
    if kind == "causal-lm":
        tokenizer.padding_side = "left"


def _prepare_tokenizer(tokenizer, model, kind: ModelKind, spec: str) -> None:
    _pad_tokenizer(tokenizer, kind, spec)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def load_hf(
    info: SpecInfo,
    kind: str = "auto",
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: Any = "float32",
    device: str = "cpu",
) -> LoadedModel:
    """Load a local folder or hub id with the transformers Auto class that fits its kind."""
    import transformers

    where = info.location
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = _hf_call(lambda: transformers.AutoConfig.from_pretrained(where, **common), info, revision, "config")
    resolved = _check_kind(kind, kind_from_config(config.to_dict()), info.spec)
    if resolved not in _AUTO_CLASSES:
        raise RlaifError(f"{info.spec!r} is a transformers checkpoint, not a {resolved}", f"load it with kind 'auto' or one of {', '.join(HF_KINDS)}")
    auto_class = getattr(transformers, _AUTO_CLASSES[resolved])
    device = resolve_device(device)
    extra = {} if device == "cpu" else {"device_map": device}
    model = _hf_call(
        lambda: auto_class.from_pretrained(where, config=config, dtype=torch_dtype(dtype), **common, **extra),
        info, revision, "weights",
    )
    model.eval()
    tokenizer = _hf_call(lambda: transformers.AutoTokenizer.from_pretrained(where, **common), info, revision, "tokenizer")
    _prepare_tokenizer(tokenizer, model, resolved, info.spec)
    return LoadedModel(spec=info.spec, kind=resolved, model=model, tokenizer=tokenizer, source=where)


def load_model(
    spec: str,
    kind: str = "auto",
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: Any = "float32",
    device: str = "cpu",
) -> LoadedModel:
    """Turn any model spec into a loaded model and tokenizer.

    `spec` is a bundled short name (see BUNDLED_MODELS), a folder written by save_pretrained, or a
    hub id such as `google/flan-t5-base`. `kind` is "auto" (read from the model's config) or the
    kind the caller needs, which is then enforced. Causal-LM tokenizers come back left-padded with a
    pad token set.
    """
    info = describe_spec(spec)
    if info.source == "bundled":
        return _load_bundled(info, kind, revision=revision, dtype=dtype, device=device)
    return load_hf(info, kind, revision=revision, trust_remote_code=trust_remote_code, dtype=dtype, device=device)


def model_kind(spec: str, *, revision: str | None = None, trust_remote_code: bool = False) -> ModelKind | None:
    """The kind of model a spec names, read from its config alone (no weights): a stage can refuse early."""
    return _kind_of(describe_spec(spec), revision, trust_remote_code)


def _kind_of(info: SpecInfo, revision: str | None, trust_remote_code: bool) -> ModelKind | None:
    import transformers

    if info.source == "bundled":
        assert info.bundled is not None
        return info.bundled.kind
    if info.kind is not None:
        return info.kind
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = _hf_call(lambda: transformers.AutoConfig.from_pretrained(info.location, **common), info, revision, "config")
    return kind_from_config(config.to_dict())


def load_tokenizer(spec: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer of any model spec, padded as `load_model` pads it, without reading the weights.

    Preparing prompts needs only the tokenizer; loading a policy for it would hold a worker's memory
    (or a GPU) for nothing.
    """
    import transformers

    info = describe_spec(spec)
    if info.source == "bundled":
        bundled = info.bundled
        assert bundled is not None
        if bundled.kind not in HF_KINDS:
            raise RlaifError(f"the bundled {bundled.kind} {spec!r} has no transformers tokenizer", _kind_fix("causal-lm", bundled.kind))
        if revision is not None:
            raise RlaifError(f"revision {revision!r} was given for the bundled model {spec!r}, which has no revisions", "unset model.revision (it applies to hub ids only)")
        tokenizer = importlib.import_module(bundled.loader).load_tokenizer()
        _pad_tokenizer(tokenizer, bundled.kind, spec)
        return tokenizer
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    kind = _kind_of(info, revision, trust_remote_code)  # the spec is resolved once (a models:/ spec asks the registry)
    tokenizer = _hf_call(lambda: transformers.AutoTokenizer.from_pretrained(info.location, **common), info, revision, "tokenizer")
    _pad_tokenizer(tokenizer, kind, spec)
    return tokenizer


def _load_bundled(info: SpecInfo, kind: str, *, revision: str | None, dtype: Any, device: str) -> LoadedModel:
    bundled = info.bundled
    assert bundled is not None
    _check_kind(kind, bundled.kind, info.spec)
    if revision is not None:
        raise RlaifError(f"revision {revision!r} was given for the bundled model {info.spec!r}, which has no revisions", "unset model.revision (it applies to hub ids only)")
    module = importlib.import_module(bundled.loader)
    if bundled.kind in HF_KINDS:
        return module.load(dtype=dtype, device=device)
    return module.load()
