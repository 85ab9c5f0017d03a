"""The README's serving commands, run as written (issue 23: `mlflow models serve` failed for want of uvicorn on PATH)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from production_stack import free_port, wait_for_http, write_tiny_project

from rlaif_tasks import registry, tracking
from rlaif_tasks.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def readme_serving_block() -> list[str]:
    """The shell lines of the README's code block that starts with `make serve`, continuations joined."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    [block] = [b for b in blocks if b.lstrip().startswith("make serve")]
    return [line.split("#")[0].strip() if line.startswith("make") else line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_serving_commands_answer_a_question(tmp_path):
    home = tmp_path / "home"
    config_path = write_tiny_project(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRFLOW"))}
    # a champion in the embedded store, as `make run` leaves it
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    previous_home = os.environ.get("RLAIF_HOME")
    os.environ["RLAIF_HOME"] = str(home)
    try:
        config = load_config(config_path)
        client = tracking.connect(config)
        run_id = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id="serve")
        version = registry.register_policy(config, run_id, home / "policy", client=client)["version"]
        registry.promote(tracking.registered_model_name(config), version, client=client)
    finally:
        os.environ.pop("RLAIF_HOME") if previous_home is None else os.environ.update(RLAIF_HOME=previous_home)

    serve, curl = readme_serving_block()
    assert serve == "make serve" and curl.startswith("curl -s http://127.0.0.1:5001/invocations")
    port = free_port()
    env.update(RLAIF_HOME=str(home), HF_HUB_OFFLINE="1", PATH="/usr/bin:/bin")  # nothing of the venv on PATH, as in a fresh shell
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [*shlex.split(serve), f"CONFIG={config_path}", f"SERVE_PORT={port}", f"VENV={Path(sys.executable).parent.parent}"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, log, "make serve", timeout=180)
        answer = subprocess.run(shlex.split(curl.replace("5001", str(port))), capture_output=True, text=True, timeout=120, env=env)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    assert answer.returncode == 0, answer.stderr
    [prediction] = json.loads(answer.stdout)["predictions"]
    assert isinstance(prediction, str)  # the tiny random policy may sample EOS first: an empty answer is still the model's (ci: 1 of 4 runs)
    assert f"serving models:/rlaif-tiny-policy@champion from sqlite:///{home}/.mlflow/mlflow.db" in log.read_text()
