"""Any HF sequence classifier as a judge: classes found by label name, never by position."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_causal_lm, tiny_classifier
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlaif_tasks.config import ScorerConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.rewards import build_backend, build_scorer
from rlaif_tasks.rewards.hf_classifier import resolve_labels

TEXTS = ["you are a stupid idiot", "thanks , have a nice day", "i hate you", "what a kind friend you are really", "no"]
PROMPTS = ["why are they so", "hello my friend", "what do you think of me ?", "tell me about your day", "is it good ?"]


def manual_logits(folder, texts) -> torch.Tensor:
    """One text at a time, straight through transformers: no padding, no label logic."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])


@pytest.fixture(scope="module")
def swapped(tmp_path_factory):
    """Two classifiers with the same weights whose labels sit at opposite indices."""
    root = tmp_path_factory.mktemp("swapped")
    return {
        "hate_first": tiny_classifier(root / "hate_first", id2label={0: "hate", 1: "nothate"}),
        "nothate_first": tiny_classifier(root / "nothate_first", id2label={0: "nothate", 1: "hate"}),
    }


@pytest.mark.parametrize("name, nothate, hate", [("hate_first", 1, 0), ("nothate_first", 0, 1)])
def test_reward_is_the_logit_of_the_label_named_nothate(swapped, name, nothate, hate):
    folder = swapped[name]
    backend = build_backend(ScorerConfig(model=str(folder)))
    assert (backend.non_toxic, backend.toxic) == (nothate, hate)
    logits = manual_logits(folder, TEXTS)
    torch.testing.assert_close(torch.tensor(backend.reward(TEXTS)), logits[:, nothate], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(backend.toxic_probability(TEXTS)), logits.softmax(-1)[:, hate], atol=1e-6, rtol=0)


def test_swapping_the_label_order_changes_which_logit_is_the_reward(swapped):
    """Same weights, so a judge that read index 0 would give both models the same reward."""
    logits = manual_logits(swapped["hate_first"], TEXTS)
    torch.testing.assert_close(logits, manual_logits(swapped["nothate_first"], TEXTS))
    first = build_backend(ScorerConfig(model=str(swapped["hate_first"]))).reward(TEXTS)
    second = build_backend(ScorerConfig(model=str(swapped["nothate_first"]))).reward(TEXTS)
    torch.testing.assert_close(torch.tensor(first), logits[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(second), logits[:, 0], atol=1e-5, rtol=0)
    assert max(abs(a - b) for a, b in zip(first, second)) > 1e-3


def test_padded_batches_score_like_single_texts(swapped):
    backend = build_backend(ScorerConfig(model=str(swapped["nothate_first"])))
    batched = backend.reward(TEXTS)
    single = [backend.reward([t])[0] for t in TEXTS]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(single), atol=1e-5, rtol=0)
    assert backend.reward([]) == [] and backend.toxic_probability([]) == []


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("davidson") / "m", id2label={0: "neither", 1: "offensive", 2: "hate"})


