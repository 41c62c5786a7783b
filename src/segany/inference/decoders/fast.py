"""The mask decoder rewritten for fast CPU inference: same function, far fewer multiply-adds.

Nothing here changes what the decoder computes; it changes the order of the (linear) operations:

* **Per-image cache.** In the first two-way layer the image tokens have not yet seen the prompt, so their
  key/value projections for token->image attention and their query projection for image->token
  attention depend only on the image (and the mask prompt). :class:`DecoderImageCache` computes them
  once per image; each click then skips three ``4096 x 256 x 128`` projections.
* **Reassociated cross-attention.** With few prompt tokens ``T`` (5 output tokens + the prompt points),
  ``softmax(Q (X W_k)^T) (X W_v) W_o`` is cheaper as ``softmax((Q W_k) X^T) X ...`` and
  ``softmax((X W_q) K^T) (V W_o)``: the image side is multiplied by ``heads * T`` columns instead of
  being projected to the internal width (128) and back. Key biases of token->image attention add the
  same constant to every logit of a row and are dropped (softmax ignores them); value biases pass
  through because attention rows sum to one.
* **Upscaling as matrix products.** Each 2x2/stride-2 transposed convolution is a per-pixel linear map
  to ``4 x channels``; doing it on channel-last rows avoids convolution kernels and layout copies. Only
  the final ``(B, 4, 256, 256)`` logits are rearranged into image order.

For more than ~16 prompt tokens the reassociated attention does more work than the original one; the
result is still correct. Shapes: ``g`` = embedding grid side (64), ``N = g * g``, ``C`` = decoder width.
All modules trace cleanly for ONNX export (no data-dependent Python control flow).

**SAM-HQ** (:mod:`segany.model.hq`): the transformer runs with one more output token (``hf_token``), and
the image cache also holds the per-image ``hq_features`` (the fused embedding and early features, which
no prompt changes). Each prompt's SAM mask and HQ mask need the upscaled feature map itself (the HQ
mask refines it with 3x3 convolutions), so :meth:`FastMaskDecoder.upscale_hq` upscales on channel-last
rows as above, puts the map once into image layout and dots both hypernetwork outputs with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segany.inference.decoders._kernels import (
    Points,
    Scratch,
    block_rows,
    block_rows_token_major,
    conv_as_matrix,
    flat_dense_pe,
    heads_first,
    sparse_prompts,
    upscale_to_image,
)
from segany.inference.decoders.compile import compile_methods
from segany.model import Sam
from segany.model.transformer import Attention

__all__ = [
    "DecoderImageCache",
    "FastDecoder",
    "FastMaskDecoder",
    "ImageCache",
    "embed_points",
    "is_hq",
    "select_hq",
    "select_outputs",
    "supports",
    "supports_fast",
]


@dataclass
class ImageCache:
    """Image-side decoder inputs for one image (batch 1) or one per prompt (batch B).

    ``src (B, N, C)``: image embedding plus dense prompt; ``k1, v1 (B, heads, N, e)``: keys and values
    of the first layer's token->image attention; ``q1 (B, N, d)``: queries of its image->token attention;
    ``hq (1, C/8, 4g, 4g)``: SAM-HQ's fused image features (HQ models only, else None).
    """

    src: torch.Tensor
    k1: torch.Tensor
    v1: torch.Tensor
    q1: torch.Tensor
    hq: torch.Tensor | None = None


def supports(model: Sam) -> bool:
    """Whether ``model`` has the standard decoder that this rewrite reproduces (not a replaced one)."""
    from segany.model.mask_decoder import MaskDecoder

    return type(model.mask_decoder) is MaskDecoder


def is_hq(model: Sam) -> bool:
    """Whether ``model`` has SAM-HQ's decoder (:class:`segany.model.hq.MaskDecoderHQ`), unmodified."""
    from segany.model.hq import MaskDecoderHQ

    return type(model.mask_decoder) is MaskDecoderHQ


def supports_fast(model: Sam) -> bool:
    """Whether the fast decoder reproduces ``model``'s decoder: the standard one or SAM-HQ's."""
    return supports(model) or is_hq(model)


