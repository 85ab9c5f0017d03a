import os
import re
from pathlib import Path

import pytest

from rlaif_tasks.config import RunConfig, ScorerConfig, load_config, parse_override
from rlaif_tasks.errors import RlaifError

CONFIGS = Path(__file__).parent.parent / "configs"


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_sections_become_typed_fields(tmp_path):
    cfg = load_config(write(tmp_path, "name: x\ntrain:\n  learning_rate: 1\n  steps: 3\nevaluation:\n  judges:\n    - model: hatesonar\n      input: prompt+response\n"))
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.steps == 3
    assert cfg.evaluation.judges == [ScorerConfig(model="hatesonar", input="prompt+response")]
    assert cfg.model.policy == RunConfig().model.policy


def test_overrides_are_read_as_yaml_and_win_over_the_file(tmp_path):
    path = write(tmp_path, "train:\n  steps: 3\n")
    cfg = load_config(path, ["train.steps=7", "model.policy=some/model", "data.column_mapping={text: prompt}"])
    assert (cfg.train.steps, cfg.model.policy, cfg.data.column_mapping) == (7, "some/model", {"text": "prompt"})
    assert load_config(path, {"train.use_lora": False}).train.use_lora is False


@pytest.mark.parametrize(
    "text, words",
    [
        ("trian:\n  steps: 3\n", ["trian", "valid keys"]),
        ("train:\n  stepz: 3\n", ["train.stepz", "steps"]),
        ("train:\n  steps: many\n", ["train.steps", "whole number"]),
        ("train:\n  algorithm: sac\n", ["train.algorithm", "ppo"]),
        ("train:\n  learning_rate: fast\n", ["train.learning_rate", "number"]),
        ("train:\n  batch_size: 10\n  mini_batch_size: 4\n", ["multiple"]),
        ("generation:\n  min_new_tokens: 50\n  max_new_tokens: 10\n", ["min_new_tokens"]),
        ("data:\n  test_size: 2.5\n", ["test_size"]),
        ("- a\n- b\n", ["mapping"]),
        ("train: [\n", ["not valid YAML"]),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, words):
    with pytest.raises(RlaifError) as err:
        load_config(write(tmp_path, text))
    for word in words:
        assert word in str(err.value)
    assert err.value.fix


def test_exponent_without_a_dot_is_a_float(tmp_path):
    """YAML 1.1 reads `5e-4` as a string; float fields take it as the number it means."""
    cfg = load_config(write(tmp_path, "train:\n  learning_rate: 5e-4\n"), ["train.init_kl_coef=2e-1"])
    assert cfg.train.learning_rate == 5e-4 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.init_kl_coef == 0.2


def test_missing_file_and_bad_override():
    with pytest.raises(RlaifError, match="does not exist"):
        load_config("nope.yaml")
    with pytest.raises(RlaifError, match="no '='"):
        parse_override("train.steps")


def test_hash_follows_content_only(tmp_path):
    a = load_config(write(tmp_path, "name: a\n"))
    assert a.config_hash() == load_config(None, {"name": "a"}).config_hash()
    assert a.config_hash() != load_config(None, {"name": "a", "seed": 1}).config_hash()
    assert load_config(None, {"name": "n"}).resolved_run_dir == Path("runs/n")


def test_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(CONFIGS / "demo.yaml")
    again = load_config(write(tmp_path, cfg.to_yaml()))
    assert again == cfg


@pytest.mark.parametrize("name", ["demo", "seed-llama-3.1-8b", "seed-flan-t5-base"])
def test_shipped_configs_are_valid(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name


def test_seed_configs_carry_the_seed_recipe():
    for name, policy in [("seed-llama-3.1-8b", "meta-llama/Meta-Llama-3.1-8B"), ("seed-flan-t5-base", "google/flan-t5-base")]:
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert cfg.model.policy == policy
        assert cfg.reward.model == "facebook/roberta-hate-speech-dynabench-r4-target"
        assert cfg.reward.non_toxic_label == "nothate" and cfg.reward.input == "prompt+response"
        t, g = cfg.train, cfg.generation
        assert (t.learning_rate, t.ppo_epochs, t.mini_batch_size, t.batch_size) == (1.41e-5, 1, 4, 16)
        assert (g.top_k, g.top_p, g.min_new_tokens, g.do_sample) == (0, 1.0, 5, True)


def test_config_roots_come_from_the_project_and_the_environment(tmp_path):
    from rlaif_tasks.config import config_roots

    project, link = tmp_path / "project", tmp_path / "link"
    (project / "shared").mkdir(parents=True)
    link.symlink_to(project / "shared")
    env = {"RLAIF_HOME": f"{tmp_path}/home/", "RLAIF_CONFIG_DIRS": os.pathsep.join(["/srv/team configs", "", str(link), "extra"])}
    roots = config_roots(project, env)
    assert roots == [str(project), str(tmp_path / "home"), "/srv/team configs", str(link), str(project / "shared"), str(project / "extra")]
    assert config_roots(project, {"RLAIF_HOME": ""}) == [str(project)]


def test_config_path_pattern_admits_only_yaml_under_the_roots():
    from rlaif_tasks.config import config_path_pattern

    pattern = re.compile(config_path_pattern(["/opt/rlaif-project", "/srv/team configs+1/"], exact=["/etc/rlaif/nightly.yaml"]))
    admitted = [
        "configs/demo.yaml", "configs/a..b.yml", "/opt/rlaif-project/configs/demo.yaml", "/srv/team configs+1/x.yml",
        "/etc/rlaif/nightly.yaml",
    ]
    refused = [
        "/etc/passwd", "../outside.yaml", "configs/../../outside.yaml", "/opt/rlaif-project/../etc/x.yaml", "..",
        "/opt/rlaif-projectX/x.yaml", "/srv/team configs/x.yaml", "/etc/rlaif/other.yaml", "/etc/rlaif/nightly.yaml\n",
        "configs/demo.json", "configs/demo.yaml\n", "configs/demo\x00.yaml", "/opt/rlaif-project/",
    ]
    assert [p for p in admitted if not pattern.search(p)] == []
    assert [p for p in refused if pattern.search(p)] == []


@pytest.mark.parametrize("name", ["demo", "seed-llama-3.1-8b", "seed-flan-t5-base"])
def test_shipped_configs_hold_out_frames_and_name_the_ood_set(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.data.group_column == "frame" and cfg.evaluation.extra_sets == ["bundled:detox-ood"]


def test_group_column_and_extra_sets_default_off_and_override():
    cfg = load_config(None)
    assert cfg.data.group_column is None and cfg.evaluation.extra_sets == []
    cfg = load_config(None, ["data.group_column=frame", "evaluation.extra_sets=[bundled:detox-ood, extra.jsonl]"])
    assert cfg.data.group_column == "frame" and cfg.evaluation.extra_sets == ["bundled:detox-ood", "extra.jsonl"]
    with pytest.raises(RlaifError, match="expected a list"):
        load_config(None, ["evaluation.extra_sets=bundled:detox-ood"])


def test_rlhf_train_applies_only_against_a_trained_reward_model(tmp_path):
    from rlaif_tasks.config import is_trained_reward_model

    folder = tmp_path / "rm"
    folder.mkdir()
    assert not is_trained_reward_model(str(folder))
    (folder / "reward_model.json").write_text("{}")
    specs = {"models:/rlaif-demo-policy-reward@champion": True, "models:/rlaif-demo-policy-reward/3": True, str(folder): True,
             "models:/rlaif-demo-policy@champion": False, "models:/x-reward-old/1": False, "jigsaw-bilstm": False, None: False,
             "x" * 5000: False}
    assert {spec: is_trained_reward_model(spec) for spec in specs} == specs

    path = write(tmp_path, "train:\n  ppo_learning_rate: 1.0e-3\n  target_kl: 3\nrlhf_train:\n  ppo_learning_rate: 5e-4\n  target_kl: 2\n")
    classifier = load_config(path)
    assert (classifier.train.ppo_learning_rate, classifier.train.target_kl) == (1e-3, 3.0)
    assert classifier.rlhf_train == {"ppo_learning_rate": 5e-4, "target_kl": 2.0}  # typed as train's own fields
    rlhf = load_config(path, {"reward.model": "models:/rlaif-demo-policy-reward/3"})
    assert (rlhf.train.rate(), rlhf.train.target_kl, rlhf.rlhf_train) == (5e-4, 2.0, {})
    own = load_config(path, {"reward.model": str(folder), "train.ppo_learning_rate": 3e-4})
    assert (own.train.rate(), own.train.target_kl) == (3e-4, 2.0)  # the night's own value wins over rlhf_train's

    saved = write(tmp_path, own.to_yaml())  # a run folder's config.yaml, read again by every later task
    assert (load_config(saved).train.rate(), load_config(saved).train.target_kl) == (3e-4, 2.0)


@pytest.mark.parametrize("text,words", [
    ("rlhf_train:\n  ppo_learnig_rate: 5e-4\n", "ppo_learnig_rate"),
    ("rlhf_train:\n  target_kl: high\n", "rlhf_train.target_kl"),
])
def test_rlhf_train_names_a_wrong_key_or_value(tmp_path, text, words):
    with pytest.raises(RlaifError, match=words):
        load_config(write(tmp_path, text))
