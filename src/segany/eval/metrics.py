"""Mask metrics: IoU, interactive-segmentation scores, and COCO AP / AR via pycocotools.

* :func:`mask_iou` / :func:`batched_mask_iou` -- IoU of binary masks, with optional ignore pixels.
* :class:`InteractiveScores` -- per-object IoU after each click; mIoU@k (SAM §D.1 uses
  k in 1, 2, 3, 5, 9) and NoC@threshold (clicks needed to reach an IoU, RITM convention).
* :func:`coco_segm_ap` -- mask AP, AP50, AP75, APs/m/l (SAM §D.4, instance segmentation).
* :func:`coco_proposal_ar` -- class-agnostic mask AR@100 / AR@1000 and AR by size (SAM §D.3).

The COCO functions take a ground-truth COCO dict (or a ``pycocotools.coco.COCO``) and a list of
detections ``{"image_id", "segmentation", "score", ["category_id"]}`` whose segmentation is a COCO
RLE dict or a bool [H, W] array. Summary numbers are computed here from COCOeval's accumulated
``precision`` / ``recall`` arrays (not from ``summarize()``, whose indices assume the default
maxDets), and pycocotools' progress prints are silenced.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "mask_iou",
    "batched_mask_iou",
    "InteractiveScores",
    "DEFAULT_MIOU_CLICKS",
    "coco_segm_ap",
    "coco_proposal_ar",
]

#: Click counts at which SAM reports mIoU (paper §D.1).
DEFAULT_MIOU_CLICKS: tuple[int, ...] = (1, 2, 3, 5, 9)


# --------------------------------------------------------------------------- IoU


def mask_iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of two bool [H, W] masks; ``ignore`` pixels count in neither. Empty union -> 1.0."""
    p = np.asarray(pred, dtype=bool)
    g = np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        p, g = p & keep, g & keep
    union = int(np.count_nonzero(p | g))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & g)) / union


