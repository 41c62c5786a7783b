"""Box-prompted instance segmentation (SAM paper §D.4), scored with COCO mask AP.

Boxes come from the ground truth (default: one box per non-crowd object; its COCO ``bbox`` as the
inclusive pixel box ``x, y, x + w - 1, y + h - 1``, the convention of SAM's training and of its
automatic mask generator) or from a detector's COCO results file (``[{"image_id", "bbox" (xywh),
"score", "category_id"}, ...]``; the ``max_dets`` highest-scoring boxes of each image are kept, as
``x, y, x + w, y + h`` clipped to the image).
All boxes of an image go through the method in one batch, one mask per box (single-mask output,
as the official code does for a box). ``refine=True`` feeds each box once more together with the
low-resolution logits of its first mask (the paper's "fed back once more"; off by default).

Scores for AP: the detector's score for detections; the predicted IoU for ground-truth boxes (1.0
for methods without scores). AP, AP50, AP75 and AP by size come from pycocotools
(:func:`segany.eval.metrics.coco_segm_ap`); crowd regions are handled by COCOeval. Per-object IoU
(with crowd regions ignored) is also reported: of the mask from the object's own box, or, with
detections, of the best-matching detection.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from segany.errors import SeganyError
from segany.eval.metrics import coco_segm_ap, mask_iou
from segany.eval.prompting import as_segmenter
from segany.eval.report import (
    Panel,
    ReportWriter,
    case_picture,
    method_entries,
    metric_rows,
    context_box,
    pick_extremes,
    plot_histograms,
)
from segany.io.datasets import Sample, SegmentationDataset
from segany.io.files import read_json
from segany.io.rle import decode_rle, encode_masks

__all__ = [
    "DetectionsError",
    "BoxesSettings",
    "BoxObject",
    "BoxesResult",
    "load_detections",
    "coco_ground_truth",
    "evaluate_boxes",
    "write_boxes_report",
]


class DetectionsError(SeganyError):
    """A detections file is missing or not a COCO results list."""


@dataclass(frozen=True)
class BoxesSettings:
    """Knobs of the box protocol."""

    source: str = "ground truth"  # or the detections file's path
    refine: bool = False
    max_dets: int = 100


@dataclass
class BoxObject:
    """One ground-truth object and its (best) predicted mask's IoU."""

    image_id: int
    annotation_id: int
    file_name: str
    area: float
    iou: float
    score: float
    box: list[float]  # the prompt that made the mask (x0, y0, x1, y1); [] if there is none
    det_index: int = -1  # index of that mask in BoxesResult.detections


@dataclass
class BoxesResult:
    """Per-object IoUs, COCO AP numbers and the predicted masks (as COCO detections)."""

    method: str
    settings: BoxesSettings
    objects: list[BoxObject]
    detections: list[dict[str, Any]] = field(repr=False)
    coco: dict[str, float]
    num_images: int
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        ious = np.array([o.iou for o in self.objects], float)
        metrics = dict(self.coco)
        metrics["mIoU"] = float(ious.mean()) if ious.size else float("nan")
        metrics["num_objects"] = len(self.objects)
        metrics["num_masks"] = len(self.detections)
        return {"metrics": metrics, "num_images": self.num_images, "seconds": round(self.seconds, 2)}


def load_detections(path: str | Path, max_dets: int = 100) -> dict[int, list[dict[str, Any]]]:
    """A COCO results file grouped by image: ``{image_id: [{"box" xyxy, "score", "category_id"}]}``,
    best score first, at most ``max_dets`` per image."""
    try:
        data = read_json(path, "detections file")
    except SeganyError as exc:
        raise DetectionsError(str(exc)) from None
    if not isinstance(data, list):
        raise DetectionsError(f"{path}: expected a list of detections (COCO results format)")
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for i, d in enumerate(data):
        try:
            x, y, w, h = (float(v) for v in d["bbox"])
            by_image[int(d["image_id"])].append(
                {"box": [x, y, x + w, y + h], "score": float(d.get("score", 1.0)),
                 "category_id": int(d.get("category_id", 1))}
            )
        except (KeyError, TypeError, ValueError):
            raise DetectionsError(
                f"{path}: detection {i} needs 'image_id' and a 4-number 'bbox' (x, y, w, h)"
            ) from None
    return {k: sorted(v, key=lambda d: -d["score"])[:max_dets] for k, v in by_image.items()}


def coco_ground_truth(samples: Sequence[Sample]) -> dict[str, Any]:
    """A COCO dict holding exactly the given images and their annotations (crowd included)."""
    images, anns, cats = [], [], set()
    for s in samples:
        images.append({"id": s.image_id, "width": s.width, "height": s.height, "file_name": s.file_name})
        for a in s.annotations:
            cats.add(a.category_id)
            anns.append({"id": a.id, "image_id": s.image_id, "category_id": a.category_id, "segmentation": a.rle,
                         "area": a.area, "bbox": a.bbox, "iscrowd": a.iscrowd})
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in sorted(cats)]}


def _gt_box(bbox: Sequence[float]) -> list[float]:
    """COCO xywh of a mask -> inclusive pixel box (x0, y0, x1, y1)."""
    x, y, w, h = bbox
    return [x, y, x + max(w - 1.0, 0.0), y + max(h - 1.0, 0.0)]


def _clip_box(box: Sequence[float], height: int, width: int) -> list[float]:
    x0, y0, x1, y1 = box
    return [min(max(x0, 0.0), width - 1.0), min(max(y0, 0.0), height - 1.0),
            min(max(x1, 0.0), width - 1.0), min(max(y1, 0.0), height - 1.0)]


