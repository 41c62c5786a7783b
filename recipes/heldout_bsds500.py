"""Make the held-out natural-photo set of issue 18: BSDS500's test split, objects >= 1% of the image.

Usage::

    python recipes/heldout_bsds500.py $SEGANY_DATA/BSDS500 /tmp/bsds500_test_1pct
    segany eval points --data /tmp/bsds500_test_1pct -o reports/points_bsds --max-per-image 2 --limit 150

Writes ``OUT/annotations.json`` (the test images and their regions of at least ``--min-fraction`` of
the image, from every human partition) and links ``OUT/images`` to the original images. BSDS500's
train+val split is the training split; its test split is never trained on.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bsds500", type=Path, help="the BSDS500 folder (images/, annotations.json)")
    ap.add_argument("output", type=Path, help="folder to write (created)")
    ap.add_argument("--min-fraction", type=float, default=0.01, help="smallest object, as a fraction of the image")
    args = ap.parse_args()

    coco = json.loads((args.bsds500 / "annotations.json").read_text())
    images = {im["id"]: im for im in coco["images"] if im.get("split") == "test"}
    keep = [
        a for a in coco["annotations"]
        if a["image_id"] in images
        and a["area"] >= args.min_fraction * images[a["image_id"]]["width"] * images[a["image_id"]]["height"]
    ]
    args.output.mkdir(parents=True, exist_ok=True)
    out = dict(coco, images=list(images.values()), annotations=keep)
    (args.output / "annotations.json").write_text(json.dumps(out))
    link = args.output / "images"
    if not link.exists():
        os.symlink((args.bsds500 / "images").resolve(), link)
    print(f"{len(images)} test images, {len(keep)} objects >= {args.min_fraction:.0%} of the image -> {args.output}")


if __name__ == "__main__":
    main()
