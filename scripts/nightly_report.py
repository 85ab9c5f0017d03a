"""Print the report of a run of the DAG `rlaif_nightly`, read back from the Airflow metadata DB.

    python scripts/nightly_report.py [DAG_RUN_ID]     # default: the latest run

The text is the `report` task's return value (its XCom), so what is printed is what Airflow
recorded; task states are listed too. Needs the Airflow environment (scripts/airflow_env.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DAG_ID = "rlaif_nightly"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_id", nargs="?", help="DAG run id (default: the latest run)")
    parser.add_argument("--json", action="store_true", help="print the report task's return value as JSON")
    args = parser.parse_args(argv)

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(DagRun).where(DagRun.dag_id == DAG_ID)
        query = query.where(DagRun.run_id == args.run_id) if args.run_id else query.order_by(DagRun.id.desc())
        run = session.scalars(query.limit(1)).first()
        if run is None:
            print(f"error: no run of {DAG_ID}{' with id ' + args.run_id if args.run_id else ''} in the metadata DB", file=sys.stderr)
            return 2
        states = session.execute(
            select(TaskInstance.task_id, TaskInstance.state, TaskInstance.try_number)
            .where(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run.run_id)
            .order_by(TaskInstance.start_date)
        ).all()
        row = session.scalars(XComModel.get_many(run_id=run.run_id, key="return_value", task_ids="report", dag_ids=DAG_ID)).first()
        report = XComModel.deserialize_value(row) if row is not None else None

    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report else 1
    print(f"Airflow DAG run {run.run_id}: {run.state}")
    print("  " + "  ".join(f"{task_id}={state or 'none'}" + (f" (try {tries})" if tries > 1 else "") for task_id, state, tries in states))
    if report is None:
        print("no report: the `report` task has not succeeded in this run", file=sys.stderr)
        return 1
    print()
    print(report["text"])
    if report.get("experiment_id"):  # where `make up`'s MLflow UI shows them (its model-training view, not GenAI)
        ui = f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}/#"
        print(f"\nAfter `make up`: the run {ui}/experiments/{report['experiment_id']}/runs/{report['mlflow_run_id']}?workflowType=machine_learning")
        if report.get("model_name"):
            print(f"and the registered version {ui}/models/{report['model_name']}/versions/{report['model_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
