"""Reading images into the one form the model takes: ``(H, W, 3)`` uint8 RGB."""

from __future__ import annotations

import os
import warnings
from struct import error as struct_error
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segany.errors import ImageError

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "MAX_PIXELS_ENV", "max_image_pixels", "read_image", "to_rgb_uint8"]

#: Images with more pixels than this are refused before they are decoded (a 100 KB PNG can claim
#: 27000x27000 pixels, and decoding costs about 11 bytes per pixel). 300 Mpx holds a 16384x16384 image
#: and every photo and SA-1B image; raise it with the environment variable below.
DEFAULT_MAX_IMAGE_PIXELS = 300_000_000
#: ``SEGANY_MAX_IMAGE_PIXELS=1000000000`` raises the cap (``0`` removes it).
MAX_PIXELS_ENV = "SEGANY_MAX_IMAGE_PIXELS"

# read_image checks the size itself, before decoding, against a cap a user can change per process.
# Pillow's global check (a two-line warning up to twice its cap, an error only above) would fire first
# with a different limit, so it is turned off, as this module did before by raising it to 400 Mpx.
Image.MAX_IMAGE_PIXELS = None


def max_image_pixels() -> int | None:
    """The pixel cap in force: ``$SEGANY_MAX_IMAGE_PIXELS`` if set (``0``: no cap), else
    :data:`DEFAULT_MAX_IMAGE_PIXELS`. Raises :class:`ImageError` for a malformed value."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(float(raw)) if raw.lower() not in ("none", "inf") else 0
    except ValueError:
        raise ImageError(f"{MAX_PIXELS_ENV}={raw!r}: expected a number of pixels (0 for no cap)") from None
    return None if value <= 0 else value


def _check_size(p: Path, width: int, height: int, cap: int | None) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{p}: image is empty ({width}x{height} pixels)")
    if cap is not None and width * height > cap:
        raise ImageError(
            f"{p}: image too large ({width}x{height} = {width * height / 1e6:.0f} Mpx, the cap is "
            f"{cap / 1e6:.0f} Mpx; set {MAX_PIXELS_ENV} to raise it)"
        )


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
    # Halved so that hi - lo cannot overflow for values near the float64 limits.
    with np.errstate(over="ignore", invalid="ignore"):
        a = np.nan_to_num((a / 2 - lo / 2) / (hi / 2 - lo / 2), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Greyscale ``(H, W)`` / ``(H, W, 1)``, RGB, RGBA ``(H, W, 4)`` (alpha dropped), uint8, 16-bit or
    float -> ``(H, W, 3)`` uint8 RGB. Raises :class:`ImageError` for anything else (other shapes,
    empty images, strings, dates, objects that are not numbers)."""
    try:
        image = np.asarray(image)
        if image.dtype == object:  # e.g. nested lists of mixed ints and floats: numbers or nothing
            if not all(isinstance(v, (int, float, np.number)) for v in image.flat):
                raise TypeError("it holds values that are not numbers (None, strings, ...)")
            image = image.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"expected an array of numbers, got {type(exc).__name__}: {exc}") from None
    if image.dtype.kind not in "biufc":
        raise ImageError(f"expected an image of numbers, got an array of dtype {image.dtype}")
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


def _exif_transposed(im: Image.Image) -> Image.Image:
    """``im`` turned the way its EXIF orientation says; unreadable EXIF data is ignored (as viewers do)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - Pillow raises many kinds for malformed EXIF blocks
        return im


def read_image(
    path: str | os.PathLike[str], exif_transpose: bool = True, max_pixels: int | None | str = "env"
) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    Greyscale, palette, RGBA, CMYK, 16-bit and float files are converted (the first frame of an
    animation or a multi-page TIFF); EXIF orientation is applied by default (as OpenCV's ``imread``
    does), so the pixels are the way a viewer shows them.

    The size in the file's header is checked against ``max_pixels`` before any pixel is decoded
    (default: :func:`max_image_pixels`, i.e. ``$SEGANY_MAX_IMAGE_PIXELS`` or 300 Mpx; ``None``: no cap).

    Raises:
        ImageError: missing, a folder, empty, not an image, truncated or corrupt, too large, or too
            large for the memory available; the message names the file.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a folder, not an image")
    cap = max_image_pixels() if max_pixels == "env" else max_pixels
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check is off (see above); any warning it still has is an error here.
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF data": handled below
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                width, height = im.size
                _check_size(p, width, height, cap if isinstance(cap, int) else None)
                im.load()
                if exif_transpose:
                    im = _exif_transposed(im)
                # Deep greyscale stays deep so to_rgb_uint8 can stretch it; everything else goes via RGB.
                deep = ("I;16", "I;16B", "I;16L", "I", "F")
                array = np.asarray(im) if im.mode in deep + ("RGB", "L") else np.asarray(im.convert("RGB"))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{p}: image too large ({exc}); set {MAX_PIXELS_ENV} to raise the cap") from None
    except MemoryError:
        raise ImageError(f"{p}: not enough memory to decode this image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError,
            EOFError, struct_error) as exc:
        # Corrupt files reach many corners of Pillow's decoders; all mean "cannot read this file".
        raise ImageError(f"{p}: cannot read image ({type(exc).__name__ if not str(exc) else exc})") from None
    return to_rgb_uint8(array)
