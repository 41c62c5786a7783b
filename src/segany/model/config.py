"""Model configurations: the official presets (SAM's ViTs, MobileSAM, SAM-HQ), a tiny one for tests, and
the builder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from segany.model.hq import ImageEncoderViTHQ, MaskDecoderHQ
from segany.model.conv_encoder import ConvImageEncoder
from segany.model.image_encoder import ImageEncoderViT
from segany.model.mask_decoder import MaskDecoder
from segany.model.prompt_encoder import PromptEncoder
from segany.model.sam import Sam
from segany.model.tiny_vit import TinyViT
from segany.model.transformer import TwoWayTransformer


@dataclass(frozen=True)
class SamConfig:
    """Every hyper-parameter that shapes a SAM-family model. The defaults are SAM ViT-B's.

    ``encoder`` picks the image encoder: ``"vit"`` (SAM's, shaped by the ``encoder_*``, ``window_size``
    and ``mlp_ratio`` fields) or ``"tiny_vit"`` (MobileSAM's, shaped by the ``tiny_vit_*`` fields and
    ``mlp_ratio``; its output stride is always 16). ``hq`` adds SAM-HQ's token and feature fusion to the
    decoder.
    """

    image_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    drop_path_rate: float = 0.0
    encoder: str = "vit"
    tiny_vit_dims: tuple[int, ...] = (64, 128, 160, 320)
    tiny_vit_depths: tuple[int, ...] = (2, 2, 6, 2)
    tiny_vit_heads: tuple[int, ...] = (2, 4, 5, 10)
    tiny_vit_windows: tuple[int, ...] = (7, 7, 14, 7)
    tiny_vit_conv_ratio: float = 4.0
    tiny_vit_classes: int = 1000
    hq: bool = False
    # encoder "conv" (model/conv_encoder.py, the small default model's family): these widths and depths;
    # patch_size is then its stride, 16.
    conv_widths: tuple[int, ...] = (32, 64, 128, 256)
    conv_depths: tuple[int, ...] = (1, 2, 2)
    # The text prompt path (SAM paper, section 7.5): the width of the CLIP embeddings it projects into one
    # prompt token (768 for CLIP ViT-L/14); None (every official model): no such path, no extra weights.
    text_embed_dim: int | None = None
    # (predicted IoU, stability) above which the automatic mask generator keeps this model's masks when
    # the caller names none. None (every official model): SAM's 0.88 / 0.95. A model whose IoU head is
    # calibrated otherwise (the small default model) carries its own; it does not shape the network.
    auto_mask_thresholds: tuple[float, float] | None = field(default=None, compare=False)
    name: str = field(default="custom", compare=False)

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // (16 if self.encoder == "tiny_vit" else self.patch_size)

    @property
    def hq_early_dim(self) -> int:
        """Channels of the early encoder features that SAM-HQ fuses."""
        return self.tiny_vit_dims[2] if self.encoder == "tiny_vit" else self.encoder_embed_dim

    @property
    def family(self) -> str:
        """``"SAM"``, ``"MobileSAM"``, ``"SAM-HQ"`` or ``"Light HQ-SAM"`` (TinyViT with the HQ decoder)."""
        if self.encoder == "tiny_vit":
            return "Light HQ-SAM" if self.hq else "MobileSAM"
        return "SAM-HQ" if self.hq else "SAM"

    def replace(self, **changes: object) -> "SamConfig":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "SamConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}  # type: ignore[arg-type]
        return cls(**kwargs)  # type: ignore[arg-type]




PRESETS: dict[str, SamConfig] = {
    "vit_h": SamConfig(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
        name="vit_h",
    ),
    "vit_l": SamConfig(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
        name="vit_l",
    ),
    "vit_b": SamConfig(name="vit_b"),
    # Instant configuration for tests: 256 px input, a 4-block 64-wide encoder, a narrow decoder.
    "tiny": SamConfig(
        image_size=256,
        encoder_embed_dim=64,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        window_size=4,
        prompt_embed_dim=64,
        decoder_mlp_dim=128,
        iou_head_hidden_dim=64,
        name="tiny",
    ),
    # MobileSAM: TinyViT-5M encoder, SAM's prompt encoder and decoder.
    "mobile_sam": SamConfig(encoder="tiny_vit", name="mobile_sam"),
    "sam_hq_vit_b": SamConfig(hq=True, name="sam_hq_vit_b"),
    # The small default model's family: a convolutional encoder (model/conv_encoder.py) at 256 px to
    # SAM's 16 x 16 x 256 grid, SAM's prompt encoder and standard decoder.
    "conv_small": SamConfig(image_size=256, encoder="conv", name="conv_small"),
}
PRESETS["sam_hq_vit_l"] = PRESETS["vit_l"].replace(hq=True, name="sam_hq_vit_l")
PRESETS["sam_hq_vit_h"] = PRESETS["vit_h"].replace(hq=True, name="sam_hq_vit_h")
PRESETS["sam_hq_vit_tiny"] = PRESETS["mobile_sam"].replace(hq=True, name="sam_hq_vit_tiny")


def build_sam(config: SamConfig) -> Sam:
    """A randomly initialised model with the given configuration."""
    grid = config.image_embedding_size
    encoder: nn.Module
    if config.encoder == "conv":
        if config.patch_size != ConvImageEncoder.stride:
            raise ValueError(f"a conv encoder has stride {ConvImageEncoder.stride}; patch_size is {config.patch_size}")
        encoder = ConvImageEncoder(
            config.image_size, tuple(config.conv_widths), tuple(config.conv_depths), config.prompt_embed_dim  # type: ignore[arg-type]
        )
    elif config.encoder == "tiny_vit":
        encoder = TinyViT(
            img_size=config.image_size,
            dims=tuple(config.tiny_vit_dims),
            depths=tuple(config.tiny_vit_depths),
            num_heads=tuple(config.tiny_vit_heads),
            windows=tuple(config.tiny_vit_windows),
            mlp_ratio=config.mlp_ratio,
            conv_expand_ratio=config.tiny_vit_conv_ratio,
            num_classes=config.tiny_vit_classes,
            out_chans=config.prompt_embed_dim,
            drop_path_rate=config.drop_path_rate,
            early_features=config.hq,
        )
    elif config.encoder == "vit":
        encoder = (ImageEncoderViTHQ if config.hq else ImageEncoderViT)(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
            window_size=config.window_size,
            global_attn_indexes=tuple(config.encoder_global_attn_indexes),
            drop_path_rate=config.drop_path_rate,
        )
    else:
        raise ValueError(f"encoder must be 'vit', 'tiny_vit' or 'conv', got {config.encoder!r}")
    prompt_encoder = PromptEncoder(
        embed_dim=config.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(config.image_size, config.image_size),
        mask_in_chans=config.mask_in_chans,
        text_embed_dim=config.text_embed_dim,
    )
    hq_args: dict[str, object] = {"early_dim": config.hq_early_dim} if config.hq else {}
    decoder = (MaskDecoderHQ if config.hq else MaskDecoder)(
        **hq_args,  # type: ignore[arg-type]
        transformer_dim=config.prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.prompt_embed_dim,
            num_heads=config.decoder_num_heads,
            mlp_dim=config.decoder_mlp_dim,
            activation=nn.ReLU,
        ),
        num_multimask_outputs=config.num_multimask_outputs,
        iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    sam = Sam(encoder, prompt_encoder, decoder)  # type: ignore[arg-type]
    sam.config = config
    return sam
