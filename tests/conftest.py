import os
import sys
from pathlib import Path

import pytest

# Tests never reach a model hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs two pytest-xdist workers on the 2 cores: a torch thread pool each (and in the
# processes they start) keeps the cores busy without the pools spinning against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))


# The longest modules first (minutes each, measured in `make test`), then the other slow ones. make test
# passes --no-loadscope-reorder, without which xdist orders files by their number of tests instead. xdist's
# loadfile scheduler gives each worker the next file in this order at the start, and another whenever its
# current file has at most 2 tests left to run (xdist/scheduler/loadscope.py, `_reschedule`): so test_celery_faults
# (3 tests) has test_browser queued behind it after its first test, and the others are handed out
# as workers run low; shorter files fill in at the end.
LONGEST_FIRST = (
    "test_faults", "test_celery_faults", "test_celery_topology", "test_browser",
    "test_human_preferences", "test_e2e_airflow", "test_preference_dags",
)


def pytest_collection_modifyitems(session, config, items):
    def module(item) -> str:
        return item.module.__name__ if item.module else ""

    slow = {module(item) for item in items if item.get_closest_marker("slow")}

    def order(item) -> tuple[int, int]:
        name = module(item)
        return (0, LONGEST_FIRST.index(name)) if name in LONGEST_FIRST else (1 if name in slow else 2, 0)

    items.sort(key=order)  # stable: a module's tests stay together and in their order


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty $RLAIF_HOME: the embedded MLflow store and the run folders live under it."""
    monkeypatch.setenv("RLAIF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared CPU the thread pool's spinning costs seconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- docs/reliability.md: the fault scenarios' results, written by `make faults` or any run with RLAIF_RELIABILITY_REPORT --

_FAULT_RESULTS: list[dict] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Label a fault scenario's reports with its row (name, module, docstring): they travel to xdist's controller."""
    outcome = yield
    if item.get_closest_marker("faults") is not None:
        param = f" [{item.callspec.id}]" if hasattr(item, "callspec") else ""
        outcome.get_result().user_properties.append(("rlaif_fault", {
            "scenario": item.function.__name__.removeprefix("test_").replace("_", " ") + param,
            "module": item.module.__name__, "asserts": " ".join((item.function.__doc__ or "").split()),
        }))


def pytest_runtest_logreport(report):
    row = dict(report.user_properties).get("rlaif_fault")
    if row is not None and (report.when == "call" or (report.when == "setup" and report.outcome != "passed")):
        _FAULT_RESULTS.append({**row, "result": report.outcome, "seconds": report.duration})


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("RLAIF_RELIABILITY_REPORT")
    if not target or not _FAULT_RESULTS or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller writes the table: under xdist the workers' reports reach it too
    import platform
    import time

    passed = sum(r["result"] == "passed" for r in _FAULT_RESULTS)
    lines = [
        "<!-- results: written by `make faults`; edit the text outside these markers -->",
        f"Run by {('`pytest ' + ' '.join(session.config.invocation_params.args) + '`') if session.config.invocation_params.args else '`pytest` (the whole suite, as `make test` and CI run it)'} with RLAIF_RELIABILITY_REPORT set "
        f"(`make faults` runs `pytest -m faults` so) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()} ({os.cpu_count()} CPUs): "
        f"**{passed} of {len(_FAULT_RESULTS)} scenarios passed.** The middle column is each test's docstring.",
        "",
        "| scenario | test module | what is injected and asserted | result | seconds |",
        "|---|---|---|---|---:|",
    ]
    for r in _FAULT_RESULTS:
        lines.append(f"| {r['scenario']} | `{r['module']}` | {r['asserts'].replace('|', '/')} | {r['result']} | {r['seconds']:.0f} |")
    lines.append("<!-- /results -->")
    path = Path(target)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Reliability\n"
    if "<!-- /results -->" not in text:
        text = text.rstrip() + "\n\n<!-- results --><!-- /results -->\n"
    start, end = text.find("<!-- results"), text.find("<!-- /results -->")
    path.write_text(text[:start] + "\n".join(lines) + text[end + len("<!-- /results -->"):], encoding="utf-8")
