"""What a model spec resolves to right now, as a string that changes whenever the model does.

A spec names a model, not a revision of it: `jigsaw-bilstm` follows the installed package, a folder
its current files, a hub id the commit its `main` points to in the HF cache, `models:/NAME@ALIAS`
the version the alias is on. Two evaluations are comparable only if their judges were the same
revisions, so these strings are recorded with a run (tracking.judge_tags) and compared by the gate.

    bundled      alt-profanity-check==1.9.1 sha256=<files of the installed distribution>
    local        sha256=<files of the folder>
    hub          facebook/roberta-hate-speech-dynabench-r4-target@<commit>
    registry     models:/NAME/VERSION model_id=<logged model id>

Nothing here reaches the network: a hub id that is not in the local HF cache resolves to None
(unknown), which the caller must treat as unequal to everything.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import Iterable

from rlaif_tasks.atomic import write_text
from rlaif_tasks.models import registry_spec
from rlaif_tasks.models.bundled import BundledModel
from rlaif_tasks.models.cache import cache_root
from rlaif_tasks.models.hub import describe_spec


def fingerprint(spec: str) -> str | None:
    """The resolved revision of a model spec; None when it cannot be told offline."""
    if registry_spec.is_registry_spec(spec):  # before describe_spec, which would download the version
        mv = registry_spec.resolve(spec)
        return f"models:/{mv.name}/{mv.version} model_id={mv.model_id}"
    if spec.startswith("python:"):
        module = importlib.util.find_spec(spec.removeprefix("python:").partition(":")[0])
        origin = Path(module.origin) if module is not None and module.origin else None
        return f"sha256={files_sha256(origin.parent, [origin.name])}" if origin is not None and origin.is_file() else None
    info = describe_spec(spec)
    if info.source == "bundled":
        assert info.bundled is not None
        return bundled_fingerprint(info.bundled)
    if info.source == "local":
        return f"sha256={folder_sha256(Path(info.location))}"
    commit = hub_commit(info.location)
    return f"{info.location}@{commit}" if commit else None


def bundled_fingerprint(bundled: BundledModel) -> str | None:
    """Installed version and a hash of the distribution's files (not its metadata or bytecode, which vary by installer)."""
    name = bundled.package.partition("==")[0]
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    root = Path(str(dist.locate_file("")))
    files = sorted(
        f.as_posix() for f in dist.files or []
        if f.suffix != ".pyc" and f.parts[0] != ".." and not f.parts[0].endswith(".dist-info") and (root / f).is_file()
    )
    return f"{name}=={dist.version} sha256={files_sha256(root, files)}"


def hub_commit(repo_id: str) -> str | None:
    """The commit `main` points to in the local HF cache (the snapshot folder a load would read), or None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json")
    return Path(path).parent.name if isinstance(path, str) else None


def folder_sha256(folder: Path) -> str:
    """sha256 over the folder's files; dot-files and dot-folders (.git, HF's .cache) are not the model."""
    files = []
    for here, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [(Path(here) / n).relative_to(folder).as_posix() for n in names if not n.startswith(".")]
    return files_sha256(folder, sorted(files))


def files_sha256(root: Path, files: Iterable[str]) -> str:
    """sha256 over each file's relative path, size and bytes, in the given order.

    Hashing a multi-gigabyte checkpoint takes a while, so the result is kept in the model cache under
    a key of the folder's path and every file's size and mtime: unchanged files are not read again.
    """
    files = list(files)
    stats = [(f, (root / f).stat()) for f in files]
    key = json.dumps([str(root.resolve()), [(f, s.st_size, s.st_mtime_ns) for f, s in stats]])
    memo = cache_root() / "fingerprints" / hashlib.sha256(key.encode()).hexdigest()
    try:
        return memo.read_text(encoding="utf-8").strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    for f, stat in stats:
        digest.update(f.encode() + b"\x00" + stat.st_size.to_bytes(8, "little"))
        with open(root / f, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    value = digest.hexdigest()
    try:
        write_text(memo, value + "\n")
    except OSError:  # a read-only cache only costs the next call a re-read
        pass
    return value
