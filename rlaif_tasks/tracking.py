"""MLflow tracking of alignment runs: one MLflow run per DAG run, safe to log into again on retry.

Where runs go, first match wins:

    tracking.tracking_uri                 e.g. http://mlflow:5000 or sqlite:////srv/mlflow.db
    $MLFLOW_TRACKING_URI
    sqlite:///<root>/.mlflow/mlflow.db    embedded; artefacts in <root>/.mlflow/artifacts,
                                          <root> = $RLAIF_HOME or the current directory

A DAG run finds its MLflow run again by a tag derived from (dag id, DAG run id), so a retried or
cleared Airflow task logs into the same run. Every logging helper here only adds what is missing:
training steps already in the metric history, evaluation metrics with the same value and tables
that exist are skipped, so re-running a stage never duplicates history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from rlaif_tasks import __version__, stores
from rlaif_tasks.config import RunConfig, TrackingConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import resolve_device, resolve_dtype
from rlaif_tasks.models.fingerprint import fingerprint
from rlaif_tasks.tags import TAG_CONFIG_HASH, TAG_DAG_ID, TAG_DAG_RUN_ID, TAG_JUDGE_REVISIONS, TAG_JUDGES, TAG_RUN_KEY

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from mlflow import MlflowClient

log = logging.getLogger(__name__)

TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
TAG_RUN_DESCRIPTION = "mlflow.note.content"
"""The run's description in the MLflow UI (Markdown): the verdict and a link to the Airflow DAG run."""
TRAINING_VIEW = "custom_model_development"
"""The MLflow UI opens an experiment with this kind on its runs table, not on traces."""
UI_TRAINING_QUERY = "?workflowType=machine_learning"
"""MLflow 3.17's UI starts in its GenAI workflow whatever the experiment's kind; links carry this to open in model training."""

_MAX_PARAM_LENGTH = 6000
_SAFE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. /")


# -- where --------------------------------------------------------------------------------------


def _tracking_config(config: RunConfig | TrackingConfig | None) -> TrackingConfig:
    if config is None:
        return TrackingConfig()
    return config.tracking if isinstance(config, RunConfig) else config


def resolve_tracking_uri(config: RunConfig | TrackingConfig | None = None) -> str:
    return stores.tracking_uri(_tracking_config(config).tracking_uri)


def resolve_artifact_location(config: RunConfig | TrackingConfig | None = None) -> str | None:
    """Artefact root for a new experiment; None lets the tracking server choose."""
    cfg = _tracking_config(config)
    if cfg.artifact_location:
        location = cfg.artifact_location
        return location if "://" in location else Path(location).expanduser().resolve().as_uri()
    if resolve_tracking_uri(cfg) == stores.embedded_tracking_uri():
        artifacts = stores.embedded_mlflow_root() / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        return artifacts.as_uri()
    return None


def connect(config: RunConfig | TrackingConfig | None = None) -> "MlflowClient":
    """A client on the configured store; also points MLflow's module-level API (models:/ URIs) there."""
    import mlflow
    from mlflow import MlflowClient

    configured = _tracking_config(config).tracking_uri
    stores.use_tracking_uri(configured)
    uri = stores.tracking_uri(configured)
    user_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if user_env is None:  # MLflow exports the URI; keep $MLFLOW_TRACKING_URI meaning what the user set
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_env
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_name(config: RunConfig) -> str:
    return config.tracking.experiment.format(name=config.name)


def registered_model_name(config: RunConfig) -> str:
    return config.tracking.registered_model.format(name=config.name)


def ensure_experiment(client: "MlflowClient", config: RunConfig) -> str:
    from mlflow.exceptions import MlflowException

    name = experiment_name(config)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=resolve_artifact_location(config), tags={TAG_EXPERIMENT_KIND: TRAINING_VIEW})
        except MlflowException:  # created meanwhile by a parallel task
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise RlaifError(
            f"the MLflow experiment {name!r} ({experiment.experiment_id}) is deleted",
            f"restore it (`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or set tracking.experiment to a new name",
        )
    if TAG_EXPERIMENT_KIND not in experiment.tags:  # made by an older version: open it on the training view too
        client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, TRAINING_VIEW)
    return experiment.experiment_id


