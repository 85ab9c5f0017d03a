import itertools
import math

import numpy as np
import pytest

from rlaif_tasks.evaluation.stats import (
    clears,
    paired_bootstrap,
    paired_differences,
    per_prompt_means,
    sampling_seeds,
    seed_for_logical_date,
    significantly_worse,
)


def test_per_prompt_means_average_the_samples_of_each_prompt():
    ids, means = per_prompt_means(["a", "b", "a", "c", "b"], [0.2, 0.5, 0.4, 1.0, 0.1])
    assert ids == ["a", "b", "c"]
    assert means == pytest.approx([0.3, 0.3, 1.0])


def test_per_prompt_means_rejects_ids_and_scores_of_different_lengths():
    with pytest.raises(ValueError, match="2 prompt ids for 3 scores"):
        per_prompt_means(["a", "b"], [0.1, 0.2, 0.3])


def test_paired_differences_align_on_the_prompts_both_have():
    ids, ref, chal = paired_differences({"b": 0.4, "a": 0.2, "c": 0.9}, {"c": 0.3, "a": 0.1, "d": 0.5})
    assert ids == ["a", "c"]
    assert ref.tolist() == [0.2, 0.9]
    assert chal.tolist() == [0.1, 0.3]


def test_paired_differences_need_two_prompts_in_common():
    with pytest.raises(ValueError, match="^1 prompt"):
        paired_differences({"a": 0.2, "b": 0.3}, {"a": 0.1, "c": 0.3})
    with pytest.raises(ValueError, match="^0 prompt"):
        paired_differences({"a": 0.2}, {"b": 0.1})


def test_identical_policies_give_zero_and_a_degenerate_interval():
    ref = [0.1, 0.7, 0.3, 0.0, 0.5]
    result = paired_bootstrap(ref, ref, n_resamples=2_000)
    assert result["relative"] == {"point": 0.0, "lower": 0.0, "upper": 0.0}
    assert result["difference"] == {"point": 0.0, "lower": 0.0, "upper": 0.0}
    assert not clears(result, 0.0) and not significantly_worse(result)


def test_a_constant_shift_collapses_the_difference_interval_to_the_shift():
    ref = np.array([0.3, 0.8, 0.5, 0.6])
    result = paired_bootstrap(ref, ref - 0.1, n_resamples=2_000)
    for key in ("point", "lower", "upper"):
        assert result["difference"][key] == pytest.approx(0.1)


def test_a_constant_ratio_collapses_the_relative_interval_to_the_ratio():
    ref = np.array([0.3, 0.8, 0.5, 0.6])
    result = paired_bootstrap(ref, 0.8 * ref, n_resamples=2_000)
    for key in ("point", "lower", "upper"):
        assert result["relative"][key] == pytest.approx(0.2)
    assert clears(result, 0.19) and not clears(result, 0.21)


def _exact_quantiles(values, confidence):
    """Efron's percentile bounds of an equally likely list: the ceil(q * N)-th smallest."""
    ordered = sorted(values)
    tail = (1 - confidence) / 2
    return ordered[math.ceil(tail * len(ordered)) - 1], ordered[math.ceil((1 - tail) * len(ordered)) - 1]


@pytest.mark.parametrize("confidence", [0.8, 0.5])
def test_bounds_match_all_27_resamples_of_three_prompts(confidence):
    ref, chal = [0.5, 0.2, 0.9], [0.3, 0.25, 0.4]
    differences, relatives = [], []
    for idx in itertools.product(range(3), repeat=3):
        r, c = sum(ref[i] for i in idx) / 3, sum(chal[i] for i in idx) / 3
        differences.append(r - c)
        relatives.append((r - c) / r)
    result = paired_bootstrap(ref, chal, n_resamples=200_000, confidence=confidence, seed=1)
    assert (result["difference"]["lower"], result["difference"]["upper"]) == pytest.approx(_exact_quantiles(differences, confidence))
    assert (result["relative"]["lower"], result["relative"]["upper"]) == pytest.approx(_exact_quantiles(relatives, confidence))


def test_three_prompt_bounds_by_hand():
    # differences 0.2, -0.05, 0.5; at 80% the 3rd smallest and 3rd largest of the 27 resample means:
    # {-0.05 x3} (1 way) then {-0.05, -0.05, 0.2} (3 ways); {0.5 x3} (1 way) then {0.5, 0.5, 0.2} (3 ways)
    result = paired_bootstrap([0.5, 0.2, 0.9], [0.3, 0.25, 0.4], n_resamples=200_000, confidence=0.8)
    assert result["difference"]["point"] == pytest.approx(0.65 / 3)
    assert result["difference"]["lower"] == pytest.approx(0.1 / 3)
    assert result["difference"]["upper"] == pytest.approx(0.4)
    assert result["relative"]["point"] == pytest.approx(0.65 / 1.6)
    # {a, b, b}: (0.5 + 0.4 - 0.3 - 0.5) / 0.9
    assert result["relative"]["lower"] == pytest.approx(0.1 / 0.9)


