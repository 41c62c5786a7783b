"""Prompt encoder: sparse prompts (points, box corners) to tokens, dense prompts (a mask) to a map.

Sparse prompts become ``(B, N, C)`` tokens: a random-Fourier positional encoding of the location plus a
learned embedding of its kind (background point, foreground point, box top-left, box bottom-right, or
"not a point" for padding). An optional text path (SAM paper, section 7.5) projects a CLIP embedding
``(B, D)`` into one more sparse token; models built without it hold no extra weights and match the
official checkpoints exactly. A mask prompt ``(B, 1, 4h, 4w)`` is downscaled by convolutions to the image
embedding's ``(B, C, h, w)``; without one, a learned "no mask" vector fills that map.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from segany.model.common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random Gaussian Fourier features (Tancik et al. 2020)."""

    positional_encoding_gaussian_matrix: torch.Tensor  # buffer (2, num_pos_feats)

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` coordinates in [0, 1] -> ``(..., 2 * num_pos_feats)`` features."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an ``h x w`` grid: ``(C, h, w)``."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=matrix.device, dtype=matrix.dtype) + 0.5) / h
        xs = (torch.arange(w, device=matrix.device, dtype=matrix.dtype) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode pixel coordinates ``(B, N, 2)`` (x, y) of an image of ``image_size`` (h, w)."""
        h, w = image_size
        size = torch.tensor([w, h], device=coords.device, dtype=torch.float32)
        return self._encode(coords.float() / size)


class PromptEncoder(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
        text_embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right.
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.text_embed_dim = text_embed_dim
        self.text_proj: nn.Sequential | None = None
        if text_embed_dim is not None:
            if text_embed_dim < 1:
                raise ValueError(f"text_embed_dim must be >= 1, got {text_embed_dim}")
            # CLIP embedding -> one token. The paper does not give this projection; a two-layer MLP lets
            # the token live in the prompt space without forcing CLIP's geometry onto it.
            self.text_proj = nn.Sequential(
                nn.Linear(text_embed_dim, embed_dim), activation(), nn.Linear(embed_dim, embed_dim)
            )

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: ``(1, C, h, w)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _point_kind(self, index: int) -> torch.Tensor:
        """The learned embedding of point kind ``index`` (0 background, 1 foreground, 2-3 box corners): (1, C)."""
        return cast(nn.Embedding, self.point_embeddings[index]).weight

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel index -> pixel centre
        if pad:
            # Without a box, a "not a point" token is appended (the official model was trained so).
            b = points.shape[0]
            points = torch.cat([points, points.new_zeros(b, 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(b, 1)], dim=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        is_pad = (labels == -1).unsqueeze(-1)
        kind = torch.where(
            labels.unsqueeze(-1) == 1,
            self._point_kind(1),
            self._point_kind(0),
        )
        kind = torch.where(is_pad, self.not_a_point_embed.weight, kind)
        # Padding tokens carry no location; any label other than 0, 1, -1 gets only its location.
        known = ((labels == 0) | (labels == 1) | (labels == -1)).unsqueeze(-1)
        return torch.where(is_pad, kind, pe + torch.where(known, kind, torch.zeros_like(kind)))

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        kinds = torch.cat([self._point_kind(2), self._point_kind(3)], dim=0)
        return pe + kinds

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """CLIP embeddings ``(B, D)`` (image or text; L2-normalised here) -> tokens ``(B, 1, C)``."""
        if self.text_proj is None:
            raise ValueError("this model has no text prompt path (its configuration has text_embed_dim=None)")
        if text.ndim != 2 or text.shape[1] != self.text_embed_dim:
            raise ValueError(f"text embeddings must be (B, {self.text_embed_dim}), got {tuple(text.shape)}")
        weight = cast(nn.Linear, self.text_proj[0]).weight
        return self.text_proj(F.normalize(text.to(weight.dtype), dim=-1)).unsqueeze(1)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: coordinates ``(B, N, 2)`` in the model's input frame and labels ``(B, N)``
                (1 foreground, 0 background, -1 padding).
            boxes: ``(B, 4)`` as x0, y0, x1, y1 in the input frame.
            masks: ``(B, 1, 4h, 4w)`` mask logits.
            text: ``(B, D)`` CLIP embeddings (models with a text path only): one token after the points
                and box. Without a box, the "not a point" token is added as for points, also with no points.
        Returns:
            sparse ``(B, N', C)`` and dense ``(B, C, h, w)`` embeddings.
        """
        if points is not None:
            b = points[0].shape[0]
        elif boxes is not None:
            b = boxes.shape[0]
        elif masks is not None:
            b = masks.shape[0]
        elif text is not None:
            b = text.shape[0]
        else:
            b = 1
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((b, 0, self.embed_dim), device=device)
        if text is not None and points is None and boxes is None:
            # Text alone is laid out as "no points": a lone padding token, then the text token.
            points = (torch.zeros(b, 0, 2, device=device), torch.zeros(b, 0, dtype=torch.long, device=device))
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if text is not None:
            sparse = torch.cat([sparse, self.embed_text(text).to(sparse.dtype)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, h, w)
        return sparse, dense
