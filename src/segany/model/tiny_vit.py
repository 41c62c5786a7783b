"""TinyViT image encoder, as MobileSAM uses it in place of SAM's ViT (a 5M-parameter encoder distilled
from ViT-H, behind the unchanged prompt encoder and mask decoder).

Four stages: a convolutional one (MBConv blocks) at 1/4 of the input resolution, then three stages of
windowed attention blocks, each block followed by a depthwise convolution and an MLP. Patch merging
halves the resolution between the first three stages; MobileSAM's last merge keeps it (stride 1), so
the output grid is 1/16 of the input, like SAM's ViT with 16-pixel patches. A neck maps the last
stage's channels to the prompt embedding width.

Shapes: input ``(B, 3, S, S)``; output ``(B, out_chans, S/16, S/16)``. Parameter names follow the
official MobileSAM checkpoint (``mobile_sam.pt``) so its state dict loads as it is, including the
classification head that MobileSAM keeps but never runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from segany.model.common import LayerNorm2d
from segany.model.image_encoder import drop_path


class ConvBN(nn.Sequential):
    """Convolution without bias followed by batch norm (``c``, ``bn``: the checkpoint's names)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: ``(B, 3, S, S) -> (B, D, S/4, S/4)``."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, dim // 2, 3, 2), nn.GELU(), ConvBN(dim // 2, dim, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: expand (1x1), depthwise 3x3, project (1x1); GELU after the residual sum."""

    def __init__(self, dim: int, expand: float, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        y = self.conv3(y)
        return F.gelu(x + drop_path(y, self.drop_path, self.training))


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 conv (stride 2, or 1 for MobileSAM's last merge), 1x1 conv.

    Takes ``(B, C, H, W)`` or tokens ``(B, H*W, C)`` on a ``size`` grid; returns tokens ``(B, L', C')``.
    """

    def __init__(self, size: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.size = size
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            b, _, c = x.shape
            x = x.transpose(1, 2).reshape(b, c, *self.size)
        x = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Multi-head attention inside ``window x window`` windows with a learned bias per head and per
    absolute offset ``(|dy|, |dx|)`` (LeViT style). Pre-norm is part of the module, as in the checkpoint.

    ``(B', window*window, D) -> (B', window*window, D)``.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        # Offset (|dy|, |dx|) is stored at column |dy| * window + |dx|.
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("bias_index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # The checkpoint's qkv output is laid out per head as [q | k | v].
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (B', heads, N, head_dim)
        index: torch.Tensor = self.bias_index  # type: ignore[assignment]
        bias = self.attention_biases[:, index].to(q.dtype)  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TinyViTBlock(nn.Module):
    """Windowed attention, a depthwise 3x3 convolution on the token grid, then an MLP:
    tokens ``(B, H*W, D)`` on a ``size`` grid in and out."""

    def __init__(
        self, dim: int, size: tuple[int, int], num_heads: int, window: int, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.size = size
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d = x.shape
        h, w = self.size
        win = self.window
        if (h, w) == (win, win):
            return self.attn(x)
        grid = x.view(b, h, w, d)
        # Zero tokens pad the grid (before the attention's own LayerNorm, and unmasked), as the
        # reference does; the checkpoint was trained that way.
        pad_h, pad_w = (win - h % win) % win, (win - w % win) % win
        if pad_h or pad_w:
            grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        win_tokens = grid.view(b, hp // win, win, wp // win, win, d).transpose(2, 3).reshape(-1, win * win, d)
        out = self.attn(win_tokens)
        out = out.view(b, hp // win, wp // win, win, win, d).transpose(2, 3).reshape(b, hp, wp, d)
        return out[:, :h, :w].reshape(b, h * w, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d = x.shape
        x = x + drop_path(self._windows(x), self.drop_path, self.training)
        x = self.local_conv(x.transpose(1, 2).reshape(b, d, *self.size)).flatten(2).transpose(1, 2)
        return x + drop_path(self.mlp(x), self.drop_path, self.training)


class _Mlp(nn.Module):
    """LayerNorm, then two linear layers with GELU between: ``(..., D) -> (..., D)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class Stage(nn.Module):
    """The blocks of one stage and the patch merging that follows it (none after the last)."""

    def __init__(self, blocks: list[nn.Module], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class TinyViT(nn.Module):
    """MobileSAM's image encoder. ``(B, 3, img_size, img_size)`` normalised, padded images ->
    ``(B, out_chans, img_size / 16, img_size / 16)``.

    With ``early_features=True`` (SAM-HQ's light model), the second stage's output ``(B, dims[2], g, g)``
    is appended to the embedding's channels: ``(B, out_chans + dims[2], g, g)`` (see
    :mod:`segany.model.hq`).
    """

    def __init__(
        self,
        img_size: int = 1024,
        dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        windows: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        conv_expand_ratio: float = 4.0,
        num_classes: int = 1000,
        out_chans: int = 256,
        drop_path_rate: float = 0.0,
        early_features: bool = False,
    ) -> None:
        super().__init__()
        if len(dims) != 4 or len(depths) != 4 or len(num_heads) != 4 or len(windows) != 4:
            raise ValueError("TinyViT has 4 stages: dims, depths, num_heads and windows need 4 values each")
        bad = [i for i in range(1, 4) if num_heads[i] <= 0 or dims[i] % num_heads[i]]
        if bad:
            i = bad[0]
            raise ValueError(f"stage {i}: width {dims[i]} is not a multiple of its {num_heads[i]} heads")
        if img_size % 16:
            raise ValueError(f"img_size must be a multiple of 16, got {img_size}")
        self.img_size = img_size
        self.early_features = early_features
        self.gradient_checkpointing = False
        self.patch_embed = PatchEmbed(3, dims[0])
        g = img_size // 4
        sizes = [g, g // 2, g // 4, g // 4]  # the last merge keeps the resolution
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages = []
        for i in range(4):
            size = (sizes[i], sizes[i])
            r = rates[sum(depths[:i]) : sum(depths[: i + 1])]
            if i == 0:
                blocks: list[nn.Module] = [MBConv(dims[0], conv_expand_ratio, r[j]) for j in range(depths[0])]
            else:
                blocks = [
                    TinyViTBlock(dims[i], size, num_heads[i], windows[i], mlp_ratio, r[j]) for j in range(depths[i])
                ]
            down = PatchMerging(size, dims[i], dims[i + 1], 2 if i < 2 else 1) if i < 3 else None
            stages.append(Stage(blocks, down))
        self.layers = nn.ModuleList(stages)
        self.grid = sizes[-1]
        # Kept for the checkpoint layout (MobileSAM's file holds them); never run.
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @property
    def blocks(self) -> list[nn.Module]:
        """Every block in order (what layer-wise learning-rate decay counts)."""
        return [b for stage in self.layers for b in stage.blocks]  # type: ignore[union-attr]

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and x.requires_grad:
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        early = None
        for i, stage in enumerate(self.layers):
            for block in stage.blocks:  # type: ignore[union-attr]
                x = self._run(block, x)
            if stage.downsample is not None:  # type: ignore[union-attr]
                x = stage.downsample(x)  # type: ignore[union-attr,operator]
            if i == 1:
                early = x
        b, _, d = x.shape
        out = self.neck(x.transpose(1, 2).reshape(b, d, self.grid, self.grid))
        if not self.early_features:
            return out
        assert early is not None
        early_map = early.transpose(1, 2).reshape(b, early.shape[-1], self.grid, self.grid)
        return torch.cat([out, early_map], dim=1)
