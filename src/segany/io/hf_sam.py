"""Hugging Face transformers' SAM layout (``facebook/sam-vit-*``): key conversion both ways, and model
folders (``config.json`` + ``model.safetensors``) read and written without importing transformers.

Only names differ: transformers' ``SamModel`` holds the same tensors as the official checkpoints, except
that the positional-encoding matrix is stored twice (``shared_image_embedding`` and the prompt
encoder's tied copy) and the MLPs name their first and last layers ``proj_in``/``proj_out``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

HF_PREFIXES = ("vision_encoder.", "shared_image_embedding.")
_PE = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"

# (official, transformers) fragments of dot-separated paths, the longest source fragment first.
_RENAMES = [
    ("image_encoder.", "vision_encoder."),
    ("patch_embed.proj.", "patch_embed.projection."),
    ("image_encoder.blocks.", "vision_encoder.layers."),
    (".norm1.", ".layer_norm1."),
    (".norm2.", ".layer_norm2."),
    (".norm3.", ".layer_norm3."),
    (".norm4.", ".layer_norm4."),
    (".norm_final_attn.", ".layer_norm_final_attn."),
    ("neck.0.", "neck.conv1."),
    ("neck.1.", "neck.layer_norm1."),
    ("neck.2.", "neck.conv2."),
    ("neck.3.", "neck.layer_norm2."),
    ("mask_downscaling.0.", "mask_embed.conv1."),
    ("mask_downscaling.1.", "mask_embed.layer_norm1."),
    ("mask_downscaling.3.", "mask_embed.conv2."),
    ("mask_downscaling.4.", "mask_embed.layer_norm2."),
    ("mask_downscaling.6.", "mask_embed.conv3."),
    ("point_embeddings.", "point_embed."),
    ("output_upscaling.0.", "upscale_conv1."),
    ("output_upscaling.1.", "upscale_layer_norm."),
    ("output_upscaling.3.", "upscale_conv2."),
]
_MLPS = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(.+)$")


def is_hf_state(state: dict[str, Any]) -> bool:
    return any(k.startswith(HF_PREFIXES) for k in state)


def _mlp_depths(keys: Any, official: bool) -> dict[str, int]:
    """Number of linear layers of each decoder MLP, by its prefix."""
    depths: dict[str, int] = {}
    for k in keys:
        m = _MLPS.match(k)
        if not m:
            continue
        prefix, rest = m.groups()
        if official:
            n = int(rest.split(".")[1]) + 1 if rest.startswith("layers.") else 0
        else:  # proj_in + layers.* + proj_out
            n = int(rest.split(".")[1]) + 3 if rest.startswith("layers.") else 2
        depths[prefix] = max(depths.get(prefix, 0), n)
    return depths


def _mlp_key(key: str, depths: dict[str, int], to_hf: bool) -> str:
    m = _MLPS.match(key)
    if not m:
        return key
    prefix, rest = m.groups()
    n = depths[prefix]
    parts = rest.split(".")
    if to_hf:
        i = int(parts[1])
        name = "proj_in" if i == 0 else "proj_out" if i == n - 1 else f"layers.{i - 1}"
        return f"{prefix}.{name}.{parts[-1]}"
    if parts[0] == "proj_in":
        i = 0
    elif parts[0] == "proj_out":
        i = n - 1
    else:
        i = int(parts[1]) + 1
    return f"{prefix}.layers.{i}.{parts[-1]}"


def _rename(key: str, to_hf: bool) -> str:
    padded = "." + key
    pairs = [(o, h) if to_hf else (h, o) for o, h in _RENAMES]
    for src, dst in sorted(pairs, key=lambda p: -len(p[0])):  # the most specific first
        if not src.startswith("."):
            src, dst = "." + src, "." + dst
        padded = padded.replace(src, dst)
    return padded[1:]


def from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``SamModel`` keys -> official keys (tensors shared, not copied)."""
    depths = _mlp_depths(state, official=False)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k == "shared_image_embedding.positional_embedding":
            out[_PE] = v
        elif k == "prompt_encoder.shared_embedding.positional_embedding":
            continue  # transformers' tied copy of the same matrix
        else:
            out[_mlp_key(_rename(k, to_hf=False), depths, to_hf=False)] = v
    return out


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official keys -> transformers ``SamModel`` keys."""
    depths = _mlp_depths(state, official=True)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k == _PE:
            out["shared_image_embedding.positional_embedding"] = v
            out["prompt_encoder.shared_embedding.positional_embedding"] = v
        else:
            out[_rename(_mlp_key(k, depths, to_hf=True), to_hf=True)] = v
    return out


def hf_config(config: Any) -> dict[str, Any]:
    """A transformers ``SamConfig`` dict (``config.json``) for a segany :class:`SamConfig` (ViT family)."""
    c = config
    grid = c.image_size // c.patch_size
    return {
        "architectures": ["SamModel"],
        "model_type": "sam",
        "vision_config": {
            "hidden_size": c.encoder_embed_dim,
            "output_channels": c.prompt_embed_dim,
            "num_hidden_layers": c.encoder_depth,
            "num_attention_heads": c.encoder_num_heads,
            "image_size": c.image_size,
            "patch_size": c.patch_size,
            "window_size": c.window_size,
            "global_attn_indexes": list(c.encoder_global_attn_indexes),
            "mlp_dim": int(c.encoder_embed_dim * c.mlp_ratio),
            "num_pos_feats": c.prompt_embed_dim // 2,
            "layer_norm_eps": 1e-6,
            "model_type": "sam_vision_model",
        },
        "prompt_encoder_config": {
            "hidden_size": c.prompt_embed_dim,
            "image_size": c.image_size,
            "patch_size": c.patch_size,
            "image_embedding_size": grid,
            "mask_input_channels": c.mask_in_chans,
        },
        "mask_decoder_config": {
            "hidden_size": c.prompt_embed_dim,
            "num_hidden_layers": c.decoder_depth,
            "num_attention_heads": c.decoder_num_heads,
            "mlp_dim": c.decoder_mlp_dim,
            "num_multimask_outputs": c.num_multimask_outputs,
            "iou_head_depth": c.iou_head_depth,
            "iou_head_hidden_dim": c.iou_head_hidden_dim,
        },
    }


def config_overrides(folder: Path) -> dict[str, Any]:
    """What a model folder's ``config.json`` says that tensor shapes cannot (decoder heads, input size)."""
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, Any] = {}
    heads = data.get("mask_decoder_config", {}).get("num_attention_heads")
    if isinstance(heads, int) and heads > 0:
        out["decoder_num_heads"] = heads
    return out


def weight_files(folder: Path) -> list[Path]:
    """A model folder's weight file (safetensors preferred), or nothing."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    return []
