"""Helpers for tests that compare segany with the official ``segment_anything`` package."""

from __future__ import annotations

import math

import torch
from torch import nn

from segany.model import Sam, SamConfig, build_sam


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and buffer random values at a scale that keeps activations sane.

    Default initialisation leaves many tensors at exactly 0 or 1 (biases, norms, relative-position
    tables), which would hide bugs in the code paths that use them.
    """
    g = torch.Generator().manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point() or name.endswith(("pixel_mean", "pixel_std")):
            continue
        noise = torch.randn(t.shape, generator=g)
        leaf = name.rsplit(".", 1)[-1]
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        module = model.get_submodule(module_name) if module_name else model
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and leaf == "running_var":
            value = 1.0 + 0.2 * noise.abs()  # variances must stay positive
        elif (
            isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm))
            or type(module).__name__ == "LayerNorm2d"
        ):
            value = (1.0 + 0.2 * noise) if leaf == "weight" else 0.2 * noise
        elif t.ndim >= 2 and leaf == "weight" and not isinstance(module, nn.Embedding):
            fan_in = t[0].numel() if not isinstance(module, nn.ConvTranspose2d) else t.shape[0]
            value = noise / math.sqrt(fan_in)
        elif "gaussian" in name:
            value = noise
        else:  # biases, embeddings, position tables
            value = 0.2 * noise
        t.copy_(value)
    return model


def random_tiny(seed: int = 0, config: SamConfig | None = None) -> Sam:
    from segany.model import PRESETS

    return randomize_(build_sam(config or PRESETS["tiny"]), seed).eval()


def official_model(config: SamConfig):
    """The official package's model with our configuration (same parameter names)."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam as OSam, TwoWayTransformer

    grid = config.image_size // config.patch_size
    return OSam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=config.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(config.encoder_global_attn_indexes),
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def official_twin(model: Sam):
    """An official model holding exactly ``model``'s weights."""
    ref = official_model(model.config)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref
