"""Image files: finding them in the project folder, checking uploads, and resolving stored paths.

The server never opens a path that a client names. Images are found by scanning the project folder
(symlinks resolved; anything that resolves outside the folder is skipped) or uploaded (content checked
with Pillow, stored under a name made from the content hash). Every stored path is resolved again
before it is served and must still lie inside the folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from segany.annotate.errors import ApiError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Formats accepted from uploads, by what Pillow finds in the bytes (never by the file name).
UPLOAD_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "TIFF": "image/tiff", "WEBP": "image/webp"}
DATA_DIR = ".segany"


@dataclass(frozen=True)
class ImageFacts:
    sha256: str
    width: int  # as displayed: EXIF orientation applied
    height: int
    format: str


def inside(root: Path, path: Path) -> Path | None:
    """``path`` resolved (symlinks followed), or None when it does not exist or lies outside ``root``."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return resolved if resolved.is_relative_to(root.resolve()) and resolved.is_file() else None


def image_facts(data: bytes, max_pixels: int) -> ImageFacts:
    """Check that ``data`` is a raster image of a known format within ``max_pixels``; ApiError 400 otherwise.

    Only the header is parsed to get the size (so a decompression bomb is refused before it is
    decoded); then the image is fully decoded once to catch truncated or corrupt files.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as im:
                fmt = im.format or ""
                if fmt not in UPLOAD_FORMATS:
                    raise ApiError(400, f"unsupported image format {fmt or 'unknown'}")
                w, h = im.size
                if w < 1 or h < 1 or w * h > max_pixels:
                    raise ApiError(400, f"image of {w}x{h} pixels is over the limit of {max_pixels} pixels")
                orientation = im.getexif().get(0x0112, 1)
                im.load()
    except ApiError:
        raise
    except (UnidentifiedImageError, PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise ApiError(400, "not an image (or an oversized one)") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise ApiError(400, "corrupt or truncated image") from None
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees when shown
        w, h = h, w
    return ImageFacts(hashlib.sha256(data).hexdigest(), int(w), int(h), fmt)


def file_facts(path: Path, max_pixels: int) -> ImageFacts:
    return image_facts(path.read_bytes(), max_pixels)


def content_type(path: Path) -> str:
    """The MIME type of an image file, from its bytes."""
    try:
        with PILImage.open(path) as im:
            return MIME.get(im.format or "", "application/octet-stream")
    except (OSError, UnidentifiedImageError):
        return "application/octet-stream"


def scan_folder(root: Path) -> list[tuple[str, Path]]:
    """Image files under ``root`` as (relative path, resolved path), sorted; hidden folders (including
    the ``.segany`` data folder) and anything resolving outside ``root`` are skipped."""
    found: list[tuple[str, Path]] = []
    root_resolved = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root_resolved):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(dirpath) / name
            resolved = inside(root_resolved, path)
            if resolved is None:
                continue
            found.append((path.relative_to(root_resolved).as_posix(), resolved))
    return found
