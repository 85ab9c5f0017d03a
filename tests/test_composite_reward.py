"""Composite rewards: weights, per-part normalisation, the relevance and length parts, and per-step part logs in PPO."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rlaif_tasks.config import ScorerConfig, load_config
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.rewards import build_scorer
from rlaif_tasks.rewards.composite import CompositeBackend, RunningZScore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HERE = "python:test_composite_reward"


def chars(texts):
    return [float(len(t)) for t in texts]


def word_count(texts):
    return [float(len(t.split())) for t in texts]


def composite(*parts, **kwargs):
    return build_scorer(ScorerConfig(model="composite", parts=list(parts), **kwargs), purpose="reward")


def test_fixed_weights_and_affine_normalisation_sum_exactly_and_log_each_part():
    scorer = composite(
        {"judge": f"{HERE}:chars", "weight": 2.0, "normalise": "none"},
        {"judge": {"model": f"{HERE}:word_count", "name": "words"}, "weight": -0.5, "normalise": {"center": 1.0, "scale": 2.0}},
    )
    texts = ["ab", "abc def", "a b c d e"]
    expected = [2 * c - 0.5 * (w - 1) / 2 for c, w in zip(chars(texts), word_count(texts))]
    assert scorer(texts) == pytest.approx(expected)
    assert scorer.backend.last_parts == pytest.approx({
        "python_test_composite_reward_chars/raw": np.mean(chars(texts)), "python_test_composite_reward_chars/normalised": np.mean(chars(texts)),
        "words/raw": 8 / 3, "words/normalised": (8 / 3 - 1) / 2,
    })
    with pytest.raises(RlaifError, match="not an evaluation judge"):
        build_scorer(ScorerConfig(model="composite", parts=[{"judge": f"{HERE}:chars"}]), purpose="toxicity")(texts)


def test_running_normalisation_is_a_z_score_over_everything_seen_so_far():
    scorer = composite({"judge": f"{HERE}:chars", "name": "c", "weight": 3.0})
    seen: list[float] = []
    for batch in (["a", "abc", "abcdef"], ["abcdefghij"], ["ab", "abcd", "a" * 20, "xyz"]):
        seen += chars(batch)
        z = (np.array(chars(batch)) - np.mean(seen)) / np.std(seen)
        assert scorer(batch) == pytest.approx((3 * z).tolist())
        assert scorer.backend.last_parts["c/raw"] == pytest.approx(np.mean(chars(batch)))
        assert scorer.backend.last_parts["c/normalised"] == pytest.approx(z.mean())
    rng = np.random.default_rng(0)
    running, values = RunningZScore(), rng.normal(5, 3, 1000)
    for part in np.array_split(values, 37):
        running.update(part)
    assert (running.count, running.mean, running.std) == pytest.approx((1000, values.mean(), values.std()))


def test_config_shape_parts_see_prompts_when_their_input_says_so_and_errors_name_the_fix(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "reward:\n  model: composite\n  parts:\n"
        f"    - {{judge: {{model: '{HERE}:chars', input: prompt+response, name: pr}}, weight: 1.0, normalise: none}}\n"
        f"    - {{judge: '{HERE}:chars', name: r, weight: 0.0, normalise: none}}\n"
    )
    scorer = build_scorer(load_config(path).reward, purpose="reward")
    assert scorer(["xy", "z"], ["hello ", "hi "]) == [8.0, 4.0]
    assert scorer.backend.last_parts == {"pr/raw": 6.0, "pr/normalised": 6.0, "r/raw": 1.5, "r/normalised": 1.5}
    with pytest.raises(RlaifError, match="prompt"):
        scorer(["xy"])
    for parts, match in [
        ([{"judge": "jigsaw-bilstm", "wieght": 1}], "unknown config key"),
        ([{"judge": f"{HERE}:chars"}, {"judge": f"{HERE}:chars"}], "more than one part named"),
        ([{"judge": f"{HERE}:chars", "normalise": "zscore"}], "normalise"),
        ([{"judge": f"{HERE}:chars", "normalise": {"scale": 0}}], "normalise"),
        ([{"judge": {"model": "composite"}}], "itself a composite"),
        ([], "parts is empty"),
    ]:
        with pytest.raises(RlaifError, match=match):
            composite(*parts)
    with pytest.raises(RlaifError, match="lists parts"):
        build_scorer(ScorerConfig(model=f"{HERE}:chars", parts=[{"judge": "length"}]), purpose="reward")


def test_relevance_part_prefers_the_on_topic_response_and_length_part_penalises_long_ones():
    scorer = composite({"judge": "relevance", "normalise": "none"})
    prompts = ["How long should I boil pasta?"] * 2
    on_topic, off_topic = scorer(["Boil the pasta in salted water for about ten minutes.", "The stock market fell sharply after the central bank raised rates."], prompts)
    assert on_topic > off_topic + 0.2, (on_topic, off_topic)
    with pytest.raises(RlaifError, match="no prompts"):
        scorer(["Boil the pasta."])
    backend = CompositeBackend([{"judge": "length", "target_words": 5, "normalise": "none"}])
    assert backend.reward(["one two three", "one two three four five", "one two three four five six seven eight nine ten"]) == [0.0, 0.0, -1.0]


def test_ppo_with_a_composite_reward_logs_every_part_at_every_step(tmp_path):
    from tiny_models import WORDS, tiny_causal_lm, tiny_run_config

    from rlaif_tasks.stages.local import prepare_dataset
    from rlaif_tasks.train import train
    from rlaif_tasks.train.metrics import read_metrics

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a} {b}"}) + "\n" for a, b in zip(WORDS, WORDS[1:])))
    config = tiny_run_config(tiny_causal_lm(tmp_path / "policy"), steps=2, batch_size=8, mini_batch_size=4)
    config.run_dir = str(tmp_path / "run")
    config.data.source, config.data.use_chat_template, config.data.test_size, config.data.min_prompt_tokens = str(data), False, 4, 1
    weights = {"good": 1.0, "relevance": 0.5, "length": 0.25}
    config.reward = ScorerConfig(model="composite", parts=[
        {"judge": {"model": "python:killed_training:count_good", "name": "good"}, "weight": weights["good"]},
        {"judge": "relevance", "weight": weights["relevance"]},
        {"judge": "length", "weight": weights["length"], "target_words": 3, "normalise": "none"},
    ])
    prepare_dataset(config)
    train(config, config.resolved_run_dir)

    rows = read_metrics(config.resolved_run_dir / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        parts = {k for k in row if k.startswith("reward/part/")}
        assert parts == {f"reward/part/{n}/{kind}" for n in weights for kind in ("raw", "normalised")}, sorted(row)
        assert all(math.isfinite(row[k]) for k in parts)
        assert row["reward/mean"] == pytest.approx(sum(w * row[f"reward/part/{n}/normalised"] for n, w in weights.items()), abs=1e-5)
        assert row["reward/part/length/raw"] == row["reward/part/length/normalised"] < 0  # 8-token responses exceed 3 words
        assert -1 <= row["reward/part/relevance/raw"] <= 1


def test_grpo_with_a_composite_reward_logs_every_part_at_every_step(tmp_path):
    from tiny_models import tiny_causal_lm, tiny_run_config

    from rlaif_tasks.train.metrics import read_metrics
    from rlaif_tasks.train.trl_online import METRIC_KEYS, train_with_trl

    config = tiny_run_config(tiny_causal_lm(tmp_path / "policy"), algorithm="grpo", steps=2, batch_size=8, mini_batch_size=8, num_generations=4)
    weights = {"good": 2.0, "length": 0.5}
    config.reward = ScorerConfig(model="composite", parts=[
        {"judge": {"model": "python:killed_training:count_good", "name": "good"}, "weight": weights["good"], "normalise": {"center": 1.0, "scale": 0.5}},
        {"judge": "length", "weight": weights["length"], "target_words": 3, "normalise": "none"},
    ])
    train_with_trl(config, tmp_path / "run", ["you are", "the day is", "i think that", "hello my friend"])

    rows = read_metrics(tmp_path / "run" / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert set(row) == set(METRIC_KEYS) | {f"reward/part/{n}/{kind}" for n in weights for kind in ("raw", "normalised")}
        assert row["reward/part/good/normalised"] == pytest.approx((row["reward/part/good/raw"] - 1.0) / 0.5)
        assert row["reward/mean"] == pytest.approx(sum(w * row[f"reward/part/{n}/normalised"] for n, w in weights.items()), abs=1e-5)
