"""Clicks through the mask decoder without ever forming the image rows after the first layer.

:class:`segany.inference.decoders.fast.FastMaskDecoder` caches what the first two-way layer needs from the
image, but still builds the ``N x C`` image rows (N = 4096 for SAM, C = 256) after each later layer and
multiplies them by every projection, because a LayerNorm sits in between. That LayerNorm is per row:
``LN(z) = (z - mean(z)) / std(z) * gamma + beta``. Each image row after the first layer is

    Z1_p = X0_p + A1_p @ VO1                      (X0: the image embedding, A1_p: the row's attention
                                                   weights over the ~7 prompt tokens of each head)
    X1_p = s1_p * (Z1_p - mu1_p) * gamma_a + beta_a    (s1 = 1 / std)

so any linear map of ``X1_p`` is ``s1_p * (map of X0_p * gamma_a)`` (computed **once per image**) plus a
combination of a few prompt-dependent vectors with per-row weights ``A1_p``, plus scalars per row. The
same holds one layer later, and the row statistics (mean, variance) follow from inner products of the
same pieces. :class:`LowRankClickDecoder` keeps every image row in that form:

    Z2_p = s1_p * Y_p + c_p @ U        (Y = X0 * gamma_a, cached; c_p: r ~ 2 * heads * T + 2 weights)

and evaluates the second layer, the final attention and the first upscaling product from per-image
products of ``Y`` and rank-``r`` corrections. Same logits as the model's decoder up to float rounding
(tests compare with ``model.mask_decoder``); about 0.45 instead of 0.82 (fast decoder) or 1.74 (official)
GMAC per ViT-B click.

Only for the standard decoder with two two-way layers and no mask prompt (a mask prompt changes ``X0``
per prompt), in float32 on CPUs (the variances come from inner products, which lower-precision products
would spoil); :class:`LowRankDecoder` (``SamPredictor(model, decoder="lowrank")``) uses the fast decoder
otherwise, and for prompts with many points, where the rank-r corrections outgrow the image width.
Shapes: ``N`` image rows, ``C`` width, ``h`` heads, ``e`` head width (internal width / h), ``T`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from segany.inference.decoders._kernels import Points, block_rows, conv_as_matrix, heads_first, sparse_prompts
from segany.inference.decoders.compile import compile_methods
from segany.inference.decoders.fast import FastDecoder, FastMaskDecoder, ImageCache, supports
from segany.model import Sam

__all__ = ["ImplicitRows", "LowRankCache", "LowRankClickDecoder", "LowRankDecoder", "LowRankState", "supports_lowrank"]


def supports_lowrank(model: Sam) -> bool:
    """The standard decoder with exactly two two-way layers, the first without positional terms."""
    layers: Any = model.mask_decoder.transformer.layers
    return supports(model) and len(layers) == 2 and layers[0].skip_first_layer_pe and not layers[1].skip_first_layer_pe


@dataclass
class LowRankCache:
    """Per-image products (batch 1). ``(h, e, N)`` tensors are per-head projections of the image rows,
    transposed so that token-side products come out as ``(tokens, N)``; ``(h, N, e)`` ones are for
    attention-weighted sums; ``(N,)`` ones are per-row inner products."""

    k1: torch.Tensor  # (1, h, N, e) layer-1 token->image keys (the fast decoder's cache)
    v1: torch.Tensor  # (1, h, N, e) layer-1 token->image values
    q1: torch.Tensor  # (h, e, N) layer-1 image->token queries
    mean0: torch.Tensor  # (N,) mean over channels of X0
    sq0: torch.Tensor  # (N,) mean of X0^2
    wo1: torch.Tensor  # (h, e, 2N) X0 @ W_o1 (layer-1 image->token output projection) | (Y * gamma_a) @ W_o1
    x0_bo1: torch.Tensor  # (N,) X0 . b_o1
    k2: torch.Tensor  # (h, e, 2N) Y @ W_k2^T (layer-2 token->image keys) | P @ W_k2^T
    v2_y: torch.Tensor  # (h, N, e) Y @ W_v2^T
    q2: torch.Tensor  # (h, e, 2N) Y @ W_q2^T (layer-2 image->token queries) | P @ W_q2^T
    mean_y: torch.Tensor  # (N,)
    sq_y: torch.Tensor  # (N,)
    y_bo1: torch.Tensor  # (N,) (Y * gamma_a) . b_o1
    y_wo2: torch.Tensor  # (h, e, N) Y @ W_o2
    y_bo2: torch.Tensor  # (N,) Y . b_o2
    y_ga: torch.Tensor  # (N,) Y . gamma_a
    y_ba: torch.Tensor  # (N,) Y . beta_a
    kf: torch.Tensor  # (h, e, 2N) (Y * gamma_b) @ W_kf^T (final attention keys) | P @ W_kf^T
    vf_y: torch.Tensor  # (h, N, e) (Y * gamma_b) @ W_vf^T
    up_y: torch.Tensor  # (N, 4 * c1) (Y * gamma_b) @ W_up1


def _rows_by_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(N, h*e) -> (h, N, e)`` contiguous."""
    n, d = x.shape
    return x.view(n, heads, d // heads).transpose(0, 1).contiguous()


def _head_major(x: torch.Tensor, b: int) -> torch.Tensor:
    """``(h, B*T, L) -> (B, h*T, L)`` with rows ordered ``head*T + t`` (as ``block_rows``)."""
    h, bt, n = x.shape
    return x.view(h, b, bt // b, n).transpose(0, 1).reshape(b, -1, n)


def _by_head(q: torch.Tensor) -> torch.Tensor:
    """``(B, h, T, e) -> (h, B*T, e)``: prompts stacked so one product per head serves them all."""
    b, h, t, e = q.shape
    return q.transpose(0, 1).reshape(h, b * t, e)


def _head_diagonal(x: torch.Tensor, eye: torch.Tensor, t: int) -> torch.Tensor:
    """``(B, h*T, h*e)`` (head-major rows) -> ``(B, h, T, e)``: each row's own head's columns."""
    b, _, d = x.shape
    h = eye.shape[0]
    return (x.view(b, h, t, h, d // h) * eye.view(1, h, 1, h, 1)).sum(dim=3)


class LowRankClickDecoder:
    """The mask decoder for clicks on one image: build with :meth:`cache`, then call per prompt batch.

    Not an ``nn.Module`` and without weights of its own: every call reads the model's current weights,
    while a :class:`LowRankCache` holds products made with the weights of its time (the predictor builds
    one per image). Inference only (no autograd).
    """

    def __init__(self, model: Sam, fast: FastMaskDecoder | None = None) -> None:
        if not supports_lowrank(model):
            raise ValueError("the low-rank decoder needs the standard two-layer mask decoder")
        self.model = model
        # Its upscaling finishes in the fast decoder's, on that decoder's reused buffers.
        self.fast = fast if fast is not None else FastMaskDecoder(model, scratch=True)
        self.heads = model.mask_decoder.transformer.num_heads

    # -- per image ---------------------------------------------------------------------------------

    @torch.no_grad()
    def cache(self, first: ImageCache) -> LowRankCache:
        """Per-image products from the fast decoder's cache (batch 1, no mask prompt)."""
        tr: Any = self.model.mask_decoder.transformer
        l1, l2 = tr.layers
        h = self.heads
        x0 = first.src[0]  # (N, C)
        pe = self.fast.image_pe[0]
        ga, ba = l1.norm4.weight, l1.norm4.bias
        gb = l2.norm4.weight
        y = x0 * ga
        yb = y * gb
        yg = y * ga  # meets VO1's rows, which carry gamma_a too
        w_up, _ = conv_as_matrix(self.model.mask_decoder.output_upscaling[0])
        o1, o2 = l1.cross_attn_image_to_token.out_proj, l2.cross_attn_image_to_token.out_proj
        t2i, i2t, fin = l2.cross_attn_token_to_image, l2.cross_attn_image_to_token, tr.final_attn_token_to_image

        def cols(*xs: torch.Tensor) -> torch.Tensor:  # (N, h*e) each -> (h, e, N * len(xs))
            # Pieces that meet the same token-side operand sit side by side: one product for both.
            return torch.cat([_rows_by_head(x, h).transpose(1, 2) for x in xs], dim=-1).contiguous()

        return LowRankCache(
            k1=first.k1,
            v1=first.v1,
            q1=cols(first.q1[0]),
            mean0=x0.mean(-1),
            sq0=x0.square().mean(-1),
            wo1=cols(x0 @ o1.weight, yg @ o1.weight),
            x0_bo1=x0 @ o1.bias,
            k2=cols(y @ t2i.k_proj.weight.t(), pe @ t2i.k_proj.weight.t()),
            v2_y=_rows_by_head(y @ t2i.v_proj.weight.t(), h),
            q2=cols(y @ i2t.q_proj.weight.t(), pe @ i2t.q_proj.weight.t()),
            mean_y=y.mean(-1),
            sq_y=y.square().mean(-1),
            y_bo1=yg @ o1.bias,
            y_wo2=cols(y @ o2.weight),
            y_bo2=y @ o2.bias,
            y_ga=y @ ga,
            y_ba=y @ ba,
            kf=cols(yb @ fin.k_proj.weight.t(), pe @ fin.k_proj.weight.t()),
            vf_y=_rows_by_head(yb @ fin.v_proj.weight.t(), h),
            up_y=yb @ w_up,
        )

    # -- per prompt batch --------------------------------------------------------------------------

    @torch.no_grad()
    def run_transformer(self, c: LowRankCache, sparse: torch.Tensor) -> tuple[ImplicitRows, torch.Tensor, torch.Tensor]:
        """Sparse prompt tokens ``(B, K, C)`` -> the image rows in implicit form, hypernetwork outputs
        ``(B, M, c2)`` and IoU predictions ``(B, M)`` for all ``M`` mask tokens.

        Every prompt x image matrix is ``(B, rows, N)`` with rows ordered ``head * T + token``, so that
        products with the cached image side are wide (``N`` columns) and softmaxes over tokens run
        across contiguous image rows."""
        dec: Any = self.model.mask_decoder
        tr = dec.transformer
        l1, l2 = tr.layers
        fast = self.fast
        eye = fast.eye
        h = self.heads
        b, _, width = sparse.shape
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        prompt = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)  # (B, T, C)
        t = prompt.shape[1]
        ga, ba = l1.norm4.weight, l1.norm4.bias

        def wide(tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
            """Per-head products ``(B, h, T, e) x (h, e, N) -> (B, h*T, N)``."""
            return _head_major(_by_head(tokens) @ image, b)

        # Layer 1, token side: exactly the fast decoder's (its image side is cached).
        queries = l1.norm1(l1.self_attn(prompt, prompt, prompt))
        attn = fast.t2i_cached(l1.cross_attn_token_to_image, queries + prompt, c.k1, c.v1)
        queries = l1.norm2(queries + attn)
        queries = l1.norm3(queries + l1.mlp(queries))
        # Layer 1, image->token: attention weights A1 (B, h*T, N) and the vectors they mix, VO1.
        a: Any = l1.cross_attn_image_to_token
        a1 = _softmax_over_tokens(wide(_scaled_heads(a.k_proj(queries + prompt), h), c.q1), h)
        v1 = heads_first(a.v_proj(queries), h)  # (B, h, T, e)
        vo1 = block_rows(v1, eye) @ a.out_proj.weight.t() + a.out_proj.bias / h  # (B, h*T, C)
        # Row statistics of Z1 = X0 + A1^T @ VO1 from inner products: mean, mean square -> 1 / std.
        mu1 = c.mean0 + (vo1.mean(-1).unsqueeze(1) @ a1).squeeze(1)  # (B, N)
        x0_vo1, y_vo1 = wide(v1, c.wo1).chunk(2, dim=-1)  # X0 . VO1 and (Y * ga) . VO1, without biases
        x0_vo1 = x0_vo1 + c.x0_bo1 / h
        mean_sq = (a1 * x0_vo1).sum(1).mul_(2).add_(_quadratic(a1, vo1)).div_(width).add_(c.sq0)
        s1 = torch.rsqrt(mean_sq.sub_(mu1.square()).add_(l1.norm4.eps))  # (B, N)
        vo1g = vo1 * ga  # X1 = s1 * (X0 * ga + A1^T @ vo1g - mu1 * ga) + ba
        s1_, mu1_ = s1.unsqueeze(1), mu1.unsqueeze(1)  # (B, 1, N)

        # Layer 2, token self-attention.
        q = queries + prompt
        queries = l2.norm1(queries + l2.self_attn(q, q, queries))
        # Layer 2, token->image attention over X1 + P.
        a = l2.cross_attn_token_to_image
        qh = _scaled_heads(a.q_proj(queries + prompt), h)
        qkg = (block_rows(qh, eye) @ a.k_proj.weight) * ga  # (B, h*T, C)
        from_y, from_pe = wide(qh, c.k2).chunk(2, dim=-1)
        scores = torch.baddbmm(from_y, qkg @ vo1.transpose(1, 2), a1)
        scores.sub_(qkg.sum(-1, keepdim=True) * mu1_).mul_(s1_).add_(from_pe)
        weighted = torch.softmax(scores, dim=-1).mul_(s1_)  # (B, h*T, N)
        out = _head_major(_by_head_rows(weighted, h) @ c.v2_y, b).view(b, h, t, -1)
        out += _head_diagonal((weighted @ a1.transpose(1, 2)) @ (vo1g @ a.v_proj.weight.t()), eye, t)
        out -= (weighted @ mu1.unsqueeze(-1)).view(b, h, t, 1) * (a.v_proj.weight @ ga).view(1, h, 1, -1)
        out += (a.v_proj.weight @ ba + a.v_proj.bias).view(1, h, 1, -1)  # attention rows sum to 1
        queries = l2.norm2(queries + a.out_proj(out.transpose(1, 2).reshape(b, t, -1)))
        queries = l2.norm3(queries + l2.mlp(queries))
        # Layer 2, image->token attention: rows X1 + P against the token keys.
        a = l2.cross_attn_image_to_token
        kk = _scaled_heads(a.k_proj(queries + prompt), h)
        kbd = block_rows(kk, eye)  # (B, h*T, h*e)
        wq = kbd @ a.q_proj.weight  # (B, h*T, C): each row's query direction
        wqg = wq * ga
        from_y, from_pe = wide(kk, c.q2).chunk(2, dim=-1)
        logits = torch.baddbmm(from_y, wqg @ vo1.transpose(1, 2), a1)
        logits.sub_(wqg.sum(-1, keepdim=True) * mu1_).mul_(s1_).add_(from_pe)
        logits += (wq @ ba + kbd @ a.q_proj.bias).unsqueeze(-1)
        a2 = _softmax_over_tokens(logits, h)
        v2 = heads_first(a.v_proj(queries), h)
        vo2 = block_rows(v2, eye) @ a.out_proj.weight.t() + a.out_proj.bias / h
        # Z2 = X1 + A2^T @ VO2 = s1 * Y + coef^T @ basis (Y = X0 * ga, cached), and its row statistics.
        ones = torch.ones_like(s1_)
        coef = torch.cat([a1 * s1_, a2, -(s1_ * mu1_), ones], dim=1)  # (B, r, N)
        basis = torch.cat([vo1g, vo2, ga.expand(b, 1, -1), ba.expand(b, 1, -1)], dim=1)  # (B, r, C)
        mu2 = torch.addcmul((basis.mean(-1).unsqueeze(1) @ coef).squeeze(1), s1, c.mean_y)
        y_basis = torch.cat(  # Y . basis rows, (B, r, N)
            [
                y_vo1 + c.y_bo1 / h,
                wide(v2, c.y_wo2).add_(c.y_bo2 / h),
                c.y_ga.expand(b, 1, -1),
                c.y_ba.expand(b, 1, -1),
            ],
            dim=1,
        )
        mean_sq = (coef * y_basis).sum(1).mul_(2 * s1).add_(_quadratic(coef, basis)).div_(width)
        mean_sq.addcmul_(s1.square(), c.sq_y)
        s2 = torch.rsqrt(mean_sq.sub_(mu2.square()).add_(l2.norm4.eps))
        gb, bb = l2.norm4.weight, l2.norm4.bias
        basis_g = basis * gb  # X2 = s2 * (s1 * Y * gb + coef^T @ basis_g - mu2 * gb) + bb
        s2_, mu2_ = s2.unsqueeze(1), mu2.unsqueeze(1)

        # Final token->image attention over X2 + P.
        a = tr.final_attn_token_to_image
        qh = _scaled_heads(a.q_proj(queries + prompt), h)
        qkg = (block_rows(qh, eye) @ a.k_proj.weight) * gb  # (B, h*T, C)
        from_y, from_pe = wide(qh, c.kf).chunk(2, dim=-1)
        scores = torch.baddbmm(from_y * s1_, qkg @ basis.transpose(1, 2), coef)
        scores.sub_(qkg.sum(-1, keepdim=True) * mu2_).mul_(s2_).add_(from_pe)
        weighted = torch.softmax(scores, dim=-1).mul_(s2_)
        out = _head_major(_by_head_rows(weighted * s1_, h) @ c.vf_y, b).view(b, h, t, -1)
        out += _head_diagonal((weighted @ coef.transpose(1, 2)) @ (basis_g @ a.v_proj.weight.t()), eye, t)
        out -= (weighted @ mu2.unsqueeze(-1)).view(b, h, t, 1) * (a.v_proj.weight @ gb).view(1, h, 1, -1)
        out += (a.v_proj.weight @ bb + a.v_proj.bias).view(1, h, 1, -1)
        queries = tr.norm_final_attn(queries + a.out_proj(out.transpose(1, 2).reshape(b, t, -1)))

        iou = dec.iou_prediction_head(queries[:, 0, :])
        tokens = queries[:, 1 : 1 + dec.num_mask_tokens, :]
        hyper = torch.stack([mlp(tokens[:, j, :]) for j, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
        return ImplicitRows(s1=s1, s2=s2, mu2=mu2, coef=coef, basis_g=basis_g, gamma=gb, beta=bb), hyper, iou

    @torch.no_grad()
    def upscale(self, c: LowRankCache, rows: ImplicitRows, hyper: torch.Tensor) -> torch.Tensor:
        """Implicit image rows and ``hyper (B, M, c2)`` -> mask logits ``(B, M, 4g, 4g)``.

        The first transposed convolution is linear, so it maps the pieces of X2: the cached
        ``(Y * gb) @ W`` scaled per row plus the rank-r part; the rest is the fast decoder's."""
        w, bias = conv_as_matrix(self.model.mask_decoder.output_upscaling[0])
        b, r, n = rows.coef.shape
        basis = torch.cat(
            [rows.basis_g @ w, (rows.gamma @ w).expand(b, 1, -1), (rows.beta @ w + bias).expand(b, 1, -1)], dim=1
        )
        # The mean and bias terms ride along as two more coefficient rows.
        s2 = rows.s2.unsqueeze(1)  # (B, 1, N)
        coef = self.fast.buffer("coef", (b, r + 2, n), rows.coef)
        x = self.fast.buffer("up1", (b, n, w.shape[1]), rows.coef)
        if coef is None or x is None:  # plain tensors (large batches, autograd)
            coef = torch.cat([rows.coef * s2, -(s2 * rows.mu2.unsqueeze(1)), torch.ones_like(s2)], dim=1)
            x = torch.baddbmm((rows.s1 * rows.s2).unsqueeze(-1) * c.up_y, coef.transpose(1, 2), basis)
            return self.fast.upscale_rest(x, hyper)
        # The same into reused buffers (see segany.inference.decoders._kernels.Scratch).
        torch.mul(rows.coef, s2, out=coef[:, :r])
        torch.mul(rows.mu2.unsqueeze(1), s2, out=coef[:, r : r + 1]).neg_()
        coef[:, r + 1] = 1.0
        torch.mul(c.up_y, (rows.s1 * rows.s2).unsqueeze(-1), out=x)
        x.baddbmm_(coef.transpose(1, 2), basis)  # (B, N, 4 * c1): the first transposed convolution of X2
        return self.fast.upscale_rest(x, hyper)

    def __call__(self, c: LowRankCache, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse tokens ``(B, K, C)`` -> logits ``(B, M, 4g, 4g)`` and IoU ``(B, M)``, all mask tokens."""
        rows, hyper, iou = self.run_transformer(c, sparse)
        return self.upscale(c, rows, hyper), iou


@dataclass
class ImplicitRows:
    """The image rows after the last two-way layer, ``X2 = s2 * (s1 * Y * gamma + coef^T @ basis_g
    - mu2 * gamma) + beta``, per prompt: ``s1, s2, mu2 (B, N)``, ``coef (B, r, N)``, ``basis_g (B, r, C)``."""

    s1: torch.Tensor
    s2: torch.Tensor
    mu2: torch.Tensor
    coef: torch.Tensor
    basis_g: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor

    def take(self, index: torch.Tensor) -> ImplicitRows:
        """The rows of the prompts ``index`` (1-D) only."""
        s1, s2, mu2 = self.s1[index], self.s2[index], self.mu2[index]
        return ImplicitRows(s1, s2, mu2, self.coef[index], self.basis_g[index], self.gamma, self.beta)


def _scaled_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, T, h*e) -> (B, h, T, e)`` times the attention scale ``e ** -0.5``."""
    x = heads_first(x, heads)
    return x * x.shape[-1] ** -0.5


def _softmax_over_tokens(logits: torch.Tensor, heads: int) -> torch.Tensor:
    """Image->token attention weights ``(B, h*T, N)``: softmax over the tokens of each head, which
    here runs across contiguous image rows (fast), not along a short axis."""
    b, ht, n = logits.shape
    return torch.softmax(logits.view(b, heads, ht // heads, n), dim=2).view(b, ht, n)


def _quadratic(coef: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Squared norm of each column of ``basis^T @ coef`` without forming it: ``(B, r, N), (B, r, C) -> (B, N)``."""
    return ((basis @ basis.transpose(1, 2)) @ coef).mul_(coef).sum(1)


def _by_head_rows(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, h*T, L)`` (head-major rows) -> ``(h, B*T, L)``."""
    b, ht, n = x.shape
    return x.view(b, heads, ht // heads, n).transpose(0, 1).reshape(heads, -1, n)


@dataclass
class LowRankState:
    """Per image (or per mask-prompt batch): the fast decoder's cache, and the low-rank products where
    they apply (one float32 image, no mask prompt), else None."""

    first: ImageCache
    lowrank: LowRankCache | None


class LowRankDecoder:
    """``decoder="lowrank"`` (opt-in): :class:`LowRankClickDecoder` for clicks, the fast decoder for mask
    prompts and for prompts of more than ``max_tokens`` tokens (5 output tokens + the prompt's points;
    beyond that the rank-r corrections cost more than they save), behind the
    :class:`~segany.inference.decoders.ClickDecoder` interface. The official logits to float rounding.
    Pays off on large embedding grids only (SAM's 64x64): its per-image products cost more than they
    save on small ones."""

    name = "lowrank"
    exact = True

    def __init__(self, model: Sam, max_tokens: int = 11) -> None:
        if not supports_lowrank(model):
            raise ValueError("decoder='lowrank' needs the standard two-layer mask decoder; use decoder='fast'")
        self.fast = FastDecoder(model)
        self.module = LowRankClickDecoder(model, self.fast.module)
        self.max_tokens = max_tokens
        self.num_mask_tokens = model.mask_decoder.num_mask_tokens

    @torch.no_grad()
    def prepare(self, features: torch.Tensor, mask_input: torch.Tensor | None = None) -> LowRankState:
        first = self.fast.prepare(features, mask_input)
        # Variances come from inner products: float32 only (lower precision would spoil them).
        usable = mask_input is None and features.dtype == torch.float32 and features.shape[0] == 1
        return LowRankState(first, self.module.cache(first) if usable else None)

    @torch.no_grad()
    def run(
        self, state: LowRankState, points: Points | None, boxes: torch.Tensor | None, multimask_output: bool
    ) -> tuple[tuple[ImplicitRows | torch.Tensor, torch.Tensor], torch.Tensor]:
        sparse = sparse_prompts(self.module.model, points, boxes, state.first.src.shape[0])
        tokens = 1 + self.num_mask_tokens + sparse.shape[1]
        if state.lowrank is None or tokens > self.max_tokens:
            return self.fast.run_sparse(state.first, sparse, multimask_output)
        rows, hyper, iou = self.module.run_transformer(state.lowrank, sparse)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return (rows, hyper[:, sel]), iou[:, sel]

    @torch.no_grad()
    def upscale(
        self,
        state: LowRankState,
        pending: tuple[ImplicitRows | torch.Tensor, torch.Tensor],
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rows, hyper = pending
        if isinstance(rows, torch.Tensor):
            return self.fast.upscale(state.first, (rows, hyper), index)
        assert state.lowrank is not None
        if index is not None:
            rows, hyper = rows.take(index), hyper[index]
        return self.module.upscale(state.lowrank, rows, hyper)

    def compile(self) -> None:
        compile_methods(self.module, "run_transformer")
        self.fast.compile()
