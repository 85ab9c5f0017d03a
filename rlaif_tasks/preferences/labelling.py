"""Pairwise labelling by people (the human_preferences DAG): a batch to ask about, who is asked, and the answers as pairs.

The policy answers a prompt twice (A and B) and a person picks one of OPTIONS. A/B answers become
(chosen, rejected) pairs; ties and "both bad" are recorded but teach nothing pairwise. A pair asked of
several people becomes a pair only when they agree; their agreement is reported (raw and Cohen's kappa).
The batch and the pairs are checked by the import's rules (preferences/human.validate_preferences).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Sequence

import pandas as pd

from rlaif_tasks.errors import RlaifError
from rlaif_tasks.preferences.human import COLUMNS, DEFAULT_MAX_CHARS, validate_preferences

log = logging.getLogger(__name__)

A_BETTER, B_BETTER, TIE, BOTH_BAD = "A is better", "B is better", "Tie", "Both bad"
OPTIONS = (A_BETTER, B_BETTER, TIE, BOTH_BAD)
OUTCOMES = {A_BETTER: "a_better", B_BETTER: "b_better", TIE: "tie", BOTH_BAD: "both_bad"}
BATCH_COLUMNS = ("pair", "prompt", "query", "response_a", "response_b")
HUMAN_PAIR_COLUMNS = ("pair", "query", "labelled_by", "labelled_at", "comment")
"""Kept beside prompt, chosen, rejected in a human pairs.parquet: which pair of the batch, and who said so when."""
LABEL_COLUMNS = ("request", "pair", "status", "label", "labeller", "labeller_name", "labelled_at", "comment")


def check_labelling(pairs: int, labellers: Sequence[str], labels_per_pair: int, response_timeout_hours: float) -> None:
    """The human_preferences settings a labelling run can work with, or an RlaifError that says which and how to fix it."""
    if pairs < 1:
        raise RlaifError(
            f"the labelling batch is empty: human_preferences.pairs is {pairs}",
            "set human_preferences.pairs (or the trigger form's `pairs`) to 1 or more",
        )
    names = [str(name).strip() for name in labellers]
    if not names or any(not name for name in names):
        raise RlaifError(
            "human_preferences.labellers names nobody (or has an empty name), so anyone who can open the DAG could label",
            "list the Airflow user ids who may label in the config file: human_preferences: {labellers: [alice, bob]}",
        )
    if len(set(names)) != len(names):
        raise RlaifError(f"human_preferences.labellers lists someone twice: {names}", "list each labeller once")
    if not 1 <= labels_per_pair <= len(names):
        raise RlaifError(
            f"human_preferences.labels_per_pair is {labels_per_pair}, but each pair needs that many different labellers and {len(names)} are listed",
            "set labels_per_pair to 1 (any labeller answers) or at most the number of labellers",
        )
    if not response_timeout_hours > 0:
        raise RlaifError(f"human_preferences.response_timeout_hours must be > 0, got {response_timeout_hours}", "set it to the hours a labeller has to answer, e.g. 24")


def labelling_batch(candidates: pd.DataFrame, *, max_chars: int = DEFAULT_MAX_CHARS, source: str = "the labelling batch") -> tuple[pd.DataFrame, dict[str, Any]]:
    """The candidate pairs (prompt, query, response_a, response_b) worth a person's time, numbered 0.. as `pair`.

    The import's rules, with A in the place of chosen and B of rejected: blank or identical responses,
    text that is not valid UTF-8, a prompt and response over `max_chars` and repeats are dropped before
    anyone is asked. Raises RlaifError when nothing is left to label.
    """
    if candidates.empty:
        raise RlaifError(f"nothing to label in {source}: no prompts were sampled", "check the run's train split (data.source, data.max_train_prompts) and human_preferences.pairs")
    frame = candidates.rename(columns={"response_a": "chosen", "response_b": "rejected"})
    try:
        clean, report = validate_preferences(frame, max_chars=max_chars, source=source, keep_columns=["query"])
    except RlaifError as exc:
        raise RlaifError(
            f"nothing to label: {exc.problem}",
            "sample longer or more varied responses (generation.max_new_tokens, generation.temperature) or more prompts (human_preferences.pairs)",
        ) from exc
    clean = clean.rename(columns={"chosen": "response_a", "rejected": "response_b"})
    clean.insert(0, "pair", range(len(clean)))
    return clean[list(BATCH_COLUMNS)], report


def assign_requests(n_pairs: int, labellers: Sequence[str], labels_per_pair: int = 1) -> list[dict[str, Any]]:
    """Who is asked about which pair: one request per pair and copy, numbered 0.. as `request`.

    With labels_per_pair 1 each pair is one request any labeller may answer (the first answer counts);
    with k >= 2 each pair is k requests, each assigned to one labeller, rotating through the list so
    that every pair gets k different people and everyone a fair share.
    """
    labellers = list(labellers)
    if labels_per_pair <= 1:
        return [{"request": i, "pair": i, "labellers": labellers} for i in range(n_pairs)]
    requests = []
    for pair in range(n_pairs):
        for copy in range(labels_per_pair):
            requests.append({"request": len(requests), "pair": pair, "labellers": [labellers[(pair + copy) % len(labellers)]]})
    return requests


def fenced(text: str) -> str:
    """`text` as a Markdown code block, shown as it is: no link, image, HTML or heading a response might contain is rendered."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def pair_markdown(prompt: str, response_a: str, response_b: str) -> str:
    """The body a labeller reads under Browse -> Required Actions: the prompt and the two responses, verbatim."""
    return "\n\n".join([
        "**Prompt**", fenced(prompt), "**Response A**", fenced(response_a), "**Response B**", fenced(response_b),
        f"Which response is better? *{A_BETTER}* or *{B_BETTER}*; *{TIE}* when they are equally good, *{BOTH_BAD}* when "
        "neither should be learnt from. Ties and both-bad answers are recorded but make no training pair. The comment is optional.",
    ])


