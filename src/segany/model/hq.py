"""SAM-HQ (Ke et al. 2023): a high-quality output token and a fused feature map added to SAM's decoder.

The HQ token joins SAM's output tokens in the two-way transformer; its own hypernetwork MLP is dotted with
an "HQ feature" map built from three sources: the decoder's upscaled embedding (refined by two 3x3
convolutions), the final image embedding (upscaled 4x) and an early ViT feature map (the output of the
first global-attention block, or TinyViT's second stage, upscaled 4x). The HQ mask is added to SAM's
chosen mask (or replaces it with ``hq_token_only``).

The early features travel with the embedding: an HQ image encoder returns
``(B, C + early_dim, g, g)``, the embedding's ``C`` channels first, so every path that hands an
embedding from encoder to decoder (the predictor, the automatic generator, cached embeddings) carries
them without knowing about HQ. Parameter names follow the official ``sam_hq_vit_*.pth`` files.
"""

from __future__ import annotations

import torch
from torch import nn

from segany.model.common import MLP, LayerNorm2d
from segany.model.image_encoder import ImageEncoderViT
from segany.model.mask_decoder import MaskDecoder


class ImageEncoderViTHQ(ImageEncoderViT):
    """SAM's ViT that also returns the first global-attention block's output:
    ``(B, 3, S, S) -> (B, out_chans + embed_dim, S/p, S/p)``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        global_blocks = [i for i, b in enumerate(self.blocks) if b.window_size == 0]  # type: ignore[union-attr]
        if not global_blocks:
            raise ValueError("SAM-HQ takes its early features from a global-attention block; this encoder has none")
        self.early_index = global_blocks[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        early: list[torch.Tensor] = []
        handle = self.blocks[self.early_index].register_forward_hook(lambda _m, _i, out: early.append(out))
        try:
            embedding = super().forward(x)
        finally:
            handle.remove()
        return torch.cat([embedding, early[0].permute(0, 3, 1, 2)], dim=1)


def _upscale4(cin: int, mid: int, cout: int) -> nn.Sequential:
    """Two stride-2 transposed convolutions (4x upscaling) with LayerNorm and GELU between."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, mid, kernel_size=2, stride=2),
        LayerNorm2d(mid),
        nn.GELU(),
        nn.ConvTranspose2d(mid, cout, kernel_size=2, stride=2),
    )


class MaskDecoderHQ(MaskDecoder):
    """SAM's mask decoder plus the HQ token and feature fusion.

    Same call as :class:`MaskDecoder`, with ``image_embeddings`` ``(1 or B, C + early_dim, h, w)`` from an
    HQ encoder. Output, as the official HQ code gives it: one mask per prompt, ``(B, 1, 4h, 4w)`` logits
    and ``(B, 1)`` IoU predictions. With ``multimask_output`` SAM's part is the best of its three
    multimask masks by predicted IoU, otherwise its single-mask token's; the HQ mask is added to it, or
    returned alone when ``hq_token_only`` is set.
    """

    def __init__(self, *, early_dim: int, hq_token_only: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        d = self.transformer_dim
        self.early_dim = early_dim
        self.hq_token_only = hq_token_only
        self.hf_token = nn.Embedding(1, d)
        self.hf_mlp = MLP(d, d, d // 8, 3)
        self.compress_vit_feat = _upscale4(early_dim, d, d // 8)
        self.embedding_encoder = _upscale4(d, d // 4, d // 8)
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(d // 8, d // 4, 3, 1, 1),
            LayerNorm2d(d // 4),
            nn.GELU(),
            nn.Conv2d(d // 4, d // 8, 3, 1, 1),
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou = self.predict_all(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        # masks: (B, num_mask_tokens + 1, 4h, 4w), the HQ mask last; iou: (B, num_mask_tokens).
        if multimask_output:
            iou_sam, best = iou[:, 1:].max(dim=1, keepdim=True)
            sam = masks[:, 1:-1].gather(1, best[..., None, None].expand(-1, 1, *masks.shape[-2:]))
        else:
            iou_sam, sam = iou[:, :1], masks[:, :1]
        hq = masks[:, -1:]
        return (hq if self.hq_token_only else sam + hq), iou_sam

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every SAM token's mask as this decoder would output it, ``(B, num_mask_tokens, 4h, 4w)``: the
        token's mask plus the HQ mask (the HQ mask alone with ``hq_token_only``), and SAM's IoUs
        ``(B, num_mask_tokens)``. :meth:`forward` picks one of these; training (which scores every
        token, as SAM's recipe does) calls this."""
        masks, iou = self.predict_all(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        hq = masks[:, -1:]
        return (hq.expand_as(masks[:, :-1]) if self.hq_token_only else masks[:, :-1] + hq), iou

    def predict_all(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's masks and the HQ mask ``(B, num_mask_tokens + 1, 4h, 4w)``, SAM's IoUs ``(B, num_mask_tokens)``."""
        d = self.transformer_dim
        if image_embeddings.shape[1] != d + self.early_dim:
            raise ValueError(
                f"SAM-HQ's decoder takes an HQ encoder's output ({d} + {self.early_dim} channels), "
                f"got {image_embeddings.shape[1]} channels"
            )
        embedding, early = image_embeddings[:, :d], image_embeddings[:, d:]
        hq_features = self.embedding_encoder(embedding) + self.compress_vit_feat(early)  # (1|B, d/8, 4h, 4w)

        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight, self.hf_token.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        if embedding.shape[0] != b:
            embedding = embedding.expand(b, -1, -1, -1)
        src = embedding + dense_prompt_embeddings
        pos_src = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        n = self.num_mask_tokens
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + n, :]
        hq_token_out = hs[:, 1 + n, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # (B, d/8, 4h, 4w)
        upscaled_hq = self.embedding_maskfeature(upscaled) + hq_features
        hyper = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        h2, w2 = upscaled.shape[-2:]
        masks = (hyper @ upscaled.flatten(2)).view(b, n, h2, w2)
        hq_mask = (self.hf_mlp(hq_token_out).unsqueeze(1) @ upscaled_hq.flatten(2)).view(b, 1, h2, w2)
        return torch.cat([masks, hq_mask], dim=1), self.iou_prediction_head(iou_token_out)
