"""Preference data: human imports drop exactly the bad rows, AI-feedback pairs honour the margin."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from rlaif_tasks.errors import RlaifError
from rlaif_tasks.preferences import (
    build_ai_feedback_pairs,
    load_human_preferences,
    position_bias_check,
    read_preferences,
    split_pairs_by_prompt,
    validate_preferences,
    write_preferences,
)

BAD_BYTE = "<0xFF>"
"""Stands for a raw 0xFF byte (never valid UTF-8), put into the file after encoding."""


def write_table(path: Path, rows: list[dict], columns: tuple[str, ...] = ("prompt", "chosen", "rejected")) -> Path:
    """Write rows as .jsonl/.csv/.parquet (by suffix); None is a missing value, BAD_BYTE a raw 0xFF byte."""
    kind = path.suffix
    if kind == ".jsonl":
        data = "".join(json.dumps({c: r.get(c) for c in columns}, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    elif kind == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if r.get(c) is None else r[c] for c in columns] for r in rows])
        data = buf.getvalue().encode("utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        def column(c: str):
            raw = [None if r.get(c) is None else r[c].encode("utf-8").replace(BAD_BYTE.encode(), b"\xff") for r in rows]
            return pa.array(raw, type=pa.binary()).view(pa.string())

        pq.write_table(pa.table({c: column(c) for c in columns}), path)
        return path
    path.write_bytes(data.replace(BAD_BYTE.encode(), b"\xff"))
    return path


def dropped_rows(report: dict) -> dict[str, list[int]]:
    return {reason: info["examples"] for reason, info in report["dropped"].items() if info["count"]}


# -- human preferences -----------------------------------------------------------------------------

GOOD = {"prompt": "How are you?", "chosen": "Fine, thanks.", "rejected": "Go away."}
ROWS = [
    GOOD,                                                                       # 0 kept
    {"prompt": "   ", "chosen": "a", "rejected": "b"},                          # 1 missing (blank)
    {"prompt": "p2", "chosen": " same ", "rejected": "same"},                   # 2 identical
    dict(GOOD),                                                                 # 3 duplicate of 0
    {"prompt": "p" * 30, "chosen": "x" * 71, "rejected": "short"},              # 4 too_long (30 + 71 > 100)
    {"prompt": "p5", "chosen": "mojibake \ufffd here", "rejected": "b"},        # 5 invalid_utf8 (U+FFFD)
    {"prompt": "p6", "chosen": f"caf{BAD_BYTE}", "rejected": "b"},              # 6 invalid_utf8 (raw byte)
    {"prompt": "Tell a joke", "chosen": "x" * 70, "rejected": "No."},           # 7 kept (11 + 70 <= 100)
    {"prompt": "p8", "chosen": "a", "rejected": None},                          # 8 missing (absent)
    {"prompt": "How are you?", "chosen": "Fine, thanks.", "rejected": "Meh."},  # 9 kept: not a duplicate of 0
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_each_rule_drops_exactly_its_rows(tmp_path, suffix):
    path = write_table(tmp_path / f"prefs{suffix}", ROWS)
    clean, report = load_human_preferences(path, max_chars=100)
    assert dropped_rows(report) == {"missing": [1, 8], "identical": [2], "duplicate": [3], "too_long": [4], "invalid_utf8": [5, 6]}
    assert report["rows_in"] == len(ROWS) and report["rows_out"] == 3
    assert list(clean.columns) == ["prompt", "chosen", "rejected"]
    assert clean.to_dict("records") == [ROWS[0], ROWS[7], ROWS[9]]


def test_max_chars_counts_prompt_plus_each_response(tmp_path):
    rows = [
        {"prompt": "p" * 10, "chosen": "c" * 90, "rejected": "r"},      # exactly 100: kept
        {"prompt": "p" * 10, "chosen": "c", "rejected": "r" * 91},      # rejected side 101: dropped
        {"prompt": "q" * 3000, "chosen": "c" * 1000, "rejected": "r"},  # 4000 at the default limit: kept
        {"prompt": "q" * 3000, "chosen": "c" * 1001, "rejected": "r"},  # 4001: dropped by default
    ]
    _, report = validate_preferences(pd.DataFrame(rows[:2]), max_chars=100)
    assert dropped_rows(report) == {"too_long": [1]}
    _, report = validate_preferences(pd.DataFrame(rows[2:]))
    assert dropped_rows(report) == {"too_long": [1]}


@pytest.mark.faults
def test_an_import_over_its_size_or_row_limit_is_refused_before_validation(tmp_path):
    """Issue 20: preferences.max_file_mb and max_rows bound what a human import may make a night read."""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "c", "rejected": "r"}) + "\n" for i in range(50)))
    pairs, _ = load_human_preferences(path, max_rows=50)
    assert len(pairs) == 50
    with pytest.raises(RlaifError, match="has 50 rows, over preferences.max_rows=49"):
        load_human_preferences(path, max_rows=49)
    with pytest.raises(RlaifError, match="over preferences.max_file_mb=0.001"):
        load_human_preferences(path, max_file_mb=0.001)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_latin1_file_is_reported_not_crashing(tmp_path, suffix):
    rows = [{"prompt": "Café?", "chosen": "Oui.", "rejected": "Non."}, {"prompt": "Tea?", "chosen": "Yes.", "rejected": "No."}]
    path = write_table(tmp_path / f"utf8{suffix}", rows)
    path.write_bytes(path.read_bytes().decode("utf-8").encode("latin-1"))
    clean, report = load_human_preferences(path)
    assert dropped_rows(report) == {"invalid_utf8": [0]}
    assert clean["prompt"].tolist() == ["Tea?"]


def test_lone_surrogates_are_invalid_utf8(tmp_path):
    path = tmp_path / "escaped.jsonl"
    path.write_text(
        json.dumps({"prompt": "a\ud800b", "chosen": "x", "rejected": "y"}) + "\n" + json.dumps(GOOD) + "\n",
        encoding="ascii",
    )
    clean, report = load_human_preferences(path)
    assert dropped_rows(report) == {"invalid_utf8": [0]}
    frame = pd.DataFrame({"prompt": ["p", "q"], "chosen": [b"ok", b"\xc3("], "rejected": ["r", "r"]}, dtype=object)
    clean, report = validate_preferences(frame)
    assert dropped_rows(report) == {"invalid_utf8": [1]} and clean["chosen"].tolist() == ["ok"]


def test_broken_jsonl_line_and_chat_lists_are_dropped_with_reasons(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(
        json.dumps(GOOD) + "\n"
        + '{"prompt": "cut off", "chosen": "x\n'
        + "\n"
        + json.dumps({"prompt": "p", "chosen": [{"role": "assistant", "content": "hi"}], "rejected": "y"}) + "\n"
        + "[1, 2]\n",
        encoding="utf-8",
    )
    clean, report = load_human_preferences(path)
    assert dropped_rows(report) == {"unparseable": [1, 3], "not_text": [2]}
    assert len(clean) == 1


def test_report_counts_all_but_shows_three_examples():
    frame = pd.DataFrame([{"prompt": "", "chosen": "a", "rejected": "b"}] * 5 + [GOOD])
    _, report = validate_preferences(frame)
    assert report["dropped"]["missing"] == {"count": 5, "examples": [0, 1, 2]}
    assert report["rows_out"] == 1 and report["dropped"]["duplicate"]["count"] == 0


def test_nothing_left_raises_with_reasons(tmp_path):
    rows = [
        {"prompt": "", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "p", "chosen": "y" * 50, "rejected": "b"},
    ]
    path = write_table(tmp_path / "all_bad.csv", rows)
    with pytest.raises(RlaifError) as info:
        load_human_preferences(path, max_chars=20)
    message = info.value.problem
    assert "missing: 1" in message and "identical: 1" in message and "too_long: 1" in message and "3 row(s) in" in message
    assert "duplicate" not in message
    assert "max_chars" in info.value.fix and "column_mapping" in info.value.fix


def test_column_mapping(tmp_path):
    rows = [{"question": "Q1", "better": "good answer", "worse": "bad answer", "rejected": "decoy"}]
    path = write_table(tmp_path / "mapped.parquet", rows, columns=("question", "better", "worse", "rejected"))
    clean, _ = load_human_preferences(path, column_mapping={"prompt": "question", "chosen": "better", "rejected": "worse"})
    assert clean.to_dict("records") == [{"prompt": "Q1", "chosen": "good answer", "rejected": "bad answer"}]
    clean, _ = load_human_preferences(path, column_mapping={"prompt": "question", "chosen": "better"})
    assert clean["rejected"].tolist() == ["decoy"]
    with pytest.raises(RlaifError) as info:
        load_human_preferences(path)
    assert "prompt" in info.value.problem and "'question'" in info.value.problem and "'better'" in info.value.problem
    assert "column_mapping" in info.value.fix
    with pytest.raises(RlaifError, match="mapped to 'answer'"):
        load_human_preferences(path, column_mapping={"prompt": "question", "chosen": "answer"})
    with pytest.raises(RlaifError, match="keys"):
        load_human_preferences(path, column_mapping={"question": "prompt"})


def test_hub_dataset_goes_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config_name=None, split=None):
        calls.append((name, config_name, split))
        return datasets.Dataset.from_dict({"prompt": ["hi", "hi"], "chosen": ["hello", "hello"], "rejected": ["go", "go"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    clean, report = load_human_preferences("someone/prefs", split="test", config_name="default")
    assert calls == [("someone/prefs", "default", "test")]
    assert len(clean) == 1 and dropped_rows(report) == {"duplicate": [1]}


def test_unsupported_or_absent_file(tmp_path):
    with pytest.raises(RlaifError, match="unsupported"):
        load_human_preferences(tmp_path / "prefs.xlsx")
    with pytest.raises(RlaifError, match="does not exist"):
        load_human_preferences(tmp_path / "absent.jsonl")


# -- AI feedback -----------------------------------------------------------------------------------

POSITIVE = {"good", "nice", "kind", "great", "love", "thanks", "friend"}
NEGATIVE = {"bad", "stupid", "idiot", "awful", "hate"}


def word_score(responses: list[str], prompts: list[str]) -> list[float]:
    return [float(sum((w in POSITIVE) - (w in NEGATIVE) for w in r.split())) for r in responses]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, one_torch_thread):
    from tiny_models import tiny_causal_lm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_causal_lm(tmp_path_factory.mktemp("models") / "causal")
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def prompts_df():
    from tiny_models import WORDS

    prompts = [" ".join(WORDS[i : i + 4]) for i in range(0, 48, 3)]
    return pd.DataFrame({"prompt": prompts, "query": [p + " :" for p in prompts], "category": "x"})


def gen_cfg():
    from rlaif_tasks.config import GenerationConfig

    return GenerationConfig(max_new_tokens=12, min_new_tokens=12, batch_size=32)


def test_ai_feedback_pairs_beat_the_margin(tiny_policy, prompts_df):
    model, tokenizer = tiny_policy
    seen_prompts: list[str] = []

    def score_fn(responses, prompts):
        seen_prompts.extend(prompts)
        return word_score(responses, prompts)

    loose = build_ai_feedback_pairs(model, tokenizer, prompts_df, score_fn, gen_cfg(), k=6, margin=0.5, seed=3)
    assert set(seen_prompts) == set(prompts_df["prompt"]) and len(seen_prompts) == 6 * len(prompts_df)
    assert list(loose.columns) == ["prompt", "query", "chosen", "rejected", "score_chosen", "score_rejected", "margin"]
    assert len(loose) > 0 and loose["prompt"].is_unique
    assert loose["score_chosen"].tolist() == word_score(loose["chosen"].tolist(), [])
    assert loose["score_rejected"].tolist() == word_score(loose["rejected"].tolist(), [])
    assert (loose["score_chosen"] - loose["score_rejected"] > 0.5).all()
    assert (loose["margin"] == loose["score_chosen"] - loose["score_rejected"]).all()
    assert (loose["chosen"] != loose["rejected"]).all()
    assert (loose["query"] == loose["prompt"] + " :").all()
    report = loose.attrs["report"]
    assert report["pairs"] == len(loose) and report["prompts"] == len(prompts_df) and report["responses"] == 6 * len(prompts_df)

    strict_margin = float(loose["margin"].median())
    strict = build_ai_feedback_pairs(model, tokenizer, prompts_df, word_score, gen_cfg(), k=6, margin=strict_margin, seed=3)
    assert 0 < len(strict) < len(loose)
    assert (strict["margin"] > strict_margin).all()
    assert strict["prompt"].tolist() == loose.loc[loose["margin"] > strict_margin, "prompt"].tolist()
    assert strict.attrs["report"]["dropped"]["within_margin"] == len(prompts_df) - len(strict) - strict.attrs["report"]["dropped"]["too_few_distinct_responses"]


def test_ai_feedback_pairs_from_two_temperatures_that_a_second_judge_agrees_with(tiny_policy, prompts_df):
    """Issue 24: k responses at each temperature are candidates together; a pair the agreeing judge ranks the other way is dropped."""
    model, tokenizer = tiny_policy
    one = build_ai_feedback_pairs(model, tokenizer, prompts_df, word_score, gen_cfg(), k=4, margin=0.5, seed=3)
    two = build_ai_feedback_pairs(model, tokenizer, prompts_df, word_score, gen_cfg(), k=4, margin=0.5, seed=3, temperatures=[0.7, 1.3])
    assert two.attrs["report"]["responses"] == 2 * 4 * len(prompts_df) and two.attrs["report"]["temperatures"] == [0.7, 1.3]
    assert len(two) >= len(one)  # eight candidates per prompt spread wider than four

    def shorter_is_better(responses, prompts):  # disagrees with word_score on some pairs, agrees on others
        return [-float(len(r)) for r in responses]

    agreed = build_ai_feedback_pairs(model, tokenizer, prompts_df, word_score, gen_cfg(), k=4, margin=0.5, seed=3, temperatures=[0.7, 1.3],
                                     agreeing={"length": shorter_is_better})
    expected = two[two["chosen"].str.len() < two["rejected"].str.len()]
    assert 0 < len(agreed) < len(two)
    assert agreed["prompt"].tolist() == expected["prompt"].tolist() and agreed["chosen"].tolist() == expected["chosen"].tolist()
    assert agreed.attrs["report"]["dropped"]["judge_disagreed"] == {"length": len(two) - len(expected)}
    assert agreed.attrs["report"]["pairs"] == len(agreed)


def test_ai_feedback_refuses_bad_settings(tiny_policy, prompts_df):
    model, tokenizer = tiny_policy
    with pytest.raises(RlaifError, match="k=1"):
        build_ai_feedback_pairs(model, tokenizer, prompts_df, word_score, gen_cfg(), k=1)
    with pytest.raises(RlaifError, match="query"):
        build_ai_feedback_pairs(model, tokenizer, prompts_df[["prompt"]], word_score, gen_cfg())
    with pytest.raises(RlaifError, match="non-finite"):
        build_ai_feedback_pairs(model, tokenizer, prompts_df.head(2), lambda r, p: [float("nan")] * len(r), gen_cfg(), k=2)


def test_position_bias_check_drops_flipping_verdicts():
    pairs = pd.DataFrame({
        "prompt": ["p0", "p1", "p2", "p3", "p4"],
        "chosen": ["good good", "good", "meh", "bad", "good"],
        "rejected": ["bad", "good good good", "meh too", "good", "fine"],
        "score_chosen": [2.0, 1.0, 0.0, -1.0, 1.0],
        "score_rejected": [-1.0, 3.0, 0.0, 1.0, 0.0],
        "margin": [3.0, -2.0, 0.0, -2.0, 1.0],
    })
    calls = []

    def judge(prompts, first, second):
        """More "good" wins in either order; on a tie this judge always picks the first seat; p4 it cannot judge."""
        calls.append(list(first))
        verdicts = []
        for prompt, a, b in zip(prompts, first, second):
            ga, gb = a.split().count("good"), b.split().count("good")
            verdicts.append("tie" if prompt == "p4" else ("A" if ga > gb else "B" if gb > ga else 0))
        return verdicts

    kept, report = position_bias_check(judge, pairs)
    assert calls == [pairs["chosen"].tolist(), pairs["rejected"].tolist()]
    assert kept["prompt"].tolist() == ["p0"]
    assert report == {"pairs_in": 5, "pairs_out": 1, "disagreed": 1, "invalid": 1, "overruled": 2, "swapped": 0}

    swapped, report = position_bias_check(judge, pairs, swap=True)
    assert swapped["prompt"].tolist() == ["p0", "p1", "p3"]
    assert report["swapped"] == 2 and report["disagreed"] == 1 and report["pairs_out"] == 3
    row = swapped.set_index("prompt").loc["p1"]
    assert (row["chosen"], row["rejected"], row["score_chosen"], row["score_rejected"], row["margin"]) == ("good good good", "good", 3.0, 1.0, 2.0)


def test_split_keeps_each_prompt_on_one_side():
    pairs = pd.DataFrame({
        "prompt": [f"prompt {i % 7}" for i in range(40)],
        "chosen": [f"c{i}" for i in range(40)],
        "rejected": [f"r{i}" for i in range(40)],
    })
    train, test = split_pairs_by_prompt(pairs, test_size=0.3, seed=1)
    assert not set(train["prompt"]) & set(test["prompt"])
    assert len(train) + len(test) == len(pairs) and test["prompt"].nunique() == 2
    assert sorted(train["chosen"].tolist() + test["chosen"].tolist()) == sorted(pairs["chosen"])
    shuffled = pairs.sample(frac=1.0, random_state=0)
    assert set(split_pairs_by_prompt(shuffled, 0.3, seed=1)[1]["prompt"]) == set(test["prompt"])
    tests = {frozenset(split_pairs_by_prompt(pairs, 0.3, seed=s)[1]["prompt"]) for s in range(6)}
    assert len(tests) > 1
    assert split_pairs_by_prompt(pairs, test_size=3, seed=1)[1]["prompt"].nunique() == 3
    with pytest.raises(RlaifError, match="test_size"):
        split_pairs_by_prompt(pairs, test_size=7)


def test_manifest_matches_the_parquet(tmp_path):
    pairs = pd.DataFrame({
        "prompt": ["a", "a", "b"], "query": ["a :", "a :", "b :"], "chosen": ["x", "y", "z"], "rejected": ["u", "v", "w"],
        "score_chosen": [1.0, 2.0, 3.0], "score_rejected": [0.0, 0.0, 0.0], "margin": [1.0, 2.0, 3.0],
    })
    extra = {"judges": ["word-score"], "k": 4, "margin": 0.5, "dropped": {"within_margin": 2}, "pairs": 999}
    manifest = write_preferences(pairs, tmp_path / "prefs", extra)
    out = tmp_path / "prefs"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "pairs.parquet"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    stored = pd.read_parquet(out / "pairs.parquet")
    assert manifest["pairs"] == len(stored) == 3 and manifest["prompts"] == stored["prompt"].nunique() == 2
    assert manifest["columns"] == list(stored.columns) and manifest["judges"] == ["word-score"] and manifest["k"] == 4
    import hashlib

    assert manifest["sha256"] == hashlib.sha256((out / "pairs.parquet").read_bytes()).hexdigest()
    frame, read_manifest = read_preferences(out)
    pd.testing.assert_frame_equal(frame, stored)
    assert read_manifest == manifest
    pd.DataFrame({"prompt": ["tampered"], "chosen": ["x"], "rejected": ["y"]}).to_parquet(out / "pairs.parquet")
    with pytest.raises(RlaifError, match="does not match its manifest"):
        read_preferences(out)
    with pytest.raises(RlaifError, match="no preference pairs"):
        write_preferences(pairs.iloc[:0], tmp_path / "empty")
    assert not (tmp_path / "empty" / "pairs.parquet").exists()
