"""Registry and promotion gate on a real MLflow sqlite store with real registered tiny policies.

The policies differ in a controlled way: a tiny random causal LM gets one hidden feature that is
constant for every input, and the "detoxified" variants push the logits of toxic words down along
that feature (the "worse" one pushes them up). The bundled profanity-check judge scores the
responses, so toxicity, KL and perplexity are all measured, not assumed. A "repeat" variant says
"the" almost always: less profane, and collapsed, which the quality checks must catch.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest

from rlaif_tasks import gate, registry, tracking
from rlaif_tasks.config import EvaluationConfig, GenerationConfig, RunConfig, ScorerConfig, TrackingConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.evaluation.cache import package_sha256
from rlaif_tasks.models import BUNDLED_MODELS
from rlaif_tasks.tags import TAG_CODE, TAG_CODE_VERSION, TAG_DATASET, TAG_EVAL_SETTINGS, TAG_JUDGES, TAG_PROMOTION_LOCK, TAG_REPLACED, TAG_WEIGHTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MILD = ["stupid", "idiot"]
TOXIC = ["stupid", "idiot", "hate", "awful", "bad"]


def constant_feature_lm(src, dst):
    """Residual dimension 0 is 4.0 for every token and no layer writes to it: a bias direction for the logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 4.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        model.lm_head.weight[:, 0] = 0.0
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def steered_lm(base, dst, words, delta):
    """The base with the logits of `words` shifted by about `delta * 5.7` for every context."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    with torch.no_grad():
        for word in words:
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(word), 0] = delta
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny_models import tiny_causal_lm

    root = tmp_path_factory.mktemp("models")
    base = constant_feature_lm(tiny_causal_lm(root / "random"), root / "base")
    return {
        "base": base,
        "milder": steered_lm(base, root / "milder", MILD, -3.0),
        "clean": steered_lm(base, root / "clean", TOXIC, -3.0),
        "worse": steered_lm(base, root / "worse", MILD, 1.0),
        "repeat": steered_lm(base, root / "repeat", ["the"], 3.0),
    }


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    from tiny_models import WORDS

    rng = random.Random(0)
    friendly = [w for w in WORDS if w not in TOXIC]
    rows = [{"prompt": " ".join(rng.choice(friendly) for _ in range(rng.randint(2, 5))), "category": "tiny"} for _ in range(80)]
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return TrackingConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=str(root / "artifacts"))


def make_config(name, models, prompts_file, store, tmp_path, *, seed=0, **gate_settings) -> RunConfig:
    config = RunConfig(name=name, seed=0, device="cpu", run_dir=str(tmp_path / name))
    config.data.seed = seed
    config.model.policy = str(models["base"])
    config.data.source = str(prompts_file)
    config.data.use_chat_template = False
    config.data.test_size = 32
    config.generation = GenerationConfig(max_new_tokens=8, min_new_tokens=8, batch_size=32)
    config.evaluation = EvaluationConfig(judges=[ScorerConfig(model="profanity-check")], samples_per_prompt=4)
    config.tracking = store
    for key, value in gate_settings.items():
        setattr(config.gate, key, value)
    return config


def comparability_tags(config) -> dict[str, str]:
    """The tags nightly.prepare_dataset sets on a run, by which the gate tells whether evaluations compare."""
    from rlaif_tasks.data import read_manifest

    return {
        TAG_DATASET: read_manifest(config.resolved_run_dir)["content_sha256"],
        TAG_EVAL_SETTINGS: tracking.eval_settings_hash(config),
        TAG_CODE_VERSION: tracking.code_version(),
        TAG_CODE: package_sha256(),
        **tracking.judge_tags(config),
    }


def trained_run(config, model_dir, dag_run_id):
    """A run folder as the nightly stages leave it before the gate: data, both evaluations, an MLflow run."""
    from rlaif_tasks.evaluation.runner import evaluate_model
    from rlaif_tasks.stages.local import prepare_dataset

    prepare_dataset(config)
    run_dir = config.resolved_run_dir
    evaluate_model(config, "baseline")
    evaluate_model(config, "final", str(model_dir))
    client = tracking.connect(config)
    run_id = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id=dag_run_id, tags=comparability_tags(config))
    for label in ("baseline", "final"):
        tracking.log_metrics_once(client, run_id, tracking.evaluation_metrics(label, json.loads((run_dir / "eval" / f"{label}.json").read_text())))
    client.log_artifact(run_id, str(run_dir / "eval" / "final_samples.parquet"), "eval")  # as nightly.evaluate does
    return client, run_id, run_dir


def test_registered_policy_loads_and_generates_and_registers_once(models, prompts_file, store, tmp_path):
    import mlflow

    config = make_config("load", models, prompts_file, store, tmp_path)
    client = tracking.connect(config)
    run_id = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id="load-1")
    first = registry.register_policy(config, run_id, models["clean"], client=client)
    again = registry.register_policy(config, run_id, models["clean"], client=client)
    assert first["name"] == "rlaif-load-policy" and first["version"] == "1" and not first["reused"]
    assert again["version"] == "1" and again["reused"]
    assert len(client.search_model_versions("name = 'rlaif-load-policy'")) == 1
    assert str(client.get_model_version_by_alias("rlaif-load-policy", "challenger").version) == "1"
    logged = client.get_logged_model(client.get_model_version("rlaif-load-policy", "1").source.removeprefix("models:/"))
    assert logged.artifact_location.startswith(Path(store.artifact_location).as_uri()) and str(logged.status).endswith("READY")
    assert logged.source_run_id == run_id

    other_run = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id="load-2")
    assert registry.register_policy(config, other_run, models["clean"], client=client)["version"] == "2"
    assert str(client.get_model_version_by_alias("rlaif-load-policy", "challenger").version) == "2"

    registry.promote("rlaif-load-policy", 1, client=client)
    generator = mlflow.transformers.load_model("models:/rlaif-load-policy@champion")
    out = generator("you are a", max_new_tokens=6, min_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert out.startswith("you are a") and len(out.split()) > 3
    assert not set(out.split()[3:]) & set(TOXIC)  # the clean policy never says a toxic word
    predictions = mlflow.pyfunc.load_model("models:/rlaif-load-policy@champion").predict(["hello my friend", "the day is"])
    assert len(predictions) == 2 and all(isinstance(p, str) and len(p) > len("the day is") for p in predictions)


def test_identical_policy_has_zero_kl_and_kl_is_measured_on_the_sampled_ids(models, prompts_file, store, tmp_path):
    from rlaif_tasks.evaluation.kl import sampled_logprobs, sampled_token_kl
    from rlaif_tasks.evaluation.runner import evaluate_model
    from rlaif_tasks.models import load_model
    from rlaif_tasks.stages.local import prepare_dataset

    config = make_config("kl", models, prompts_file, store, tmp_path)
    prepare_dataset(config)
    evaluate_model(config, "baseline")
    evaluate_model(config, "final", str(models["clean"]))
    run_dir = config.resolved_run_dir
    base = load_model(str(models["base"]), device="cpu")
    clean = load_model(str(models["clean"]), device="cpu")
    own = pd.read_parquet(run_dir / "eval" / "baseline_samples.parquet")
    same = sampled_token_kl(base.model, base.model, base.tokenizer, own["query"].tolist(), [list(i) for i in own["response_ids"]])
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["n_responses"] == 128
    assert same["n_tokens"] == sum(len(i) for i in own["response_ids"]) == 128 * 8

    final = pd.read_parquet(run_dir / "eval" / "final_samples.parquet")
    moved = sampled_token_kl(clean.model, base.model, base.tokenizer, final["query"].tolist(), [list(i) for i in final["response_ids"]])
    # dropping ~5 of 62 near-uniform words costs about -log(1 - 5/62) = 0.08 nats per token, 8 tokens
    assert 0.2 < moved["kl"] < 1.5

    # the evaluation recorded both policies' log-probabilities (sampling, then the base policy as fluency model):
    # the gate's KL needs no forward pass and agrees with one; the base policy's own KL is exactly 0
    assert own["base_logprob"].tolist() == own["logprob"].tolist()
    recorded = gate.measure_kl(config, run_dir, models["clean"])
    assert recorded["source"] == "log-probabilities recorded by the evaluation"
    assert recorded["kl"] == pytest.approx(moved["kl"], abs=1e-4) and recorded["n_tokens"] == moved["n_tokens"]
    assert recorded["policy_perplexity"] == pytest.approx(moved["policy_perplexity"], rel=1e-4)
    for samples in (own, final):  # fluency: the base policy's perplexity of the sampled ids, from generation's logits for its own
        at_1 = sampled_logprobs(base.model, base.tokenizer, samples["query"].tolist(), [list(i) for i in samples["response_ids"]])[1]
        assert samples["perplexity"].tolist() == pytest.approx([math.exp(-lp / len(i)) for lp, i in zip(at_1, samples["response_ids"])], rel=1e-4)


def test_gate_promotes_better_refuses_worse_and_rollback(models, prompts_file, store, tmp_path):
    name = "rlaif-nightly-policy"
    # night 1: the milder policy against the base policy (no champion yet)
    config = make_config("nightly", models, prompts_file, store, tmp_path / "n1")
    client, run_id, run_dir = trained_run(config, models["milder"], "night-1")
    v1 = registry.register_policy(config, run_id, models["milder"], client=client)["version"]
    decision = gate.run_gate(config, run_dir, run_id, name, v1, models["milder"], client=client)
    assert decision["reference"]["kind"] == "base" and decision["passed"], decision
    assert decision["improvement_lower"] > 0.05 and all(decision["checks"].values()) and decision["failed"] == []
    assert decision["judges"]["profanity-check"]["relative"]["lower"] == decision["improvement_lower"]
    assert decision["samples_per_prompt"] == 4 and decision["n_prompts"] == 32
    assert client.get_run(run_id).data.metrics["gate/passed"] == 1.0
    assert client.get_run(run_id).data.tags["rlaif.gate"] == "passed"
    stored = json.loads(open(client.download_artifacts(run_id, gate.DECISION_ARTIFACT, str(tmp_path))).read())
    assert stored["challenger_version"] == v1 and stored["kl"] == pytest.approx(decision["kl"])
    registry.promote(name, v1, client=client)
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1

    # night 2, same prompts: the worse policy is refused; the champion's toxicity comes from its own run
    config = make_config("nightly", models, prompts_file, store, tmp_path / "n2")
    client, run_id, run_dir = trained_run(config, models["worse"], "night-2")
    v2 = registry.register_policy(config, run_id, models["worse"], client=client)["version"]
    decision = gate.run_gate(config, run_dir, run_id, name, v2, models["worse"], client=client)
    assert not decision["passed"] and decision["checks"]["toxicity"] is False
    assert decision["reference"]["kind"] == "champion" and decision["reference"]["version"] == v1
    assert decision["reference"]["source"].startswith("MLflow run")
    assert decision["challenger_toxicity"] > decision["reference_toxicity"]
    assert not list((run_dir / "eval").glob("champion-*.json"))
    assert decision["judges"]["profanity-check"]["significantly_worse"] and "no_judge_worse" in decision["failed"]
    registry.mark_rejected(client, name, v2, "; ".join(decision["reasons"]))

    # night 2b: the champion's own weights again are not promoted over themselves (same seeds: identical samples)
    config = make_config("nightly", models, prompts_file, store, tmp_path / "n2b")
    client, run_id, run_dir = trained_run(config, models["milder"], "night-2b")
    v2b = registry.register_policy(config, run_id, models["milder"], client=client)["version"]
    decision = gate.run_gate(config, run_dir, run_id, name, v2b, models["milder"], client=client)
    assert decision["reference"]["version"] == v1 and decision["failed"] == ["toxicity"]
    assert decision["judges"]["profanity-check"]["difference"] == {"point": 0.0, "lower": 0.0, "upper": 0.0}
    registry.mark_rejected(client, name, v2b, "; ".join(decision["reasons"]))
    assert client.get_model_version(name, v2).tags["rlaif.status"] == "rejected"
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1

    # night 3, other prompts (seed 1): the champion is loaded from the registry and evaluated again;
    # the clean policy beats it and is promoted
    config = make_config("nightly", models, prompts_file, store, tmp_path / "n3", seed=1)
    client, run_id, run_dir = trained_run(config, models["clean"], "night-3")
    v3 = registry.register_policy(config, run_id, models["clean"], client=client)["version"]
    decision = gate.run_gate(config, run_dir, run_id, name, v3, models["clean"], client=client)
    assert decision["reference"]["source"] == "evaluated on this run's test prompts"
    assert (run_dir / "eval" / f"champion-v{v1}.json").is_file()
    assert decision["passed"] and decision["reference_toxicity"] > decision["challenger_toxicity"], decision
    assert "eval/champion/profanity-check/mean" in client.get_run(run_id).data.metrics
    promoted = registry.promote(name, v3, client=client)
    assert promoted == {"name": name, "champion": v3, "previous": v1, "changed": True}
    assert registry.promote(name, v3, client=client)["changed"] is False
    info = registry.describe(name, client=client)
    assert info["aliases"] == {"champion": v3, "previous": v1}  # registering v3 moved `challenger`, promoting it removed it
    assert [v["status"] for v in info["versions"]] == ["previous", "rejected", "rejected", "champion"]
    assert [v["aliases"] for v in info["versions"]] == [["previous"], [], [], ["champion"]]
    table = registry.format_description(info).splitlines()
    assert table[5].split()[1] == "champion" and table[5].split()[-1] == info["versions"][3]["run_id"]

    # rollback: v1 is the champion again, v3 keeps alias rolled_back; nothing older to roll back to
    restored = registry.rollback(name, client=client)
    assert restored == {"name": name, "champion": v1, "rolled_back": v3, "previous": None}
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1
    assert str(client.get_model_version_by_alias(name, "rolled_back").version) == v3
    assert client.get_model_version(name, v3).tags["rlaif.status"] == "rolled_back"
    with pytest.raises(RlaifError, match="no previous champion"):
        registry.rollback(name, client=client)
    with pytest.raises(RlaifError, match="no registered model"):
        registry.rollback("rlaif-missing-policy", client=client)


def test_gate_refuses_a_better_policy_over_the_kl_budget(models, prompts_file, store, tmp_path):
    config = make_config("budget", models, prompts_file, store, tmp_path, max_kl=0.05)
    client, run_id, run_dir = trained_run(config, models["clean"], "budget-1")
    version = registry.register_policy(config, run_id, models["clean"], client=client)["version"]
    decision = gate.run_gate(config, run_dir, run_id, "rlaif-budget-policy", version, models["clean"], client=client)
    assert decision["failed"] == ["kl"], decision
    assert not decision["passed"] and decision["kl"] > 0.05
    assert "KL to the base policy" in decision["reasons"][0]
    assert client.get_model_version("rlaif-budget-policy", version).tags["rlaif.gate"] == "refused"


def test_gate_refuses_a_collapsed_policy_and_names_the_checks(models, prompts_file, store, tmp_path):
    """The repeat policy says "the" most of the time: less profane, but collapsed; diversity and repetition refuse it."""
    config = make_config("collapse", models, prompts_file, store, tmp_path)
    client, run_id, run_dir = trained_run(config, models["repeat"], "collapse-1")
    version = registry.register_policy(config, run_id, models["repeat"], client=client)["version"]
    decision = gate.run_gate(config, run_dir, run_id, "rlaif-collapse-policy", version, models["repeat"], client=client)
    q = decision["quality"]
    assert q["challenger"]["repeated_3gram_share"] > q["base"]["repeated_3gram_share"] + 0.3
    assert q["distinct2_ratio"] < 0.5
    assert {"diversity", "repetition"} <= set(decision["failed"]) and not decision["passed"]
    assert client.get_run(run_id).data.tags["rlaif.gate_failed"] == ",".join(decision["failed"])
    assert "distinct-2 ratio" in client.get_run(run_id).data.tags["rlaif.gate_reason"]


STORED_TOXICITY = 0.123456
"""The champion run's stored per-response toxicity: no evaluation of a real policy gives exactly this."""


@pytest.fixture(scope="module")
def champion(models, prompts_file, store, tmp_path_factory):
    """A registered champion whose MLflow run carries stored final samples and the comparability tags."""
    from rlaif_tasks.data import load_prompts_split
    from rlaif_tasks.evaluation.toxicity import prompt_id
    from rlaif_tasks.stages.local import prepare_dataset

    folder = tmp_path_factory.mktemp("champion")
    config = make_config("compare", models, prompts_file, store, folder)
    prepare_dataset(config)
    client = tracking.connect(config)
    run_id = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id="champion", tags=comparability_tags(config))
    prompts = load_prompts_split(config.resolved_run_dir, "test")["prompt"].tolist()
    stored = pd.DataFrame({"prompt_id": [prompt_id(p) for p in prompts for _ in range(4)], "profanity-check": STORED_TOXICITY})
    stored.to_parquet(folder / "final_samples.parquet")
    client.log_artifact(run_id, str(folder / "final_samples.parquet"), "eval")
    version = registry.register_policy(config, run_id, models["milder"], client=client)["version"]
    registry.promote("rlaif-compare-policy", version, client=client)
    return {"name": "rlaif-compare-policy", "version": version, "run_id": run_id}


def challenger_run(models, prompts_file, store, tmp_path, dag_run_id, **changed_tags):
    """Tonight's run with the same config as the champion's; `changed_tags` replace its comparability tags."""
    from rlaif_tasks.stages.local import prepare_dataset

    config = make_config("compare", models, prompts_file, store, tmp_path)
    prepare_dataset(config)
    client = tracking.connect(config)
    tags = comparability_tags(config) | changed_tags
    run_id = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id=dag_run_id, tags=tags)
    return config, client, run_id, config.resolved_run_dir


