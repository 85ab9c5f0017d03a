"""Integrity of the nightly DAG: it imports cleanly, reads like the pipeline and takes its settings from the config."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
STAGES = ["prepare_dataset", "baseline_eval", "train", "evaluate", "register", "promote_if_better", "sign_off", "report"]
FORBIDDEN_SETS = [
    "gate.require=[]", "tracking.tracking_uri=http://elsewhere:5000", "tracking.registered_model=rlaif-prod-policy",
    "reward.llm_judge.base_url=http://elsewhere/v1", "reward.llm_judge.api_key_env=AWS_SECRET_ACCESS_KEY", "model.trust_remote_code=true",
    "run_dir=/tmp/anywhere", "reward.model=python:os:system", "data.source=/etc/passwd",
    "gate.approval=none", "gate.approvers=[mallory]", "gate.approval_timeout_hours=0.001",
    "red_team.train_on_attacks=true", "red_team.evaluate=true", "red_team.set_file=/etc/passwd", "preferences.agreeing_judges=[]",
]
"""What a trigger must never set (issue 20): each one a 4xx from the REST API, no DAG run (test_e2e_airflow too)."""
ORCHESTRATION = """
name: dagtest
orchestration:
  schedule: "15 4 * * 1-5"
  queue: gpu-a100
  pool: a100
  retries: 3
  retry_delay_minutes: 2
  train_timeout_minutes: 90
  eval_timeout_minutes: 20
  dagrun_timeout_minutes: 300
  max_active_runs: 2
"""


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    """The DAG as Airflow's DagBag loads it, with a config whose orchestration section differs from the defaults."""
    home = tmp_path_factory.mktemp("airflow_home")
    config = home / "dagtest.yaml"
    config.write_text(ORCHESTRATION)
    patch = pytest.MonkeyPatch()
    patch.setenv("AIRFLOW_HOME", str(home))
    patch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    patch.setenv("RLAIF_DAG_CONFIG", str(config))
    patch.setenv("RLAIF_HOME", str(home / "rlaif"))
    patch.setenv("RLAIF_CONFIG_DIRS", os.pathsep.join([str(home / "team-a"), str(home / "team-b")]))
    patch.delitem(sys.modules, "rlaif_tasks.orchestration", raising=False)  # the DAGs' shared module reads RLAIF_DAG_CONFIG when imported
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    yield bag.dags["rlaif_nightly"]
    patch.undo()


