"""Per-step training metrics as JSON lines: one `write` + flush per step, rewritten atomically on resume.

A run killed mid-write leaves at most one partial last line; `read_metrics` skips it, and a resumed
run rewrites the file from its checkpoint (`reset`) so no step appears twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from rlaif_tasks.atomic import atomic_path


def _clean(value):
    """JSON has no NaN/inf: write them as null rather than producing an unreadable line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """All complete lines of a metrics file (a torn last line from a killed run is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsWriter:
    """Appends one JSON object per line to `path`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def reset(self, rows: Iterable[dict] = ()) -> None:
        """Replace the file's content with `rows` (atomically): a fresh start or a resume point."""
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(self._line(r) for r in rows), encoding="utf-8")

    def append(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(self._line(row))
            handle.flush()

    @staticmethod
    def _line(row: dict) -> str:
        return json.dumps({k: _clean(v) for k, v in row.items()}) + "\n"
