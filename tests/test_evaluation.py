"""Held-out evaluation end to end on a tiny policy, batched generation, and the offline `evaluate` module."""

from __future__ import annotations

import math
import statistics

import evaluate
import pandas as pd
import pytest
from tiny_models import tiny_causal_lm, tiny_classifier, tiny_seq2seq_lm

import rlaif_tasks.evaluation
from rlaif_tasks.config import EvaluationConfig, GenerationConfig, ScorerConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.evaluation.toxicity import evaluate_policy, read_evaluation, write_evaluation
from rlaif_tasks.generation import generate, truncate_at_stop
from rlaif_tasks.models import load_model
from rlaif_tasks.rewards import build_scorer

PROMPTS = ["you are", "what do you think of people", "hello my friend", "why are they so"]
GEN = GenerationConfig(max_new_tokens=8, min_new_tokens=3, batch_size=3)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return load_model(str(tiny_causal_lm(tmp_path_factory.mktemp("policy") / "lm")))


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    classifier = str(tiny_classifier(tmp_path_factory.mktemp("judge") / "clf"))
    return [
        build_scorer(ScorerConfig(model="jigsaw-bilstm"), purpose="toxicity"),
        build_scorer(ScorerConfig(model=classifier, name="tiny-hate", input="prompt+response", batch_size=5), purpose="toxicity"),
    ]


@pytest.fixture
def test_prompts() -> pd.DataFrame:
    """The shape of a prepared test split: the policy sees `query`, prompt+response judges see `prompt`."""
    return pd.DataFrame({"prompt": PROMPTS, "query": [f"{p} :" for p in PROMPTS], "category": "x", "source": "test"})


@pytest.fixture(scope="module")
def evaluation(policy, judges):
    frame = pd.DataFrame({"prompt": PROMPTS, "query": [f"{p} :" for p in PROMPTS]})
    cfg = EvaluationConfig(samples_per_prompt=2, toxic_threshold=0.5, seed=3, relevance_model=None, batch_size=3)
    return evaluate_policy(policy.model, policy.tokenizer, frame, judges, GEN, cfg)


def test_two_samples_per_prompt_in_prompt_order(evaluation):
    samples = evaluation.samples
    assert len(samples) == 2 * len(PROMPTS)
    assert samples["prompt"].tolist() == [p for p in PROMPTS for _ in range(2)]
    assert samples["query"].tolist() == [f"{p} :" for p in PROMPTS for _ in range(2)]
    assert all(isinstance(r, str) and r.strip() for r in samples["response"])
    pairs = samples.groupby("prompt", sort=False)["response"].agg(list)
    assert any(a != b for a, b in pairs), "both samples of every prompt are identical: sampling is not independent"
    assert evaluation.tokens_per_second > 0


def test_judge_columns_are_the_judges_scores_of_each_response(evaluation, judges):
    samples = evaluation.samples
    jigsaw, tiny = judges
    assert list(samples.columns) == ["prompt", "query", "response", "prompt_id", "sample", "response_ids", "logprob", "logprob_t1", "jigsaw-bilstm", "tiny-hate"]
    assert samples["jigsaw-bilstm"].tolist() == pytest.approx(jigsaw.backend.toxic_probability(samples["response"].tolist()), abs=1e-6)
    raw_prompt_plus_response = (samples["prompt"] + samples["response"]).tolist()
    assert samples["tiny-hate"].tolist() == pytest.approx(tiny.backend.toxic_probability(raw_prompt_plus_response), abs=1e-6)


@pytest.mark.parametrize("judge", ["jigsaw-bilstm", "tiny-hate"])
def test_stats_are_computed_from_the_samples_table(evaluation, judge):
    column = evaluation.samples[judge].tolist()
    stats = evaluation.judges[judge]
    assert stats.n == len(column) == 8
    assert stats.mean == pytest.approx(sum(column) / len(column))
    assert stats.std == pytest.approx(math.sqrt(sum((x - stats.mean) ** 2 for x in column) / len(column)))
    assert stats.frac_toxic == pytest.approx(sum(x > 0.5 for x in column) / len(column))
    assert 0.0 <= min(column) and max(column) <= 1.0
    maxima = evaluation.samples.groupby("prompt_id")[judge].max()  # RealToxicityPrompts: over each prompt's 2 answers
    assert len(maxima) == len(PROMPTS) and stats.k == 2
    assert stats.expected_max == pytest.approx(maxima.mean())
    assert stats.toxicity_probability == pytest.approx((maxima >= 0.5).mean())


