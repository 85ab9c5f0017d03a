"""Start an Airflow component with the stages' libraries already imported, so that its tasks start warm.

    python -m rlaif_tasks.warm_start scheduler [args...]        # what scripts/service.sh runs
    python -m rlaif_tasks.warm_start celery worker --queues gpu

The LocalExecutor's workers and the Celery workers' pool processes are forked from this process, and
each task process is forked from one of them (Airflow's supervisor, without exec): what is imported
here is in every task already, instead of 8-10 s of `import torch, transformers, mlflow, ...` per task
on 2 cores, most of a short task's time. Only third-party libraries are preloaded: this project's own
modules are imported by each task, so a changed stage takes effect at the next task without a restart.
Importing computes nothing, so no OpenMP pool exists yet when Airflow forks; the few native helper
threads some of these libraries start at import (3 here) are not copied into a forked child, as with
PyTorch's DataLoader workers, which fork after the same imports. Set RLAIF_PRELOAD to a
comma-separated list to change what is imported, or to an empty string for none.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

from rlaif_tasks.services import quiet_libraries

PRELOAD = ("torch", "transformers", "peft", "mlflow", "pandas", "pyarrow.parquet", "sklearn")
"""What nearly every stage imports; a module that is not installed is skipped."""


def preload(modules: tuple[str, ...] | list[str]) -> list[str]:
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        loaded.append(name)
    return loaded


def preload_modules() -> list[str]:
    value = os.environ.get("RLAIF_PRELOAD")
    return list(PRELOAD) if value is None else [m.strip() for m in value.split(",") if m.strip()]


def main(argv: list[str] | None = None) -> None:
    quiet_libraries()  # MLflow configures its logging when imported: as a task's own import would
    start = time.perf_counter()
    loaded = preload(preload_modules())
    print(f"rlaif warm start: preloaded {', '.join(loaded) or 'nothing'} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *(sys.argv[1:] if argv is None else argv)]
    sys.exit(airflow_main())


if __name__ == "__main__":
    main()
