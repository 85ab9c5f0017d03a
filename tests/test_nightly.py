"""The nightly stages end to end on a tiny policy, with the embedded MLflow store under $RLAIF_HOME."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import yaml

from rlaif_tasks import tracking
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.stages import nightly
from rlaif_tasks.stages.common import safe_run_id
from rlaif_tasks.tags import TAG_CODE_VERSION, TAG_DAG_RUN_ID, TAG_DATASET, TAG_JUDGE_REVISIONS, TAG_JUDGES, TAG_WEIGHTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def config_path(tmp_path):
    from tiny_models import WORDS, tiny_causal_lm

    policy = tiny_causal_lm(tmp_path / "policy")
    rng = random.Random(0)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": " ".join(rng.choices(WORDS, k=rng.randint(2, 5)))}) + "\n" for _ in range(40)))
    config = {
        "name": "tiny",
        "device": "cpu",
        "model": {"policy": str(policy)},
        "data": {"source": str(prompts), "use_chat_template": False, "test_size": 16},
        "generation": {"max_new_tokens": 6, "min_new_tokens": 6, "batch_size": 16},
        "reward": {"model": "profanity-check"},
        "evaluation": {"judges": [{"model": "profanity-check"}], "num_table_rows": 5},
        "train": {"steps": 4, "batch_size": 8, "mini_batch_size": 4, "learning_rate": 1e-3, "lora_r": 4, "lora_alpha": 8},
        # the first model faces the base policy: any result within 10x of its toxicity is promoted
        "seed": 0,  # pinned: the second night trains the same model
        "gate": {"judge": "profanity-check", "min_improvement": -10.0, "require": ["samples", "toxicity"]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def variant(config_path: Path, filename: str, **sections) -> Path:
    """The fixture's config with some sections changed, as a file beside it: keys no trigger may set come from a file."""
    config = yaml.safe_load(config_path.read_text())
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    path = config_path.with_name(filename)
    path.write_text(yaml.safe_dump(config))
    return path


