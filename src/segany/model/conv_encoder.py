"""A small convolutional image encoder that emits SAM's embedding grid.

Any encoder that maps the ``(B, 3, S, S)`` input to the ``(B, C, S/16, S/16)`` embedding grid is SAM to
the prompt encoder and the mask decoder (MobileSAM and EfficientSAM swap the ViT the same way). A
convolutional, multi-scale encoder learns from a few hundred images on a CPU far faster than a plain
ViT trained from scratch, which is why the small default model uses one.

Layout: a stride-2 stem, then stages of residual 3x3 blocks, each starting with a stride-2 3x3
convolution (so stage ``i`` runs at stride ``2 ** (i + 1)``); the stride-8 and stride-16 features
are fused (the finer one brought to the grid by a strided convolution), two dilated residual blocks
add context, and a neck (1x1 conv + LayerNorm2d, as SAM's) gives ``out_chans`` channels.

Shapes: input ``(B, 3, S, S)``; output ``(B, out_chans, S/16, S/16)``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from segany.model.common import LayerNorm2d


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BatchNorm with an identity shortcut: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn(channels, channels, dilation=dilation)
        self.conv2 = _conv_bn(channels, channels, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        return torch.relu(x + self.conv2(y))


class Stage(nn.Module):
    """A stride-2 3x3 conv (``cin -> cout``) and ``depth`` residual blocks.

    ``(B, cin, H, W) -> (B, cout, H/2, W/2)``.
    """

    def __init__(self, cin: int, cout: int, depth: int) -> None:
        super().__init__()
        self.down = _conv_bn(cin, cout, stride=2)
        self.blocks = nn.Sequential(*(ResidualBlock(cout) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(torch.relu(self.down(x)))


class ConvImageEncoder(nn.Module):
    """Convolutional encoder to SAM's embedding grid (stride 16).

    Args:
        img_size: side ``S`` of the square input (a multiple of 16).
        widths: channels of the stem (stride 2) and of the stages at strides 4, 8 and 16.
        depths: residual blocks in each of the three stages.
        out_chans: channels of the embedding grid (SAM: 256).
    """

    stride = 16

    def __init__(
        self,
        img_size: int = 256,
        widths: tuple[int, int, int, int] = (32, 64, 128, 256),
        depths: tuple[int, int, int] = (1, 2, 2),
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 3:
            raise ValueError(f"widths needs 4 entries and depths 3, got {widths} and {depths}")
        if img_size % self.stride:
            raise ValueError(f"img_size {img_size} is not a multiple of {self.stride}")
        self.img_size = img_size
        # Stored so a checkpoint states its input size (a convolution's weights do not show it).
        self.register_buffer("input_size", torch.tensor(img_size, dtype=torch.int64))
        self.gradient_checkpointing = False  # accepted for the training loop's sake; convolutions are cheap
        w0, w1, w2, w3 = widths
        self.stem = nn.Sequential(
            _conv_bn(3, w0, stride=2), nn.ReLU(inplace=True), _conv_bn(w0, w0), nn.ReLU(inplace=True)
        )
        self.stages = nn.ModuleList([Stage(w0, w1, depths[0]), Stage(w1, w2, depths[1]), Stage(w2, w3, depths[2])])
        # The stride-8 features carry the finer boundaries; a strided conv brings them to the grid.
        self.fuse_fine = _conv_bn(w2, w3, stride=2)
        self.context = nn.Sequential(ResidualBlock(w3, dilation=2), ResidualBlock(w3, dilation=4))
        self.neck = nn.Sequential(nn.Conv2d(w3, out_chans, 1, bias=False), LayerNorm2d(out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised image -> ``(B, out_chans, S/16, S/16)``."""
        x = self.stem(x)
        x = self.stages[0](x)
        fine = self.stages[1](x)
        coarse = self.stages[2](fine)
        x = torch.relu(coarse + self.fuse_fine(fine))
        return self.neck(self.context(x))


def is_conv_state_dict(keys: object) -> bool:
    """Whether a state dict's keys (an iterable of str) belong to a model with this encoder."""
    return any(str(k).startswith("image_encoder.stages.") for k in keys)  # type: ignore[attr-defined]


def infer_conv_encoder(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """Read the encoder's settings off a state dict's shapes (keys prefixed ``image_encoder.``).

    Returns ``image_size``, ``conv_widths``, ``conv_depths`` and ``prompt_embed_dim``; raises
    ``KeyError`` naming a missing key.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise KeyError(key)
        return tuple(state[key].shape)

    w0 = shape("image_encoder.stem.0.0.weight")[0]
    widths = [w0] + [shape(f"image_encoder.stages.{i}.down.0.weight")[0] for i in range(3)]
    depths = []
    for i in range(3):
        ids = {int(m.group(1)) for k in state if (m := re.match(rf"image_encoder\.stages\.{i}\.blocks\.(\d+)\.", k))}
        depths.append(max(ids) + 1 if ids else 0)
    size = state.get("image_encoder.input_size")
    if size is None or size.numel() != 1:
        raise KeyError("image_encoder.input_size")
    return {
        "image_size": int(size.item()),
        "conv_widths": tuple(widths),
        "conv_depths": tuple(depths),
        "prompt_embed_dim": shape("image_encoder.neck.0.weight")[0],
    }