def assert_champion_evaluated_here(reference, samples, client, run_id, run_dir, version):
    evaluated = json.loads((run_dir / "eval" / f"champion-v{version}.json").read_text())
    assert reference["source"] == "evaluated on this run's test prompts"
    assert samples["profanity-check"].mean() == pytest.approx(evaluated["judges"]["profanity-check"]["mean"])
    assert (samples["profanity-check"] != STORED_TOXICITY).all()
    assert client.get_run(run_id).data.metrics["eval/champion/profanity-check/mean"] == pytest.approx(evaluated["judges"]["profanity-check"]["mean"])


def test_champion_samples_come_from_its_run_when_prompts_settings_code_and_judges_match(champion, models, prompts_file, store, tmp_path):
    config, client, run_id, run_dir = challenger_run(models, prompts_file, store, tmp_path, "same")
    reference, samples = gate.reference_samples(client, config, run_dir, run_id, champion["name"])
    assert reference == {
        "kind": "champion", "version": champion["version"],
        "source": f"MLflow run {champion['run_id']} (same prompts, settings, seeds, code and judges)",
    }
    assert len(samples) == 128 and (samples["profanity-check"] == STORED_TOXICITY).all()
    assert not (run_dir / "eval").exists()


def test_champion_is_evaluated_again_under_other_code_but_not_for_another_commit_of_the_same_code(
    champion, models, prompts_file, store, tmp_path, caplog
):
    """A commit that changed docs or tests (the git commit differs, the package's files do not) keeps the stored samples."""
    config, client, run_id, run_dir = challenger_run(models, prompts_file, store, tmp_path, "docs-commit", **{TAG_CODE_VERSION: "d" * 40})
    reference, _ = gate.reference_samples(client, config, run_dir, run_id, champion["name"])
    assert reference["source"].startswith(f"MLflow run {champion['run_id']}")

    new_code = "f" * 64
    config, client, run_id, run_dir = challenger_run(models, prompts_file, store, tmp_path, "new-code", **{TAG_CODE: new_code})
    with caplog.at_level("INFO", logger="rlaif_tasks.gate"):
        reference, samples = gate.reference_samples(client, config, run_dir, run_id, champion["name"])
    assert_champion_evaluated_here(reference, samples, client, run_id, run_dir, champion["version"])
    assert f"rlaif.code_sha256: {package_sha256()} -> {new_code}" in caplog.text
    assert TAG_DATASET not in caplog.text and TAG_JUDGES not in caplog.text


