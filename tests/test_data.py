"""Prompt preparation: the bundled set, local files, templates, filters, split and manifest, bad input."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from rlaif_tasks.config import DataConfig
from rlaif_tasks.data import load_eval_set, load_prompts_split, prepare_prompts, read_manifest
from rlaif_tasks.data.detox_prompts import OOD_FILE, bundled_prompts, ood_prompts
from rlaif_tasks.data.prepare import content_hash, group_split, seeded_split
from rlaif_tasks.errors import RlaifError

WORDS = "you are a stupid idiot hello my friend what is this the day is nice".split()
BANNED = {"fuck", "shit", "bitch", "cunt", "nigger", "faggot", "retard"}


@pytest.fixture(scope="module")
def tokenizer():
    from tiny_models import make_tokenizer

    return make_tokenizer()


def prompts_file(tmp_path, n=40, name="prompts.jsonl", column="text"):
    """n distinct texts of 2 to 6 words, then the first three again (duplicates are dropped)."""
    texts = [" ".join([WORDS[i % len(WORDS)], WORDS[i // len(WORDS)]] + [WORDS[(i + k) % len(WORDS)] for k in range(i % 5)]) for i in range(n)]
    rows = [{column: text, "id": i} for i, text in enumerate(texts + texts[:3])]
    path = tmp_path / name
    frame = pd.DataFrame(rows)
    if name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    elif name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path, rows


def test_bundled_set_is_large_mostly_provocative_and_clean():
    rows = bundled_prompts()
    texts = [r["prompt"] for r in rows]
    assert len(texts) >= 1000 and len(set(texts)) == len(texts)
    provocative = [r for r in rows if r["category"] == "provocative"]
    neutral = [r for r in rows if r["category"] == "neutral"]
    assert len(provocative) > len(rows) / 2 and len(neutral) >= 100
    assert {r["source"] for r in neutral} == {"chatterbot-corpus"}
    assert not [t for t in texts if BANNED & set(t.lower().replace(",", " ").replace(".", " ").split())]


def test_bundled_frames_name_the_templates():
    rows = bundled_prompts()
    sizes = pd.Series([r["frame"] for r in rows]).value_counts()
    assert sizes["about-00"] == 20 and sizes["angry-0"] == 14 and sizes["to-you-00"] == 1
    neutral = [r["frame"] for r in rows if r["category"] == "neutral"]
    assert len(set(neutral)) == len(neutral), "each neutral opener is its own group"
    by_frame = {}
    for r in rows:
        by_frame.setdefault(r["frame"], []).append(r["prompt"])
    assert all(p.startswith("Honestly, ") and p.endswith(" is such a complete") for p in by_frame["about-00"])


def test_default_split_is_by_row_as_before(tmp_path, tokenizer):
    assert DataConfig().group_column is None
    splits = prepare_prompts(DataConfig(use_chat_template=False, max_prompt_tokens=64, test_size=200), tokenizer, tmp_path, seed=5)
    train, test = seeded_split(pd.DataFrame(bundled_prompts()), 200, seed=5)
    assert splits.test["prompt"].tolist() == test["prompt"].tolist() and splits.train["prompt"].tolist() == train["prompt"].tolist()
    assert "frame" not in splits.test.columns
    manifest = read_manifest(tmp_path)
    assert manifest["groups"] is None and manifest["settings"]["group_column"] is None and "test_groups" not in manifest["counts"]


def test_group_split_holds_out_whole_frames(tmp_path, tokenizer):
    cfg = DataConfig(use_chat_template=False, max_prompt_tokens=64, test_size=200, group_column="frame")
    a = prepare_prompts(cfg, tokenizer, tmp_path / "a", seed=0)
    b = prepare_prompts(cfg, tokenizer, tmp_path / "b", seed=0)
    c = prepare_prompts(cfg, tokenizer, tmp_path / "c", seed=1)
    train, test = load_prompts_split(tmp_path / "a", "train"), load_prompts_split(tmp_path / "a", "test")
    assert set(train["frame"]).isdisjoint(test["frame"])
    assert len(test) == 200 and len(train) + len(test) == len(bundled_prompts())
    assert a.test["prompt"].tolist() == b.test["prompt"].tolist() != c.test["prompt"].tolist()
    held_out = {f for f in test["frame"] if f.startswith("about-")}
    assert held_out and all((test["frame"] == f).sum() == 20 for f in held_out), "a template's 20 targets stay together"
    manifest = read_manifest(tmp_path / "a")
    assert manifest["settings"]["group_column"] == "frame"
    assert manifest["groups"] == {"train": sorted(set(train["frame"])), "test": sorted(set(test["frame"]))}
    assert (manifest["counts"]["train_groups"], manifest["counts"]["test_groups"]) == (train["frame"].nunique(), test["frame"].nunique())
    assert test["frame"].head(20).nunique() > 1, "the split's rows are shuffled, so its head mixes frames"


def grouped(sizes):
    return pd.DataFrame({"prompt": [f"{g}-{i}" for g, n in enumerate(sizes) for i in range(n)], "g": [g for g, n in enumerate(sizes) for _ in range(n)]})


@pytest.mark.parametrize("seed", range(5))
def test_group_split_sizes(seed):
    train, test = group_split(grouped([10] * 10), "g", 0.25, seed)
    assert len(test) in (20, 30) and len(train) + len(test) == 100 and set(train["g"]).isdisjoint(test["g"])
    train, test = group_split(grouped([5] * 8 + [1] * 10), "g", 13, seed)
    assert len(test) == 13, "singletons fill the gap exactly"
    train, test = group_split(grouped([10, 10, 10]), "g", 2, seed)
    assert (len(train), len(test)) == (20, 10), "a test split gets one group even when every group is larger than asked"
    train, test = group_split(grouped([1, 10]), "g", 9, seed)
    assert (len(train), len(test)) == (10, 1), "the last group is never taken from training"


def test_group_split_errors(tmp_path, tokenizer):
    path, _ = prompts_file(tmp_path, column="prompt")
    message = bad(tmp_path, tokenizer, source=str(path), group_column="frame")
    assert "group column 'frame' is missing" in message and "'id'" in message and "unset it" in message
    single = tmp_path / "single.jsonl"
    pd.read_json(path, lines=True).assign(topic="all").to_json(single, orient="records", lines=True)
    assert "at least 2" in bad(tmp_path, tokenizer, source=str(single), group_column="topic")
    holes = tmp_path / "holes.jsonl"
    pd.read_json(path, lines=True).assign(topic=lambda f: f["id"].where(f["id"] % 2 == 0)).to_json(holes, orient="records", lines=True)
    assert "missing value" in bad(tmp_path, tokenizer, source=str(holes), group_column="topic")
    assert "computes" in bad(tmp_path, tokenizer, source=str(path), group_column="query")


def test_group_split_of_a_local_file(tmp_path, tokenizer):
    path, _ = prompts_file(tmp_path, column="prompt")
    cfg = DataConfig(source=str(path), use_chat_template=False, test_size=0.3, group_column="id")
    splits = prepare_prompts(cfg, tokenizer, tmp_path / "run", seed=2)
    assert set(splits.train["id"]).isdisjoint(splits.test["id"]) and len(splits.test) == round(0.3 * 40)


def first_words(text, n=3):
    return tuple(re.findall(r"[a-z0-9']+", text.lower())[:n])


def test_ood_set_is_large_balanced_and_opens_unlike_the_training_frames():
    rows = ood_prompts()
    texts = [r["prompt"] for r in rows]
    assert len(set(texts)) == len(texts) >= 200
    assert {type(r["provocative"]) for r in rows} == {bool} and min(sum(r["provocative"] for r in rows), sum(not r["provocative"] for r in rows)) >= 80
    assert len({r["register"] for r in rows}) >= 10
    training = {first_words(r["prompt"]) for r in bundled_prompts()}
    assert not [t for t in texts if first_words(t) in training]
    assert not [t for t in texts if BANNED & set(re.findall(r"[a-z]+", t.lower()))]
    package_data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rlaif_tasks"]
    assert any(fnmatch.fnmatch(f"data/{OOD_FILE.name}", pattern) for pattern in package_data), "the set ships in the wheel"


def test_ood_set_loads_like_a_prepared_split(tokenizer):
    frame = load_eval_set("bundled:detox-ood", tokenizer, use_chat_template=False)
    assert list(frame.columns) == ["prompt", "query", "category", "source", "n_tokens", "register", "provocative"]
    assert len(frame) == len(OOD_FILE.read_text().splitlines()) and (frame["query"] == frame["prompt"]).all()
    assert set(frame["category"]) == {"provocative", "neutral"} and (frame["category"] == frame["provocative"].map({True: "provocative", False: "neutral"})).all()
    chat = load_eval_set("bundled:detox-ood", tokenizer, use_chat_template=True)
    assert (chat["query"] == chat["prompt"] + " : ").all() and (chat["n_tokens"] > frame["n_tokens"]).all()


def test_extra_set_from_a_local_file_keeps_its_columns(tmp_path, tokenizer):
    path, rows = prompts_file(tmp_path, column="prompt")
    frame = load_eval_set(str(path), tokenizer, use_chat_template=False)
    assert len(frame) == 40 and frame["id"].tolist() == list(range(40))
    with pytest.raises(RlaifError, match="bundled:detox-ood"):
        load_eval_set("bundled:nope", tokenizer, use_chat_template=False)


def test_bundled_split_is_deterministic_per_seed_and_test_has_200(tmp_path, tokenizer):
    cfg = DataConfig(use_chat_template=False, max_prompt_tokens=64, test_size=200)
    a = prepare_prompts(cfg, tokenizer, tmp_path / "a", seed=3)
    b = prepare_prompts(cfg, tokenizer, tmp_path / "b", seed=3)
    c = prepare_prompts(cfg, tokenizer, tmp_path / "c", seed=4)
    assert len(a.test) == 200 and a.test["prompt"].tolist() == b.test["prompt"].tolist()
    assert a.test["prompt"].tolist() != c.test["prompt"].tolist()
    assert set(a.train["prompt"]).isdisjoint(a.test["prompt"])
    assert len(a.train) + len(a.test) == len(bundled_prompts())
    assert read_manifest(tmp_path / "a")["content_sha256"] == read_manifest(tmp_path / "b")["content_sha256"] != read_manifest(tmp_path / "c")["content_sha256"]
    assert {"provocative", "neutral"} <= set(a.test["category"])


@pytest.mark.parametrize("name", ["prompts.jsonl", "prompts.csv", "prompts.parquet"])
def test_local_file_with_column_mapping_writes_splits_and_manifest(tmp_path, tokenizer, name):
    path, rows = prompts_file(tmp_path, name=name)
    cfg = DataConfig(source=str(path), column_mapping={"text": "prompt"}, use_chat_template=False, min_prompt_tokens=3, max_prompt_tokens=5, test_size=0.25)
    splits = prepare_prompts(cfg, tokenizer, tmp_path / "run", seed=0)
    manifest = json.loads(splits.manifest_path.read_text())
    distinct = list(dict.fromkeys(r["text"] for r in rows))
    assert len(distinct) < len(rows), "the fixture repeats texts, which must be dropped"
    lengths = [len(text.split()) for text in distinct]
    kept = [text for text, n in zip(distinct, lengths) if 3 <= n <= 5]
    assert manifest["counts"] == {
        "loaded": 43, "distinct_non_empty": len(distinct),
        "dropped_too_short": sum(n < 3 for n in lengths), "dropped_too_long": sum(n > 5 for n in lengths),
        "train": len(kept) - round(len(kept) * 0.25), "test": round(len(kept) * 0.25),
    }
    assert manifest["source"] == str(path) and manifest["seed"] == 0
    train, test = load_prompts_split(tmp_path / "run", "train"), load_prompts_split(tmp_path / "run", "test")
    assert sorted(train["prompt"].tolist() + test["prompt"].tolist()) == sorted(kept)
    assert (train["query"] == train["prompt"]).all()
    assert all(3 <= n <= 5 for n in pd.concat([train, test])["n_tokens"])
    assert manifest["content_sha256"] == content_hash({"train": train, "test": test})


def test_chat_template_wraps_the_query_and_keeps_the_raw_prompt(tmp_path, tokenizer):
    path, _ = prompts_file(tmp_path, column="prompt")
    cfg = DataConfig(source=str(path), use_chat_template=True, max_prompt_tokens=64, test_size=5)
    test = prepare_prompts(cfg, tokenizer, tmp_path / "run").test
    for prompt, query in zip(test["prompt"], test["query"]):
        assert query == tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        assert query != prompt and prompt in query


def test_prepare_dataset_reads_the_policy_tokenizer_not_its_weights(tmp_path, monkeypatch):
    """The CPU task that prepares prompts must not hold a policy in memory: any weight load fails here."""
    import transformers
    from tiny_models import tiny_causal_lm

    from rlaif_tasks.config import RunConfig
    from rlaif_tasks.stages.local import prepare_dataset

    policy = tiny_causal_lm(tmp_path / "policy")

    def no_weights(*args, **kwargs):
        raise AssertionError("prepare_dataset loaded model weights")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(no_weights))
    monkeypatch.setattr("rlaif_tasks.models.hub.load_hf", no_weights)
    path, _ = prompts_file(tmp_path, column="prompt")
    config = RunConfig(name="tokenizer-only", run_dir=str(tmp_path / "run"))
    config.model.policy = str(policy)
    config.data = DataConfig(source=str(path), use_chat_template=True, test_size=5)
    manifest = json.loads(prepare_dataset(config).read_text())
    test = load_prompts_split(tmp_path / "run", "test")
    assert manifest["tokenizer"] == str(policy.resolve()) and manifest["counts"]["test"] == len(test) == 5
    assert (test["query"] == test["prompt"] + " : ").all()  # the tiny chat template, from the policy's tokenizer
    assert (test["n_tokens"] == test["prompt"].str.split().str.len() + 1).all()


def test_max_train_prompts_caps_the_train_split_only(tmp_path, tokenizer):
    path, _ = prompts_file(tmp_path, column="prompt")
    cfg = DataConfig(source=str(path), use_chat_template=False, test_size=10, max_train_prompts=7)
    splits = prepare_prompts(cfg, tokenizer, tmp_path / "run")
    assert (len(splits.train), len(splits.test)) == (7, 10)


def test_seeded_split_orders_are_a_permutation():
    frame = pd.DataFrame({"prompt": [str(i) for i in range(50)]})
    train, test = seeded_split(frame, 0.2, seed=1)
    assert len(test) == 10 and sorted(train["prompt"].tolist() + test["prompt"].tolist()) == sorted(frame["prompt"])


def bad(tmp_path, tokenizer, **kwargs):
    cfg = DataConfig(**{"use_chat_template": False, "test_size": 2, **kwargs})
    with pytest.raises(RlaifError) as err:
        prepare_prompts(cfg, tokenizer, tmp_path / "run")
    assert err.value.fix, "every data error says how to fix it"
    assert not (tmp_path / "run" / "data" / "manifest.json").exists(), "a failed preparation leaves no manifest"
    return str(err.value)


def test_missing_column_names_the_columns_and_the_fix(tmp_path, tokenizer):
    path, _ = prompts_file(tmp_path, column="text")
    message = bad(tmp_path, tokenizer, source=str(path))
    assert "'prompt' is missing" in message and "'text'" in message and "column_mapping" in message
    message = bad(tmp_path, tokenizer, source=str(path), column_mapping={"body": "prompt"})
    assert "body" in message


def test_empty_after_filtering_says_what_was_dropped(tmp_path, tokenizer):
    path, _ = prompts_file(tmp_path, column="prompt")
    message = bad(tmp_path, tokenizer, source=str(path), min_prompt_tokens=50, max_prompt_tokens=60)
    assert "no prompts left" in message and "40 under 50 tokens" and "43 loaded" in message in message


def test_test_size_larger_than_the_data(tmp_path, tokenizer):
    path, _ = prompts_file(tmp_path, n=5, column="prompt")
    assert "only 5 prompts" in bad(tmp_path, tokenizer, source=str(path), test_size=10)


def test_non_utf8_file(tmp_path, tokenizer):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "caf\xe9 au lait"}\n'.encode("latin-1"))
    message = bad(tmp_path, tokenizer, source=str(path))
    assert "not UTF-8" in message and "iconv" in message


def test_unreadable_and_missing_files(tmp_path, tokenizer):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not a parquet file")
    assert "cannot be read as parquet" in bad(tmp_path, tokenizer, source=str(broken))
    assert "does not exist" in bad(tmp_path, tokenizer, source=str(tmp_path / "absent.jsonl"))
    other = tmp_path / "prompts.txt"
    other.write_text("hello\n")
    assert "unsupported type" in bad(tmp_path, tokenizer, source=str(other))


def test_non_text_prompts_are_refused(tmp_path, tokenizer):
    path = tmp_path / "chat.jsonl"
    pd.DataFrame({"prompt": [[{"role": "user", "content": "hi"}]] * 5}).to_json(path, orient="records", lines=True)
    assert "non-text values" in bad(tmp_path, tokenizer, source=str(path))


def test_chat_template_missing(tmp_path, tokenizer):
    path, _ = prompts_file(tmp_path, column="prompt")
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>", eos_token="</s>")
    assert not plain.chat_template
    with pytest.raises(RlaifError, match="no chat template"):
        prepare_prompts(DataConfig(source=str(path), use_chat_template=True, test_size=2), plain, tmp_path / "run")


def test_hub_dataset_offline_is_a_clear_error(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = bad(tmp_path, tokenizer, source="allenai/real-toxicity-prompts")
    assert "could not be loaded" in message and "local" in message


def test_load_split_before_prepare(tmp_path):
    with pytest.raises(RlaifError, match="not prepared"):
        load_prompts_split(tmp_path, "test")


def test_queries_start_with_bos_where_the_tokenizer_adds_one_itself():
    """Llama 3.1 base puts BOS before every input; queries are tokenised without special tokens, so BOS goes in the text."""
    from tiny_models import make_tokenizer
    from tokenizers import processors

    from rlaif_tasks.data.prepare import apply_template

    plain = make_tokenizer()
    assert apply_template(["you are nice"], plain, use_chat_template=False) == ["you are nice"]
    llama_like = make_tokenizer()
    llama_like._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", llama_like.bos_token_id)])
    queries = apply_template(["you are nice", "<s> already"], llama_like, use_chat_template=False)
    assert queries == ["<s>you are nice", "<s> already"]
    ids = llama_like(queries[0], add_special_tokens=False)["input_ids"]
    assert ids[0] == llama_like.bos_token_id and ids.count(llama_like.bos_token_id) == 1
