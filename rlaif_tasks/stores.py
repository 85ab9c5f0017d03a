"""Where the stores live: a ground-level module, so that models/ and tracking.py ask the same function.

One rule finds the MLflow store for every caller (the tracking client, `models:/` specs, the registry):

    tracking.tracking_uri of the run config     e.g. http://mlflow:5000 or sqlite:////srv/mlflow.db
    $MLFLOW_TRACKING_URI
    sqlite:///<root>/.mlflow/mlflow.db          embedded; <root> = $RLAIF_HOME or the current directory

A process that works for a run config names its store once (`use_tracking_uri`, done by
`tracking.connect`), so that a `models:/NAME@ALIAS` met deep inside a model loader resolves in the
run's store, not in whichever one the environment happens to name.
"""

from __future__ import annotations

import os
from pathlib import Path

_configured: str | None = None


def rlaif_home() -> Path:
    """Root of the embedded store and of nightly run folders: $RLAIF_HOME, else the current directory."""
    return Path(os.environ.get("RLAIF_HOME") or os.getcwd()).resolve()


def embedded_mlflow_root() -> Path:
    root = rlaif_home() / ".mlflow"
    root.mkdir(parents=True, exist_ok=True)
    return root


def embedded_tracking_uri() -> str:
    return f"sqlite:///{embedded_mlflow_root() / 'mlflow.db'}"


def tracking_uri(configured: str | None = None) -> str:
    """The MLflow store: `configured` (a run config's tracking.tracking_uri), else $MLFLOW_TRACKING_URI, else
    the embedded SQLite store under $RLAIF_HOME."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or embedded_tracking_uri()


def active_tracking_uri() -> str:
    """The store of the run config this process last connected with (`use_tracking_uri`), by the same rule."""
    return tracking_uri(_configured)


def use_tracking_uri(configured: str | None) -> None:
    """Make a run config's tracking.tracking_uri (None: none) this process's store for `models:/` specs."""
    global _configured
    _configured = configured
