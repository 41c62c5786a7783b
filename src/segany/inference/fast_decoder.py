"""The fast decoder's modules under their earlier import path (used by ``segany.train`` and
``segany.export``); they live in :mod:`segany.inference.decoders.fast`."""

from segany.inference.decoders.fast import (
    DecoderImageCache,
    FastMaskDecoder,
    ImageCache,
    embed_points,
    is_hq,
    select_hq,
    supports,
    supports_fast,
)

__all__ = [
    "DecoderImageCache",
    "FastMaskDecoder",
    "ImageCache",
    "embed_points",
    "is_hq",
    "select_hq",
    "supports",
    "supports_fast",
]
