"""SAM as plain ``nn.Module``s: no numpy, no file I/O, and ``forward`` keeps gradients."""

from segany.model.config import PRESETS, SamConfig, build_sam
from segany.model.image_encoder import ImageEncoderViT
from segany.model.mask_decoder import MaskDecoder
from segany.model.prompt_encoder import PromptEncoder
from segany.model.sam import Sam
from segany.model.transformer import TwoWayTransformer

__all__ = [
    "PRESETS",
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "SamConfig",
    "TwoWayTransformer",
    "build_sam",
]
