"""The Segment Anything model: image encoder, prompt encoder and mask decoder, plus the fixed
pre-/post-processing that maps between image pixels and the model's square input frame."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segany.model.image_encoder import ImageEncoderViT
from segany.model.mask_decoder import MaskDecoder
from segany.model.prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"
    pixel_mean: torch.Tensor  # buffer (3, 1, 1)
    pixel_std: torch.Tensor  # buffer (3, 1, 1)

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # Not persistent: official checkpoints do not store them.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        self.config: Any = None  # set by the builder: the SamConfig this model was made from

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    def forward(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, torch.Tensor]]:
        """Predict masks end to end for a batch of images, each with its own prompts.

        Each input dict holds ``image`` ``(3, H, W)`` already resized so its long side is ``image_size``,
        ``original_size`` (H0, W0), and optionally ``point_coords`` ``(B, N, 2)``, ``point_labels``
        ``(B, N)``, ``boxes`` ``(B, 4)`` and ``mask_inputs`` ``(B, 1, 4h, 4w)`` in the resized frame, and
        ``text_embeds`` ``(B, D)`` (CLIP embeddings; models with a text path only).
        Each output dict holds ``masks`` ``(B, M, H0, W0)`` bool, ``iou_predictions`` ``(B, M)`` and
        ``low_res_logits`` ``(B, M, 4h, 4w)``. Gradients flow: wrap in ``torch.no_grad()`` for inference.
        """
        images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
        embeddings = self.image_encoder(images)
        outputs = []
        for record, embedding in zip(batched_input, embeddings):
            points = None
            if record.get("point_coords") is not None:
                points = (record["point_coords"], record["point_labels"])
            text = record.get("text_embeds")
            extra = {} if text is None else {"text": text}  # the official call when there is no text
            sparse, dense = self.prompt_encoder(points, record.get("boxes"), record.get("mask_inputs"), **extra)
            low_res, iou = self.mask_decoder(
                embedding.unsqueeze(0), self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output
            )
            masks = self.postprocess_masks(low_res, record["image"].shape[-2:], record["original_size"])
            outputs.append(
                {"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res}
            )
        return outputs

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """Low-resolution logits ``(B, M, 4h, 4w)`` -> logits ``(B, M, H0, W0)`` on the original image:
        upsample to the padded input square, drop the padding, resize to the original size."""
        s = self.image_size
        masks = F.interpolate(masks, (s, s), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise pixel values and zero-pad ``(..., 3, H, W)`` to ``(..., 3, S, S)``."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        s = self.image_size
        return F.pad(x, (0, s - w, 0, s - h))