def test_configured_labels_override_the_known_names(three_class):
    logits = manual_logits(three_class, TEXTS)
    default = build_backend(ScorerConfig(model=str(three_class)))
    assert (default.non_toxic, default.toxic) == (0, 2)

    configured = build_backend(ScorerConfig(model=str(three_class), toxic_label="Offensive", non_toxic_label="hate"))
    assert (configured.non_toxic, configured.toxic) == (2, 1)
    torch.testing.assert_close(torch.tensor(configured.toxic_probability(TEXTS)), logits.softmax(-1)[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(configured.reward(TEXTS)), logits[:, 2], atol=1e-5, rtol=0)


def test_one_configured_label_is_enough_for_anonymous_binary_heads():
    labels = {0: "LABEL_0", 1: "LABEL_1"}
    assert resolve_labels(labels, ScorerConfig(model="m", toxic_label="LABEL_1")) == (0, 1)
    assert resolve_labels(labels, ScorerConfig(model="m", non_toxic_label="label-1")) == (1, 0)


def test_unknown_configured_label_names_the_real_labels(three_class):
    with pytest.raises(RlaifError) as exc:
        build_backend(ScorerConfig(model=str(three_class), toxic_label="toxic"))
    assert "has no label 'toxic'" in exc.value.problem
    assert "['hate', 'neither', 'offensive']" in exc.value.problem
    assert "set toxic_label to one of its labels" in exc.value.fix


@pytest.mark.parametrize(
    "id2label",
    [
        {0: "LABEL_0", 1: "LABEL_1"},
        {0: "toxic", 1: "hate"},
        {0: "neutral", 1: "normal"},
        {0: "positive", 1: "negative", 2: "toxic"},
    ],
)
def test_ambiguous_labels_ask_for_both_names(id2label):
    with pytest.raises(RlaifError) as exc:
        resolve_labels(id2label, ScorerConfig(model="some/classifier"))
    assert "cannot tell which labels of 'some/classifier' mean toxic and non-toxic" in exc.value.problem
    assert "toxic_label" in exc.value.fix and "non_toxic_label" in exc.value.fix


def test_ambiguous_labels_fail_when_the_judge_is_built(tmp_path):
    folder = tiny_classifier(tmp_path / "anon", id2label={0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(RlaifError, match="cannot tell which labels"):
        build_scorer(ScorerConfig(model=str(folder)), purpose="reward")
    scorer = build_scorer(ScorerConfig(model=str(folder), toxic_label="LABEL_0"), purpose="reward")
    torch.testing.assert_close(torch.tensor(scorer(TEXTS)), manual_logits(folder, TEXTS)[:, 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "id2label, problem_type, toxic",
    [({0: "severe_toxic", 1: "toxic", 2: "insult"}, "multi_label_classification", 1), ({0: "toxic"}, None, 0)],
    ids=["multi-label", "single-logit"],
)
def test_sigmoid_heads_use_the_sigmoid_and_minus_the_toxic_logit(tmp_path, id2label, problem_type, toxic):
    """unitary/toxic-bert style heads score each label on its own and have no non-toxic class."""
    folder = tiny_classifier(tmp_path / "sigmoid", id2label=id2label)
    if problem_type:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "problem_type": problem_type}))
    backend = build_backend(ScorerConfig(model=str(folder)))
    logits = manual_logits(folder, TEXTS)
    probs = torch.tensor(backend.toxic_probability(TEXTS))
    torch.testing.assert_close(probs, logits[:, toxic].sigmoid(), atol=1e-6, rtol=0)
    assert probs.std() > 0, "a softmax over one logit would say 1.0 for every text"
    torch.testing.assert_close(torch.tensor(backend.reward(TEXTS)), -logits[:, toxic], atol=1e-5, rtol=0)


def test_scorer_reads_prompt_plus_response(swapped):
    folder = swapped["nothate_first"]
    cfg = ScorerConfig(model=str(folder), input="prompt+response", batch_size=2)
    reward, toxicity = build_scorer(cfg, purpose="reward"), build_scorer(cfg, purpose="toxicity")
    joined = [p + r for p, r in zip(PROMPTS, TEXTS)]
    logits = manual_logits(folder, joined)
    torch.testing.assert_close(torch.tensor(reward(TEXTS, PROMPTS)), logits[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(toxicity(TEXTS, PROMPTS)), logits.softmax(-1)[:, 1], atol=1e-6, rtol=0)
    response_only = build_scorer(ScorerConfig(model=str(folder)), purpose="reward")(TEXTS)
    assert max(abs(a - b) for a, b in zip(reward(TEXTS, PROMPTS), response_only)) > 1e-3
    with pytest.raises(RlaifError, match="got 2 prompts for 5 responses"):
        reward(TEXTS, PROMPTS[:2])


def test_a_language_model_is_not_a_judge(tmp_path):
    folder = tiny_causal_lm(tmp_path / "lm")
    with pytest.raises(RlaifError) as exc:
        build_scorer(ScorerConfig(model=str(folder)), purpose="reward")
    assert "is a causal-lm but a sequence-classifier was asked for" in exc.value.problem
    assert "classification head would be random" in exc.value.fix
