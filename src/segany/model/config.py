"""Model configurations: the official presets, a tiny one for tests, and the builder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from segany.model.conv_encoder import ConvImageEncoder
from segany.model.image_encoder import ImageEncoderViT
from segany.model.mask_decoder import MaskDecoder
from segany.model.prompt_encoder import PromptEncoder
from segany.model.sam import Sam
from segany.model.transformer import TwoWayTransformer


@dataclass(frozen=True)
class SamConfig:
    """Every hyper-parameter that shapes a SAM model. The defaults are ViT-B's."""

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
    # "vit" (SAM's encoder, the encoder_* fields above) or "conv" (model/conv_encoder.py: the conv_*
    # fields; patch_size is then its stride, 16).
    image_encoder_type: str = "vit"
    conv_widths: tuple[int, ...] = (32, 64, 128, 256)
    conv_depths: tuple[int, ...] = (1, 2, 2)
    name: str = field(default="custom", compare=False)

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def replace(self, **changes: object) -> "SamConfig":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        for key in _TUPLE_FIELDS:
            d[key] = list(getattr(self, key))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "SamConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        for key in _TUPLE_FIELDS:
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])  # type: ignore[arg-type]
        return cls(**kwargs)  # type: ignore[arg-type]


_TUPLE_FIELDS = ("encoder_global_attn_indexes", "conv_widths", "conv_depths")


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
    # The small default model's family: a convolutional encoder (model/conv_encoder.py) at 256 px to
    # SAM's 16 x 16 x 256 grid, SAM's prompt encoder and standard decoder.
    "conv_small": SamConfig(image_size=256, image_encoder_type="conv", name="conv_small"),
}


def build_sam(config: SamConfig) -> Sam:
    """A randomly initialised model with the given configuration."""
    grid = config.image_embedding_size
    encoder: ImageEncoderViT | ConvImageEncoder
    if config.image_encoder_type == "conv":
        if config.patch_size != ConvImageEncoder.stride:
            raise ValueError(f"a conv encoder has stride {ConvImageEncoder.stride}; patch_size is {config.patch_size}")
        encoder = ConvImageEncoder(
            config.image_size, tuple(config.conv_widths), tuple(config.conv_depths), config.prompt_embed_dim  # type: ignore[arg-type]
        )
    elif config.image_encoder_type != "vit":
        raise ValueError(f"image_encoder_type must be 'vit' or 'conv', not {config.image_encoder_type!r}")
    else:
        encoder = ImageEncoderViT(
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
    prompt_encoder = PromptEncoder(
        embed_dim=config.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(config.image_size, config.image_size),
        mask_in_chans=config.mask_in_chans,
    )
    decoder = MaskDecoder(
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
    sam = Sam(encoder, prompt_encoder, decoder)
    sam.config = config
    return sam
