"""Clicks in bfloat16: the opt-in fast decoder for CPUs with bfloat16 instructions.

:class:`segany.inference.decoders.fast.FastMaskDecoder` and the low-rank decoder reproduce the official
float32 logits. On CPUs with AVX-512 BF16 or AMX, a bfloat16 matrix product runs 2-2.5x faster than a
float32 one and reads half the memory. :class:`BFloat16ClickDecoder` runs a bfloat16 copy of the mask
decoder: every product takes bfloat16 inputs (and accumulates in float32 inside the kernel), LayerNorms
and softmaxes compute their statistics in float32 (PyTorch's bfloat16 kernels do), and the logits and
IoU predictions come back as float32. The result is close to the official logits, not equal to them to
float rounding: the accuracy cost (mask IoU against float32) is measured in ``benchmarks/bench_cpu.py``
and bounded in tests.

The computation is the fast decoder's (cached first-layer projections, reassociated cross-attention,
the upscaling as products on channel-last rows) with layouts chosen for the bfloat16 kernels: every
product keeps the image rows as its row-major left operand, or multiplies a row-major attention matrix
by them (a transposed bfloat16 operand costs a copy), and softmaxes run along contiguous rows. The
upscaling writes its logits straight into image order, half an output row block at a time, instead of
permuting a ``(B, M, g, g, 2, 2, 2, 2)`` array. Shapes as in :mod:`segany.inference.decoders.fast`:
``N = g * g`` rows of width ``C``, ``h`` heads of width ``e``, ``T`` tokens, ``M`` masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dataclasses import dataclass
from typing import Any

from segany.inference.decoders._kernels import Points, heads_first, sparse_prompts, upscale_to_image
from segany.inference.decoders.compile import compile_methods
from segany.inference.decoders.fast import DecoderImageCache, FastMaskDecoder, ImageCache, select_outputs, supports_fast
from segany.model import Sam
from segany.model.transformer import Attention

__all__ = ["BF16ImageCache", "BFloat16ClickDecoder", "BFloat16Decoder"]

BF16 = torch.bfloat16


def _per_head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Each head's rows times its own block of a weight: ``(B, h, T, e) x (h, e, C) -> (B, h*T, C)``
    (rows head-major), the product of :func:`~segany.inference.decoders._kernels.block_rows` without its zeros."""
    b, h, t, _ = x.shape
    return torch.matmul(x, w).view(b, h * t, -1)


