"""Pairwise labelling by people, the pure part (rlaif_tasks/preferences/human.py): the batch, who is asked, the
Markdown a labeller reads, answers turned into pairs, and agreement (Cohen's kappa against hand-computed numbers)."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pandas as pd
import pytest

from rlaif_tasks.errors import RlaifError
from rlaif_tasks.preferences import validate_preferences
from rlaif_tasks.preferences.labelling import (
    A_BETTER,
    B_BETTER,
    BOTH_BAD,
    LABEL_COLUMNS,
    OPTIONS,
    TIE,
    agreement,
    answered,
    assign_requests,
    check_labelling,
    cohen_kappa,
    fenced,
    human_pairs,
    labelling_batch,
    pair_markdown,
    require_pairs,
    unanswered,
)

AT = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def batch(n: int) -> pd.DataFrame:
    return pd.DataFrame({"pair": range(n), "prompt": [f"p{i}" for i in range(n)], "query": [f"q{i}" for i in range(n)],
                         "response_a": [f"a{i}" for i in range(n)], "response_b": [f"b{i}" for i in range(n)]})


def answer(request: int, label: str, who: str, minute: int = 0, comment: str | None = None) -> dict:
    return answered({"request": request}, [label], {"comment": comment}, {"id": who, "name": who.title()}, AT.replace(minute=minute))


def test_the_options_are_the_ones_the_dag_offers():
    from rlaif_tasks.stages.human import OPTIONS as offered

    assert offered == OPTIONS == ("A is better", "B is better", "Tie", "Both bad")


@pytest.mark.parametrize("settings, match", [
    ((0, ["alice"], 1, 24.0), "labelling batch is empty"),
    ((3, [], 1, 24.0), "names nobody"),
    ((3, ["alice", " "], 1, 24.0), "names nobody"),
    ((3, ["alice", "alice"], 1, 24.0), "twice"),
    ((3, ["alice"], 2, 24.0), "labels_per_pair is 2"),
    ((3, ["alice"], 0, 24.0), "labels_per_pair is 0"),
    ((3, ["alice"], 1, 0.0), "response_timeout_hours"),
])
def test_settings_a_labelling_run_cannot_work_with_are_refused(settings, match):
    with pytest.raises(RlaifError, match=match):
        check_labelling(*settings)
    check_labelling(3, ["alice", "bob"], 2, 0.5)


def test_the_batch_drops_pairs_nobody_should_be_asked_about_and_numbers_the_rest():
    candidates = pd.DataFrame({
        "prompt": ["p0", "p1", "p2", "p3", "p4", "p0"], "query": ["q0", "q1", "q2", "q3", "q4", "q0"],
        "response_a": [" nice", "same", "", "x" * 50, "ok", " nice"], "response_b": [" rude", "same ", "b", "y", "fine", " rude"],
    })
    clean, report = labelling_batch(candidates, max_chars=40)
    assert clean.to_dict(orient="list") == {"pair": [0, 1], "prompt": ["p0", "p4"], "query": ["q0", "q4"], "response_a": [" nice", "ok"], "response_b": [" rude", "fine"]}
    assert {reason: info["count"] for reason, info in report["dropped"].items() if info["count"]} == {"identical": 1, "missing": 1, "too_long": 1, "duplicate": 1}
    with pytest.raises(RlaifError, match="nothing to label: no preference pairs left .* identical: 2"):
        labelling_batch(candidates.iloc[[1, 1]].assign(prompt=["a", "b"]))
    with pytest.raises(RlaifError, match="no prompts"):
        labelling_batch(candidates.iloc[0:0])


def test_validation_keeps_the_extra_columns_of_the_rows_it_keeps():
    frame = pd.DataFrame({"prompt": ["p", "p", "q"], "chosen": ["a", "a", "c"], "rejected": ["b", "b", "c"], "labelled_by": ["x", "y", "z"]})
    clean, report = validate_preferences(frame, keep_columns=["labelled_by"])
    assert clean.to_dict(orient="list") == {"prompt": ["p"], "chosen": ["a"], "rejected": ["b"], "labelled_by": ["x"]}
    assert report["rows_out"] == 1
    with pytest.raises(RlaifError, match="no column"):
        validate_preferences(frame, keep_columns=["comment"])


def test_who_is_asked_about_which_pair():
    assert assign_requests(2, ["alice", "bob"]) == [{"request": 0, "pair": 0, "labellers": ["alice", "bob"]}, {"request": 1, "pair": 1, "labellers": ["alice", "bob"]}]
    requests = assign_requests(3, ["alice", "bob", "carol"], labels_per_pair=2)
    assert [r["request"] for r in requests] == list(range(6)) and [r["pair"] for r in requests] == [0, 0, 1, 1, 2, 2]
    per_pair = {pair: [r["labellers"][0] for r in requests if r["pair"] == pair] for pair in range(3)}
    assert per_pair == {0: ["alice", "bob"], 1: ["bob", "carol"], 2: ["carol", "alice"]}  # two different people each, two pairs each


def test_the_body_shows_the_texts_verbatim_and_renders_nothing_they_contain():
    assert fenced("plain") == "```text\nplain\n```"
    tricky = "see ```code``` and ````more````"
    assert fenced(tricky).startswith("`````text\n") and fenced(tricky).endswith("\n`````")
    body = pair_markdown("Tell me", "![x](http://tracker.example/p.png) <b>hi</b>", "## fine")
    assert "**Response A**\n\n```text\n![x](http://tracker.example/p.png) <b>hi</b>\n```" in body
    assert "**Response B**\n\n```text\n## fine\n```" in body and "**Prompt**\n\n```text\nTell me\n```" in body
    assert all(option in body for option in OPTIONS)


def test_an_answer_and_a_timeout_become_small_records():
    record = answered({"request": 3, "run_dir": "/r"}, [B_BETTER], {"comment": "  too rude "}, {"id": "7", "name": "alice"}, AT)
    assert record == {"request": 3, "status": "answered", "label": B_BETTER, "labeller": "7", "labeller_name": "alice",
                      "labelled_at": "2026-03-01T12:00:00+00:00", "comment": "too rude"}
    assert answered({"request": 0}, [TIE], None, None, None)["comment"] is None
    assert unanswered({"request": 4}) == {"request": 4, "status": "timeout", **{c: None for c in LABEL_COLUMNS if c not in ("request", "status", "pair")}}


def test_answers_become_chosen_and_rejected_with_who_and_when():
    requests = assign_requests(5, ["alice", "bob"])
    answers = [answer(0, A_BETTER, "alice", 1, "clearer"), answer(1, B_BETTER, "bob", 2), answer(2, TIE, "alice"), answer(3, BOTH_BAD, "bob"), unanswered({"request": 4})]
    pairs, labels, summary = human_pairs(batch(5), requests, answers)
    assert pairs[["prompt", "chosen", "rejected", "pair", "query", "labelled_by"]].to_dict(orient="records") == [
        {"prompt": "p0", "chosen": "a0", "rejected": "b0", "pair": 0, "query": "q0", "labelled_by": "Alice"},
        {"prompt": "p1", "chosen": "b1", "rejected": "a1", "pair": 1, "query": "q1", "labelled_by": "Bob"},
    ]
    assert list(pairs["labelled_at"]) == ["2026-03-01T12:01:00+00:00", "2026-03-01T12:02:00+00:00"]
    assert pairs["comment"][0] == "clearer" and pd.isna(pairs["comment"][1])
    assert summary["outcomes"] == {"a_better": 1, "b_better": 1, "tie": 1, "both_bad": 1, "disagreed": 0, "unanswered": 1}
    assert (summary["pairs"], summary["answers"], summary["unanswered"], summary["refused"]) == (2, 4, 1, 0)
    assert summary["answers_by_labeller"] == {"Alice": 2, "Bob": 2} and summary["agreement"]["pairs"] == 0 and summary["agreement"]["kappa"] is None
    assert list(labels.columns) == list(LABEL_COLUMNS) and list(labels["status"]) == ["answered"] * 4 + ["timeout"]
    assert list(labels["label"][:4]) == [A_BETTER, B_BETTER, TIE, BOTH_BAD]  # ties and both-bad are recorded, not paired
    # the pairs pass the import's validation with their extra columns
    clean, _ = validate_preferences(pairs, keep_columns=["pair", "labelled_by"])
    assert len(clean) == 2


def test_an_answer_from_someone_not_assigned_or_with_an_unknown_option_is_not_recorded():
    requests = assign_requests(2, ["alice", "bob"], labels_per_pair=2)  # request 0: alice, 1: bob, 2: bob, 3: alice
    answers = [answer(0, B_BETTER, "mallory"), answer(1, A_BETTER, "alice"), answer(2, "C is better", "bob"), answer(3, A_BETTER, "alice")]
    pairs, labels, summary = human_pairs(batch(2), requests, answers)
    assert "mallory" not in set(labels["labeller"].dropna()) and summary["refused"] == 2 and summary["refused_users"] == ["alice", "mallory"]
    assert list(labels["status"]) == ["no answer", "no answer", "no answer", "answered"]
    assert summary["outcomes"]["unanswered"] == 1 and pairs["pair"].tolist() == [1] and pairs["labelled_by"].tolist() == ["Alice"]


def test_two_labellers_make_a_pair_only_when_they_agree_and_their_agreement_is_reported():
    requests = assign_requests(4, ["alice", "bob"], labels_per_pair=2)
    who = {r["request"]: r["labellers"][0] for r in requests}
    labels = {0: A_BETTER, 1: A_BETTER, 2: B_BETTER, 3: A_BETTER, 4: TIE, 5: TIE, 6: B_BETTER, 7: B_BETTER}
    pairs, _, summary = human_pairs(batch(4), requests, [answer(k, label, who[k], minute=k) for k, label in labels.items()])
    assert pairs[["pair", "chosen", "labelled_by"]].to_dict(orient="records") == [
        {"pair": 0, "chosen": "a0", "labelled_by": "Alice, Bob"}, {"pair": 3, "chosen": "b3", "labelled_by": "Alice, Bob"}]
    assert pairs["labelled_at"].tolist() == ["2026-03-01T12:01:00+00:00", "2026-03-01T12:07:00+00:00"]  # the later of the two answers
    assert summary["outcomes"] == {"a_better": 1, "b_better": 1, "tie": 1, "both_bad": 0, "disagreed": 1, "unanswered": 0}
    agreed = summary["agreement"]
    assert agreed["pairs"] == 4 and agreed["agreement"] == 0.75
    # alice: A, A, T, B  bob: A, B, T, B  ->  p_o = 3/4; p_e = (1/4)(2/4) + (2/4)(1/4) + (1/4)(1/4) = 5/16; kappa = (12/16 - 5/16) / (11/16) = 7/11
    [couple] = agreed["by_labellers"]
    assert couple["labellers"] == ["alice", "bob"] and couple["pairs"] == 4 and couple["agreement"] == 0.75
    assert couple["kappa"] == pytest.approx(7 / 11) and agreed["kappa"] == pytest.approx(7 / 11)


def test_cohen_kappa_by_hand_and_against_scikit_learn():
    observed, kappa = cohen_kappa(["A", "A", "B", "B", "T"], ["A", "B", "B", "B", "T"])
    assert observed == pytest.approx(0.8) and kappa == pytest.approx((0.8 - 0.36) / 0.64)
    assert cohen_kappa(["A", "B"], ["B", "A"]) == (0.0, pytest.approx(-1.0))
    assert cohen_kappa(["T", "T"], ["T", "T"]) == (1.0, None)  # one answer throughout: chance agreement is 1, kappa undefined
    from sklearn.metrics import cohen_kappa_score

    rng = random.Random(0)
    for _ in range(20):
        first = [rng.choice(OPTIONS) for _ in range(30)]
        second = [label if rng.random() < 0.6 else rng.choice(OPTIONS) for label in first]
        assert cohen_kappa(first, second)[1] == pytest.approx(cohen_kappa_score(first, second))
    with pytest.raises(ValueError):
        cohen_kappa([], [])


def test_agreement_over_three_labellers_weights_each_couple_by_its_pairs():
    by_pair = {0: [("a", A_BETTER), ("b", A_BETTER)], 1: [("b", B_BETTER), ("c", A_BETTER)], 2: [("c", TIE), ("a", TIE)], 3: [("a", A_BETTER)]}
    result = agreement(by_pair)
    assert result["pairs"] == 3 and result["agreement"] == pytest.approx(2 / 3)
    assert [c["labellers"] for c in result["by_labellers"]] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert all(c["pairs"] == 1 and c["kappa"] is None for c in result["by_labellers"][:2])  # one shared pair: kappa undefined
    assert result["by_labellers"][2]["agreement"] == 0.0 and result["kappa"] == pytest.approx(result["by_labellers"][2]["kappa"])


def test_no_pair_at_all_is_an_error_that_says_what_the_answers_were():
    requests = assign_requests(3, ["alice"])
    _, _, summary = human_pairs(batch(3), requests, [answer(0, TIE, "alice"), answer(1, BOTH_BAD, "alice"), unanswered({"request": 2})])
    with pytest.raises(RlaifError, match=r"no preference pairs from the run x: of 3 pair\(s\), 1 tie\(s\), 1 both bad, 0 disagreement\(s\), 1 unanswered \(1 of 3 request"):
        require_pairs(summary, "the run x")
