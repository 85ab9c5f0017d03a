"""The dags folder as Airflow's DagBag loads it, with a DAG config of the test's own ($RLAIF_DAG_CONFIG)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parent.parent / "dags"


@contextlib.contextmanager
def dagbag_with_config(home: Path, name: str, config_text: str):
    """Parse every DAG file with `config_text` as the DAG config `<home>/<name>.yaml`; the orchestration module is
    imported afresh before (it reads $RLAIF_DAG_CONFIG when imported) and dropped after, so no other test sees it."""
    config = home / f"{name}.yaml"
    config.write_text(config_text)
    patch = pytest.MonkeyPatch()
    patch.setenv("AIRFLOW_HOME", str(home))
    patch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    patch.setenv("RLAIF_DAG_CONFIG", str(config))
    patch.setenv("RLAIF_HOME", str(home / "rlaif"))
    patch.delitem(sys.modules, "rlaif_tasks.orchestration", raising=False)
    from airflow.dag_processing.dagbag import DagBag

    try:
        yield DagBag(dag_folder=str(DAGS))
    finally:
        patch.undo()
        sys.modules.pop("rlaif_tasks.orchestration", None)