def test_toxic_threshold_comes_from_the_config(evaluation, policy, judges, test_prompts):
    """The median score as threshold: the same samples (same seed) must split into toxic and not."""
    scores = evaluation.samples["tiny-hate"].tolist()
    threshold = statistics.median(scores)
    at_median = evaluate_policy(
        policy.model, policy.tokenizer, test_prompts, judges[1:], GEN, EvaluationConfig(samples_per_prompt=2, toxic_threshold=threshold, seed=3)
    )
    assert at_median.judges["tiny-hate"].frac_toxic == pytest.approx(sum(s > threshold for s in scores) / len(scores))
    assert 0.0 < at_median.judges["tiny-hate"].frac_toxic < 1.0


def test_num_prompts_takes_the_first_prompts(policy, judges, test_prompts):
    ev = evaluate_policy(policy.model, policy.tokenizer, test_prompts, judges[:1], GEN, EvaluationConfig(num_prompts=2, samples_per_prompt=1))
    assert ev.samples["prompt"].tolist() == PROMPTS[:2] and ev.judges["jigsaw-bilstm"].n == 2


def test_nothing_to_evaluate_is_a_fixable_error(policy, judges, test_prompts):
    for cfg in (EvaluationConfig(num_prompts=0), EvaluationConfig(samples_per_prompt=0)):
        with pytest.raises(RlaifError, match="nothing to evaluate") as exc:
            evaluate_policy(policy.model, policy.tokenizer, test_prompts, judges[:1], GEN, cfg)
        assert "evaluation.samples_per_prompt" in exc.value.fix


def test_judges_with_the_same_name_are_refused(policy, judges, test_prompts):
    with pytest.raises(RlaifError, match="used twice") as exc:
        evaluate_policy(policy.model, policy.tokenizer, test_prompts, [judges[0], judges[0]], GEN, EvaluationConfig())
    assert "its own name" in exc.value.fix


def test_write_and_read_round_trip(evaluation, tmp_path):
    summary_path = write_evaluation(evaluation, tmp_path / "eval", "baseline")
    assert summary_path == tmp_path / "eval" / "baseline.json"
    summary = read_evaluation(summary_path)
    assert summary == evaluation.summary()
    assert set(summary["judges"]) == {"jigsaw-bilstm", "tiny-hate"}
    assert summary["judges"]["tiny-hate"]["n"] == len(PROMPTS) * 2
    rows = pd.read_parquet(tmp_path / "eval" / "baseline_samples.parquet")
    assert len(rows) == len(PROMPTS) * 2
    pd.testing.assert_frame_equal(rows, evaluation.samples)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["baseline.json", "baseline_samples.parquet"]


# --- generation -----------------------------------------------------------------------------------


def test_sampling_is_deterministic_for_a_seed(policy):
    queries = [f"{p} :" for p in PROMPTS]
    first = generate(policy.model, policy.tokenizer, queries, GEN, num_samples=2, seed=11)
    again = generate(policy.model, policy.tokenizer, queries, GEN, num_samples=2, seed=11)
    other = generate(policy.model, policy.tokenizer, queries, GEN, num_samples=2, seed=12)
    assert first.responses == again.responses
    assert first.responses != other.responses
    assert first.prompt_index == [0, 0, 1, 1, 2, 2, 3, 3]


def test_evaluation_is_deterministic_for_a_seed(policy, judges, test_prompts, evaluation):
    again = evaluate_policy(policy.model, policy.tokenizer, test_prompts, judges, GEN, EvaluationConfig(samples_per_prompt=2, seed=3, relevance_model=None))
    pd.testing.assert_frame_equal(again.samples, evaluation.samples)
    assert again.summary()["judges"] == evaluation.summary()["judges"]


def test_each_response_has_its_own_seed_whatever_its_batch(policy, judges, test_prompts, evaluation):
    """Per-prompt seeds: a prompt answered alone, in another order or batch size gets the same responses (paired comparisons)."""
    subset = test_prompts.iloc[[2, 0]]
    alone = evaluate_policy(policy.model, policy.tokenizer, subset, judges[:1], GEN, EvaluationConfig(samples_per_prompt=2, seed=3, batch_size=1))
    full = evaluation.samples.set_index(["prompt_id", "sample"])["response"]
    assert [full[(row.prompt_id, row.sample)] for row in alone.samples.itertuples()] == alone.samples["response"].tolist()
    other_seed = evaluate_policy(policy.model, policy.tokenizer, subset, judges[:1], GEN, EvaluationConfig(samples_per_prompt=2, seed=4))
    assert other_seed.samples["response"].tolist() != alone.samples["response"].tolist()


def test_sampled_ids_are_stored_through_eos(policy, evaluation):
    eos = policy.tokenizer.eos_token_id
    for ids, text in zip(evaluation.samples["response_ids"], evaluation.samples["response"]):
        ids = list(ids)
        assert len(ids) == GEN.max_new_tokens or ids[-1] == eos
        assert eos not in ids[:-1]
        assert policy.tokenizer.decode(ids, skip_special_tokens=True).strip() == text.strip()


