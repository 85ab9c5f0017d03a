"""Small hooks the production components load by name (see scripts/service.sh); no Airflow import."""

from __future__ import annotations

import os
import socket


def worker_hostname() -> str:
    """The host name a task instance records: $RLAIF_WORKER_HOSTNAME, else the FQDN.

    Airflow's `[core] hostname_callable`; set for workers that share a host (tests, one big node),
    so the UI and the metadata DB tell which worker ran a task.
    """
    return os.environ.get("RLAIF_WORKER_HOSTNAME") or socket.getfqdn()
