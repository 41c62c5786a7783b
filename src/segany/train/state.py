"""Training checkpoints: everything needed to resume exactly, written atomically.

``OUTPUT/checkpoint.pt`` holds the model weights (official key layout), the optimiser and scheduler
states, the step, the recipe and rank 0's RNG states; every other rank writes its RNG states to
``OUTPUT/rng-rank{r}.pt``. Everything is stored as tensors, numbers, strings, lists and dicts (the
numpy and Python RNG states are converted), so the files are read back with ``weights_only=True``:
a planted checkpoint can hold wrong numbers, never code.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segany.errors import SeganyError
from segany.io.files import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"


class TrainingStateError(SeganyError):
    """A saved training state is unreadable, unsafe or does not fit the run."""


def rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG states as plain data (tensors, numbers, lists): loadable with ``weights_only=True``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def save_training_state(
    folder: str | os.PathLike[str],
    rank: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    config: dict[str, Any],
    device: torch.device,
) -> None:
    """Write the resumable state (call on every rank; only rank 0 writes the weights)."""
    folder = Path(folder)
    if rank == 0:
        _save(
            {
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "model_config": model.config.to_dict() if getattr(model, "config", None) is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "config": config,
                "rng": rng_state(device),
            },
            folder / CHECKPOINT,
        )
    else:
        _save({"step": step, "rng": rng_state(device)}, folder / f"rng-rank{rank}.pt")


def _load(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for a bad file; all mean "can't resume from it"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainingStateError(
            f"{path}: cannot resume from it (truncated, corrupt, or holding more than plain data): {first[:160]}"
        ) from None
    if not isinstance(state, dict) or "step" not in state or "rng" not in state:
        raise TrainingStateError(f"{path}: not a segany training state (no step or RNG state)")
    return state


def load_training_state(folder: str | os.PathLike[str], rank: int) -> dict[str, Any] | None:
    """The saved state (with this rank's RNG states), or None when the folder has no checkpoint.

    Raises:
        TrainingStateError: the file is unreadable, holds objects other than plain data, or lacks
            the expected entries.
    """
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        return None
    state = _load(path)
    for key in ("model", "optimizer", "scheduler"):
        if not isinstance(state.get(key), dict):
            raise TrainingStateError(f"{path}: not a segany training state (no {key} entry)")
    if rank != 0:
        own = Path(folder) / f"rng-rank{rank}.pt"
        if own.is_file():
            extra = _load(own)
            if extra["step"] == state["step"]:
                state["rng"] = extra["rng"]
    return state