def test_the_tasks_in_pipeline_order(dag):
    assert sorted(dag.task_ids) == sorted(STAGES)
    for upstream, downstream in zip(STAGES, STAGES[1:]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert dag.get_task("prepare_dataset").upstream_task_ids == set()
    assert dag.get_task("report").downstream_task_ids == set()


def test_schedule_and_run_settings_come_from_the_config(dag):
    assert dag.timetable.expression == "15 4 * * 1-5" and str(dag.timetable.timezone) == "UTC"
    assert dag.catchup is False and dag.max_active_runs == 2
    assert dag.dagrun_timeout == timedelta(minutes=300) and dag.on_failure_callback
    assert {"rlaif", "nightly"} <= set(dag.tags) and "promote" in dag.description
    for task_id in ("baseline_eval", "train", "evaluate", "promote_if_better"):  # the tasks that load models
        task = dag.get_task(task_id)
        assert (task.queue, task.pool) == ("gpu-a100", "a100")
    for task_id in ("prepare_dataset", "register", "report"):
        assert (dag.get_task(task_id).queue, dag.get_task(task_id).pool) == ("default", "default_pool")
    assert dag.get_task("train").execution_timeout == timedelta(minutes=90)
    for task_id in ("baseline_eval", "evaluate", "promote_if_better"):
        assert dag.get_task(task_id).execution_timeout == timedelta(minutes=20)
    for task in dag.tasks:
        assert task.retries == 3
        assert task.retry_delay == timedelta(minutes=2)
        assert task.retry_exponential_backoff > 1


def test_config_errors_fail_at_once_other_errors_retry(dag):
    from airflow.sdk.definitions.retry_policy import RetryAction

    from rlaif_tasks.errors import RlaifError

    policy = dag.get_task("train").retry_policy
    assert policy.evaluate(RlaifError("train.steps is -1", "set it to 1"), try_number=1, max_tries=4).action == RetryAction.FAIL
    assert policy.evaluate(RuntimeError("CUDA out of memory"), try_number=1, max_tries=4).action == RetryAction.DEFAULT


def test_trigger_form_params(dag):
    from airflow.sdk.exceptions import ParamValidationError

    params = dag.params
    assert set(params) == {"config", "algorithm", "steps", "learning_rate", "policy", "reward", "set"}
    for name in params:
        assert params.get_param(name).description
    assert params.get_param("steps").description.endswith("empty: from the config (10).")  # the value the form would leave in place
    assert params.get_param("reward").description.endswith("empty: from the config (jigsaw-bilstm).")
    assert params["steps"] is None and params["algorithm"] is None
    assert params.get_param("algorithm").schema["values_display"][None] == "(from the config)"  # not a bare "null"
    home = Path(dag.params["config"]).parent
    accepted = {
        "steps": 5, "algorithm": "grpo", "learning_rate": 1e-5, "policy": str(home / "rlaif" / "models" / "llama"),
        "reward": "models:/rlaif-dagtest-policy-reward@champion", "set": ["train.batch_size=8", "reward.model=hatesonar", ""],
    }
    for name, value in accepted.items():
        assert copy.deepcopy(params.get_param(name)).resolve(value=value) == value
    refused = {
        "steps": 0, "algorithm": "sft", "learning_rate": 0, "config": "", "policy": "/models/llama", "reward": "python:os:system",
    }
    for name, value in refused.items():
        with pytest.raises(ParamValidationError):
            copy.deepcopy(params.get_param(name)).resolve(value=value)
    for name, value in (("policy", "meta-llama/Meta-Llama-3.1-8B"), ("reward", "models:/someone-elses-model@champion"), ("set", ["gate.require=[]"])):
        with pytest.raises(ParamValidationError):
            copy.deepcopy(params.get_param(name)).resolve(value=value)


def test_bad_trigger_conf_is_refused_before_a_run_exists(dag):
    """The check create_dagrun makes on the stored DAG: its params merged with the trigger's conf, validated."""
    from airflow.sdk.exceptions import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    params = DagSerialization.from_dict(DagSerialization.to_dict(dag)).params
    home = Path(dag.params["config"]).parent
    assert params.deep_merge({}).validate()["config"] == str(home / "dagtest.yaml")  # the default, outside every root
    for conf in (
        {"config": "configs/demo.yaml", "steps": 5, "algorithm": "grpo"},
        {"config": str(ROOT / "configs" / "demo.yml")},
        {"config": str(home / "rlaif" / "nightly" / "big.yaml")},
        {"config": str(home / "team-b" / "x.yaml")},
    ):
        assert params.deep_merge(conf).validate()["config"] == conf["config"]
    for conf in (
        *({"set": [forbidden]} for forbidden in FORBIDDEN_SETS),
        {"set": ["train.steps=2", "tracking.tracking_uri=http://elsewhere:5000"]},
        {"policy": "meta-llama/Meta-Llama-3.1-8B"},
        {"reward": "python:os:system"},
        {"steps": -1},
        {"algorithm": "sac"},
        {"config": "/etc/passwd"},
        {"config": "../outside.yaml"},
        {"config": str(ROOT / "configs" / ".." / ".." / "outside.yaml")},
        {"config": str(home / "other.yaml")},  # beside the default, but not it
        {"config": str(home / "team-c" / "x.yaml")},
        {"config": "configs/demo.yaml\n"},
        {"config": "configs/demo.json"},
    ):
        with pytest.raises(ParamValidationError, match=f"param {next(iter(conf))}"):
            params.deep_merge(conf).validate()


def test_params_become_config_overrides_and_empty_means_from_the_config(dag):
    module = sys.modules[dag.get_task("prepare_dataset").python_callable.__module__]
    from rlaif_tasks.config import load_config
    from rlaif_tasks.errors import RlaifError

    params = {"config": "configs/demo.yaml", "algorithm": "", "steps": 3, "learning_rate": None, "policy": None,
              "reward": "hatesonar", "set": ["train.batch_size=8", " generation.max_new_tokens = 12", ""]}
    path = module.resolve_config_path(params["config"])
    overrides = module.trigger_overrides(params, module.OVERRIDE_PARAMS, path)
    assert overrides == {"train.steps": 3, "reward.model": "hatesonar", "train.batch_size": 8, "generation.max_new_tokens": 12}
    config = load_config(path, overrides)
    assert (config.train.steps, config.train.batch_size, config.reward.model, config.train.algorithm) == (3, 8, "hatesonar", "ppo")
    with pytest.raises(RlaifError, match=r"\['gate.min_improvement'\].*decide trust"):
        module.trigger_overrides({**params, "set": [" gate.min_improvement = 0.1"]}, module.OVERRIDE_PARAMS, path)
    # the form's learning rate is the one the night's algorithm trains at: the demo config sets PPO's and DPO's own
    for algorithm, key in ((None, "train.ppo_learning_rate"), ("grpo", "train.learning_rate"), ("dpo", "train.dpo_learning_rate")):
        form = {**params, "algorithm": algorithm, "learning_rate": 1e-4, "set": []}
        overrides = module.form_overrides(form, path)
        assert overrides == {"train.steps": 3, "reward.model": "hatesonar", key: 1e-4, **({"train.algorithm": algorithm} if algorithm else {})}
        assert load_config(path, overrides).train.rate() == 1e-4
    assert module.learning_rate_key({**params, "set": ["train.algorithm=dpo"]}, path) == "train.dpo_learning_rate"  # set's algorithm counts too
    assert module.resolve_config_path("configs/demo.yaml") == str(ROOT / "configs" / "demo.yaml")


def test_parsing_in_a_fresh_process_is_cheap(tmp_path):
    """The DAG processor parses this file often: no torch, transformers or mlflow, and the demo config's schedule."""
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        "dag = bag.dags['rlaif_nightly']\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'mlflow', 'peft', 'trl', 'pandas', 'datasets') if m in sys.modules)\n"
        "print(json.dumps({'errors': bag.import_errors, 'heavy': heavy, 'schedule': dag.timetable.expression,\n"
        "                  'queue': dag.get_task('train').queue, 'pool': dag.get_task('train').pool,\n"
        "                  'red_team': [bag.dags['red_team'].timetable.expression, [o.uri for o in bag.dags['red_team'].get_task('publish').outlets]]}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RLAIF_DAG_CONFIG"}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"errors": {}, "heavy": [], "schedule": "0 2 * * *", "queue": "gpu", "pool": "gpu",
                      "red_team": ["30 0 * * *", ["rlaif://demo/red-team"]]}  # red_team (issue 21) parses as cheaply, before the nightly run


