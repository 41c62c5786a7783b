"""Regenerate tests/data/images from scikit-image's sample pictures (run by hand; not a test).

Every source picture is CC0 or public domain (see tests/data/README.md). Give the folder that holds
scikit-image's ``data/`` files, e.g. from ``pip download scikit-image --no-deps`` unpacked:

    python tests/data/make_test_images.py /tmp/skimg/skimage/data
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent / "images"


def main(src: Path) -> None:
    OUT.mkdir(exist_ok=True)
    Image.open(src / "chelsea.png").convert("RGB").save(OUT / "chelsea.jpg", quality=90)  # 451x300
    coffee = Image.open(src / "coffee.png").convert("RGB").resize((480, 320), Image.LANCZOS)
    coffee.save(OUT / "coffee.jpg", quality=90)
    half = np.asarray(coffee.resize((240, 160), Image.LANCZOS))
    alpha = np.full(half.shape[:2], 255, np.uint8)
    alpha[:, :40] = 0  # a transparent strip: readers must drop alpha, not composite it
    Image.fromarray(np.dstack([half, alpha]), "RGBA").save(OUT / "coffee_rgba.png")
    Image.open(src / "camera.png").convert("L").resize((384, 384), Image.LANCZOS).save(
        OUT / "grey_camera.jpg", quality=90
    )
    coins = np.asarray(Image.open(src / "coins.png").convert("L"))[:256, :320]
    Image.fromarray(coins).save(OUT / "coins.png")
    # 12 of 16 bits used, offset so that no value maps to an 8-bit one by plain truncation.
    Image.fromarray((coins.astype(np.uint16) * 16 + 7).astype(np.uint16)).save(OUT / "coins_16bit.png")
    shutil.copyfile(src / "rocket.jpg", OUT / "rocket.jpg")  # 640x427, bytes unchanged


if __name__ == "__main__":
    main(Path(sys.argv[1]))
