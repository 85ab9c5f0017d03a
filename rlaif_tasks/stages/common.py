"""What every DAG's stages share: where a DAG run's folder goes, loading a run, finishing its MLflow run.

The contract of a stage: it takes small JSON-able refs (the run folder, the MLflow run id, hashes,
a model version), reloads the run config from `<run folder>/config.yaml`, writes its own part of
the folder atomically and returns refs; anything it finds finished it reuses, so any task can be
retried or cleared. No Airflow import: the DAG files call these functions through
`rlaif_tasks.orchestration.run_stage`.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

from rlaif_tasks import tracking
from rlaif_tasks.config import RunConfig, load_config, runs_root
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.stores import use_tracking_uri
from rlaif_tasks.tags import TAG_FAILURE


def safe_run_id(dag_run_id: str) -> str:
    """A folder name for a DAG run id (`scheduled__2026-01-01T02:00:00+00:00` has ':' and '+')."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", dag_run_id).strip("._") or "run"
    if safe != dag_run_id:
        safe = f"{safe[:80]}-{hashlib.sha1(dag_run_id.encode()).hexdigest()[:8]}"
    return safe


def run_folder(config: RunConfig, dag_run_id: str, *, dag_id: str | None = None) -> Path:
    """The one rule for a DAG run's folder: `<run_dir>[/<dag_id>]/<DAG run id>`, a relative run_dir under $RLAIF_HOME.

    rlaif_nightly's runs leave out the DAG id; the preference DAGs put it in, since run ids of
    different DAGs can coincide (`scheduled__<date>` has no random part) and their folders must not.
    """
    base = runs_root(config)
    if dag_id is not None:
        base = base / dag_id
    return base / safe_run_id(dag_run_id)


def load_run(refs: dict) -> tuple[RunConfig, Path]:
    """The run's config from its folder, which every worker must see at the same path.

    Also names the run's MLflow store for this process, so a `models:/` spec in the config resolves
    there (stores.py) before any client is made.
    """
    run_dir = Path(refs["run_dir"])
    if not (run_dir / "config.yaml").is_file():
        raise RlaifError(
            f"the run folder {run_dir} (written by prepare_dataset on another worker) is not visible on {socket.gethostname()}",
            "mount RLAIF_HOME at the same path on every Airflow worker (NFS, EFS, a shared volume); see docs/orchestration.md",
        )
    config = load_config(run_dir / "config.yaml")
    use_tracking_uri(config.tracking.tracking_uri)
    return config, run_dir


def connect(config: RunConfig | None):
    """An MLflow client on the run's store (tracking.connect)."""
    return tracking.connect(config)


def finish_run(client, run_id: str) -> None:
    """The DAG run's MLflow run FINISHED, without the failure a retried earlier try recorded."""
    run = client.get_run(run_id)
    if TAG_FAILURE in run.data.tags:
        client.delete_tag(run_id, TAG_FAILURE)
    if run.info.status != "FINISHED":
        client.set_terminated(run_id, "FINISHED")