def test_every_compose_service_runs_a_component_of_service_sh():
    """What the containers run is what the Celery topology test starts: scripts/service.sh COMPONENT."""
    import re

    import yaml

    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "/opt/rlaif/scripts/service.sh"]' in dockerfile
    script = (ROOT / "scripts" / "service.sh").read_text()
    known = set(re.findall(r"^    ([a-z-]+)\)$", script, re.M)) | {"mlflow", "mlflow-init"}
    ours = {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("rlaif-airflow")}
    commands = {name: svc["command"] for name, svc in ours.items()}
    assert {c[0] for c in commands.values()} == {"init", "api-server", "scheduler", "dag-processor", "triggerer", "worker-default", "worker-gpu", "mlflow", "mlflow-init"}
    assert all(len(c) == 1 and c[0] in known for c in commands.values()), commands
    unknown = subprocess.run(["bash", str(ROOT / "scripts" / "service.sh"), "no-such-component"], capture_output=True, text=True, env={**os.environ, "VENV": str(Path(sys.executable).parent.parent)})
    assert unknown.returncode == 2 and "worker-gpu" in unknown.stderr


def test_failure_message_names_the_queue_no_worker_serves_and_the_command():
    from rlaif_tasks.stages.nightly import explain_failure

    queues = dict.fromkeys(STAGES, "default") | dict.fromkeys(["baseline_eval", "train", "evaluate", "promote_if_better"], "gpu")
    pools = {t: "gpu" if q == "gpu" else "default_pool" for t, q in queues.items()}
    states = {"prepare_dataset": "success"} | dict.fromkeys(STAGES[1:], "skipped")
    message = explain_failure("timed_out", states, queues, pools, 480)
    assert "before task baseline_eval finished" in message and "queue 'gpu'" in message and "pool 'gpu'" in message
    assert "scripts/service.sh worker-gpu" in message and "480 min" in message
    states = dict.fromkeys(STAGES[:4], "success") | {"register": "skipped", "promote_if_better": None, "report": None}
    assert "task register" in explain_failure("timed_out", states, queues, pools, 60) and "worker-default" in explain_failure("timed_out", states, queues, pools, 60)
    states = dict.fromkeys(STAGES[:2], "success") | {"train": "failed"} | dict.fromkeys(STAGES[3:], "upstream_failed")
    assert explain_failure("task_failure", states, queues, pools, 60).startswith("task train failed")


