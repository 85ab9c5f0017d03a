"""Our side of bench_ppo_vs_trl.py: `rlaif_tasks.train.ppo.train_ppo` with the same models and sizes.

Run by bench_ppo_vs_trl.py in its own process (so its peak RSS is its own); prints one line
`BENCH_RESULT {json}` with the same fields as ppo_trl112_worker.py, plus our per-step time split.
The reward is a Python callable around the same sequence-classifier reward model TRL is given:
query + response text -> the policy's tokenizer -> the score at the last token.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlaif_tasks.config import GenerationConfig, ModelConfig, RunConfig, TrainConfig
from rlaif_tasks.train import ppo
from rlaif_tasks.train.common import lora_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import worker_arguments  # noqa: E402


def classifier_reward(path: str, tokenizer_path: str):
    """(responses, queries) -> the reward model's score of each query + response."""
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, padding_side="right")
    model.config.pad_token_id = tokenizer.pad_token_id

    @torch.inference_mode()
    def reward(responses: list[str], queries: list[str]) -> list[float]:
        enc = tokenizer([q + r for q, r in zip(queries, responses)], return_tensors="pt", padding=True, add_special_tokens=False)
        return model(**enc).logits[:, 0].tolist()

    return reward


def trainable_params(config: RunConfig) -> int:
    """LoRA + value-head parameter count of train_ppo's model, built on the meta device (no memory)."""
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config.model.policy))
        model = ppo.PolicyWithValueHead(get_peft_model(base, lora_config(config.train, "CAUSAL_LM")), is_seq2seq=False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class StepLog(logging.Handler):
    """Keeps the forward-pass seconds that train_ppo logs per step but does not put in its metrics rows."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.forward: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("step %d/%d") and isinstance(record.args, tuple) and len(record.args) == 11:
            self.forward.append(float(record.args[8]))


def main() -> None:
    args = worker_arguments()

    config = RunConfig(
        name="bench-ppo",
        seed=0,
        device="cpu",
        model=ModelConfig(policy=args.policy),
        generation=GenerationConfig(
            max_new_tokens=args.response_length, min_new_tokens=args.response_length,  # TRL never stops early either
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, batch_size=args.batch_size,
        ),
        train=TrainConfig(
            steps=args.steps, learning_rate=args.learning_rate, batch_size=args.batch_size,
            mini_batch_size=args.mini_batch_size, ppo_epochs=1, use_lora=True, lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r, lora_dropout=0.0, save_every=0,
        ),
    )
    queries = json.load(open(args.prompts, encoding="utf-8"))
    params = trainable_params(config)
    reward = classifier_reward(args.reward_model, args.policy)
    step_log = StepLog()
    logging.getLogger(ppo.__name__).addHandler(step_log)
    logging.getLogger(ppo.__name__).setLevel(logging.INFO)
    stamps: list[float] = []
    rss_mb: list[float] = []

    def on_step(row: dict) -> None:
        stamps.append(time.perf_counter())
        rss_mb.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    start = time.perf_counter()
    result = ppo.train_ppo(config, args.output_dir, queries, reward_fn=reward, on_step=on_step)
    rows = [{k: row[k] for k in ("time/generate", "time/score", "time/update", "time/step", "response_length")} for row in result.metrics]
    for row, forward in zip(rows, step_log.forward):
        row["time/forward"] = forward
    print("BENCH_RESULT " + json.dumps({
        "side": "ours",
        "episodes_per_step": args.batch_size,
        "step_seconds": [b - a for a, b in zip([start, *stamps], stamps)],
        "response_tokens": [row["response_length"] for row in rows],
        "trainable_params": params,
        "train_peak_rss_mb": rss_mb[-1] if rss_mb else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": rows,
        "versions": {name: importlib.metadata.version(name) for name in ("transformers", "torch", "peft", "accelerate")},
    }), flush=True)


if __name__ == "__main__":
    main()
