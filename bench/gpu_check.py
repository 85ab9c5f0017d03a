"""One command for a lent GPU: our PPO (and GRPO, where TRL is installed) at the bundled policy's shape,
generation throughput, and one PPO step at the seed's Llama-3.1-8B shape with its LoRA and batch sizes.

    python bench/gpu_check.py                  # on the GPU machine (CUDA torch, transformers, peft): writes docs/gpu.md
    python bench/gpu_check.py --tiny --out X   # the same code on small shapes on the CPU (tests/test_gpu_check.py)

The machine has no model hub and at most 64 MiB travel with the tree, so every model is built from its
architecture's config with random weights (a random policy rarely stops, so responses run to
max_new_tokens: the timings are an upper bound for that length). Nothing here needs mlflow, airflow or
trl: the PPO is rlaif_tasks.train.ppo.train_ppo with a reward function (the response's length in
words, capped), the shapes are SmolLM2-135M's and Llama-3.1-8B's published configs, and the LoRA and
batch settings are configs/seed-llama-3.1-8b.yaml's. Budget: about 8 minutes on one H100.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rlaif_tasks.config import load_config  # noqa: E402

WORDS = ("you", "are", "a", "the", "my", "neighbour", "is", "such", "an", "idiot", "kind", "day", "really", "what", "who", "said",
         "honestly", "people", "like", "that", "never", "always", "think", "about", "this", "so", "very", "good", "bad", "and")

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True)
LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192})
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
"""--tiny: the same code path on the CPU in seconds (the vocabulary stays the tokenizer's)."""


def tokenizer_folder(folder: Path) -> None:
    """A word-level tokenizer over WORDS (no hub): enough to tokenize prompts and decode sampled ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(folder)


def random_llama(folder: Path, shape: dict, dtype: torch.dtype) -> Path:
    """A Llama-architecture causal LM with random weights, saved as a save_pretrained folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**{**shape, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": str(dtype).removeprefix("torch.")})
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer_folder(folder)
    del model
    return folder


def prompts(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(4 + i % 5)) for i in range(n)]


def length_reward(responses: list[str], _prompts: list[str]) -> list[float]:
    return [min(len(r.split()), 20) / 20.0 for r in responses]


def run_config(policy: Path, dtype: str, device: str, **train):
    """configs/seed-llama-3.1-8b.yaml's training (LoRA, batch sizes, learning rate), on a random `policy`."""
    seed = load_config(ROOT / "configs" / "seed-llama-3.1-8b.yaml")
    t = seed.train
    settings = {
        "model.policy": str(policy), "model.dtype": dtype, "device": device, "tracking.enabled": False,
        "train.batch_size": t.batch_size, "train.mini_batch_size": t.mini_batch_size, "train.use_lora": t.use_lora,
        "train.lora_r": t.lora_r, "train.lora_alpha": t.lora_alpha, "train.lora_target_modules": t.lora_target_modules,
        "train.merge_adapter": False, "train.save_every": 0, "generation.min_new_tokens": 5, **{f"train.{k}": v for k, v in train.items()},
    }
    return load_config(None, settings)


def timed_ppo(policy: Path, dtype: str, device: str, steps: int, new_tokens: int, run_dir: Path) -> dict:
    from rlaif_tasks.train.ppo import train_ppo

    config = run_config(policy, dtype, device, steps=steps)
    config.generation.max_new_tokens = new_tokens
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = train_ppo(config, run_dir, prompts(64), reward_fn=length_reward)
    seconds = time.perf_counter() - start
    rows = result.metrics
    later = rows[1:] or rows  # the first step pays for warm-up (kernels, allocator)
    step_s = sum(r["time/step"] for r in later) / len(later)
    return {
        "steps": len(rows), "batch": config.train.batch_size, "new_tokens": new_tokens, "seconds": seconds,
        "step_seconds": step_s, "episodes_per_second": config.train.batch_size / step_s,
        "generate_tokens_per_second": sum(r["tokens_per_second"] for r in later) / len(later),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def timed_grpo(policy: Path, dtype: str, device: str, steps: int, new_tokens: int, run_dir: Path) -> dict:
    try:
        import trl  # noqa: F401
    except ImportError:
        return {"skipped": "trl is not installed on this machine"}
    from rlaif_tasks.train.trl_online import train_with_trl

    config = run_config(policy, dtype, device, steps=steps, algorithm="grpo", num_generations=4)
    config.generation.max_new_tokens = new_tokens
    start = time.perf_counter()
    result = train_with_trl(config, run_dir, prompts(64), reward_fn=length_reward)
    seconds = time.perf_counter() - start
    return {"steps": len(result.metrics), "batch": config.train.batch_size, "seconds": seconds,
            "episodes_per_second": config.train.batch_size * len(result.metrics) / seconds}


def timed_generation(policy: Path, dtype: str, device: str, new_tokens: int, batch: int) -> dict:
    from rlaif_tasks.config import GenerationConfig
    from rlaif_tasks.generation import generate
    from rlaif_tasks.models import load_model

    loaded = load_model(str(policy), kind="causal-lm", dtype=dtype, device=device)
    cfg = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, batch_size=batch)
    generate(loaded.model, loaded.tokenizer, prompts(batch), cfg)  # warm-up
    start = time.perf_counter()
    out = generate(loaded.model, loaded.tokenizer, prompts(4 * batch), cfg)
    seconds = time.perf_counter() - start
    tokens = out.new_tokens  # every generated token, padding after an EOS excluded
    return {"batch": batch, "new_tokens": new_tokens, "responses": 4 * batch, "seconds": seconds, "tokens_per_second": tokens / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes on the CPU: the test that keeps this script from rotting")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gpu.md")
    parser.add_argument("--skip-8b", action="store_true", help="only the bundled-size checks")
    parser.add_argument("--new-tokens-8b", type=int, default=None, help="response length of the 8B step (default: the seed config's, 300)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.tiny
    device, dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    card = torch.cuda.get_device_name(0) if cuda else "none (CPU, --tiny)" if args.tiny else "none: no CUDA device"
    small_shape = {**SMOLLM2_135M, **TINY} if args.tiny else SMOLLM2_135M
    big_shape = {**LLAMA_31_8B, **TINY, "rope_scaling": None} if args.tiny else LLAMA_31_8B
    seed = load_config(ROOT / "configs" / "seed-llama-3.1-8b.yaml")
    results: dict = {"card": card, "torch": torch.__version__, "device": device, "dtype": dtype, "python": platform.python_version(),
                     "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="rlaif-gpu-check-") as tmp:
        tmp = Path(tmp)
        small = random_llama(tmp / "smollm2-135m-shape", small_shape, getattr(torch, dtype))
        steps, tokens = (2, 8) if args.tiny else (4, 24)
        results["ppo_135m"] = timed_ppo(small, dtype, device, steps, tokens, tmp / "ppo")
        results["grpo_135m"] = timed_grpo(small, dtype, device, steps, tokens, tmp / "grpo")
        results["generation_135m"] = timed_generation(small, dtype, device, tokens, 8 if args.tiny else 64)
        if not args.skip_8b:
            big = random_llama(tmp / "llama-3.1-8b-shape", big_shape, getattr(torch, dtype))
            new_tokens = args.new_tokens_8b or (8 if args.tiny else seed.generation.max_new_tokens)
            results["ppo_8b"] = timed_ppo(big, dtype, device, 1, new_tokens, tmp / "ppo-8b")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(results, args.tiny), encoding="utf-8")
    print(json.dumps(results, indent=1))
    return 0


def report(r: dict, tiny: bool) -> str:
    def num(value, fmt):
        return "–" if value is None else format(value, fmt)

    lines = [
        "# GPU check (`bench/gpu_check.py`)", "",
        f"Card: **{r['card']}**; torch {r['torch']}, {r['dtype']} on {r['device']}, {r['date']}."
        + (" Tiny shapes on the CPU: this proves the script runs, not the GPU numbers." if tiny else ""), "",
        "| check | shape | batch | new tokens | episodes/s | generation tokens/s | step s | peak GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    p = r["ppo_135m"]
    small = "SmolLM2-135M's config at a tiny width and depth" if tiny else "SmolLM2-135M"
    lines.append(f"| PPO (ours), LoRA | {small} | {p['batch']} | {p['new_tokens']} | {num(p['episodes_per_second'], '.2f')} | "
                 f"{num(p['generate_tokens_per_second'], '.0f')} | {num(p['step_seconds'], '.2f')} | {num(p['peak_gib'], '.1f')} |")
    g = r["grpo_135m"]
    lines.append(f"| GRPO (TRL) | {small} | {g.get('batch', '–')} | – | {num(g.get('episodes_per_second'), '.2f')} | – | – | – |"
                 if "skipped" not in g else f"| GRPO (TRL) | {small} | – | – | {g['skipped']} | – | – | – |")
    e = r["generation_135m"]
    lines.append(f"| generation (evaluation) | {small} | {e['batch']} | {e['new_tokens']} | – | {num(e['tokens_per_second'], '.0f')} | – | – |")
    if "ppo_8b" in r:
        b = r["ppo_8b"]
        shape = "Llama-3.1-8B's config at a tiny width and depth" if tiny else "Llama-3.1-8B"
        lines.append(f"| one PPO step, LoRA as configs/seed-llama-3.1-8b.yaml | {shape} | {b['batch']} | {b['new_tokens']} | "
                     f"{num(b['episodes_per_second'], '.2f')} | {num(b['generate_tokens_per_second'], '.0f')} | {num(b['step_seconds'], '.1f')} | "
                     f"{num(b['peak_gib'], '.1f')} |")
    lines += ["", "Random weights built from each architecture's config (no hub on the lent machine): a random policy rarely "
              "ends a response, so every response runs to its length and the times are an upper bound for it.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
