"""Regenerate the synthetic COCO data set in this folder (run by hand; not a test).

Eight pictures of overlapping shaded shapes (ellipses, rectangles, triangles) on a textured background,
with one COCO RLE instance per visible shape. Enough for the training, DDP, data-set and evaluation tests to
run without any external data. Formats vary on purpose: RGB JPEG, a greyscale JPEG and an RGBA PNG.

    python tests/data/shapes/make_shapes.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

HERE = Path(__file__).resolve().parent
SIZES = [(192, 256), (240, 320), (256, 256), (200, 300), (320, 240), (224, 288), (256, 192), (180, 240)]
SPLITS = {"train": range(0, 6), "val": range(6, 7), "test": range(7, 8)}
MIN_AREA = 60


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    ry, rx = rng.uniform(0.08, 0.3) * h, rng.uniform(0.08, 0.3) * w
    kind = rng.integers(3)
    if kind == 0:  # rotated ellipse
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1
    if kind == 1:  # axis-aligned rectangle
        return (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
    # triangle: inside all three half-planes
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2.1, 4.2])
    px, py = cx + rx * np.cos(angles), cy + ry * np.sin(angles)
    inside = np.ones((h, w), bool)
    sign = np.sign((px[1] - px[0]) * (py[2] - py[0]) - (py[1] - py[0]) * (px[2] - px[0]))
    for i in range(3):
        j = (i + 1) % 3
        inside &= sign * ((px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])) >= 0
    return inside


def _picture(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[np.ndarray]]:
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    base = rng.uniform(60, 190, 3)
    image = base + 40 * (yy[..., None] - 0.5) * rng.uniform(-1, 1, 3) + rng.normal(0, 6, (h, w, 3))
    label = np.full((h, w), -1)
    n = int(rng.integers(3, 7))
    for k in range(n):
        m = _shape_mask(rng, h, w)
        colour = rng.uniform(0, 255, 3)
        shade = 1 + 0.25 * (xx - 0.5)[..., None] * rng.uniform(-1, 1)
        image = np.where(m[..., None], colour * shade + rng.normal(0, 4, (h, w, 3)), image)
        label[m] = k
    masks = [label == k for k in range(n) if (label == k).sum() >= MIN_AREA]
    return np.clip(image, 0, 255).astype(np.uint8), masks


def main() -> None:
    rng = np.random.default_rng(19)
    (HERE / "images").mkdir(exist_ok=True)
    images, annotations = [], []
    for i, (h, w) in enumerate(SIZES):
        pixels, masks = _picture(rng, h, w)
        split = next(name for name, ids in SPLITS.items() if i in ids)
        if i == 3:
            name = f"shapes_{i}_grey.jpg"
            Image.fromarray(pixels).convert("L").save(HERE / "images" / name, quality=90)
        elif i == 5:
            name = f"shapes_{i}_rgba.png"
            pixels = pixels // 16 * 16  # fewer distinct values: a small lossless file
            alpha = np.full((h, w), 255, np.uint8)
            alpha[:, :20] = 0  # a transparent strip: the reader must drop alpha, not composite it
            Image.fromarray(np.dstack([pixels, alpha])).save(HERE / "images" / name)
        else:
            name = f"shapes_{i}.jpg"
            Image.fromarray(pixels).save(HERE / "images" / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h, "split": split})
        for m in masks:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            ys, xs = np.nonzero(m)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                    "area": int(m.sum()),
                    "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                             float(ys.max() - ys.min() + 1)],
                }
            )
    coco = {
        "info": {"description": "segany synthetic shapes (tests/data/shapes/make_shapes.py)"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
    }
    (HERE / "annotations.json").write_text(json.dumps(coco))
    stems = {name: [Path(images[i]["file_name"]).stem for i in ids] for name, ids in SPLITS.items()}
    (HERE / "splits.json").write_text(json.dumps(stems, indent=1) + "\n")
    print(f"{len(images)} images, {len(annotations)} masks")


if __name__ == "__main__":
    main()
