"""`models:/NAME@ALIAS` and `models:/NAME/VERSION` as model specs, like a bundled name or a folder.

The alias is resolved to a version on every call (tonight's `champion` may not be last night's);
the version's artefacts are downloaded once into the model cache (`registry/NAME/vVERSION`) and laid
out as one save_pretrained folder (weights, config and tokenizer side by side), so every loader in
the project reads it like a local folder. The store is the one the process's run config names
(`stores.active_tracking_uri`: tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else the embedded one
under $RLAIF_HOME), with MLflow's own credentials.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from rlaif_tasks.atomic import atomic_dir
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models.cache import cache_lock, model_cache_dir
from rlaif_tasks.stores import active_tracking_uri

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow import MlflowClient

PREFIX = "models:/"
ARTIFACT_NAME = "policy"
"""The artefact a policy is logged under (register_policy); a seq2seq pyfunc keeps its folder there."""
_SPEC = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


def is_registry_spec(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version): exactly one of alias and version is set."""
    match = _SPEC.match(spec)
    if match is None:
        raise RlaifError(
            f"model spec {spec!r} is not a registry URI of the form models:/NAME@ALIAS or models:/NAME/VERSION",
            "write e.g. models:/rlaif-demo-policy@champion or models:/rlaif-demo-policy/3",
        )
    return match["name"], match["alias"], match["version"]


def resolve_version(spec: str) -> tuple[str, str]:
    """(name, version) that the spec names now, asked of the registry."""
    mv = resolve(spec)
    return mv.name, str(mv.version)


def resolve(spec: str) -> "ModelVersion":
    """The model version the spec names now (its alias resolved), asked of the registry."""
    from mlflow.exceptions import MlflowException

    from mlflow import MlflowClient

    name, alias, version = parse(spec)
    uri = active_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RlaifError(
                f"{spec} does not exist in the model registry at {uri}: {exc.message}",
                "check the name and alias/version (`rlaif registry show NAME`), or set MLFLOW_TRACKING_URI to the store that holds it",
            ) from exc
        raise  # transient (connection, 5xx): let the caller's retry policy handle it
    return mv


def local_folder(spec: str) -> Path:
    """The save_pretrained folder of the version the spec names, downloaded on first use."""
    name, version = resolve_version(spec)
    folder = model_cache_dir("registry") / name / f"v{version}"
    if (folder / "config.json").is_file():
        return folder
    with cache_lock(folder):
        if not (folder / "config.json").is_file():
            _download(name, version, folder)
    return folder


def _download(name: str, version: str, folder: Path) -> None:
    """Fetch the registered version into `folder` as one save_pretrained folder, whatever flavour it was logged with."""
    from mlflow import MlflowClient

    uri = active_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="rlaif-registry-") as tmp:
        checkpoint = download_policy(MlflowClient(tracking_uri=uri, registry_uri=uri), name, version, tmp)
        with atomic_dir(folder) as out:
            shutil.copytree(checkpoint, out, dirs_exist_ok=True)


def _merged_adapter(root: Path) -> Path:
    """Load the version as MLflow does (its base, then the adapter) and save the merged model beside it."""
    import mlflow

    components = mlflow.transformers.load_model(str(root), return_type="components")
    folder = root / "merged"
    components["model"].merge_and_unload().save_pretrained(folder)
    components["tokenizer"].save_pretrained(folder)
    return folder


def model_uri(name: str, alias_or_version: str | int) -> str:
    """`models:/name@alias` for an alias, `models:/name/3` for a version number."""
    ref = str(alias_or_version)
    return f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"


ADAPTER_FOLDER = "adapter"
"""Beside a run's `train/final`: a LoRA policy's adapter alone, for `tracking.registered_weights: adapter`."""
PEFT_FOLDER = "peft"
"""Where MLflow's transformers flavour keeps a PEFT adapter (a version registered with tracking.registered_weights: adapter)."""


def download_version(client: "MlflowClient", name: str, version: str | int, dst: str | Path) -> Path:
    """The registered version's files as MLflow stores them, under `dst`."""
    import mlflow

    uri = model_uri(name, version)
    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(dst), tracking_uri=client._tracking_client.tracking_uri, registry_uri=client._registry_uri))


def download_policy(client: "MlflowClient", name: str, version: str | int, dst: str | Path) -> Path:
    """Download a registered version under `dst`; returns its save_pretrained folder (config, weights, tokenizer).

    Whatever the flavour: a seq2seq policy (pyfunc) keeps that folder as its artifact `policy`; a
    causal one (transformers flavour) splits it into model/ and components/tokenizer/, which are
    put back together here; an adapter version is merged into its base here; a reward model is
    registered as the plain folder itself.
    """
    return policy_folder(download_version(client, name, version, dst), model_uri(name, version))


def policy_folder(root: Path, uri: str) -> Path:
    """A downloaded version (`download_version`) as one save_pretrained folder, whatever its flavour (see download_policy)."""
    if (root / PEFT_FOLDER).is_dir():
        return _merged_adapter(root)
    if (root / "config.json").is_file():
        return root
    pyfunc_folder = root / "artifacts" / ARTIFACT_NAME
    if (pyfunc_folder / "config.json").is_file():
        return pyfunc_folder
    folder = root / "model"
    if not (folder / "config.json").is_file():
        raise RlaifError(
            f"{uri} holds no transformers checkpoint (no model/config.json or artifacts/{ARTIFACT_NAME}/config.json)",
            "register policies with `register_policy` (the nightly register stage)",
        )
    tokenizer = root / "components" / "tokenizer"
    if tokenizer.is_dir():
        for file in tokenizer.iterdir():
            file.replace(folder / file.name)
    return folder