def test_nightly_promotes_then_refuses_an_equal_model_and_retries_cleanly(home, config_path, capsys, monkeypatch):
    from mlflow import MlflowClient
    from rlaif_tasks.cli import main

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080")  # what the api-server's workers see
    first = nightly.run_all(str(config_path), {"train.steps": 2}, dag_run_id="scheduled__2026-01-01T02:00:00+00:00")
    run_dir = home / "runs" / "tiny" / safe_run_id("scheduled__2026-01-01T02:00:00+00:00")
    assert first["run_dir"] == str(run_dir) and (run_dir / "config.yaml").is_file()
    assert first["model_name"] == "rlaif-tiny-policy" and first["model_version"] == "1" and first["promoted"] is True
    assert set(first["toxicity"]) == {"profanity-check"}
    assert "promoted to champion" in first["text"] and first["mlflow_run_id"] in first["text"]
    note = first["note"].split("\n\n")  # the DAG run's note: verdict, then the gate's intervals as a Markdown table
    assert note[0] == "**model rlaif-tiny-policy version 1: promoted to champion" + first["text"].split("promoted to champion", 1)[1].splitlines()[0] + "**"
    table = note[2].splitlines()
    assert table[:2] == ["| judge | before | after | drop [95% interval] |", "|---|---:|---:|---|"] and table[2].startswith("| profanity-check (decides) |")
    assert len(first["note"]) <= 1000 and "```" not in first["note"]

    store = f"sqlite:///{home / '.mlflow' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)  # the embedded store under $RLAIF_HOME
    assert str(client.get_model_version_by_alias("rlaif-tiny-policy", "champion").version) == "1"
    run = client.get_run(first["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    description = run.data.tags["mlflow.note.content"]  # the run's description in the MLflow UI (issue 23)
    assert description.startswith("**model rlaif-tiny-policy version 1: promoted to champion")
    assert "[the DAG run](http://127.0.0.1:8080/dags/rlaif_nightly/runs/scheduled__2026-01-01T02%3A00%3A00%2B00%3A00)" in description
    card = client.get_model_version("rlaif-tiny-policy", "1").description  # the version's model card
    for part in ("## What trained it", "ppo, 2 steps", "## The gate's evidence", "| profanity-check (decides) |", "## Answers to the same prompts",
                 "make serve MODEL=models:/rlaif-tiny-policy/1"):
        assert part in card, part
    assert card.count("\n| ") >= 3 + 3  # the gate's rows and three paired answers
    assert run.data.params["train.steps"] == "2"
    assert run.data.tags[TAG_DAG_RUN_ID] == "scheduled__2026-01-01T02:00:00+00:00"
    assert len(run.data.tags[TAG_DATASET]) == 64
    assert run.data.tags[TAG_CODE_VERSION] == tracking.code_version() != ""
    assert json.loads(run.data.tags[TAG_JUDGE_REVISIONS])["profanity-check"].startswith("alt-profanity-check==")
    assert len(run.data.tags[TAG_JUDGES]) == 16
    assert client.get_model_version("rlaif-tiny-policy", "1").tags[TAG_DAG_RUN_ID] == "scheduled__2026-01-01T02:00:00+00:00"
    assert {"eval/baseline/profanity-check/mean", "eval/final/profanity-check/frac_toxic", "improvement/profanity-check/mean", "gate/kl"} <= run.data.metrics.keys()
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/reward/mean")) == [1, 2]
    artifacts = {a.path for folder in ("plots", "eval", "gate") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"plots/training.png", "plots/toxicity.png", "eval/final_samples.json", "eval/baseline_samples.json", "gate/decision.json"} <= artifacts
    assert (home / ".mlflow" / "artifacts").is_dir()

    # the same DAG run again (every task retried): same MLflow run, same version, no new history
    again = nightly.run_all(str(config_path), {"train.steps": 2}, dag_run_id="scheduled__2026-01-01T02:00:00+00:00")
    assert (again["mlflow_run_id"], again["model_version"], again["promoted"]) == (first["mlflow_run_id"], "1", True)
    assert len(client.get_metric_history(run.info.run_id, "train/reward/mean")) == 2
    assert len(client.get_metric_history(run.info.run_id, "eval/final/profanity-check/mean")) == 1
    assert len(client.search_model_versions("name = 'rlaif-tiny-policy'")) == 1
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs  # logged once, not again on the retry
    assert sorted((d.dataset.name, d.tags[0].value) for d in inputs) == [("prompts-test", "evaluation"), ("prompts-train", "training")]
    assert {d.dataset.digest.split("-")[0] for d in inputs} == {run.data.tags[TAG_DATASET][:16]}

    # the next night trains the same model (pinned seed, same data): it answers with the champion's samples,
    # a 0% drop with a [0, 0] interval, refused; the champion's samples are read from night 1's MLflow run
    strict = variant(config_path, "tiny-strict.yaml", gate={"min_improvement": 0.05})
    assert main(["nightly", "--config", str(config_path), "--set", "train.steps=2", "--set", "gate.min_improvement=0.05",
                 "--dag-run-id", "scheduled__2026-01-02T02:00:00+00:00"]) == 2  # the gate is the config file's, not the command line's
    assert "gate.min_improvement" in capsys.readouterr().err
    assert main(["nightly", "--config", str(strict), "--set", "train.steps=2", "--dag-run-id", "scheduled__2026-01-02T02:00:00+00:00"]) == 0
    second = json.loads((home / "runs" / "tiny" / safe_run_id("scheduled__2026-01-02T02:00:00+00:00") / "nightly.json").read_text())
    assert second["model_version"] == "2" and second["promoted"] is False
    assert second["text"] in capsys.readouterr().out
    decision = json.loads((home / "runs" / "tiny" / safe_run_id("scheduled__2026-01-02T02:00:00+00:00") / "gate" / "decision.json").read_text())
    assert decision["reference"]["kind"] == "champion" and decision["reference"]["source"].startswith("MLflow run")
    assert decision["improvement"] == pytest.approx(0.0, abs=1e-9) and decision["improvement_upper"] == pytest.approx(0.0, abs=1e-9)
    assert decision["failed"] == ["toxicity"]
    assert str(client.get_model_version_by_alias("rlaif-tiny-policy", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("rlaif-tiny-policy", "challenger").version) == "2"
    assert client.get_model_version("rlaif-tiny-policy", "2").tags["rlaif.status"] == "rejected"
    assert "not promoted" in second["text"]

    # by hand: promote the refused version anyway, then roll back to night 1's champion
    assert main(["registry", "promote", "rlaif-tiny-policy", "2"]) == 0
    assert str(client.get_model_version_by_alias("rlaif-tiny-policy", "champion").version) == "2"
    assert main(["registry", "rollback", "rlaif-tiny-policy"]) == 0
    assert str(client.get_model_version_by_alias("rlaif-tiny-policy", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("rlaif-tiny-policy", "rolled_back").version) == "2"
    capsys.readouterr()
    assert main(["registry", "show", "--config", str(config_path), "--json"]) == 0  # name from the config
    shown = json.loads(capsys.readouterr().out)
    assert shown["aliases"] == {"champion": "1", "rolled_back": "2"}
    assert main(["registry", "rollback", "rlaif-tiny-policy"]) == 2  # nothing left to roll back to
    assert "no previous champion" in capsys.readouterr().err


def test_an_unpinned_seed_comes_from_the_logical_date_and_is_recorded(home, config_path):
    from mlflow import MlflowClient
    from rlaif_tasks.config import load_config
    from rlaif_tasks.evaluation.stats import seed_for_logical_date

    unpinned = {"seed": None, "train.steps": 1}
    night = "2026-03-01T02:00:00+00:00"
    refs = nightly.prepare_dataset(str(config_path), unpinned, "rlaif_nightly", "scheduled__1", logical_date=night)
    assert load_config(Path(refs["run_dir"]) / "config.yaml").seed == seed_for_logical_date(night) != 0
    tags = MlflowClient(f"sqlite:///{home / '.mlflow' / 'mlflow.db'}").get_run(refs["mlflow_run_id"]).data.tags
    assert tags["rlaif.seed"] == str(seed_for_logical_date(night)) and tags["rlaif.seed_source"] == f"logical date {night}"
    assert nightly.prepare_dataset(str(config_path), unpinned, "rlaif_nightly", "scheduled__1", logical_date=night) == refs  # a retry
    other = nightly.prepare_dataset(str(config_path), unpinned, "rlaif_nightly", "scheduled__2", logical_date="2026-03-02T02:00:00+00:00")
    assert load_config(Path(other["run_dir"]) / "config.yaml").seed != load_config(Path(refs["run_dir"]) / "config.yaml").seed
    with pytest.raises(RlaifError, match="samples_per_prompt is 1"):
        nightly.prepare_dataset(str(config_path), {"evaluation.samples_per_prompt": 1}, "rlaif_nightly", "scheduled__3")


def test_stages_pass_small_refs_and_refuse_a_changed_config(home, config_path):
    refs = nightly.prepare_dataset(str(config_path), {"train.steps": 1}, "rlaif_nightly", "manual__1")
    assert set(refs) == {"run_dir", "mlflow_run_id", "dataset_sha256", "config_hash"}
    json.dumps(refs)
    assert nightly.prepare_dataset(str(config_path), {"train.steps": 1}, "rlaif_nightly", "manual__1") == refs
    with pytest.raises(RlaifError, match="another config"):
        nightly.prepare_dataset(str(config_path), {"train.steps": 3}, "rlaif_nightly", "manual__1")
    with pytest.raises(RlaifError, match="train.steps is 0"):
        nightly.prepare_dataset(str(config_path), {"train.steps": 0}, "rlaif_nightly", "manual__2")
    assert safe_run_id("manual__1") == "manual__1"
    assert safe_run_id("scheduled__2026-01-01T02:00:00+00:00").startswith("scheduled__2026-01-01T02_00_00_00_00-")


def test_a_seq2seq_policy_without_a_fluency_model_is_refused_before_anything_is_prepared(home, config_path, tmp_path):
    """Fluency needs a causal LM, and an unset evaluation.fluency_model means the policy: say so at the first task."""
    from tiny_models import tiny_seq2seq_lm

    seq2seq = tiny_seq2seq_lm(home / "t5")  # under $RLAIF_HOME: a folder a trigger may name
    with pytest.raises(RlaifError) as raised:
        nightly.prepare_dataset(str(config_path), {"model.policy": str(seq2seq)}, "rlaif_nightly", "manual__t5")
    assert "seq2seq model and evaluation.fluency_model is unset" in raised.value.problem
    assert "set evaluation.fluency_model to a causal LM" in raised.value.fix
    assert not (home / "runs").exists() or not list((home / "runs").rglob("manifest.json"))


def test_the_flan_t5_seed_config_names_a_causal_fluency_model(monkeypatch):
    """The shipped seq2seq config passes the check; without its fluency_model it would not (no hub access needed)."""
    from rlaif_tasks.config import load_config

    seed = Path(__file__).parents[1] / "configs" / "seed-flan-t5-base.yaml"
    asked = []

    def a_seq2seq_hub_model(spec, **_):
        asked.append(spec)
        return "seq2seq-lm"

    monkeypatch.setattr(nightly, "model_kind", a_seq2seq_hub_model)
    nightly._require_a_causal_fluency_model(load_config(seed))
    assert asked == []  # a named fluency model needs no look-up of the policy
    with pytest.raises(RlaifError, match="evaluation.fluency_model is unset"):
        nightly._require_a_causal_fluency_model(load_config(seed, {"evaluation.fluency_model": None}))
    assert asked == ["google/flan-t5-base"]


def test_a_seq2seq_policy_runs_the_nightly_stages_and_is_registered_as_pyfunc(home, config_path, tmp_path, monkeypatch):
    """A tiny T5 from prepare to report: registered as a pyfunc model that generates, its weights checked, promoted."""
    import pandas as pd
    import torch
    from tiny_models import tiny_seq2seq_lm

    import mlflow
    from mlflow import MlflowClient
    from rlaif_tasks import gate, registry
    from rlaif_tasks.config import load_config
    from rlaif_tasks.models import load_model

    t5 = tiny_seq2seq_lm(tmp_path / "t5")
    t5_config = variant(
        config_path, "tiny-t5.yaml", model={"policy": str(t5)},
        evaluation={"fluency_model": str(tmp_path / "policy"), "relevance_model": None},  # the fixture's tiny causal LM
    )
    refs = nightly.prepare_dataset(str(t5_config), {"train.steps": 2}, "rlaif_nightly", "manual__t5")
    for stage in (nightly.baseline_eval, nightly.train, nightly.evaluate, nightly.register, nightly.promote_if_better):
        refs = stage(refs)
    result = nightly.report(refs)

    store = f"sqlite:///{home / '.mlflow' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    name, version = result["model_name"], result["model_version"]
    assert (name, version, result["promoted"]) == ("rlaif-tiny-policy", "1", True)
    assert "promoted to champion" in result["text"] and f"model {name} version 1" in result["text"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    info = mlflow.models.get_model_info(f"models:/{name}/1")
    assert set(info.flavors) == {"python_function"} and info.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert {p.name: p.default for p in info.signature.params.params} == registry.inference_defaults(load_config(Path(refs["run_dir"]) / "config.yaml"))
    assert client.get_model_version(name, "1").tags[TAG_WEIGHTS] == registry.weights_sha256(refs["model_dir"])

    served = mlflow.pyfunc.load_model(f"models:/{name}/1")
    answers = served.predict(["you are a good friend", "the day is"])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers) and any(answers)
    assert served.predict(pd.DataFrame({"prompt": ["hello"]}), params={"max_new_tokens": 2, "do_sample": False}) == served.predict(["hello"], params={"max_new_tokens": 2, "do_sample": False})
    assert all(len(a.split()) <= 2 for a in served.predict(["you are", "the day is", "what"], params={"max_new_tokens": 2}))  # one word a token

    # read back the other ways: a models:/ spec, and the gate's evaluation of a registered champion
    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path / "cache"))
    champion, trained = load_model(f"models:/{name}@champion"), load_model(refs["model_dir"])
    assert champion.kind == "seq2seq-lm"
    assert all(torch.equal(a, b) for a, b in zip(champion.model.state_dict().values(), trained.model.state_dict().values()))
    config, run_dir = load_config(Path(refs["run_dir"]) / "config.yaml"), Path(refs["run_dir"])
    again = pd.read_parquet(gate.evaluate_registered(client, config, run_dir, name, "1"))
    assert again["response"].tolist() == pd.read_parquet(run_dir / "eval" / "final_samples.parquet")["response"].tolist()


def test_a_worker_that_cannot_see_the_run_folder_says_to_share_rlaif_home(home, tmp_path):
    """Tasks of one run hand each other files in the run folder: every worker must mount RLAIF_HOME."""
    refs = {"run_dir": str(tmp_path / "elsewhere" / "runs" / "tiny" / "manual_1"), "mlflow_run_id": "0" * 32}
    with pytest.raises(RlaifError) as raised:
        nightly.baseline_eval(refs)
    assert "is not visible on" in raised.value.problem and "RLAIF_HOME" in raised.value.fix


@pytest.mark.faults
def test_a_trigger_cannot_change_what_decides_trust_and_fails_before_anything_is_made(home, config_path):
    """Issue 20: each override no trigger may make is refused by the first stage (asset events, `rlaif nightly --set`)."""
    from test_dag import FORBIDDEN_SETS

    from rlaif_tasks.config import parse_override

    # merge_lora_for_rollouts trades the workers' memory for speed: the operator's to set, like device; PPO's KL floor and
    # horizon shape how the controller holds its budget (a trigger may move the budget, train.target_kl, not the controller);
    # the value warm-up's rollouts are part of the recipe and cost sampling time; where PPO's KL acts and how it scales its
    # scores are the recipe too
    others = ["model.policy=meta-llama/Meta-Llama-3.1-8B", "reward.model=models:/someone-elses-policy@champion", "train.merge_lora_for_rollouts=true",
              "train.min_kl_coef=0", "train.kl_horizon=1000000", "train.value_warmup_steps=100000", "orchestration.trigger_scale_limit=1000",
              "train.kl_term=loss", "train.ppo_scale_rewards=group"]
    for forbidden in FORBIDDEN_SETS + others:
        key, value = parse_override(forbidden)
        with pytest.raises(RlaifError, match=re.escape(key)):
            nightly.prepare_dataset(str(config_path), {"train.steps": 1, key: value}, "rlaif_nightly", "manual__forbidden")
    # allowed keys, but more work than orchestration.trigger_scale_limit (4) times the file's, or none of its bound
    from rlaif_tasks.config import load_config

    operator = load_config(config_path)
    too_much = {"train.steps": 4 * operator.train.steps + 1, "preferences.k": 4 * operator.preferences.k + 1, "generation.max_new_tokens": 10_000,
                "preferences.temperatures": [0.5, 0.6, 0.7, 0.8, 0.9], "data.test_size": 4 * operator.data.test_size + 1,
                "train.ppo_batch_size": 4 * operator.train.batch_size + operator.train.mini_batch_size}  # unset in the file: bounded by batch_size
    for key, value in too_much.items():
        with pytest.raises(RlaifError, match=rf"asks for more work .*{re.escape(key)}=.*\(at most"):
            nightly.prepare_dataset(str(config_path), {key: value}, "rlaif_nightly", "manual__too_much")
    # a smaller minibatch is more updates a step: 16/1 and 32/1 are 16 and 32 minibatches, over 4 times the file's 8/4
    for ratio, sizes in (("train.batch_size/mini_batch_size=16", {"train.batch_size": 16, "train.mini_batch_size": 1}),
                         ("train.ppo_batch_size/ppo_mini_batch_size=32", {"train.ppo_batch_size": 32, "train.ppo_mini_batch_size": 1})):
        with pytest.raises(RlaifError, match=rf"asks for more work .*{re.escape(ratio)} minibatches a step \(at most 8,"):
            nightly.prepare_dataset(str(config_path), sizes, "rlaif_nightly", "manual__too_many_updates")
    assert not (home / "runs").exists() and not (home / ".mlflow").exists()  # refused before a folder or a store was made
    # issue 24's new knobs a night may vary: GRPO/RLOO's beta, DPO's rate and epochs, the AI-feedback prompt budget
    allowed = {"train.steps": 4 * operator.train.steps, "reward.model": "hatesonar", "train.beta": 0.1, "train.dpo_learning_rate": 5e-5, "train.dpo_max_epochs": 2, "preferences.max_prompts": 99,
               "preferences.temperatures": [0.7, 1.0], "train.ppo_batch_size": 4 * operator.train.batch_size, "train.ppo_mini_batch_size": 4, "train.ppo_learning_rate": 2e-4}
    refs = nightly.prepare_dataset(str(config_path), allowed, "rlaif_nightly", "manual__allowed")
    assert Path(refs["run_dir"]).is_dir()
    saved = load_config(Path(refs["run_dir"]) / "config.yaml")
    assert saved.train.steps == 4 * operator.train.steps  # at the limit is allowed
    assert saved.train.ppo_sizes() == (4 * operator.train.batch_size, 4)  # 8 minibatches a step: 4 times the file's 2
    assert saved.train.rate() == 2e-4  # PPO's own rate, as a trigger may set the shared one
    assert (saved.train.beta, saved.train.dpo_learning_rate, saved.train.dpo_max_epochs, saved.preferences.max_prompts, saved.preferences.temperatures) == (0.1, 5e-5, 2, 99, [0.7, 1.0])


def test_the_base_policys_evaluation_is_computed_once_and_identical_from_the_cache(home, config_path, monkeypatch):
    """Issue 22: a second night reuses the base policy's evaluation; recomputed, it gives the same numbers; a key change recomputes."""
    import pandas as pd

    from rlaif_tasks.evaluation import runner

    computed = []
    real = runner.evaluate_model
    monkeypatch.setattr(runner, "evaluate_model", lambda config, label, *a, **k: computed.append(label) or real(config, label, *a, **k))

    sources = []

    def night(run_id: str, **overrides) -> Path:
        refs = nightly.prepare_dataset(str(config_path), overrides, "rlaif_nightly", run_id)
        sources.append(nightly.baseline_eval(refs)["baseline_source"])
        return Path(refs["run_dir"]) / "eval"

    first = night("scheduled__1")
    second = night("scheduled__2")
    assert computed == ["baseline"]  # the second night evaluated nothing
    assert sources == ["evaluated", "cache"]
    refs = nightly.prepare_dataset(str(config_path), {}, "rlaif_nightly", "scheduled__2")
    assert nightly.baseline_eval(refs)["baseline_source"] == "earlier attempt"  # a retry of the second night's task
    cache = home / "runs" / "tiny" / ".evaluation-cache"
    [entry] = list(cache.iterdir())
    shutil.rmtree(entry)  # recompute the same evaluation from scratch
    third = night("scheduled__3")
    assert computed == ["baseline", "baseline"]
    for eval_dir in (second, third):
        assert json.loads((eval_dir / "baseline.json").read_text())["judges"] == json.loads((first / "baseline.json").read_text())["judges"]
        pd.testing.assert_frame_equal(pd.read_parquet(eval_dir / "baseline_samples.parquet"), pd.read_parquet(first / "baseline_samples.parquet"))
    night("scheduled__4", **{"generation.max_new_tokens": 8})  # another sampling setting: another key
    assert computed == ["baseline"] * 3 and len(list(cache.iterdir())) == 2


def test_a_lora_policy_registered_as_its_adapter_stores_megabytes_and_loads_as_the_trained_model(home, config_path, tmp_path):
    """tracking.registered_weights: adapter: the version stores the LoRA adapter and a reference to the base folder, no base weights; the gate's download merges it back to the trained model (same logits), the registered adapter's hash is checked, and MLflow loads and answers with it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import mlflow
    from mlflow import MlflowClient
    from rlaif_tasks import registry

    path = variant(config_path, "tiny-adapter.yaml", tracking={"registered_weights": "adapter"})
    result = nightly.run_all(str(path), {"train.steps": 2}, dag_run_id="manual__adapter")
    assert (result["model_version"], result["promoted"]) == ("1", True)
    store = f"sqlite:///{home / '.mlflow' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    name = "rlaif-tiny-policy"
    version = client.get_model_version(name, "1")
    stored = Path(client.get_logged_model(version.source.removeprefix("models:/")).artifact_location.removeprefix("file://"))
    weights = list(stored.rglob("*.safetensors"))
    assert weights and all("peft" in w.relative_to(stored).parts for w in weights), weights  # the adapter only
    run_dir = Path(result["run_dir"])
    trained = run_dir / "train" / "final"
    assert sum(w.stat().st_size for w in weights) < (trained / "model.safetensors").stat().st_size / 3
    assert version.tags[TAG_WEIGHTS] == registry.weights_sha256(run_dir / "train" / "adapter", "float32")

    merged = registry.download_policy(client, name, "1", tmp_path / "download")
    tokens = AutoTokenizer.from_pretrained(trained)("you are my friend", return_tensors="pt")
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(trained)(**tokens).logits
        got = AutoModelForCausalLM.from_pretrained(merged)(**tokens).logits
    assert torch.allclose(want, got, atol=1e-5)
    answer = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(["you are"])
    assert len(answer) == 1 and isinstance(answer[0], str)


def test_the_eval_settings_tag_is_the_evaluating_hosts(home, config_path, monkeypatch):
    """Issue 22: `evaluation.dtype: auto` resolves where the evaluation runs (the gpu queue), not where the data was prepared."""
    from mlflow import MlflowClient
    from rlaif_tasks.config import load_config
    from rlaif_tasks.models import hub
    from rlaif_tasks.tags import TAG_EVAL_SETTINGS

    path = variant(config_path, "tiny-auto.yaml", evaluation={"dtype": "auto"})
    monkeypatch.setattr(hub, "cpu_has_fast_bfloat16", lambda: False)  # the host that prepares the data: float32
    refs = nightly.prepare_dataset(str(path), {}, "rlaif_nightly", "manual__hosts")
    store = f"sqlite:///{home / '.mlflow' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    assert TAG_EVAL_SETTINGS not in client.get_run(refs["mlflow_run_id"]).data.tags
    monkeypatch.setattr(hub, "cpu_has_fast_bfloat16", lambda: True)  # the evaluation worker: bfloat16
    nightly.baseline_eval(refs)
    bf16 = load_config(variant(config_path, "tiny-bf16.yaml", evaluation={"dtype": "bfloat16"}))
    assert client.get_run(refs["mlflow_run_id"]).data.tags[TAG_EVAL_SETTINGS] == tracking.eval_settings_hash(bf16)
    assert tracking.eval_settings_hash(bf16) != tracking.eval_settings_hash(load_config(config_path))


def test_adapter_registration_needs_a_lora_policy(home, config_path):
    from rlaif_tasks.config import load_config

    path = variant(config_path, "tiny-full.yaml", tracking={"registered_weights": "adapter"}, train={"use_lora": False})
    with pytest.raises(RlaifError, match="writes no adapter"):
        load_config(path)


def test_the_evaluation_dtype_loads_the_policies_and_keeps_evaluations_in_other_dtypes_apart(config_path):
    """evaluation.dtype: bfloat16 loads the evaluated policy in bfloat16, is part of the settings the gate compares (so a champion evaluated in float32 is evaluated again), and no trigger may set it by default."""
    import torch

    from rlaif_tasks.config import load_config
    from rlaif_tasks.evaluation.runner import evaluation_dtype, load_policy
    from rlaif_tasks.models import hub
    from rlaif_tasks.overrides import check_trigger_overrides

    float32, bf16 = load_config(config_path), load_config(variant(config_path, "tiny-bf16.yaml", evaluation={"dtype": "bfloat16"}))
    assert (evaluation_dtype(float32), evaluation_dtype(bf16)) == ("float32", "bfloat16")
    auto = load_config(variant(config_path, "tiny-auto.yaml", evaluation={"dtype": "auto"}))
    assert evaluation_dtype(auto) == ("bfloat16" if hub.cpu_has_fast_bfloat16() else "float32")
    assert tracking.eval_settings_hash(auto) == tracking.eval_settings_hash(bf16 if hub.cpu_has_fast_bfloat16() else float32)
    assert {p.dtype for p in load_policy(bf16).model.parameters()} == {torch.bfloat16}
    assert tracking.eval_settings_hash(float32) != tracking.eval_settings_hash(bf16)
    for key in ("evaluation.dtype", "train.rollout_dtype", "train.autocast_dtype"):
        with pytest.raises(RlaifError, match=key):
            check_trigger_overrides(float32, {key: "bfloat16"}, [])


def test_a_passed_gate_waits_for_a_sign_off_that_promotes_rejects_or_times_out(home, config_path):
    """Issue 21: with gate.approval: required nothing moves until a person answers; Approve promotes (compare-and-set), Reject or no answer rejects."""
    from mlflow import MlflowClient
    from rlaif_tasks import registry
    from rlaif_tasks.stages import sign_off

    path = variant(config_path, "tiny-approval.yaml", gate={"approval": "required", "approvers": ["reviewer"], "approval_timeout_hours": 2})
    store = f"sqlite:///{home / '.mlflow' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)  # an earlier test's registry URI must not leak in
    name = "rlaif-tiny-policy"

    def champion() -> str | None:
        version = client.get_registered_model(name).aliases.get("champion")
        return None if version is None else str(version)

    def night(run_id: str) -> dict:
        refs = nightly.prepare_dataset(str(path), {"train.steps": 1}, "rlaif_nightly", run_id)
        for stage in (nightly.baseline_eval, nightly.train, nightly.evaluate, nightly.register, nightly.promote_if_better):
            refs = stage(refs)
        return refs

    first = night("manual__approve")
    assert first["awaiting_sign_off"] and not first["promoted"]
    assert champion() is None  # a passed gate alone moves nothing
    assert client.get_model_version(name, "1").tags["rlaif.status"] == "awaiting_sign_off"
    assert "awaiting a sign-off" in nightly.report(first)["text"]
    asked = sign_off.request(first)
    assert asked["approvers"] == ["reviewer"] and asked["timeout_hours"] == 2
    body = asked["body"]
    assert "profanity-check (decides)" in body and "[" in body  # the deciding judge's drop with its interval
    assert "KL ≤ 20 nats" in body and "relevance ratio ≥ 0.6" in body  # the budgets
    assert "| prompt | base policy | this version |" in body and "MLflow run" in body
    assert nightly.promote_if_better(first)["awaiting_sign_off"]  # a cleared task finds it waiting, and leaves it

    signed = sign_off.answer(first, {"option": "Approve", "by": "reviewer", "at": "2026-12-06T17:00:00+00:00", "comment": ""})
    assert signed["promoted"] and champion() == "1"
    tags = client.get_model_version(name, "1").tags
    assert (tags["rlaif.status"], tags["rlaif.sign_off"], tags["rlaif.signed_off_by"], tags["rlaif.signed_off_at"]) == (
        "champion", "approved", "reviewer", "2026-12-06T17:00:00+00:00")
    summary = nightly.report(signed)
    assert summary["promoted"] and "signed off: approved by reviewer at 2026-12-06T17:00:00+00:00" in summary["text"]
    # a retried task holding another answer applies the one stored first, once
    assert sign_off.answer(first, {"option": "Reject", "by": "reviewer", "at": "later"})["promoted"]

    second = night("manual__reject")
    assert second["awaiting_sign_off"] and second["model_version"] == "2"
    rejected = sign_off.answer(second, {"option": "Reject", "by": "reviewer", "at": "2026-12-06T18:00:00+00:00", "comment": "answers read oddly"})
    assert not rejected["promoted"] and champion() == "1"
    tags = client.get_model_version(name, "2").tags
    assert tags["rlaif.status"] == "rejected" and tags["rlaif.sign_off"] == "rejected"
    assert tags["rlaif.rejected_reason"] == "rejected by reviewer at 2026-12-06T18:00:00+00:00: answers read oddly"
    assert "model rlaif-tiny-policy version 2: not promoted: rejected by reviewer" in nightly.report(rejected)["text"]

    third = night("manual__timeout")
    timed_out = sign_off.answer(third, {"timed_out": True, "at": "2026-12-06T20:00:00+00:00"})
    assert not timed_out["promoted"] and champion() == "1"
    tags = client.get_model_version(name, "3").tags
    assert tags["rlaif.sign_off"] == "timed_out" and "rlaif.signed_off_by" not in tags
    assert tags["rlaif.rejected_reason"] == "no sign-off within 2 h (gate.approval_timeout_hours)"

    fourth = night("manual__moved")  # measured against champion 1; then someone else promotes 3 before the approval lands
    registry.promote(name, "3", client=client)
    moved = sign_off.answer(fourth, {"option": "Approve", "by": "reviewer", "at": "2026-12-06T21:00:00+00:00"})
    assert not moved["promoted"] and champion() == "3"
    assert "the evidence compared this version with champion 1" in client.get_model_version(name, "4").tags["rlaif.rejected_reason"]


def test_approval_required_names_who_may_answer():
    from rlaif_tasks.config import load_config

    with pytest.raises(RlaifError, match="gate.approvers names nobody"):
        load_config(None, {"gate.approval": "required"})
    with pytest.raises(RlaifError, match="gate.approval must be one of"):
        load_config(None, {"gate.approval": "sometimes"})
    assert load_config(None, {"gate.approval": "required", "gate.approvers": ["reviewer"]}).gate.approvers == ["reviewer"]
