"""Resizing between the original image and the model's input frame (long side = ``target_length``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def preprocess_shape(old_h: int, old_w: int, long_side: int) -> tuple[int, int]:
    """Size ``(h, w)`` after scaling so the longer side equals ``long_side``, rounded to nearest (at
    least 1 pixel: a 2000x1 strip would otherwise round to an empty side; the official code crashes)."""
    scale = long_side * 1.0 / max(old_h, old_w)
    return max(1, int(old_h * scale + 0.5)), max(1, int(old_w * scale + 0.5))


class ResizeLongestSide:
    """Resize images, coordinates and boxes so the image's longest side is ``target_length``.

    Images are resized with Pillow's bilinear filter (the official predictor's path), so embeddings of
    the same picture agree with the official package bit for bit before the encoder.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def get_preprocess_shape(self, old_h: int, old_w: int) -> tuple[int, int]:
        return preprocess_shape(old_h, old_w, self.target_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(h, w, 3)`` uint8."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1])
        return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """``(..., 2)`` pixel coordinates (x, y) in the original image -> the resized frame."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w)
        out = np.array(coords, dtype=float, copy=True)
        out[..., 0] = out[..., 0] * (new_w / old_w)
        out[..., 1] = out[..., 1] * (new_h / old_h)
        return out

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """``(B, 4)`` x0, y0, x1, y1 boxes -> the resized frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float -> ``(B, 3, h, w)`` (antialiased bilinear)."""
        h, w = self.get_preprocess_shape(image.shape[2], image.shape[3])
        return F.interpolate(image, (h, w), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w)
        scale = torch.tensor([new_w / old_w, new_h / old_h], dtype=torch.float, device=coords.device)
        return coords.to(torch.float) * scale

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