def answered(request: Mapping[str, Any], chosen_options: Sequence[str], params_input: Mapping[str, Any] | None, responded_by: Mapping[str, Any] | None, responded_at: Any) -> dict[str, Any]:
    """One HITL answer as the small record a `label` task returns (what `human_pairs` reads)."""
    by = dict(responded_by or {})
    comment = str((params_input or {}).get("comment") or "").strip()
    at = responded_at.isoformat() if hasattr(responded_at, "isoformat") else (str(responded_at) if responded_at is not None else None)
    return {
        "request": int(request["request"]), "status": "answered", "label": chosen_options[0] if chosen_options else None,
        "labeller": None if by.get("id") is None else str(by["id"]), "labeller_name": by.get("name"), "labelled_at": at, "comment": comment or None,
    }


def unanswered(request: Mapping[str, Any], reason: str = "timeout") -> dict[str, Any]:
    """The record of a `label` task that ended without an answer (its response timeout passed)."""
    return {"request": int(request["request"]), "status": reason, "label": None, "labeller": None, "labeller_name": None, "labelled_at": None, "comment": None}


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> tuple[float, float | None]:
    """(raw agreement, Cohen's kappa) of two labellers' answers to the same items, in the same order.

    kappa = (p_o - p_e) / (1 - p_e), p_e from each labeller's own answer frequencies; None when p_e is 1
    (both gave one and the same answer throughout: agreement by chance cannot be told from agreement).
    """
    if len(first) != len(second) or not first:
        raise ValueError(f"need two equally long, non-empty answer lists, got {len(first)} and {len(second)}")
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    categories = set(first) | set(second)
    expected = sum((list(first).count(c) / n) * (list(second).count(c) / n) for c in categories)
    if expected >= 1.0:
        return observed, None
    return observed, (observed - expected) / (1.0 - expected)


def agreement(answers_by_pair: Mapping[int, Sequence[tuple[str, str]]]) -> dict[str, Any]:
    """How often people who labelled the same pair agreed: raw overall, and Cohen's kappa for each two of them.

    `answers_by_pair`: pair -> [(labeller, label), ...]. Raw agreement is the share of pairs with two or
    more answers whose answers are all the same; `kappa` is the mean of the defined per-couple kappas,
    weighted by the pairs each couple shared (None when no couple has one).
    """
    shared = {pair: list(answers) for pair, answers in answers_by_pair.items() if len(answers) >= 2}
    couples: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for answers in shared.values():
        for i, (u, label_u) in enumerate(answers):
            for v, label_v in answers[i + 1:]:
                key, labels = ((u, v), (label_u, label_v)) if u <= v else ((v, u), (label_v, label_u))
                couples.setdefault(key, ([], []))
                couples[key][0].append(labels[0])
                couples[key][1].append(labels[1])
    by_couple = []
    for (u, v), (first, second) in sorted(couples.items()):
        observed, kappa = cohen_kappa(first, second)
        by_couple.append({"labellers": [u, v], "pairs": len(first), "agreement": observed, "kappa": kappa})
    defined = [c for c in by_couple if c["kappa"] is not None]
    weight = sum(c["pairs"] for c in defined)
    return {
        "pairs": len(shared),
        "agreement": (sum(len({label for _, label in a}) == 1 for a in shared.values()) / len(shared)) if shared else None,
        "kappa": (sum(c["kappa"] * c["pairs"] for c in defined) / weight) if weight else None,
        "by_labellers": by_couple,
    }


