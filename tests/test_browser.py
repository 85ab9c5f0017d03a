"""What a user sees after `make run` and `make up`, checked in a real browser.

Debian's Chromium (/usr/bin/chromium) driven by Playwright's Python package; Playwright's own
browser download is never used (.ci/run installs the Debian package). A tiny-config `make run`
(scripts/run_nightly.sh), then `make up` (scripts/up.sh) on free loopback ports, then the pages a
user opens: the Airflow login, the `train` task's log with its training steps, the run's note with
the report; MLflow's run page with the per-step metrics and the registered model with its alias.
Screenshots go to $RLAIF_TEST_ARTIFACTS (default .cache/test-artifacts/browser), not into git.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from production_stack import free_port, wait_for_http, write_tiny_project

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("RLAIF_TEST_ARTIFACTS", ROOT / ".cache" / "test-artifacts")) / "browser"
USERS = ("reviewer", "intruder")
"""Airflow users with the Op role besides the admin: gate.approvers names only the reviewer."""


def expect_text(page, text: str, shot: str, timeout: float = 60_000) -> None:
    """Wait for `text` on the page; on a timeout keep a screenshot and the page's text for the report."""
    from playwright.sync_api import TimeoutError

    try:
        page.get_by_text(text).first.wait_for(timeout=timeout)
    except TimeoutError:
        page.screenshot(path=str(SHOTS / f"{shot}-failed.png"))
        raise AssertionError(f"{text!r} did not appear on {page.url}:\n{page.inner_text('body')[:2000]}") from None


