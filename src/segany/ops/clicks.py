"""Simulated clicks: the one module that training and evaluation share.

Coordinates follow SAM's convention everywhere: ``(x, y)`` = (column, row) in pixels of the array
that was given. Evaluation clicks are integer pixel indices, which is what the predictor expects
(the prompt encoder itself shifts points to the pixel centre). Training points are float tensors
holding the same integer-valued pixel indices.

Evaluation (numpy, one object at a time; the standard RITM / SAM protocol, SAM paper §D.1):

* :func:`center_point` -- the first click: the mask pixel farthest from the mask boundary.
* :func:`next_click` -- a later click: in ``"center"`` mode, the distance transforms of the
  false-negative region (``gt & ~pred``) and of the false-positive region (``pred & ~gt``) are
  computed on maps padded by 1 px of background (so image borders count as boundary); the region
  whose maximum distance is larger wins (a tie goes to the false positive, as in RITM's clicker),
  and the click goes to that maximum, positive if it is in the false negatives. ``"random"`` mode
  draws a pixel uniformly from the union of both errors (the harder variant, paper Fig. 9d).

Training (torch, batched, any device; SAM paper §A):

* :func:`sample_points_uniform` -- the initial point prompt, uniform over the mask.
* :func:`noisy_boxes` -- the initial box prompt with Gaussian noise on every coordinate.
* :func:`error_region_points` -- later points, uniform over the error region.
* :func:`round_schedule` -- which of the 11 rounds add a point.

Choices the paper leaves open (SAM-FACTS '[U]' items) and what this module does:

* Box noise: the cap of 20 px limits the *standard deviation*, not the offset; the side length
  used for a coordinate is the box side along that coordinate's axis (width for x0/x1, height
  for y0/y1); pixels are those of the frame the boxes are given in (the caller decides, normally
  the 1024-px model input frame). After noise, corners are re-sorted so x0 <= x1 and y0 <= y1,
  and, given ``image_size``, clamped to the pixel range [0, W-1] x [0, H-1].
* Rounds: round 0 is the initial prompt (a point or a box, True in the schedule); the no-point
  round "randomly inserted among the 8" is placed uniformly in rounds 1..num_rounds-2 (each of
  the 9 gaps around the 8 point rounds, counting the one just before the final no-point round);
  points accumulate across rounds (the caller keeps them).
* Empty inputs: rows without any pixel to sample get the point (-1, -1) and, for
  :func:`error_region_points`, the label -1 -- SAM's label for "not a point", so the prompt
  encoder ignores such a row if it is passed on unchanged.
* Evaluation ties: among equally distant pixels, the first in row-major order wins.
"""

from __future__ import annotations

import random
from typing import Literal, NamedTuple, Sequence

import cv2
import numpy as np
import torch

__all__ = [
    "Click",
    "EMPTY_POINT",
    "center_point",
    "next_click",
    "sample_points_uniform",
    "noisy_boxes",
    "error_region_points",
    "round_schedule",
]

#: The coordinate value given to rows that have nothing to sample from.
EMPTY_POINT: float = -1.0


class Click(NamedTuple):
    """One simulated click: pixel column ``x``, pixel row ``y``, and its label."""

    x: int
    y: int
    is_positive: bool


# --------------------------------------------------------------------------- evaluation clicks


