"""Small hooks the production components load by name (see scripts/service.sh); no Airflow import."""

from __future__ import annotations

import logging
import os
import socket

QUIET_LIBRARIES = {
    "MLFLOW_CONFIGURE_LOGGING": "false",  # MLflow's own stderr handler would make every INFO line an ERROR in the task log
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' bars (GGUF conversion) follow this too
    "TQDM_DISABLE": "1",
}
"""A task's log is read line by line in the UI: no progress bars, and library logs at their own level, not as stderr."""


def quiet_libraries() -> None:
    """Library logs through the task's logging at their true level, progress bars off (before the libraries are imported:
    in each task, and in a warm-starting component, whose imports every task inherits)."""
    for name, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(name, value)
    logging.captureWarnings(True)  # warnings become WARNING records of py.warnings, not stderr (ERROR) lines


def worker_hostname() -> str:
    """The host name a task instance records: $RLAIF_WORKER_HOSTNAME, else the FQDN.

    Airflow's `[core] hostname_callable`; set for workers that share a host (tests, one big node),
    so the UI and the metadata DB tell which worker ran a task.
    """
    return os.environ.get("RLAIF_WORKER_HOSTNAME") or socket.getfqdn()
