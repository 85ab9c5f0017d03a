"""RealToxicityPrompts' expected maximum toxicity and toxicity probability: the math on hand-computed numbers,
their paired intervals, where they are reported (report.json, MLflow metric names, text, gate) and bench/rtp_metrics.py."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlaif_tasks import gate, tracking
from rlaif_tasks.config import load_config
from rlaif_tasks.evaluation.rtp import paired_rtp, per_prompt_max, report_row, summarise_rtp
from rlaif_tasks.evaluation.runner import compare_evaluations
from rlaif_tasks.evaluation.stats import paired_bootstrap, paired_differences, per_prompt_means
from rlaif_tasks.evaluation.toxicity import format_comparison, format_evaluation, summarise

ROOT = Path(__file__).resolve().parent.parent

# 3 prompts x 2 answers. Maxima before 0.7, 0.3, 0.5 (expected max 0.5; toxic at >= 0.5: p1, p3, probability 2/3);
# after 0.4, 0.2, 0.6 (expected max 0.4; toxic: p3, probability 1/3). Drops: 0.1 / 0.5 = 20%, (1/3) / (2/3) = 50%.
IDS = ["p1", "p1", "p2", "p2", "p3", "p3"]
BEFORE = [0.2, 0.7, 0.1, 0.3, 0.5, 0.4]
AFTER = [0.1, 0.4, 0.2, 0.1, 0.6, 0.3]
QUICK = {"n_resamples": 2000, "confidence": 0.95, "seed": 0}


def test_per_prompt_max_and_counts_by_hand():
    ids, maxima, counts = per_prompt_max(IDS, BEFORE)
    assert ids == ["p1", "p2", "p3"]
    assert maxima.tolist() == [0.7, 0.3, 0.5] and counts.tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="prompt ids"):
        per_prompt_max(IDS, BEFORE[:-1])


def test_one_evaluation_by_hand_with_the_threshold_inclusive():
    assert summarise_rtp(IDS, BEFORE, threshold=0.5) == {"expected_max": pytest.approx(0.5), "toxicity_probability": pytest.approx(2 / 3), "k": 2}
    assert summarise_rtp(IDS, AFTER, threshold=0.5) == {"expected_max": pytest.approx(0.4), "toxicity_probability": pytest.approx(1 / 3), "k": 2}
    assert summarise_rtp(IDS, BEFORE, threshold=0.51)["toxicity_probability"] == pytest.approx(1 / 3)  # 0.5 is toxic only at >= 0.5
    assert summarise_rtp(["a", "a", "a", "b"], [0.1, 0.2, 0.3, 0.9], 0.5)["k"] == 1  # the fewest answers any prompt has


def test_summarise_carries_them_beside_the_mean():
    stats = summarise(BEFORE, threshold=0.5, prompt_ids=IDS)
    assert (stats.expected_max, stats.toxicity_probability, stats.k) == (pytest.approx(0.5), pytest.approx(2 / 3), 2)
    alone = summarise([0.1, 0.6, 0.9, 0.2], threshold=0.5)  # no prompt ids: each answer its own prompt
    assert (alone.expected_max, alone.toxicity_probability, alone.k) == (pytest.approx(0.45), 0.5, 1)
    assert "exp. max" in format_evaluation({"judges": {"j": asdict(stats)}})
    assert "exp. max" not in format_evaluation({"judges": {"j": {"mean": 0.1, "std": 0.0, "frac_toxic": 0.0, "n": 1}}})  # an older summary


def test_paired_comparison_by_hand():
    order = [4, 1, 0, 5, 3, 2]  # storage order does not matter; a prompt only one side answered is left out
    result = paired_rtp(IDS, BEFORE, [IDS[i] for i in order] + ["only-after"], [AFTER[i] for i in order] + [1.0], threshold=0.5, **QUICK)
    em, tp = result["expected_max"], result["toxicity_probability"]
    assert (em["reference_mean"], em["challenger_mean"], em["relative"]["point"]) == (pytest.approx(0.5), pytest.approx(0.4), pytest.approx(0.2))
    assert (tp["reference_mean"], tp["challenger_mean"], tp["relative"]["point"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3), pytest.approx(0.5))
    for r in (em, tp):
        assert r["relative"]["lower"] <= r["relative"]["point"] <= r["relative"]["upper"]
        assert r["difference"]["lower"] <= r["difference"]["point"] <= r["difference"]["upper"]
        assert (r["n_prompts"], r["n_resamples"], r["confidence"], r["seed"]) == (3, 2000, 0.95, 0)
    assert result["k"] == 2 and result["threshold"] == 0.5
    assert paired_rtp(IDS, BEFORE, [IDS[i] for i in order], [AFTER[i] for i in order], threshold=0.5, **QUICK) == paired_rtp(IDS, BEFORE, IDS, AFTER, threshold=0.5, **QUICK)


def test_interval_shrinks_with_more_prompts():
    def width(copies: int) -> dict[str, float]:
        ids = [f"{p}/{c}" for c in range(copies) for p in IDS]
        result = paired_rtp(ids, BEFORE * copies, ids, AFTER * copies, threshold=0.5, **QUICK)
        assert result["expected_max"]["relative"]["point"] == pytest.approx(0.2)
        return {m: result[m]["difference"]["upper"] - result[m]["difference"]["lower"] for m in ("expected_max", "toxicity_probability")}

    few, many = width(10), width(100)
    for metric in few:
        assert 0 < many[metric] < few[metric] / 2  # about 1 / sqrt(10) as wide


def test_the_interval_is_the_means_bootstrap_on_per_prompt_maxima():
    """Resampled like the gate's mean: with one answer per prompt the expected max is the mean, interval and all."""
    rng = np.random.default_rng(1)
    ids = [f"p{i}" for i in range(40)]
    before, after = rng.random(40), rng.random(40) * 0.8
    _, ref, chal = paired_differences(*(dict(zip(*per_prompt_means(ids, scores))) for scores in (before, after)))  # as gate.compare_judges
    assert paired_rtp(ids, before, ids, after, threshold=0.5, **QUICK)["expected_max"] == paired_bootstrap(ref, chal, **QUICK)
    _, max_before, _ = per_prompt_max(IDS, BEFORE)
    _, max_after, _ = per_prompt_max(IDS, AFTER)
    assert paired_rtp(IDS, BEFORE, IDS, AFTER, threshold=0.5, **QUICK)["expected_max"] == paired_bootstrap(max_before, max_after, **QUICK)


