"""Bounded disk for a year of nights: which registered versions, run folders and cached models to keep.

Every night adds a run folder (prompts, samples, checkpoints, the trained policy), a registered
version with its MLflow artefacts (the full policy) and, when a gate re-evaluates a champion, a
downloaded copy in the model cache. `collect_garbage` keeps, per registered model of the config
(the policy and its `-reward` model):

- the versions behind the aliases `champion`, `previous` and `challenger`, and the newest
  `retention.keep_challengers` others; older versions are deleted from the registry with their
  artefacts (the logged model's folder, or the run artefacts a reward model was registered from);
- run folders untouched for `retention.run_folder_days`, except those of the kept versions, and cached
  base-policy evaluations (evaluation/cache.py) unused for as long; the MLflow artefacts (samples,
  plots, reports) of the finished runs whose folders these were go too, while their metrics, params
  and tags stay as the experiment's history;
- in the model cache, the kept aliases' downloads and the newest `registry_cache_versions` others.

`rlaif gc` and the rlaif_maintenance DAG call it; `dry_run` only says what would go. The register
stage deletes a run's checkpoints once its policy is registered (`drop_checkpoints`), and the first
stage refuses to start on a nearly full disk (`check_free_space`).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rlaif_tasks import tracking
from rlaif_tasks.config import REWARD_MODEL_SUFFIX, RunConfig, runs_root
from rlaif_tasks.errors import RlaifError, mlflow_not_found
from rlaif_tasks.evaluation.cache import CACHE_FOLDER
from rlaif_tasks.models.cache import model_cache_dir
from rlaif_tasks.registry import CHALLENGER, CHAMPION, PREVIOUS
from rlaif_tasks.tags import TAG_ARTIFACTS_DELETED, TAG_RUN_DIR

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

KEPT_ALIASES = (CHAMPION, PREVIOUS, CHALLENGER)


def registered_models(config: RunConfig) -> list[str]:
    name = tracking.registered_model_name(config)
    return [name, f"{name}{REWARD_MODEL_SUFFIX}"]


def _versions(client: "MlflowClient", name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version), reverse=True)
    except MlflowException as exc:
        if mlflow_not_found(exc):
            return []
        raise


def plan(config: RunConfig, client: "MlflowClient") -> dict:
    """What `collect_garbage` would keep and delete, without touching anything."""
    r = config.retention
    keep_versions, expire_versions, aliased_versions, kept_run_dirs = {}, {}, {}, set()
    for name in registered_models(config):
        versions = _versions(client, name)
        if not versions:
            continue
        aliases = client.get_registered_model(name).aliases or {}  # search results carry no aliases
        aliased = {str(version) for alias, version in aliases.items() if alias in KEPT_ALIASES}
        others = [str(v.version) for v in versions if str(v.version) not in aliased][: r.keep_challengers]
        keep = aliased | set(others)
        aliased_versions[name] = aliased
        keep_versions[name] = sorted(keep, key=int)
        expire_versions[name] = sorted((str(v.version) for v in versions if str(v.version) not in keep), key=int)
        for v in versions:
            if str(v.version) in keep and v.tags.get(TAG_RUN_DIR):
                kept_run_dirs.add(str(Path(v.tags[TAG_RUN_DIR]).resolve()))
    cutoff = time.time() - r.run_folder_days * 86400
    root = runs_root(config)
    expired_folders = [str(f) for f in _run_folders(root) if str(f.resolve()) not in kept_run_dirs and _last_touched(f) < cutoff]
    caches = [root / CACHE_FOLDER, *(child / CACHE_FOLDER for child in (root.iterdir() if root.is_dir() else []) if child.is_dir())]
    expired_folders += [str(entry) for cache in caches if cache.is_dir() for entry in cache.iterdir() if entry.stat().st_mtime < cutoff]
    cache = []
    for name in registered_models(config):
        cached = sorted((p for p in (model_cache_dir("registry") / name).glob("v*") if p.name[1:].isdigit()), key=lambda p: int(p.name[1:]), reverse=True)
        others = [p for p in cached if p.name[1:] not in aliased_versions.get(name, set())]
        cache += [str(p) for p in others[r.registry_cache_versions:]]
    run_artifacts = _runs_past_their_folder(client, config, kept_run_dirs, cutoff)
    return {"keep_versions": keep_versions, "expire_versions": expire_versions, "run_folders": sorted(expired_folders), "cache": cache,
            "run_artifacts": run_artifacts}


def _runs_past_their_folder(client: "MlflowClient", config: RunConfig, kept_run_dirs: set[str], cutoff: float) -> list[str]:
    """Finished runs of the config's experiment, ended before `cutoff`, whose run folder is not a kept version's."""
    experiment = client.get_experiment_by_name(tracking.experiment_name(config))
    if experiment is None:
        return []
    expired = []
    for run in client.search_runs([experiment.experiment_id], max_results=50000):
        run_dir, ended = run.data.tags.get(TAG_RUN_DIR), run.info.end_time
        if run_dir and ended and ended / 1000 < cutoff and TAG_ARTIFACTS_DELETED not in run.data.tags and str(Path(run_dir).resolve()) not in kept_run_dirs:
            expired.append(run.info.run_id)
    return sorted(expired)


def _run_folders(root: Path) -> list[Path]:
    """The DAG-run folders under a config's run root: those holding config.yaml, one level (nightly) or two (per DAG)."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if (child / "config.yaml").is_file():
            found.append(child)
        elif child.is_dir():
            found += [grand for grand in child.iterdir() if (grand / "config.yaml").is_file()]
    return found