# -- identity -----------------------------------------------------------------------------------


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def eval_settings_hash(config: RunConfig) -> str:
    """What makes two evaluations comparable, besides the prompts: sampling, judges, evaluation seed (not the training seed),
    and the dtype the policies ran in on this machine (evaluation.dtype resolved, so `auto` on two machines can differ)."""
    d = config.to_dict()
    evaluation = {**d["evaluation"], "dtype": resolve_dtype(config.evaluation.dtype, config.model.dtype, resolve_device(config.device))}
    if evaluation["dtype"] == config.model.dtype:  # the policies' own dtype, as before the key existed: the hash stays what it was
        evaluation.pop("dtype")
    return _hash({"generation": d["generation"], "evaluation": evaluation})


def judge_fingerprints(config: RunConfig) -> dict[str, str | None]:
    """Each evaluation judge's resolved revision (models/fingerprint.py): equal names can be different models."""
    return {j.display_name: fingerprint(j.model) for j in config.evaluation.judges}


def judge_tags(config: RunConfig) -> dict[str, str]:
    """`rlaif.judges` (the fingerprints as JSON, for people) and `rlaif.judges_sha256` (for comparing).

    The hash is left out when a judge's revision is unknown, since an unknown revision cannot vouch
    that two evaluations used the same judge.
    """
    prints = judge_fingerprints(config)
    tags = {TAG_JUDGE_REVISIONS: json.dumps(prints, sort_keys=True)}
    if all(prints.values()):
        tags[TAG_JUDGES] = _hash(prints)
    return tags


def run_key(dag_id: str, dag_run_id: str) -> str:
    """A tag value that finds the DAG run's MLflow run whatever characters the ids contain."""
    return hashlib.sha256(f"{dag_id}\x00{dag_run_id}".encode()).hexdigest()[:32]


def code_version() -> str:
    """The git commit of the source tree (with `-dirty` when it has local changes), else the package version."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            status = subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
            )
            return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"rlaif-tasks=={__version__}"


def find_or_create_run(
    client: "MlflowClient", config: RunConfig, *, dag_id: str, dag_run_id: str, tags: dict[str, str] | None = None
) -> str:
    """The MLflow run of this DAG run: found by its tags, created on first call; returns its id.

    An existing run recorded with another config hash is an error: two recipes would share one record.
    """
    from mlflow.entities import ViewType

    experiment_id = ensure_experiment(client, config)
    key = run_key(dag_id, dag_run_id)
    wanted = {TAG_DAG_ID: dag_id, TAG_DAG_RUN_ID: dag_run_id, TAG_RUN_KEY: key, TAG_CONFIG_HASH: config.config_hash(), **(tags or {})}
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_RUN_KEY}` = '{key}'", run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time ASC"], max_results=10,
    )
    if not found:
        run = client.create_run(experiment_id, run_name=dag_run_id, tags=wanted)
        log.info("created MLflow run %s for DAG run %s/%s", run.info.run_id, dag_id, dag_run_id)
        return run.info.run_id
    run = found[0]
    recorded = run.data.tags.get(TAG_CONFIG_HASH)
    if recorded and recorded != wanted[TAG_CONFIG_HASH]:
        raise RlaifError(
            f"MLflow run {run.info.run_id} of DAG run {dag_run_id} was recorded with config {recorded}, this config is {wanted[TAG_CONFIG_HASH]}",
            "start a new DAG run for a changed config (or delete that MLflow run and the run folder to redo this one)",
        )
    for name, value in wanted.items():
        if run.data.tags.get(name) != value:
            client.set_tag(run.info.run_id, name, value)
    log.info("reusing MLflow run %s of DAG run %s/%s", run.info.run_id, dag_id, dag_run_id)
    return run.info.run_id


# -- params and metrics -------------------------------------------------------------------------


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts and lists as dotted keys (`evaluation.judges.0.model`) with string values."""
    if isinstance(obj, dict):
        items: Iterable = obj.items()
    elif isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = ((str(i), v) for i, v in enumerate(obj))
    else:
        text = json.dumps(obj) if isinstance(obj, list) else str(obj)
        return {prefix: text[:_MAX_PARAM_LENGTH]}
    out: dict[str, str] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def log_params(client: "MlflowClient", run_id: str, config: RunConfig) -> int:
    """The flattened config as params; already-logged keys are left alone (MLflow params are write-once)."""
    from mlflow.entities import Param

    params = flatten({k: v for k, v in config.to_dict().items() if k != "run_dir"})
    existing = client.get_run(run_id).data.params
    changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
    if changed:
        log.warning("MLflow run %s keeps its earlier values of %s", run_id, ", ".join(changed))
    new = [Param(k, v) for k, v in params.items() if k not in existing]
    for start in range(0, len(new), 100):
        client.log_batch(run_id, params=new[start : start + 100])
    return len(new)


