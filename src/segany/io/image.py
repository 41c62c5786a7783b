"""Reading images into the one form the model takes: ``(H, W, 3)`` uint8 RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segany.errors import ImageError

# Large SA-1B-style photos are legitimate input; keep Pillow's bomb check but well above them.
Image.MAX_IMAGE_PIXELS = 400_000_000


def _stretch_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map a deeper-than-8-bit or float array to 0..255 by its own range (microscopy and medical
    16-bit images often use a fraction of the full range, so a fixed divisor would leave them black)."""
    a = array.astype(np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(array.shape, np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(array.shape, np.uint8)
    a = np.nan_to_num((a - lo) / (hi - lo), nan=0.0)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Greyscale ``(H, W)`` / ``(H, W, 1)``, RGB, RGBA ``(H, W, 4)`` (alpha dropped), uint8, 16-bit or
    float -> ``(H, W, 3)`` uint8 RGB. Raises :class:`ImageError` for anything else."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ImageError(f"expected an HxW, HxWx3 or HxWx4 image, got an array of shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"image is empty (shape {image.shape})")
    image = image[:, :, :3]
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.integer) and image.min() >= 0 and image.max() <= 255:
            image = image.astype(np.uint8)
        else:
            image = _stretch_to_uint8(image)
    return np.ascontiguousarray(image)


def read_image(path: str | os.PathLike[str], exif_transpose: bool = True) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    Greyscale, palette, RGBA, CMYK and 16-bit files are converted; EXIF orientation is applied by
    default (as OpenCV's ``imread`` does), so the pixels are the way a viewer shows them.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a folder, not an image")
    try:
        with Image.open(p) as im:
            im.load()
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            # Deep greyscale stays deep so to_rgb_uint8 can stretch it; everything else goes via RGB.
            deep = ("I;16", "I;16B", "I;16L", "I", "F")
            array = np.asarray(im) if im.mode in deep + ("RGB", "L") else np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{p}: cannot read image ({exc})") from None
    return to_rgb_uint8(array)
