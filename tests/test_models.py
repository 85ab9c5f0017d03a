"""The model zoo: any hub id or folder through the transformers Auto classes, fixable errors, the SmolLM2 cache."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import transformers
from tiny_models import tiny_causal_lm, tiny_classifier, tiny_seq2seq_lm

from rlaif_tasks.config import GenerationConfig, load_config
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.evaluation.runner import load_policy
from rlaif_tasks.generation import generate
from rlaif_tasks.models import describe_spec, load_model, load_tokenizer, smollm2, validate_spec
from rlaif_tasks.models.cache import model_cache_dir
from rlaif_tasks.tags import TAG_JUDGE_REVISIONS, TAG_JUDGES

SEED_SPECS = {
    "meta-llama/Meta-Llama-3.1-8B": "causal-lm",
    "google/flan-t5-base": "seq2seq-lm",
    "facebook/roberta-hate-speech-dynabench-r4-target": "sequence-classifier",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "causal-lm": tiny_causal_lm(root / "causal"),
        "seq2seq-lm": tiny_seq2seq_lm(root / "t5"),
        "sequence-classifier": tiny_classifier(root / "classifier"),
    }


def assert_same_weights(model, reference) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


# --- local folders and the Auto classes -----------------------------------------------------------


@pytest.mark.parametrize(
    "kind, model_class",
    [("causal-lm", "LlamaForCausalLM"), ("seq2seq-lm", "T5ForConditionalGeneration"), ("sequence-classifier", "RobertaForSequenceClassification")],
)
def test_folder_loads_with_the_auto_class_its_config_names(tiny, kind, model_class):
    folder = tiny[kind]
    info = describe_spec(str(folder))
    assert (info.source, info.kind, info.location) == ("local", kind, str(folder.resolve()))

    auto = load_model(str(folder))
    explicit = load_model(str(folder), kind=kind)
    assert auto.kind == explicit.kind == kind
    assert type(auto.model).__name__ == model_class
    assert auto.source == str(folder.resolve())
    assert not auto.model.training
    assert_same_weights(auto.model, getattr(transformers, model_class).from_pretrained(folder))
    expected_side = "left" if kind == "causal-lm" else "right"
    assert auto.tokenizer.padding_side == expected_side
    assert auto.tokenizer.pad_token_id is not None and auto.model.config.pad_token_id == auto.tokenizer.pad_token_id


def test_causal_tokenizer_without_pad_token_gets_eos_and_left_padding(tmp_path):
    """Llama-3-style checkpoints ship no pad token at all; batched rollouts still need one."""
    folder = tiny_causal_lm(tmp_path / "nopad")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    tok.pad_token = None
    tok.save_pretrained(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    config.pad_token_id = None
    config.save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    assert transformers.AutoTokenizer.from_pretrained(folder).pad_token is None

    loaded = load_model(str(folder))
    tok = loaded.tokenizer
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"
    batch = tok(["hello", "you are very kind"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0] == tok.pad_token_id and batch["attention_mask"][0, 0] == 0
    assert loaded.model.config.pad_token_id == loaded.model.generation_config.pad_token_id == tok.eos_token_id


def test_tokenizer_alone_is_padded_like_the_loaded_models(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    _populate_hf_cache(tmp_path, "meta-llama/Meta-Llama-3.1-8B", tiny_causal_lm)
    specs = {str(folder): kind for kind, folder in tiny.items()} | {"meta-llama/Meta-Llama-3.1-8B": "causal-lm"}
    for spec, kind in specs.items():
        tok, loaded = load_tokenizer(spec), load_model(spec, kind=kind).tokenizer
        assert (tok.padding_side, tok.pad_token, tok.name_or_path) == (loaded.padding_side, loaded.pad_token, loaded.name_or_path), spec
        assert tok.padding_side == ("left" if kind == "causal-lm" else "right")
        assert tok(["you are very kind"])["input_ids"] == loaded(["you are very kind"])["input_ids"]


@pytest.mark.parametrize(
    "folder_kind, asked, fix_words",
    [
        ("causal-lm", "sequence-classifier", "trained for sequence classification"),
        ("seq2seq-lm", "sequence-classifier", "trained for sequence classification"),
        ("sequence-classifier", "causal-lm", "the policy must be a language model"),
        ("causal-lm", "seq2seq-lm", "kind='causal-lm'"),
    ],
)
def test_kind_is_enforced_with_a_fix(tiny, folder_kind, asked, fix_words):
    spec = str(tiny[folder_kind])
    for call in (lambda: validate_spec(spec, asked), lambda: load_model(spec, kind=asked)):
        with pytest.raises(RlaifError) as exc:
            call()
        assert f"is a {folder_kind} but a {asked} was asked for" in exc.value.problem
        assert fix_words in exc.value.fix


def test_unknown_kind_is_rejected(tiny):
    with pytest.raises(RlaifError, match="unknown model kind 'llm'"):
        load_model(str(tiny["causal-lm"]), kind="llm")


# --- hub ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SEED_SPECS)
def test_seed_specs_are_hub_ids_without_the_network(spec, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("describe_spec must not reach the hub")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_network)
    info = validate_spec(spec, SEED_SPECS[spec])
    assert (info.source, info.location, info.kind) == ("hub", spec, None)
    assert describe_spec(spec) == info


@pytest.mark.parametrize("spec", SEED_SPECS)
def test_offline_hub_id_fails_with_a_fixable_error(spec, tmp_path, monkeypatch):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(RlaifError) as exc:
        load_model(spec, kind=SEED_SPECS[spec])
    err = exc.value
    assert "hub cannot be reached" in err.problem and spec in err.problem
    assert f"hf download {spec}" in err.fix and "bundled name" in err.fix
    assert isinstance(err.__cause__, OSError)


def _populate_hf_cache(cache: Path, repo_id: str, build) -> Path:
    """The layout huggingface_hub writes after a download: refs/main -> snapshots/<commit>/."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    build(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


