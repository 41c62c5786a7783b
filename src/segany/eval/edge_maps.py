"""SAM's edge maps from mask probability maps (paper §D.2): Sobel filtering, then edge NMS.

:func:`sobel_edges_from_probs` turns a stack of unthresholded mask probability maps into one edge
strength map; :func:`edge_nms` thins it across the local edge orientation. The result is scored by
:mod:`segany.eval.edges`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["sobel_edges_from_probs", "edge_nms"]


def sobel_edges_from_probs(probs: torch.Tensor, band: int = 1, chunk: int = 64) -> torch.Tensor:
    """SAM's edge map from a stack of mask probability maps (paper §D.2).

    Each unthresholded map gets a Sobel gradient magnitude; responses are kept only within
    ``band`` px of the boundary of its binarised mask (``prob > 0.5``; the paper's "outer
    boundary" -- our reading, the object's contour rather than texture inside the map); then a
    pixel-wise max over masks, rescaled linearly to [0, 1].

    Args:
        probs: float [N, H, W] in [0, 1] (sigmoid of the mask logits), any device.
        band: half-width of the kept band around each mask boundary, in pixels.
        chunk: masks processed at once (bounds memory).

    Returns:
        float32 [H, W] in [0, 1] on the same device (all zeros if there is no boundary).
    """
    if probs.ndim != 3:
        raise ValueError(f"probs must have shape [N, H, W], got {tuple(probs.shape)}")
    n, h, w = probs.shape
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=probs.device) / 8
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # [2, 1, 3, 3]: d/dx, d/dy
    out = torch.zeros(h, w, device=probs.device, dtype=torch.float32)
    k = 2 * band + 1
    for s in range(0, n, chunk):
        p = probs[s : s + chunk].float().unsqueeze(1)  # [n, 1, H, W]
        g = F.conv2d(F.pad(p, (1, 1, 1, 1), mode="replicate"), kernels)
        mag = g.pow(2).sum(1).sqrt()  # [n, H, W]
        m = (p > 0.5).float()
        dil = F.max_pool2d(m, k, stride=1, padding=band)
        ero = -F.max_pool2d(-m, k, stride=1, padding=band)
        near = (dil - ero).squeeze(1) > 0  # within `band` px of the mask/background transition
        out = torch.maximum(out, (mag * near).amax(0))
    top = out.max()
    return out / top if top > 0 else out


def _conv_tri(img: np.ndarray, r: int) -> np.ndarray:
    """Separable triangle blur of radius ``r`` with symmetric padding."""
    f = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float64) / (r + 1) ** 2
    out = ndimage.convolve1d(img, f, axis=0, mode="reflect")
    return ndimage.convolve1d(out, f, axis=1, mode="reflect")


def edge_nms(edge_map: np.ndarray, radius: int = 1, border: int = 5, slack: float = 1.01) -> np.ndarray:
    """Edge non-maximum suppression across the local edge orientation.

    The mechanics of the structured-edge toolbox's NMS: a pixel is zeroed if ``slack`` x its value
    is below the (bilinearly interpolated) value at distance 1..``radius`` on either side along
    the edge normal, and responses within ``border`` px of the image border are scaled down
    linearly. The normal is the principal direction of the Hessian of the triangle-blurred map
    (exact for straight ridges at any angle; the toolbox's closed form is exact only at multiples
    of 45 degrees).

    Args:
        edge_map: float [H, W] (numpy array or CPU/GPU tensor) of edge strengths.

    Returns:
        float32 numpy [H, W], the thinned map.
    """
    e = (edge_map.detach().cpu().numpy() if isinstance(edge_map, torch.Tensor) else np.asarray(edge_map))
    e = e.astype(np.float64)
    if e.ndim != 2:
        raise ValueError(f"edge_map must be 2-D, got shape {e.shape}")
    h, w = e.shape
    sm = _conv_tri(e, 4)
    gy, gx = np.gradient(sm)
    gxy, gxx = np.gradient(gx)
    gyy, _ = np.gradient(gy)
    # Edge normal = Hessian eigenvector with the largest |eigenvalue|: the most negative
    # curvature on a ridge, the most positive on its flanks (where the trace is positive).
    s = np.where(gxx + gyy >= 0, 1.0, -1.0)
    theta = 0.5 * np.arctan2(2.0 * gxy * s, (gxx - gyy) * s)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    rows, cols = np.mgrid[:h, :w].astype(np.float64)
    keep = e > 0
    for d in range(1, radius + 1):
        for sign in (-1.0, 1.0):
            cc = np.clip(cols + sign * d * cos_t, 0, w - 1.001)
            rr = np.clip(rows + sign * d * sin_t, 0, h - 1.001)
            nb = ndimage.map_coordinates(e, [rr, cc], order=1, mode="nearest")
            keep &= ~(e * slack < nb)
    out = np.where(keep, e, 0.0)
    s = min(border, w // 2, h // 2)
    for i in range(s):  # fade out near the image border, where orientation estimates are poor
        f = i / s
        out[:, i] *= f
        out[:, w - 1 - i] *= f
        out[i, :] *= f
        out[h - 1 - i, :] *= f
    return out.astype(np.float32)