def evaluate_boxes(
    dataset: SegmentationDataset | Sequence[Sample],
    method: Any,
    settings: BoxesSettings | None = None,
    detections: Mapping[int, list[dict[str, Any]]] | None = None,
    progress: bool = True,
) -> BoxesResult:
    """Run the box protocol on every image of ``dataset`` (limit it when building the data set).

    Args:
        dataset: images with instance annotations.
        method: a :class:`~segany.eval.prompting.Segmenter`, a ``SamPredictor`` or an official-style predictor.
        settings: protocol knobs.
        detections: from :func:`load_detections`; None = ground-truth boxes.
        progress: show a tqdm bar over images.
    """
    from pycocotools import mask as mask_utils
    from tqdm import tqdm

    st = settings or BoxesSettings()
    seg = as_segmenter(method)
    start = time.perf_counter()
    samples = list(dataset)
    objects: list[BoxObject] = []
    dets: list[dict[str, Any]] = []
    for sample in tqdm(samples, desc=f"boxes ({seg.name})", unit="img", disable=not progress):
        gts = [a for a in sample.annotations if not a.iscrowd]
        if detections is None:
            prompts = [{"box": _gt_box(a.bbox), "score": None, "category_id": a.category_id} for a in gts]
        else:
            prompts = [dict(d, box=_clip_box(d["box"], sample.height, sample.width))
                       for d in detections.get(sample.image_id, [])]
        if not prompts and not gts:
            continue
        rles: list[dict[str, Any]] = []
        img_dets: list[dict[str, Any]] = []
        masks = np.zeros((0, sample.height, sample.width), bool)
        if prompts:
            seg.set_image(sample.load_image())
            boxes = np.array([p["box"] for p in prompts], dtype=np.float32)
            pred = seg.predict_batch(None, None, boxes, None, multimask=False)
            if st.refine and pred.logits is not None:
                pred = seg.predict_batch(None, None, boxes, pred.logits[:, :1], multimask=False)
            masks = pred.masks[:, 0]
            rles = encode_masks(masks)
            for p, rle, sc in zip(prompts, rles, pred.scores[:, 0]):
                score = p["score"] if p["score"] is not None else (1.0 if np.isnan(sc) else float(sc))
                img_dets.append({"image_id": sample.image_id, "segmentation": rle, "score": score,
                                 "category_id": p["category_id"]})
        first = len(dets)
        dets.extend(img_dets)
        if detections is None:  # mask i comes from object i's own box
            ignore = sample.ignore_mask()
            for i, (a, m, d, p) in enumerate(zip(gts, masks, img_dets, prompts)):
                objects.append(BoxObject(sample.image_id, a.id, sample.file_name, a.area,
                                         mask_iou(m, a.mask(), ignore), d["score"], p["box"], first + i))
            continue
        ious = np.zeros((len(rles), len(gts)))
        if rles and gts:
            ious = np.asarray(mask_utils.iou(rles, [a.rle for a in gts], [0] * len(gts))).reshape(len(rles), len(gts))
        for j, a in enumerate(gts):  # each object's best-overlapping detection
            k = int(np.argmax(ious[:, j])) if rles else -1
            objects.append(BoxObject(sample.image_id, a.id, sample.file_name, a.area,
                                     float(ious[k, j]) if k >= 0 else 0.0,
                                     float(img_dets[k]["score"]) if k >= 0 else 0.0,
                                     list(prompts[k]["box"]) if k >= 0 else [], first + k if k >= 0 else -1))
    coco = coco_segm_ap(coco_ground_truth(samples), dets, max_dets=st.max_dets)
    return BoxesResult(seg.name, st, objects, dets, coco, len(samples), time.perf_counter() - start)


# --------------------------------------------------------------------------- report


def write_boxes_report(
    writer: ReportWriter,
    results: Sequence[BoxesResult],
    samples: Mapping[int, Sample],
    compare: Sequence[Mapping[str, Any]] = (),
    num_cases: int = 3,
) -> None:
    """AP table, per-object IoU histogram and best/worst objects into ``writer``."""
    if not results:
        return
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "mIoU"]
    entries = method_entries(results, compare)
    rows = metric_rows(entries, keys)
    src = results[0].settings.source
    writer.table(
        "Results", ["method", "objects", *keys], rows,
        note=(f"Boxes: {src}{' (refined once with the mask fed back)' if results[0].settings.refine else ''}. "
              "COCO mask AP (pycocotools; APs/m/l: small < 32², medium < 96², large objects; – when a size "
              "has no object); mIoU: mean IoU of each object's mask (from its own box, or its best detection)."),
    )
    writer.plot("iou_histogram.png",
                plot_histograms({r.method: [o.iou for o in r.objects] for r in results}, "IoU", "per-object mask IoU"),
                "Per-object IoU")
    pictures = []
    for res in results:
        best, worst = pick_extremes(res.objects, lambda o: o.iou, num_cases)
        for kind, group in (("best", best), ("worst", worst)):
            for o in group:
                sample = samples[o.image_id]
                inst = next(a for a in sample.annotations if a.id == o.annotation_id)
                gt = inst.mask()
                pred = [decode_rle(res.detections[o.det_index]["segmentation"])] if o.det_index >= 0 else []
                pic = case_picture(sample.load_image(), [
                    Panel("ground truth", masks=[gt]),
                    Panel(f"{res.method}: IoU {o.iou:.3f}", masks=pred, outline=gt,
                          boxes=[o.box] if o.box else []),
                ], crop=context_box(inst.bbox, sample.height, sample.width))
                pictures.append((f"{res.method}_{kind}_ann{o.annotation_id}", pic,
                                 f"{res.method}, {kind}: {o.file_name}, object {o.annotation_id}, IoU {o.iou:.3f}"))
    writer.cases(f"Best and worst objects by mask IoU ({num_cases} each)", pictures)