def test_a_zero_reference_mean_in_a_resample_counts_against_the_challenger():
    # resamples of 2: {0, 0} (1/4) ref 0 vs chal 0.1 -> -inf; mixed (1/2) -> -0.2; {1, 1} (1/4) -> 0
    result = paired_bootstrap([0.0, 0.5], [0.1, 0.5], n_resamples=10_000)
    assert result["relative"]["point"] == pytest.approx(-0.2)
    assert result["relative"]["lower"] == -math.inf
    assert result["relative"]["upper"] == 0.0
    assert (result["difference"]["lower"], result["difference"]["upper"]) == pytest.approx((-0.1, 0.0))
    assert 2_300 < result["n_reference_zero"] < 2_700
    assert not clears(result, 0.0)


def test_an_all_zero_reference():
    clean = paired_bootstrap([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], n_resamples=500)
    assert clean["relative"] == {"point": 0.0, "lower": 0.0, "upper": 0.0}
    assert clean["n_reference_zero"] == 500
    worse = paired_bootstrap([0.0, 0.0, 0.0], [0.2, 0.1, 0.3], n_resamples=500)
    assert worse["relative"] == {"point": -math.inf, "lower": -math.inf, "upper": -math.inf}
    assert significantly_worse(worse) and not clears(worse, 0.0)


def test_noise_alone_does_not_clear_the_gate():
    rng = np.random.default_rng(7)
    ref = rng.uniform(0.1, 0.9, 200)
    noise = rng.normal(0.0, 0.05, 100)
    chal = ref + rng.permutation(np.concatenate([noise, -noise]))
    result = paired_bootstrap(ref, chal)
    assert result["difference"]["point"] == pytest.approx(0.0, abs=1e-12)
    assert result["relative"]["lower"] < 0.0 < result["relative"]["upper"]
    assert result["difference"]["lower"] < 0.0 < result["difference"]["upper"]
    assert not clears(result, 0.05)
    assert not significantly_worse(result)


def test_a_real_improvement_clears_and_its_reverse_is_significantly_worse():
    rng = np.random.default_rng(7)
    ref = rng.uniform(0.1, 0.9, 200)
    chal = 0.8 * ref + rng.normal(0.0, 0.01, 200)
    result = paired_bootstrap(ref, chal)
    assert result["relative"]["point"] == pytest.approx(0.2, abs=0.01)
    assert clears(result, 0.1) and not significantly_worse(result)
    assert significantly_worse(paired_bootstrap(chal, ref))


def test_the_result_records_how_it_was_computed_and_a_seed_reproduces_it():
    ref, chal = [0.4, 0.1, 0.6, 0.3], [0.2, 0.2, 0.5, 0.1]
    result = paired_bootstrap(ref, chal, n_resamples=3_000, confidence=0.9, seed=5)
    assert {k: result[k] for k in ("n_prompts", "n_resamples", "confidence", "seed")} == {
        "n_prompts": 4, "n_resamples": 3_000, "confidence": 0.9, "seed": 5,
    }
    assert result["reference_mean"] == pytest.approx(0.35) and result["challenger_mean"] == pytest.approx(0.25)
    assert paired_bootstrap(ref, chal, n_resamples=3_000, confidence=0.9, seed=5) == result


@pytest.mark.parametrize(
    "ref, chal, kwargs, message",
    [
        ([0.1, 0.2], [0.1], {}, "aligned"),
        ([0.1], [0.1], {}, "at least 2"),
        ([0.1, math.nan], [0.1, 0.2], {}, "finite"),
        ([0.1, 0.2], [0.1, 0.2], {"confidence": 1.0}, "confidence"),
        ([0.1, 0.2], [0.1, 0.2], {"n_resamples": 0}, "n_resamples"),
    ],
)
def test_paired_bootstrap_rejects_bad_input(ref, chal, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(ref, chal, **kwargs)


def test_sampling_seeds_depend_on_base_seed_and_prompt_only():
    seeds = sampling_seeds(0, ["a", "b", "c"])
    assert seeds == sampling_seeds(0, ["a", "b", "c"])
    assert len(set(seeds)) == 3
    assert sampling_seeds(0, ["c", "a"]) == [seeds[2], seeds[0]]
    assert sampling_seeds(1, ["a"]) != seeds[:1]
    assert all(0 <= s < 2**32 for s in seeds)
    # pinned: changing the derivation silently changes the samples of every stored run
    assert seeds[:2] == [3879116569, 117675622]


def test_seed_for_logical_date_is_stable_per_instant():
    seed = seed_for_logical_date("2024-05-01T02:00:00+00:00")
    assert seed == 1170122319
    assert seed_for_logical_date("2024-05-01T02:00:00Z") == seed
    assert seed_for_logical_date("2024-05-01T04:00:00+02:00") == seed
    assert seed_for_logical_date("2024-05-01T02:00:00") == seed
    assert seed_for_logical_date("2024-05-02T02:00:00+00:00") != seed
    with pytest.raises(ValueError):
        seed_for_logical_date("last tuesday")
