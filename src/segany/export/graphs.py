"""``nn.Module`` wrappers that define the exported ONNX graphs (inputs, outputs, conventions).

* :class:`EncoderGraph` -- ``image`` uint8 ``(h, w, 3)`` RGB, already resized so that its long side is the
  model's input size (1024; e.g. with :class:`segany.ops.transforms.ResizeLongestSide`) ->
  ``image_embeddings`` ``(1, C, g, g)``. Normalisation and zero padding to the square happen inside the
  graph. Resizing stays outside because the reference resizes with Pillow, which a graph cannot match
  exactly.
* :class:`OfficialDecoderGraph` -- the prompt encoder + mask decoder + post-processing with exactly the
  inputs, outputs and options of the official ``SamOnnxModel`` (``segment_anything/utils/onnx.py``), so
  tools written for the official ``sam_onnx_*.onnx`` files work unchanged.
* :class:`ImageCacheGraph` and :class:`LowResDecoderGraph` -- the split used by segany's own onnxruntime
  predictor: a per-image (and per-mask-prompt) cache, and a batched decoder returning low-resolution
  logits, which the predictor maps to image size with :func:`segany.ops.postprocess.upscale_logits`.
  SAM's decoder only: a SAM-HQ export has no split.
* :class:`HQDecoderGraph` -- SAM-HQ's decoder with the official SAM-HQ export's interface and options
  (``segment_anything_hq/utils/onnx.py``), except that the early features travel inside
  ``image_embeddings`` ``(1, C + early_dim, g, g)``, as the encoder graph of an HQ model outputs them
  (see :mod:`segany.model.hq`), instead of a separate ``interm_embeddings`` input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segany.inference.fast_decoder import DecoderImageCache, FastMaskDecoder, embed_points
from segany.model import Sam

__all__ = [
    "EncoderGraph",
    "HQDecoderGraph",
    "ImageCacheGraph",
    "LowResDecoderGraph",
    "OfficialDecoderGraph",
    "stability_score",
]


class EncoderGraph(nn.Module):
    """uint8 ``(h, w, 3)`` resized RGB image -> ``(1, C, g, g)`` embedding."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
        return self.model.image_encoder(self.model.preprocess(x))


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU between the masks thresholded at ``threshold + offset`` and ``threshold - offset``:
    ``(..., H, W) -> (...)``. The higher mask contains the lower one, so IoU = area ratio."""
    high = (logits > threshold + offset).to(torch.int32).sum(dim=(-1, -2))
    low = (logits > threshold - offset).to(torch.int32).sum(dim=(-1, -2))
    return high.to(torch.float32) / low.to(torch.float32)


class _ClickGraph(nn.Module):
    """What the official-interface decoder graphs share: the model, the fast decoder and its per-image
    cache, and the outputs (masks at the original size, scores, optional metrics, low-res masks)."""

    def __init__(self, model: Sam, use_stability_score: bool, return_extra_metrics: bool) -> None:
        super().__init__()
        self.model = model
        self.cache = DecoderImageCache(model)
        self.decoder = FastMaskDecoder(model)
        self.img_size = model.image_encoder.img_size
        self.use_stability_score = use_stability_score
        self.return_extra_metrics = return_extra_metrics
        self.stability_offset = 1.0

    def _outputs(
        self, masks: torch.Tensor, scores: torch.Tensor, orig_im_size: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """``masks (1, M, 4g, 4g)`` low-res logits -> ``upscaled, scores[, stability, areas], masks``."""
        upscaled = _to_image(masks, orig_im_size, self.img_size)
        if self.return_extra_metrics:
            threshold = self.model.mask_threshold
            stability = stability_score(upscaled, threshold, self.stability_offset)
            areas = (upscaled > threshold).sum(dim=(-1, -2))
            return upscaled, scores, stability, areas, masks
        return upscaled, scores, masks


class OfficialDecoderGraph(_ClickGraph):
    """Same interface as the official ``SamOnnxModel``.

    Inputs: ``image_embeddings (1, C, g, g)``; ``point_coords (1, K, 2)`` float, pixel coordinates of the
    resized frame (long side 1024); ``point_labels (1, K)`` float (1 fg, 0 bg, 2/3 box corners, -1
    padding: add a ``(0, 0)`` point labelled -1 when there is no box); ``mask_input (1, 1, 4g, 4g)``;
    ``has_mask_input (1,)``; ``orig_im_size (2,)`` float (H, W).
    Outputs: ``masks (1, M, H, W)`` logits at the original size, ``iou_predictions (1, M)``,
    ``low_res_masks (1, M, 4g, 4g)``; ``M`` = 4 (all mask tokens) or 1 with ``return_single_mask``.
    With ``return_extra_metrics``: ``masks, iou_predictions, stability_scores, areas, low_res_masks``.
    """

    def __init__(
        self,
        model: Sam,
        return_single_mask: bool = False,
        use_stability_score: bool = False,
        return_extra_metrics: bool = False,
    ) -> None:
        super().__init__(model, use_stability_score, return_extra_metrics)
        self.return_single_mask = return_single_mask
        weights = torch.zeros(1, model.mask_decoder.num_mask_tokens)
        weights[0, 0] = 1000.0
        self.register_buffer("single_mask_weight", weights, persistent=False)

    def _select(self, masks: torch.Tensor, scores: torch.Tensor, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Like the official export: the single-mask token wins for >= 3 points (e.g. a point + a
        # box), otherwise the best of the multimask tokens; written without control flow.
        score = scores + (num_points - 2.5) * self.single_mask_weight
        best = torch.argmax(score, dim=1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        return masks[rows, best].unsqueeze(1), scores[rows, best].unsqueeze(1)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        sparse = embed_points(self.model, point_coords, point_labels)
        cache = self.cache(image_embeddings, mask_input, has_mask_input)
        masks, scores = self.decoder(*cache, sparse)
        if self.use_stability_score:
            scores = stability_score(masks, self.model.mask_threshold, self.stability_offset)
        if self.return_single_mask:
            masks, scores = self._select(masks, scores, point_coords.shape[1])
        return self._outputs(masks, scores, orig_im_size)


def _to_image(masks: torch.Tensor, orig_im_size: torch.Tensor, s: int) -> torch.Tensor:
    """Low-resolution logits -> the original image size ``orig_im_size (2,)`` (the official post-processing)."""
    masks = F.interpolate(masks, size=(s, s), mode="bilinear", align_corners=False)
    size = orig_im_size.to(torch.float32)
    valid = torch.floor(size * (s / torch.max(size)) + 0.5).to(torch.int64)
    masks = masks[..., : valid[0], : valid[1]]
    out = orig_im_size.to(torch.int64)
    return F.interpolate(masks, size=(out[0], out[1]), mode="bilinear", align_corners=False)


class HQDecoderGraph(_ClickGraph):
    """SAM-HQ's decoder with the official SAM-HQ ``SamOnnxModel``'s options and outputs.

    Inputs: as :class:`OfficialDecoderGraph`, with ``image_embeddings (1, C + early_dim, g, g)`` (the HQ
    encoder graph's output). Outputs: ``masks (1, 1, H, W)``, ``iou_predictions (1, 1)``,
    ``low_res_masks (1, 1, 4g, 4g)`` (with ``return_extra_metrics``: ``masks, iou_predictions,
    stability_scores, areas, low_res_masks``). SAM's mask is its single-mask token's, or with
    ``multimask_output`` the best multimask token's by score (predicted IoU, or stability with
    ``use_stability_score``); the HQ mask is added to it, or replaces it with ``hq_token_only``.
    """

    def __init__(
        self,
        model: Sam,
        hq_token_only: bool = False,
        multimask_output: bool = False,
        use_stability_score: bool = False,
        return_extra_metrics: bool = False,
    ) -> None:
        super().__init__(model, use_stability_score, return_extra_metrics)
        if not self.decoder.hq:
            raise ValueError("HQDecoderGraph needs a SAM-HQ model")
        self.hq_token_only = hq_token_only
        self.multimask_output = multimask_output

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        sparse = embed_points(self.model, point_coords, point_labels)
        src, k1, v1, q1 = self.cache(image_embeddings, mask_input, has_mask_input)
        hq_features = self.cache.hq_features(image_embeddings)
        keys, hyper, scores = self.decoder.run_transformer(src, k1, v1, q1, sparse)
        upscaled = self.decoder.upscale_features(keys)  # (1, c2, 4g, 4g)
        b, _, h, w = upscaled.shape
        n = hyper.shape[1] - 1  # SAM's mask tokens; the HQ token's output is last
        sam_masks = (hyper[:, :n] @ upscaled.flatten(2)).view(b, n, h, w)
        if self.use_stability_score:  # of SAM's masks, as the official HQ export scores them
            scores = stability_score(sam_masks, self.model.mask_threshold, self.stability_offset)
        if self.multimask_output:
            scores, best = scores[:, 1:n].max(dim=1, keepdim=True)
            sam = sam_masks[:, 1:n].gather(1, best[..., None, None].expand(-1, 1, h, w))
        else:
            scores, sam = scores[:, :1], sam_masks[:, :1]
        maskfeature: Any = self.model.mask_decoder.embedding_maskfeature  # SAM-HQ's 3x3 refinement
        refined = maskfeature(upscaled) + hq_features
        masks = (hyper[:, n:] @ refined.flatten(2)).view(b, 1, h, w)
        if not self.hq_token_only:
            masks = sam + masks
        return self._outputs(masks, scores, orig_im_size)


class ImageCacheGraph(nn.Module):
    """``image_embeddings (1, C, g, g)``, ``mask_input (B, 1, 4g, 4g)``, ``has_mask_input (1,)`` ->
    ``src (B, N, C)``, ``k1, v1 (B, heads, N, e)``, ``q1 (B, N, d)`` (see :class:`DecoderImageCache`)."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.cache = DecoderImageCache(model)

    def forward(
        self, image_embeddings: torch.Tensor, mask_input: torch.Tensor, has_mask_input: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.cache(image_embeddings, mask_input, has_mask_input)


class LowResDecoderGraph(nn.Module):
    """Cache (batch 1 or B) + ``point_coords (B, K, 2)``, ``point_labels (B, K)`` (official label
    convention) -> ``low_res_masks (B, M, 4g, 4g)`` and ``iou_predictions (B, M)`` for all mask tokens."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.model = model
        self.decoder = FastMaskDecoder(model)

    def forward(
        self,
        src: torch.Tensor,
        k1: torch.Tensor,
        v1: torch.Tensor,
        q1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = embed_points(self.model, point_coords, point_labels)
        return self.decoder(src, k1, v1, q1, sparse)