def test_report_row_names():
    row = report_row(paired_rtp(IDS, BEFORE, IDS, AFTER, threshold=0.5, **QUICK))
    for metric in ("expected_max", "toxicity_probability"):
        assert {f"{metric}_{key}" for key in ("before", "after", "improvement", "improvement_lower", "improvement_upper")} <= set(row)
    assert row["expected_max_improvement"] == pytest.approx(0.2) and row["toxicity_probability_after"] == pytest.approx(1 / 3)
    assert (row["k"], row["n_prompts"], row["confidence"]) == (2, 3, 0.95)


def test_comparison_metrics_and_text_report():
    row = {"mean_before": 0.5, "mean_after": 0.1, "mean_improvement": 0.8, "std_before": 0.2, "std_after": 0.1, "std_improvement": 0.5,
           **report_row(paired_rtp(IDS, BEFORE, IDS, AFTER, threshold=0.5, **QUICK))}
    metrics = tracking.comparison_metrics({"jigsaw-bilstm": row})
    assert metrics["improvement/jigsaw-bilstm/expected_max"] == pytest.approx(0.2)
    assert metrics["improvement/jigsaw-bilstm/toxicity_probability"] == pytest.approx(0.5)
    assert {"improvement/jigsaw-bilstm/expected_max_lower", "improvement/jigsaw-bilstm/expected_max_upper",
            "improvement/jigsaw-bilstm/toxicity_probability_lower", "improvement/jigsaw-bilstm/toxicity_probability_upper"} <= set(metrics)
    assert "improvement/j/expected_max_lower" not in tracking.comparison_metrics({"j": {**row, "expected_max_improvement_lower": -math.inf}})
    assert set(tracking.comparison_metrics({"j": {k: row[k] for k in list(row)[:6]}})) == {"improvement/j/mean", "improvement/j/std"}
    summary = {"judges": {"j": asdict(summarise(BEFORE, 0.5, IDS))}}
    assert tracking.evaluation_metrics("baseline", summary)["eval/baseline/j/toxicity_probability"] == pytest.approx(2 / 3)
    assert tracking.evaluation_metrics("baseline", summary)["eval/baseline/j/expected_max"] == pytest.approx(0.5)

    text = format_comparison({"jigsaw-bilstm": row})
    assert "over the k=2 answers to each of 3 prompts" in text and "95% paired-bootstrap interval" in text
    em = next(line for line in text.splitlines() if "expected max toxicity" in line)
    assert em.startswith("jigsaw-bilstm") and "0.5000  0.4000   20.0% [" in em
    assert "0.6667  0.3333   50.0% [" in next(line for line in text.splitlines() if "toxicity probability" in line)
    assert max(len(line) for line in text.splitlines()) <= 120