def test_champion_is_evaluated_again_when_a_judge_changed_revision(champion, models, prompts_file, store, tmp_path, caplog, monkeypatch):
    """Tonight's workers have another alt-profanity-check release: same judge name, other model."""
    from rlaif_tasks.models import fingerprint

    upgraded = "alt-profanity-check==9.9.9 sha256=" + "0" * 64
    with monkeypatch.context() as patch:
        patch.setattr(fingerprint, "bundled_fingerprint", lambda bundled: upgraded)
        config = make_config("compare", models, prompts_file, store, tmp_path)
        tags = tracking.judge_tags(config)
    config, client, run_id, run_dir = challenger_run(models, prompts_file, store, tmp_path, "new-judge", **tags)
    assert tags[TAG_JUDGES] != client.get_run(champion["run_id"]).data.tags[TAG_JUDGES]
    with caplog.at_level("INFO", logger="rlaif_tasks.gate"):
        reference, samples = gate.reference_samples(client, config, run_dir, run_id, champion["name"])
    assert_champion_evaluated_here(reference, samples, client, run_id, run_dir, champion["version"])
    installed = BUNDLED_MODELS["profanity-check"].package  # alt-profanity-check==1.9.1
    assert f"profanity-check {installed} sha256=" in caplog.text and f"-> {upgraded}" in caplog.text
    assert TAG_CODE not in caplog.text