@pytest.fixture(scope="module")
def chromium():
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the browser test, but {CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip("install Debian's chromium for the browser test: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A tiny `make run`, then `make up` over its stores until the module ends."""
    home = tmp_path_factory.mktemp("browser_home")
    config = write_tiny_project(home, orchestration=", max_active_runs: 3")  # the sign-off test's three nights at once
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_")) and k not in ("RLAIF_HOME", "RLAIF_DAG_CONFIG")}
    env.update(RLAIF_HOME=str(home), VENV=str(Path(sys.executable).parent.parent), AIRFLOW_PORT=str(free_port()), MLFLOW_PORT=str(free_port()),
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=",".join(f"{u}:op" for u in USERS) + ",admin:admin")
    made = subprocess.run(["bash", "scripts/run_nightly.sh", str(config)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-4000:] + made.stderr[-4000:]
    assert "train | info    step 2/2" in made.stdout  # the terminal streamed the training steps
    run_id = next(line.split(" ", 1)[1] for line in made.stdout.splitlines() if line.startswith("DAG_RUN_ID "))
    log = (home / "up.log").open("w")
    up = subprocess.Popen(["bash", "scripts/up.sh", str(config)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    airflow, mlflow = f"http://127.0.0.1:{env['AIRFLOW_PORT']}", f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    try:
        for url in (f"{airflow}/api/v2/monitor/health", f"{mlflow}/health"):
            wait_for_http(url, up, home / "up.log", f"make up: {url}", timeout=240)
        summary = json.loads(next((home / "runs" / "tiny").glob("*/nightly.json")).read_text())
        yield {"airflow": airflow, "mlflow": mlflow, "run_id": run_id, "summary": summary, "home": home}
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:  # a component slow to stop on a loaded machine
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(timeout=30)


def test_airflow_ui_shows_the_train_log_and_the_report(ui, chromium):
    page = chromium.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{ui['airflow']}/")
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "admin")
    page.click("button[type=submit]")
    page.wait_for_url(f"{ui['airflow']}/")

    page.goto(f"{ui['airflow']}/dags/rlaif_nightly/runs/{ui['run_id']}/tasks/train")
    page.get_by_text("step 2/2 reward").first.wait_for(timeout=60_000)  # a PPO step line in the task's log
    page.screenshot(path=str(SHOTS / "airflow-train-log.png"))

    page.goto(f"{ui['airflow']}/dags/rlaif_nightly/runs/{ui['run_id']}/tasks/report")
    page.get_by_text("(decides)").first.wait_for(timeout=60_000)  # the gate's lines in the report task's log, no group to expand
    page.get_by_text("checks: diversity ok").first.wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "airflow-report-log.png"))

    page.goto(f"{ui['airflow']}/dags/rlaif_nightly/runs/{ui['run_id']}")
    outcome = page.get_by_text(f"model rlaif-tiny-policy version {ui['summary']['model_version']}: promoted").first
    outcome.wait_for(timeout=60_000)  # the run's note (the report), whose first line is the outcome
    page.get_by_role("button", name="Edit note").first.click()  # the header clamps the note to one line; the note's modal shows it whole
    gate_table = page.locator("table").filter(has_text="profanity-check (decides)").first
    gate_table.wait_for(timeout=30_000)  # Markdown, rendered as a table (a fenced report showed as one line of inline code)
    assert "[" in gate_table.inner_text()  # the deciding interval
    page.screenshot(path=str(SHOTS / "airflow-run-note.png"))
    page.keyboard.press("Escape")

    page.goto(f"{ui['airflow']}/dags/rlaif_nightly")
    page.get_by_role("button", name="Trigger").first.click()
    expect_text(page, "Unpause", "airflow-trigger-form")  # ticked by Airflow; `make up` stores no schedule to unpause
    empty_algorithm = page.get_by_text("(from the config)").first  # the algorithm select's empty value
    if not empty_algorithm.is_visible():
        page.get_by_text("Run Parameters").first.click()
    expect_text(page, "(from the config)", "airflow-trigger-form")
    page.screenshot(path=str(SHOTS / "airflow-trigger-form.png"), full_page=True)
    page.close()


def test_mlflow_ui_shows_the_curves_and_the_champion(ui, chromium):
    from mlflow import MlflowClient

    store = f"sqlite:///{ui['home'] / '.mlflow' / 'mlflow.db'}"
    run = MlflowClient(store).get_run(ui["summary"]["mlflow_run_id"])
    page = chromium.new_page(viewport={"width": 1400, "height": 900})
    # MLflow 3.17 starts in its GenAI workflow whatever the experiment's kind; the links we print say model training
    page.goto(f"{ui['mlflow']}/#/experiments/{run.info.experiment_id}?workflowType=machine_learning")
    page.wait_for_url(f"**/experiments/{run.info.experiment_id}/runs**", timeout=60_000)  # the kind tag picks the runs tab
    expect_text(page, run.info.run_name, "mlflow-experiment-runs")
    page.screenshot(path=str(SHOTS / "mlflow-experiment-runs.png"))
    page.screenshot(path=str(SHOTS / "mlflow-experiment-runs.png"))

    page.goto(f"{ui['mlflow']}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics?workflowType=machine_learning")
    # MLflow groups charts by prefix: section `train/reward` holds the per-step curve `mean` (`train/reward/mean`)
    expect_text(page, "train/reward", "mlflow-run-metrics")
    page.get_by_text("train/reward").first.scroll_into_view_if_needed()
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)  # a drawn chart, not a spinner
    page.screenshot(path=str(SHOTS / "mlflow-run-metrics.png"))

    page.goto(f"{ui['mlflow']}/#/models/rlaif-tiny-policy")
    expect_text(page, "champion", "mlflow-model-champion")
    expect_text(page, f"Version {ui['summary']['model_version']}", "mlflow-model-champion", timeout=30_000)
    page.screenshot(path=str(SHOTS / "mlflow-model-champion.png"))

    page.goto(f"{ui['mlflow']}/#/models/rlaif-tiny-policy/versions/{ui['summary']['model_version']}")
    expect_text(page, "The gate's evidence", "mlflow-model-card", timeout=30_000)  # the version's description is its model card
    assert page.locator("table").filter(has_text="profanity-check (decides)").first.is_visible()
    page.screenshot(path=str(SHOTS / "mlflow-model-card.png"), full_page=True)

    page.goto(f"{ui['mlflow']}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning")
    link = page.get_by_role("link", name="the DAG run").first  # the run's description links back to Airflow
    link.wait_for(timeout=30_000)
    assert "/dags/rlaif_nightly/runs/" in (link.get_attribute("href") or "")
    page.screenshot(path=str(SHOTS / "mlflow-run-description.png"))
    page.close()


def login(page, airflow: str, user: str) -> None:
    page.goto(f"{airflow}/")
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "admin")  # rlaif_airflow_init gives every local user the one password
    page.click("button[type=submit]")
    page.wait_for_url(f"{airflow}/")


def api(airflow: str, user: str):
    import httpx

    token = httpx.post(f"{airflow}/auth/token", json={"username": user, "password": "admin"}, timeout=60)
    token.raise_for_status()
    return httpx.Client(base_url=f"{airflow}/api/v2", headers={"Authorization": f"Bearer {token.json()['access_token']}"}, timeout=60)


