"""GRPO and RLOO through TRL 1.16's trainers, behind the same config, reward and outputs as our PPO.

    config.train / .generation / .seed  ->  GRPOConfig / RLOOConfig (see `trl_args`)
    config.reward (or `reward_fn`)      ->  one TRL reward function: texts in, floats out
    TRL's logs                          ->  run_dir/train/metrics.jsonl rows with PPO's keys
    run_dir/train/checkpoints           ->  HF Trainer `checkpoint-N` folders, resumed automatically
    run_dir/train/final                 ->  plain transformers folder, LoRA merged

TRL samples `train.num_generations` completions per prompt and scores each against its group: GRPO
by (reward - group mean) / group std, RLOO by reward - mean of the other completions. So
`train.batch_size` counts completions per step, `batch_size / num_generations` prompts. Under
`accelerate launch` with N processes both batch sizes stay global (each process generates and
trains on 1/N of them, TRL averages the gradients) and only rank 0 writes files. See docs/grpo_rloo.md.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from rlaif_tasks.atomic import write_json
from rlaif_tasks.config import RunConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import load_model, resolve_device
from rlaif_tasks.rewards import build_scorer
from rlaif_tasks.train import checkpoint as ckpt
from rlaif_tasks.train import collectives as dist
from rlaif_tasks.train.common import StepProgress, TrainResult, lora_config
from rlaif_tasks.train.metrics import MetricsWriter

log = logging.getLogger(__name__)

RewardFn = Callable[[list[str], list[str]], list[float]]
"""(responses, prompts) -> one float per response, higher is better."""

METRIC_KEYS = (
    "step", "reward/mean", "reward/std", "kl", "kl/token", "kl_coef", "entropy", "loss", "clipfrac", "grad_norm",
    "frac_reward_zero_std", "response_length", "tokens_per_second", "time/generate", "time/score", "time/step",
)
STATE_FILE = "rlaif_state.json"
"""Written into `checkpoint-N` after the HF Trainer finished it: its presence marks a complete checkpoint."""
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def check_supported(config: RunConfig) -> None:
    """Settings TRL's online trainers cannot honour, refused before any model is loaded."""
    t, g = config.train, config.generation
    algo = t.algorithm
    if t.num_generations < 2:
        raise RlaifError(
            f"{algo} needs train.num_generations >= 2 (it compares completions of the same prompt), got {t.num_generations}",
            "set train.num_generations to 2 or more (4 is the default)",
        )
    if t.batch_size % t.num_generations:
        raise RlaifError(
            f"train.batch_size ({t.batch_size}) counts completions per step for {algo} and must be a multiple of train.num_generations ({t.num_generations})",
            f"set train.batch_size to a multiple of {t.num_generations}, e.g. {t.num_generations * max(1, t.batch_size // t.num_generations)}",
        )
    if not g.do_sample:
        raise RlaifError(f"{algo} needs sampled completions: greedy decoding makes every completion of a group identical", "set generation.do_sample=true")
    if g.stop_strings:
        raise RlaifError(
            f"{algo} runs TRL's generation, which ends completions at EOS only and cannot cut them at generation.stop_strings",
            "remove generation.stop_strings, or use train.algorithm=ppo, which supports them",
        )


