"""The automatic generator's intermediate state: crops, candidate masks and cleaned-up masks.

Candidates keep only their low-resolution logits (``4h x 4w`` floats each, whatever the image size);
their full-resolution masks are recomputed when needed, so memory stays bounded by the number of
candidates rather than by the image size times that number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segany.errors import SeganyError
from segany.io.rle import decode_rle, is_uncompressed_rle, mask_to_uncompressed_rle, to_coco_rle
from segany.ops.masks import batched_nms, build_all_layer_point_grids, masks_to_boxes, remove_small_regions

__all__ = [
    "Crop",
    "Candidates",
    "CleanedMask",
    "GeneratorSettingsError",
    "check_settings",
    "clean_mask_data",
    "OUTPUT_MODES",
]

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


class GeneratorSettingsError(SeganyError, ValueError):
    """An automatic-generator setting is out of range or inconsistent."""


def check_settings(
    points_per_side: int | None,
    point_grids: list[np.ndarray] | None,
    points_per_batch: int,
    crop_n_layers: int,
    crop_n_points_downscale_factor: int,
    output_mode: str,
    max_mask_region_fraction: float | None,
    **thresholds: float,
) -> list[np.ndarray]:
    """Validate the generator's settings; return the point grid of each crop layer (``(N, 2)`` in [0, 1]).

    ``thresholds``: any of ``pred_iou_thresh``, ``stability_score_thresh``, ``stability_score_offset``,
    ``box_nms_thresh``, ``crop_nms_thresh``, ``crop_overlap_ratio``, ``min_mask_region_area``.

    Raises:
        GeneratorSettingsError: with a message naming the setting.
    """
    _check_thresholds(thresholds)
    if (points_per_side is None) == (point_grids is None):
        raise GeneratorSettingsError("give exactly one of points_per_side and point_grids")
    if output_mode not in OUTPUT_MODES:
        raise GeneratorSettingsError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}, not {output_mode!r}")
    if points_per_batch < 1:
        raise GeneratorSettingsError(f"points_per_batch must be >= 1, got {points_per_batch}")
    if crop_n_layers < 0:
        raise GeneratorSettingsError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
    if crop_n_points_downscale_factor < 1:
        raise GeneratorSettingsError("crop_n_points_downscale_factor must be >= 1")
    if max_mask_region_fraction is not None and not 0.0 < max_mask_region_fraction <= 1.0:
        raise GeneratorSettingsError(f"max_mask_region_fraction must be in (0, 1], got {max_mask_region_fraction}")
    if point_grids is not None:
        if len(point_grids) < crop_n_layers + 1:
            raise GeneratorSettingsError(f"point_grids needs one grid per layer ({crop_n_layers + 1})")
        return [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in point_grids]
    assert points_per_side is not None
    if points_per_side < 1:
        raise GeneratorSettingsError(f"points_per_side must be >= 1, got {points_per_side}")
    if int(points_per_side / crop_n_points_downscale_factor**crop_n_layers) < 1:
        raise GeneratorSettingsError("the last crop layer would get no points; use fewer layers")
    return build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)


# name -> (low, high, whether the high end is allowed); a NaN fails every comparison and is refused too.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "pred_iou_thresh": (-math.inf, math.inf, False),
    "stability_score_thresh": (-math.inf, math.inf, False),
    "stability_score_offset": (0.0, math.inf, False),
    "box_nms_thresh": (0.0, 1.0, True),
    "crop_nms_thresh": (0.0, 1.0, True),
    "crop_overlap_ratio": (0.0, 1.0, False),
    "min_mask_region_area": (0.0, math.inf, False),
}


def _check_thresholds(values: dict[str, float]) -> None:
    for name, value in values.items():
        low, high, closed = _RANGES[name]
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise GeneratorSettingsError(f"{name} must be a number, got {value!r}") from None
        if not (low <= v and (v <= high if closed else v < high)):
            where = "a finite number" if math.isinf(high) and math.isinf(low) else (
                f">= {low:g}" if math.isinf(high) else f"in [{low:g}, {high:g}{']' if closed else ')'}")
            raise GeneratorSettingsError(f"{name} must be {where}, got {value}")


@dataclass
class Crop:
    """One window of the image and what its masks need to be brought back to full resolution."""

    box: list[int]  # x0, y0, x1, y1 in the image
    size: tuple[int, int]  # (h, w) of the crop
    input_size: tuple[int, int]  # (h, w) of the crop resized for the encoder


@dataclass
class Candidates:
    """Masks that passed the filters; full-resolution masks are recomputed from ``low_res``."""

    low_res: torch.Tensor  # (N, 4h, 4w) logits
    boxes: torch.Tensor  # (N, 4) int64 xyxy in the image frame
    iou: torch.Tensor  # (N,) predicted IoU
    stability: torch.Tensor  # (N,)
    points: torch.Tensor  # (N, 2) float64 prompt (x, y) in the image frame
    crop: torch.Tensor  # (N,) int64 index into the crop list

    def take(self, index: torch.Tensor) -> "Candidates":
        return Candidates(*(t[index.to(t.device)] for t in self._fields()))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.low_res, self.boxes, self.iou, self.stability, self.points, self.crop)

    @classmethod
    def cat(cls, parts: list["Candidates"]) -> "Candidates":
        return cls(*(torch.cat(ts) for ts in zip(*(p._fields() for p in parts))))

    def __len__(self) -> int:
        return int(self.iou.shape[0])


@dataclass
class CleanedMask:
    """A cleaned-up mask stored compactly: its bits inside ``box`` (x0, y0, x1, y1, exclusive)."""

    box: list[int]
    bits: np.ndarray  # np.packbits of the (h, w) window
    shape: tuple[int, ...]

    def paste(self, out: torch.Tensor) -> None:
        """Write the mask into ``out`` (H, W, all False outside the window)."""
        x0, y0, x1, y1 = self.box
        count = int(np.prod(self.shape))
        window = np.unpackbits(self.bits, count=count).reshape(self.shape).astype(bool)
        out[y0:y1, x0:x1] = torch.from_numpy(window).to(out.device)


def _take(value: Any, keep: torch.Tensor) -> Any:
    """Rows ``keep`` of a tensor, array or list (what the official ``MaskData.filter`` does)."""
    if isinstance(value, torch.Tensor):
        return value[keep.to(value.device)]
    if isinstance(value, np.ndarray):
        return value[keep.cpu().numpy()]
    if isinstance(value, list):
        return [value[i] for i in keep.tolist()]
    if value is None:
        return None
    raise TypeError(f"cannot filter a {type(value).__name__}")


def clean_mask_data(mask_data: Any, min_area: int, nms_thresh: float) -> Any:
    """The official ``SamAutomaticMaskGenerator.postprocess_small_regions`` on a ``MaskData``-like object.

    Every mask of ``mask_data["rles"]`` (uncompressed or COCO RLEs) gets its holes and then its islands
    smaller than ``min_area`` removed (the largest island stays when all are small, as officially); masks
    that changed lose to unchanged ones in a box NMS at ``nms_thresh``; the kept masks that changed get
    their new RLE (in the format they came in) and box (``mask_data["boxes"]``, XYXY), and every field is
    filtered to the kept rows: with ``mask_data.filter(keep)`` when it has one (the official
    ``MaskData``), otherwise key by key (a ``dict``). Returns ``mask_data``, changed in place.
    """
    rles = mask_data["rles"]
    if len(rles) == 0:
        return mask_data
    masks, scores = [], []
    for rle in rles:
        mask = decode_rle(rle)
        mask, holes = remove_small_regions(mask, min_area, "holes")
        mask, islands = remove_small_regions(mask, min_area, "islands")
        masks.append(torch.from_numpy(np.ascontiguousarray(mask)))
        scores.append(0.0 if holes or islands else 1.0)  # prefer masks that needed no clean-up
    stacked = torch.stack(masks)
    boxes = masks_to_boxes(stacked)
    score = torch.tensor(scores)
    keep = batched_nms(boxes.float(), score, torch.zeros(len(boxes), dtype=torch.int64), nms_thresh)
    for i in keep.tolist():
        if score[i] == 0.0:
            old = rles[i]
            new = mask_to_uncompressed_rle(stacked[i])
            rles[i] = new if is_uncompressed_rle(old) else to_coco_rle(new)
            old_boxes = mask_data["boxes"]
            if isinstance(old_boxes, torch.Tensor):
                old_boxes[i] = boxes[i].to(old_boxes.device, old_boxes.dtype)
            else:
                old_boxes[i] = boxes[i].numpy() if isinstance(old_boxes, np.ndarray) else boxes[i].tolist()
    if hasattr(mask_data, "filter"):
        mask_data.filter(keep)
    else:
        for key in list(mask_data):
            mask_data[key] = _take(mask_data[key], keep)
    return mask_data