def _against_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x (B, R, C)`` times image rows ``(B|1, N, C)`` transposed: ``(B, R, N)``, as ``linear`` with the
    rows as its weight, their native layout (a batched product would copy the transposed rows)."""
    if rows.shape[0] == 1:
        return F.linear(x, rows[0])
    return torch.stack([F.linear(x[i], rows[i]) for i in range(x.shape[0])])


class _Linear2:
    """A token MLP (linear, activation, linear) with bfloat16 weights, float32 in and out."""

    def __init__(self, lin1: torch.nn.Linear, act: torch.nn.Module, lin2: torch.nn.Linear) -> None:
        self.w1, self.b1 = lin1.weight.detach().to(BF16), lin1.bias.detach().to(BF16)
        self.w2, self.b2 = lin2.weight.detach().to(BF16), lin2.bias.detach().to(BF16)
        self.act = act

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act(F.linear(x.to(BF16), self.w1, self.b1)), self.w2, self.b2).float()


@dataclass
class BF16ImageCache:
    """:class:`~segany.inference.decoders.fast.ImageCache` in the bfloat16 decoder's layouts, all bfloat16:
    ``src (B|1, N, C)``, ``v1 (B|1, h, N, e)``, and transposed per head, the first layer's token->image
    keys ``k1`` and image->token queries ``q1`` ``(B|1, h, e, N)`` (row-major right operands); SAM-HQ's
    fused features ``hq`` as the fast cache holds them (float32, None for other models)."""

    src: torch.Tensor
    k1: torch.Tensor
    v1: torch.Tensor
    q1: torch.Tensor
    hq: torch.Tensor | None = None


class BFloat16ClickDecoder(FastMaskDecoder):
    """:class:`~segany.inference.decoders.fast.FastMaskDecoder` with bfloat16 image-side products:
    same calls (``run_transformer``, ``upscale``, ``forward`` on the fields of a cache from :meth:`cache`),
    float32 logits and IoU predictions. Inference only (no autograd).

    Holds bfloat16 copies of the weights that meet the image rows and of the token MLPs, made at
    construction: build a new one after changing the model's weights (:class:`SamPredictor` does).
    """

    def __init__(self, model: Sam) -> None:
        if not supports_fast(model):
            raise ValueError("the bfloat16 decoder needs the standard mask decoder or SAM-HQ's")
        super().__init__(model, scratch=True)
        dec: Any = model.mask_decoder
        self.heads = dec.transformer.num_heads
        self.image_pe = self.image_pe.to(BF16)  # (1, N, C)
        # The token MLPs (2048 wide) are 2.5x faster in bfloat16; the 256-wide token products are
        # faster in float32 and stay there.
        self.mlps = [_Linear2(layer.mlp.lin1, layer.mlp.act, layer.mlp.lin2) for layer in dec.transformer.layers]
        # The hypernetwork MLPs (one per mask token, same shapes) stacked: three batched products.
        mlps = dec.output_hypernetworks_mlps
        depth = len(mlps[0].layers)
        self.hyper_w = [torch.stack([m.layers[i].weight.t() for m in mlps]).detach() for i in range(depth)]
        self.hyper_b = [torch.stack([m.layers[i].bias for m in mlps]).unsqueeze(1).detach() for i in range(depth)]
        up1, _, _, up2, _ = dec.output_upscaling
        c1, c2 = up2.in_channels, up2.out_channels
        # Transposed convolutions as matrices: up1 (C, 4 * c1) with columns (dy, dx, channel); up2 one
        # (c1, 2 * c2) matrix per output row parity dy2, columns (dx2, channel).
        self.w1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, 4 * c1).detach().to(BF16)
        self.b1 = up1.bias.repeat(4).detach().to(BF16)
        self.w2 = [up2.weight[:, :, dy2, :].permute(0, 2, 1).reshape(c1, 2 * c2).detach().to(BF16) for dy2 in range(2)]
        self.b2 = up2.bias.repeat(2).detach().to(BF16)

    @staticmethod
    def cache(first: ImageCache) -> BF16ImageCache:
        """The fast decoder's float32 cache (one image, or one per prompt with a mask prompt) in this
        decoder's layouts (see :class:`BF16ImageCache`)."""
        b, n, d = first.q1.shape
        h = first.k1.shape[1]
        k1 = first.k1.transpose(-1, -2).to(BF16).contiguous()
        q1 = first.q1.view(b, n, h, d // h).permute(0, 2, 3, 1).to(BF16).contiguous()
        return BF16ImageCache(first.src.to(BF16), k1, first.v1.to(BF16), q1, first.hq)

    # -- attention ---------------------------------------------------------------------------------

    def t2i_cached(self, a: Attention, q_tok: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Tokens attend to the image with the cached keys ``(B|1, h, e, N)`` and values ``(B|1, h, N, e)``."""
        q = heads_first(a.q_proj(q_tok), self.heads)
        attn = torch.softmax((q * q.shape[-1] ** -0.5).to(BF16) @ k, dim=-1)  # (B, h, T, N)
        return a.out_proj((attn @ v).transpose(1, 2).flatten(2).float())

    def _t2i(self, a: Attention, q_tok: torch.Tensor, k_img: torch.Tensor, v_img: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, T, C)`` attend to bfloat16 image rows: keys ``k_img``, values ``v_img (B|1, N, C)``."""
        h = self.heads
        q = heads_first(a.q_proj(q_tok), h)  # (B, h, T, e)
        b, _, t, e = q.shape
        qk = _per_head(q * e**-0.5, a.k_proj.weight.view(h, e, -1))  # (B, h*T, C); key bias: softmax ignores it
        attn = torch.softmax(_against_rows(qk.to(BF16), k_img), dim=-1)  # (B, h*T, N), over the N rows
        pooled = torch.matmul(attn, v_img).float().view(b, h, t, -1)  # (B, h, T, C)
        out = torch.matmul(pooled, a.v_proj.weight.view(h, e, -1).transpose(1, 2))  # each head's own W_v rows
        return a.out_proj(out.transpose(1, 2).reshape(b, t, h * e) + a.v_proj.bias)

    def _i2t(
        self,
        a: Attention,
        q_img: torch.Tensor | None,
        q1t: torch.Tensor | None,
        k_tok: torch.Tensor,
        v_tok: torch.Tensor,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """``residual (B|1, N, C)`` plus the image rows' attention to the tokens, in bfloat16. Queries:
        the rows ``q_img (B, N, C)`` (projected through the tokens' keys here) or the cached projected
        queries ``q1t (B|1, h, e, N)``."""
        h = self.heads
        k = heads_first(a.k_proj(k_tok), h) * (a.internal_dim // h) ** -0.5  # (B, h, T, e)
        b, _, t, e = k.shape
        if q1t is not None:  # (B, h, T, N) straight away: one small product per head
            attn = torch.softmax(torch.matmul(k.to(BF16), q1t), dim=2).view(b, h * t, -1)
        else:
            assert q_img is not None
            wq = _per_head(k, a.q_proj.weight.view(h, e, -1)).to(BF16)  # (B, h*T, C)
            bias = (k * a.q_proj.bias.view(h, 1, e)).sum(-1).view(b, h * t, 1).to(BF16)
            logits = _against_rows(wq, q_img).add_(bias)  # (B, h*T, N)
            # Softmax over each head's tokens, along contiguous image rows.
            attn = torch.softmax(logits.view(b, h, t, -1), dim=2).view(b, h * t, -1)
        v = heads_first(a.v_proj(v_tok), h)
        # Each image row's attention sums to h (one softmax per head): the output bias rides along as b / h.
        vo = _per_head(v, a.out_proj.weight.t().reshape(h, e, -1)).add_(a.out_proj.bias / h).to(BF16)  # (B, h*T, C)
        if q1t is None and residual.shape[0] == b:  # later layers: the rows are ours, update them in place
            return residual.baddbmm_(attn.transpose(1, 2), vo)
        return torch.baddbmm(residual.expand(b, -1, -1), attn.transpose(1, 2), vo)

    # -- decoder -----------------------------------------------------------------------------------

    def _mlp(self, index: int, layer: Any, queries: torch.Tensor) -> torch.Tensor:
        return self.mlps[index](queries)

    def _hypernetworks(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.transpose(0, 1)  # (M, B, C)
        last = len(self.hyper_w) - 1
        for j, (w, bias) in enumerate(zip(self.hyper_w, self.hyper_b)):
            x = torch.baddbmm(bias, x, w)
            if j < last:
                x = torch.relu(x)
        return x.transpose(0, 1)

    @torch.no_grad()
    def run_transformer(
        self, src: torch.Tensor, k1: torch.Tensor, v1: torch.Tensor, q1: torch.Tensor, sparse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`FastMaskDecoder.run_transformer`, on a cache from :meth:`cache`: image rows ``(B, N, C)``
        in bfloat16, hypernetwork outputs ``(B, M, c2)`` and IoU predictions ``(B, M)`` in float32."""
        return super().run_transformer(src, k1, v1, q1, sparse)

    @torch.no_grad()
    def upscale(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """Image rows ``(B, N, C)`` and ``hyper (B, M, c2)`` -> float32 logits ``(B, M, 4g, 4g)``: the
        first transposed convolution on channel-last rows, then
        :func:`~segany.inference.decoders._kernels.upscale_to_image`."""
        _, norm, act1, _, act2 = list[Any](self.model.mask_decoder.output_upscaling)
        b, n, _ = keys.shape
        out = self.buffer("up1", (b * n, self.w1.shape[1]), keys)
        if out is None:
            first = torch.addmm(self.b1, keys.reshape(b * n, -1), self.w1)  # (B*N, 4*c1)
        else:
            first = torch.addmm(self.b1, keys.reshape(b * n, -1), self.w1, out=out)
        norm_args = (norm.weight.to(BF16), norm.bias.to(BF16), norm.eps)
        halves = (self.w2[0], self.w2[1])
        return upscale_to_image(
            first, norm_args, act1, halves, self.b2, act2, hyper, self.grid, torch.float32, self.buffer
        )


class BFloat16Decoder:
    """``decoder="bf16"``: :class:`BFloat16ClickDecoder` behind the
    :class:`~segany.inference.decoders.ClickDecoder` interface. Approximate (mean mask IoU against the
    float32 decoder in ``benchmarks/RESULTS.md``); for CPUs with AVX-512 BF16 or AMX."""

    name = "bf16"
    exact = False

    def __init__(self, model: Sam) -> None:
        self.model = model
        self.image_cache = DecoderImageCache(model)
        self.module = BFloat16ClickDecoder(model)

    @torch.no_grad()
    def prepare(self, features: torch.Tensor, mask_input: torch.Tensor | None = None) -> BF16ImageCache:
        return self.module.cache(self.image_cache.cache(features, mask_input))

    @torch.no_grad()
    def run(
        self, state: BF16ImageCache, points: Points | None, boxes: torch.Tensor | None, multimask_output: bool
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        sparse = sparse_prompts(self.model, points, boxes, state.src.shape[0])
        keys, hyper, iou = self.module.run_transformer(state.src, state.k1, state.v1, state.q1, sparse)
        hyper, iou = select_outputs(self.module.hq, hyper, iou, multimask_output)
        return (keys, hyper), iou

    @torch.no_grad()
    def upscale(
        self, state: BF16ImageCache, pending: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor | None = None
    ) -> torch.Tensor:
        keys, hyper = pending
        if index is not None:
            keys, hyper = keys[index], hyper[index]
        if state.hq is not None:
            # SAM-HQ: the transformer ran in bfloat16; the HQ upscaling and its 3x3 convolutions in float32.
            hq_token_only = bool(getattr(self.model.mask_decoder, "hq_token_only", False))
            return FastMaskDecoder.upscale_hq(self.module, keys.float(), hyper, state.hq, hq_token_only)
        return self.module.upscale(keys, hyper)

    def compile(self) -> None:
        compile_methods(self.module, "run_transformer")