def trl_args(config: RunConfig, output_dir: Path, device: str, world_size: int = 1):
    """The GRPOConfig / RLOOConfig equivalent of our run config.

    One logged step is one rollout: `ppo_epochs` optimizer steps over the same generations
    (TRL's num_iterations), each accumulating gradients over `mini_batch_size` micro-batches.
    Both sizes are global: each of `world_size` processes takes `mini_batch_size / world_size` per
    micro-batch, so TRL's generation batch (per-device batch x processes x accumulation steps) is
    `batch_size` whatever the number of processes.
    """
    from trl import GRPOConfig, RLOOConfig

    t, g = config.train, config.generation
    epochs = max(1, t.ppo_epochs)
    kwargs = dict(
        output_dir=str(output_dir),
        seed=config.training_seed,
        data_seed=config.training_seed,
        use_cpu=device == "cpu",
        bf16=device.startswith("cuda") and config.model.dtype == "bfloat16",
        fp16=False,
        report_to="none",
        disable_tqdm=True,
        max_steps=t.steps * epochs,
        learning_rate=t.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.mini_batch_size // world_size,
        gradient_accumulation_steps=t.batch_size // t.mini_batch_size,
        gradient_checkpointing=False,
        num_generations=t.num_generations,
        num_iterations=epochs,
        epsilon=t.cliprange,
        beta=t.beta,
        max_completion_length=g.max_new_tokens,
        temperature=g.temperature if g.temperature > 0 else 1.0,
        top_k=g.top_k,
        top_p=g.top_p,
        generation_kwargs={"min_new_tokens": g.min_new_tokens} if g.min_new_tokens else None,
        disable_dropout=True,
        remove_unused_columns=False,
        logging_strategy="steps",
        logging_steps=epochs,
        save_strategy="steps",
        save_steps=max(1, t.save_every or t.steps) * epochs,  # the Trainer also saves after the last step
        save_total_limit=2,
        trust_remote_code=config.model.trust_remote_code,
    )
    return (RLOOConfig if t.algorithm == "rloo" else GRPOConfig)(**kwargs)


def make_reward_func(reward_fn: RewardFn, name: str, config: RunConfig, eos_ids: Sequence[int]):
    """Wrap `reward_fn(responses, prompts)` as a TRL reward function.

    TRL passes the policy's queries as `prompts`; the raw prompt of each query arrives in the
    dataset's `raw_prompt` column, which is what prompt+response judges read. The unshaped scores
    are logged (as PPO's `reward/mean`); then PPO's shaping applies: missing-EOS penalty, clipping,
    whitening (`shape_scores`). TRL calls it in every process with that process's completions, so
    the logged statistics and the whitening are summed over processes (those of the global batch).
    """
    import torch

    from rlaif_tasks.train.ppo import shape_scores

    t = config.train
    shaping = t.missing_eos_penalty is not None or t.reward_clip is not None or t.whiten_rewards

    def reward(prompts, completions, completion_ids, raw_prompt, log_metric, **_):
        t0 = time.perf_counter()
        scores = [float(s) for s in reward_fn(list(completions), list(raw_prompt))]
        if len(scores) != len(completions) or not all(math.isfinite(s) for s in scores):
            raise RlaifError(
                f"the reward returned {len(scores)} scores (finite: {all(math.isfinite(s) for s in scores)}) for {len(completions)} responses",
                "make the reward return one finite float per response",
            )
        raw = torch.tensor(scores, dtype=torch.float32)
        count, total, squares = dist.all_reduce_sum(torch.tensor([raw.numel(), raw.sum().item(), raw.square().sum().item()], dtype=torch.float64))
        mean = total / count
        log_metric("score/mean", mean.item())
        log_metric("score/std", (squares / count - mean**2).clamp(min=0).sqrt().item())
        parts = getattr(getattr(reward_fn, "backend", None), "last_parts", None) or {}  # a composite reward's parts
        for key in sorted(parts):
            log_metric(f"reward/part/{key}", parts[key])
        if shaping:
            ended = torch.tensor([bool(ids) and ids[-1] in eos_ids for ids in completion_ids])
            raw = shape_scores(raw, ended, t, sum_all=dist.all_reduce_sum)
        log_metric("time/score", time.perf_counter() - t0)
        return raw.tolist()

    reward.__name__ = re.sub(r"\W+", "_", name).strip("_") or "reward"
    return reward


def _trainer_class(algorithm: str):
    """TRL's trainer with two changes: queries are tokenized like PPO and evaluation do, and generation is timed."""
    from trl import GRPOTrainer, RLOOTrainer

    base = GRPOTrainer if algorithm == "grpo" else RLOOTrainer

    class Trainer(base):
        def _tokenize_prompts(self, prompts):
            # TRL adds special tokens (a second BOS after a chat template); our queries are complete texts
            return self.processing_class(text=list(prompts), add_special_tokens=False)["input_ids"], None, {}

        def _generate_single_turn(self, *args, **kwargs):
            t0 = time.perf_counter()
            out = super()._generate_single_turn(*args, **kwargs)
            seconds = time.perf_counter() - t0
            completion_ids = out[0] if isinstance(out, tuple) else out  # GRPO: (ids, logprobs); RLOO: ids
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["time/generate"].append(seconds)
            self._metrics[mode]["tokens_per_second"].append(sum(len(c) for c in completion_ids) / max(seconds, 1e-9))
            return out

    Trainer.__name__ = Trainer.__qualname__ = base.__name__
    return Trainer


