"""Mask operations of the automatic mask generator: scores, boxes, NMS, crops and point grids.

Everything here is plain torch / numpy (OpenCV for connected components), with no model and no I/O.
The semantics follow the official ``segment_anything`` generator exactly (which box convention,
which comparison is strict, how ties are ordered), because the generator built on them must keep
the same set of masks as the official one.

Boxes are ``x0, y0, x1, y1`` with *inclusive* pixel indices (a one-pixel mask at (3, 5) has the box
``3, 5, 3, 5``), as the official generator computes them; an empty mask has the box ``0, 0, 0, 0``.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "count_above",
    "stability_score",
    "masks_to_boxes",
    "logits_to_boxes",
    "box_xyxy_to_xywh",
    "box_area",
    "nms",
    "batched_nms",
    "build_point_grid",
    "build_all_layer_point_grids",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "uncrop_boxes_xyxy",
    "uncrop_points",
    "uncrop_masks",
    "remove_small_regions",
]


# --- per-mask scores and boxes -----------------------------------------------------------------


def count_above(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Number of elements above ``threshold`` in each ``(H, W)`` plane of ``x (..., H, W)``: int32 ``(...)``."""
    # Row sums in int16 halve the memory traffic of int32 ones; they cannot overflow below 32768 columns.
    row_dtype = torch.int16 if x.shape[-1] < 32768 else torch.int32
    return (x > threshold).sum(dim=-1, dtype=row_dtype).sum(dim=-1, dtype=torch.int32)


