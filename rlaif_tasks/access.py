"""Least privilege in production: the MLflow worker user and its grants, the Airflow users and their roles.

    python -m rlaif_tasks.access mlflow-init     # scripts/service.sh mlflow-init: the one step that uses MLflow's admin
    python -m rlaif_tasks.access airflow-users   # scripts/service.sh init, under Airflow's FAB auth manager

`mlflow-init` logs in as MLflow's admin (MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD) and
makes sure that the worker user (MLFLOW_WORKER_USERNAME, default `rlaif-worker`, password
MLFLOW_WORKER_PASSWORD) exists with that password, is no admin, and holds MANAGE on what the run
configs record to and nothing else: each config's experiment (created here when missing) and its
two registered models, the policy (`tracking.registered_model`) and `<policy>-reward`. MANAGE, not
EDIT: the rlaif_maintenance DAG deletes expired versions and their logged models, and only MANAGE
may delete. With the server's `default_permission = NO_PERMISSIONS` (scripts/service.sh) the worker
then sees no other experiment or model. An optional reader (MLFLOW_READER_USERNAME, default
`rlaif-reader`, created when MLFLOW_READER_PASSWORD is set) gets READ on the same resources: it can
look, never log or move an alias. The configs are $RLAIF_DAG_CONFIG and those in
$RLAIF_MLFLOW_CONFIGS (separated by spaces or commas). MLflow without workspaces still lets any
logged-in user create a new experiment or registered model (owning it); this limits what exists.

`airflow-users` creates or updates the users of the FAB auth manager: `admin` (role Admin, password
RLAIF_AIRFLOW_PASSWORD, required), `op` (Op: triggers, clears and marks runs; RLAIF_AIRFLOW_OP_PASSWORD)
and `viewer` (Viewer: reads only; RLAIF_AIRFLOW_VIEWER_PASSWORD), each only when its password is set.

Every password is read from the environment, never from a command line (`airflow users create
--password` would put it in /proc/<pid>/cmdline), and re-applied at each run, so changing the
variable and running the step again rotates it. Both steps are idempotent.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from rlaif_tasks import tracking
from rlaif_tasks.config import REWARD_MODEL_SUFFIX, RunConfig, load_config
from rlaif_tasks.errors import RlaifError

WORKER_PERMISSION = "MANAGE"
READER_PERMISSION = "READ"
AIRFLOW_USERS = (("admin", "Admin", "RLAIF_AIRFLOW_PASSWORD"), ("op", "Op", "RLAIF_AIRFLOW_OP_PASSWORD"),
                 ("viewer", "Viewer", "RLAIF_AIRFLOW_VIEWER_PASSWORD"))
"""(user name, FAB role, the environment variable holding the password)."""


def _required(env: dict[str, str], name: str, what: str) -> str:
    value = env.get(name)
    if not value:
        raise RlaifError(f"{name} is not set", f"set {name}: {what}")
    return value


def project_configs(env: dict[str, str] | None = None) -> list[RunConfig]:
    """The run configs whose experiment and registered models the worker may use: $RLAIF_DAG_CONFIG and $RLAIF_MLFLOW_CONFIGS."""
    env = os.environ if env is None else env
    paths = [env.get("RLAIF_DAG_CONFIG") or "configs/demo.yaml", *re.split(r"[\s,]+", env.get("RLAIF_MLFLOW_CONFIGS", "").strip())]
    configs, seen = [], set()
    for path in filter(None, paths):
        resolved = Path(path).expanduser().resolve()
        if resolved not in seen:
            seen.add(resolved)
            configs.append(load_config(resolved))
    return configs


def project_resources(configs: list[RunConfig]) -> tuple[list[RunConfig], list[str]]:
    """The configs (one per experiment name) and every registered model they use: the policy and `<policy>-reward`."""
    by_experiment: dict[str, RunConfig] = {}
    models: list[str] = []
    for config in configs:
        by_experiment.setdefault(tracking.experiment_name(config), config)
        policy = tracking.registered_model_name(config)
        models += [m for m in (policy, f"{policy}{REWARD_MODEL_SUFFIX}") if m not in models]
    return list(by_experiment.values()), models


def _wait_for_server(uri: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RlaifError(f"the MLflow server at {uri} did not answer /health within {timeout:.0f} s", "start it first: scripts/service.sh mlflow")
        time.sleep(2)


def _ensure_user(auth, username: str, password: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        auth.create_user(username, password)
        done = "created"
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.update_user_password(username, password)
        done = "password set"
    if auth.get_user(username).is_admin:
        auth.update_user_admin(username, False)
        done += ", admin flag removed"
    return done


def _grant(auth, username: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Exactly `permission` for `username` on the resource (MLflow refuses a second grant: an existing one is replaced)."""
    from mlflow.exceptions import MlflowException

    if auth.get_user_permission(username, resource_type, resource_id).permission == permission:
        return
    try:
        auth.grant_user_permission(username, resource_type, resource_id, permission)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(username, resource_type, resource_id)
        auth.grant_user_permission(username, resource_type, resource_id, permission)