def _as_bool_2d(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    return a.astype(bool, copy=False)


def _padded_distance(region: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every region pixel to the nearest non-region pixel.

    The region is padded by one background pixel on every side first, so pixels on the image
    border are at distance 1 (the border counts as boundary). Returns float32 [H, W].
    """
    padded = np.pad(region.astype(np.uint8), 1, mode="constant")
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist[1:-1, 1:-1]


def center_point(mask: np.ndarray, ignore: np.ndarray | None = None) -> tuple[int, int] | None:
    """The interior point of ``mask`` farthest from its boundary.

    Args:
        mask: bool [H, W] object mask.
        ignore: optional bool [H, W]; ignored pixels are removed from the mask first.

    Returns:
        ``(x, y)`` integer pixel coordinates, or None if the (non-ignored) mask is empty.
        Ties go to the first pixel in row-major order.
    """
    m = _as_bool_2d(mask, "mask")
    if ignore is not None:
        m = m & ~_as_bool_2d(ignore, "ignore")
    if not m.any():
        return None
    dist = _padded_distance(m)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def next_click(
    pred: np.ndarray,
    gt: np.ndarray,
    ignore: np.ndarray | None = None,
    mode: Literal["center", "random"] = "center",
    rng: np.random.Generator | None = None,
    avoid: Sequence[Click] | None = None,
) -> Click | None:
    """The next corrective click for the current prediction.

    Args:
        pred: bool [H, W] current predicted mask.
        gt: bool [H, W] ground-truth mask.
        ignore: optional bool [H, W]; ignored pixels are never errors.
        mode: ``"center"`` (deterministic, farthest from the error boundary) or ``"random"``
            (uniform over all error pixels; needs ``rng`` for reproducibility).
        rng: numpy generator for ``"random"`` mode (a fresh unseeded one if None).
        avoid: clicks already made; their pixels are not chosen again (as RITM does), which
            keeps the protocol moving when the model ignores a click.

    Returns:
        A :class:`Click` (positive if it lies in a false negative), or None when no error
        pixel is left.
    """
    p = _as_bool_2d(pred, "pred")
    g = _as_bool_2d(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    valid = np.ones_like(g) if ignore is None else ~_as_bool_2d(ignore, "ignore")
    fn = g & ~p & valid
    fp = p & ~g & valid
    if avoid:
        for c in avoid:
            if 0 <= c.y < g.shape[0] and 0 <= c.x < g.shape[1]:
                fn[c.y, c.x] = False
                fp[c.y, c.x] = False
    if not (fn.any() or fp.any()):
        return None

    if mode == "random":
        gen = rng if rng is not None else np.random.default_rng()
        ys, xs = np.nonzero(fn | fp)
        k = int(gen.integers(len(ys)))
        y, x = int(ys[k]), int(xs[k])
        return Click(x, y, bool(fn[y, x]))
    if mode != "center":
        raise ValueError(f"mode must be 'center' or 'random', got {mode!r}")

    fn_dist = _padded_distance(fn)
    fp_dist = _padded_distance(fp)
    is_positive = bool(fn_dist.max() > fp_dist.max())
    dist = fn_dist if is_positive else fp_dist
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Click(int(col), int(row), is_positive)


# --------------------------------------------------------------------------- training clicks


def _uniform_index(flat: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of a uniformly chosen True element in each row of ``flat`` [B, N] (bool).

    Returns (index [B] int64, valid [B] bool); rows without a True element get index 0.
    """
    counts = flat.sum(dim=1)
    u = torch.rand(flat.shape[0], generator=generator, device=flat.device)
    # k-th True element (0-based), found as the first position where the running count > k.
    k = torch.minimum((u * counts).floor().long(), (counts - 1).clamp(min=0))
    running = flat.cumsum(dim=1)
    idx = torch.searchsorted(running, (k + 1).unsqueeze(1)).squeeze(1)
    valid = counts > 0
    return torch.where(valid, idx, torch.zeros_like(idx)), valid


def _check_masks(masks: torch.Tensor, name: str) -> torch.Tensor:
    if masks.ndim != 3:
        raise ValueError(f"{name} must have shape [B, H, W], got {tuple(masks.shape)}")
    return masks.bool()


def sample_points_uniform(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One point per mask, uniform over its True pixels.

    Args:
        masks: bool [B, H, W].
        generator: optional torch generator on the masks' device.

    Returns:
        float [B, 2] ``(x, y)`` pixel indices. Rows whose mask is empty get ``(-1, -1)``
        (:data:`EMPTY_POINT`); ``(points >= 0).all(-1)`` tells which rows are valid.
    """
    m = _check_masks(masks, "masks")
    b, _, w = m.shape
    idx, valid = _uniform_index(m.reshape(b, -1), generator)
    pts = torch.stack([idx % w, idx // w], dim=1).to(torch.float32)
    return torch.where(valid.unsqueeze(1), pts, torch.full_like(pts, EMPTY_POINT))


def noisy_boxes(
    boxes: torch.Tensor,
    std_frac: float = 0.1,
    max_std: float = 20.0,
    generator: torch.Generator | None = None,
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Jitter boxes as in SAM's first training round.

    Every coordinate gets Gaussian noise with std = ``std_frac`` x the box side along its axis,
    capped at ``max_std`` pixels. Corners are re-sorted afterwards so boxes stay well formed.

    Args:
        boxes: float [B, 4] ``(x0, y0, x1, y1)``.
        std_frac: noise std as a fraction of the side length.
        max_std: cap on the std, in pixels of the boxes' frame.
        generator: optional torch generator on the boxes' device.
        image_size: optional ``(H, W)``; results are clamped to [0, W-1] x [0, H-1].

    Returns:
        float [B, 4] noisy boxes.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [B, 4], got {tuple(boxes.shape)}")
    bx = boxes.to(torch.float32)
    w = (bx[:, 2] - bx[:, 0]).abs()
    h = (bx[:, 3] - bx[:, 1]).abs()
    std = torch.stack([w, h, w, h], dim=1).mul(std_frac).clamp(max=max_std)
    noise = torch.randn(bx.shape, generator=generator, device=bx.device, dtype=bx.dtype)
    out = bx + noise * std
    x0, x1 = torch.minimum(out[:, 0], out[:, 2]), torch.maximum(out[:, 0], out[:, 2])
    y0, y1 = torch.minimum(out[:, 1], out[:, 3]), torch.maximum(out[:, 1], out[:, 3])
    out = torch.stack([x0, y0, x1, y1], dim=1)
    if image_size is not None:
        hgt, wid = image_size
        lo = torch.zeros(4, device=out.device)
        hi = torch.tensor([wid - 1, hgt - 1, wid - 1, hgt - 1], device=out.device, dtype=out.dtype)
        out = torch.maximum(torch.minimum(out, hi), lo)
    return out


def error_region_points(
    pred: torch.Tensor, gt: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective point per row, uniform over the error region.

    Args:
        pred: bool [B, H, W] current predictions (already thresholded).
        gt: bool [B, H, W] ground truth.
        generator: optional torch generator on the tensors' device.

    Returns:
        points: float [B, 2] ``(x, y)``; ``(-1, -1)`` where a row has no error.
        labels: int64 [B]; 1 in a false negative (add), 0 in a false positive (remove),
        -1 where a row has no error (SAM's "not a point" label).
    """
    p = _check_masks(pred, "pred")
    g = _check_masks(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {tuple(p.shape)} and gt {tuple(g.shape)} differ in shape")
    b, _, w = g.shape
    fn = (g & ~p).reshape(b, -1)
    err = fn | (p & ~g).reshape(b, -1)
    idx, valid = _uniform_index(err, generator)
    pts = torch.stack([idx % w, idx // w], dim=1).to(torch.float32)
    labels = fn.gather(1, idx.unsqueeze(1)).squeeze(1).long()
    pts = torch.where(valid.unsqueeze(1), pts, torch.full_like(pts, EMPTY_POINT))
    labels = torch.where(valid, labels, torch.full_like(labels, -1))
    return pts, labels


def round_schedule(
    num_rounds: int = 11, rng: np.random.Generator | random.Random | None = None
) -> list[bool]:
    """Which training rounds add a prompt (paper: 1 initial + 8 point rounds + 2 without).

    Round 0 is the initial prompt and is always True. The last round never adds a point; one
    more no-point round sits at a uniformly random position among rounds 1..num_rounds-2.
    With fewer than 3 rounds only the first adds a prompt.

    Args:
        num_rounds: total rounds including the initial one (>= 1).
        rng: numpy ``Generator`` or ``random.Random`` (a fresh unseeded one if None).

    Returns:
        ``num_rounds`` booleans; True = this round adds a prompt.
    """
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
    schedule = [True] + [False] * (num_rounds - 1)
    if num_rounds < 3:
        return schedule
    for i in range(1, num_rounds - 1):
        schedule[i] = True
    gen = rng if rng is not None else np.random.default_rng()
    n_slots = num_rounds - 2
    slot = int(gen.integers(n_slots)) if isinstance(gen, np.random.Generator) else gen.randrange(n_slots)
    schedule[1 + slot] = False
    return schedule
