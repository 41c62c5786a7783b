"""ViT image encoder (ViTDet style): windowed attention with a few global blocks and decomposed
relative-position bias, followed by a neck that maps the token grid to ``out_chans`` channels.

Shapes: input ``(B, 3, S, S)`` with ``S = img_size``; output ``(B, out_chans, S/p, S/p)`` for patch size ``p``.
Parameter names follow the official checkpoints so their state dicts load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from segany.model.common import LayerNorm2d, MLPBlock


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``(B, C, H, W) -> (B, H/p, W/p, D)``."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def _relative_table(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """Look up relative-position embeddings for every (query, key) offset along one axis.

    ``table`` is ``(L, C)``; it is linearly resampled when ``L`` does not fit the sizes (for example a
    checkpoint trained at another resolution). Returns ``(q_size, k_size, C)``.
    """
    length = 2 * max(q_size, k_size) - 1
    if table.shape[0] != length:
        table = F.interpolate(table.t()[None], size=length, mode="linear")[0].t()
    # Scale coordinates so queries and keys of different lengths share one frame.
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_pos = torch.arange(q_size, device=table.device)[:, None] * q_scale
    k_pos = torch.arange(k_size, device=table.device)[None, :] * k_scale
    offsets = (q_pos - k_pos) + (k_size - 1) * k_scale
    return table[offsets.long()]


def relative_position_bias(
    q: torch.Tensor, table_h: torch.Tensor, table_w: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Decomposed relative-position bias (MViTv2) for queries ``q`` of shape ``(..., H*W, C)``.

    Returns the additive attention bias ``(..., H*W, H*W)``: the sum of a term that depends on the row
    offset and one that depends on the column offset. ``q`` may be a strided view (no copy is made).
    """
    h, w = size
    rh = _relative_table(h, h, table_h)
    rw = _relative_table(w, w, table_w)
    *lead, _, c = q.shape
    grid = q.reshape(*lead, h, w, c)
    # Both terms are small; making them contiguous makes the broadcast sum below come out in
    # row-major order, so the final reshape is a view and the (N x N) bias is written exactly once.
    bias_h = torch.einsum("...hwc,hkc->...hwk", grid, rh).contiguous()  # (..., h, w, kh)
    bias_w = torch.einsum("...hwc,wkc->...hwk", grid, rw).contiguous()  # (..., h, w, kw)
    bias = bias_h.unsqueeze(-1) + bias_w.unsqueeze(-2)  # (..., h, w, kh, kw)
    return bias.reshape(*lead, h * w, h * w)


class Attention(nn.Module):
    """Multi-head self-attention over a ``(B, H, W, D)`` token grid with relative-position bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("relative positions need the input size")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global attention over the whole grid ``(B, H, W, D) -> (B, H, W, D)``."""
        b, h, w, d = x.shape
        # Views into the projection output; no copies before the attention kernel.
        qkv = self.qkv(x).view(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        out = self._attend(q, k, v, (h, w))  # (B, heads, N, head_dim)
        out = out.transpose(1, 2).reshape(b, h, w, d)
        return self.proj(out)

    def forward_windows(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """Attention within non-overlapping ``window x window`` windows: ``(B, H, W, D) -> (B, H, W, D)``.

        Same result as padding the grid with zero tokens to a multiple of ``window``, partitioning,
        attending and cropping (the reference), but the projections run on the real tokens only: a zero
        token's ``qkv`` is exactly the bias, so the padding is filled with the bias after projecting,
        and the output projection runs after cropping.
        """
        b, h, w, d = x.shape
        heads = self.num_heads
        qkv = self.qkv(x)  # (B, H, W, 3D)
        pad_h = (window - h % window) % window
        pad_w = (window - w % window) % window
        if pad_h or pad_w:
            c = qkv.shape[-1]
            filler: torch.Tensor = self.qkv.bias if self.qkv.bias is not None else qkv.new_zeros(c)
            filler = filler.to(qkv.dtype)
            qkv = torch.cat([qkv, filler.expand(b, h, pad_w, c)], dim=2)
            qkv = torch.cat([qkv, filler.expand(b, pad_h, w + pad_w, c)], dim=1)
        hp, wp = h + pad_h, w + pad_w
        nh, nw = hp // window, wp // window
        # One copy partitions into windows and splits heads: (3, B*nW, heads, window^2, head_dim).
        qkv = qkv.view(b, nh, window, nw, window, 3, heads, -1).permute(5, 0, 1, 3, 6, 2, 4, 7)
        q, k, v = qkv.reshape(3, b * nh * nw, heads, window * window, -1).unbind(0)
        out = self._attend(q, k, v, (window, window))
        # And one copy puts windows back in image order with heads merged, then crops the padding.
        out = out.view(b, nh, nw, heads, window, window, -1).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(b, hp, wp, d)
        if pad_h or pad_w:
            out = out[:, :h, :w, :]
        return self.proj(out)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``softmax(q k^T * scale + bias) v`` for ``(B, heads, N, head_dim)`` inputs."""
        bias = None
        if self.use_rel_pos:
            # The bias is computed from the unscaled queries, as in MViTv2 and the official model.
            bias = relative_position_bias(q, self.rel_pos_h, self.rel_pos_w, size).to(q.dtype)
        # Fused attention (flash / memory-efficient kernels where available) instead of materialising
        # softmax(QK^T) by hand; the result equals the textbook formula within float rounding.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split ``(B, H, W, C)`` into ``(B * nW, window, window, C)`` windows, zero-padding H and W up."""
    b, h, w, c = x.shape
    pad_h = (window - h % window) % window
    pad_w = (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: back to ``(B, H, W, C)`` with the padding dropped."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp > h or wp > w) else x


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the residual branch of whole samples with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Transformer block; windowed when ``window_size > 0``, global otherwise."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            x = self.attn.forward_windows(x, self.window_size)
        else:
            x = self.attn(x)
        x = shortcut + drop_path(x, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class ImageEncoderViT(nn.Module):
    """The SAM image encoder. ``(B, 3, img_size, img_size)`` normalised, padded images ->
    ``(B, out_chans, img_size / patch_size, img_size / patch_size)`` embeddings."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        # Drop-path rate grows linearly with depth, the usual ViT fine-tuning schedule.
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
                drop_path=rates[i],
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        # Recompute block activations in the backward pass to save memory (training only).
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            pos: torch.Tensor = self.pos_embed
            if pos.shape[1:3] != x.shape[1:3]:
                # Inputs at another resolution: resample the absolute embedding to the token grid.
                pos = F.interpolate(
                    pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic", align_corners=False
                ).permute(0, 2, 3, 1)
            x = x + pos
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