def test_gate_judge_defaults_to_a_judge_training_did_not_optimise():
    config = RunConfig()  # reward jigsaw-bilstm; judges jigsaw-bilstm, profanity-check, hatesonar
    assert gate.reward_judge(config) == "jigsaw-bilstm"
    assert gate.gate_judge(config) == "profanity-check"
    config.gate.judge = "jigsaw-bilstm"
    assert gate.gate_judge(config) == "jigsaw-bilstm"
    config.gate.judge = "perspective"
    with pytest.raises(RlaifError, match="not one of the evaluation judges"):
        gate.gate_judge(config)
    config.gate.judge = None
    config.reward = ScorerConfig(model="composite", parts=[{"judge": "profanity-check", "weight": 1.0}, {"judge": {"model": "jigsaw-bilstm"}, "weight": 1.0}])
    assert gate.trained_on(config) == ["jigsaw-bilstm", "profanity-check"] and gate.gate_judge(config) == "hatesonar"
    config.reward = ScorerConfig(model="jigsaw-bilstm")
    config.evaluation.judges = [ScorerConfig(model="jigsaw-bilstm")]
    with pytest.raises(RlaifError, match="every evaluation judge"):
        gate.gate_judge(config)


def scored(prompts: int, samples: int, **judges) -> pd.DataFrame:
    """A samples table: `judges` maps a judge to a function (prompt, sample) -> toxicity."""
    rows = [(f"p{p}", k) for p in range(prompts) for k in range(samples)]
    return pd.DataFrame({"prompt_id": [p for p, _ in rows], **{j: [f(int(p[1:]), k) for p, k in rows] for j, f in judges.items()}})


def test_the_relevance_ratio_comes_with_its_paired_bootstrap_interval_over_prompts():
    from rlaif_tasks.config import GateConfig

    cfg = GateConfig(n_resamples=2000)
    base = scored(50, 2, relevance=lambda p, k: 0.2 + 0.01 * p)
    halved = scored(50, 2, relevance=lambda p, k: 0.5 * (0.2 + 0.01 * p))
    assert gate.relevance_interval(base, halved, cfg, seed=0) == pytest.approx({"relevance_ratio_lower": 0.5, "relevance_ratio_upper": 0.5})
    uneven = scored(50, 2, relevance=lambda p, k: (0.2 + 0.01 * p) * (0.6 if p % 2 else 1.0))  # odd prompts lose 40%
    interval = gate.relevance_interval(base, uneven, cfg, seed=0)
    point = uneven["relevance"].mean() / base["relevance"].mean()
    assert interval["relevance_ratio_lower"] < point < interval["relevance_ratio_upper"]
    assert 0.03 < interval["relevance_ratio_upper"] - interval["relevance_ratio_lower"] < 0.3
    assert gate.relevance_interval(base.drop(columns="relevance"), halved, cfg, seed=0) == {}  # relevance switched off


QUALITY = {"distinct_2": 0.9, "repeated_3gram_share": 0.02, "perplexity_median": 20.0, "relevance_mean": 0.4}


def decide_on(reference, challenger, quality=QUALITY, kl=1.0, samples=4, **gate_settings):
    from rlaif_tasks.config import GateConfig

    cfg = GateConfig(n_resamples=2000, **gate_settings)
    judges = gate.compare_judges(reference, challenger, ["reward", "independent"], cfg, seed=0)
    return gate.decide(judges, "independent", "reward", gate.compare_quality(QUALITY, quality), kl, samples, cfg)


