"""Fast, exact mapping of low-resolution mask logits to the original image.

The reference post-processing resizes ``(B, M, 256, 256)`` logits bilinearly to the padded input square
(``1024 x 1024``), crops away the padding and resizes again to the original ``H0 x W0``. Every step is
linear and acts on rows and columns separately, so the whole chain is ``A_h @ L @ A_w^T`` with one
small matrix per axis (``A_h`` is ``H0 x 256``). Each row of ``A_h`` has at most three non-zero weights
in consecutive columns (two neighbouring rows of the upsampled square, each a blend of two neighbouring
low-resolution rows), so instead of multiplying dense matrices each output line is a weighted sum of at
most three input lines: about three multiply-adds per output pixel, and no ``1024 x 1024`` intermediate.

The matrices are built by running the reference resizes on an identity matrix (a linear map's matrix is
its image of the basis), so the weights are by construction those of ``F.interpolate``; results equal the
reference up to float rounding (|difference| ~1e-6 of the logit scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["AxisResize", "axis_resize", "upscale_logits", "upscale_masks", "reference_upscale_logits"]

# Output lines resampled per step by upscale_masks: a few MB of float logits, reused from step to step.
_MASK_CHUNK_LINES = 256


@dataclass(frozen=True)
class AxisResize:
    """The composed resize along one axis, in banded form.

    ``start[i]``: first low-resolution index that output ``i`` reads; ``weights[i, k]``: weight of index
    ``start[i] + k``. Shapes: ``start (n_out,)`` int64, ``weights (n_out, K)`` float32, ``K <= 3`` in
    practice (computed, not assumed).
    """

    start: torch.Tensor
    weights: torch.Tensor

    @property
    def taps(self) -> int:
        return int(self.weights.shape[1])

    def dense(self, n_in: int) -> torch.Tensor:
        """The full ``(n_out, n_in)`` matrix (for tests and checks)."""
        n_out, k = self.weights.shape
        out = torch.zeros(n_out, n_in + k, dtype=self.weights.dtype)
        cols = self.start[:, None] + torch.arange(k)[None, :]
        out.scatter_(1, cols, self.weights)
        return out[:, :n_in]


def _reference_axis_matrix(n_low: int, n_square: int, n_valid: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_low)``: upsample ``n_low -> n_square``, keep the first ``n_valid``, resize to
    ``n_out``, all with bilinear ``align_corners=False`` exactly as the reference does, on a basis."""
    # float32 like the reference: its source coordinates are rounded the same way, so the weights match
    # its own to ~1e-7 (float64 would be "more exact" but differ from the reference by ~1e-5).
    basis = torch.eye(n_low, dtype=torch.float32)[None, None]  # (1, 1, n_low, n_low): rows are the axis
    up = F.interpolate(basis, size=(n_square, n_low), mode="bilinear", align_corners=False)
    up = up[:, :, :n_valid, :]
    out = F.interpolate(up, size=(n_out, n_low), mode="bilinear", align_corners=False)
    return out[0, 0]


@lru_cache(maxsize=64)
def axis_resize(n_low: int, n_square: int, n_valid: int, n_out: int) -> AxisResize:
    """Banded form of the composed resize along one axis (cached: one per image size)."""
    if not (0 < n_valid <= n_square) or n_low <= 0 or n_out <= 0:
        raise ValueError(f"bad sizes: low {n_low}, square {n_square}, valid {n_valid}, out {n_out}")
    dense = _reference_axis_matrix(n_low, n_square, n_valid, n_out)
    nonzero = dense != 0
    cols = torch.arange(n_low)
    first = torch.where(nonzero, cols, n_low).amin(dim=1)
    last = torch.where(nonzero, cols, -1).amax(dim=1)
    taps = int((last - first).max().item()) + 1
    # Keep every window inside the low-resolution axis so the gather never goes out of range.
    start = first.clamp(max=n_low - taps)
    index = start[:, None] + torch.arange(taps)[None, :]
    weights = torch.gather(dense, 1, index)
    return AxisResize(start.to(torch.int64), weights.contiguous())


