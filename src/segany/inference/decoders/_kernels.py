"""Kernels the click decoders share: per-head layouts, transposed convolutions as matrices, the upscaling
written straight into image order, and per-thread scratch buffers.

Shapes: ``B`` prompts, ``h`` heads of width ``e``, ``T`` tokens, ``N = g * g`` image rows of width ``C``.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from segany.model import Sam

__all__ = [
    "Points",
    "SCRATCH_LIMIT",
    "Scratch",
    "activate_",
    "block_rows",
    "block_rows_token_major",
    "conv_as_matrix",
    "flat_dense_pe",
    "heads_first",
    "sparse_prompts",
    "upscale_to_image",
]

Points = tuple[torch.Tensor, torch.Tensor]  # coordinates (B, N, 2) in the resized frame, labels (B, N)

SCRATCH_LIMIT = 1 << 23  # elements (32 MiB in float32): the upscaling of a few prompts at a time


class Scratch:
    """Reusable temporaries for inference, one set per thread.

    Fresh memory costs a page fault per 4 KiB on first touch, a sizeable part of a click, so the
    upscaling's large temporaries are reused from call to call. Each thread gets its own buffers, so
    concurrent calls (a server answering several clicks at once) never share one. Never used under
    autograd (the buffers are overwritten by the next call), nor above :data:`SCRATCH_LIMIT` elements
    (e.g. the generator's large prompt batches), where a plain tensor is cheaper than keeping it alive.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._local = threading.local()

    def __deepcopy__(self, memo: dict[int, object]) -> "Scratch":
        return Scratch(self.enabled)  # buffers are per thread and per copy: a copy starts with none

    def __getstate__(self) -> dict[str, bool]:
        return {"enabled": self.enabled}

    def __setstate__(self, state: dict[str, bool]) -> None:
        self.__init__(state["enabled"])  # type: ignore[misc]

    def __call__(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        """A buffer of ``shape`` with ``like``'s dtype and device, or None where none may be used."""
        if not self.enabled or torch.is_grad_enabled() or math.prod(shape) > SCRATCH_LIMIT:
            return None
        buffers: dict[str, torch.Tensor] | None = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        buf = buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf


def sparse_prompts(model: Sam, points: Points | None, boxes: torch.Tensor | None, batch: int) -> torch.Tensor:
    """The model's sparse prompt tokens ``(batch, K, C)`` for points and boxes (the same empty prompt for
    each of ``batch`` mask prompts when there are neither)."""
    sparse, _ = model.prompt_encoder(points, boxes, None)
    return sparse.expand(batch, -1, -1) if sparse.shape[0] == 1 and batch > 1 else sparse


def conv_as_matrix(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2/stride-2 transposed convolution as an ``(in, 4 * out)`` matrix with columns ``(dy, dx, out
    channel)`` and its bias repeated to match. Rebuilt on every call (a few hundred kB) so that later
    changes to the model's weights are seen."""
    assert isinstance(conv, nn.ConvTranspose2d)
    w = conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, -1)
    b = conv.bias.repeat(4) if conv.bias is not None else torch.zeros(w.shape[1], dtype=w.dtype, device=w.device)
    return w, b


def heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, L, d) -> (B, heads, L, d / heads)``."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def block_rows(x: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """Per-head rows as a block-diagonal matrix: ``(B, h, T, e) -> (B, h*T, h*e)``.

    Row ``h*T + t`` holds ``x[:, h, t]`` in the columns of head ``h`` and zeros elsewhere, so that one
    matrix product against all heads' columns computes every head's own product at once.
    """
    b, h, t, e = x.shape
    return (x.unsqueeze(3) * eye.view(1, h, 1, h, 1)).reshape(b, h * t, h * e)


def block_rows_token_major(x: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """As :func:`block_rows` with rows ordered ``t*h + head``: ``(B, h, T, e) -> (B, T*h, h*e)``.

    Image->token attention takes its softmax over the tokens; with the heads innermost that softmax
    runs over a strided axis of length T with 8 contiguous heads beside it, several times faster on a
    CPU than over a contiguous axis of length T ~ 7.
    """
    b, h, t, e = x.shape
    return (x.transpose(1, 2).unsqueeze(3) * eye.view(1, 1, h, h, 1)).reshape(b, t * h, h * e)


def activate_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place for GELU (the official activation) on scratch buffers: a fresh output would
    be new memory, whose first touch costs as much as the activation itself."""
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


def upscale_to_image(
    first: torch.Tensor,
    norm: tuple[torch.Tensor, torch.Tensor, float],
    act1: nn.Module,
    halves: tuple[torch.Tensor, torch.Tensor],
    bias: torch.Tensor,
    act2: nn.Module,
    hyper: torch.Tensor,
    grid: tuple[int, int],
    out_dtype: torch.dtype,
    buffer: Callable[[str, tuple[int, ...], torch.Tensor], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """The upscaling after the first transposed convolution, written straight into image order
    (inference only: in-place writes).

    ``first (B, N, 4*c1)``: the first transposed convolution's output with bias, columns ``(dy, dx,
    channel)``. ``norm``: its LayerNorm's ``(weight, bias, eps)``, then ``act1``. The activated rows are
    reordered from ``(i, j, dy, dx)`` to ``(i, dy, j, dx)`` (embedding row, first row parity, embedding
    column, first column parity). ``halves``: the second transposed convolution per output row parity
    ``dy2``, a ``(c1, 2*c2)`` matrix with columns ``(dx2, channel)``; ``bias (2*c2,)``, then ``act2`` and
    the dot with ``hyper (B, M, c2)``. For each ``dy2`` the product's rows ``(i, dy, j, dx, dx2)`` are
    image rows ``4i + 2dy + dy2`` from left to right, so they land as contiguous runs: no ``(B, M, g, g,
    2, 2, 2, 2)`` permutation. ``buffer`` (:meth:`FastMaskDecoder.buffer`) supplies reusable temporaries.
    Returns ``(B, M, 4g, 4g)`` logits in ``out_dtype``.
    """
    gh, gw = grid
    b, m, c2 = hyper.shape
    n = gh * gw
    c1 = halves[0].shape[0]
    x = first.reshape(b, n * 4, c1)  # rows (pixel, dy, dx)
    normed = buffer("norm", (b, n * 4, c1), x) if buffer is not None else None
    rows = buffer("rows", (b * n * 4, c1), x) if buffer is not None else None
    if normed is None or rows is None:
        x = activate_(act1, F.layer_norm(x, (c1,), *norm))
        rows = x.view(b, gh, gw, 2, 2, c1).transpose(2, 3).reshape(b * n * 4, c1)
    else:
        stats = x.new_empty((b, n * 4, 1)), x.new_empty((b, n * 4, 1))
        torch.ops.aten.native_layer_norm.out(x, [c1], *norm, out0=normed, out1=stats[0], out2=stats[1])
        x = activate_(act1, normed)
        rows.view(b, gh, 2, gw, 2, c1).copy_(x.view(b, gh, gw, 2, 2, c1).transpose(2, 3))
    out = torch.empty(b, m, gh, 2, 2, 4 * gw, dtype=out_dtype, device=rows.device)
    hyper_t = hyper.to(rows.dtype).transpose(1, 2)
    y_buf = buffer("dy2", (b * n * 4, 2 * c2), rows) if buffer is not None else None
    dots = buffer("dots", (b, n * 8, m), rows) if buffer is not None else None
    for dy2, w in enumerate(halves):
        y = torch.addmm(bias, rows, w) if y_buf is None else torch.addmm(bias, rows, w, out=y_buf)
        y = activate_(act2, y)  # (B*4N, 2*c2)
        y = y.view(b, n * 8, c2)
        logits = torch.bmm(y, hyper_t, out=dots) if dots is not None else torch.bmm(y, hyper_t)
        out[:, :, :, :, dy2, :] = logits.view(b, gh, 2, 4 * gw, m).permute(0, 4, 1, 2, 3)
    return out.view(b, m, 4 * gh, 4 * gw)


def flat_dense_pe(model: Sam) -> torch.Tensor:
    """The image positional encoding as ``(1, N, C)`` rows."""
    with torch.no_grad():
        return model.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous()