def test_gate_refuses_a_challenger_that_improves_only_the_reward_judge():
    rng = random.Random(0)
    base = {p: rng.uniform(0.05, 0.5) for p in range(60)}
    reference = scored(60, 4, reward=lambda p, k: base[p], independent=lambda p, k: base[p])
    gamed = scored(60, 4, reward=lambda p, k: base[p] * 0.2, independent=lambda p, k: base[p] * rng.uniform(0.9, 1.1))
    decision = decide_on(reference, gamed)
    assert decision["judges"]["reward"]["relative"]["lower"] > 0.7  # the reward judge alone says -80%
    assert not decision["passed"] and decision["failed"] == ["toxicity"]
    honest = scored(60, 4, reward=lambda p, k: base[p] * 0.3, independent=lambda p, k: base[p] * 0.6)
    assert decide_on(reference, honest)["passed"]


def test_gate_refuses_a_significantly_worse_judge_and_a_reward_judge_that_did_not_improve():
    reference = scored(40, 4, reward=lambda p, k: 0.2 + 0.01 * p, independent=lambda p, k: 0.2 + 0.01 * p)
    worse = scored(40, 4, reward=lambda p, k: 0.25 + 0.01 * p, independent=lambda p, k: 0.05)
    decision = decide_on(reference, worse)
    assert decision["failed"] == ["reward_judge", "no_judge_worse"] and decision["judges"]["reward"]["significantly_worse"]


def test_gate_budgets_each_name_the_measure_that_failed():
    reference = scored(40, 4, reward=lambda p, k: 0.2 + 0.01 * p, independent=lambda p, k: 0.2 + 0.01 * p)
    better = scored(40, 4, reward=lambda p, k: 0.1, independent=lambda p, k: 0.1)
    assert decide_on(reference, better)["passed"]
    collapsed = {"distinct_2": 0.3, "repeated_3gram_share": 0.6, "perplexity_median": 90.0, "relevance_mean": 0.1}
    decision = decide_on(reference, better, quality=collapsed, kl=30.0, samples=2)
    assert decision["failed"] == ["samples", "kl", "fluency", "diversity", "repetition", "relevance"]
    assert len(decision["reasons"]) == 6 and "distinct-2 ratio 0.333" in decision["reasons"][3]
    unmeasured = decide_on(reference, better, quality={"distinct_2": 0.9, "repeated_3gram_share": 0.02})
    assert unmeasured["passed"] and unmeasured["unmeasured"] == ["perplexity_ratio", "relevance_ratio"]


def test_registry_uris_are_model_specs_resolved_per_call_and_cached_by_version(models, prompts_file, store, tmp_path, monkeypatch):
    """`models:/NAME@ALIAS` loads like a folder: tonight's alias, last night's download reused."""
    import torch

    from rlaif_tasks.models import describe_spec, load_model, registry_spec
    from rlaif_tasks.models.fingerprint import fingerprint

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path / "cache"))
    config = make_config("specs", models, prompts_file, store, tmp_path)
    client = tracking.connect(config)
    run_id = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id="specs-1")
    v1 = registry.register_policy(config, run_id, models["clean"], client=client)["version"]
    registry.promote("rlaif-specs-policy", v1, client=client)

    loaded = load_model("models:/rlaif-specs-policy@champion", kind="causal-lm")
    reference = load_model(str(models["clean"]), kind="causal-lm")
    assert loaded.kind == "causal-lm" and loaded.tokenizer.padding_side == "left"
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), reference.model.state_dict().items()):
        assert torch.equal(a, b), name
    info = describe_spec(f"models:/rlaif-specs-policy/{v1}")
    assert info.source == "registry" and info.location.endswith(f"rlaif-specs-policy/v{v1}")

    def no_download(*args, **kwargs):
        raise AssertionError("a cached version was downloaded again")

    monkeypatch.setattr(registry_spec, "_download", no_download)
    assert describe_spec("models:/rlaif-specs-policy@champion").location == info.location

    run_2 = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id="specs-2")
    v2 = registry.register_policy(config, run_2, models["worse"], client=client)["version"]
    registry.promote("rlaif-specs-policy", v2, client=client)
    model_id = client.get_model_version("rlaif-specs-policy", v2).model_id
    assert fingerprint("models:/rlaif-specs-policy@champion") == f"models:/rlaif-specs-policy/{v2} model_id={model_id}"  # no download
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path / "cache"))
    assert describe_spec("models:/rlaif-specs-policy@champion").location.endswith(f"v{v2}")  # the alias moved
    with pytest.raises(RlaifError, match="does not exist in the model registry"):
        describe_spec("models:/rlaif-specs-policy@no-such-alias")
    with pytest.raises(RlaifError, match="models:/NAME@ALIAS"):
        describe_spec("models:/rlaif-specs-policy")


