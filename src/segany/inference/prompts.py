"""Prompt checking shared by every predictor backend: shapes, finiteness, labels and batch sizes.

Everything a caller passes is checked before any work, and a bad prompt gets a
:class:`~segany.errors.PromptError` (a ``ValueError``) with a one-line message, never a NaN result or an
error from deep inside the model.
"""

from __future__ import annotations

import numpy as np
import torch

from segany.errors import PromptError
from segany.ops.transforms import ResizeLongestSide

__all__ = ["LABELS", "check_batch", "prompt_tensors"]

# Point labels: 1 foreground, 0 background, -1 padding ("not a point"), 2 and 3 box corners (top-left,
# bottom-right; the official export's convention).
LABELS = (-1, 0, 1, 2, 3)


def _finite(values: np.ndarray | torch.Tensor, what: str) -> None:
    ok = bool(torch.isfinite(values).all()) if isinstance(values, torch.Tensor) else bool(np.isfinite(values).all())
    if not ok:
        raise PromptError(f"{what} must be finite numbers (got NaN or infinity)")


def _labels(labels: np.ndarray | torch.Tensor, what: str = "point_labels") -> None:
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex():
            _finite(labels, what)
            if not bool((labels == labels.round()).all()):
                raise PromptError(f"{what} must be whole numbers, one of {LABELS}")
        bad = ~torch.isin(labels.long(), torch.tensor(LABELS, device=labels.device))
        found = labels[bad].flatten()[:1].tolist() if bool(bad.any()) else None
    else:
        if labels.dtype.kind not in "iuf":
            raise PromptError(f"{what} must be integers, one of {LABELS}; got dtype {labels.dtype}")
        if labels.dtype.kind == "f":
            _finite(labels, what)
            if not bool((labels == np.round(labels)).all()):
                raise PromptError(f"{what} must be whole numbers, one of {LABELS}")
        outside = ~np.isin(labels.astype(np.int64), LABELS)
        found = labels[outside].ravel()[:1].tolist() if bool(outside.any()) else None
    if found:
        raise PromptError(f"{what} must be one of {LABELS} (1 foreground, 0 background, -1 padding), got {found[0]}")


def _numbers(values: object, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise PromptError(f"{what} must be numbers") from None
    _finite(arr, what)
    return arr


def prompt_tensors(
    transform: ResizeLongestSide,
    original_size: tuple[int, int],
    mask_input_size: tuple[int, int],
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    box: np.ndarray | None,
    mask_input: np.ndarray | None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Check one image's numpy prompts and turn them into ``predict_torch`` inputs in the resized frame.

    Returns points ``(1, N, 2)``, labels ``(1, N)`` (int), box ``(1, 4)`` and mask ``(1, 1, h, w)``,
    each None when not given.
    """
    coords_t = labels_t = box_t = mask_t = None
    if point_coords is not None:
        if point_labels is None:
            raise PromptError("point_labels are required with point_coords")
        coords = _numbers(point_coords, "point_coords")
        labels = np.asarray(point_labels)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise PromptError(f"point_coords must have shape (N, 2), got {coords.shape}")
        if labels.shape != (coords.shape[0],):
            raise PromptError(f"point_labels must have shape ({coords.shape[0]},), got {labels.shape}")
        _labels(labels)
        coords = transform.apply_coords(coords, original_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float, device=device)[None]
        labels_t = torch.as_tensor(labels.astype(np.int64), dtype=torch.int, device=device)[None]
    elif point_labels is not None:
        raise PromptError("point_coords are required with point_labels")
    if box is not None:
        b = _numbers(box, "box")
        if b.size != 4:
            raise PromptError(f"box must have 4 numbers x0, y0, x1, y1, got shape {b.shape}")
        box_t = torch.as_tensor(transform.apply_boxes(b.reshape(1, 4), original_size), dtype=torch.float, device=device)
    if mask_input is not None:
        m = _numbers(mask_input, "mask_input").astype(np.float32)
        expected = (1, *mask_input_size)
        if m.shape != expected:
            raise PromptError(f"mask_input must have shape {expected}, got {m.shape}")
        mask_t = torch.as_tensor(m, dtype=torch.float, device=device)[None]
    return coords_t, labels_t, box_t, mask_t


def check_batch(
    point_coords: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    mask_input_size: tuple[int, int],
) -> int:
    """Check ``predict_torch``/``predict_low_res`` prompts (points ``(B, N, 2)``, labels ``(B, N)``, boxes
    ``(B, 4)``, masks ``(B or 1, 1, h, w)``) and return the batch size ``B`` (1 without any prompt)."""
    batch: list[tuple[str, int]] = []
    if point_coords is not None:
        if point_labels is None:
            raise PromptError("point_labels are required with point_coords")
        if point_coords.ndim != 3 or point_coords.shape[2] != 2:
            raise PromptError(f"point_coords must have shape (B, N, 2), got {tuple(point_coords.shape)}")
        if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
            raise PromptError(
                f"point_labels must have shape {tuple(point_coords.shape[:2])} (B, N), got {tuple(point_labels.shape)}"
            )
        _finite(point_coords, "point_coords")
        _labels(point_labels)
        batch.append(("point_coords", point_coords.shape[0]))
    elif point_labels is not None:
        raise PromptError("point_coords are required with point_labels")
    if boxes is not None:
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise PromptError(f"boxes must have shape (B, 4), got {tuple(boxes.shape)}")
        _finite(boxes, "boxes")
        batch.append(("boxes", boxes.shape[0]))
    if mask_input is not None:
        expected = (1, *mask_input_size)
        if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise PromptError(f"mask_input must have shape (B, {shape}), got {tuple(mask_input.shape)}")
        _finite(mask_input, "mask_input")
        if mask_input.shape[0] != 1:
            batch.append(("mask_input", mask_input.shape[0]))
    sizes = {size for _, size in batch}
    if len(sizes) > 1:
        raise PromptError("prompt batch sizes differ: " + ", ".join(f"{name} {size}" for name, size in batch))
    return sizes.pop() if sizes else 1
