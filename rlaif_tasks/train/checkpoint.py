"""Resumable training checkpoints: `run_dir/train/checkpoints/step-N/`, each written atomically.

    step-N/adapter/              the LoRA adapter (PEFT format)      -- or --
    step-N/model.safetensors     the full policy weights (no LoRA)
    step-N/value_head.safetensors
    step-N/optimizer.pt
    step-N/rng.json              python, numpy, torch (and CUDA) generator states (rank 0's), as plain JSON
    step-N/rng-rank<R>.json      the same for rank R >= 1, when trained in several processes
    step-N/trainer_state.json    step, KL controller, config fingerprint, metrics so far (written last)

A checkpoint is written into a hidden temp folder and renamed into place, so a killed run leaves
either a complete `step-N` or a `.step-N.*.tmp` folder that the next start deletes. Only the newest
`keep` checkpoints are kept. With several processes only rank 0 writes, and every rank reads.

A checkpoint can still rot after its rename (disk full, a truncated copy, flipped bits): `resume_newest`
checks every file before loading and falls back to the checkpoint before a damaged one, which it renames
to `broken-step-N` (see `quarantine`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch

from rlaif_tasks.atomic import atomic_dir
from rlaif_tasks.config import RunConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models.registry_spec import ADAPTER_FOLDER

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
BROKEN_PREFIX = "broken-"
T = TypeVar("T")

NOT_TRAINING_RELEVANT = {"steps", "save_every", "merge_adapter", "num_processes", "merge_lora_for_rollouts"}
"""TrainConfig fields that may change between a run and its resumption (e.g. train longer, on fewer GPUs, sample faster)."""


def training_fields(config: RunConfig, queries: Sequence[str]) -> dict[str, Any]:
    """Everything that shapes the training trajectory; a resumed run must match it exactly."""
    d = config.to_dict()
    fields = {k: d[k] for k in ("seed", "model", "generation", "reward")}
    fields["train"] = {k: v for k, v in d["train"].items() if k not in NOT_TRAINING_RELEVANT}
    fields["prompts_sha256"] = hashlib.sha256("\x00".join(queries).encode("utf-8")).hexdigest()[:16]
    return fields


def fingerprint(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def clean_partial(root: Path) -> None:
    """Delete temp folders left by a run killed while writing a checkpoint."""
    if root.is_dir():
        for tmp in root.glob(".step-*"):
            log.info("removing incomplete checkpoint %s", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first."""
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and path.is_dir() and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_to_json(state: dict[str, Any]) -> dict[str, Any]:
    """A generator state as JSON numbers, so a resume never unpickles a file (a tampered checkpoint could run code)."""
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    out = {
        "python": [version, list(internal), gauss], "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": state["torch"].tolist(),
    }
    if "cuda" in state:
        out["cuda"] = [s.tolist() for s in state["cuda"]]
    return out


def rng_from_json(data: dict[str, Any]) -> dict[str, Any]:
    version, internal, gauss = data["python"]
    name, keys, pos, has_gauss, cached = data["numpy"]
    state = {
        "python": (version, tuple(internal), gauss), "numpy": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
        "torch": torch.tensor(data["torch"], dtype=torch.uint8),
    }
    if "cuda" in data:
        state["cuda"] = [torch.tensor(s, dtype=torch.uint8) for s in data["cuda"]]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _rng_file(rank: int) -> str:
    return "rng.json" if rank == 0 else f"rng-rank{rank}.json"