@pytest.mark.parametrize(
    "spec, build, model_class",
    [
        ("google/flan-t5-base", tiny_seq2seq_lm, "T5ForConditionalGeneration"),
        ("facebook/roberta-hate-speech-dynabench-r4-target", tiny_classifier, "RobertaForSequenceClassification"),
    ],
)
def test_hub_id_in_the_local_hf_cache_loads_offline(spec, build, model_class, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = _populate_hf_cache(tmp_path, spec, build)
    loaded = load_model(spec, kind=SEED_SPECS[spec])
    assert (loaded.kind, loaded.source, type(loaded.model).__name__) == (SEED_SPECS[spec], spec, model_class)
    assert_same_weights(loaded.model, getattr(transformers, model_class).from_pretrained(snapshot))


def test_folder_saved_under_a_hub_like_name_loads_through_the_same_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_causal_lm(tmp_path / "meta-llama" / "Meta-Llama-3.1-8B")
    info = describe_spec("meta-llama/Meta-Llama-3.1-8B")
    assert (info.source, info.kind) == ("local", "causal-lm")
    loaded = load_model("meta-llama/Meta-Llama-3.1-8B")
    assert loaded.kind == "causal-lm" and loaded.source == str((tmp_path / "meta-llama" / "Meta-Llama-3.1-8B").resolve())
    assert type(loaded.model).__name__ == "LlamaForCausalLM"


# --- specs a user can get wrong -------------------------------------------------------------------


def test_bare_model_name_asks_for_the_owner():
    with pytest.raises(RlaifError) as exc:
        describe_spec("gpt2")
    assert "is not a bundled name, an existing folder or a hub id" in exc.value.problem
    assert "openai-community/gpt2 (not gpt2)" in exc.value.fix


@pytest.mark.parametrize("typo, meant", [("smollm-135m", "smollm2-135m-instruct"), ("smollm2-135m", "smollm2-135m-instruct"), ("hatesnar", "hatesonar")])
def test_typo_suggests_the_bundled_name(typo, meant):
    with pytest.raises(RlaifError, match=f"Did you mean '{meant}'"):
        load_model(typo)


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(RlaifError) as exc:
        load_model(str(tmp_path))
    assert "has no config.json" in exc.value.problem and "save_pretrained" in exc.value.fix


def test_adapter_folder_points_at_the_merged_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\0")
    with pytest.raises(RlaifError) as exc:
        load_model(str(tmp_path), kind="causal-lm")
    assert "LoRA/PEFT adapter" in exc.value.fix and "merge_adapter" in exc.value.fix


def test_file_instead_of_folder(tiny):
    config_file = tiny["causal-lm"] / "config.json"
    with pytest.raises(RlaifError) as exc:
        load_model(str(config_file))
    assert "is a file, not a model folder" in exc.value.problem


def test_missing_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(RlaifError, match="does not exist"):
        load_model(str(tmp_path / "runs" / "demo" / "final"))


def test_broken_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RlaifError, match="is not valid JSON"):
        describe_spec(str(tmp_path))