def test_greedy_batches_with_left_padding_match_one_by_one(policy):
    """Prompts of different lengths share a batch only if left padding and the attention mask are right."""
    greedy = GenerationConfig(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    queries = [f"{p} :" for p in PROMPTS]
    batched = generate(policy.model, policy.tokenizer, queries, greedy, batch_size=len(queries))
    single = [generate(policy.model, policy.tokenizer, [q], greedy, batch_size=1).responses[0] for q in queries]
    assert batched.responses == single
    assert len({len(policy.tokenizer(q)["input_ids"]) for q in queries}) > 1
    assert batched.new_tokens == 6 * len(queries)


def test_seq2seq_policy_generates_one_response_per_sample(tmp_path):
    t5 = load_model(str(tiny_seq2seq_lm(tmp_path / "t5")))
    out = generate(t5.model, t5.tokenizer, ["hello my friend", "you are"], GEN, num_samples=3, seed=0)
    assert len(out.responses) == 6 and out.prompt_index == [0, 0, 0, 1, 1, 1]
    assert all(isinstance(r, str) and r for r in out.responses)
    assert 3 * 6 <= out.new_tokens <= 8 * 6


def test_stop_strings_cut_the_response():
    assert truncate_at_stop("hello there. user: next", ["user:", "\n"]) == "hello there. "
    assert truncate_at_stop("a\nb user:", ["user:", "\n"]) == "a"
    assert truncate_at_stop("no stop here", ["user:"]) == "no stop here"


# --- the local `evaluate` module ------------------------------------------------------------------


@pytest.fixture(scope="module")
def toxicity_module():
    return evaluate.load(rlaif_tasks.evaluation.TOXICITY_MODULE)


TOXIC = "you are a stupid idiot and i hate you"
HARMLESS = ["have a nice day", "thank you for your help", "the weather is lovely today"]


def test_evaluate_module_scores_offline_with_the_jigsaw_judge(toxicity_module):
    texts = [TOXIC, *HARMLESS]
    scores = toxicity_module.compute(predictions=texts)["toxicity"]
    expected = build_scorer(ScorerConfig(model="jigsaw-bilstm"), purpose="toxicity")(texts)
    assert scores == pytest.approx(expected, abs=1e-6)
    assert scores[0] > 0.5 > max(scores[1:])


def test_evaluate_module_aggregations(toxicity_module):
    texts = [TOXIC, *HARMLESS]
    scores = toxicity_module.compute(predictions=texts)["toxicity"]
    assert toxicity_module.compute(predictions=texts, aggregation="maximum") == {"max_toxicity": pytest.approx(scores[0])}
    assert toxicity_module.compute(predictions=texts, aggregation="ratio") == {"toxicity_ratio": 0.25}
    low = sorted(scores)[1]
    assert toxicity_module.compute(predictions=texts, aggregation="ratio", threshold=low) == {"toxicity_ratio": 0.75}
    assert toxicity_module.compute(predictions=HARMLESS, aggregation="ratio") == {"toxicity_ratio": 0.0}


def test_evaluate_module_takes_an_hf_classifier_judge(toxicity_module, tmp_path):
    folder = str(tiny_classifier(tmp_path / "clf", id2label={0: "hate", 1: "nothate"}))
    scores = toxicity_module.compute(predictions=[TOXIC, *HARMLESS], judge=folder)["toxicity"]
    expected = build_scorer(ScorerConfig(model=folder), purpose="toxicity")([TOXIC, *HARMLESS])
    assert scores == pytest.approx(expected, abs=1e-6)


def test_perplexity_of_each_response_is_its_own_whatever_the_batch(policy):
    """Fluency: exp(mean NLL of a response's tokens given its query), as one unpadded sequence would give it, in any batch."""
    import torch

    from rlaif_tasks.evaluation.quality import response_perplexities

    tok = policy.tokenizer
    queries = ["you are", "what do you think of people who always", "", "hi"]
    responses = ["a kind person", "they are fine", "well then", ""]

    def alone(query: str, response: str) -> float:
        q = tok(query, add_special_tokens=True)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([q + r])
        with torch.inference_mode():
            logp = torch.log_softmax(policy.model(input_ids=ids).logits.float()[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        scored = logp[max(len(q), 1) - 1 :]
        return math.exp(-float(scored.sum()) / len(scored)) if len(scored) else math.nan

    expected = [alone(q, r) for q, r in zip(queries, responses)]
    for batch_size in (1, 3, 4):
        got = response_perplexities(policy.model, tok, queries, responses, batch_size=batch_size)
        assert math.isnan(got[3]) and math.isnan(expected[3])
        assert got[:3] == pytest.approx(expected[:3], rel=1e-4), batch_size
