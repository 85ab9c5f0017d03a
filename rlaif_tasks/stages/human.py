"""Stage functions of the human_preferences DAG: people label pairs of the policy's responses in Airflow.

    prepare -> sample_pairs -> label (one HITL task per request: orchestration.LabelPair) -> collect (with prepare's refs)
                                                        --[rlaif-<name>-preferences: the labelled pairs]-->

`prepare` is ai_feedback_preferences' (run folder under the DAG id, MLflow run, the train split), after
the human_preferences settings are checked. `sample_pairs` takes `human_preferences.pairs` train prompts
(seeded by the run's seed), samples two responses to each from `model.policy`, drops pairs no one should
be asked about (the import's validation) and writes `human/batch.json`: the pairs, and who is asked
about which (`requests`). The mapped `label` tasks read their pair from that file (`label_request`)
and return a small record of the answer. `collect` turns the answers into a preferences folder like
the AI-feedback one (pairs.parquet + manifest.json, plus labels.parquet with every answer) and the asset
event's extra. The logic is rlaif_tasks.preferences.labelling's; no Airflow import here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable

from rlaif_tasks import tracking
from rlaif_tasks.atomic import atomic_path, write_json
from rlaif_tasks.config import config_roots, load_config
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import load_model, resolve_device
from rlaif_tasks.overrides import check_trigger_overrides
from rlaif_tasks.stages import preferences
from rlaif_tasks.stages.common import connect, finish_run, load_run
from rlaif_tasks.tags import TAG_PREFERENCES

log = logging.getLogger(__name__)

BATCH_FILE = Path("human") / "batch.json"
LABELS_FILE = "labels.parquet"
OPTIONS = ("A is better", "B is better", "Tie", "Both bad")
"""The answers a labeller picks from (rlaif_tasks.preferences.labelling.OPTIONS, repeated here so that parsing the DAG imports no pandas)."""


def prepare(
    config_path: str, overrides: dict, dag_id: str, dag_run_id: str, logical_date: str | None = None, *, asset_config: str | None = None,
) -> dict:
    """The run folder and MLflow run (preferences.prepare), once the labelling settings are known to work.

    A trigger's overrides are checked first (a trigger may set human_preferences.pairs, never who labels);
    then an empty batch or nobody to ask fails here, before anything is sampled or recorded.
    """
    from rlaif_tasks.preferences.labelling import check_labelling

    check_trigger_overrides(load_config(config_path), dict(overrides or {}), config_roots(), origin="this DAG run's form")
    h = load_config(config_path, overrides).human_preferences
    check_labelling(h.pairs, h.labellers, h.labels_per_pair, h.response_timeout_hours)
    return preferences.prepare(config_path, overrides, dag_id, dag_run_id, logical_date, asset_config=asset_config)


def _read_batch(run_dir: Path) -> dict:
    path = run_dir / BATCH_FILE
    if not path.is_file():
        raise RlaifError(f"{path} is missing: this run's pairs were not sampled", "run sample_pairs of this DAG run first (clear it and its downstream tasks)")
    return json.loads(path.read_text(encoding="utf-8"))


def sample_pairs(refs: dict) -> list[dict]:
    """Two responses of the policy to each of `human_preferences.pairs` train prompts, written to human/batch.json (kept on a retry).

    Returns the requests to map the HITL tasks over: one small reference ({"run_dir", "request"}) each.
    """
    config, run_dir = load_run(refs)
    h = config.human_preferences
    path = run_dir / BATCH_FILE
    if path.is_file():
        log.info("reusing the labelling batch %s", path)
        batch = _read_batch(run_dir)
    else:
        batch = _sample_batch(config, run_dir)
        write_json(path, batch)
    client, run_id = connect(config), refs["mlflow_run_id"]
    tracking.log_metrics_once(client, run_id, {"human/pairs_asked": float(len(batch["pairs"])), "human/requests": float(len(batch["requests"]))})
    log.info("%d pairs to label, %d request(s) to %s, %g h to answer", len(batch["pairs"]), len(batch["requests"]), ", ".join(h.labellers), h.response_timeout_hours)
    return [{"run_dir": str(run_dir), "request": r["request"]} for r in batch["requests"]]


def _sample_batch(config, run_dir: Path) -> dict[str, Any]:
    from rlaif_tasks.data import load_prompts_split
    from rlaif_tasks.generation import generate
    from rlaif_tasks.preferences.labelling import assign_requests, check_labelling, labelling_batch

    h, m = config.human_preferences, config.model
    check_labelling(h.pairs, h.labellers, h.labels_per_pair, h.response_timeout_hours)
    prompts = load_prompts_split(run_dir, "train")
    if prompts.empty:
        raise RlaifError(f"nothing to label: the train split of {run_dir} has no prompts", "check data.source and the prompt filters (data.min_prompt_tokens, max_prompt_tokens)")
    if len(prompts) < h.pairs:
        log.warning("human_preferences.pairs is %d, but the train split has %d prompts: asking about all of them", h.pairs, len(prompts))
    chosen = prompts.sample(n=min(h.pairs, len(prompts)), random_state=config.training_seed).reset_index(drop=True)
    policy = load_model(m.policy, kind="causal-lm", revision=m.revision, trust_remote_code=m.trust_remote_code, dtype=m.dtype, device=resolve_device(config.device))
    out = generate(policy.model, policy.tokenizer, chosen["query"].astype(str).tolist(), config.generation, num_samples=2, seed=config.training_seed)
    a, b = out.responses[0::2], out.responses[1::2]  # query-major: each prompt's two samples are neighbours
    candidates = chosen[["prompt", "query"]].assign(response_a=a, response_b=b)
    batch, report = labelling_batch(candidates, max_chars=config.preferences.max_chars, source=f"the labelling batch of {run_dir.name}")
    return {
        "policy": m.policy, "labellers": list(h.labellers), "labels_per_pair": h.labels_per_pair, "response_timeout_hours": h.response_timeout_hours,
        "report": report, "pairs": batch.to_dict(orient="records"),
        "requests": assign_requests(len(batch), h.labellers, h.labels_per_pair),
    }


def label_request(request: dict) -> dict:
    """What one `label` task asks: subject, Markdown body (the prompt and both responses), who may answer and for how long.

    `request` is {"run_dir", "request"} (sample_pairs' reference); the texts and the labellers come from
    the run folder, which the config file decided, not from the reference.
    """
    from rlaif_tasks.preferences.labelling import pair_markdown

    _, run_dir = load_run(request)
    batch = _read_batch(run_dir)
    asked = batch["requests"][int(request["request"])]
    pair = batch["pairs"][int(asked["pair"])]
    copies = batch["labels_per_pair"]
    subject = f"Pair {int(asked['pair']) + 1} of {len(batch['pairs'])}: which response is better?"
    if copies > 1:
        subject += f" (each pair goes to {copies} labellers)"
    return {
        "subject": subject, "body": pair_markdown(pair["prompt"], pair["response_a"], pair["response_b"]), "labellers": list(asked["labellers"]),
        "timeout_hours": float(batch["response_timeout_hours"]), "pair": int(asked["pair"]),
    }


def answered(request: dict, chosen_options, params_input, responded_by, responded_at) -> dict:
    """The small record a `label` task returns for an answer (preferences.labelling.answered)."""
    from rlaif_tasks.preferences.labelling import answered as record

    return record(request, chosen_options, params_input, responded_by, responded_at)


def unanswered(request: dict, reason: str = "timeout") -> dict:
    """The record of a `label` task whose response timeout passed without an answer."""
    from rlaif_tasks.preferences.labelling import unanswered as record

    return record(request, reason)


def collect(refs: dict, answers: Iterable[dict]) -> dict:
    """The answers as a preferences folder (pairs.parquet, manifest.json, labels.parquet), logged, and the asset event's extra.

    Ties, both-bad answers, disagreements and unanswered requests are counted in the manifest, the MLflow
    run and the log; an answer from someone not assigned is not recorded. When no answer made a pair the
    task fails with what the answers were, and nothing is published. Closes the MLflow run.
    """
    import pandas as pd

    from rlaif_tasks.preferences.ai_feedback import write_preferences
    from rlaif_tasks.preferences.human import validate_preferences
    from rlaif_tasks.preferences.labelling import HUMAN_PAIR_COLUMNS, human_pairs, require_pairs

    config, run_dir = load_run(refs)
    batch = _read_batch(run_dir)
    pairs, labels, summary = human_pairs(pd.DataFrame(batch["pairs"]), batch["requests"], list(answers))
    out = run_dir / "preferences"
    with atomic_path(out / LABELS_FILE) as tmp:
        labels.to_parquet(tmp, index=False)
        labels_sha = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
    o, agreed = summary["outcomes"], summary["agreement"]
    log.info(
        "%d answer(s) to %d request(s) about %d pair(s): %d A better, %d B better, %d tie(s), %d both bad, %d disagreement(s), %d pair(s) unanswered; "
        "%d request(s) unanswered, %d answer(s) from people not assigned not recorded; agreement %s, kappa %s",
        summary["answers"], summary["requests"], summary["pairs_asked"], o["a_better"], o["b_better"], o["tie"], o["both_bad"], o["disagreed"],
        o["unanswered"], summary["unanswered"], summary["refused"], _number(agreed["agreement"]), _number(agreed["kappa"]),
    )
    client, run_id = connect(config), refs["mlflow_run_id"]
    metrics = {f"human/{k}": float(v) for k, v in o.items()}
    metrics.update({"human/answers": float(summary["answers"]), "human/unanswered_requests": float(summary["unanswered"]), "human/refused": float(summary["refused"])})
    metrics.update({f"human/{k}": float(agreed[k]) for k in ("agreement", "kappa") if agreed[k] is not None})
    tracking.log_metrics_once(client, run_id, metrics)
    require_pairs(summary, f"the labelling run {run_dir.name}")
    clean, report = validate_preferences(pairs, keep_columns=HUMAN_PAIR_COLUMNS, max_chars=config.preferences.max_chars, source=f"the human labels of {run_dir.name}")
    labelled_by = sorted(summary["answers_by_labeller"])
    manifest = write_preferences(clean, out, manifest_extra={
        "source": "human", "judge": "human", "policy": batch["policy"], "labellers": batch["labellers"], "labelled_by": labelled_by,
        "labels_per_pair": batch["labels_per_pair"], "summary": summary, "report": report, "labels_file": LABELS_FILE, "labels_sha256": labels_sha,
    })
    tracking.log_metrics_once(client, run_id, {"preferences/pairs": float(manifest["pairs"]), "preferences/prompts": float(manifest["prompts"])})
    client.set_tag(run_id, TAG_PREFERENCES, manifest["sha256"])
    client.log_artifacts(run_id, str(out), "preferences")
    finish_run(client, run_id)
    event = {
        "pairs": int(manifest["pairs"]), "prompts": int(manifest["prompts"]), "source": "human", "judge": "human", "labelled_by": labelled_by,
        "ties": o["tie"], "both_bad": o["both_bad"], "disagreed": o["disagreed"], "unanswered": summary["unanswered"],
        "agreement": agreed["agreement"], "kappa": agreed["kappa"],
        "path": str(out), "sha256": manifest["sha256"], "name": config.name, "config": refs["config"], "overrides": refs["overrides"], "mlflow_run_id": run_id,
    }
    return {**refs, "pairs_dir": str(out), "pairs": event["pairs"], "unanswered": summary["unanswered"], "event": event}


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
