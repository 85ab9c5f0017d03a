"""Write-then-rename helpers, so that a crash never leaves a half-written file or folder behind.

The data is fsync-ed before the rename and the folder after it: without that, a power cut or a
kernel crash can leave the new name pointing at a file whose blocks never reached the disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it over `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _naming_a_full_disk(final):
            yield tmp_path
            _fsync(tmp_path)
        os.replace(tmp_path, final)
        _fsync(final.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`; it replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        with _naming_a_full_disk(final):
            yield tmp
            for path in sorted(tmp.rglob("*"), reverse=True):  # files, then their folders
                _fsync(path)
            _fsync(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


FULL_BELOW_BYTES = 1 << 20


@contextlib.contextmanager
def _naming_a_full_disk(final: Path) -> Iterator[None]:
    """Turn a failed write on a full disk into ENOSPC with the fix; torch, for one, reports it as "unexpected pos"."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        free = shutil.disk_usage(final.parent).free
        if not (full or free < FULL_BELOW_BYTES):
            raise
        raise OSError(
            errno.ENOSPC,
            f"{os.strerror(errno.ENOSPC)} at {final.parent} while writing {final.name} ({free / 2**20:.1f} MiB free); nothing "
            "half-written is kept. Free space (`rlaif gc`, the `retention` settings, or a larger disk) and retry",
        ) from exc


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk (links and special files are left alone)."""
    if path.is_symlink() or not (path.is_file() or path.is_dir()):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, obj) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
