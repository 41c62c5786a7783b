"""Object crops for CLIP (SAM paper, Appendix D.5): the mask's box enlarged, made square, resized.

Shared by training (the crop embeddings that stand in for text) and anything else that embeds an object.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["mask_box", "object_crop"]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """bool ``(H, W)`` -> the inclusive pixel box ``(x0, y0, x1, y1)``, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def object_crop(
    image: np.ndarray, mask: np.ndarray, scale: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A square crop around ``mask``'s box enlarged ``scale`` times, resized to ``size``.

    Args:
        image: uint8 ``(H, W, 3)``; mask: bool ``(H, W)``, not empty.
        scale: the box's long side is multiplied by this (the paper draws it from [1, 2]).
        size: the output side (CLIP's input size).
    Returns:
        crop uint8 ``(size, size, 3)`` (zeros where the square leaves the image) and the mask in the
        crop, bool ``(size, size)``.
    """
    box = mask_box(mask)
    if box is None:
        raise ValueError("object_crop: the mask is empty")
    x0, y0, x1, y1 = box
    side = max(x1 - x0 + 1, y1 - y0 + 1) * float(scale)
    cx, cy = (x0 + x1 + 1) / 2.0, (y0 + y1 + 1) / 2.0
    s = size / side
    # Pixel (cx, cy) goes to the crop's centre; one image pixel becomes s crop pixels.
    m = np.array([[s, 0.0, size / 2.0 - cx * s], [0.0, s, size / 2.0 - cy * s]], dtype=np.float64)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    crop = cv2.warpAffine(image, m, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    keep = cv2.warpAffine(mask.astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0) >= 0.5
    return crop, keep
