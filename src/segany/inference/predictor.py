"""Interactive prediction: encode an image once, then answer many prompts quickly.

Mirrors the official ``SamPredictor`` (same method names, arguments and return values) so existing code
ports by changing the import, and adds path input, greyscale/RGBA/16-bit images, and saving/restoring
the image embedding.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch

from segany.errors import ImageError, PromptError
from segany.inference.bf16_decoder import BFloat16ClickDecoder
from segany.inference.compiled import CompiledCall, EncoderCall, compile_methods, tensors_key, weights_key
from segany.inference.cpu import cpu_has_bf16
from segany.inference.fast_decoder import DecoderImageCache, FastMaskDecoder, ImageCache, supports
from segany.inference.lowrank_decoder import LowRankCache, LowRankClickDecoder, supports_lowrank
from segany.io.image import read_image, to_rgb_uint8
from segany.model import Sam
from segany.ops.postprocess import upscale_logits, upscale_masks
from segany.ops.transforms import ResizeLongestSide

# Logits given to the masks that predict_low_res(skip_below=...) does not compute: far below any
# threshold, finite so that resampling them stays well defined.
SKIPPED_LOGIT = -1.0e4
# The low-rank decoder's corrections grow with the number of tokens (5 output tokens + prompt tokens).
# One ViT-B prompt here: 18 vs 22 ms (fast decoder) at 7 tokens, 25 vs 25 ms at 11, 29 vs 27 ms at 13.
LOWRANK_MAX_TOKENS = 11
# ... and its per-image cache pays off only on large embedding grids. One click, fast vs low-rank decoder
# (ms): 5.1 vs 6.2 at 16x16 (the default model), 9.4 vs 9.5 at 32x32, 14.3 vs 13.8 at 40x40, 19.0 vs 17.0
# at 48x48, 26.6 vs 23.9 at 64x64 (SAM); the cache cost 1.7 ms of set_image at 16x16.
LOWRANK_MIN_ROWS = 2048
# Prompts decoded together on a CPU: about this many image rows (embedding positions) per chunk, e.g. 4
# prompts for SAM's 64x64 grid (see SamPredictor.predict_low_res).
CPU_DECODE_ROWS = 16384


def cpu_decode_chunk(embedding_size: tuple[int, int]) -> int:
    """Prompts per decoder call on a CPU for an embedding grid of ``embedding_size``."""
    return max(1, CPU_DECODE_ROWS // (int(embedding_size[0]) * int(embedding_size[1])))


@dataclass
class ImageEmbedding:
    """An encoded image: what :meth:`SamPredictor.set_image_embedding` needs to skip the encoder."""

    features: torch.Tensor  # (1, C, h, w)
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to ``.safetensors`` (atomically), e.g. for a browser annotation tool to fetch."""
        from segany.io.files import atomic_write_bytes
        from safetensors.torch import save

        meta = {
            "original_size": f"{self.original_size[0]},{self.original_size[1]}",
            "input_size": f"{self.input_size[0]},{self.input_size[1]}",
        }
        atomic_write_bytes(path, save({"features": self.features.detach().cpu().contiguous()}, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ImageEmbedding":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            features = f.get_tensor("features")
        orig = tuple(int(v) for v in meta["original_size"].split(","))
        inp = tuple(int(v) for v in meta["input_size"].split(","))
        return cls(features, (orig[0], orig[1]), (inp[0], inp[1]))


class PredictorBase:
    """What every predictor backend shares: image input, embedding reuse, prompt checking and the
    resize of decoder logits to the image. A backend implements :meth:`_encode_resized`,
    :meth:`_use_features`, :meth:`_embedding_shape`, :meth:`_mask_input_size` and
    :meth:`predict_low_res`, and sets ``model`` (with ``image_size``, ``image_format`` and
    ``mask_threshold``) and ``transform``."""

    model: Any
    transform: ResizeLongestSide

    # -- image ---------------------------------------------------------------------------------

    def set_image(self, image: np.ndarray | str | os.PathLike[str], image_format: str = "RGB") -> None:
        """Encode an image: an ``(H, W, 3)`` uint8 array in ``image_format`` ("RGB" or "BGR"), a
        greyscale, RGBA, 16-bit or float array, or a path to an image file."""
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        else:
            if image_format not in ("RGB", "BGR"):
                raise ImageError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}")
            arr = np.asarray(image)
            if image_format != self.model.image_format and arr.ndim == 3 and arr.shape[2] >= 3:
                arr = arr[..., [2, 1, 0] + list(range(3, arr.shape[2]))]
            image = to_rgb_uint8(arr)
        resized = np.ascontiguousarray(self.transform.apply_image(image))
        self._encode_resized(resized, (image.shape[0], image.shape[1]))

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding ``(1, C, h, w)``."""
        self._require_image()
        assert self.features is not None
        return self.features

    def get_embedding(self) -> ImageEmbedding:
        """The embedding with the sizes needed to reuse it later, by any backend (see
        :meth:`set_image_embedding`)."""
        self._require_image()
        assert self.features is not None and self.original_size and self.input_size
        return ImageEmbedding(self.features, self.original_size, self.input_size)

    def set_image_embedding(
        self, embedding: torch.Tensor | ImageEmbedding, original_size: tuple[int, int] | None = None
    ) -> None:
        """Use a stored embedding instead of running the encoder. ``original_size`` (H, W) is required
        when ``embedding`` is a bare tensor."""
        if isinstance(embedding, ImageEmbedding):
            features, original_size = embedding.features, embedding.original_size
        else:
            features = embedding
            if original_size is None:
                raise ImageError("original_size (H, W) is needed with a bare embedding tensor")
        if features.ndim == 3:
            features = features[None]
        expected = self._embedding_shape()
        if tuple(features.shape) != expected:
            raise ImageError(f"embedding has shape {tuple(features.shape)}, this model needs {expected}")
        self._use_features(features, (int(original_size[0]), int(original_size[1])))

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None  # the official attributes
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def _start_image(self, original_size: tuple[int, ...], input_size: tuple[int, int] | None = None) -> None:
        """Forget the previous image and record the sizes of the next one."""
        self.reset_image()
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = input_size or self.transform.get_preprocess_shape(*self.original_size)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image() first")

    # -- backend hooks ---------------------------------------------------------------------------

    def _encode_resized(self, resized: np.ndarray, original_size: tuple[int, int]) -> None:
        """Run the image encoder on a resized uint8 ``(h, w, 3)`` image."""
        raise NotImplementedError

    def _use_features(self, features: torch.Tensor, original_size: tuple[int, int]) -> None:
        """Adopt a checked ``(1, C, g, g)`` embedding."""
        raise NotImplementedError

    def _embedding_shape(self) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def _mask_input_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def predict_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        skip_below: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- prompts ---------------------------------------------------------------------------------

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt set, in original image coordinates.

        Args:
            point_coords: ``(N, 2)`` pixel coordinates (x, y).
            point_labels: ``(N,)``: 1 foreground, 0 background.
            box: ``(4,)`` or ``(1, 4)`` as x0, y0, x1, y1.
            mask_input: ``(1, 256, 256)`` low-resolution logits, e.g. a previous call's output.
            multimask_output: three masks (for an ambiguous prompt) instead of one.
            return_logits: return logits instead of thresholded masks.
        Returns:
            masks ``(M, H, W)`` (bool, or float logits), scores ``(M,)`` and low-resolution logits
            ``(M, 256, 256)``, ``M`` = 3 or 1.
        """
        self._require_image()
        assert self.original_size is not None
        coords_t, labels_t, box_t, mask_t = prompt_tensors(
            self.transform,
            self.original_size,
            self._mask_input_size(),
            point_coords,
            point_labels,
            box,
            mask_input,
            self.device,
        )
        masks, scores, low_res = self.predict_torch(
            coords_t, labels_t, box_t, mask_t, multimask_output=multimask_output, return_logits=return_logits
        )
        return masks[0].cpu().numpy(), scores[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for ``B`` prompt sets at once, with prompts already in the resized frame
        (use ``predictor.transform.apply_coords_torch`` / ``apply_boxes_torch``).

        Args:
            point_coords: ``(B, N, 2)``; point_labels: ``(B, N)``; boxes: ``(B, 4)``;
            mask_input: ``(B, 1, 256, 256)``.
        Returns:
            masks ``(B, M, H, W)``, scores ``(B, M)``, low-resolution logits ``(B, M, 256, 256)``.
        """
        self._require_image()
        assert self.input_size and self.original_size
        low_res, scores = self.predict_low_res(point_coords, point_labels, boxes, mask_input, multimask_output)
        # Same masks as model.postprocess_masks (to float rounding), without the padded-square detour.
        if return_logits:
            masks = upscale_logits(low_res, self.input_size, self.original_size, self.model.image_size)
        else:
            masks = upscale_masks(
                low_res, self.input_size, self.original_size, self.model.image_size, self.model.mask_threshold
            )
        return masks, scores, low_res


Precision = Literal["fp32", "bf16"]
DecoderPrecision = Precision  # the older name


@dataclass
class _Decoders:
    """The decoder modules a :class:`SamPredictor` uses for one set of weights."""

    image_cache: DecoderImageCache
    fast: FastMaskDecoder  # float32: mask prompts, many points (and everything without the others)
    bf16: BFloat16ClickDecoder | None  # decoder_precision="bf16": every prompt
    lowrank: LowRankClickDecoder | None  # float32 clicks on large grids


class SamPredictor(PredictorBase):
    """Predict masks for prompts on one image at a time, reusing its embedding across prompts.

    Args:
        sam_model: the model.
        decoder_precision: ``"fp32"`` (default) gives the official model's logits to float rounding.
            ``"bf16"`` runs the decoder's image-side products in bfloat16
            (:class:`segany.inference.bf16_decoder.BFloat16ClickDecoder`): 1.4-1.5x faster clicks on
            CPUs with AVX-512 BF16 or AMX, at a small accuracy cost (mean mask IoU ~0.99 against
            ``"fp32"``, see benchmarks/RESULTS.md); much slower on CPUs without them (a warning says so).
        compile_decoder: run the decoder's transformer through ``torch.compile``
            (:mod:`segany.inference.compiled`): same results to float rounding, clicks 5-20% faster, but
            the first prompt compiles for 10-40 s (and needs a C++ compiler; without one, a warning and
            eager decoding). Worth it for long interactive sessions, servers and many images. The
            compiled decoder is kept from image to image and rebuilt when the weights change.
        encoder_precision: ``"fp32"`` (default) or ``"bf16"``: the image encoder under bfloat16
            autocast (products in bfloat16, LayerNorms and softmax statistics in float32, a float32
            embedding): ViT-B encodes ~1.6x faster on CPUs with AVX-512 BF16 (more with AMX), with
            embedding cosine similarity ~0.99999 against float32; slower on CPUs without them (a warning
            says so).
        compile_encoder: run the image encoder through ``torch.compile`` (whole, frozen weights, static
            shapes, in the chosen ``encoder_precision``): same embedding to float rounding; on a 2-core
            CPU the small default model's encoder ~1.3x faster, ViT-B ~10% in float32 (its time is in
            large products) and 25-60% in bfloat16. The first image compiles (~15 s for the default
            model, 25-30 s for ViT-B); the compiled encoder is kept from image to image and rebuilt when
            its weights change. Its frozen weights are a second copy (ViT-B: ~0.6 GB more memory).
    """

    def __init__(
        self,
        sam_model: Sam,
        *,
        decoder_precision: Precision = "fp32",
        compile_decoder: bool = False,
        encoder_precision: Precision = "fp32",
        compile_encoder: bool = False,
    ) -> None:
        for name, value in (("decoder_precision", decoder_precision), ("encoder_precision", encoder_precision)):
            if value not in ("fp32", "bf16"):
                raise ValueError(f"{name} must be 'fp32' or 'bf16', got {value!r}")
            if value == "bf16" and sam_model.device.type == "cpu" and not cpu_has_bf16():
                what = "clicks" if name == "decoder_precision" else "image encoding"
                warnings.warn(
                    f"{name}='bf16' on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): "
                    f"{what} will be slower than with 'fp32'",
                    RuntimeWarning,
                    stacklevel=2,
                )
        self.decoder_precision = decoder_precision
        self.encoder_precision = encoder_precision
        self.compile_decoder = compile_decoder
        self.compile_encoder = compile_encoder
        # Compiled decoders and encoders outlive images (compiling is slow): kept with what they were
        # built for.
        self._kept: tuple[tuple[Any, ...], _Decoders] | None = None
        self._kept_encoder: tuple[tuple[Any, ...], CompiledCall] | None = None
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    def _encode_resized(self, resized: np.ndarray, original_size: tuple[int, int]) -> None:
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(tensor, original_size)

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Encode an already resized ``(1, 3, h, w)`` image whose long side is the model's input size."""
        if transformed_image.ndim != 4 or transformed_image.shape[1] != 3:
            raise ImageError(f"expected a (1, 3, h, w) tensor, got shape {tuple(transformed_image.shape)}")
        if max(transformed_image.shape[2:]) != self.model.image_encoder.img_size:
            raise ImageError(
                f"the long side must be {self.model.image_encoder.img_size}; resize with ResizeLongestSide"
            )
        input_size = (int(transformed_image.shape[-2]), int(transformed_image.shape[-1]))
        self._start_image(original_image_size, input_size)
        image = self.model.preprocess(transformed_image.to(self.device))
        self.features = self._encoder()(image)
        self.is_image_set = True
        self._prepare_decoder()

    def _encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The image encoder in the asked precision, compiled if asked (kept while its weights are)."""
        bf16 = self.encoder_precision == "bf16"
        if not self.compile_encoder:
            return EncoderCall(self.model.image_encoder, bf16)
        key = (tensors_key(self.model.image_encoder), bf16)  # a move to another device changes the tensors
        if self._kept_encoder is None or self._kept_encoder[0] != key:
            call = EncoderCall(self.model.image_encoder, bf16)
            self._kept_encoder = (key, CompiledCall(call.__call__, dynamic=False, doing="encoding"))
        return self._kept_encoder[1]

    def _use_features(self, features: torch.Tensor, original_size: tuple[int, int]) -> None:
        self._start_image(original_size)
        self.features = features.to(self.device)
        self.is_image_set = True
        self._prepare_decoder()

    @torch.no_grad()
    def _prepare_decoder(self) -> None:
        """Build the fast decoder for the current weights and its image cache (about 2% of a vit_b
        encoding), so that every click, the first included, is equally fast."""
        if not supports(self.model):
            return
        assert self.features is not None
        if self.compile_decoder:
            f = self.features
            key = (weights_key(self.model), f.dtype, f.device, tuple(f.shape))
            if self._kept is None or self._kept[0] != key:
                self._kept = (key, self._build_decoders())
            decoders = self._kept[1]
        else:
            decoders = self._build_decoders()
        self._fast = (decoders.image_cache, decoders.fast)
        self._decoder_cache = decoders.image_cache.cache(self.features)
        if decoders.bf16 is not None:
            self._bf16 = (decoders.bf16, decoders.bf16.cache(self._decoder_cache))
        elif decoders.lowrank is not None:
            self._lowrank = (decoders.lowrank, decoders.lowrank.cache(self._decoder_cache))

    def _build_decoders(self) -> "_Decoders":
        """The decoder modules for the current weights and embedding kind, compiled if asked."""
        assert self.features is not None
        compiled = self.compile_decoder
        # Clicks without a mask prompt: per-image products for the low-rank decoder. CPU float32 only: it
        # derives LayerNorm variances from inner products, which half precision (or TF32 products on a
        # GPU) would spoil, and it saves arithmetic that GPUs have plenty of. Large grids only (see
        # LOWRANK_MIN_ROWS): on small ones its cache costs more than it saves.
        use_lowrank = (
            self.decoder_precision == "fp32"
            and supports_lowrank(self.model)
            and self.features.dtype == torch.float32
            and self.features.device.type == "cpu"
            and self.features.shape[-2] * self.features.shape[-1] >= LOWRANK_MIN_ROWS
        )
        fast = FastMaskDecoder(self.model, scratch=True)
        bf16 = BFloat16ClickDecoder(self.model) if self.decoder_precision == "bf16" else None
        lowrank = LowRankClickDecoder(self.model) if use_lowrank else None
        if compiled:
            # The transforms only: compiled, the upscaling (a few large products and elementwise passes,
            # already on reused buffers) is no faster. Compilation happens on first use: the float32
            # decoder only compiles if it decodes.
            compile_methods(bf16 if bf16 is not None else fast, "transform")
            if lowrank is not None:
                compile_methods(lowrank, "transform")
        return _Decoders(DecoderImageCache(self.model), fast, bf16, lowrank)

    def _embedding_shape(self) -> tuple[int, int, int, int]:
        grid = self.model.prompt_encoder.image_embedding_size
        return (1, self.model.prompt_encoder.embed_dim, grid[0], grid[1])

    def _mask_input_size(self) -> tuple[int, int]:
        return tuple(self.model.prompt_encoder.mask_input_size)  # type: ignore[return-value]

    def reset_image(self) -> None:
        super().reset_image()
        # The decoder's prompt-independent inputs for this image (no mask prompt); the fast decoder
        # modules are rebuilt per image so that they see the current weights.
        self._decoder_cache: ImageCache | None = None
        self._fast: tuple[DecoderImageCache, FastMaskDecoder] | None = None
        self._lowrank: tuple[LowRankClickDecoder, LowRankCache] | None = None
        self._bf16: tuple[BFloat16ClickDecoder, ImageCache] | None = None

    @torch.no_grad()
    def predict_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        skip_below: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder output only, like ``model.mask_decoder(...)``, for ``B`` prompt sets in the resized
        frame (as :meth:`predict_torch`).

        Same results as the model's decoder to float rounding, with per-image caches: on large embedding
        grids (SAM's 64x64), prompts without a mask and with few points run
        :class:`segany.inference.lowrank_decoder.LowRankClickDecoder` (about a quarter of the official
        multiply-adds), others :class:`segany.inference.fast_decoder.FastMaskDecoder` (about half).
        With ``decoder_precision="bf16"``, every prompt runs
        :class:`segany.inference.bf16_decoder.BFloat16ClickDecoder`.

        Args:
            skip_below: if set, a prompt whose returned IoU predictions are all ``<= skip_below`` gets no
                upscaling (the dearest part of the decoder); its logits are :data:`SKIPPED_LOGIT`. For
                callers that drop such masks anyway, like the automatic generator's IoU filter.
        Returns:
            low-resolution logits ``(B, M, 4g, 4g)`` and predicted IoUs ``(B, M)``, ``M`` = 3 or 1.
        """
        self._require_image()
        assert self.features is not None
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise PromptError("point_labels are required with point_coords")
            points = (point_coords.to(self.device), point_labels.to(self.device))
        boxes = boxes.to(self.device) if boxes is not None else None
        if not supports(self.model):
            # A replaced decoder (research code, tests): run it as it is.
            mask = mask_input.to(self.device) if mask_input is not None else None
            sparse, dense = self.model.prompt_encoder(points, boxes, mask)
            return self.model.mask_decoder(
                self.features, self.model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output
            )
        sparse, _ = self.model.prompt_encoder(points, boxes, None)
        if self._fast is None or self._decoder_cache is None:
            self._prepare_decoder()
        # On a CPU, a few prompts at a time: the decoder's temporaries then stay in cache, which makes
        # large batches (the automatic generator's 64) up to twice as fast per prompt. Same results.
        grid = self.model.prompt_encoder.image_embedding_size
        step = cpu_decode_chunk(grid) if sparse.device.type == "cpu" else max(1, sparse.shape[0])
        if sparse.shape[0] <= step:
            return self._decode(sparse, mask_input, multimask_output, skip_below)
        parts = []
        for start in range(0, sparse.shape[0], step):
            masks = mask_input[start : start + step] if mask_input is not None and mask_input.shape[0] > 1 else mask_input
            parts.append(self._decode(sparse[start : start + step], masks, multimask_output, skip_below))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _decode(
        self,
        sparse: torch.Tensor,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        skip_below: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict_low_res` for encoded sparse prompts ``(B, K, C)``."""
        assert self._fast is not None and self._decoder_cache is not None and self.features is not None
        image_cache, decoder = self._fast
        tokens = 1 + self.model.mask_decoder.num_mask_tokens + sparse.shape[1]
        upscale: Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]
        if mask_input is None and self._lowrank is not None and tokens <= LOWRANK_MAX_TOKENS:
            lowrank, lowrank_cache = self._lowrank
            rows, hyper, iou = lowrank.transform(lowrank_cache, sparse)

            def upscale(index: torch.Tensor | None, hyp: torch.Tensor) -> torch.Tensor:
                return lowrank.upscale(lowrank_cache, rows if index is None else rows.take(index), hyp)

        else:
            full: FastMaskDecoder = decoder if self._bf16 is None else self._bf16[0]
            if mask_input is None:
                cache = self._decoder_cache if self._bf16 is None else self._bf16[1]
            else:
                cache = image_cache.cache(self.features, mask_input.to(self.device))
                if self._bf16 is not None:
                    cache = self._bf16[0].cache(cache)
            keys, hyper, iou = full.transform(cache.src, cache.k1, cache.v1, cache.q1, sparse)

            def upscale(index: torch.Tensor | None, hyp: torch.Tensor) -> torch.Tensor:
                return full.upscale(keys if index is None else keys[index], hyp)

        sel = slice(1, None) if multimask_output else slice(0, 1)
        hyper, iou = hyper[:, sel], iou[:, sel]
        if skip_below is None:
            return upscale(None, hyper), iou
        keep = torch.nonzero((iou > skip_below).any(dim=1)).squeeze(1)
        gh, gw = self.model.prompt_encoder.image_embedding_size
        low_res = torch.full((iou.shape[0], iou.shape[1], 4 * gh, 4 * gw), SKIPPED_LOGIT, dtype=hyper.dtype, device=hyper.device)
        if len(keep):
            low_res[keep] = upscale(keep, hyper[keep])
        return low_res, iou


def prompt_tensors(
    transform: ResizeLongestSide,
    original_size: tuple[int, int],
    mask_input_size: tuple[int, int],
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    box: np.ndarray | None,
    mask_input: np.ndarray | None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Check one image's numpy prompts and turn them into ``predict_torch`` inputs in the resized frame.

    Shared by every predictor backend so that they accept and reject exactly the same prompts.
    Returns points ``(1, N, 2)``, labels ``(1, N)`` (int), box ``(1, 4)`` and mask ``(1, 1, h, w)``,
    each None when not given.
    """
    coords_t = labels_t = box_t = mask_t = None
    if point_coords is not None:
        if point_labels is None:
            raise PromptError("point_labels are required with point_coords")
        coords = np.asarray(point_coords, dtype=float)
        labels = np.asarray(point_labels)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise PromptError(f"point_coords must have shape (N, 2), got {coords.shape}")
        if labels.shape != (coords.shape[0],):
            raise PromptError(f"point_labels must have shape ({coords.shape[0]},), got {labels.shape}")
        coords = transform.apply_coords(coords, original_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float, device=device)[None]
        labels_t = torch.as_tensor(labels, dtype=torch.int, device=device)[None]
    if box is not None:
        b = np.asarray(box, dtype=float)
        if b.size != 4:
            raise PromptError(f"box must have 4 numbers x0, y0, x1, y1, got shape {b.shape}")
        box_t = torch.as_tensor(transform.apply_boxes(b.reshape(1, 4), original_size), dtype=torch.float, device=device)
    if mask_input is not None:
        m = np.asarray(mask_input, dtype=np.float32)
        expected = (1, *mask_input_size)
        if m.shape != expected:
            raise PromptError(f"mask_input must have shape {expected}, got {m.shape}")
        mask_t = torch.as_tensor(m, dtype=torch.float, device=device)[None]
    return coords_t, labels_t, box_t, mask_t