def test_folder_with_config_but_no_weights(tiny, tmp_path):
    (tmp_path / "config.json").write_text((tiny["causal-lm"] / "config.json").read_text())
    with pytest.raises(RlaifError) as exc:
        load_model(str(tmp_path))
    assert "could not load the weights" in exc.value.problem
    assert "complete transformers checkpoint" in exc.value.fix


# --- what reaches from_pretrained -----------------------------------------------------------------


@pytest.fixture
def recorded_calls(monkeypatch):
    """Every from_pretrained call the loader makes, with its keyword arguments."""
    calls: list[tuple[str, dict]] = []
    for name in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForSequenceClassification"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained

        def record(*args, _name=name, _original=original, **kwargs):
            calls.append((_name, dict(kwargs)))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", record)
    return calls


def test_token_is_never_passed_in_code(tiny, recorded_calls, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_sentinel_token_value")
    for kind, folder in tiny.items():
        load_model(str(folder), kind=kind)
    assert {name for name, _ in recorded_calls} >= {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForSequenceClassification"}
    for name, kwargs in recorded_calls:
        assert not {"token", "use_auth_token"} & set(kwargs), (name, kwargs)
        assert "hf_sentinel_token_value" not in repr(kwargs)


def test_trust_remote_code_follows_the_run_config_only(tiny, recorded_calls):
    load_policy(load_config(overrides={"model.policy": str(tiny["causal-lm"]), "device": "cpu"}))
    assert recorded_calls and all(kwargs.get("trust_remote_code") is False for _, kwargs in recorded_calls)

    recorded_calls.clear()
    load_policy(load_config(overrides={"model.policy": str(tiny["causal-lm"]), "model.trust_remote_code": True, "device": "cpu"}))
    assert recorded_calls and all(kwargs.get("trust_remote_code") is True for _, kwargs in recorded_calls)

    recorded_calls.clear()
    from rlaif_tasks.config import ScorerConfig
    from rlaif_tasks.rewards import build_scorer

    build_scorer(ScorerConfig(model=str(tiny["sequence-classifier"])), purpose="reward")
    assert recorded_calls and all(kwargs.get("trust_remote_code") is False for _, kwargs in recorded_calls)


# --- bundled SmolLM2: converted once, atomically ---------------------------------------------------


@pytest.fixture(scope="module")
def smol_cache(tmp_path_factory):
    """A private cache, and one read of the GGUF file shared by every conversion attempt in this module."""
    real_load_gguf = smollm2.load_gguf
    reads: list[tuple] = []

    def load_gguf_once():
        if not reads:
            reads.append(real_load_gguf())
        return reads[0]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLAIF_CACHE_DIR", str(tmp_path_factory.mktemp("rlaif-cache")))
        mp.setattr(smollm2, "load_gguf", load_gguf_once)
        yield model_cache_dir(smollm2.NAME)
        reads.clear()


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.mark.slow  # converts the bundled GGUF
def test_conversion_crash_leaves_no_folder_and_the_next_call_converts(smol_cache, monkeypatch):
    models_dir = smol_cache.parent
    seen_midway: list[str] = []

    def crash(gguf_model):
        (tmp,) = [p for p in models_dir.iterdir() if p.is_dir() and p.name.endswith(".tmp")]
        seen_midway.extend(sorted(p.name for p in tmp.iterdir()))
        raise OSError(errno.ENOSPC, "No space left on device")

    real_copy = smollm2.dequantized_copy
    monkeypatch.setattr(smollm2, "dequantized_copy", crash)
    with pytest.raises(RlaifError) as exc:
        smollm2.ensure_converted()
    assert "No space left on device" in exc.value.problem and "RLAIF_CACHE_DIR" in exc.value.fix
    assert "tokenizer.json" in seen_midway, "the crash must hit a half-written folder"
    assert not smol_cache.exists()
    assert [p.name for p in models_dir.iterdir()] == [f".{smollm2.NAME}.lock"]

    monkeypatch.setattr(smollm2, "dequantized_copy", real_copy)
    folder = smollm2.ensure_converted()
    assert folder == smol_cache
    assert smollm2.is_converted(folder, smollm2.fingerprint(smollm2.gguf_path()))
    assert {"config.json", "model.safetensors", "tokenizer.json", smollm2.MARKER} <= set(_files(folder))
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert sorted(p.name for p in models_dir.iterdir()) == sorted([f".{smollm2.NAME}.lock", smollm2.NAME])


def test_conversion_happens_once(smol_cache, monkeypatch):
    folder = smollm2.ensure_converted()
    before = _files(folder)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cached conversion was redone")

    monkeypatch.setattr(smollm2, "load_gguf", must_not_run)
    monkeypatch.setattr(smollm2, "dequantized_copy", must_not_run)
    assert smollm2.ensure_converted() == folder
    loaded = load_model(smollm2.NAME)
    assert _files(folder) == before
    assert (loaded.kind, loaded.source) == ("causal-lm", str(folder))


def test_stale_marker_means_reconversion(smol_cache):
    folder = smollm2.ensure_converted()
    expected = smollm2.fingerprint(smollm2.gguf_path())
    assert smollm2.is_converted(folder, expected)
    assert not smollm2.is_converted(folder, {**expected, "format": expected["format"] + 1})
    assert not smollm2.is_converted(folder, {**expected, "package_version": "0.0.0"})


def test_bundled_smollm2_answers_a_chat_prompt_in_english(smol_cache):
    loaded = load_model(smollm2.NAME, kind="causal-lm")
    assert loaded.tokenizer.padding_side == "left"
    query = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    out = generate(loaded.model, loaded.tokenizer, [query], GenerationConfig(max_new_tokens=12, min_new_tokens=1, do_sample=False))
    response = out.responses[0]
    words = [w for w in response.split() if any(c.isalpha() for c in w)]
    assert len(words) >= 3, response
    assert "paris" in response.lower(), response
    assert "<|im_" not in response


def test_tokenizer_alone_reads_the_gguf_metadata_without_converting(smol_cache, tmp_path, monkeypatch):
    """A CPU task that needs only the tokenizer must not dequantise the model on a machine without the cache."""
    folder = smollm2.ensure_converted()
    converted = load_tokenizer(smollm2.NAME)
    assert converted.name_or_path == str(folder)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the weights were read")

    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path / "fresh"))
    monkeypatch.setattr(smollm2, "load_gguf", must_not_run)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(must_not_run))
    fresh = load_tokenizer(smollm2.NAME)
    assert not model_cache_dir(smollm2.NAME).exists()
    chat = [{"role": "user", "content": "Why are you so rude?"}]
    query = fresh.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert query == converted.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) and "<|im_start|>assistant" in query
    assert fresh(query)["input_ids"] == converted(query)["input_ids"]
    assert (fresh.padding_side, fresh.pad_token) == (converted.padding_side, converted.pad_token) == ("left", converted.pad_token)


