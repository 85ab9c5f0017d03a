"""Inside the processes of a data-parallel run: who am I, and the collectives the trainers use.

Thin wrappers over accelerate's `PartialState` and collective ops, named for what the trainers need
(ppo.py, trl_online.py, checkpoint.py). In one process every collective is the identity. Starting the
processes is distributed.py's job; this module imports nothing of the train package.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import torch

from rlaif_tasks.config import TrainConfig
from rlaif_tasks.errors import RlaifError

DIGEST_ENV = "RLAIF_PARAM_DIGESTS"
"""Test/debug only: a folder where each rank appends a hash of its trainable weights after every step."""
WORLD_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Set by torchrun / mpirun for the processes they start (the names accelerate reads too)."""


# ------------------------------------------------------------------------------------------------
# Inside the processes: who am I, and the collectives the trainers use.
# ------------------------------------------------------------------------------------------------


def state(cpu: bool | None = None):
    """accelerate's process state, initialising the process group on first use.

    `cpu=True` makes accelerate pick gloo (never NCCL) even when launched by torchrun; unset, it is
    true on machines without CUDA. Later calls return the state the first call made.
    """
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available() if cpu is None else cpu)


def rank() -> int:
    return state().process_index


def world_size() -> int:
    return state().num_processes


def is_main() -> bool:
    """Only the main process writes files, so N processes leave one copy of everything behind."""
    return state().is_main_process


def barrier() -> None:
    """Wait for every process, e.g. until rank 0 has written what the others read next."""
    state().wait_for_everyone()


def in_launch() -> bool:
    """True in a process that a launcher started (torchrun/accelerate set LOCAL_RANK, mpirun the world size)."""
    from accelerate.utils import get_int_from_env

    return "LOCAL_RANK" in os.environ or get_int_from_env(list(WORLD_ENV), 1) > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over processes (a copy of `tensor` in one process): batch statistics of the global batch."""
    from accelerate.utils import reduce

    return reduce(tensor, reduction="sum")


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    from accelerate.utils import reduce

    return reduce(tensor, reduction="max")


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate the processes' tensors along dim 0 (the global batch, in rank order)."""
    from accelerate.utils import gather as accelerate_gather

    return accelerate_gather(tensor)


def gather_objects(obj) -> list:
    """One picklable object per process, in rank order, on every process."""
    from accelerate.utils import gather_object

    return gather_object([obj])


def all_reduce_mean_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients over processes before clipping and the optimizer step.

    As CleanRL's multi-GPU PPO: one all-reduce of all gradients flattened into one buffer (rather
    than one per tensor, or a DDP wrapper around a model that also generates), after which every
    rank clips the same gradient and takes the same step, so the weights stay identical.
    """
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    from accelerate.utils import reduce

    flat = reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    for grad, part in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(part.view_as(grad))


def check_batch_split(t: TrainConfig, processes: int) -> None:
    """The algorithm's batch and minibatch (`train.batch_sizes()`) are global: each of N processes takes 1/N of both."""
    batch, mini = t.batch_sizes()
    prefix = "ppo_" if t.algorithm == "ppo" and (t.ppo_batch_size, t.ppo_mini_batch_size) != (None, None) else ""
    if batch % processes or mini % processes:
        good = [n for n in range(1, mini + 1) if mini % n == 0 and batch % n == 0]
        raise RlaifError(
            f"train.{prefix}batch_size ({batch}) and train.{prefix}mini_batch_size ({mini}) are global and must split "
            f"evenly over {processes} processes",
            f"set train.{prefix}mini_batch_size (and {prefix}batch_size) to multiples of {processes}, e.g. {prefix}mini_batch_size="
            f"{processes * max(1, round(mini / processes))}, or train.num_processes to one of {good}",
        )


def check_world(t: TrainConfig, world: int) -> None:
    """The config's process count must be the one running, or the batch split would be wrong."""
    if t.num_processes != world:
        raise RlaifError(
            f"train.num_processes is {t.num_processes} but this training runs in {world} process(es)",
            "call rlaif_tasks.train.train (it starts accelerate launch itself), or launch with "
            f"--num_processes {t.num_processes} (python -m rlaif_tasks.train.distributed adopts the launched count)",
        )
    check_batch_split(t, world)


def refuse_sharding(algorithm: str) -> None:
    """Our PPO replicates the model on every rank; it cannot honour a DeepSpeed or FSDP launch."""
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        if os.environ.get(name, "false").lower() == "true":
            raise RlaifError(
                f"{algorithm} was launched with {name}=true, but our PPO is plain data parallel (a full model per process)",
                "launch PPO with --multi_gpu (no DeepSpeed/FSDP config), or use train.algorithm=grpo/rloo, which run through TRL's Trainer",
            )


def record_param_digest(step: int, params: Iterable[torch.nn.Parameter]) -> None:
    """Test/debug hook: with $RLAIF_PARAM_DIGESTS set, append this rank's weight hash for `step`."""
    folder = os.environ.get(DIGEST_ENV)
    if not folder:
        return
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    path = Path(folder) / f"rank-{rank()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "rank": rank(), "world_size": world_size(), "sha256": digest.hexdigest()}) + "\n")


# ------------------------------------------------------------------------------------------------
# Outside: start the processes and follow them.