def _metrics_callback(writer: MetricsWriter, rows: list[dict], fields: dict, epochs: int, beta: float, on_step):
    """Turns each TRL log into one metrics row; marks each saved checkpoint complete with our state."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self):
            self.last, self.progress = time.perf_counter(), None

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return  # the end-of-training summary, not a step
            now = time.perf_counter()
            kl_token = logs.get("kl")
            length = logs.get("completions/mean_length")
            row = {
                "step": state.global_step // epochs,
                "reward/mean": logs.get("score/mean", logs["reward"]),
                "reward/std": logs.get("score/std", logs.get("reward_std")),
                "kl": kl_token * length if kl_token is not None and length is not None else None,
                "kl/token": kl_token,
                "kl_coef": beta,
                "entropy": logs.get("entropy"),
                "loss": logs.get("loss"),
                "clipfrac": logs.get("clip_ratio/region_mean"),
                "grad_norm": logs.get("grad_norm"),
                "frac_reward_zero_std": logs.get("frac_reward_zero_std"),
                "response_length": length,
                "tokens_per_second": logs.get("tokens_per_second"),
                "time/generate": logs.get("time/generate"),
                "time/score": logs.get("time/score"),
                "time/step": now - self.last,
            }
            row.update({k: v for k, v in logs.items() if k.startswith("reward/part/")})
            self.last = now
            rows.append(row)
            if not state.is_world_process_zero:
                return
            writer.append(row)
            if self.progress is None:
                self.progress = StepProgress(state.max_steps // epochs, log)
            self.progress(
                row["step"], f"reward {row['reward/mean']:.3f} kl {'n/a' if row['kl'] is None else format(row['kl'], '.3f')}", row["time/step"],
                f"generate {row['time/generate'] or 0.0:.1f}, score {row['time/score'] or 0.0:.2f}",
            )
            if on_step is not None:
                on_step(dict(row))

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                done = [r for r in rows if r["step"] <= state.global_step // epochs]
                write_json(path / STATE_FILE, {"fingerprint": ckpt.fingerprint(fields), "training_fields": fields, "step": state.global_step // epochs, "metrics": done})
                log.info("saved checkpoint %s", path)

    return MetricsCallback()


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """HF `checkpoint-N` folders that carry our state file, oldest first."""
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = _CHECKPOINT_DIR.match(path.name)
            if match and (path / STATE_FILE).is_file() and (path / "trainer_state.json").is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def clean_incomplete(root: Path) -> None:
    """Delete checkpoint folders a killed run left half-written (no state file yet)."""
    if root.is_dir():
        for path in root.iterdir():
            if _CHECKPOINT_DIR.match(path.name) and not (path / STATE_FILE).is_file():
                log.info("removing incomplete checkpoint %s", path)
                shutil.rmtree(path, ignore_errors=True)


def train_with_trl(
    config: RunConfig,
    run_dir: str | Path,
    queries: Sequence[str],
    prompts: Sequence[str] | None = None,
    *,
    reward_fn: RewardFn | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `config.model.policy` with TRL's GRPO or RLOO (`config.train.algorithm`) on `queries`.

    `prompts` are the raw prompts given to prompt+response scorers (default: the queries).
    `reward_fn(responses, prompts)` replaces the scorer built from `config.reward`.
    Resumes from the newest complete checkpoint under `run_dir/train/checkpoints` whose files are intact.
    Under `accelerate launch` every process calls it; `on_step` is called in the main process only.
    """
    import datasets
    from transformers.trainer_callback import PrinterCallback

    from rlaif_tasks.train.ppo import _eos_ids

    t = config.train
    if t.algorithm not in ("grpo", "rloo"):
        raise RlaifError(f"train_with_trl runs grpo or rloo, not {t.algorithm!r}", "call rlaif_tasks.train.train, which picks the trainer")
    queries = list(queries)
    prompts = list(prompts) if prompts is not None else queries
    if not queries or len(prompts) != len(queries):
        raise RlaifError(f"{t.algorithm} got {len(queries)} queries and {len(prompts)} prompts", "pass a non-empty list of queries and one prompt per query")
    check_supported(config)
    out_dir = Path(run_dir) / "train"
    ckpt_root = out_dir / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)

    device = resolve_device(config.device)
    procs = dist.state(cpu=device == "cpu")  # the state TRL's Trainer then uses: gloo on CPU
    dist.check_world(t, procs.num_processes)
    loaded = load_model(
        config.model.policy, kind="auto", revision=config.model.revision, trust_remote_code=config.model.trust_remote_code,
        dtype=config.model.dtype, device="cpu",
    )
    if loaded.kind == "seq2seq-lm":
        raise RlaifError(
            f"the policy {config.model.policy!r} is an encoder-decoder (seq2seq) model; TRL 1.16's GRPO and RLOO trainers "
            "support causal (decoder-only) language models only",
            "set train.algorithm=ppo, whose trainer handles seq2seq policies, or pick a causal policy",
        )
    if loaded.kind != "causal-lm":
        raise RlaifError(f"the policy {config.model.policy!r} is a {loaded.kind}", "set model.policy to a causal language model")
    model, tokenizer = loaded.model, loaded.tokenizer
    tokenizer.padding_side = "left"
    eos_ids = _eos_ids(tokenizer, model.generation_config)

    if reward_fn is None:

        scorer = build_scorer(config.reward, purpose="reward", device=device)
        reward_fn, reward_name = scorer, scorer.name
    else:
        reward_name = getattr(reward_fn, "__name__", "reward")

    # -- resume ----------------------------------------------------------------------------------
    fields = ckpt.training_fields(config, queries)
    epochs = max(1, t.ppo_epochs)
    writer = MetricsWriter(out_dir / "metrics.jsonl")
    if procs.is_main_process:
        clean_incomplete(ckpt_root)
    procs.wait_for_everyone()
    rows: list[dict] = []
    resume_from, start_step = None, 0

    def read(_: int, path: Path) -> dict:
        """Only our state: the HF Trainer loads the rest in train(), once `resume_newest` checked its files."""
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        ckpt.check_compatible(path, state, fields)
        return {"step": int(state["step"]), "metrics": state["metrics"]}

    resumed = ckpt.resume_newest(complete_checkpoints(ckpt_root), read, main=procs.is_main_process, load_changes_model=False)
    if resumed:
        _, resume_from, state = resumed
        start_step = state["step"]
        rows = [r for r in state["metrics"] if r["step"] <= start_step]
        if start_step < t.steps:
            log.info("resuming from checkpoint %s: step %d of %d done, running steps %d-%d", resume_from, start_step, t.steps, start_step + 1, t.steps)
        else:
            log.info("resuming from checkpoint %s: all %d steps already done", resume_from, start_step)
    if procs.is_main_process:
        writer.reset(rows)

    # -- the trainer -----------------------------------------------------------------------------
    args = trl_args(config, ckpt_root, device, procs.num_processes)
    dataset = datasets.Dataset.from_dict({"prompt": queries, "raw_prompt": prompts})
    trainer = _trainer_class(t.algorithm)(
        model=model,
        reward_funcs=make_reward_func(reward_fn, reward_name, config, eos_ids),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(t, "CAUSAL_LM") if t.use_lora else None,
        callbacks=[_metrics_callback(writer, rows, fields, epochs, t.beta, on_step)],
    )
    trainer.remove_callback(PrinterCallback)  # our on_log writes one line per step instead
    if t.steps > 0:  # also when all steps are done: train() then only loads the checkpoint's weights
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)

    # -- final model: LoRA merged into the base, saved as a plain transformers folder (by rank 0) --
    final_dir = out_dir / "final"
    ckpt.save_final_policy(trainer.accelerator.unwrap_model(trainer.model), tokenizer, final_dir, t.merge_adapter)
    return TrainResult(model_dir=final_dir, metrics=list(rows), resumed_from=start_step)