# --- fingerprints: what a spec resolves to --------------------------------------------------------


def test_folder_fingerprint_follows_the_bytes_not_the_path_and_skips_dot_folders(tiny, tmp_path, monkeypatch):
    import shutil

    from rlaif_tasks.models import fingerprint as fp

    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path / "cache"))
    folder = shutil.copytree(tiny["sequence-classifier"], tmp_path / "judge")
    first = fp.fingerprint(str(folder))
    assert first.startswith("sha256=") and first == fp.fingerprint(str(shutil.copytree(folder, tmp_path / "copy")))
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert fp.fingerprint(str(folder)) == first

    config = folder / "config.json"
    stat = config.stat()
    config.write_bytes(config.read_bytes().replace(b'"nothate"', b'"NOTHATE"'))  # same size, other bytes
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = fp.fingerprint(str(folder))
    assert changed != first

    def no_read(*args, **kwargs):
        raise AssertionError("an unchanged folder was hashed again")

    monkeypatch.setattr(fp, "open", no_read, raising=False)
    assert fp.fingerprint(str(folder)) == changed


def test_hub_fingerprint_is_the_commit_main_points_to_in_the_hf_cache(tmp_path, monkeypatch):
    from rlaif_tasks.models.fingerprint import fingerprint

    spec = "facebook/roberta-hate-speech-dynabench-r4-target"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert fingerprint(spec) is None  # not cached: unknown offline
    snapshot = _populate_hf_cache(tmp_path, spec, tiny_classifier)
    assert fingerprint(spec) == f"{spec}@{snapshot.name}"
    newer = "fedcba9876543210fedcba9876543210fedcba98"
    tiny_classifier(snapshot.parent / newer)
    (snapshot.parent.parent / "refs" / "main").write_text(newer)
    assert fingerprint(spec) == f"{spec}@{newer}"