def save_checkpoint(
    root: Path, step: int, *, policy, value_head, optimizer, state: dict[str, Any], rng_states: Sequence[dict] | None = None, keep: int = 2
) -> Path:
    """Write `root/step-<step>` atomically, then drop all but the newest `keep` checkpoints.

    `rng_states`: one RNG state per process, in rank order (default: this process's).
    """
    from safetensors.torch import save_file, save_model

    final = root / f"step-{step}"
    with atomic_dir(final) as tmp:
        if _is_peft(policy):
            policy.save_pretrained(tmp / "adapter")
        else:
            save_model(policy, str(tmp / "model.safetensors"))
        save_file({k: v.detach().contiguous() for k, v in value_head.state_dict().items()}, str(tmp / "value_head.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        for rank, rng in enumerate(rng_states or [rng_state()]):
            (tmp / _rng_file(rank)).write_text(json.dumps(rng_to_json(rng)), encoding="utf-8")
        (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, "step": step, **state}, indent=1, default=str) + "\n", encoding="utf-8")
    stale = list_checkpoints(root)[:-keep] if keep > 0 else []
    for _, old in stale:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def check_compatible(path: Path, state: dict[str, Any], fields: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint written with other training settings."""
    old_fields = state.get("training_fields", {})
    if state.get("fingerprint") == fingerprint(fields):
        return
    changes = _diff(old_fields, fields)
    raise RlaifError(
        f"the checkpoint {path} was written with different training settings "
        f"(fingerprint {state.get('fingerprint')} vs {fingerprint(fields)}; changed: {'; '.join(changes) or 'unknown'})",
        f"keep the original settings to resume, or give the changed config a new name/run_dir, or delete {path.parent} to restart this run",
    )


def load_checkpoint(path: Path, *, policy, value_head, optimizer, rank: int = 0) -> dict[str, Any]:
    """Restore weights, optimizer and `rank`'s RNG states from `path`; returns its trainer state.

    A rank the checkpoint has no RNG state for (it was written by fewer processes) keeps its seed.
    """
    from safetensors.torch import load_file, load_model

    if _is_peft(policy):
        from peft import set_peft_model_state_dict

        adapter = path / "adapter" / "adapter_model.safetensors"
        result = set_peft_model_state_dict(policy, load_file(str(adapter)))
        if getattr(result, "unexpected_keys", None):
            raise RlaifError(f"{adapter} holds weights this LoRA setup does not have: {result.unexpected_keys[:3]}", f"delete {path.parent} to restart this run")
    else:
        if not (path / "model.safetensors").is_file():
            raise RlaifError(f"{path} holds no full model weights (was it written with LoRA?)", f"delete {path.parent} to restart this run")
        load_model(policy, str(path / "model.safetensors"))
    value_head.load_state_dict(load_file(str(path / "value_head.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    rng_file = path / _rng_file(rank)
    if rng_file.is_file():
        set_rng_state(rng_from_json(json.loads(rng_file.read_text(encoding="utf-8"))))
    elif rng_file.with_suffix(".pt").is_file():  # written before the JSON format: a pickle is never loaded
        log.warning("%s keeps its RNG state as a pickle (%s), which is not loaded: sampling continues from its seed", path, rng_file.with_suffix(".pt").name)
    else:
        log.warning("%s has no RNG state for rank %d: its sampling continues from its seed, not bit for bit", path, rank)
    return read_state(path)


class DamagedCheckpoint(Exception):
    """A checkpoint file that is truncated, unreadable or fails its checksum."""


def verify_files(path: Path) -> None:
    """Check every file of the checkpoint `path` before any of it is loaded into a model.

    A load that fails halfway would leave the model part old, part new; checking first keeps a damaged
    checkpoint from touching it. `.safetensors`: the header must cover the file exactly (truncation);
    `.pt`/`.pth`/`.bin` (torch.save zip archives): every member's CRC-32 (truncation and flipped bits);
    `.json`: it parses.
    """
    from safetensors import safe_open

    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt"):
                    pass
            elif file.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(file) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise DamagedCheckpoint(f"CRC mismatch in {bad}")
            elif file.suffix == ".json":
                json.loads(file.read_text(encoding="utf-8"))
        except Exception as exc:
            raise DamagedCheckpoint(f"{file.relative_to(path)}: {exc}") from exc


def quarantine(path: Path) -> Path:
    """Rename a damaged checkpoint to `broken-<name>` (`broken-<name>.2`, ... if taken).

    Not deleted: the damage may point at a disk or copy problem worth inspecting, and its intact files
    (say, the weights when only the optimizer state is cut) may still be worth saving by hand. The new
    name is never listed, resumed or rotated away by `keep`, so it stays until someone removes it.
    """
    target = path.with_name(BROKEN_PREFIX + path.name)
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{BROKEN_PREFIX}{path.name}.{n}")
    path.rename(target)
    return target


def resume_newest(
    found: Sequence[tuple[int, Path]], load: Callable[[int, Path], T], *, main: bool = True, load_changes_model: bool = True
) -> tuple[int, Path, T] | None:
    """`load(step, path)` the newest of `found` (oldest first) that loads; None when none does.

    Each damaged checkpoint is logged, renamed by the main process (`quarantine`) and passed over for
    the one before; with none left training starts from scratch. An RlaifError from `load` (e.g. changed
    training settings) is a refusal, not damage, and propagates, as does running out of memory. Every
    rank checks the same files, so all reach the same verdict. If a `load` that changes the model failed
    after the files passed and no older checkpoint overwrote it, the model is a mix: that raises instead
    of training on.
    """
    loaded_into_model = False
    for step, path in reversed(found):
        try:
            verify_files(path)
            loaded_into_model = loaded_into_model or load_changes_model
            return step, path, load(step, path)
        except (RlaifError, MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            renamed = ""
            if main and path.exists():
                try:
                    renamed = f"; renamed it to {quarantine(path).name}"
                except OSError as rename_exc:
                    renamed = f"; could not rename it ({rename_exc})"
            log.warning("checkpoint %s cannot be loaded (%s: %s)%s; trying the one before it", path, type(exc).__name__, exc, renamed)
    if found:
        root = found[-1][1].parent
        if loaded_into_model:
            raise RlaifError(
                f"no checkpoint under {root} could be loaded, and a load that failed halfway may have changed the model",
                f"run again: the damaged checkpoints are renamed {BROKEN_PREFIX}*, so the next run starts from scratch",
            )
        log.warning("no checkpoint under %s could be loaded: training starts from scratch", root)
    return None


def save_final_policy(model, tokenizer, final_dir: Path, merge_adapter: bool) -> None:
    """The trained policy as a plain transformers folder (LoRA merged unless told not to), written atomically.

    A merged LoRA policy's adapter is also kept, in `final_dir`'s sibling `adapter/` (megabytes).

    Every rank calls it; rank 0 writes while the others wait, so N processes leave one folder.
    """
    from peft import PeftModel

    from rlaif_tasks.train import collectives

    if collectives.is_main():
        if isinstance(model, PeftModel) and merge_adapter:
            with atomic_dir(final_dir.parent / ADAPTER_FOLDER) as tmp:
                model.save_pretrained(tmp)
            model = model.merge_and_unload()
        elif isinstance(model, PeftModel):
            log.warning("train.merge_adapter is false: %s holds the LoRA adapter only, which needs peft to load", final_dir)
        with atomic_dir(final_dir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        log.info("saved the trained policy to %s", final_dir)
    collectives.barrier()