def select_hq(
    hyper: torch.Tensor, iou: torch.Tensor, multimask_output: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM-HQ's choice of SAM's mask, as :meth:`segany.model.hq.MaskDecoderHQ.forward` makes it.

    ``hyper (B, M + 1, c)`` (the HQ token's last), ``iou (B, M)`` -> ``(B, 2, c)``: the chosen SAM
    token's hypernetwork output and the HQ token's; and that SAM token's IoU prediction ``(B, 1)``. The
    choice: with ``multimask_output`` the multimask token with the highest predicted IoU, else token 0."""
    if multimask_output:
        iou_sam, best = iou[:, 1:].max(dim=1, keepdim=True)
        best = best + 1
    else:
        iou_sam, best = iou[:, :1], torch.zeros_like(iou[:, :1], dtype=torch.int64)
    sam = hyper.gather(1, best.unsqueeze(-1).expand(-1, -1, hyper.shape[-1]))
    return torch.cat([sam, hyper[:, -1:]], dim=1), iou_sam


def select_outputs(
    hq: bool, hyper: torch.Tensor, iou: torch.Tensor, multimask_output: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The hypernetwork outputs and IoU predictions of the masks a click returns: the multimask tokens'
    (or the single-mask token's), or for SAM-HQ (``hq``) one mask per prompt (see :func:`select_hq`)."""
    if hq:
        return select_hq(hyper, iou, multimask_output)
    sel = slice(1, None) if multimask_output else slice(0, 1)
    return hyper[:, sel], iou[:, sel]


def embed_points(model: Sam, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sparse prompt tokens with the official ONNX label convention: ``(B, K, 2), (B, K) -> (B, K, C)``.

    ``coords`` are pixel coordinates in the resized (input) frame. Labels: 1 foreground, 0 background,
    2 and 3 box top-left and bottom-right corners, -1 padding ("not a point": no position, learned
    vector only). Any other label gets the positional encoding only. Labels may be float or int.
    """
    pe_layer: Any = model.prompt_encoder.pe_layer
    size = float(model.image_encoder.img_size)
    pe = pe_layer._encode((coords + 0.5) / size)
    labels = labels.to(pe.dtype).unsqueeze(-1)
    out = pe * (labels != -1).to(pe.dtype) + model.prompt_encoder.not_a_point_embed.weight * (labels == -1).to(pe.dtype)
    emb: Any
    for i, emb in enumerate(model.prompt_encoder.point_embeddings):
        out = out + emb.weight * (labels == i).to(pe.dtype)
    return out


class DecoderImageCache(nn.Module):
    """Image embedding (+ mask prompt) -> :class:`ImageCache` fields (as a tuple, for export)."""

    image_pe: torch.Tensor

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.model = model
        layer: Any = model.mask_decoder.transformer.layers[0]
        self.t2i: Attention = layer.cross_attn_token_to_image
        self.i2t: Attention = layer.cross_attn_image_to_token
        self.register_buffer("image_pe", flat_dense_pe(model), persistent=False)
        self.hq = is_hq(model)

    def dense(self, mask_input: torch.Tensor | None, has_mask_input: torch.Tensor | None) -> torch.Tensor:
        """Dense prompt ``(B or 1, C, g, g)``; ``has_mask_input`` (1,) blends like the official export."""
        no_mask = self.model.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1)
        if mask_input is None:
            return no_mask
        embedded = self.model.prompt_encoder.mask_downscaling(mask_input)
        if has_mask_input is None:
            return embedded
        has = has_mask_input.to(embedded.dtype)
        return has * embedded + (1 - has) * no_mask

    def forward(
        self,
        image_embeddings: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        has_mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(1, C, g, g)``, optional ``(B, 1, 4g, 4g)`` and ``(1,)`` -> ``src, k1, v1, q1``. A SAM-HQ
        model's embedding ``(1, C + early_dim, g, g)`` gives the same fields (see :meth:`hq_features`)."""
        if self.hq:
            image_embeddings = image_embeddings[:, : self.model.prompt_encoder.embed_dim]
        src = image_embeddings + self.dense(mask_input, has_mask_input)
        src = src.flatten(2).transpose(1, 2)  # (B, N, C)
        with_pe = src + self.image_pe
        heads = self.t2i.num_heads
        k1 = heads_first(self.t2i.k_proj(with_pe), heads).contiguous()
        v1 = heads_first(self.t2i.v_proj(src), heads).contiguous()
        q1 = self.i2t.q_proj(with_pe)
        return src.contiguous(), k1, v1, q1

    def hq_features(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """SAM-HQ: the HQ encoder's output ``(1, C + early_dim, g, g)`` -> the fused features
        ``(1, C/8, 4g, 4g)`` (upscaled embedding plus upscaled early features), the same for every prompt."""
        dec: Any = self.model.mask_decoder
        d = self.model.prompt_encoder.embed_dim
        if image_embeddings.shape[1] != d + dec.early_dim:
            raise ValueError(
                f"SAM-HQ's decoder takes an HQ encoder's output ({d} + {dec.early_dim} channels), "
                f"got {image_embeddings.shape[1]} channels"
            )
        embedding, early = image_embeddings[:, :d], image_embeddings[:, d:]
        return dec.embedding_encoder(embedding) + dec.compress_vit_feat(early)

    def cache(self, image_embeddings: torch.Tensor, mask_input: torch.Tensor | None = None) -> ImageCache:
        hq = self.hq_features(image_embeddings) if self.hq else None
        return ImageCache(*self.forward(image_embeddings, mask_input), hq=hq)


class FastMaskDecoder(nn.Module):
    """:class:`ImageCache` + sparse prompt tokens -> all mask logits and IoU predictions.

    Equals ``model.mask_decoder.predict_masks`` (``(B, M, 4g, 4g)`` logits for all ``M`` mask tokens,
    ``(B, M)`` IoU) up to float rounding. The cache may have batch 1 (shared by every prompt) or B.
    """

    image_pe: torch.Tensor
    eye: torch.Tensor

    def __init__(self, model: Sam, scratch: bool = False) -> None:
        super().__init__()
        self.model = model
        dec = model.mask_decoder
        self.decoder = dec
        # scratch=True (interactive inference): the upscaling's large temporaries live in per-thread
        # buffers reused from call to call (see Scratch); never under autograd or export.
        self.scratch = scratch
        self.buffer = Scratch(scratch)
        self.register_buffer("image_pe", flat_dense_pe(model), persistent=False)
        heads = dec.transformer.num_heads
        self.register_buffer("eye", torch.eye(heads), persistent=False)
        gh, gw = model.prompt_encoder.image_embedding_size
        self.grid = (int(gh), int(gw))
        self.hq = is_hq(model)

    # -- attention variants ------------------------------------------------------------------

    def t2i_cached(self, a: Attention, q_tok: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Tokens attend to the image with cached keys/values ``(B|1, h, N, e)``."""
        q = heads_first(a.q_proj(q_tok), a.num_heads)
        scale = q.shape[-1] ** -0.5
        attn = torch.softmax((q * scale) @ k.transpose(-1, -2), dim=-1)
        out = (attn @ v).transpose(1, 2).flatten(2)
        return a.out_proj(out)

    def _t2i(self, a: Attention, q_tok: torch.Tensor, k_img: torch.Tensor, v_img: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, T, C)`` attend to image rows ``(B, N, C)`` without projecting the image."""
        h = a.num_heads
        q = heads_first(a.q_proj(q_tok), h)  # (B, h, T, e)
        b, _, t, e = q.shape
        scale = e**-0.5
        # (Q_h W_k,h) per head, all heads stacked as rows: (B, h*T, C).
        qk = block_rows(q * scale, self.eye) @ a.k_proj.weight
        attn = torch.softmax(qk @ k_img.transpose(1, 2), dim=-1)  # (B, h*T, N)
        pooled = attn @ v_img  # (B, h*T, C): attention-weighted image rows
        # Each head's rows through its own slice of W_v; the off-diagonal head pairs are discarded.
        per = (pooled @ a.v_proj.weight.t()).view(b, h, t, h, e)
        out = (per * self.eye.view(1, h, 1, h, 1)).sum(dim=1).reshape(b, t, h * e) + a.v_proj.bias
        return a.out_proj(out)

    def _i2t(
        self,
        a: Attention,
        q_img: torch.Tensor | None,
        q1: torch.Tensor | None,
        k_tok: torch.Tensor,
        v_tok: torch.Tensor,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """``residual`` (B|1, N, C) plus the image rows' attention to the tokens; queries are the rows
        ``q_img (B, N, C)`` (projected here) or the cached projected queries ``q1 (B|1, N, d)``."""
        h = a.num_heads
        k = heads_first(a.k_proj(k_tok), h)  # (B, h, T, e)
        b, _, t, e = k.shape
        kbd = block_rows_token_major(k * e**-0.5, self.eye).transpose(1, 2)  # (B, d, T*h)
        if q1 is not None:
            logits = q1 @ kbd
        else:
            assert q_img is not None
            logits = torch.baddbmm((a.q_proj.bias @ kbd).unsqueeze(1), q_img, a.q_proj.weight.t() @ kbd)
        b, n = logits.shape[:2]
        attn = torch.softmax(logits.view(b, n, t, h), dim=-2).view(b, n, t * h)
        v = heads_first(a.v_proj(v_tok), h)  # (B, h, T, e)
        vo = block_rows_token_major(v, self.eye) @ a.out_proj.weight.t()  # (B, T*h, C): V_h W_o,h per head
        # Each row of attn sums to h (one softmax per head), so the output bias rides along as b / h
        # on every row of vo; the residual is the product's starting value: one pass, no extra adds.
        vo = vo + a.out_proj.bias / h
        return torch.baddbmm(residual, attn, vo)

    # -- decoder ---------------------------------------------------------------------------------

    def forward(
        self,
        src: torch.Tensor,
        k1: torch.Tensor,
        v1: torch.Tensor,
        q1: torch.Tensor,
        sparse: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache fields (see :class:`ImageCache`) and sparse tokens ``(B, K, C)`` ->
        logits ``(B, M, 4g, 4g)`` and IoU predictions ``(B, M)`` for all ``M`` mask tokens (SAM's
        decoder; a SAM-HQ model's goes through :meth:`run_transformer` and :meth:`upscale_hq`)."""
        if self.hq:
            raise ValueError("FastMaskDecoder.forward gives SAM's masks only; for SAM-HQ use upscale_hq")
        keys, hyper, iou = self.run_transformer(src, k1, v1, q1, sparse)
        return self.upscale(keys, hyper), iou

    def run_transformer(
        self,
        src: torch.Tensor,
        k1: torch.Tensor,
        v1: torch.Tensor,
        q1: torch.Tensor,
        sparse: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The two-way transformer and the heads, without the upscaling.

        Returns the image rows ``keys (B, N, C)``, the hypernetwork outputs ``hyper (B, M, c)`` and the
        IoU predictions ``(B, M)``; :meth:`upscale` turns the first two into mask logits. Splitting
        here lets a caller upscale only the prompts whose IoU predictions it will keep. For SAM-HQ,
        ``hyper`` is ``(B, M + 1, c)``, the HQ token's output last (see :func:`select_hq`).
        """
        dec: Any = self.decoder
        layer: Any
        b = sparse.shape[0]
        weights = [dec.iou_token.weight, dec.mask_tokens.weight] + ([dec.hf_token.weight] if self.hq else [])
        output_tokens = torch.cat(weights, dim=0)
        prompt = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)  # (B, T, C)
        queries = prompt
        keys = src
        image_pe = self.image_pe
        for i, layer in enumerate(dec.transformer.layers):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(queries, queries, queries)
            else:
                q = queries + prompt
                queries = queries + layer.self_attn(q, q, queries)
            queries = layer.norm1(queries)
            q = queries + prompt
            if i == 0:
                attn = self.t2i_cached(layer.cross_attn_token_to_image, q, k1, v1)
                k_img = None
            else:
                k_img = keys + image_pe
                attn = self._t2i(layer.cross_attn_token_to_image, q, k_img, keys)
            queries = layer.norm2(queries + attn)
            queries = layer.norm3(queries + self._mlp(i, layer, queries))
            k = queries + prompt
            updated = self._i2t(
                layer.cross_attn_image_to_token, k_img, q1 if i == 0 else None, k, queries, keys
            )
            keys = layer.norm4(updated)  # (B, N, C); batch B from here on
        q = queries + prompt
        final = dec.transformer.final_attn_token_to_image
        queries = dec.transformer.norm_final_attn(queries + self._t2i(final, q, keys + image_pe, keys))

        iou = dec.iou_prediction_head(queries[:, 0, :])
        n = dec.num_mask_tokens
        hyper = self._hypernetworks(queries[:, 1 : 1 + n, :])
        if self.hq:
            hyper = torch.cat([hyper, dec.hf_mlp(queries[:, 1 + n, :]).unsqueeze(1)], dim=1)
        return keys, hyper, iou

    # Hooks for variants with other weights or kernels (:mod:`segany.inference.decoders.bf16`).

    def _mlp(self, index: int, layer: Any, queries: torch.Tensor) -> torch.Tensor:
        """The token MLP of two-way layer ``index``."""
        return layer.mlp(queries)

    def _hypernetworks(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mask tokens ``(B, M, C)`` -> hypernetwork outputs ``(B, M, c2)``, one MLP per token."""
        mlps = self.decoder.output_hypernetworks_mlps
        return torch.stack([mlp(tokens[:, j, :]) for j, mlp in enumerate(mlps)], dim=1)

    def upscale(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """Upscale image rows ``(B, N, C)`` 4x and dot with ``hyper (B, M, c)`` -> ``(B, M, 4g, 4g)``."""
        b, n, _ = keys.shape
        w1, b1 = conv_as_matrix(self.decoder.output_upscaling[0])
        out = self.buffer("up1", (b * n, w1.shape[1]), keys)
        if out is None:
            x = torch.addmm(b1, keys.reshape(b * n, -1), w1)  # rows (pixel), columns (dy, dx, channel)
        else:
            x = torch.addmm(b1, keys.reshape(b * n, -1), w1, out=out)
        return self.upscale_rest(x.view(b, n, -1), hyper)

    def upscale_rest(self, x: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """:meth:`upscale` after the first transposed convolution: ``(B, N, 4 * c1)`` (its output with
        bias, columns ``(dy, dx, channel)``) and ``hyper (B, M, c2)`` -> ``(B, M, 4g, 4g)``.

        For interactive inference (``scratch``, no autograd), :func:`upscale_to_image` writes the logits
        straight into image order using reused buffers; otherwise (autograd, export: no in-place writes)
        the products run on plain tensors and one permutation puts the logits in place."""
        b, n, _ = x.shape
        gh, gw = self.grid
        _, norm, act1, up2, act2 = list[Any](self.decoder.output_upscaling)
        w2, b2 = conv_as_matrix(up2)
        c1, c2 = up2.in_channels, up2.out_channels
        m = hyper.shape[1]
        if self.scratch and not torch.is_grad_enabled():
            halves = (w2[:, : 2 * c2], w2[:, 2 * c2 :])  # columns (dx2, channel) for dy2 = 0, 1
            norm_args = (norm.weight, norm.bias, norm.eps)
            return upscale_to_image(
                x, norm_args, act1, halves, b2[: 2 * c2], act2, hyper, self.grid, x.dtype, self.buffer
            )
        x = x.reshape(b, n * 4, c1)  # rows (pixel, dy, dx)
        x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        x = act2(torch.addmm(b2, x.view(b * n * 4, c1), w2))  # (B*4N, 4 * c2): columns (dy2, dx2, channel)
        logits = x.view(b, n * 16, c2) @ hyper.transpose(1, 2)  # (B, 16N, M)
        # Row order (i, j, dy, dx, dy2, dx2) -> image position (4i + 2dy + dy2, 4j + 2dx + dx2).
        logits = logits.view(b, gh, gw, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return logits.reshape(b, m, 4 * gh, 4 * gw)


    def upscale_features(self, keys: torch.Tensor) -> torch.Tensor:
        """The upscaled feature map in image layout: image rows ``(B, N, C)`` -> ``(B, c2, 4g, 4g)``,
        as the model's ``output_upscaling`` gives it (products on channel-last rows, one permutation)."""
        b, n, _ = keys.shape
        gh, gw = self.grid
        _, norm, act1, up2, act2 = list[Any](self.decoder.output_upscaling)
        w1, b1 = conv_as_matrix(self.decoder.output_upscaling[0])
        w2, b2 = conv_as_matrix(up2)
        c1, c2 = up2.in_channels, up2.out_channels
        x = torch.addmm(b1, keys.reshape(b * n, -1), w1).view(b, n * 4, c1)  # rows (pixel, dy, dx)
        x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        x = act2(torch.addmm(b2, x.view(b * n * 4, c1), w2))  # columns (dy2, dx2, channel)
        # Row order (i, j, dy, dx, dy2, dx2) -> image position (4i + 2dy + dy2, 4j + 2dx + dx2).
        x = x.view(b, gh, gw, 2, 2, 2, 2, c2).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, c2, 4 * gh, 4 * gw)

    def upscale_hq(
        self, keys: torch.Tensor, hyper: torch.Tensor, hq_features: torch.Tensor, hq_token_only: bool
    ) -> torch.Tensor:
        """SAM-HQ's mask: image rows ``(B, N, C)``, ``hyper (B, 2, c2)`` (the chosen SAM token's and the HQ
        token's outputs, see :func:`select_hq`) and the cache's ``hq_features (1|B, c2, 4g, 4g)`` ->
        logits ``(B, 1, 4g, 4g)``: the HQ mask, plus the SAM mask unless ``hq_token_only``."""
        dec: Any = self.decoder
        upscaled = self.upscale_features(keys)  # (B, c2, 4g, 4g)
        refined = dec.embedding_maskfeature(upscaled) + hq_features
        b, _, h, w = upscaled.shape
        logits = hyper[:, 1:] @ refined.flatten(2)  # (B, 1, 16N)
        if not hq_token_only:
            logits = logits + hyper[:, :1] @ upscaled.flatten(2)
        return logits.view(b, 1, h, w)


class FastDecoder:
    """``decoder="fast"``: :class:`DecoderImageCache` and :class:`FastMaskDecoder` behind the
    :class:`~segany.inference.decoders.ClickDecoder` interface. The official logits to float rounding,
    with about half the official multiply-adds per prompt."""

    name = "fast"
    exact = True

    def __init__(self, model: Sam) -> None:
        if not supports_fast(model):
            raise ValueError("decoder='fast' needs the standard mask decoder or SAM-HQ's; use decoder='reference'")
        self.model = model
        self.image_cache = DecoderImageCache(model)
        self.module = FastMaskDecoder(model, scratch=True)

    @torch.no_grad()
    def prepare(self, features: torch.Tensor, mask_input: torch.Tensor | None = None) -> ImageCache:
        return self.image_cache.cache(features, mask_input)

    @torch.no_grad()
    def run(
        self, state: ImageCache, points: Points | None, boxes: torch.Tensor | None, multimask_output: bool
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return self.run_sparse(state, sparse_prompts(self.model, points, boxes, state.src.shape[0]), multimask_output)

    @torch.no_grad()
    def run_sparse(
        self, state: ImageCache, sparse: torch.Tensor, multimask_output: bool
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """:meth:`run` on encoded sparse prompt tokens ``(B, K, C)``."""
        keys, hyper, iou = self.module.run_transformer(state.src, state.k1, state.v1, state.q1, sparse)
        hyper, iou = select_outputs(self.module.hq, hyper, iou, multimask_output)
        return (keys, hyper), iou

    @torch.no_grad()
    def upscale(
        self, state: ImageCache, pending: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor | None = None
    ) -> torch.Tensor:
        keys, hyper = pending
        if index is not None:
            keys, hyper = keys[index], hyper[index]
        if state.hq is not None:
            # Read at call time, as the model's decoder does: the flag may be switched after building.
            hq_token_only = bool(getattr(self.model.mask_decoder, "hq_token_only", False))
            return self.module.upscale_hq(keys, hyper, state.hq, hq_token_only)
        return self.module.upscale(keys, hyper)

    def compile(self) -> None:
        compile_methods(self.module, "run_transformer")
