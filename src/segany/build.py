"""Building models: released weights by name, checkpoint files, presets and the packaged default model.

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
from segany.io import hub
from segany.io.checkpoint import load_checkpoint
from segany.model import PRESETS, Sam
from segany.model import build_sam as build_sam_from_config

DEFAULT_WEIGHTS = "segany_default.safetensors"


def default_weights_path() -> Path | None:
    """The packaged default model's weights, or None when this install ships none."""
    path = Path(str(resources.files("segany") / "weights" / DEFAULT_WEIGHTS))
    return path if path.is_file() else None


def load_model(
    path_or_name: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    eval_mode: bool = True,
    pretrained: bool = True,
    download: bool = True,
) -> Sam:
    """Load a SAM-family model.

    Args:
        path_or_name: a checkpoint (official ``sam_vit_*.pth``, MobileSAM's ``mobile_sam.pt``, SAM-HQ's
            ``sam_hq_vit_*.pth``, a Hugging Face ``model.safetensors`` or model folder, a segany ``.pth`` or
            ``.safetensors``; the architecture is read off the weights), the name of released weights
            (``vit_b``, ``vit_l``, ``vit_h``, ``mobile_sam``, ``sam_hq_vit_b``, ``sam_hq_vit_l``,
            ``sam_hq_vit_h``, ``sam_hq_vit_tiny``: found in segany's or torch hub's cache, else downloaded,
            see :mod:`segany.io.hub`), ``tiny`` (random weights, for tests), or None for the default model
            shipped with segany.
        device: where to put the model.
        eval_mode: put the model in eval mode (dropout and drop path off).
        pretrained: with a name, False gives that architecture with random weights (nothing is read).
        download: with a name, False refuses to download (the file must be cached already).
    """
    name = path_or_name if isinstance(path_or_name, str) else None
    if path_or_name is None:
        path = default_weights_path()
        if path is None:
            raise CheckpointError(
                "this install ships no default weights; pass a checkpoint such as sam_vit_b_01ec64.pth"
            )
        model = load_checkpoint(path)
    elif name is not None and name in PRESETS and (not pretrained or name not in hub.WEIGHTS):
        model = build_sam_from_config(PRESETS[name])
    elif name is not None and name in hub.WEIGHTS and not Path(name).exists():
        path = hub.resolve(name, download=download)
        model = load_checkpoint(path)
        if model.config.replace(name=name) != PRESETS[name]:
            raise CheckpointError(f"{path}: is a {model.config.family} {model.config.name} model, not {name}")
        model.config = model.config.replace(name=name)
    else:
        if name is not None and not Path(name).exists() and "." not in Path(name).name:
            raise CheckpointError(
                f"{name}: neither a file nor a known checkpoint name "
                f"({', '.join(hub.WEIGHTS)}; tiny for random weights)"
            )
        model = load_checkpoint(path_or_name)
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
build_mobile_sam = _registry_entry("mobile_sam")
build_sam = build_sam_vit_h  # as in the official package

sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "tiny": build_sam_tiny,
    "vit_t": build_mobile_sam,  # MobileSAM's own name for it
    "mobile_sam": build_mobile_sam,
}
