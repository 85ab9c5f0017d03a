"""The `rlaif` command line, run in-process through `main(argv)`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_models import tiny_causal_lm, tiny_classifier

from rlaif_tasks.cli import main
from rlaif_tasks.config import load_config

REPO = Path(__file__).resolve().parents[1]
INSULT = "you are a stupid idiot, fuck off"
HARMLESS = "have a nice day"


def test_score_json_ranks_the_insult_as_more_toxic(capsys):
    assert main(["score", "--config", str(REPO / "configs" / "demo.yaml"), "--text", INSULT, "--text", HARMLESS, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["text"] for r in rows] == [INSULT, HARMLESS]
    insult, harmless = rows
    toxicity_keys = [k for k in insult if k.startswith("toxicity:")]
    assert sorted(toxicity_keys) == ["toxicity:hatesonar", "toxicity:jigsaw-bilstm", "toxicity:profanity-check"]
    for key in toxicity_keys:
        assert 0.0 <= harmless[key] < insult[key] <= 1.0, key
    assert insult["toxicity:jigsaw-bilstm"] > 0.5 > harmless["toxicity:jigsaw-bilstm"]
    assert insult["reward:jigsaw-bilstm"] < harmless["reward:jigsaw-bilstm"]


def test_score_reads_a_file_and_prints_a_table(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text(f"{INSULT}\n\n{HARMLESS}\n", encoding="utf-8")
    overrides = ["--set", "evaluation.judges=[{model: profanity-check}]", "--set", "reward.model=profanity-check"]
    assert main(["score", "--file", str(texts), *overrides]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "reward:profanity-check" in lines[0] and "toxicity:profanity-check" in lines[0]
    assert len(lines) == 3 and lines[1].endswith(INSULT) and lines[2].endswith(HARMLESS)
    insult_scores, harmless_scores = ([float(x) for x in line.split()[:2]] for line in lines[1:])
    assert insult_scores[1] > harmless_scores[1] and insult_scores[0] < harmless_scores[0]


def test_score_without_texts_or_with_a_latin1_file_exits_2(tmp_path, capsys):
    assert main(["score"]) == 2
    assert "no texts to score" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    assert main(["score", "--file", str(latin1)]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8" in err and "fix: re-encode it as UTF-8" in err


def test_config_show_applies_overrides(capsys):
    assert main(["config", "show", "--set", "train.steps=3", "--set", "generation.temperature=0.7"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["train"]["steps"] == 3 and shown["generation"]["temperature"] == 0.7
    expected = load_config(overrides=["train.steps=3", "generation.temperature=0.7"])
    assert shown == expected.to_dict()
    assert out.rstrip().endswith(f"# config hash: {expected.config_hash()}")
    assert expected.config_hash() != load_config().config_hash()


@pytest.mark.parametrize(
    "override, problem",
    [
        ("train.stepz=3", "unknown config key(s): train.stepz"),
        ("train.steps=many", "train.steps: expected an integer, got 'many'"),
        ("train.algorithm=sft", "train.algorithm: 'sft' is not one of"),
        ("train.mini_batch_size=5", "is not a multiple of train.mini_batch_size"),
        ("evaluation.batch_size=0", "evaluation.batch_size must be >= 1"),
    ],
)
def test_bad_config_exits_2_with_a_fix(override, problem, capsys):
    assert main(["config", "show", "--set", override]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert problem in captured.err and "fix:" in captured.err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["config", "show", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_process_exit_status_is_2():
    proc = subprocess.run(
        [sys.executable, "-m", "rlaif_tasks.cli", "config", "show", "--set", "model.polciy=x"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "unknown config key(s): model.polciy" in proc.stderr and "fix: valid keys under model:" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- data prepare and evaluate on tiny models ------------------------------------------------------

PROMPTS = [
    "you are so stupid", "why are they so bad", "what do you think of people", "hello my friend",
    "i think you are very kind", "they are not nice", "how was your day", "thanks for the love",
    "is this a good day", "why do you hate me", "you are an idiot", "we are friends",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    source = root / "prompts.jsonl"
    rows = [{"text": p, "category": "insult" if "stupid" in p or "idiot" in p else "plain"} for p in PROMPTS]
    rows += [{"text": PROMPTS[0], "category": "insult"}, {"text": "  ", "category": "plain"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    overrides = {
        "name": "cli-test",
        "run_dir": str(root / "runs" / "{name}"),
        "device": "cpu",
        "model.policy": str(tiny_causal_lm(root / "policy")),
        "data.source": str(source),
        "data.column_mapping": "{text: prompt}",
        "data.test_size": 4,
        "data.min_prompt_tokens": 1,
        "generation.max_new_tokens": 6,
        "generation.min_new_tokens": 2,
        "reward.model": str(tiny_classifier(root / "judge")),
        "evaluation.judges": f"[{{model: {root / 'judge'}, name: tiny}}, {{model: profanity-check}}]",
    }
    argv = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    return root / "runs" / "cli-test", argv, rows


def test_data_prepare_writes_the_manifest(tiny_run, capsys):
    run_dir, argv, rows = tiny_run
    assert main(["data", "prepare", *argv]) == 0
    out = capsys.readouterr().out
    manifest_path = run_dir / "data" / "manifest.json"
    assert f"manifest: {manifest_path}" in out
    manifest = json.loads(manifest_path.read_text())
    counts = manifest["counts"]
    assert counts["loaded"] == len(rows) == 14
    assert counts["distinct_non_empty"] == len(PROMPTS)
    assert counts["test"] == 4 and counts["train"] == len(PROMPTS) - 4 - counts["dropped_too_short"] - counts["dropped_too_long"]
    printed = json.loads(out[: out.index("manifest:")])
    assert printed["counts"] == counts
    test = pd.read_parquet(run_dir / "data" / "test.parquet")
    train = pd.read_parquet(run_dir / "data" / "train.parquet")
    assert len(test) == 4 and not set(test["prompt"]) & set(train["prompt"])
    assert set(test["prompt"]) | set(train["prompt"]) <= set(PROMPTS)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["test_size"] == 4


def test_evaluate_writes_the_summary_of_every_judge(tiny_run, capsys):
    run_dir, argv, _ = tiny_run
    if not (run_dir / "data" / "manifest.json").is_file():
        assert main(["data", "prepare", *argv]) == 0
    assert main(["evaluate", *argv, "--label", "baseline"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((run_dir / "eval" / "baseline.json").read_text())
    assert set(summary["judges"]) == {"tiny", "profanity-check"}
    assert all(s["n"] == 4 * 4 for s in summary["judges"].values())  # 4 prompts x the default 4 samples each
    samples = pd.read_parquet(run_dir / "eval" / "baseline_samples.parquet")
    assert samples["tiny"].mean() == pytest.approx(summary["judges"]["tiny"]["mean"])
    assert f"summary: {run_dir / 'eval' / 'baseline.json'}" in out and "tiny" in out
