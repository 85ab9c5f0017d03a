"""Where converted models live, so an expensive conversion happens once per machine, not once per run."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


def cache_root() -> Path:
    """`$RLAIF_CACHE_DIR`, else `$XDG_CACHE_HOME/rlaif-tasks`, else `~/.cache/rlaif-tasks`."""
    explicit = os.environ.get("RLAIF_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "rlaif-tasks"
    return Path.home() / ".cache" / "rlaif-tasks"


def model_cache_dir(name: str) -> Path:
    return cache_root() / "models" / name


@contextlib.contextmanager
def cache_lock(folder: Path) -> Iterator[None]:
    """Serialise conversions of one cache folder across processes (parallel Airflow tasks).

    The lock file sits beside the folder and is left in place: deleting it would let a third
    process lock a different inode while the second still holds the old one.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_path = folder.with_name(f".{folder.name}.lock")
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
