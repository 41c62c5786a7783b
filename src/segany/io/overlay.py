"""Pictures of masks over an image, each mask in its own colour (for ``segany auto --overlay``,
``segany segment --overlay`` and evaluation reports)."""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from segany.errors import ImageError
from segany.io.image import to_rgb_uint8

__all__ = ["distinct_colors", "overlay_masks", "png_bytes"]

_GOLDEN = 0.618033988749895


def distinct_colors(n: int, seed: float = 0.0) -> np.ndarray:
    """``(n, 3)`` uint8 RGB colours that stay far apart for any ``n``: hues step by the golden ratio
    (each new hue falls in the largest gap left), with alternating brightness."""
    colors = np.empty((n, 3), dtype=np.uint8)
    for i in range(n):
        hue = (seed + i * _GOLDEN) % 1.0
        value = 1.0 if i % 2 == 0 else 0.8
        colors[i] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, value)]
    return colors


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay_masks(
    image_rgb: np.ndarray,
    masks: Sequence[Any] | np.ndarray,
    alpha: float = 0.5,
    outline: bool = True,
    colors: np.ndarray | None = None,
) -> np.ndarray:
    """Blend masks over an image.

    Larger masks are drawn first so that smaller ones stay visible on top of them; with ``outline``
    each mask's border is drawn in its colour at full strength.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 (greyscale, RGBA and other depths are converted).
        masks: ``(N, H, W)`` bool array or tensor, or a list of ``(H, W)`` masks.
        alpha: opacity of the mask colour inside each mask.
        outline: draw mask borders.
        colors: ``(N, 3)`` uint8 colours (default :func:`distinct_colors`).
    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    image = to_rgb_uint8(np.asarray(image_rgb))
    h, w = image.shape[:2]
    stack = [np.asarray(m.detach().cpu() if hasattr(m, "detach") else m) for m in masks]
    for i, m in enumerate(stack):
        if m.shape != (h, w):
            raise ImageError(f"mask {i} has shape {m.shape}, the image is {h}x{w}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    palette = distinct_colors(len(stack)) if colors is None else np.asarray(colors, dtype=np.uint8)
    if len(palette) < len(stack):
        raise ValueError(f"{len(stack)} masks but only {len(palette)} colours")
    out = image.astype(np.float32)
    bools = [m.astype(bool, copy=False) for m in stack]
    for i in sorted(range(len(bools)), key=lambda k: -int(bools[k].sum())):
        m = bools[i]
        color = palette[i].astype(np.float32)
        out[m] = (1.0 - alpha) * out[m] + alpha * color
        if outline:
            out[_boundary(m)] = color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an ``(H, W)`` or ``(H, W, 3)`` uint8 array (bool: 0/255) as PNG bytes."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()
