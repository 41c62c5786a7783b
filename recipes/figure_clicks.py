"""Picture a model's masks after 1, 3 and 5 simulated clicks on one held-out object.

Usage::

    python recipes/figure_clicks.py --data /tmp/bsds500_test_1pct --image 0 -o clicks.png [-c MODEL]

The clicks follow ``segany eval points`` (first click at the object's centre, each next one at the
centre of the larger error region, previous logits fed back, top-ranked mask on the first click).
Green: the mask; red outline: the ground truth; dots: positive (white) and negative (black) clicks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="data set folder (images/, annotations.json)")
    ap.add_argument("--image", type=int, default=0, help="index of the image in the data set")
    ap.add_argument("--object", type=int, default=None, help="index of the object (default: the largest)")
    ap.add_argument("-c", "--checkpoint", default=None, help="model weights (default: the packaged model)")
    ap.add_argument("-o", "--output", required=True, type=Path)
    ap.add_argument("--clicks", default="1,3,5")
    args = ap.parse_args()

    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import segany
    from segany.io.datasets import SegmentationDataset
    from segany.ops.clicks import Click, center_point, next_click

    sample = SegmentationDataset(args.data)[args.image]
    image = sample.load_image()
    masks = [a.mask() for a in sample.annotations if not a.iscrowd]
    gt = masks[args.object] if args.object is not None else max(masks, key=lambda m: int(m.sum()))
    predictor = segany.SamPredictor(segany.load_model(args.checkpoint))
    predictor.set_image(image)
    wanted = [int(k) for k in args.clicks.split(",")]
    x, y = center_point(gt)
    clicks = [Click(x, y, True)]
    out, _, logits = predictor.predict(np.array([[x, y]]), np.array([1]), multimask_output=True)
    top = int(np.argmax(_))
    pred, logit = out[top], logits[top : top + 1]
    shots = {}
    for k in range(1, max(wanted) + 1):
        if k > 1:
            c = next_click(pred, gt, avoid=clicks)
            if c is None:
                break
            clicks.append(c)
            pts = np.array([[c.x, c.y] for c in clicks])
            lbl = np.array([int(c.is_positive) for c in clicks])
            m, _, lg = predictor.predict(pts, lbl, mask_input=logit, multimask_output=False)
            pred, logit = m[0], lg
        if k in wanted:
            iou = float((pred & gt).sum() / max((pred | gt).sum(), 1))
            shots[k] = (pred.copy(), list(clicks), iou)
    fig, axes = plt.subplots(1, len(shots), figsize=(4 * len(shots), 4 * image.shape[0] / image.shape[1] + 0.5))
    for ax, (k, (m, cl, iou)) in zip(np.atleast_1d(axes), shots.items()):
        overlay = image.copy()
        overlay[m] = (0.5 * overlay[m] + 0.5 * np.array([0, 200, 0])).astype(np.uint8)
        contours, _h = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, (220, 0, 0), 2)
        ax.imshow(overlay)
        for c in cl:
            ax.scatter([c.x], [c.y], s=60, c="white" if c.is_positive else "black", edgecolors="red", linewidths=1.5)
        ax.set_title(f"{k} click{'s' if k > 1 else ''}: IoU {iou:.2f}")
        ax.axis("off")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=90)
    print(f"wrote {args.output}: " + ", ".join(f"{k} clicks IoU {v[2]:.3f}" for k, v in shots.items()))


if __name__ == "__main__":
    main()