def samples(ids, scores, judge="jigsaw-bilstm") -> pd.DataFrame:
    return pd.DataFrame({"prompt": ids, "query": ids, "response": ["r"] * len(ids), "prompt_id": ids, "sample": [0, 1] * (len(ids) // 2), judge: scores})


def write_run(run_dir: Path, extra: str | None = "forum") -> None:
    """A run folder as the evaluations leave it: summaries and samples of baseline and final, on the test split and an extra set."""
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True)
    for suffix in ("", f".{extra}") if extra else ("",):
        for label, scores in (("baseline", BEFORE), ("final", AFTER)):
            samples(IDS, scores).to_parquet(eval_dir / f"{label}{suffix}_samples.parquet", index=False)
            (eval_dir / f"{label}{suffix}.json").write_text(json.dumps({"judges": {"jigsaw-bilstm": asdict(summarise(scores, 0.5, IDS))}}))


def test_report_json_has_them_on_the_test_split_and_extra_sets(tmp_path):
    write_run(tmp_path / "run")
    config = load_config(overrides={"run_dir": str(tmp_path / "run"), "evaluation.extra_sets": ["data/forum.jsonl"], "gate.n_resamples": 500})
    report = compare_evaluations(config)
    stored = json.loads((tmp_path / "run" / "report.json").read_text())
    for rows in (report["judges"], report["extra_sets"]["forum"], stored["judges"]):
        row = rows["jigsaw-bilstm"]
        assert row["expected_max_before"] == pytest.approx(0.5) and row["toxicity_probability_improvement"] == pytest.approx(0.5)
        assert row["expected_max_improvement_lower"] <= 0.2 <= row["expected_max_improvement_upper"] and row["k"] == 2
        assert row["mean_before"] == pytest.approx(np.mean(BEFORE))


def test_gate_reports_them_per_judge_without_deciding_on_them():
    cfg = load_config(overrides={"gate.n_resamples": 500}).gate
    judges = gate.compare_judges(samples(IDS, BEFORE), samples(IDS, AFTER), ["jigsaw-bilstm"], cfg, seed=0, threshold=0.5)
    r = judges["jigsaw-bilstm"]
    assert r["expected_max"]["relative"]["point"] == pytest.approx(0.2) and r["toxicity_probability"]["challenger_mean"] == pytest.approx(1 / 3)
    assert r["relative"]["point"] == pytest.approx((np.mean(BEFORE) - np.mean(AFTER)) / np.mean(BEFORE))  # the mean, as before
    decision = gate.decide(judges, "jigsaw-bilstm", None, gate.compare_quality({}, {}), 1.0, 2, cfg)
    decision.update(reference={"kind": "base", "version": None}, n_prompts=3)
    text = gate.format_decision(gate.strict_json(decision))
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("jigsaw-bilstm (decides)"))
    assert "expected max toxicity" in lines[at + 1] and "0.5000 -> 0.4000" in lines[at + 1] and "20.0%" in lines[at + 1]
    assert "toxicity probability" in lines[at + 2] and "0.6667 -> 0.3333" in lines[at + 2]
    assert "reported, not deciding" in lines[1]
    del decision["judges"]["jigsaw-bilstm"]["expected_max"], decision["judges"]["jigsaw-bilstm"]["toxicity_probability"]
    assert "expected max" not in gate.format_decision(decision)  # a decision stored before the metrics existed


def test_bench_script_prints_and_writes_its_section(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "demo" / "manual__1"
    write_run(run_dir)
    (run_dir / "config.yaml").write_text(load_config(overrides={"gate.n_resamples": 300, "gate.confidence": 0.9}).to_yaml())
    results = tmp_path / "results.md"
    results.write_text("# Results\n\n<!-- bench:rtp -->\nold\n<!-- /bench:rtp -->\n\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n")
    spec = importlib.util.spec_from_file_location("rtp_metrics", ROOT / "bench" / "rtp_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    text = module.main([str(run_dir), "--write", str(results)])
    assert text in capsys.readouterr().out
    assert "### Held-out test split" in text and "### Extra set `forum`" in text
    assert "| judge | expected max toxicity before | after | drop [90% interval] |" in text
    row = next(line for line in text.splitlines() if line.startswith("| jigsaw-bilstm"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["jigsaw-bilstm", "0.5000", "0.4000"] and cells[3].startswith("20.0% [")
    assert cells[4:6] == ["0.6667", "0.3333"] and cells[6].startswith("50.0% [") and cells[7:] == ["2", "3"]
    written = results.read_text()
    assert "\nold\n" not in written and "<!-- bench:other -->\nkept" in written and text.strip() in written
