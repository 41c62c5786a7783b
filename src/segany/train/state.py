"""Training checkpoints: everything needed to resume exactly, written atomically.

``OUTPUT/checkpoint.pt`` holds the model weights (official key layout), the optimiser and scheduler
states, the step, the recipe and rank 0's RNG states; every other rank writes its RNG states to
``OUTPUT/rng-rank{r}.pt``. The file is read back with ``weights_only=False`` (it holds RNG tuples):
resume only from folders you wrote yourself.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segany.io.files import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
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


def load_training_state(folder: str | os.PathLike[str], rank: int) -> dict[str, Any] | None:
    """The saved state (with this rank's RNG states), or None when the folder has no checkpoint."""
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if rank != 0:
        own = Path(folder) / f"rng-rank{rank}.pt"
        if own.is_file():
            extra = torch.load(own, map_location="cpu", weights_only=False)
            if extra["step"] == state["step"]:
                state["rng"] = extra["rng"]
    return state
