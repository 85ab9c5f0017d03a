"""The model registry: trained policies as MLflow models (transformers flavour, or pyfunc for seq2seq), promoted by alias.

Aliases of a registered model (`tracking.registered_model`, default `rlaif-<name>-policy`):

    challenger    the newest registered version, waiting for the gate
    champion      the version in use: load it with models:/<name>@champion
    previous      the champion it replaced: what `rollback` restores
    rolled_back   the last champion a rollback demoted

Each version also carries a `rlaif.status` tag (challenger, awaiting_sign_off, champion, previous,
rejected, rolled_back) and `rlaif.replaced_version`, the champion it replaced, so repeated rollbacks walk
back through the promotion history.

The registry has no transactions, so every move is written in an order a retry can finish: a
promotion first records on the new version what it replaces, then moves `champion` (the commit
point), then `previous` and the status tags. Promotions and rollbacks of one model are serialised
by a lease tag on the registered model (`lease.promotion_lock`), and `promote` can be a compare-and-set
on the champion a gate decision was made against.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rlaif_tasks import tracking
from rlaif_tasks.config import RunConfig
from rlaif_tasks.errors import RlaifError, mlflow_not_found
from rlaif_tasks.faults import fault_point
from rlaif_tasks.lease import promotion_lock
from rlaif_tasks.models import load_model
from rlaif_tasks.models.registry_spec import (
    ADAPTER_FOLDER,
    ARTIFACT_NAME,
    PEFT_FOLDER,
    download_policy,  # noqa: F401  (the gate reads versions as registry.download_policy)
    download_version,
    model_uri,
    policy_folder,
)
from rlaif_tasks.tags import TAG_DAG_RUN_ID, TAG_GATE, TAG_PREFIX, TAG_PROMOTED_AT, TAG_REJECTED_REASON, TAG_REPLACED, TAG_ROLLED_BACK_AT, TAG_STATUS, TAG_WEIGHTS

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS, ROLLED_BACK = "champion", "challenger", "previous", "rolled_back"
AWAITING_SIGN_OFF = "awaiting_sign_off"
"""A version status: it passed the gate and waits for a person (gate.approval: required)."""
ANY = object()
"""`promote(expected_champion=ANY)`: promote whatever the champion is now (the CLI's explicit move)."""


class ChampionMoved(Exception):
    """The champion is no longer the version a decision was made against: decide again."""

    def __init__(self, name: str, expected: str | None, actual: str | None):
        self.expected, self.actual = expected, actual
        super().__init__(f"{name}: the champion is version {actual or 'none'}, not {expected or 'none'} as the decision assumed")
_RUNTIME_PACKAGES = ("transformers", "torch", "accelerate", "tokenizers", "safetensors")


def pip_requirements() -> list[str]:
    """Pinned from this environment: MLflow's defaults for the flavour would ask for torchvision, which the policy never uses."""
    reqs = []
    for package in _RUNTIME_PACKAGES:
        try:
            reqs.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return reqs


def _client(client: "MlflowClient | None", config: RunConfig | None) -> "MlflowClient":
    return client if client is not None else tracking.connect(config)


def _require_model(client: "MlflowClient", name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if not mlflow_not_found(exc):
            raise
        raise RlaifError(
            f"no registered model {name!r} at {client._registry_uri}",
            "check the name (`rlaif registry show NAME`) and the tracking URI (tracking.tracking_uri or $MLFLOW_TRACKING_URI)",
        ) from None


def _version(client: "MlflowClient", name: str, version: str | int) -> "ModelVersion":
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not mlflow_not_found(exc):
            raise
        raise RlaifError(f"model {name!r} has no version {version}", f"list its versions with `rlaif registry show {name}`") from None


def _exists(client: "MlflowClient", name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
        return True
    except MlflowException as exc:
        if mlflow_not_found(exc):
            return False
        raise


def get_alias(client: "MlflowClient", name: str, alias: str) -> "ModelVersion | None":
    """The version holding `alias`, or None when the model or the alias does not exist.

    Any other failure (connection, 5xx after MLflow's own retries) propagates: reading a blip as
    "no champion" would let the gate compare with the base policy and promote over the real one.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if mlflow_not_found(exc):
            return None
        raise


def versions_of_run(client: "MlflowClient", name: str, run_id: str) -> list["ModelVersion"]:
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted(found, key=lambda mv: int(mv.version))


def inference_defaults(config: RunConfig) -> dict:
    """What a served policy generates with unless the request's params say otherwise: the run's sampling."""
    g = config.generation
    return {"max_new_tokens": g.max_new_tokens, "do_sample": g.do_sample, "temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p}


def _log_policy(
    client: "MlflowClient", run_id: str, model_dir: Path, dtype: str = "float32", defaults: dict | None = None, *, adapter_of: str | None = None,
) -> str:
    """Log the policy folder as a model of the run; returns the logged model id.

    A causal LM is logged with the transformers flavour (a text-generation pipeline), a seq2seq LM
    as a pyfunc model (models/seq2seq_pyfunc.py: transformers 5 has no text2text pipeline); both
    answer a list of prompts with their continuations. A model this run logged before (a retry
    that failed before registering) is reused. `defaults` become the served model's inference
    config and its signature's params, so `mlflow models serve` answers with the run's response
    length and a caller can override any of them per request.

    With `adapter_of` (the base policy's spec), `model_dir` is a LoRA adapter: MLflow stores it and a
    reference to the base, a local folder (`base_model_path`) or a hub id, not the base's weights.
    """
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import infer_signature

    import mlflow

    run = client.get_run(run_id)
    logged = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{ARTIFACT_NAME}'"
    )
    ready = [m for m in logged if str(m.status) == str(LoggedModelStatus.READY)]
    if ready:
        return ready[0].model_id
    loaded = _with_adapter(adapter_of, model_dir, dtype) if adapter_of else load_model(str(model_dir), kind="auto", dtype=dtype, device="cpu")
    if loaded.kind not in ("causal-lm", "seq2seq-lm"):
        raise RlaifError(f"{model_dir} holds a {loaded.kind}; the registry stores language-model policies (causal or seq2seq)", "register the policy that training wrote (train/final)")
    for unfinished in logged:  # an attempt killed mid-upload: its files may be partial, so it is never registered
        if str(unfinished.status) != str(LoggedModelStatus.FAILED):
            log.warning("logged model %s of run %s was never finalised (%s); marking it FAILED and logging afresh", unfinished.model_id, run_id, unfinished.status)
            mlflow.finalize_logged_model(unfinished.model_id, LoggedModelStatus.FAILED)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(TAG_PREFIX)}
    # created here, in the run's experiment: left to itself MLflow files it under the active (default) experiment
    model = mlflow.initialize_logged_model(name=ARTIFACT_NAME, source_run_id=run_id, tags=tags, experiment_id=run.info.experiment_id)
    defaults = dict(defaults or {})
    common = {
        "name": ARTIFACT_NAME, "run_id": run_id, "model_id": model.model_id, "pip_requirements": pip_requirements(),
        "signature": infer_signature(["a prompt"], ["its continuation"], params=defaults or None),
    }
    if loaded.kind == "seq2seq-lm":
        _log_seq2seq(loaded, defaults, common)
    else:
        import transformers

        pipeline = transformers.pipeline("text-generation", model=loaded.model, tokenizer=loaded.tokenizer)
        base = {"base_model_path": loaded.source} if adapter_of and Path(loaded.source).is_dir() else {}
        # return_full_text: answer with the continuation, as the evaluation scores it. The flavour warns that a local
        # folder has no hub model card or licence: our card is the version's description, so those two lines go.
        with _quiet("mlflow.transformers"), _quiet("transformers.pipelines.base"):
            mlflow.transformers.log_model(pipeline, model_config={**defaults, "return_full_text": False}, **common, **base)
    if str(client.get_logged_model(model.model_id).status) != str(LoggedModelStatus.READY):
        mlflow.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id


def _with_adapter(base_spec: str, adapter_dir: Path, dtype: str):
    """The base policy with the trained LoRA adapter on top (peft's layers, not merged), as MLflow stores it."""
    from peft import PeftModel

    base = load_model(base_spec, kind="causal-lm", dtype=dtype, device="cpu")
    base.model = PeftModel.from_pretrained(base.model, str(adapter_dir))
    return base


@contextlib.contextmanager
def _quiet(logger: str):
    """A library logger at ERROR for the block: for warnings we expect and cannot act on."""
    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def _log_seq2seq(loaded, defaults: dict, common: dict) -> None:
    """Log a seq2seq policy as the pyfunc model of models/seq2seq_pyfunc.py, from code, with its folder in the run's dtype.

    `Model.log` rather than `mlflow.pyfunc.log_model`, which takes no run id: the run is not active
    here, and the model must be an output of that run, as the transformers flavour's is.
    """
    import importlib.util
    import tempfile

    from mlflow.models import Model

    import mlflow

    code = importlib.util.find_spec("rlaif_tasks.models.seq2seq_pyfunc").origin  # not imported: it would set MLflow's model-from-code global here
    with tempfile.TemporaryDirectory(prefix="rlaif-seq2seq-") as tmp:
        folder = Path(tmp) / ARTIFACT_NAME
        loaded.model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        Model.log(artifact_path=None, flavor=mlflow.pyfunc, python_model=code, artifacts={ARTIFACT_NAME: str(folder)}, model_config=defaults, **common)


def register_policy(
    config: RunConfig, run_id: str, model_dir: str | Path, *, client: "MlflowClient | None" = None, tags: dict[str, str] | None = None
) -> dict:
    """Log `model_dir` into the MLflow run and register it as a new version with alias `challenger`.

    Idempotent per MLflow run: when the run already registered a version, that version is returned.
    """
    client = _client(client, config)
    name = tracking.registered_model_name(config)
    model_dir = Path(model_dir)
    existing = versions_of_run(client, name, run_id)
    if existing:
        mv = existing[0]
        if TAG_STATUS not in mv.tags:  # a retry after registering, before the alias was set
            _set_challenger(client, name, mv.version)
        log.info("MLflow run %s already registered %s version %s", run_id, name, mv.version)
        return _summary(name, mv, reused=True)
    if not (model_dir / "config.json").is_file():
        raise RlaifError(f"{model_dir} is not a trained model folder (no config.json)", "run the train stage of this run first")
    if config.tracking.registered_weights == "adapter":
        adapter = model_dir.parent / ADAPTER_FOLDER
        if not (adapter / "adapter_config.json").is_file():
            raise RlaifError(f"tracking.registered_weights is 'adapter', but {adapter} holds no LoRA adapter", "train with train.use_lora: true (run the train stage again)")
        model_id = _log_policy(client, run_id, adapter, config.model.dtype, inference_defaults(config), adapter_of=config.model.policy)
    else:
        model_id = _log_policy(client, run_id, model_dir, config.model.dtype, inference_defaults(config))
    fault_point("register.logged")
    mv = create_version(
        client, name, run_id, f"models:/{model_id}", model_id=model_id, tags=tags,
        about=f"Policies aligned by the rlaif run config {config.name!r}.",
    )
    _set_challenger(client, name, mv.version)
    log.info("registered %s version %s from MLflow run %s (alias %s)", name, mv.version, run_id, CHALLENGER)
    return _summary(name, client.get_model_version(name, mv.version), reused=False)


def create_version(
    client: "MlflowClient", name: str, run_id: str, source: str, *, about: str, tags: dict[str, str] | None = None,
    model_id: str | None = None, description: str | None = None,
) -> "ModelVersion":
    """A new version of `name` (the registered model made with description `about` if it is new) from `source`.

    The version carries the run's `rlaif.*` tags (dataset, config hash, DAG run...) and `tags`, so a
    version can be traced to what made it without opening the run.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=about)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run_tags = client.get_run(run_id).data.tags
    version_tags = {k: v for k, v in run_tags.items() if k.startswith(TAG_PREFIX)} | dict(tags or {})
    extra = {"model_id": model_id} if model_id else {}  # MLflow refuses model_id=None
    return client.create_model_version(name, source=source, run_id=run_id, tags=version_tags, description=description, **extra)


def _set_challenger(client: "MlflowClient", name: str, version: str) -> None:
    client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_model_version_tag(name, version, TAG_STATUS, CHALLENGER)


def _summary(name: str, mv: "ModelVersion", **extra) -> dict:
    return {"name": name, "version": str(mv.version), "run_id": mv.run_id, "model_uri": model_uri(name, mv.version), **extra}


def promote(
    name: str, version: str | int, *, expected_champion: "str | None | object" = ANY,
    client: "MlflowClient | None" = None, config: RunConfig | None = None,
) -> dict:
    """Make `version` the champion; the champion it replaces becomes `previous`. Promoting the champion again changes nothing.

    With `expected_champion` (a version, or None for "no champion") this is a compare-and-set: when
    the champion is another version by now, `ChampionMoved` is raised and nothing moves.
    """
    client = _client(client, config)
    _require_model(client, name)
    target = _version(client, name, version)
    version = str(target.version)
    with promotion_lock(client, name) as client:
        current = _alias_version(client, name, CHAMPION)
        if current == version:  # done before, perhaps by an attempt killed before the tags: finish it
            replaced = client.get_model_version(name, version).tags.get(TAG_REPLACED) or None
            _finish_promotion(client, name, version, replaced)
            return {"name": name, "champion": version, "previous": _alias_version(client, name, PREVIOUS), "changed": False}
        if expected_champion is not ANY and current != (None if expected_champion is None else str(expected_champion)):
            raise ChampionMoved(name, None if expected_champion is None else str(expected_champion), current)
        fault_point("promote.locked")
        client.set_model_version_tag(name, version, TAG_REPLACED, current or "")
        client.set_model_version_tag(name, version, TAG_PROMOTED_AT, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        client.set_registered_model_alias(name, CHAMPION, version)
        _finish_promotion(client, name, version, current)
    log.info("%s: version %s is the champion (previous: %s)", name, version, current or "none")
    return {"name": name, "champion": version, "previous": current, "changed": True}


def _finish_promotion(client: "MlflowClient", name: str, version: str, replaced: str | None) -> None:
    """Everything a promotion sets after the champion alias; repeating it changes nothing."""
    if replaced and replaced != version and _exists(client, name, replaced):
        client.set_registered_model_alias(name, PREVIOUS, replaced)
        client.set_model_version_tag(name, replaced, TAG_STATUS, PREVIOUS)
    client.set_model_version_tag(name, version, TAG_STATUS, CHAMPION)
    if _alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)


def rollback(name: str, *, client: "MlflowClient | None" = None, config: RunConfig | None = None) -> dict:
    """Make `previous` the champion again; the demoted champion gets alias `rolled_back`.

    `previous` then moves one step further back (to the version the restored one had replaced),
    so rolling back twice restores the champion before that.
    """
    client = _client(client, config)
    _require_model(client, name)
    with promotion_lock(client, name) as client:
        champion = get_alias(client, name, CHAMPION)
        if champion is None:
            raise RlaifError(f"model {name!r} has no champion, so there is nothing to roll back", f"promote a version first: `rlaif registry promote {name} VERSION`")
        previous = get_alias(client, name, PREVIOUS)
        if previous is None:
            raise RlaifError(
                f"model {name!r} has no previous champion to roll back to (champion: version {champion.version})",
                f"promote another version explicitly: `rlaif registry promote {name} VERSION` (see `rlaif registry show {name}`)",
            )
        demoted, restored = str(champion.version), str(previous.version)
        client.set_registered_model_alias(name, ROLLED_BACK, demoted)
        client.set_model_version_tag(name, demoted, TAG_ROLLED_BACK_AT, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        client.set_registered_model_alias(name, CHAMPION, restored)
        client.set_model_version_tag(name, restored, TAG_STATUS, CHAMPION)
        client.set_model_version_tag(name, demoted, TAG_STATUS, ROLLED_BACK)
        older = previous.tags.get(TAG_REPLACED, "")
        if older and older not in (demoted, restored) and _exists(client, name, older):
            client.set_registered_model_alias(name, PREVIOUS, older)
            client.set_model_version_tag(name, older, TAG_STATUS, PREVIOUS)
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
            older = ""
    log.info("%s: rolled back from version %s to %s", name, demoted, restored)
    return {"name": name, "champion": restored, "rolled_back": demoted, "previous": older or None}


# -- weights: the registered artefact is the trained folder ---------------------------------------


def weights_sha256(folder: str | Path, dtype: "str | None" = None) -> str:
    """A hash of every tensor in the folder's safetensors files (names, shapes, values), recursively.

    With `dtype` (e.g. "bfloat16") floating tensors are cast first, so a float32 training folder
    can be compared with the copy the registry stored in the run's dtype.
    """
    import torch
    from safetensors.torch import load_file

    files = sorted(Path(folder).rglob("*.safetensors"))
    if not files:
        raise RlaifError(f"{folder} holds no safetensors weights", "save the model with save_pretrained (safetensors is its default)")
    tensors = {}
    for file in files:
        tensors.update(load_file(str(file)))
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key]
        if dtype and tensor.is_floating_point():
            tensor = tensor.to(getattr(torch, dtype))
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _float_dtype(folder: Path) -> str | None:
    from safetensors import safe_open

    for file in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_slice(key)
                dtype = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(tensor.get_dtype())
                if dtype:
                    return dtype
    return None


def verify_registered_weights(client: "MlflowClient", name: str, version: str | int, model_dir: str | Path) -> str:
    """Download the registered version and check that its weights are the trained folder's; returns their hash.

    Catches an upload that was cut short or a version pointing at the wrong model before it is
    promoted; the hash is also tagged on the version (`rlaif.weights_sha256`).
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rlaif-verify-") as tmp:
        root = download_version(client, name, version, tmp)
        if (root / PEFT_FOLDER).is_dir():  # an adapter version: its adapter is the trained one
            local, model_dir = root / PEFT_FOLDER, Path(model_dir).parent / ADAPTER_FOLDER
        else:
            local = policy_folder(root, model_uri(name, version))
        registered = weights_sha256(local)
        dtype = _float_dtype(local)
    trained = weights_sha256(model_dir, dtype)
    if registered != trained:
        raise RlaifError(
            f"{name} version {version} does not hold the weights trained in {model_dir} (hash {registered[:12]} vs {trained[:12]})",
            f"delete version {version} (`mlflow` UI or client) and clear this DAG run's register task to register it again",
        )
    client.set_model_version_tag(name, str(version), TAG_WEIGHTS, registered)
    return registered


def mark_rejected(client: "MlflowClient", name: str, version: str | int, reason: str) -> None:
    """Tag a version the gate refused; it keeps alias `challenger` until a newer one is registered."""
    client.set_model_version_tag(name, str(version), TAG_STATUS, "rejected")
    client.set_model_version_tag(name, str(version), TAG_REJECTED_REASON, reason[:5000])


def _alias_version(client: "MlflowClient", name: str, alias: str) -> str | None:
    mv = get_alias(client, name, alias)
    return str(mv.version) if mv is not None else None


def describe(name: str, *, client: "MlflowClient | None" = None, config: RunConfig | None = None) -> dict:
    """Aliases and every version (status, run, gate outcome) of a registered model."""
    client = _client(client, config)
    model = _require_model(client, name)
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda mv: int(mv.version))
    # search_model_versions leaves `aliases` empty; the registered model holds the alias map.
    aliases_of: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        aliases_of.setdefault(str(version), []).append(alias)
    return {
        "name": name,
        "aliases": {alias: str(v) for alias, v in sorted(model.aliases.items())},
        "versions": [
            {
                "version": str(mv.version),
                "aliases": aliases_of.get(str(mv.version), []),
                "status": mv.tags.get(TAG_STATUS, ""),
                "gate": mv.tags.get(TAG_GATE, ""),
                "run_id": mv.run_id,
                "dag_run_id": mv.tags.get(TAG_DAG_RUN_ID, ""),
                "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(mv.creation_timestamp / 1000)),
            }
            for mv in versions
        ],
    }


def format_description(info: dict) -> str:
    lines = [f"{info['name']}  " + "  ".join(f"{a}={v}" for a, v in info["aliases"].items())]
    lines.append(f"{'version':>8}  {'aliases':<28}{'status':<13}{'gate':<9}{'created':<18}{'dag run':<36} run")
    for v in info["versions"]:
        lines.append(
            f"{v['version']:>8}  {','.join(v['aliases']) or '-':<28}{v['status'] or '-':<13}{v['gate'] or '-':<9}"
            f"{v['created']:<18}{v['dag_run_id'] or '-':<36} {v['run_id']}"
        )
    return "\n".join(lines)
