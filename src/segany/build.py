"""Building models: presets, checkpoint files and the packaged default model.

``sam_model_registry``, ``build_sam`` and ``build_sam_vit_h/l/b`` mirror the official ones
(``sam_model_registry["vit_b"](checkpoint=path)``, ``build_sam`` being ViT-H): same signature, and the model
comes back in eval mode. ``build_sam_from_config`` builds a random model of any :class:`SamConfig`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Callable

import torch

from segany.errors import CheckpointError
from segany.io.checkpoint import load_checkpoint
from segany.model import PRESETS, Sam
from segany.model import build_sam as build_sam_from_config

DEFAULT_WEIGHTS = "segany_default.safetensors"


def default_weights_path() -> Path | None:
    """The packaged default model's weights, or None when this install ships none."""
    path = Path(str(resources.files("segany") / "weights" / DEFAULT_WEIGHTS))
    return path if path.is_file() else None


def load_model(
    path_or_preset: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    eval_mode: bool = True,
) -> Sam:
    """Load a SAM model.

    Args:
        path_or_preset: a checkpoint file (official ``sam_vit_*.pth``, a segany ``.pth`` or
            ``.safetensors``; the architecture is read off the weights), a preset name (``vit_b``,
            ``vit_l``, ``vit_h``, ``tiny``: random weights, for tests and training from scratch), or
            None for the default model shipped with segany.
        device: where to put the model.
        eval_mode: put the model in eval mode (dropout and drop path off).
    """
    if path_or_preset is None:
        path = default_weights_path()
        if path is None:
            raise CheckpointError(
                "this install ships no default weights; pass a checkpoint such as sam_vit_b_01ec64.pth"
            )
        model = load_checkpoint(path)
    elif isinstance(path_or_preset, str) and path_or_preset in PRESETS:
        model = build_sam_from_config(PRESETS[path_or_preset])
    else:
        if (
            isinstance(path_or_preset, str)
            and not Path(path_or_preset).exists()
            and "." not in Path(path_or_preset).name
        ):
            names = ", ".join(sorted(PRESETS))
            raise CheckpointError(f"{path_or_preset}: neither a file nor a preset ({names})")
        model = load_checkpoint(path_or_preset)
    model = model.to(device)
    return model.eval() if eval_mode else model


def _registry_entry(name: str) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike[str] | None = None) -> Sam:
        if checkpoint is None:
            return build_sam_from_config(PRESETS[name]).eval()
        model = load_checkpoint(checkpoint)
        if model.config.replace(name=name) != PRESETS[name]:
            raise CheckpointError(f"{checkpoint}: is a {model.config.name} model, not {name}")
        return model.eval()

    build.__name__ = build.__qualname__ = f"build_sam_{name}"
    build.__doc__ = f"A {name} model in eval mode, random or loaded from ``checkpoint``."
    return build


build_sam_vit_h = _registry_entry("vit_h")
build_sam_vit_l = _registry_entry("vit_l")
build_sam_vit_b = _registry_entry("vit_b")
build_sam_tiny = _registry_entry("tiny")
build_sam = build_sam_vit_h  # as in the official package


sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "tiny": build_sam_tiny,
}