def _last_touched(folder: Path) -> float:
    """The newest mtime of the folder's top-level entries (a night writes its outputs there)."""
    return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])


def collect_garbage(config: RunConfig, client: "MlflowClient | None" = None, *, dry_run: bool = False) -> dict:
    """Apply `plan`: delete expired versions (registry entry and artefacts), run folders and cached downloads."""
    client = client or tracking.connect(config)
    todo = plan(config, client)
    freed = 0
    if not dry_run:
        for name, versions in todo["expire_versions"].items():
            for version in versions:
                freed += _delete_version(client, name, version)
        for run_id in todo["run_artifacts"]:
            freed += _delete_run_artifacts(client, run_id)
        for folder in todo["run_folders"] + todo["cache"]:
            freed += _size(Path(folder))
            shutil.rmtree(folder, ignore_errors=True)
    log.info("gc %s: %s", "would delete" if dry_run else "deleted", {k: v for k, v in todo.items() if k != "keep_versions"})
    return {**todo, "dry_run": dry_run, "freed_bytes": freed}


def _delete_version(client: "MlflowClient", name: str, version: str) -> int:
    """Delete a version's artefacts, then the version; returns the bytes its local artefacts held (0 when remote)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    mv = client.get_model_version(name, version)
    location = _artifact_location(client, mv)
    size = _size(_local_path(location)) if location else 0
    if location:
        try:
            get_artifact_repository(location).delete_artifacts()
        except Exception as exc:  # a store that cannot delete (read-only S3 policy): the registry entry still goes
            log.warning("could not delete the artefacts of %s version %s at %s: %s", name, version, location, exc)
    client.delete_model_version(name, version)
    if _logged_model_id(mv):
        client.delete_logged_model(_logged_model_id(mv))
    log.info("deleted %s version %s (%s)", name, version, location)
    return size


def _delete_run_artifacts(client: "MlflowClient", run_id: str) -> int:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    location = client.get_run(run_id).info.artifact_uri
    size = _size(_local_path(location))
    try:
        get_artifact_repository(location).delete_artifacts()
    except Exception as exc:  # as for versions: a store that cannot delete keeps the files, the run is still marked
        log.warning("could not delete the artefacts of MLflow run %s at %s: %s", run_id, location, exc)
    client.set_tag(run_id, TAG_ARTIFACTS_DELETED, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return size


def _logged_model_id(mv) -> str | None:
    """The logged model a version was made from (register_policy's source is `models:/<model id>`)."""
    source = mv.source or ""
    return getattr(mv, "model_id", None) or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)


def _artifact_location(client: "MlflowClient", mv) -> str | None:
    """Where a version's files are: its logged model's folder, or the artefact URI it was registered from."""
    if _logged_model_id(mv):
        return client.get_logged_model(_logged_model_id(mv)).artifact_location
    source = mv.source or ""
    if source.startswith("runs:/"):
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}"
    return source if "://" in source or source.startswith("/") else None


def _local_path(location: str) -> Path:
    return Path(location.removeprefix("file://")) if location.startswith(("file://", "/")) else Path("/nonexistent")


def _size(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def drop_checkpoints(config: RunConfig, run_dir: Path) -> int:
    """Delete a registered run's checkpoints (train/checkpoints, damaged broken-* included); returns the bytes freed."""
    folder = run_dir / "train" / "checkpoints"
    if not config.retention.delete_checkpoints or not folder.is_dir() or not (run_dir / "train" / "final" / "config.json").is_file():
        return 0
    freed = _size(folder)
    shutil.rmtree(folder, ignore_errors=True)
    log.info("deleted the checkpoints of %s (%.1f MB): the policy is registered", run_dir.name, freed / 1e6)
    return freed


def check_free_space(config: RunConfig, folder: Path) -> None:
    """Refuse to start a night on a disk with less than retention.min_free_gb free where its run folder goes."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 1e9
    if free_gb < config.retention.min_free_gb:
        raise RlaifError(
            f"only {free_gb:.1f} GB free under {probe}; a night needs at least retention.min_free_gb={config.retention.min_free_gb:g}",
            "free space: `rlaif gc --config <this config>` deletes expired versions, run folders and cached models "
            "(add --dry-run to see what), or lower retention.keep_challengers / run_folder_days",
        )
