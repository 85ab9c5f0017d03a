"""Where the embedded stores live: a ground-level module, so that models and tracking can both ask."""

from __future__ import annotations

import os
from pathlib import Path


def rlaif_home() -> Path:
    """Root of the embedded store and of nightly run folders: $RLAIF_HOME, else the current directory."""
    return Path(os.environ.get("RLAIF_HOME") or os.getcwd()).resolve()


def embedded_mlflow_root() -> Path:
    root = rlaif_home() / ".mlflow"
    root.mkdir(parents=True, exist_ok=True)
    return root


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the embedded SQLite store under $RLAIF_HOME."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{embedded_mlflow_root() / 'mlflow.db'}"