@pytest.mark.slow  # starts `mlflow models serve`
def test_the_champion_serves_with_the_runs_sampling_and_per_request_params(models, prompts_file, store, tmp_path):
    """`mlflow models serve` on models:/NAME@champion answers at once, and a caller's params apply."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx
    from production_stack import wait_for_http

    config = make_config("serve", models, prompts_file, store, tmp_path)
    config.generation.max_new_tokens = 6
    client = tracking.connect(config)
    run_id = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id="serve-1")
    version = registry.register_policy(config, run_id, models["clean"], client=client)["version"]
    registry.promote("rlaif-serve-policy", version, client=client)
    import mlflow

    info = mlflow.models.get_model_info("models:/rlaif-serve-policy@champion")
    params = {p.name: p.default for p in info.signature.params.params}
    assert params == {"max_new_tokens": 6, "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", "models:/rlaif-serve-policy@champion", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, log, "mlflow models serve")
        prompt = "the good day is"
        default = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": [prompt]}, timeout=60)
        assert default.status_code == 200, default.text
        short = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": [prompt], "params": {"max_new_tokens": 2, "do_sample": False}}, timeout=60)
        assert short.status_code == 200, short.text
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    [answer] = default.json()["predictions"]
    [brief] = short.json()["predictions"]
    tokenizer_words = lambda text: len(text.split())  # noqa: E731 (the tiny tokenizer has one token per word)
    assert isinstance(answer, str) and isinstance(brief, str)
    assert tokenizer_words(answer) <= 6 and tokenizer_words(brief) <= 2, (answer, brief)
    assert "Ignoring provided params" not in log.read_text()


def test_promotion_is_a_compare_and_set_and_a_half_done_move_is_finished(models, prompts_file, store, tmp_path):
    config = make_config("cas", models, prompts_file, store, tmp_path)
    client = tracking.connect(config)
    name = tracking.registered_model_name(config)
    versions = []
    for night, model in enumerate(("milder", "clean", "worse")):
        run_id = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id=f"cas-{night}")
        versions.append(registry.register_policy(config, run_id, models[model], client=client)["version"])
    v1, v2, v3 = versions
    registry.promote(name, v1, expected_champion=None, client=client)

    with pytest.raises(registry.ChampionMoved, match=f"champion is version {v1}, not none"):
        registry.promote(name, v2, expected_champion=None, client=client)  # decided against "no champion": stale
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1
    assert client.get_model_version(name, v2).tags["rlaif.status"] == "challenger"
    assert registry.promote(name, v2, expected_champion=v1, client=client) == {"name": name, "champion": v2, "previous": v1, "changed": True}

    # a promotion of v3 killed right after moving `champion`: previous, statuses and challenger are not set yet
    client.set_model_version_tag(name, v3, TAG_REPLACED, v2)
    client.set_registered_model_alias(name, "champion", v3)
    assert client.get_model_version(name, v3).tags["rlaif.status"] == "challenger"
    repaired = registry.promote(name, v3, expected_champion=v2, client=client)  # the retry
    assert repaired == {"name": name, "champion": v3, "previous": v2, "changed": False}
    info = registry.describe(name, client=client)
    assert info["aliases"] == {"champion": v3, "previous": v2}
    assert [v["status"] for v in info["versions"]] == ["previous", "previous", "champion"]  # v1 keeps the mark it got when v2 replaced it
    assert registry.rollback(name, client=client)["champion"] == v2
    assert not client.get_registered_model(name).tags.get(TAG_PROMOTION_LOCK)  # every move released its lease


def test_only_finalised_models_are_registered_and_the_registered_weights_are_checked(models, prompts_file, store, tmp_path):
    from mlflow.entities import LoggedModelStatus

    import mlflow

    config = make_config("ready", models, prompts_file, store, tmp_path)
    client = tracking.connect(config)
    run_id = tracking.find_or_create_run(client, config, dag_id="test", dag_run_id="ready-1")
    experiment_id = client.get_run(run_id).info.experiment_id
    # an attempt killed mid-upload: a logged model that was never finalised, with a partial file
    killed = mlflow.initialize_logged_model(name=registry.ARTIFACT_NAME, source_run_id=run_id, experiment_id=experiment_id)
    client.log_model_artifact(killed.model_id, str(models["clean"] / "config.json"))
    registered = registry.register_policy(config, run_id, models["clean"], client=client)
    source = client.get_model_version(registered["name"], registered["version"]).source
    assert source != f"models:/{killed.model_id}"
    assert str(client.get_logged_model(killed.model_id).status) == str(LoggedModelStatus.FAILED)
    assert str(client.get_logged_model(source.removeprefix("models:/")).status) == str(LoggedModelStatus.READY)

    digest = registry.verify_registered_weights(client, registered["name"], registered["version"], models["clean"])
    assert digest == registry.weights_sha256(models["clean"])
    assert client.get_model_version(registered["name"], registered["version"]).tags[TAG_WEIGHTS] == digest
    with pytest.raises(RlaifError, match="does not hold the weights trained in"):
        registry.verify_registered_weights(client, registered["name"], registered["version"], models["worse"])


def test_only_absence_reads_as_no_champion(models, prompts_file, store, tmp_path):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

    from rlaif_tasks.errors import mlflow_not_found

    config = make_config("absent", models, prompts_file, store, tmp_path)
    client = tracking.connect(config)
    assert registry.get_alias(client, "rlaif-no-such-policy", "champion") is None  # no model
    client.create_registered_model("rlaif-absent-policy")
    assert registry.get_alias(client, "rlaif-absent-policy", "champion") is None  # no alias
    assert mlflow_not_found(MlflowException("Registered model alias champion not found.", error_code=INVALID_PARAMETER_VALUE))
    assert not mlflow_not_found(MlflowException("API request to http://x failed: too many 503 error responses", error_code=INTERNAL_ERROR))
    assert not mlflow_not_found(MlflowException("Invalid alias name: '!'", error_code=INVALID_PARAMETER_VALUE))


def test_a_stale_gate_decision_is_made_again_against_the_new_champion(models, prompts_file, store, tmp_path):
    """A cleared promote_if_better whose stored decision was measured against an older champion decides again."""
    from rlaif_tasks.stages import nightly

    config = make_config("stale", models, prompts_file, store, tmp_path / "n1", require=[])
    client, run_id, run_dir = trained_run(config, models["milder"], "stale-1")
    name = tracking.registered_model_name(config)
    v1 = registry.register_policy(config, run_id, models["milder"], client=client)["version"]
    refs = {"run_dir": str(run_dir), "mlflow_run_id": run_id, "model_name": name, "model_version": v1, "model_dir": str(models["milder"])}
    gate.run_gate(config, run_dir, run_id, name, v1, models["milder"], client=client)  # measured against the base policy
    stored = json.loads((run_dir / "gate" / "decision.json").read_text())["reference"]
    assert stored["kind"] == "base" and stored["version"] is None

    other = make_config("stale", models, prompts_file, store, tmp_path / "n2")
    other_client, other_run, _ = trained_run(other, models["clean"], "stale-2")
    v2 = registry.register_policy(other, other_run, models["clean"], client=other_client)["version"]
    registry.promote(name, v2, client=client)  # a later night promoted v2 first

    out = nightly.promote_if_better(refs)  # night 1's task, cleared and run again
    reference = json.loads(Path(out["decision_path"]).read_text())["reference"]
    assert reference["kind"] == "champion" and reference["version"] == v2
    assert out["promoted"]  # this config's gate passes anything, so v1 replaces v2, knowingly
    assert registry.describe(name, client=client)["aliases"] == {"champion": v1, "previous": v2}
    again = nightly.promote_if_better(refs)  # and once more: already done, nothing moves
    assert again["promoted"] and registry.describe(name, client=client)["aliases"] == {"champion": v1, "previous": v2}


@pytest.mark.faults
def test_a_damaged_champion_samples_file_is_evaluated_again_not_compared_as_the_base(champion, models, prompts_file, store, tmp_path, caplog):
    """Issue 20: before, pyarrow's ArrowInvalid escaped the gate; now the champion is evaluated on tonight's prompts."""
    client = tracking.connect(make_config("compare", models, prompts_file, store, tmp_path / "probe"))
    stored = Path(client.get_run(champion["run_id"]).info.artifact_uri.removeprefix("file://")) / "eval" / "final_samples.parquet"
    sound = stored.read_bytes()
    try:
        stored.write_bytes(b"PAR1 this is not a parquet file")
        config, client, run_id, run_dir = challenger_run(models, prompts_file, store, tmp_path, "damaged-samples")
        with caplog.at_level("WARNING", logger="rlaif_tasks.gate"):
            reference, samples = gate.reference_samples(client, config, run_dir, run_id, champion["name"])
    finally:
        stored.write_bytes(sound)
    assert reference["kind"] == "champion" and reference["version"] == champion["version"]
    assert_champion_evaluated_here(reference, samples, client, run_id, run_dir, champion["version"])
    assert "cannot be read" in caplog.text


@pytest.mark.faults
def test_a_damaged_champion_artefact_stops_the_gate_with_the_fix(champion, models, prompts_file, store, tmp_path):
    """Issue 20: weights that no longer hash to the registered rlaif.weights_sha256 are a clear error, never a comparison."""
    client = tracking.connect(make_config("compare", models, prompts_file, store, tmp_path / "probe"))
    registry.verify_registered_weights(client, champion["name"], champion["version"], models["milder"])  # records the hash
    source = client.get_model_version(champion["name"], champion["version"]).source
    location = Path(client.get_logged_model(source.removeprefix("models:/")).artifact_location.removeprefix("file://"))
    [weights] = list(location.rglob("*.safetensors"))
    sound = weights.read_bytes()
    try:
        weights.write_bytes(sound[: len(sound) // 2])
        config, client, run_id, run_dir = challenger_run(models, prompts_file, store, tmp_path, "damaged-weights", **{TAG_CODE: "e" * 64})
        with pytest.raises(RlaifError) as stopped:
            gate.reference_samples(client, config, run_dir, run_id, champion["name"])
    finally:
        weights.write_bytes(sound)
    assert f"{champion['name']} version {champion['version']} in the registry is damaged" in stopped.value.problem
    assert "rlaif registry rollback" in stopped.value.fix
