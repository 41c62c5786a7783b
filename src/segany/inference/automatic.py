"""Automatic mask generation: prompt SAM with a grid of points and keep the good, distinct masks.

:class:`SamAutomaticMaskGenerator` takes the official generator's arguments, defaults and record
format and keeps the same masks, but does less work for them:

* candidates are filtered by predicted IoU *before* their logits are upsampled (the official code
  upsamples every candidate to the image's full resolution first);
* the survivors are upsampled in bounded chunks, with exactly the official arithmetic, to compute
  stability, binary masks and boxes; only their low-resolution logits are kept afterwards;
* box NMS runs on the boxes before anything is encoded, and only the final masks are re-upsampled
  and encoded (the official code run-length encodes every candidate, in Python, before NMS);
* everything stays on the model's device until the final records.

It also adds ``max_mask_region_fraction`` (the paper's "drop masks covering >= 95% of the image")
and :meth:`SamAutomaticMaskGenerator.from_preset` with the SA-1B settings of the paper's Appendix B.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from segany.inference.amg_parts import (
    Candidates,
    CleanedMask,
    Crop,
    GeneratorSettingsError,
    check_settings,
    clean_mask_data,
)
from segany.inference.predictor import SamPredictor
from segany.io.image import read_image, to_rgb_uint8
from segany.model import Sam
from segany.ops.masks import (
    batched_nms,
    box_area,
    box_xyxy_to_xywh,
    clean_small_regions,
    count_above,
    generate_crop_boxes,
    is_box_near_crop_edge,
    logits_to_boxes,
    masks_to_boxes,
    stability_score,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from segany.ops.postprocess import upscale_logits

__all__ = ["SamAutomaticMaskGenerator", "GeneratorSettingsError", "GENERATOR_PRESETS", "SAM_MASK_THRESHOLDS",
           "model_mask_thresholds"]

# Appendix B of the paper: a 32x32 grid on the image plus 2x2 and 4x4 crops with 16x16 and 8x8 grids,
# IoU >= 0.88, stability >= 0.95, NMS 0.7 within and across crops, 100 px clean-up, no >= 95% masks.
GENERATOR_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "sa1b": {
        "points_per_side": 32,
        "crop_n_layers": 2,
        "crop_n_points_downscale_factor": 2,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "stability_score_offset": 1.0,
        "box_nms_thresh": 0.7,
        "crop_nms_thresh": 0.7,
        "min_mask_region_area": 100,
        "max_mask_region_fraction": 0.95,
        "drop_masks_with_only_small_regions": True,
    },
}

# Upper bound on float elements held at once while upsampling candidates (128 MB of float32).
_CHUNK_ELEMENTS = 1 << 25


# SAM's filters (paper, appendix B), used for any model that does not carry its own.
SAM_MASK_THRESHOLDS = (0.88, 0.95)


def model_mask_thresholds(model: Any) -> tuple[float, float]:
    """The (predicted IoU, stability) thresholds a model's automatic masks are kept at by default.

    ``model``: a :class:`~segany.model.Sam` or a predictor (its ``model`` then holds the configuration:
    a :class:`~segany.model.SamConfig`, or the dict of an ONNX export). SAM's own pair unless the
    configuration's ``auto_mask_thresholds`` says otherwise.
    """
    if not isinstance(model, Sam):
        model = getattr(model, "model", None)
    config = getattr(model, "config", None)
    key = "auto_mask_thresholds"
    own = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
    if own is None:
        return SAM_MASK_THRESHOLDS
    return float(own[0]), float(own[1])


class SamAutomaticMaskGenerator:
    """Generate masks for a whole image from a grid of point prompts (official API and records).

    Args: the official ones (same defaults and meaning):
        model: a :class:`~segany.model.Sam`, or a predictor that also offers ``predict_low_res``
            (decoder output only), such as :class:`~segany.inference.onnx_backend.OnnxPredictor`.
        points_per_side: grid points per image side (``points_per_side**2`` prompts); None with
            ``point_grids``.
        points_per_batch: prompts decoded at once.
        pred_iou_thresh: keep masks whose predicted IoU is above this (no filter when <= 0). None
            (the default): the model's own (``config.auto_mask_thresholds``), else the official 0.88.
        stability_score_thresh: keep masks whose stability is at least this (no filter when <= 0).
            None: the model's own, else the official 0.95.
        stability_score_offset: logit offset of the two thresholds compared by the stability score.
        box_nms_thresh: box IoU above which a lower-scored mask of the same crop is a duplicate.
        crop_n_layers: extra layers of crops (layer i has ``(2**i)**2`` crops).
        crop_nms_thresh: box IoU for duplicates across crops (masks from smaller crops win).
        crop_overlap_ratio: overlap of neighbouring first-layer crops, as a fraction of the short side.
        crop_n_points_downscale_factor: points per side in layer i are divided by this ``**i``.
        point_grids: explicit ``(N, 2)`` grids in [0, 1] per layer, instead of ``points_per_side``.
        min_mask_region_area: fill holes and remove islands smaller than this (pixels), then re-run
            NMS; 0 disables.
        output_mode: ``binary_mask`` (bool ``(H, W)`` arrays), ``uncompressed_rle`` or ``coco_rle``.
    And one of ours:
        max_mask_region_fraction: drop masks covering at least this fraction of the image (the
            paper drops >= 0.95 for SA-1B); None keeps them, as the official code does.
        drop_masks_with_only_small_regions: in the clean-up, drop a mask whose every island is
            smaller than ``min_mask_region_area`` (the paper); False keeps its largest island, as
            the official code does.
    """

    def __init__(
        self,
        model: Sam | Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        max_mask_region_fraction: float | None = None,
        drop_masks_with_only_small_regions: bool = False,
    ) -> None:
        own = model_mask_thresholds(model)
        pred_iou_thresh = own[0] if pred_iou_thresh is None else pred_iou_thresh
        stability_score_thresh = own[1] if stability_score_thresh is None else stability_score_thresh
        self.point_grids = check_settings(
            points_per_side, point_grids, points_per_batch, crop_n_layers, crop_n_points_downscale_factor,
            output_mode, max_mask_region_fraction, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh, crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
            min_mask_region_area=min_mask_region_area,
        )
        if isinstance(model, Sam):
            self.predictor: Any = SamPredictor(model)
        elif hasattr(model, "predict_low_res") and hasattr(model, "set_image"):
            self.predictor = model  # e.g. an OnnxPredictor: it decodes, we filter
        else:
            raise GeneratorSettingsError(
                f"expected a Sam model or a predictor with predict_low_res, got {type(model).__name__}"
            )
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.drop_masks_with_only_small_regions = drop_masks_with_only_small_regions
        self.output_mode = output_mode
        self.max_mask_region_fraction = max_mask_region_fraction
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_preset(cls, model: Sam | Any, preset: str = "default", **overrides: Any) -> "SamAutomaticMaskGenerator":
        """A generator with named settings: ``"default"`` (the official defaults) or ``"sa1b"`` (the
        paper's SA-1B data-engine settings); ``overrides`` replace single settings."""
        if preset not in GENERATOR_PRESETS:
            raise GeneratorSettingsError(f"unknown preset {preset!r}; choose from {', '.join(GENERATOR_PRESETS)}")
        settings = {**GENERATOR_PRESETS[preset], **overrides}
        if settings.get("point_grids") is not None and "points_per_side" not in overrides:
            settings["points_per_side"] = None
        return cls(model, **settings)

    # -- public API ------------------------------------------------------------------------------

    @staticmethod
    def postprocess_small_regions(mask_data: Any, min_area: int, nms_thresh: float) -> Any:
        """The official static clean-up step, for code that calls it on its own ``MaskData``: remove
        holes and islands under ``min_area`` pixels from each of ``mask_data["rles"]``, then NMS at
        ``nms_thresh`` preferring unchanged masks. :meth:`generate` does the same work without
        run-length encoding every candidate. See :func:`segany.inference.amg_parts.clean_mask_data`."""
        return clean_mask_data(mask_data, min_area, nms_thresh)

    @torch.no_grad()
    def generate(self, image: np.ndarray | str | os.PathLike[str]) -> list[dict[str, Any]]:
        """Masks for an ``(H, W, 3)`` uint8 RGB image (other arrays are converted) or an image file.

        Returns:
            one record per mask: ``segmentation`` (per ``output_mode``), ``area`` (pixels), ``bbox``
            (x, y, w, h), ``predicted_iou``, ``point_coords`` (``[[x, y]]``), ``stability_score``
            and ``crop_box`` (x, y, w, h), in the official generator's order.
        """
        start = time.perf_counter()
        self.last_timings = defaultdict(float)
        image = read_image(image) if isinstance(image, (str, os.PathLike)) else to_rgb_uint8(image)
        height, width = image.shape[:2]
        boxes, layers = generate_crop_boxes((height, width), self.crop_n_layers, self.crop_overlap_ratio)
        crops: list[Crop] = []
        parts: list[Candidates] = []
        for index, (box, layer) in enumerate(zip(boxes, layers)):
            crop, found = self._process_crop(image, box, layer, index)
            crops.append(crop)
            parts.append(found)
        data = Candidates.cat(parts)

        tick = time.perf_counter()
        if len(crops) > 1 and len(data):
            # Duplicates across crops: the mask from the smaller (more zoomed-in) crop wins.
            crop_boxes = torch.tensor([c.box for c in crops], device=data.boxes.device)[data.crop]
            keep = batched_nms(
                data.boxes.float(), 1 / box_area(crop_boxes), torch.zeros_like(data.crop), self.crop_nms_thresh
            )
            data = data.take(keep)
        self.last_timings["nms"] += time.perf_counter() - tick

        tick = time.perf_counter()
        replaced: dict[int, CleanedMask] = {}
        if self.min_mask_region_area > 0 and len(data):
            data, replaced = self._clean_up(data, crops, (height, width))
        self.last_timings["postprocess"] += time.perf_counter() - tick

        tick = time.perf_counter()
        records = self._records(data, crops, (height, width), replaced)
        self.last_timings["encode"] += time.perf_counter() - tick
        self.last_timings["total"] = time.perf_counter() - start
        self.last_timings = dict(self.last_timings)
        return records

    # -- one crop ----------------------------------------------------------------------------------

    def _process_crop(self, image: np.ndarray, box: list[int], layer: int, index: int) -> tuple[Crop, Candidates]:
        x0, y0, x1, y1 = box
        tick = time.perf_counter()
        self.predictor.set_image(np.ascontiguousarray(image[y0:y1, x0:x1]))
        self.last_timings["encoder"] += time.perf_counter() - tick
        assert self.predictor.input_size is not None
        size = (y1 - y0, x1 - x0)
        crop = Crop(box=list(box), size=size, input_size=self.predictor.input_size)
        # Grid in [0, 1] -> crop pixels (x scaled by the width, y by the height).
        points = self.point_grids[layer] * np.array(size)[None, ::-1]
        parts = [
            self._process_batch(points[i : i + self.points_per_batch], crop, index, image.shape[:2])
            for i in range(0, len(points), self.points_per_batch)
        ]
        self.predictor.reset_image()
        data = Candidates.cat(parts)

        tick = time.perf_counter()
        # Duplicates within the crop, best predicted IoU first (boxes still in the crop's frame).
        keep = batched_nms(data.boxes.float(), data.iou, torch.zeros_like(data.crop), self.box_nms_thresh)
        data = data.take(keep)
        data.boxes = uncrop_boxes_xyxy(data.boxes, box)
        data.points = uncrop_points(data.points, box)
        self.last_timings["nms"] += time.perf_counter() - tick
        return crop, data

    def _process_batch(
        self, points: np.ndarray, crop: Crop, crop_index: int, image_size: tuple[int, int]
    ) -> Candidates:
        """Decode a batch of point prompts and keep the masks that pass the filters."""
        model = self.predictor.model
        device = self.predictor.device
        tick = time.perf_counter()
        coords = torch.as_tensor(self.predictor.transform.apply_coords(points, crop.size), device=device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=device)
        # Masks the IoU filter below will drop need no upscaling: skip prompts with none left.
        skip = self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else None
        low_res, iou = self.predictor.predict_low_res(
            coords[:, None], labels[:, None], multimask_output=True, skip_below=skip
        )
        per_point = low_res.shape[1]
        low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)
        pts = torch.as_tensor(points, device=device).repeat_interleave(per_point, dim=0)
        self.last_timings["decoder"] += time.perf_counter() - tick

        tick = time.perf_counter()
        # The predicted-IoU filter needs no upsampling: apply it first.
        if self.pred_iou_thresh > 0.0:
            keep = iou > self.pred_iou_thresh
            low_res, iou, pts = low_res[keep], iou[keep], pts[keep]
        h, w = crop.size
        image_box = [0, 0, image_size[1], image_size[0]]
        max_area = self._max_area(image_size)
        kept: list[Candidates] = []
        for sl in self._chunks(low_res.shape[0], h * w):
            logits = upscale_logits(low_res[sl], crop.input_size, crop.size, model.image_size)
            stability = stability_score(logits, model.mask_threshold, self.stability_score_offset)
            sel = torch.arange(sl.start, sl.stop, device=device)
            good = ~stability.isnan()  # an empty mask (0 / 0) is no mask, whatever the threshold
            if self.stability_score_thresh > 0.0:
                good &= stability >= self.stability_score_thresh
            if not bool(good.all()):
                logits, stability, sel = logits[good], stability[good], sel[good]
            boxes = logits_to_boxes(logits, model.mask_threshold)
            good = ~is_box_near_crop_edge(boxes, crop.box, image_box)
            if max_area is not None:
                good &= count_above(logits, model.mask_threshold) < max_area
            del logits
            sel = sel[good]
            kept.append(
                Candidates(
                    low_res=low_res[sel],
                    boxes=boxes[good],
                    iou=iou[sel],
                    stability=stability[good],
                    points=pts[sel],
                    crop=torch.full((len(sel),), crop_index, dtype=torch.int64, device=device),
                )
            )
        self.last_timings["filter"] += time.perf_counter() - tick
        if not kept:
            return self._empty(low_res, device)
        return Candidates.cat(kept)

    # -- after all crops ---------------------------------------------------------------------------

    def _clean_up(
        self, data: Candidates, crops: list[Crop], image_size: tuple[int, int]
    ) -> tuple[Candidates, dict[int, CleanedMask]]:
        """Fill small holes, drop small islands, then NMS again preferring unchanged masks.

        Returns the kept candidates (boxes of changed masks updated) and every kept mask after the
        clean-up, by its new position, so that the masks need not be upsampled again.
        """
        area = self.min_mask_region_area
        new_boxes = torch.zeros((len(data), 4), dtype=torch.int64)
        unchanged = torch.ones(len(data), dtype=torch.float32)
        alive = torch.ones(len(data), dtype=torch.bool)
        keep_largest = not self.drop_masks_with_only_small_regions
        windows: list[CleanedMask] = []
        for sl, masks in self._full_masks(data, crops, image_size):
            boxes = data.boxes[sl].tolist()
            for offset, mask in enumerate(masks.cpu().numpy()):
                pos = sl.start + offset
                cleaned, box, changed = clean_small_regions(mask, area, boxes[offset], keep_largest)
                if changed:
                    unchanged[pos] = 0.0
                    alive[pos] = keep_largest or bool(cleaned.any())
                if cleaned.any():  # an empty mask keeps the box 0, 0, 0, 0
                    inner = masks_to_boxes(torch.from_numpy(np.ascontiguousarray(cleaned)))
                    new_boxes[pos] = inner + torch.tensor([box[0], box[1], box[0], box[1]])
                windows.append(CleanedMask(box, np.packbits(cleaned), cleaned.shape))
        thresh = max(self.box_nms_thresh, self.crop_nms_thresh)
        rows_alive = torch.nonzero(alive).squeeze(1)
        groups = torch.zeros(len(rows_alive), dtype=torch.int64)
        keep = rows_alive[batched_nms(new_boxes[rows_alive].float(), unchanged[rows_alive], groups, thresh)]
        data = data.take(keep)
        kept = keep.tolist()
        # The official generator updates the box of a changed mask only if it survives this NMS.
        changed_rows = [pos for pos, old in enumerate(kept) if unchanged[old] == 0.0]
        if changed_rows:
            rows = torch.tensor(changed_rows)
            data.boxes[rows.to(data.boxes.device)] = new_boxes[keep[rows]].to(data.boxes.device)
        return data, {pos: windows[old] for pos, old in enumerate(kept)}

    def _records(
        self,
        data: Candidates,
        crops: list[Crop],
        image_size: tuple[int, int],
        replaced: dict[int, CleanedMask],
    ) -> list[dict[str, Any]]:
        from segany.io.rle import encode_masks, masks_to_uncompressed_rle_torch

        height, width = image_size
        max_area = self._max_area(image_size)
        boxes = box_xyxy_to_xywh(data.boxes).tolist()
        ious, stabilities = data.iou.tolist(), data.stability.tolist()
        points = data.points.tolist()
        crop_xywh = [box_xyxy_to_xywh(torch.tensor(c.box)).tolist() for c in crops]
        crop_of = data.crop.tolist()
        records: list[dict[str, Any]] = []
        for sl, masks in self._full_masks(data, crops, image_size, cleaned=bool(replaced)):
            if replaced:  # after the clean-up every kept mask is stored: no upsampling
                for pos in range(sl.start, sl.stop):
                    replaced[pos].paste(masks[pos - sl.start])
            areas = count_above(masks.view(torch.uint8), 0).tolist()
            if self.output_mode == "coco_rle":
                segmentations: list[Any] = encode_masks(masks)
            elif self.output_mode == "uncompressed_rle":
                segmentations = masks_to_uncompressed_rle_torch(masks)
            else:
                segmentations = list(masks.cpu().numpy())
            for j, pos in enumerate(range(sl.start, sl.stop)):
                if max_area is not None and areas[j] >= max_area:
                    continue  # hole filling can push a mask over the limit
                records.append(
                    {
                        "segmentation": segmentations[j],
                        "area": int(areas[j]),
                        "bbox": boxes[pos],
                        "predicted_iou": ious[pos],
                        "point_coords": [points[pos]],
                        "stability_score": stabilities[pos],
                        "crop_box": crop_xywh[crop_of[pos]],
                    }
                )
        return records

    # -- helpers -------------------------------------------------------------------------------------

    def _full_masks(
        self, data: Candidates, crops: list[Crop], image_size: tuple[int, int], cleaned: bool = False
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Binary masks of the candidates in the image frame, ``(n, H, W)`` bool, chunk by chunk
        (all False with ``cleaned``: the caller pastes the stored cleaned-up masks)."""
        model = self.predictor.model
        height, width = image_size
        for sl in self._chunks(len(data), height * width):
            crop_ids = data.crop[sl]
            shape = (sl.stop - sl.start, height, width)
            if cleaned:
                yield sl, torch.zeros(shape, dtype=torch.bool, device=data.low_res.device)
                continue
            out = torch.empty(shape, dtype=torch.bool, device=data.low_res.device)
            for crop_id in torch.unique(crop_ids).tolist():
                crop = crops[crop_id]
                rows = torch.nonzero(crop_ids == crop_id)[:, 0]
                logits = upscale_logits(data.low_res[sl][rows], crop.input_size, crop.size, model.image_size)
                out[rows] = uncrop_masks(logits > model.mask_threshold, crop.box, height, width)
            yield sl, out

    def _chunks(self, n: int, pixels: int) -> Iterator[slice]:
        """Slices of ``n`` masks small enough that their upsampled logits fit the memory bound."""
        s = self.predictor.model.image_size
        per_mask = s * s + pixels  # the padded-square intermediate plus the result
        step = max(1, min(n, _CHUNK_ELEMENTS // per_mask))
        for begin in range(0, n, step):
            yield slice(begin, min(n, begin + step))

    def _max_area(self, image_size: tuple[int, int]) -> float | None:
        if self.max_mask_region_fraction is None:
            return None
        return self.max_mask_region_fraction * image_size[0] * image_size[1]

    @staticmethod
    def _empty(like: torch.Tensor, device: torch.device) -> Candidates:
        return Candidates(
            low_res=like[:0],
            boxes=torch.zeros((0, 4), dtype=torch.int64, device=device),
            iou=torch.zeros(0, device=device),
            stability=torch.zeros(0, device=device),
            points=torch.zeros((0, 2), dtype=torch.float64, device=device),
            crop=torch.zeros(0, dtype=torch.int64, device=device),
        )
