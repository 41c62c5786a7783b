"""Helpers shared by the annotation server tests (a module of its own: two conftest.py files exist)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """Random RGB PNGs of the given (height, width) sizes, plus a bright square so masks are not empty."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        arr = (rng.random((h, w, 3)) * 80).astype(np.uint8)
        arr[h // 4: h // 2, w // 4: w // 2] = 230
        path = folder / f"img{i:03d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths
