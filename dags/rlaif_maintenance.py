"""Bounded disk for a year of nights: delete what `retention` no longer keeps, once a day.

    collect_garbage

Expired registered versions (with their MLflow artefacts), run folders older than
`retention.run_folder_days` and surplus cached downloads of the config named by $RLAIF_DAG_CONFIG
(rlaif_tasks/retention.py; `rlaif gc --dry-run` shows what would go). The champion, `previous`,
`challenger` and the newest `retention.keep_challengers` other versions always stay. Paused when
first stored, like every DAG here: unpause it where runs accumulate. No trigger param: what to keep is
the config file's to say.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from rlaif_tasks.orchestration import DAG_CONFIG, dag_settings, resolve_config_path, run_stage
from rlaif_tasks.stages import maintenance


@dag(
    dag_id="rlaif_maintenance",
    description="Delete expired registered versions, their artefacts, old run folders and cached models (retention)",
    schedule="30 1 * * *",
    tags=["rlaif", "maintenance", "mlflow"],
    doc_md=__doc__,
    **dag_settings(),
)
def rlaif_maintenance():
    @task
    def collect_garbage() -> dict:
        result = run_stage(maintenance.collect_garbage, resolve_config_path(DAG_CONFIG))
        print(result["text"])
        return result

    collect_garbage()


rlaif_maintenance()