def mlflow_init(env: dict[str, str] | None = None, *, wait_s: float = 180.0) -> dict:
    """The worker (and optional reader) user of the MLflow server at $MLFLOW_TRACKING_URI with its grants; returns what was done."""
    env = dict(os.environ if env is None else env)
    uri = _required(env, "MLFLOW_TRACKING_URI", "the MLflow server to set up, e.g. http://mlflow:5000")
    admin = env.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
    admin_password = _required(env, "MLFLOW_AUTH_ADMIN_PASSWORD", "the password the MLflow server's admin was created with")
    users = {env.get("MLFLOW_WORKER_USERNAME") or "rlaif-worker": (
        _required(env, "MLFLOW_WORKER_PASSWORD", "the password the Airflow workers log in to MLflow with (12 characters at least)"), WORKER_PERMISSION)}
    if env.get("MLFLOW_READER_PASSWORD"):
        users.setdefault(env.get("MLFLOW_READER_USERNAME") or "rlaif-reader", (env["MLFLOW_READER_PASSWORD"], READER_PERMISSION))
    if admin in users:
        raise RlaifError(f"the MLflow worker or reader user is the admin {admin!r}", "give MLFLOW_WORKER_USERNAME (and MLFLOW_READER_USERNAME) a name of its own")
    configs, models = project_resources(project_configs(env))
    for config in configs:
        if tracking.resolve_tracking_uri(config).rstrip("/") != uri.rstrip("/"):
            raise RlaifError(
                f"the run config {config.name!r} records to {tracking.resolve_tracking_uri(config)}, not to {uri}",
                "run mlflow-init with MLFLOW_TRACKING_URI of that server, or leave tracking.tracking_uri unset in the config",
            )

    _wait_for_server(uri, wait_s)
    from mlflow.server import get_app_client
    from mlflow.tracking import MlflowClient

    # The admin's login goes to this process's environment only, where MLflow's clients read it.
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = admin, admin_password
    auth = get_app_client("basic-auth", tracking_uri=uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiments = {tracking.experiment_name(c): tracking.ensure_experiment(client, c) for c in configs}
    done = {}
    for username, (password, permission) in users.items():
        state = _ensure_user(auth, username, password)
        for experiment_id in experiments.values():
            _grant(auth, username, "experiment", experiment_id, permission)
        for model in models:  # granted by name: a model the worker registers later is covered too
            _grant(auth, username, "registered_model", model, permission)
        done[username] = {"user": state, "permission": permission, "experiments": experiments, "registered_models": models}
    return done


def fab_auth_manager(env: dict[str, str] | None = None) -> bool:
    """Whether Airflow runs the FAB auth manager (production), not the simple one (`make run`, `make up`)."""
    env = os.environ if env is None else env
    return env.get("AIRFLOW__CORE__AUTH_MANAGER", "").endswith("FabAuthManager")


def airflow_users(env: dict[str, str] | None = None) -> dict[str, str]:
    """The FAB auth manager's users admin / op / viewer with roles Admin / Op / Viewer and the passwords of the environment."""
    env = os.environ if env is None else env
    _required(env, "RLAIF_AIRFLOW_PASSWORD", "the password of the Airflow user admin")
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    logging.getLogger("airflow.providers.fab").setLevel(logging.WARNING)  # not a line per permission synced
    done = {}
    with get_application_builder() as appbuilder:
        appbuilder.add_permissions(update_perms=True)  # what `airflow sync-perm` does: the roles exist before users get them
        sm = appbuilder.sm
        sm.sync_roles()
        for username, role_name, variable in AIRFLOW_USERS:
            password = env.get(variable)
            if not password:
                continue
            role = sm.find_role(role_name)
            user = sm.find_user(username=username)
            if user is None:
                if not sm.add_user(username, username, role_name, f"{username}@rlaif.invalid", role, password):
                    raise RlaifError(f"could not create the Airflow user {username}", "see the messages above")
                done[username] = f"created with role {role_name}"
                continue
            if not sm.reset_password(user.id, password):
                raise RlaifError(f"could not set the password of the Airflow user {username}", "see the messages above")
            if [r.name for r in user.roles] != [role_name]:
                user.roles = [role]
                sm.update_user(user)
            done[username] = f"password set, role {role_name}"
    return done


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["mlflow-init"], ["airflow-users"]):
        print("usage: python -m rlaif_tasks.access mlflow-init|airflow-users (passwords from the environment only)", file=sys.stderr)
        return 2
    try:
        if argv == ["mlflow-init"]:
            for username, what in mlflow_init().items():
                print(f"mlflow-init: user {username} ({what['user']}): {what['permission']} on experiments "
                      f"{', '.join(f'{n} ({i})' for n, i in what['experiments'].items())} and registered models {', '.join(what['registered_models'])}",
                      file=sys.stderr)
        else:
            for username, what in airflow_users().items():
                print(f"airflow: user {username}: {what}", file=sys.stderr)
    except RlaifError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
