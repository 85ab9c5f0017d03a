"""bench/suite_cpu.py: the CPU a command's processes used, by kind, and the command's own exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

BURN = "# rlaif-burn-marker\nimport time\nwhile time.process_time() < 1.0: pass\ntime.sleep(1.5)\nraise SystemExit(3)"


def test_a_childs_cpu_is_counted_under_its_kind_and_its_exit_code_passed_on(tmp_path):
    out = tmp_path / "cpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "suite_cpu.py"), "--out", str(out), "--kind", "burn=rlaif-burn-marker", "--", sys.executable, "-c", BURN],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    summary = json.loads(out.read_text())
    assert summary["exit_code"] == 3 and summary["cores"] >= 1 and 0 <= summary["busy_share"] <= 1
    assert 0.9 <= summary["by_kind"]["burn"] <= 1.6  # the child's second of CPU, and nothing else's


def test_process_titles_map_to_their_kind():
    from suite_cpu import kind_of

    assert kind_of("airflow worker -- 01a24f2d-444d-7a0e-9b3c-e5901a0bd85a") == "airflow task processes"
    assert kind_of("python -m rlaif_tasks.warm_start scheduler --skip-serve-logs") == "airflow scheduler"
    assert kind_of("airflow api_server -- host:127.0.0.1 port:58651") == "airflow api-server"
    assert kind_of("/venv/bin/python /venv/bin/airflow dag-processor") == "airflow dag-processor"
    assert kind_of("python -m rlaif_tasks.warm_start celery worker --queues gpu") == "celery workers and their tasks"
    assert kind_of("/venv/bin/python -m uvicorn --host 127.0.0.1 --port 50841 mlflow.server.fastapi_app:app") == "mlflow servers"
    assert kind_of("/venv/bin/python -u -c import sys;exec(eval(sys.stdin.readline()))") == "pytest workers (in-process tests)"