def batched_mask_iou(pred: torch.Tensor, gt: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """IoU per pair of masks.

    Args:
        pred: bool [B, H, W] (or [..., H, W]).
        gt: bool, same shape as ``pred``.
        ignore: optional bool broadcastable to ``pred``; ignored pixels count in neither.

    Returns:
        float32 [B] (or [...]); 1.0 where the union is empty.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    p, g = pred.bool(), gt.bool()
    if ignore is not None:
        keep = ~ignore.bool()
        p, g = p & keep, g & keep
    inter = (p & g).flatten(-2).sum(-1).float()
    union = (p | g).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


# --------------------------------------------------------------------------- interactive scores


@dataclass
class InteractiveScores:
    """IoU after every click, per object, for the interactive (multi-click) protocol.

    Call :meth:`add` once per object with the IoUs after click 1, 2, ... . An object whose
    run stopped early (e.g. no error left) keeps its last IoU for later clicks.
    """

    ious: list[list[float]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, ious_per_click: Sequence[float], name: str = "") -> None:
        """Record one object's IoU after each click (at least one click)."""
        values = [float(v) for v in ious_per_click]
        if not values:
            raise ValueError("an object needs the IoU after at least one click")
        self.ious.append(values)
        self.names.append(name)

    def __len__(self) -> int:
        return len(self.ious)

    def _matrix(self, n_clicks: int) -> np.ndarray:
        """[num_objects, n_clicks] IoUs with each row's last value carried forward."""
        out = np.empty((len(self.ious), n_clicks), dtype=np.float64)
        for i, row in enumerate(self.ious):
            k = min(len(row), n_clicks)
            out[i, :k] = row[:k]
            out[i, k:] = row[-1]
        return out

    def miou_at(self, k: int) -> float:
        """Mean over objects of the IoU after ``k`` clicks (k >= 1); NaN with no objects."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not self.ious:
            return float("nan")
        return float(self._matrix(k)[:, k - 1].mean())

    def noc_per_object(self, threshold: float, max_clicks: int = 20) -> np.ndarray:
        """Clicks needed to reach IoU >= ``threshold`` per object; ``max_clicks`` if never.

        int64 [num_objects]. Only the first ``max_clicks`` clicks count (RITM convention).
        """
        if not self.ious:
            return np.zeros(0, dtype=np.int64)
        reached = self._matrix(max_clicks) >= threshold
        first = reached.argmax(axis=1) + 1
        return np.where(reached.any(axis=1), first, max_clicks).astype(np.int64)

    def noc(self, threshold: float, max_clicks: int = 20) -> float:
        """Mean number of clicks to reach IoU >= ``threshold`` (NaN with no objects)."""
        per = self.noc_per_object(threshold, max_clicks)
        return float(per.mean()) if per.size else float("nan")

    def failures(self, threshold: float, max_clicks: int = 20) -> int:
        """Objects that never reach ``threshold`` within ``max_clicks`` clicks (RITM's NoF)."""
        if not self.ious:
            return 0
        return int((~(self._matrix(max_clicks) >= threshold).any(axis=1)).sum())

    def to_dict(
        self,
        clicks: Iterable[int] = DEFAULT_MIOU_CLICKS,
        thresholds: Iterable[float] = (0.85, 0.9),
        max_clicks: int = 20,
    ) -> dict[str, float | int]:
        """Summary: ``num_objects``, ``miou@k`` per k, ``noc@T`` and ``nof@T`` per threshold (T in %)."""
        out: dict[str, float | int] = {"num_objects": len(self)}
        for k in clicks:
            out[f"miou@{k}"] = self.miou_at(k)
        for t in thresholds:
            tag = f"{round(t * 100):d}"
            out[f"noc@{tag}"] = self.noc(t, max_clicks)
            out[f"nof@{tag}"] = self.failures(t, max_clicks)
        return out


# --------------------------------------------------------------------------- COCO AP / AR


def _quiet() -> contextlib.AbstractContextManager[Any]:
    return contextlib.redirect_stdout(io.StringIO())


def _to_coco(gt: Any) -> Any:
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    if not isinstance(gt, Mapping):
        raise TypeError("gt must be a COCO-format dict or a pycocotools COCO object")
    coco = COCO()
    coco.dataset = copy.deepcopy(dict(gt))
    coco.dataset.setdefault("categories", [{"id": 1, "name": "object"}])
    with _quiet():
        coco.createIndex()
    return coco


def _encode(seg: Any) -> dict[str, Any]:
    """A COCO RLE dict from any COCO segmentation or a bool [H, W] array."""
    from segany.io.rle import encode_mask, to_coco_rle

    if isinstance(seg, Mapping):
        return dict(to_coco_rle(seg))
    arr = np.asarray(seg)
    if arr.ndim != 2:
        raise ValueError(f"a segmentation must be an RLE dict or a 2-D mask, got shape {arr.shape}")
    return dict(encode_mask(arr))


def _run_cocoeval(coco_gt: Any, detections: Sequence[Mapping[str, Any]], params: dict[str, Any]) -> Any:
    """Evaluate + accumulate ``segm`` with the given param overrides; returns the COCOeval."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns = []
    default_cat = coco_gt.getCatIds()[0] if coco_gt.getCatIds() else 1
    for i, det in enumerate(detections):
        rle = _encode(det["segmentation"])
        anns.append(
            {
                "id": i + 1,
                "image_id": det["image_id"],
                "category_id": det.get("category_id", default_cat),
                "segmentation": rle,
                "score": float(det["score"]),
                "area": float(mask_utils.area(rle)),
                "bbox": list(mask_utils.toBbox(rle)),
                "iscrowd": 0,
            }
        )
    unknown = {a["image_id"] for a in anns} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"detections refer to images not in the ground truth: {sorted(unknown)[:5]}")
    # Built directly rather than via loadRes, which mis-computes areas when a bbox is present
    # and fails on an empty list.
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": anns,
    }
    with _quiet():
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        for key, value in params.items():
            setattr(ev.params, key, value)
        ev.evaluate()
        ev.accumulate()
    return ev


def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries > -1 (COCOeval marks 'no ground truth' with -1); -1.0 if none."""
    v = values[values > -1]
    return float(v.mean()) if v.size else -1.0


_AREAS = {"": 0, "s": 1, "m": 2, "l": 3}  # index in COCOeval's default areaRng


def coco_segm_ap(gt: Any, detections: Sequence[Mapping[str, Any]], max_dets: int = 100) -> dict[str, float]:
    """COCO mask AP (per category, averaged), like ``COCOeval.summarize()``'s first six numbers.

    Args:
        gt: COCO-format dict (``images``, ``annotations`` with RLE/polygon ``segmentation``,
            ``categories``; missing categories default to one class) or a ``COCO`` object.
        detections: ``{"image_id", "segmentation", "score", "category_id"}`` dicts.
        max_dets: detections kept per image (COCO: 100).

    Returns:
        ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` in [0, 1] (-1 where there is no
        ground truth in that size range).
    """
    coco_gt = _to_coco(gt)
    ev = _run_cocoeval(coco_gt, detections, {"maxDets": [max_dets]})
    prec = ev.eval["precision"]  # [T iou, R recall, K cat, A area, M maxDets]
    iou = ev.params.iouThrs
    out = {"AP": _mean_valid(prec[:, :, :, 0, -1])}
    out["AP50"] = _mean_valid(prec[np.isclose(iou, 0.5), :, :, 0, -1])
    out["AP75"] = _mean_valid(prec[np.isclose(iou, 0.75), :, :, 0, -1])
    for tag in ("s", "m", "l"):
        out[f"AP{tag}"] = _mean_valid(prec[:, :, :, _AREAS[tag], -1])
    return out


def coco_proposal_ar(
    gt: Any, proposals: Sequence[Mapping[str, Any]], max_dets: Sequence[int] = (100, 1000)
) -> dict[str, float]:
    """Class-agnostic mask average recall of object proposals (``useCats=0``).

    Args:
        gt: COCO-format dict or ``COCO`` object (categories are ignored).
        proposals: ``{"image_id", "segmentation", "score"}`` dicts.
        max_dets: proposal budgets per image.

    Returns:
        ``AR@N`` for every N in ``max_dets`` and ``ARs@N``, ``ARm@N``, ``ARl@N`` for the largest
        N; recall averaged over IoU 0.50:0.05:0.95 (-1 where there is no ground truth).
    """
    budgets = sorted(int(n) for n in max_dets)
    coco_gt = _to_coco(gt)
    ev = _run_cocoeval(coco_gt, proposals, {"useCats": 0, "maxDets": budgets})
    rec = ev.eval["recall"]  # [T iou, K cat (1 when useCats=0), A area, M maxDets]
    out: dict[str, float] = {}
    for m, n in enumerate(budgets):
        out[f"AR@{n}"] = _mean_valid(rec[:, :, 0, m])
    top = budgets[-1]
    for tag in ("s", "m", "l"):
        out[f"AR{tag}@{top}"] = _mean_valid(rec[:, :, _AREAS[tag], -1])
    return out
