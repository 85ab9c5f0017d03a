"""The baseline side of bench_ppo_vs_trl.py: TRL 1.12's experimental PPOTrainer, in its own venv.

Run by bench_ppo_vs_trl.py with the interpreter of the TRL 1.12 environment; prints one line
`BENCH_RESULT {json}` with the same fields as ppo_ours_worker.py. Kept free of rlaif_tasks imports:
that package is not installed there.
"""

from __future__ import annotations

import importlib.metadata
import json
import resource
import sys
import time
from pathlib import Path

import torch
import trl.experimental.ppo.ppo_trainer as ppo_module
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import worker_arguments  # noqa: E402


class StepStamps(TrainerCallback):
    """Wall-clock time and peak RSS at the end of every PPO step (one rollout batch + its update)."""

    def __init__(self):
        self.stamps: list[float] = []
        self.rss_mb: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.stamps.append(time.perf_counter())
        self.rss_mb.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def count_new_tokens(sink: list[int]):
    """Wrap the trainer's module-level `generate` to record how many tokens each response got."""
    original = ppo_module.generate

    def generate(lm_backbone, queries, pad_token_id, generation_config):
        sequences, logits = original(lm_backbone, queries, pad_token_id, generation_config)
        sink.append(int(sequences.shape[1] - queries.shape[1]))
        return sequences, logits

    ppo_module.generate = generate


def main() -> None:
    args = worker_arguments()

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    # TRL's recipe: the value model starts as a copy of the reward model (its own trunk, fully trained)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1, dtype=torch.float32)
    for model in (policy, value_model, reward_model):
        model.config.pad_token_id = tokenizer.pad_token_id

    queries = json.load(open(args.prompts, encoding="utf-8"))
    dataset = Dataset.from_dict({"input_ids": [tokenizer(q, add_special_tokens=False)["input_ids"] for q in queries]})
    config = PPOConfig(
        output_dir=args.output_dir,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=args.batch_size // args.mini_batch_size,
        num_ppo_epochs=1,
        total_episodes=args.steps * args.batch_size,
        local_rollout_forward_batch_size=args.batch_size,
        response_length=args.response_length,
        stop_token=None,  # no EOS stop: every response is exactly response_length tokens
        temperature=1.0,
        num_sample_generations=0,
        gradient_checkpointing=False,  # PPOConfig defaults to True; our trainer does not recompute activations
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        bf16=False,
        use_cpu=True,
        seed=0,
    )
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM")
    new_tokens: list[int] = []
    count_new_tokens(new_tokens)
    stamps = StepStamps()
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward_model,
        train_dataset=dataset, value_model=value_model, peft_config=lora, callbacks=[stamps],
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    start = time.perf_counter()
    trainer.train()
    print("BENCH_RESULT " + json.dumps({
        "side": "trl",
        "episodes_per_step": args.batch_size,
        "step_seconds": [b - a for a, b in zip([start, *stamps.stamps], stamps.stamps)],
        "response_tokens": new_tokens,
        "trainable_params": trainable,
        "train_peak_rss_mb": stamps.rss_mb[-1] if stamps.rss_mb else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {name: importlib.metadata.version(name) for name in ("trl", "transformers", "torch", "peft", "accelerate", "datasets")},
    }), flush=True)


if __name__ == "__main__":
    main()
