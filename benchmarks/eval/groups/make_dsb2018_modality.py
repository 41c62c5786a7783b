"""Write DSB2018's image modality as a group table for ``segany eval --groups``.

DSB2018 mixes fluorescence (dark background, grey), brightfield (light background) and H&E-like
histology (colour) images; its annotations do not say which. This labels each image from its pixels:
colour when the channels differ, else dark or light background by the median grey level.

    python benchmarks/eval/groups/make_dsb2018_modality.py ../shared/data/DSB2018 -o dsb2018_modality.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image


def modality(path: Path) -> str:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    if np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean() > 4:
        return "colour (histology)"
    return "dark background (fluorescence)" if np.median(rgb) < 128 else "light background (brightfield)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    images = json.loads((args.data / "annotations.json").read_text())["images"]
    with open(args.output, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "modality"])
        for im in images:
            w.writerow([im["id"], modality(args.data / "images" / im["file_name"])])


if __name__ == "__main__":
    main()