def test_judge_tags_name_each_judge_and_leave_the_hash_out_when_one_is_unknown(tmp_path, monkeypatch):
    import importlib.metadata
    import json

    from rlaif_tasks import tracking
    from rlaif_tasks.config import RunConfig, ScorerConfig

    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    config = RunConfig()
    tags = tracking.judge_tags(config)
    prints = json.loads(tags[TAG_JUDGE_REVISIONS])
    assert sorted(prints) == ["hatesonar", "jigsaw-bilstm", "profanity-check"]
    assert prints["profanity-check"].startswith(f"alt-profanity-check=={importlib.metadata.version('alt-profanity-check')} sha256=")
    assert len(tags[TAG_JUDGES]) == 16 and tracking.judge_tags(config) == tags

    config.evaluation.judges.append(ScorerConfig(model="facebook/roberta-hate-speech-dynabench-r4-target", name="dynabench"))
    unknown = tracking.judge_tags(config)
    assert json.loads(unknown[TAG_JUDGE_REVISIONS])["dynabench"] is None
    assert TAG_JUDGES not in unknown


def test_unreachable_hub_while_online_is_transient_not_a_config_error(tmp_path, monkeypatch):
    """A network failure while online may pass by itself: Airflow must retry it, not fail the night at once."""
    from rlaif_tasks.errors import TransientError

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    waits = []
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", waits.append)  # the hub client's back-off (23 s), not this test's subject
    with pytest.raises(TransientError, match="could not be reached"):
        load_model("someone/some-model", kind="causal-lm")
    assert waits, "the hub client retried before giving up"
