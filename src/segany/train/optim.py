"""Optimiser and schedule: AdamW with layer-wise lr decay, linear warm-up then step decay."""

from __future__ import annotations

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


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 = patch/position embedding, ``i + 1`` =
    encoder block ``i``, ``depth + 1`` = everything after the blocks (neck, prompt encoder, decoder)."""
    if name.startswith("image_encoder."):
        rest = name[len("image_encoder.") :]
        if rest.startswith(("patch_embed", "pos_embed")):
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
    return depth + 1


def param_groups(model: nn.Module, optim: OptimSection, depth: int) -> list[dict]:
    """AdamW groups: lr scaled by ``layer_decay ** (depth + 1 - layer_id)``; no decay on 1-d tensors
    and embeddings. Frozen parameters are left out."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or any(k in name for k in _NO_DECAY_NAMES)
        lid = layer_id(name, depth)
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


def build_optimizer(model: nn.Module, optim: OptimSection, depth: int) -> torch.optim.AdamW:
    groups = param_groups(model, optim, depth)
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
