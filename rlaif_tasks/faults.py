"""Named fault points for the reliability suite (tests/test_faults.py); no-ops unless $RLAIF_FAULTS_DIR is set.

    RLAIF_FAULTS_DIR=/some/folder          marker files shared with the test, and its `spec` file:
    train.step-2=kill,register.logged=hold  which points, and what happens there (or $RLAIF_FAULTS)

Each listed point fires once per folder (an O_EXCL marker `<point>.fired`), so the retry that
follows runs through it; `kill-every-try` fires on every try, so the task fails for good. `kill`
SIGKILLs this process, as an OOM killer or a lost node would;
`hold` writes `<point>.held` and waits for the test to write `<point>.release` (meanwhile the test
kills or breaks a server, say). The points sit where a fault does the most damage: after a stage's
work and before Airflow records it, between a registry write and the next.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def fault_point(name: str) -> None:
    folder = os.environ.get("RLAIF_FAULTS_DIR")
    if not folder:
        return
    folder = Path(folder)
    spec_file = folder / "spec"
    spec = os.environ.get("RLAIF_FAULTS") or (spec_file.read_text().strip() if spec_file.is_file() else "")
    actions = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    action = actions.get(name)
    if action is None:
        return
    if action == "kill-every-try":
        (folder / f"{name}.fired").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        os.close(os.open(folder / f"{name}.fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "hold":
        (folder / f"{name}.held").write_text(str(os.getpid()))
        deadline = time.monotonic() + 600
        while not (folder / f"{name}.release").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    else:
        raise ValueError(f"unknown fault action {action!r} for {name} (kill, kill-every-try or hold)")