def upscale_logits(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
) -> torch.Tensor:
    """Low-resolution logits ``(..., h, w)`` -> logits ``(..., H0, W0)`` on the original image.

    Same result as :func:`reference_upscale_logits` up to float rounding, without the padded-square
    intermediate.

    Args:
        low_res: mask logits, e.g. ``(B, M, 256, 256)``; computed in float32, returned in its dtype.
        input_size: ``(h, w)`` of the resized image inside the padded square (its valid region).
        original_size: ``(H0, W0)`` of the original image.
        image_size: side of the padded square the model works in (1024 for SAM).
    """
    rows = _RowPass(low_res, input_size, original_size, image_size)
    out = rows.lines(0, rows.total)  # (n * H0, W0), already in (..., H0, W0) order
    out = out.view(rows.shape)
    return out.to(low_res.dtype) if low_res.dtype.is_floating_point else out


def upscale_masks(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
    threshold: float,
) -> torch.Tensor:
    """``upscale_logits(...) > threshold`` without the full-size float logits.

    The second (row) pass runs a few hundred output lines at a time and thresholds each block straight
    into the boolean result: for a 1500 x 2250 photo that avoids writing and re-reading 40 MB of floats
    per click (12 MB for the three masks' logits are more than a CPU cache holds; fresh memory also
    costs a page fault per 4 KiB). Same masks as thresholding :func:`upscale_logits`.
    """
    rows = _RowPass(low_res, input_size, original_size, image_size)
    out = torch.empty((rows.total, rows.shape[-1]), dtype=torch.bool, device=low_res.device)
    for start in range(0, rows.total, _MASK_CHUNK_LINES):
        stop = min(start + _MASK_CHUNK_LINES, rows.total)
        torch.gt(rows.lines(start, stop), threshold, out=out[start:stop])
    return out.view(rows.shape)


class _RowPass:
    """Both resizes of :func:`upscale_logits` as banded products, the second one line by line.

    The column pass runs at once, on the small input, as the reference's two resizes restricted to that
    axis (1-D linear interpolations along contiguous rows). The row pass is a sparse-times-dense product
    with a fixed number of taps per output line: exactly what ``embedding_bag`` computes (a weighted sum
    of table rows per bag; table rows: (mask, input row), bags: (mask, output row), so lines come out in
    ``(..., H0, W0)`` order). It runs on demand for any range of output lines.
    """

    def __init__(
        self, low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int], image_size: int
    ) -> None:
        *lead, h_low, w_low = low_res.shape
        out_h, out_w = int(original_size[0]), int(original_size[1])
        n = 1
        for d in lead:
            n *= d
        device = low_res.device
        rows = axis_resize(h_low, image_size, int(input_size[0]), out_h)
        # The column pass on the small input: the reference's two resizes along one axis, each a
        # contiguous 1-D interpolation (no transposes; measured faster per click than a banded product).
        flat = low_res.float().reshape(1, n * h_low, w_low)
        square = F.interpolate(flat, size=image_size, mode="linear", align_corners=False)[..., : int(input_size[1])]
        self.table = F.interpolate(square, size=out_w, mode="linear", align_corners=False)[0]  # (n * h_low, W0)
        self.index, self.weights = _bags(rows, n, h_low, device)
        self.shape = (*lead, out_h, out_w)
        self.total = n * out_h

    def lines(self, start: int, stop: int) -> torch.Tensor:
        """Output lines ``start:stop`` of the ``(n * H0, W0)`` result (float32)."""
        return F.embedding_bag(
            self.index[start:stop], self.table, per_sample_weights=self.weights[start:stop], mode="sum"
        )


def _bags(axis: AxisResize, groups: int, group_rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``embedding_bag`` indices and weights that apply the banded matrix of ``axis`` to each of
    ``groups`` stacked blocks of ``group_rows`` table rows: ``(groups * n_out, taps)`` each."""
    index = axis.start[:, None] + torch.arange(axis.taps)[None, :]  # (n_out, taps)
    if groups > 1:
        index = (index[None] + group_rows * torch.arange(groups)[:, None, None]).reshape(-1, axis.taps)
    weights = axis.weights.repeat(groups, 1) if groups > 1 else axis.weights
    return index.to(device), weights.to(device)


def reference_upscale_logits(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
) -> torch.Tensor:
    """The reference chain (upsample to the square, crop, resize), for comparison and benchmarks."""
    x = F.interpolate(low_res.float(), (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
