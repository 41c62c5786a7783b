"""segany: Segment Anything, faithful to the official checkpoints, faster, trainable and scalable.

Typical use::

    import segany
    model = segany.load_model("sam_vit_b_01ec64.pth")
    predictor = segany.SamPredictor(model)
    predictor.set_image("photo.jpg")
    masks, scores, logits = predictor.predict(point_coords=[[500, 375]], point_labels=[1])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Lazy attributes keep ``import segany`` (and so ``segany --help``) free of torch start-up cost.
_LAZY = {
    "load_model": "segany.build",
    "sam_model_registry": "segany.build",
    "build_sam": "segany.build",
    "build_sam_vit_h": "segany.build",
    "build_sam_vit_l": "segany.build",
    "build_sam_vit_b": "segany.build",
    "SamPredictor": "segany.inference.predictor",
    "ImageEmbedding": "segany.inference.predictor",
    "SamAutomaticMaskGenerator": "segany.inference.automatic",
    "Sam": "segany.model",
    "SamConfig": "segany.model",
    "build_sam_from_config": "segany.build",
    "PRESETS": "segany.model",
    "load_checkpoint": "segany.io.checkpoint",
    "save_checkpoint": "segany.io.checkpoint",
    "read_image": "segany.io.image",
}

__all__ = [
    "__version__",
    "load_model",
    "sam_model_registry",
    "build_sam",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_b",
    "SamPredictor",
    "ImageEmbedding",
    "SamAutomaticMaskGenerator",
    "Sam",
    "SamConfig",
    "build_sam_from_config",
    "PRESETS",
    "load_checkpoint",
    "save_checkpoint",
    "read_image",
]  # spelled out for static tools; tests/test_dropin.py checks it against _LAZY

if TYPE_CHECKING:
    from segany.build import (
        build_sam,
        build_sam_from_config,
        build_sam_vit_b,
        build_sam_vit_h,
        build_sam_vit_l,
        load_model,
        sam_model_registry,
    )
    from segany.inference.predictor import ImageEmbedding, SamPredictor
    from segany.io.checkpoint import load_checkpoint, save_checkpoint
    from segany.io.image import read_image
    from segany.inference.automatic import SamAutomaticMaskGenerator
    from segany.model import PRESETS, Sam, SamConfig


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'segany' has no attribute {name!r}")
