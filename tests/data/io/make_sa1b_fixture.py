"""Regenerate the tiny SA-1B folder fixture in ``sa1b/`` (run by hand; not a test).

It takes the first picture of the committed synthetic data set (``tests/data/shapes``), shrinks it to 160 px
wide, shrinks its three largest annotated masks the same way (nearest neighbour), and writes them in the SA-1B per-image
format with pycocotools directly (not with segany's writer, which the tests check against this file).
``area`` and ``bbox`` are computed here with numpy so the tests compare against independent values.

    python tests/data/io/make_sa1b_fixture.py [COCO_FOLDER]   # default: tests/data/shapes
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

HERE = Path(__file__).resolve().parent / "sa1b"


def main(folder: Path) -> None:
    coco = json.loads((folder / "annotations.json").read_text())
    image = coco["images"][0]
    anns = sorted((a for a in coco["annotations"] if a["image_id"] == image["id"]), key=lambda a: -a["area"])[:3]
    photo = Image.open(folder / "images" / image["file_name"]).convert("RGB")
    width = 160
    height = round(photo.height * width / photo.width)
    HERE.mkdir(exist_ok=True)
    photo.resize((width, height), Image.BILINEAR).save(HERE / "sa_1.jpg", quality=85)
    out = []
    for i, ann in enumerate(anns):
        full = mask_utils.decode(ann["segmentation"])
        small = np.asarray(Image.fromarray(full * 255).resize((width, height), Image.NEAREST)) > 127
        ys, xs = np.nonzero(small)
        box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        rle = mask_utils.encode(np.asfortranarray(small.astype(np.uint8)))
        k = len(xs) // 2  # a foreground pixel, as the generator's point prompt would be
        out.append(
            {
                "bbox": box,
                "area": int(small.sum()),
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                "predicted_iou": round(0.97 - 0.05 * i, 4),
                "point_coords": [[float(xs[k]) + 0.5, float(ys[k]) + 0.5]],
                "crop_box": [0.0, 0.0, float(width), float(height)],
                "id": 100 + i,
                "stability_score": round(0.98 - 0.02 * i, 4),
            }
        )
    info = {"image_id": 1, "width": width, "height": height, "file_name": "sa_1.jpg"}
    (HERE / "sa_1.json").write_text(json.dumps({"image": info, "annotations": out}))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shapes")
