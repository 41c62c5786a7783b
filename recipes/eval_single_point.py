"""Single-point mIoU on held-out data sets (SAM paper §D.1, one click), with simple baselines.

For every object: one positive click at the interior point farthest from the object's boundary
(``segany.ops.clicks.center_point``), three masks asked for, the top-ranked one (highest predicted IoU)
scored by IoU with the ground truth; mIoU = mean over the data set's objects. Crowd regions are skipped.

Baselines (same click, for context):

* ``otsu``: ``segany.eval.baselines.OtsuSegmenter``: Otsu threshold of the grey image; the connected
  component (8-connected) of the clicked pixel's side of the threshold;
* ``grabcut``: ``segany.eval.baselines.GrabCutSegmenter`` from that click alone (several seconds per
  object on a small CPU: by default one object on each of the first 20 images only).

Usage::

    python recipes/eval_single_point.py                      # packaged default model, DSB2018 + CVPPP_A1
    python recipes/eval_single_point.py -c runs/default_cpu/model.safetensors --baselines otsu grabcut \\
        --baseline-max-per-image 10 --json runs/default_cpu/heldout.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_DATA = [
    os.path.join(os.environ.get("SEGANY_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")), name)
    for name in ("DSB2018", "CVPPP_A1")
]


def pick_objects(n: int, k: int | None, rng: np.random.Generator) -> list[int]:
    if k is None or n <= k:
        return list(range(n))
    return sorted(rng.choice(n, k, replace=False).tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--checkpoint", default=None, help="model weights (default: packaged default model)")
    ap.add_argument("--data", nargs="+", default=DEFAULT_DATA)
    ap.add_argument("--max-per-image", type=int, default=None, help="objects per image for the model (default all)")
    ap.add_argument("--baselines", nargs="*", default=["otsu"], choices=["otsu", "grabcut"])
    ap.add_argument(
        "--baseline-max-per-image",
        type=int,
        default=None,
        help="at most this many of the model's objects per image for baselines",
    )
    ap.add_argument("--grabcut-max-per-image", type=int, default=1, help="GrabCut is slow: objects per image")
    ap.add_argument("--grabcut-images", type=int, default=20, help="GrabCut is slow: first N images only")
    ap.add_argument("--limit-images", type=int, default=None, help="first N images of each data set")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import segany
    from segany.eval.metrics import mask_iou
    from segany.io.datasets import SegmentationDataset
    from segany.ops.clicks import center_point

    model = segany.load_model(args.checkpoint)
    predictor = segany.SamPredictor(model)
    from segany.eval.baselines import GrabCutSegmenter, OtsuSegmenter

    grabcut = GrabCutSegmenter() if "grabcut" in args.baselines else None
    otsu = OtsuSegmenter() if "otsu" in args.baselines else None
    results: dict[str, dict[str, float | int]] = {}
    for root in args.data:
        t0 = time.time()
        ds = SegmentationDataset(root, limit=args.limit_images)
        rng = np.random.default_rng(args.seed)
        ious: list[float] = []
        oracle: list[float] = []
        base: dict[str, list[float]] = {b: [] for b in args.baselines}
        for sample_no, sample in enumerate(ds):
            insts = [a for a in sample.annotations if not a.iscrowd]
            if not insts:
                continue
            image = sample.load_image()
            picked = pick_objects(len(insts), args.max_per_image, rng)
            gts = {i: insts[i].mask() for i in picked}
            clicks = {i: center_point(gts[i]) for i in picked}
            keep = [i for i in picked if clicks[i] is not None]
            predictor.set_image(image)
            for start in range(0, len(keep), 32):
                chunk = keep[start : start + 32]
                pts = torch.tensor([[clicks[i]] for i in chunk], dtype=torch.float32)
                pts = predictor.transform.apply_coords_torch(pts, image.shape[:2])
                with torch.no_grad():
                    masks, scores, _ = predictor.predict_torch(pts, torch.ones(len(chunk), 1), multimask_output=True)
                top = scores.argmax(1)
                for j, i in enumerate(chunk):
                    m = masks[j].numpy()
                    ious.append(mask_iou(m[int(top[j])], gts[i]))
                    oracle.append(max(mask_iou(mk, gts[i]) for mk in m))
            if args.baselines:
                if grabcut is not None and sample_no < args.grabcut_images:
                    grabcut.set_image(image)
                if otsu is not None:
                    otsu.set_image(image)
                # The model's objects, optionally subsampled further.
                sub = pick_objects(
                    len(keep), args.baseline_max_per_image, np.random.default_rng([args.seed, sample.image_id])
                )
                for i in (keep[j] for j in sub):
                    x, y = clicks[i]
                    if otsu is not None:
                        base["otsu"].append(mask_iou(otsu.predict(np.array([[x, y]]), np.array([1])), gts[i]))
                    if (
                        grabcut is not None
                        and sample_no < args.grabcut_images
                        and len(base["grabcut"]) < (sample_no + 1) * args.grabcut_max_per_image
                    ):
                        pred = grabcut.predict(np.array([[x, y]]), np.array([1]))
                        base["grabcut"].append(mask_iou(pred, gts[i]))
        name = Path(root).name
        results[name] = {
            "objects": len(ious),
            "miou_top": float(np.mean(ious)),
            "miou_oracle": float(np.mean(oracle)),
            **{f"miou_{b}": float(np.mean(v)) for b, v in base.items() if v},
            **{f"objects_{b}": len(v) for b, v in base.items() if v},
            "seconds": round(time.time() - t0, 1),
        }
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        from segany.io.files import atomic_write_json

        atomic_write_json(args.json, results, indent=2)


if __name__ == "__main__":
    main()
