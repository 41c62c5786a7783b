"""Pick the thresholds at which a model's automatic masks are kept, from images with ground truth.

SAM keeps an automatic mask when its predicted IoU is above 0.88 and its stability at least 0.95
(paper, appendix B). Those figures fit SAM's IoU head; a smaller model's head is calibrated
differently and may never reach them. This script runs the generator without the two filters on
annotated training images, matches every candidate to its best ground-truth region, and reports, for
a grid of threshold pairs, how many masks each image keeps and how many of them are right (IoU >= 0.5
with some region). It prints the pair that keeps the most right masks while at least ``--precision``
of the kept masks are right.

Usage::

    python recipes/calibrate_auto.py $SEGANY_DATA/BSDS500 --split train --images 12 -c WEIGHTS

Choose the thresholds on training images; check them on held-out ones (``--split test``) with
``--pred-iou-thresh`` / ``--stability-score-thresh`` given: the generator then runs with them (an
unnamed one is the model's own) and the kept masks are scored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a COCO folder (images/, annotations.json)")
    ap.add_argument("--split", default=None, help="only images whose 'split' field is this")
    ap.add_argument("--images", type=int, default=12, help="how many images (evenly spread)")
    ap.add_argument("-c", "--checkpoint", default=None, help="weights (default: the packaged model)")
    ap.add_argument("--precision", type=float, default=0.7, help="least share of kept masks that are right")
    ap.add_argument("--pred-iou-thresh", type=float, default=None)
    ap.add_argument("--stability-score-thresh", type=float, default=None)
    args = ap.parse_args()

    import torch
    from pycocotools import mask as mask_utils

    import segany
    from segany.inference.automatic import SamAutomaticMaskGenerator
    from segany.io.image import read_image

    torch.set_grad_enabled(False)
    coco = json.loads((args.data / "annotations.json").read_text())
    images = [im for im in coco["images"] if args.split is None or im.get("split") == args.split]
    images = [images[i] for i in np.linspace(0, len(images) - 1, min(args.images, len(images))).astype(int)]
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["segmentation"])

    model = segany.load_model(args.checkpoint) if args.checkpoint else segany.load_model()
    check = args.pred_iou_thresh is not None or args.stability_score_thresh is not None
    # Choosing: no score filters, every candidate comes back with its scores (NMS then sees them all,
    # so the counts below are a close estimate). Checking: the generator exactly as segany auto runs it.
    given = (args.pred_iou_thresh, args.stability_score_thresh) if check else (0.0, 0.0)
    generator = SamAutomaticMaskGenerator(model, pred_iou_thresh=given[0], stability_score_thresh=given[1],
                                          output_mode="coco_rle")
    rows = []  # (image index, predicted IoU, stability, best IoU with a region)
    for k, info in enumerate(images):
        gts = by_image.get(info["id"], [])
        masks = generator.generate(read_image(args.data / "images" / info["file_name"]))
        if masks and gts:
            ious = mask_utils.iou([m["segmentation"] for m in masks], gts, [0] * len(gts))
            best = np.asarray(ious).max(axis=1)
        else:
            best = np.zeros(len(masks))
        rows += [(k, m["predicted_iou"], m["stability_score"], b) for m, b in zip(masks, best)]
        print(f"{info['file_name']}: {len(masks)} candidates, {int((best >= 0.5).sum())} right", flush=True)
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    n = len(images)

    def report(t_iou: float, t_stab: float) -> tuple[float, float, float]:
        kept = table[(table[:, 1] > t_iou) & (table[:, 2] >= t_stab)]
        right = (kept[:, 3] >= 0.5).sum()
        precision = right / len(kept) if len(kept) else 0.0
        return len(kept) / n, right / n, precision

    if check:
        t = (generator.pred_iou_thresh, generator.stability_score_thresh)
        kept, right, precision = report(-np.inf, -np.inf)
        mean_best = table[:, 3].mean() if len(table) else 0.0
        print(f"thresholds {t}: {kept:.1f} masks/image kept, {right:.1f} right (IoU >= 0.5 with a region), "
              f"precision {precision:.2f}, mean best IoU {mean_best:.2f}, images with none kept: "
              f"{n - len(set(table[:, 0].astype(int)))} of {n}")
        return
    print("pred_iou  stability  kept/image  right/image  precision")
    best_pair, best_right = None, -1.0
    for t_iou in np.arange(0.3, 0.95, 0.05):  # from well below SAM's pair: a small model's head scores low
        for t_stab in np.arange(0.3, 0.975, 0.05):
            kept, right, precision = report(float(t_iou), float(t_stab))
            print(f"{t_iou:8.2f}  {t_stab:9.2f}  {kept:10.1f}  {right:11.1f}  {precision:9.2f}")
            if precision >= args.precision and right > best_right:
                best_pair, best_right = (round(float(t_iou), 2), round(float(t_stab), 2)), right
    kept, right, precision = report(0.88, 0.95)
    print(f"SAM's pair (0.88, 0.95): {kept:.1f} kept/image, {right:.1f} right/image, precision {precision:.2f}")
    print(f"best pair at precision >= {args.precision}: {best_pair} ({best_right:.1f} right masks/image)")


if __name__ == "__main__":
    main()
