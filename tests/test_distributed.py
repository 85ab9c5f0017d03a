"""Training in two processes under `accelerate launch` (gloo on CPU), on tiny local models.

Every multi-process test goes through the real launch: `rlaif_tasks.train.train` with
`train.num_processes=2` starts `accelerate launch`, whose workers run `rlaif_tasks.train.distributed`.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from killed_training import REWARD_LOG_ENV, kill_launch_after_step
from safetensors.torch import load_file

from rlaif_tasks.config import GenerationConfig, RunConfig, TrainConfig, load_config
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.train import train
from rlaif_tasks.train.collectives import DIGEST_ENV
from rlaif_tasks.train.metrics import read_metrics

QUERIES = ["you are", "the day is", "i think that", "hello my friend", "what is this", "they are very", "she was so", "we love the"] * 4
TIMING_KEYS = {"time/generate", "time/score", "time/update", "time/step", "tokens_per_second"}

pytestmark = pytest.mark.slow  # most tests start `accelerate launch` process groups


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory):
    from tiny_models import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("models") / "causal")


def prepared_run(path):
    """A run folder with the train split `rlaif data prepare` would write, which the workers read."""
    (path / "data").mkdir(parents=True)
    pd.DataFrame({"prompt": QUERIES, "query": QUERIES}).to_parquet(path / "data" / "train.parquet")
    return path


def tiny_config(model_path, reward: str, do_sample: bool = True, **train) -> RunConfig:
    config = RunConfig(name="tiny", seed=0, device="cpu")
    config.model.policy = str(model_path)
    config.reward.model = f"python:killed_training:{reward}"
    config.generation = GenerationConfig(max_new_tokens=8, min_new_tokens=8, batch_size=16, do_sample=do_sample)
    config.train = TrainConfig(**{"steps": 3, "batch_size": 8, "mini_batch_size": 8, "learning_rate": 1e-2, "use_lora": True,
                                  "lora_r": 4, "lora_alpha": 8, "save_every": 2, "num_processes": 2, **train})
    return config


def trainable_weights(checkpoint):
    """The LoRA adapter and the value head of a PPO checkpoint: everything PPO trains."""
    return {**load_file(checkpoint / "adapter" / "adapter_model.safetensors"), **load_file(checkpoint / "value_head.safetensors")}


def test_ppo_in_two_processes_matches_one_process_and_only_rank_0_writes(causal_path, tmp_path, monkeypatch, capfd):
    """Two processes with a global batch of 8 (4 each) against one process with the same batch of 8.

    Greedy decoding makes the rollouts deterministic, and one minibatch per epoch (mini_batch_size =
    batch_size, 2 epochs) gives both runs the same data in every optimizer step, so they compute the
    same training up to float32 rounding (the gradient all-reduce, the global whitening sums and each
    rank padding its own 4 queries change the order of summation). Tolerance: 1e-5 absolute on every
    trainable weight after 3 steps (training moves them by 1e-2 and more); on each step's metrics 1e-4
    relative or 1e-5 absolute, the absolute part for the policy loss, a mean of O(1) terms that cancel
    to ~1e-4. Measured here: at most 5e-7 on the weights (LoRA and value head, up to 0.2 in size) and
    1.1e-6 on the metrics (the step-3 policy loss).
    """
    digests = tmp_path / "digests"
    monkeypatch.setenv(DIGEST_ENV, str(digests))
    config = tiny_config(causal_path, "text_length", do_sample=False, steps=3, ppo_epochs=2)
    run2 = prepared_run(tmp_path / "two")
    seen = []
    final = train(config, run2, on_step=seen.append)
    output = capfd.readouterr().err

    assert final == run2 / "train" / "final" and (final / "config.json").is_file()
    assert [r["step"] for r in seen] == [1, 2, 3]  # on_step runs here, fed by rank 0

    # every rank holds identical weights after every step, and training changed them
    per_rank = [[json.loads(line) for line in (digests / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [[(d["step"], d["world_size"]) for d in rows] for rows in per_rank] == [[(1, 2), (2, 2), (3, 2)]] * 2
    assert [d["sha256"] for d in per_rank[0]] == [d["sha256"] for d in per_rank[1]]
    assert len({d["sha256"] for d in per_rank[0]}) == 3

    # only rank 0 wrote: one row per step, each checkpoint and the final model saved once
    rows2 = read_metrics(run2 / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows2] == [1, 2, 3]
    assert rows2 == seen
    checkpoints = run2 / "train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-2", "step-3"]
    assert {"rng.json", "rng-rank1.json"} <= {p.name for p in (checkpoints / "step-3").iterdir()}  # each rank's RNG state
    assert json.loads((checkpoints / "step-3" / "trainer_state.json").read_text())["world_size"] == 2
    for step in (2, 3):
        assert output.count(f"saved checkpoint {checkpoints / f'step-{step}'}") == 1
    assert output.count("saved the trained policy") == 1

    # one process, same global batch: the same training
    config.train.num_processes = 1
    run1 = prepared_run(tmp_path / "one")
    train(config, run1)
    rows1 = read_metrics(run1 / "train" / "metrics.jsonl")
    for one, two in zip(rows1, rows2, strict=True):
        for key in set(one) - TIMING_KEYS:
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), (one["step"], key)
    assert rows1[-1]["approx_kl"] > 0 and rows1[-1]["kl"] > 0  # the policy moved, so the comparison has teeth
    w1, w2 = trainable_weights(run1 / "train" / "checkpoints" / "step-3"), trainable_weights(checkpoints / "step-3")
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5
    assert max(w1[k].abs().max().item() for k in w1 if "lora_B" in k) > 1e-3  # LoRA B starts at 0


def test_two_process_run_killed_after_a_checkpoint_resumes_from_it(causal_path, tmp_path, capfd):
    config = tiny_config(causal_path, "count_good_or_hang", steps=4, save_every=2, mini_batch_size=4)
    run = prepared_run(tmp_path / "run")
    killed_rows = kill_launch_after_step(config, run, step=3)
    assert [r["step"] for r in killed_rows] == [1, 2, 3]
    checkpoints = run / "train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith(".")) == ["step-2"]
    assert not (run / "train" / "final").exists()

    ran = []
    final = train(config, run, on_step=lambda row: ran.append(row["step"]))
    output = capfd.readouterr().err
    assert ran == [3, 4]
    resumed = [line for line in output.splitlines() if "resuming from checkpoint" in line]
    assert len(resumed) == 2 and all("running steps 3-4" in line for line in resumed)  # both ranks loaded step-2
    assert any("rank 0/2" in line for line in resumed) and any("rank 1/2" in line for line in resumed)
    rows = read_metrics(run / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[:2] == killed_rows[:2]
    # each rank restored its own RNG state: the resumed step 3 samples what the killed run sampled
    assert {k: v for k, v in rows[2].items() if k not in TIMING_KEYS} == {k: v for k, v in killed_rows[2].items() if k not in TIMING_KEYS}
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-2", "step-4"]
    assert (final / "config.json").is_file()


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_trl_trainers_in_two_processes(algorithm, causal_path, tmp_path, monkeypatch, capfd):
    calls = tmp_path / "reward-calls"
    calls.mkdir()
    monkeypatch.setenv(REWARD_LOG_ENV, str(calls))
    config = tiny_config(causal_path, "text_length", algorithm=algorithm, steps=2, learning_rate=5e-2, num_generations=4, beta=0.05)
    run = prepared_run(tmp_path / "run")
    seen = []
    final = train(config, run, on_step=seen.append)
    output = capfd.readouterr().err

    assert [r["step"] for r in seen] == [1, 2]
    rows = read_metrics(run / "train" / "metrics.jsonl")
    assert rows == seen and all(math.isfinite(r["reward/mean"]) for r in rows)
    # the global batch of 8 completions is split: each process generated and scored 4 per step
    assert [(calls / f"rank-{r}.txt").read_text().split() for r in (0, 1)] == [["4", "4"], ["4", "4"]]
    checkpoints = sorted(p.name for p in (run / "train" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2"]
    assert (run / "train" / "checkpoints" / "checkpoint-2" / "rlaif_state.json").is_file()
    assert output.count("saved the trained policy") == 1
    trained, base = load_file(final / "model.safetensors"), load_file(causal_path / "model.safetensors")
    assert max((trained[k] - base[k]).abs().max().item() for k in base) > 1e-4, "LoRA did not change the weights"


def test_failed_launch_raises_the_workers_problem_with_their_output(tmp_path):
    config = tiny_config(tmp_path / "no-such-model", "text_length")
    with pytest.raises(RlaifError) as err:
        train(config, prepared_run(tmp_path / "run"))
    assert "training in 2 processes" in err.value.problem and "no-such-model does not exist" in err.value.problem
    assert "last lines of its output" in err.value.problem
    assert "bundled name" in err.value.fix  # the worker's own fix travels back


def test_batch_split_and_process_count_are_checked_before_training(causal_path, tmp_path):
    from rlaif_tasks.train.ppo import train_ppo

    config = tiny_config(causal_path, "text_length", num_processes=3, batch_size=8, mini_batch_size=4)
    with pytest.raises(RlaifError, match="split evenly over 3 processes") as err:
        train(config, prepared_run(tmp_path / "run"))
    assert "num_processes to one of [1, 2, 4]" in err.value.fix
    assert not (tmp_path / "run" / "train").exists()  # nothing was launched

    config.train.num_processes = 2
    with pytest.raises(RlaifError, match="runs in 1 process") as err:
        train_ppo(config, tmp_path / "direct", QUERIES)
    assert "rlaif_tasks.train.train" in err.value.fix

    with pytest.raises(RlaifError, match="num_processes must be >= 1"):
        load_config(None, {"train.num_processes": 0})


@pytest.mark.parametrize(("name", "kind", "processes"), [("cpu_2proc", "MULTI_GPU", 2), ("deepspeed_zero3", "DEEPSPEED", 8), ("fsdp", "FSDP", 8)])
def test_shipped_accelerate_configs_parse(name, kind, processes):
    """Only parsed here: DeepSpeed and FSDP need GPUs (see docs/distributed.md)."""
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).parent.parent / "configs" / "accelerate" / f"{name}.yaml"))
    assert (config.distributed_type.value, config.num_processes) == (kind, processes)
