"""What one night stores in the registry for each `tracking.registered_weights`, for the demo and the seed's 8B config.

The shapes are SmolLM2-135M's and Llama-3.1-8B's published configs (bench/gpu_check.py), built on
PyTorch's meta device, so nothing is downloaded or allocated; the LoRA is each config's, built by
`train.common.lora_config` as training builds it. A merged version stores every weight in
`model.dtype`; an adapter version stores the LoRA matrices in float32 (peft keeps adapters in float32
over a bf16 base) plus a few KB of config and tokenizer.

    .venv/bin/python bench/registered_weights_cost.py     # prints the table in docs/tracking_registry.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from gpu_check import LLAMA_31_8B, SMOLLM2_135M  # noqa: E402

from rlaif_tasks.config import load_config  # noqa: E402
from rlaif_tasks.train.common import lora_config  # noqa: E402

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def sizes(shape: dict, config_file: str) -> tuple[str, float, float]:
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = load_config(ROOT / "configs" / config_file)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**shape))
    weights = sum(p.numel() for p in model.state_dict().values()) - (model.lm_head.weight.numel() if shape["tie_word_embeddings"] else 0)
    peft_model = get_peft_model(model, lora_config(config.train, "CAUSAL_LM"))
    adapter = sum(p.numel() for name, p in peft_model.named_parameters() if "lora_" in name)
    return config.model.dtype, weights * BYTES[config.model.dtype] / 1e6, adapter * 4 / 1e6


def main() -> None:
    print("| config | shape | dtype | merged version | adapter version | 365 nights with no gc, merged / adapter |")
    print("|---|---|---|---:|---:|---:|")
    for config_file, label, shape in (("demo.yaml", "SmolLM2-135M", SMOLLM2_135M), ("seed-llama-3.1-8b.yaml", "Llama-3.1-8B", LLAMA_31_8B)):
        dtype, merged, adapter = sizes(shape, config_file)
        print(f"| configs/{config_file} | {label} | {dtype} | {merged:,.0f} MB | {adapter:,.1f} MB | {365 * merged / 1e3:,.0f} GB / {365 * adapter / 1e3:,.1f} GB |")


if __name__ == "__main__":
    main()