def stability_score(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks thresholded at ``mask_threshold + offset`` and ``- offset``.

    The tighter mask lies inside the looser one, so the IoU is the ratio of their pixel counts.

    Args:
        logits: ``(..., H, W)`` float mask logits.
    Returns:
        ``(...)`` float32; NaN where the looser mask is empty (0 / 0), which no threshold keeps.
    """
    return count_above(logits, mask_threshold + offset) / count_above(logits, mask_threshold - offset)


def _boxes_from_projections(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Boxes from which rows ``(..., H)`` and columns ``(..., W)`` hold a mask pixel (bool)."""
    h, w = rows.shape[-1], cols.shape[-1]
    # argmax on an int tensor returns the first maximum: the first set row/column.
    top = rows.to(torch.uint8).argmax(dim=-1)
    left = cols.to(torch.uint8).argmax(dim=-1)
    bottom = h - 1 - rows.flip(-1).to(torch.uint8).argmax(dim=-1)
    right = w - 1 - cols.flip(-1).to(torch.uint8).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    return boxes * rows.any(dim=-1, keepdim=True)  # empty masks -> 0, 0, 0, 0


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes around binary masks.

    Args:
        masks: bool ``(..., H, W)``.
    Returns:
        int64 ``(..., 4)`` as ``x0, y0, x1, y1`` (inclusive), ``0, 0, 0, 0`` for an empty mask.
    """
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.int64, device=masks.device)
    as_bytes = masks.view(torch.uint8) if masks.dtype == torch.bool else (masks != 0).view(torch.uint8)
    # amax over bytes is several times faster than any() on bools.
    return _boxes_from_projections(as_bytes.amax(dim=-1).bool(), as_bytes.amax(dim=-2).bool())


def logits_to_boxes(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """``masks_to_boxes(logits > threshold)`` without building the masks: a row (column) holds a
    mask pixel exactly when its largest logit is above the threshold.

    Args:
        logits: float ``(..., H, W)``.
    Returns:
        int64 ``(..., 4)`` xyxy (inclusive), ``0, 0, 0, 0`` for an empty mask.
    """
    if logits.numel() == 0:
        return torch.zeros(*logits.shape[:-2], 4, dtype=torch.int64, device=logits.device)
    return _boxes_from_projections(logits.amax(dim=-1) > threshold, logits.amax(dim=-2) > threshold)


def box_xyxy_to_xywh(box: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` x0, y0, x1, y1 -> x, y, w, h (``w = x1 - x0``, the generator's convention)."""
    return torch.cat([box[..., :2], box[..., 2:] - box[..., :2]], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` xyxy -> ``(N,)`` ``(x1 - x0) * (y1 - y0)`` in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# --- non-maximum suppression ---------------------------------------------------------------------


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, block: int = 512) -> torch.Tensor:
    """Greedy non-maximum suppression, the same decisions as ``torchvision.ops.nms``.

    Boxes are visited by decreasing score (ties in input order); a box is dropped when its IoU with an
    already kept box is strictly greater than ``iou_threshold``. IoU uses ``(x1 - x0) * (y1 - y0)``
    areas. Memory stays ``O(block * N)``: overlaps are computed ``block`` rows at a time.

    Args:
        boxes: ``(N, 4)`` xyxy (any real or integer dtype; integers are compared as float32).
        scores: ``(N,)``.
    Returns:
        int64 indices of the kept boxes, by decreasing score, on the boxes' device.
    """
    device = boxes.device
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    b = boxes.detach().cpu()
    if not b.is_floating_point():
        b = b.float()
    order = scores.detach().cpu().argsort(descending=True, stable=True)
    b = b[order]
    x0, y0, x1, y1 = b.unbind(1)
    areas = (x1 - x0) * (y1 - y0)
    removed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        # Overlap of rows start..stop with every later box, in the same float operations as
        # torchvision (so boxes on the threshold are decided the same way).
        xx0 = torch.maximum(x0[start:stop, None], x0[None, start:])
        yy0 = torch.maximum(y0[start:stop, None], y0[None, start:])
        xx1 = torch.minimum(x1[start:stop, None], x1[None, start:])
        yy1 = torch.minimum(y1[start:stop, None], y1[None, start:])
        inter = (xx1 - xx0).clamp(min=0) * (yy1 - yy0).clamp(min=0)
        iou = inter / (areas[start:stop, None] + areas[None, start:] - inter)
        # torchvision compares the float IoU with the threshold as a double.
        suppress = (iou.double() > iou_threshold).numpy()
        for i in range(start, stop):
            if removed[i]:
                continue
            keep.append(i)
            row = suppress[i - start]
            removed[i + 1 :] |= row[i + 1 - start :]
    return order[torch.as_tensor(keep, dtype=torch.int64)].to(device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each category ``idxs``; the same kept set *and order* as ``torchvision.ops.batched_nms``.

    torchvision returns the kept indices re-sorted by an unstable sort of the scores when there are
    more than 1000 boxes on the CPU (25000 on a GPU); ties then come out in that sort's order. The
    order matters downstream (later NMS passes break ties by it), so it is reproduced here.

    Returns:
        int64 indices of the kept boxes, by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    classes = torch.unique(idxs)
    if classes.numel() == 1:
        keep = nms(boxes, scores, iou_threshold)
    else:
        keep_mask = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        for c in classes:
            members = torch.where(idxs == c)[0]
            keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
        keep = torch.where(keep_mask)[0]
        keep = keep[scores[keep].argsort(descending=True, stable=True)]
    if boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000):
        # torchvision's per-category path: kept indices in index order, then an unstable sort.
        keep = keep.sort()[0]
        keep = keep[scores[keep].sort(descending=True)[1]]
    return keep


# --- point grids and crops -----------------------------------------------------------------------


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``(n*n, 2)`` float64 points (x, y) at the centres of an ``n x n`` tiling of [0, 1]^2, row by row."""
    half_step = 1.0 / (2 * n_per_side)
    ticks = np.linspace(half_step, 1.0 - half_step, n_per_side)
    xs, ys = np.meshgrid(ticks, ticks)  # xs varies along a row, ys down the rows
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """Point grids for crop layers 0..n_layers; layer i has ``int(n / scale**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop windows: the whole image, then for layer i = 1..n_layers a ``2^i x 2^i`` grid of
    overlapping windows (overlap ``overlap_ratio * short side * 2 / 2^i`` pixels).

    Args:
        im_size: ``(H, W)``.
    Returns:
        boxes as ``[x0, y0, x1, y1]`` (exclusive ends) and the layer of each box. Within a layer,
        boxes go column by column (all y for the first x, then the next x).
    """
    im_h, im_w = im_size
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers = [0]
    short_side = min(im_h, im_w)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        # Window length so that per_side windows overlapping by `overlap` cover the side.
        crop_w = int(math.ceil((overlap * (per_side - 1) + im_w) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + im_h) / per_side))
        starts_x = [int((crop_w - overlap) * i) for i in range(per_side)]
        starts_y = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(starts_x, starts_y):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer)
    return boxes, layers


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """Which boxes come within ``atol`` pixels of a crop border that is not also an image border.

    Such masks are probably cut off by the crop, so the generator drops them.

    Args:
        boxes: ``(N, 4)`` xyxy in the crop's frame.
        crop_box, orig_box: xyxy of the crop and of the whole image, in the image frame.
    Returns:
        bool ``(N,)``.
    """
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    b = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = (b - crop[None]).abs() <= atol
    near_image = (b - image[None]).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """``(..., 4)`` boxes in a crop's frame -> the image frame."""
    x0, y0 = crop_box[0], crop_box[1]
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """``(..., 2)`` points (x, y) in a crop's frame -> the image frame."""
    return points + torch.tensor([crop_box[0], crop_box[1]], device=points.device)


def uncrop_masks(masks: torch.Tensor, crop_box: list[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """``(..., h, w)`` masks of a crop -> ``(..., orig_h, orig_w)``, zero outside the crop."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    return F.pad(masks, (x0, orig_w - x1, y0, orig_h - y1), value=0)


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str, keep_largest: bool = True
) -> tuple[np.ndarray, bool]:
    """Fill small holes (``mode="holes"``) or drop small islands (``mode="islands"``) of a mask.

    Regions are 8-connected. "Holes" are the connected regions of the complement, including the
    background that touches the image border, so a mask covering almost everything gets its
    leftover background filled too. If every island is small the largest one is kept (the official
    code), or none with ``keep_largest=False`` (the paper, Appendix B: the whole mask is removed).

    Args:
        mask: bool ``(H, W)``.
        area_thresh: regions of fewer pixels than this are changed.
    Returns:
        the new mask and whether anything changed.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', not {mode!r}")
    return _window_regions(mask, area_thresh, mode, np.zeros(mask.shape, dtype=bool), keep_largest)


def _window_regions(
    window: np.ndarray, area_thresh: float, mode: str, open_sides: np.ndarray, keep_largest: bool = True
) -> tuple[np.ndarray, bool]:
    """:func:`remove_small_regions` on a window cut out of a larger mask.

    ``open_sides`` marks the window's border pixels that continue into the big, connected rest of
    the image (always background there); the regions touching them are never small.
    """
    import cv2

    holes = mode == "holes"
    work = (window ^ holes).astype(np.uint8)
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(work, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = sizes < area_thresh
    if holes and open_sides.any():
        touching = np.unique(labels[open_sides])
        small[touching[touching > 0] - 1] = False
    if not small.any():
        return window, False
    selected = np.zeros(n_labels, dtype=bool)
    if holes:
        selected[0] = True
        selected[1:] = small
    else:
        selected[1:] = ~small
        if keep_largest and not selected.any():
            selected[int(np.argmax(sizes)) + 1] = True
    return selected[labels], True


def clean_small_regions(
    mask: np.ndarray, area_thresh: float, box: list[int] | None = None, keep_largest: bool = True
) -> tuple[np.ndarray, list[int], bool]:
    """Fill holes, then remove islands, smaller than ``area_thresh`` (the generator's clean-up).

    Equal to ``remove_small_regions(mode="holes")`` followed by ``mode="islands"`` on the whole
    mask, but computed on the mask's bounding box plus a one-pixel margin, which is much faster for
    the usual masks that cover a small part of the image. Inside the window every region is the
    same as in the whole image, except the background regions that reach the margin: those join the
    rest of the image's background and are never small. When that rest is small, split in two, or
    absent, the whole mask is processed instead.

    Args:
        mask: bool ``(H, W)``.
        box: the mask's tight box ``x0, y0, x1, y1`` (inclusive) if known; computed otherwise.
        keep_largest: when every island is small, keep the largest (official) or none (paper).
    Returns:
        the cleaned mask inside ``window``, the window ``x0, y0, x1, y1`` (exclusive ends) in the
        mask's frame, and whether anything changed. Outside the window the mask is empty.
    """
    h, w = mask.shape
    if box is None:
        box = masks_to_boxes(torch.from_numpy(np.ascontiguousarray(mask))).tolist()
    x0, y0, x1, y1 = box
    wx0, wy0, wx1, wy1 = max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 2), min(h, y1 + 2)
    outside = h * w - (wx1 - wx0) * (wy1 - wy0)
    spans_width, spans_height = wx0 == 0 and wx1 == w, wy0 == 0 and wy1 == h
    split = (spans_width and 0 < wy0 and wy1 < h) or (spans_height and 0 < wx0 and wx1 < w)
    window = mask[wy0:wy1, wx0:wx1]
    if outside == 0 or outside < area_thresh or split or not window.any():
        # Exact fallback: the rest of the image could hold small background regions.
        full, holes_changed = remove_small_regions(mask, area_thresh, "holes")
        full, islands_changed = remove_small_regions(full, area_thresh, "islands", keep_largest)
        return full, [0, 0, w, h], holes_changed or islands_changed
    open_sides = np.zeros(window.shape, dtype=bool)
    open_sides[0, :] |= wy0 > 0
    open_sides[-1, :] |= wy1 < h
    open_sides[:, 0] |= wx0 > 0
    open_sides[:, -1] |= wx1 < w
    window, holes_changed = _window_regions(window, area_thresh, "holes", open_sides)
    window, islands_changed = _window_regions(window, area_thresh, "islands", open_sides, keep_largest)
    return window, [wx0, wy0, wx1, wy1], holes_changed or islands_changed
