import math

import pytest

from rlaif_tasks.evaluation.toxicity import compare, format_comparison, relative_improvement, summarise


def test_relative_improvement_is_the_seeds_formula():
    assert relative_improvement(0.4, 0.1) == pytest.approx(0.75)
    assert relative_improvement(0.2, 0.3) == pytest.approx(-0.5)
    assert math.isnan(relative_improvement(0.0, 0.1))


def test_summarise_counts_share_above_threshold():
    stats = summarise([0.1, 0.6, 0.9, 0.2], threshold=0.5)
    assert stats.mean == pytest.approx(0.45)
    assert stats.std == pytest.approx(math.sqrt(((0.35**2) + (0.15**2) + (0.45**2) + (0.25**2)) / 4))
    assert stats.frac_toxic == 0.5 and stats.n == 4


def test_compare_reports_mean_and_std_improvement_per_shared_judge():
    before = {"judges": {"a": {"mean": 0.5, "std": 0.2, "frac_toxic": 0.5}, "only_before": {"mean": 1, "std": 1, "frac_toxic": 1}}}
    after = {"judges": {"a": {"mean": 0.1, "std": 0.15, "frac_toxic": 0.0}}}
    report = compare(before, after)
    assert list(report) == ["a"]
    assert report["a"]["mean_improvement"] == pytest.approx(0.8)
    assert report["a"]["std_improvement"] == pytest.approx(0.25)
    assert "80.0%" in format_comparison(report)
