"""Optimiser and schedule: AdamW with layer-wise lr decay, linear warm-up then step decay."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segany.train.config import OptimSection

# Parameters without weight decay: biases, norms, position embeddings and learned prompt vectors.
_NO_DECAY_NAMES = (
    "pos_embed",
    "rel_pos",
    "point_embeddings",
    "not_a_point_embed",
    "no_mask_embed",
    "iou_token",
    "mask_tokens",
)


def layer_id(name: str, depth: int, stage_depths: Sequence[int] = ()) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 = patch/position embedding, ``i + 1`` =
    encoder block ``i``, ``depth + 1`` = everything after the blocks (neck, prompt encoder, decoder).

    ``stage_depths``: a TinyViT encoder's blocks per stage (MobileSAM; ``depth`` is their sum). Its blocks
    are numbered across stages (``layers.s.blocks.j`` is block ``sum(stage_depths[:s]) + j``); as in
    TinyViT's own fine-tuning recipe, the patch embedding shares block 0's rate and each stage's
    downsampling its last block's."""
    if name.startswith("image_encoder."):
        rest = name[len("image_encoder.") :]
        if stage_depths:
            if rest.startswith("patch_embed."):
                return 1
            if rest.startswith("layers."):
                parts = rest.split(".")
                stage = int(parts[1])
                before = sum(stage_depths[:stage])
                if parts[2] == "blocks":
                    return before + int(parts[3]) + 1
                return before + stage_depths[stage]  # the downsampling after the stage's last block
            return depth + 1
        if rest.startswith(("patch_embed", "pos_embed")):
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
    return depth + 1


def decay_depths(model: nn.Module) -> tuple[int, tuple[int, ...]]:
    """The encoder's ``depth`` and ``stage_depths`` for :func:`layer_id`: SAM's ViT has ``blocks``,
    TinyViT ``layers`` (stages) of ``blocks``; another encoder has none (no layer decay inside it)."""
    encoder = getattr(model, "image_encoder", None)
    from segany.model.tiny_vit import TinyViT

    if isinstance(encoder, TinyViT):
        stages = tuple(len(stage.blocks) for stage in encoder.layers)  # type: ignore[union-attr,arg-type]
        return sum(stages), stages
    return len(getattr(encoder, "blocks", ())), ()


def param_groups(
    model: nn.Module, optim: OptimSection, depth: int, stage_depths: Sequence[int] = ()
) -> list[dict]:
    """AdamW groups: lr scaled by ``layer_decay ** (depth + 1 - layer_id)``; no decay on 1-d tensors
    and embeddings. Frozen parameters are left out. ``depth``, ``stage_depths``: see :func:`decay_depths`."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or any(k in name for k in _NO_DECAY_NAMES)
        lid = layer_id(name, depth, stage_depths)
        key = (lid, no_decay)
        if key not in groups:
            scale = optim.layer_decay ** (depth + 1 - lid)
            groups[key] = {
                "params": [],
                "names": [],
                "lr_scale": scale,
                "lr": optim.lr * scale,
                "weight_decay": 0.0 if no_decay else optim.weight_decay,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    model: nn.Module, optim: OptimSection, depth: int, stage_depths: Sequence[int] = ()
) -> torch.optim.AdamW:
    groups = param_groups(model, optim, depth, stage_depths)
    for g in groups:
        del g["names"]  # the optimiser's state dict need not carry them
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)


def lr_factor(step: int, optim: OptimSection) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up over ``warmup_steps``, then
    ``decay_factor`` once per decay step passed."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    return optim.decay_factor ** sum(step >= s for s in optim.decay_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSection) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over every group; each group's ``lr_scale`` (layer decay) is kept in its initial lr."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim))
