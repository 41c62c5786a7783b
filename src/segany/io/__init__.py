"""Reading and writing segmentation data: COCO RLE masks, SA-1B files, COCO JSON, images, checkpoints.

:class:`FormatError` lives here so that every module of the package can raise it without importing
a sibling module.
"""

from __future__ import annotations

from segany.errors import SeganyError


class FormatError(SeganyError, ValueError):
    """A data file (COCO JSON, SA-1B JSON, RLE, dataset folder) is missing, malformed or inconsistent."""


__all__ = ["FormatError"]