def test_compose_publishes_on_loopback_and_refuses_to_start_without_its_secrets():
    """Issue 20: no port open to the network by default, and an unset password stops `docker compose up` with a message."""
    import re

    import yaml

    text = (ROOT / "docker" / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    published = [port for svc in compose["services"].values() for port in svc.get("ports", [])]
    assert published and all(str(port).startswith("127.0.0.1:") for port in published), published
    uses = re.findall(r"\$\{([A-Z_]+)([^}]*)\}", text)
    secrets = {(name, rest.startswith(":?")) for name, rest in uses if re.search("PASSWORD|SECRET|FERNET", name)}
    assert {"POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "MLFLOW_ADMIN_PASSWORD"} <= {name for name, _ in secrets}
    assert [name for name, required in secrets if not required] == []  # each secret is ${VAR:?...}, never empty by default


def test_warm_start_imports_the_libraries_quietly_then_runs_the_airflow_command():
    """Celery workers and the LocalExecutor's scheduler start through rlaif_tasks.warm_start: the preloaded modules are imported before
    Airflow's command runs (so forked tasks inherit them), MLflow without its own stderr handler (a task log would show
    its INFO lines as errors), and the Airflow command's output and exit code are its own."""
    probe = (
        "import sys, logging, runpy\n"
        "sys.argv = ['warm_start', 'version']\n"
        "import airflow.__main__ as am\n"
        "real = am.main\n"
        "def main():\n"
        "    print('LOADED', sorted(m for m in ('mlflow', 'pandas', 'torch') if m in sys.modules), flush=True)\n"
        "    print('MLFLOW_HANDLERS', len(logging.getLogger('mlflow').handlers), flush=True)\n"
        "    return real()\n"
        "am.main = main\n"
        "runpy.run_module('rlaif_tasks.warm_start', run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_CONFIGURE_LOGGING"} | {"RLAIF_PRELOAD": "mlflow,pandas,no_such_module"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED ['mlflow', 'pandas']" in done.stdout  # torch was not asked for: RLAIF_PRELOAD decides
    assert "MLFLOW_HANDLERS 0" in done.stdout
    assert importlib.metadata.version("apache-airflow") in done.stdout
    assert "rlaif warm start: preloaded mlflow, pandas in" in done.stderr
