"""How much of the base policy's scores a linear value head can predict: held-out R^2 of PPO's value warm-up fit, by ridge.

The warm-up (`train.value_warmup_steps`, docs/ppo.md) fits the head on N rollouts of the base policy. This probe draws
the same rollouts (the prompts of steps 1..N of a run with `--seed`), then fits on all rollouts but one and predicts the
left-out one's token returns, for each ridge penalty; R^2 is against the training rollouts' mean, so 0 means the head
learnt only the scores' level and anything above it is what the hidden states say about how an answer will score.

    .venv/bin/python bench/value_warmup_probe.py --rollouts 8     # about 1.5 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rlaif_tasks.config import load_config  # noqa: E402
from rlaif_tasks.data import load_prompts_split  # noqa: E402
from rlaif_tasks.generation import lm_forward  # noqa: E402
from rlaif_tasks.models import load_model  # noqa: E402
from rlaif_tasks.rewards import build_scorer  # noqa: E402
from rlaif_tasks.stages.local import prepare_dataset  # noqa: E402
from rlaif_tasks.train.ppo import batch_indices, fit_linear_value, rollout  # noqa: E402

RIDGES = (0.0, 0.01, 0.1, 1.0, 10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = load_config(args.config, {"run_dir": str(ROOT / "runs" / "value-warmup-probe"), "seed": args.seed})
    torch.manual_seed(args.seed)
    prepare_dataset(config)
    train = load_prompts_split(config.resolved_run_dir, "train")
    queries, prompts = train["query"].tolist(), train["prompt"].tolist()
    policy = load_model(config.model.policy, kind="auto", dtype=config.model.dtype, device="cpu")
    reward = build_scorer(config.reward, purpose="reward", device="cpu")
    features, returns = [], []
    start = time.perf_counter()
    for step in range(1, args.rollouts + 1):
        idx = batch_indices(step, len(queries), config.train.batch_size, config.training_seed)
        ro = rollout(policy.model, policy.tokenizer, [queries[i] for i in idx], config.generation, False, "cpu")
        scores = torch.tensor(reward(ro.texts, [prompts[i] for i in idx]), dtype=torch.float64)
        with torch.no_grad():
            _, hidden = lm_forward(policy.model, ro.batch, False)
        real = ro.batch["response_mask"].bool()
        features.append(F.pad(hidden.double()[real], (0, 1), value=1.0))
        returns.append(scores[:, None].expand(real.shape)[real])
    every = torch.cat(returns)
    print(f"{args.rollouts} rollouts of {config.train.batch_size} ({len(every)} tokens) in {time.perf_counter() - start:.0f} s; "
          f"score mean {every.mean():.2f}, variance {every.var():.2f}")
    print("| ridge | held-out R^2 (leave one rollout out) |\n|---|---|")
    for ridge in RIDGES:
        error = error_of_mean = 0.0
        for k in range(len(features)):
            x = torch.cat([f for i, f in enumerate(features) if i != k])
            y = torch.cat([r for i, r in enumerate(returns) if i != k])
            weight, bias = fit_linear_value(x.T @ x, x.T @ y, ridge)
            error += (features[k][:, :-1] @ weight + bias - returns[k]).square().sum().item()
            error_of_mean += (y.mean() - returns[k]).square().sum().item()
        print(f"| {ridge:g} | {1 - error / error_of_mean:.3f} |")


if __name__ == "__main__":
    main()