def human_pairs(batch: pd.DataFrame, requests: Sequence[Mapping[str, Any]], answers: Sequence[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The labelled batch as (pairs, labels, summary).

    `batch` holds BATCH_COLUMNS, `requests` who was asked about which pair (assign_requests), `answers`
    what each `label` task returned (`answered` / `unanswered`). An answer from someone the request was
    not assigned to is not recorded (Airflow refuses it with 403; this holds if an auth manager lets
    it through); a request without a usable answer counts as unanswered. A pair's answers decide it
    when they all agree: A or B better makes a (chosen, rejected) row with who labelled it and when;
    a tie or both-bad is only counted; different answers are a disagreement, which makes no pair.

    `labels` has one row per recorded answer or unanswered request (LABEL_COLUMNS); `summary` counts
    the outcomes per pair, the unanswered and refused requests, answers per labeller and the agreement.
    """
    by_request = {int(r["request"]): r for r in requests}
    given: dict[int, Mapping[str, Any]] = {}
    refused: list[str] = []
    for answer in answers:
        k = int(answer["request"])
        request = by_request.get(k)
        if request is None:
            log.warning("an answer to request %s, which this batch never asked; ignored", k)
            continue
        if answer.get("status") == "answered":
            if answer.get("labeller") not in {str(u) for u in request["labellers"]}:
                log.warning("request %s was answered by %r, who is not among its labellers %s: not recorded", k, answer.get("labeller"), request["labellers"])
                refused.append(str(answer.get("labeller")))
                continue
            if answer.get("label") not in OPTIONS:
                log.warning("request %s has the answer %r, which is none of %s: not recorded", k, answer.get("label"), list(OPTIONS))
                continue
        given[k] = answer
    rows = []
    for k in sorted(by_request):
        answer = given.get(k)
        if answer is None or answer.get("status") != "answered":
            rows.append({**{c: None for c in LABEL_COLUMNS}, "request": k, "pair": int(by_request[k]["pair"]), "status": (answer or {}).get("status") or "no answer"})
        else:
            rows.append({**{c: answer.get(c) for c in LABEL_COLUMNS}, "request": k, "pair": int(by_request[k]["pair"])})
    labels = pd.DataFrame(rows, columns=list(LABEL_COLUMNS))
    texts = batch.set_index("pair")
    answered_rows = labels[labels["status"] == "answered"]
    outcomes = {"a_better": 0, "b_better": 0, "tie": 0, "both_bad": 0, "disagreed": 0, "unanswered": 0}
    pairs, by_pair = [], {}
    for pair in sorted({int(r["pair"]) for r in requests}):
        mine = answered_rows[answered_rows["pair"] == pair]
        by_pair[pair] = list(zip(mine["labeller"], mine["label"]))
        verdicts = set(mine["label"])
        if not verdicts:
            outcomes["unanswered"] += 1
            continue
        if len(verdicts) > 1:
            outcomes["disagreed"] += 1
            continue
        [verdict] = verdicts
        outcomes[OUTCOMES[verdict]] += 1
        if verdict not in (A_BETTER, B_BETTER):
            continue
        row = texts.loc[pair]
        a_wins = verdict == A_BETTER
        names = [str(n) if isinstance(n, str) and n else str(i) for n, i in zip(mine["labeller_name"], mine["labeller"])]
        comments = [c for c in mine["comment"] if isinstance(c, str) and c]
        pairs.append({
            "prompt": row["prompt"], "chosen": row["response_a"] if a_wins else row["response_b"], "rejected": row["response_b"] if a_wins else row["response_a"],
            "pair": pair, "query": row["query"], "labelled_by": ", ".join(sorted(set(names))), "labelled_at": max(str(t) for t in mine["labelled_at"]),
            "comment": " | ".join(comments) or None,
        })
    frame = pd.DataFrame(pairs, columns=[*COLUMNS, *HUMAN_PAIR_COLUMNS])
    counted = answered_rows.groupby("labeller_name", dropna=False).size()
    summary = {
        "pairs_asked": len(texts), "requests": len(by_request), "answers": len(answered_rows),
        "unanswered": int((labels["status"] != "answered").sum()), "refused": len(refused), "refused_users": sorted(set(refused)),
        "outcomes": outcomes, "pairs": len(frame), "answers_by_labeller": {str(name): int(n) for name, n in counted.items()},
        "agreement": agreement(by_pair),
    }
    return frame, labels, summary


def require_pairs(summary: Mapping[str, Any], where: str = "this labelling run") -> None:
    """RlaifError when no answer made a pair, saying what the answers were instead (nothing is published then)."""
    if summary["pairs"]:
        return
    o = summary["outcomes"]
    raise RlaifError(
        f"no preference pairs from {where}: of {summary['pairs_asked']} pair(s), {o['tie']} tie(s), {o['both_bad']} both bad, "
        f"{o['disagreed']} disagreement(s), {o['unanswered']} unanswered ({summary['unanswered']} of {summary['requests']} request(s) "
        f"without an answer{'; ' + str(summary['refused']) + ' answer(s) from people not assigned were not recorded' if summary['refused'] else ''})",
        "trigger human_preferences again (more pairs: human_preferences.pairs) and answer under Browse -> Required Actions within "
        "human_preferences.response_timeout_hours",
    )
