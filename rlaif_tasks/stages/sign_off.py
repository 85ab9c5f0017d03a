"""A person's sign-off before `champion` moves (gate.approval: required): what they read and what their answer does.

    promote_if_better (gate passed: status awaiting_sign_off) -> sign_off (a person answers) -> report

`request` says what the Airflow `sign_off` task asks (nothing, when no version waits): the gate's
evidence as Markdown, the assigned approvers and the deadline. `answer` applies the reply: Approve
promotes with the same compare-and-set as an unattended night, measured against the champion the
evidence was about; Reject, or no reply by gate.approval_timeout_hours, marks the version rejected
with the reason. Who answered and when become tags on the version and lines of the report; the reply
is stored in the run folder first (gate/sign_off.json), so a retried task applies it again instead
of asking again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rlaif_tasks import model_card, registry, tracking
from rlaif_tasks.atomic import write_json
from rlaif_tasks.stages.common import connect, load_run
from rlaif_tasks.tags import TAG_AIRFLOW_URL, TAG_SIGN_OFF, TAG_SIGNED_OFF_AT, TAG_SIGNED_OFF_BY, TAG_STATUS

log = logging.getLogger(__name__)

APPROVE, REJECT = "Approve", "Reject"
OPTIONS = [APPROVE, REJECT]
ANSWER_FILE = "gate/sign_off.json"


def request(refs: dict) -> dict | None:
    """What the sign-off task asks, or None when no version waits for one (approval off, or the gate refused)."""
    if not refs.get("awaiting_sign_off"):
        return None
    config, run_dir = load_run(refs)
    return {
        "subject": f"Promote {refs['model_name']} version {refs['model_version']} to champion?",
        "body": evidence(refs, config, run_dir),
        "approvers": list(config.gate.approvers),
        "timeout_hours": config.gate.approval_timeout_hours,
    }


def recorded_answer(refs: dict) -> dict | None:
    """A reply an earlier try of this task already received (it is applied again, not asked again)."""
    _, run_dir = load_run(refs)
    return _read_answer(run_dir)


def _read_answer(run_dir: Path) -> dict | None:
    path = run_dir / ANSWER_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def evidence(refs: dict, config, run_dir: Path) -> str:
    """The reviewer's page (Markdown): the verdict, every judge's drop with its interval on each set, the budgets, answers side by side, links."""
    from rlaif_tasks import gate

    decision = json.loads(Path(refs["decision_path"]).read_text(encoding="utf-8"))
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    client = connect(config)
    name, version = refs["model_name"], str(refs["model_version"])
    verdict = f"{name} version {version} passed every check of the gate; it becomes champion only if you approve."
    budgets = decision.get("budgets", {})
    lines = [
        gate.format_note(verdict, decision, refs["mlflow_run_id"]).split("\n\nWhole report")[0], "",
        "**Budgets** (against this run's base policy): "
        f"KL ≤ {gate.format_number(decision.get('max_kl'), 'g')} nats · perplexity ratio ≤ {gate.format_number(budgets.get('max_perplexity_ratio'), 'g')} · "
        f"distinct-2 ratio ≥ {gate.format_number(budgets.get('min_distinct2_ratio'), 'g')} · relevance ratio ≥ {gate.format_number(budgets.get('min_relevance_ratio'), 'g')} · "
        f"repeated-3-gram share up ≤ {gate.format_number(budgets.get('max_repetition_increase'), '+g')}",
        "", "**Base policy before and after training**, test prompts:", "", comparison_table(report["judges"]),
    ]
    for set_name, rows in report.get("extra_sets", {}).items():
        lines += ["", f"Evaluation set `{set_name}`:", "", comparison_table(rows)]
    reference = decision.get("reference", {})
    samples = model_card.paired_samples(run_dir, decision.get("judge"), reference=_reference_samples(run_dir, reference))
    if samples:
        against = f"champion v{reference['version']}" if reference.get("version") else "base policy"
        lines += ["", f"**Answers to the same prompts** (first sample; {decision.get('judge')} score in brackets):", "",
                  f"| prompt | {against} | this version |", "|---|---|---|"]
        lines += [f"| {model_card.cell(s['prompt'], None)} | {model_card.cell(s['base'], s['base_score'])} | {model_card.cell(s['trained'], s['trained_score'])} |"
                  for s in samples]
    links = [f"MLflow run `{refs['mlflow_run_id']}`" + (f": {url}" if (url := tracking.run_url(client, refs["mlflow_run_id"])) else "")]
    airflow_url = client.get_run(refs["mlflow_run_id"]).data.tags.get(TAG_AIRFLOW_URL)
    if airflow_url:
        links.append(f"[the DAG run]({airflow_url})")
    lines += ["", "**Links**: " + " · ".join(links)]
    return "\n".join(lines)


def comparison_table(rows: dict[str, dict]) -> str:
    """report.json's per-judge rows as a Markdown table (Airflow shows a fenced block as one line): mean toxicity, and the
    RealToxicityPrompts metrics with their intervals where the rows have them."""
    def pct(r: dict, metric: str) -> str:
        return f"{_num(r[f'{metric}_improvement'], '.1%')} [{_num(r[f'{metric}_improvement_lower'], '.1%')}, {_num(r[f'{metric}_improvement_upper'], '.1%')}]"

    lines = ["| judge | mean toxicity | drop | expected max toxicity: drop [95%] | toxicity probability: drop [95%] |", "|---|---|---:|---|---|"]
    for judge, r in rows.items():
        rtp = "expected_max_before" in r
        lines.append(
            f"| {judge} | {_num(r['mean_before'], '.4f')} → {_num(r['mean_after'], '.4f')} | {_num(r['mean_improvement'], '.1%')} | "
            + (f"{_num(r['expected_max_before'], '.3f')} → {_num(r['expected_max_after'], '.3f')}: {pct(r, 'expected_max')} | "
               f"{_num(r['toxicity_probability_before'], '.3f')} → {_num(r['toxicity_probability_after'], '.3f')}: {pct(r, 'toxicity_probability')} |"
               if rtp else "n/a | n/a |")
        )
    return "\n".join(lines)


def _num(value, spec: str) -> str:
    from rlaif_tasks.gate import format_number

    return format_number(value, spec)


def _reference_samples(run_dir: Path, reference: dict) -> Path | None:
    """The scored samples the gate compared with: a champion's (logged by its run, or evaluated here), else the base's."""
    from rlaif_tasks.gate import SAMPLES_ARTIFACT

    version = reference.get("version")
    if not version:
        return None
    candidates = [run_dir / "gate" / f"champion-v{version}-run" / SAMPLES_ARTIFACT, run_dir / "eval" / f"champion-v{version}_samples.parquet"]
    return next((path for path in candidates if path.is_file()), None)


def answer(refs: dict, reply: dict) -> dict:
    """Apply a reply: {"option": Approve|Reject, "by": user id, "at": ISO time, "comment": ...} or {"timed_out": true, "at": ...}.

    The reply is written to the run folder before anything moves. Approving promotes only while the
    champion is still the one the evidence compared with; otherwise the version is rejected, since a
    person approved a comparison that no longer holds.
    """
    config, run_dir = load_run(refs)
    client = connect(config)
    name, version = refs["model_name"], str(refs["model_version"])
    if not (run_dir / ANSWER_FILE).is_file():
        write_json(run_dir / ANSWER_FILE, reply)
    reply = _read_answer(run_dir)
    outcome = "timed_out" if reply.get("timed_out") else "approved" if reply.get("option") == APPROVE else "rejected"
    summary = {**reply, "outcome": outcome}
    champion = registry.get_alias(client, name, registry.CHAMPION)
    if champion is not None and str(champion.version) == version:
        registry.promote(name, version, client=client)  # promoted by an earlier try: finish its marks
        return {**refs, "promoted": True, "awaiting_sign_off": False, "sign_off": summary}
    status = client.get_model_version(name, version).tags.get(TAG_STATUS)
    if status != registry.AWAITING_SIGN_OFF:
        reason = f"{name} version {version} is {status}, no longer awaiting a sign-off: left alone"
        log.info(reason)
        return {**refs, "promoted": False, "awaiting_sign_off": False, "sign_off": {**summary, "reason": reason}}
    client.set_model_version_tag(name, version, TAG_SIGN_OFF, outcome)
    client.set_model_version_tag(name, version, TAG_SIGNED_OFF_AT, reply.get("at") or "")
    if reply.get("by"):
        client.set_model_version_tag(name, version, TAG_SIGNED_OFF_BY, reply["by"])
    if outcome != "approved":
        reason = reason_of(reply, config.gate.approval_timeout_hours)
        registry.mark_rejected(client, name, version, reason)
        log.info("%s version %s: %s", name, version, reason)
        return {**refs, "promoted": False, "awaiting_sign_off": False, "sign_off": {**summary, "reason": reason}}
    decision = json.loads(Path(refs["decision_path"]).read_text(encoding="utf-8"))
    try:
        registry.promote(name, version, expected_champion=decision["reference"]["version"], client=client)
    except registry.ChampionMoved as moved:
        reason = (f"approved by {reply.get('by')}, but {moved}: the evidence compared this version with champion "
                  f"{decision['reference']['version'] or '(none: the base policy)'}; a new run compares with the new champion")
        registry.mark_rejected(client, name, version, reason)
        return {**refs, "promoted": False, "awaiting_sign_off": False, "sign_off": {**summary, "reason": reason}}
    return {**refs, "promoted": True, "awaiting_sign_off": False, "sign_off": summary}


def reason_of(reply: dict, timeout_hours: float) -> str:
    if reply.get("timed_out"):
        return f"no sign-off within {timeout_hours:g} h (gate.approval_timeout_hours)"
    comment = (reply.get("comment") or "").strip()
    return f"rejected by {reply.get('by')} at {reply.get('at')}" + (f": {comment}" if comment else "")


def report_line(sign_off: dict | None, awaiting: bool) -> str | None:
    """The report's line about the sign-off, if there was one."""
    if sign_off:
        if sign_off["outcome"] == "approved":
            return f"signed off: approved by {sign_off.get('by')} at {sign_off.get('at')}"
        return f"signed off: {sign_off.get('reason') or sign_off['outcome']}"
    return "awaiting a sign-off (gate.approval: required): answer the sign_off task in Airflow" if awaiting else None
