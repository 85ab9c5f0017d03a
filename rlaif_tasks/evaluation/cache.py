"""Evaluations computed once: the base policy answers the same prompts the same way every night.

Every nightly run evaluates the base policy on its test split (and the extra sets) before training,
with the same sampling seeds; unless something it depends on changed, the answers, scores, fluency
and relevance are the same as last night's. An entry is keyed by everything that determines it
(the caller's `identity`: the model's fingerprint, the prompts' hash, the evaluation settings, the
judges' and quality models' fingerprints, the device and dtype, this package's files) and holds the
`eval/<label>*` files of one run folder. A key that cannot be told (a fingerprint unknown offline)
is never cached. Entries live beside the run folders, which every worker shares, and retention
deletes those unused for `retention.run_folder_days`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from rlaif_tasks.atomic import atomic_dir, write_json

log = logging.getLogger(__name__)

CACHE_FOLDER = ".evaluation-cache"
"""Beside a DAG's run folders (`<run_dir>[/<dag id>]/.evaluation-cache`): shared by workers like them."""
IDENTITY_FILE = "identity.json"
PACKAGE = Path(__file__).resolve().parent.parent


def package_sha256() -> str:
    """A hash of this package's files (code and bundled data): a changed evaluation or generation recomputes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in (".py", ".json", ".jsonl", ".txt")):
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(identity: dict[str, Any]) -> str | None:
    """The entry's name, or None when any part of the identity is unknown (None)."""
    if any(value is None for value in _leaves(identity)):
        return None
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _leaves(obj: Any):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _leaves(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _leaves(value)
    else:
        yield obj


def label_files(eval_dir: Path, label: str) -> list[Path]:
    """An evaluation's files: `<label>.json`, `<label>_samples.parquet` and the same for each extra set `<label>.<set>`."""
    found = [*eval_dir.glob(f"{label}.json"), *eval_dir.glob(f"{label}_samples.parquet"),
             *eval_dir.glob(f"{label}.*.json"), *eval_dir.glob(f"{label}.*_samples.parquet")]
    return sorted(set(found))


def restore(root: Path, key: str, run_dir: Path, label: str) -> bool:
    """Copy a cached evaluation into the run folder's eval/; False when there is none."""
    entry = root / key
    if not (entry / IDENTITY_FILE).is_file():
        return False
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    for file in label_files(entry, label):
        shutil.copy2(file, eval_dir / file.name)
    os.utime(entry)  # used tonight: retention keeps it
    log.info("the %s evaluation is the cached one %s (nothing it depends on changed)", label, key)
    return True


def store(root: Path, key: str, run_dir: Path, label: str, identity: dict[str, Any]) -> Path:
    """Keep a run's evaluation under its key (whole or not at all)."""
    entry = root / key
    with atomic_dir(entry) as tmp:
        for file in label_files(run_dir / "eval", label):
            shutil.copy2(file, tmp / file.name)
        write_json(tmp / IDENTITY_FILE, identity)
    return entry