def test_a_promotion_waits_for_a_person_approved_in_the_ui_rejected_over_rest_or_timed_out(ui, chromium):
    """Issue 21: with gate.approval: required three nights wait in sign_off; the reviewer approves one on Required Actions
    (the evidence shown), rejects one through the REST API after the unassigned intruder's 403, and one times out."""
    from mlflow import MlflowClient
    from rlaif_tasks.stages.common import safe_run_id

    home, airflow, dag = ui["home"], ui["airflow"], "rlaif_nightly"
    gate = "{{judge: profanity-check, min_improvement: -1.0, require: [samples, toxicity], approval: required, approvers: [reviewer], approval_timeout_hours: {hours}}}"
    configs = {
        "approve": write_tiny_project(home, filename="tiny-approve.yaml", gate=gate.format(hours=1)),
        "reject": write_tiny_project(home, filename="tiny-reject.yaml", gate=gate.format(hours=1)),
        "timeout": write_tiny_project(home, filename="tiny-timeout.yaml", gate=gate.format(hours=0.004)),  # 14 s
    }
    admin = api(airflow, "admin")
    assert admin.patch(f"/dags/{dag}", json={"is_paused": False}).status_code == 200
    runs = {}
    for night, config in configs.items():
        made = admin.post(f"/dags/{dag}/dagRuns", json={"dag_run_id": f"manual__sign-off-{night}", "logical_date": None, "conf": {"config": str(config)}})
        assert made.status_code == 200, made.text
        runs[night] = made.json()["dag_run_id"]

    def state(night: str, task: str = "sign_off") -> str | None:
        found = admin.get(f"/dags/{dag}/dagRuns/{runs[night]}/taskInstances/{task}")
        return found.json().get("state") if found.status_code == 200 else None

    deadline = time.monotonic() + 600
    while not (state("approve") == state("reject") == "awaiting_input") and time.monotonic() < deadline:
        assert "failed" not in {state(n, t) for n in runs for t in ("train", "promote_if_better", "sign_off")}
        time.sleep(3)
    assert state("approve") == state("reject") == "awaiting_input", {n: state(n) for n in runs}
    # Airflow 3.3.2 retries a HITL task answered before the scheduler has handled its parked process's exit, and asks
    # again (docs/orchestration.md): people are never that fast, a script is, so it waits for that line of the scheduler.
    scheduler_log = home / ".airflow" / "logs" / "up" / "scheduler.log"
    handled = [f"TaskInstance Finished: dag_id={dag}, task_id=sign_off, run_id={runs[n]}, map_index=-1" for n in ("approve", "reject")]
    while not all(line in scheduler_log.read_text(errors="replace") for line in handled) and time.monotonic() < deadline:
        time.sleep(1)

    hitl = f"/dags/{dag}/dagRuns/{runs['reject']}/taskInstances/sign_off/-1/hitlDetails"
    refused = api(airflow, "intruder").patch(hitl, json={"chosen_options": ["Approve"], "params_input": {"comment": ""}})
    assert refused.status_code == 403, refused.text  # an Op, but not in gate.approvers
    rejected = api(airflow, "reviewer").patch(hitl, json={"chosen_options": ["Reject"], "params_input": {"comment": "odd answers"}})
    assert rejected.status_code == 200, rejected.text

    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    login(page, airflow, "reviewer")
    page.goto(f"{airflow}/dags/{dag}/runs/{runs['approve']}/tasks/sign_off/required_actions")
    expect_text(page, "Promote rlaif-tiny-policy version", "airflow-sign-off")
    evidence = page.locator("table").filter(has_text="profanity-check (decides)").first
    evidence.wait_for(timeout=30_000)  # the gate's table, rendered from Markdown
    assert "[" in evidence.inner_text()  # its interval
    expect_text(page, "Budgets", "airflow-sign-off")
    page.screenshot(path=str(SHOTS / "airflow-sign-off.png"), full_page=True)
    page.get_by_role("button", name="Approve").first.click()
    expect_text(page, "reviewer", "airflow-sign-off-answered", timeout=30_000)
    page.close()

    for night in runs:
        while admin.get(f"/dags/{dag}/dagRuns/{runs[night]}").json()["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(3)
    assert {n: admin.get(f"/dags/{dag}/dagRuns/{r}").json()["state"] for n, r in runs.items()} == dict.fromkeys(runs, "success")

    summaries = {n: json.loads((home / "runs" / "tiny" / safe_run_id(r) / "nightly.json").read_text()) for n, r in runs.items()}
    store = f"sqlite:///{home / '.mlflow' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)  # not a registry URI another test module of this worker set
    name = "rlaif-tiny-policy"
    tags = {n: client.get_model_version(name, summaries[n]["model_version"]).tags for n in runs}
    assert str(client.get_registered_model(name).aliases["champion"]) == summaries["approve"]["model_version"]
    assert (tags["approve"]["rlaif.status"], tags["approve"]["rlaif.sign_off"], tags["approve"]["rlaif.signed_off_by"]) == ("champion", "approved", "reviewer")
    assert (tags["reject"]["rlaif.status"], tags["reject"]["rlaif.sign_off"], tags["reject"]["rlaif.signed_off_by"]) == ("rejected", "rejected", "reviewer")
    assert tags["reject"]["rlaif.rejected_reason"].endswith(": odd answers")
    assert (tags["timeout"]["rlaif.status"], tags["timeout"]["rlaif.sign_off"]) == ("rejected", "timed_out")
    assert "signed off: approved by reviewer" in summaries["approve"]["text"] and summaries["approve"]["promoted"]
    assert "not promoted: rejected by reviewer" in summaries["reject"]["text"]
    assert "not promoted: no sign-off within 0.004 h" in summaries["timeout"]["text"]