def metric_name(*parts: str) -> str:
    """Join parts with '/', replacing characters MLflow rejects in metric names."""
    return "/".join("".join(c if c in _SAFE_NAME_CHARS else "_" for c in str(p)) for p in parts)


def _log_metrics(client: "MlflowClient", run_id: str, metrics: list) -> None:
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


class TrainingMetricsLogger:
    """Per-step training metrics (`train/<key>`), each (key, step) logged at most once per run.

    Use `log(rows)` for a finished metrics.jsonl and as `train(..., on_step=logger)` for live curves;
    both skip steps the run's history already holds, so a retried task adds only the new steps.
    """

    def __init__(self, client: "MlflowClient", run_id: str, prefix: str = "train"):
        self.client, self.run_id, self.prefix = client, run_id, prefix
        self._logged: dict[str, set[int]] = {}

    def _steps(self, key: str) -> set[int]:
        if key not in self._logged:
            self._logged[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        return self._logged[key]

    def log(self, rows: Iterable[dict]) -> int:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for row in rows:
            step = int(row["step"])
            for name, value in row.items():
                if name == "step" or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                key = metric_name(self.prefix, name)
                steps = self._steps(key)
                if step not in steps:
                    metrics.append(Metric(key, float(value), now, step))
                    steps.add(step)
        _log_metrics(self.client, self.run_id, metrics)
        return len(metrics)

    def __call__(self, row: dict) -> None:
        self.log([row])


def log_metrics_once(client: "MlflowClient", run_id: str, metrics: dict[str, float], step: int = 0) -> int:
    """Log metrics whose latest value in the run is missing or different; returns how many were logged."""
    from mlflow.entities import Metric

    def same(a: float, b: float) -> bool:
        return (math.isnan(a) and math.isnan(b)) or a == b

    latest = client.get_run(run_id).data.metrics
    now = int(time.time() * 1000)
    new = [Metric(k, float(v), now, step) for k, v in metrics.items() if k not in latest or not same(latest[k], float(v))]
    _log_metrics(client, run_id, new)
    return len(new)


def evaluation_metrics(label: str, summary: dict) -> dict[str, float]:
    """`eval/<label>/<judge>/{mean,std,frac_toxic}` from an evaluation summary (eval/<label>.json), and
    `eval/<label>/<judge>/{expected_max,toxicity_probability}` where the summary has them."""
    return {
        metric_name("eval", label, judge, stat): float(stats[stat])
        for judge, stats in summary["judges"].items()
        for stat in ("mean", "std", "frac_toxic", *RTP_METRICS)
        if stat in stats
    }


RTP_METRICS = ("expected_max", "toxicity_probability")
"""The RealToxicityPrompts metrics (evaluation/rtp.py METRICS; not imported, to keep this module light)."""


def comparison_metrics(judges: dict[str, dict[str, float]]) -> dict[str, float]:
    """`improvement/<judge>/{mean,std}`: the relative drop `(before - after) / before` per judge; where the rows have
    them (report.json), `improvement/<judge>/{expected_max,toxicity_probability}` with `_lower` and `_upper` bounds of
    their paired-bootstrap interval, infinite bounds left out."""
    metrics = {
        metric_name("improvement", judge, stat): float(row[f"{stat}_improvement"])
        for judge, row in judges.items()
        for stat in ("mean", "std")
    }
    for judge, row in judges.items():
        for stat in RTP_METRICS:
            for suffix in ("", "_lower", "_upper"):
                value = row.get(f"{stat}_improvement{suffix}")
                if value is not None and not math.isinf(value):
                    metrics[metric_name("improvement", judge, stat + suffix)] = float(value)
    return metrics


# -- artefacts ----------------------------------------------------------------------------------


def artifact_exists(client: "MlflowClient", run_id: str, artifact_file: str) -> bool:
    folder = os.path.dirname(artifact_file) or None
    return any(f.path == artifact_file for f in client.list_artifacts(run_id, folder))


def log_samples_table(client: "MlflowClient", run_id: str, samples: "pd.DataFrame", artifact_file: str) -> bool:
    """The samples as an MLflow table, once: MLflow appends to an existing table file, so a retry must not log again.

    The `query` column (the prompt as the policy saw it) is left out when it is the prompt itself,
    i.e. when no chat template wrapped it.
    """
    if artifact_exists(client, run_id, artifact_file):
        return False
    table = samples.reset_index(drop=True)
    if {"prompt", "query"} <= set(table.columns) and table["prompt"].equals(table["query"]):
        table = table.drop(columns="query")
    client.log_table(run_id, data=table, artifact_file=artifact_file)
    return True


def training_figure(rows: list[dict]) -> "Figure":
    """Reward (mean +- std) and KL to the reference per training step; for DPO its implicit reward margin and loss."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    steps = [r["step"] for r in rows]
    reward_ax, right_ax = fig.subplots(1, 2)
    if any("dpo/reward_margin" in r for r in rows):
        reward_ax.plot(steps, [r.get("dpo/reward_margin") for r in rows], marker=".", color="tab:blue")
        reward_ax.set(title="implicit reward margin, chosen - rejected", xlabel="step")
        right_ax.plot(steps, [r.get("loss") for r in rows], marker=".", color="tab:red")
        right_ax.set(title="DPO loss", xlabel="step")
    else:
        mean = [r.get("reward/mean") for r in rows]
        std = [r.get("reward/std") or 0.0 for r in rows]
        reward_ax.plot(steps, mean, marker=".", color="tab:blue")
        if all(m is not None for m in mean):
            reward_ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2, color="tab:blue")
        reward_ax.set(title="reward (mean ± std)", xlabel="step")
        right_ax.plot(steps, [r.get("kl") for r in rows], marker=".", color="tab:red")
        right_ax.set(title="KL to the reference (nats / sequence)", xlabel="step")
    for ax in (reward_ax, right_ax):
        ax.grid(alpha=0.3)
    return fig


def toxicity_figure(judges: dict[str, dict[str, float]], before: str = "baseline", after: str = "final") -> "Figure":
    """Mean toxicity (+- std) before and after training, one pair of bars per judge."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(judges)
    fig = Figure(figsize=(max(4.0, 1.8 * len(names) + 2), 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = range(len(names))
    width = 0.38
    for offset, when, label, color in ((-width / 2, "before", before, "tab:gray"), (width / 2, "after", after, "tab:green")):
        ax.bar(
            [i + offset for i in x], [judges[n][f"mean_{when}"] for n in names], width,
            yerr=[judges[n][f"std_{when}"] for n in names], capsize=3, label=label, color=color,
        )
    ax.set_xticks(list(x), names)
    ax.set(title="toxicity on the held-out prompts", ylabel="mean toxicity")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return fig


def log_figure(client: "MlflowClient", run_id: str, fig: "Figure", artifact_file: str) -> None:
    client.log_figure(run_id, fig, artifact_file)


# -- links and inputs ---------------------------------------------------------------------------


def log_prompt_datasets(client: "MlflowClient", run_id: str, run_dir: Path, manifest: dict) -> int:
    """The run's prepared prompt splits as MLflow dataset inputs (the UI's Datasets column); once per split.

    The source is the split's parquet file in the run folder, the exact rows used (`data.source`,
    e.g. `bundled:detox-prompts`, is no location MLflow can resolve, and is logged as a param anyway).
    """
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    from rlaif_tasks.data import load_prompts_split

    have = {(d.dataset.name, d.dataset.digest) for d in client.get_run(run_id).inputs.dataset_inputs}
    inputs = []
    for split in ("train", "test"):
        name, digest = f"prompts-{split}", f"{manifest['content_sha256'][:16]}-{split}"
        if (name, digest) in have:
            continue
        frame = load_prompts_split(run_dir, split)
        with warnings.catch_warnings():
            # MLflow warns that a local path "can be interpreted in multiple ways" (two file sources match it),
            # and that an integer column (prompt length) cannot hold missing values: neither is actionable here.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
            dataset = mlflow.data.from_pandas(frame, source=str(Path(run_dir) / "data" / f"{split}.parquet"), name=name, digest=digest)
            entity = dataset._to_mlflow_entity()  # infers the schema: the integer-column hint again
        inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training" if split == "train" else "evaluation")]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    return len(inputs)


def run_url(client: "MlflowClient", run_id: str) -> str | None:
    """The MLflow UI page of a run, when the store is a tracking server (not a local file)."""
    uri = client._tracking_client.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{client.get_run(run_id).info.experiment_id}/runs/{run_id}{UI_TRAINING_QUERY}"


def airflow_run_url(dag_id: str, dag_run_id: str) -> str | None:
    """The Airflow UI page of a DAG run, from the api-server's public URL ($AIRFLOW__API__BASE_URL)."""
    from urllib.parse import quote

    base = os.environ.get("AIRFLOW__API__BASE_URL")
    return f"{base.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(dag_run_id, safe='')}" if base else None
