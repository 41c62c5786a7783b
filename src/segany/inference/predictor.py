"""Interactive prediction: encode an image once, then answer many prompts quickly.

Mirrors the official ``SamPredictor`` (same method names, arguments and return values) so existing code
ports by changing the import, and adds path input, greyscale/RGBA/16-bit images, saving/restoring the
image embedding, a choice of click decoder (``decoder=``) and thread safety: one predictor may serve
several threads (each call works on a snapshot of the current image, and ``set_image`` swaps the whole
image state at once).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from segany.errors import ImageError, PromptError, TextPromptError
from segany.inference.decoders import SKIPPED_LOGIT, ClickDecoder, DecoderChoice, build_decoder, decode, resolve_decoder
from segany.inference.decoders.compile import CompiledCall, EncoderCall, weights_key
from segany.inference.options import InferenceOptions, Precision
from segany.inference.prompts import check_batch, prompt_tensors
from segany.io.identity import model_id, tensors_key
from segany.io.image import read_image, to_rgb_uint8
from segany.model import Sam
from segany.ops.postprocess import upscale_logits, upscale_masks
from segany.ops.transforms import ResizeLongestSide

__all__ = ["ImageEmbedding", "ImageState", "PredictorBase", "SKIPPED_LOGIT", "SamPredictor", "prompt_tensors"]

# Prompts per decoder call on a CPU when InferenceOptions.decode_chunk is not set: about this many
# embedding rows per call (4 prompts on SAM's 64x64 grid), so that the decoder's temporaries stay in cache.
CPU_ROWS_PER_CALL = 16384


@dataclass
class ImageEmbedding:
    """An encoded image: what :meth:`SamPredictor.set_image_embedding` needs to skip the encoder.

    ``model_id`` (:func:`segany.io.identity.model_id`) names the model that made it; a predictor of
    another model refuses it."""

    features: torch.Tensor  # (1, C, h, w)
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_id: str | None = None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to ``.safetensors`` (atomically), e.g. for a browser annotation tool to fetch."""
        from safetensors.torch import save

        from segany.io.files import atomic_write_bytes

        meta = {
            "original_size": f"{self.original_size[0]},{self.original_size[1]}",
            "input_size": f"{self.input_size[0]},{self.input_size[1]}",
        }
        if self.model_id:
            meta["model_id"] = self.model_id
        atomic_write_bytes(path, save({"features": self.features.detach().cpu().contiguous()}, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ImageEmbedding":
        """Read a file written by :meth:`save`; anything else raises :class:`~segany.errors.ImageError`."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                features = f.get_tensor("features")
            orig = tuple(int(v) for v in meta["original_size"].split(","))
            inp = tuple(int(v) for v in meta["input_size"].split(","))
            if len(orig) != 2 or len(inp) != 2:
                raise ValueError("sizes must be two numbers")
        except FileNotFoundError:
            raise ImageError(f"{path}: no such embedding file") from None
        except Exception as exc:  # safetensors raises its own error types for foreign or damaged files
            raise ImageError(f"{path}: not an image embedding saved by segany ({type(exc).__name__}: {exc})") from None
        return cls(features, (orig[0], orig[1]), (inp[0], inp[1]), meta.get("model_id"))


@dataclass(frozen=True)
class ImageState:
    """Everything a predictor knows about its current image, replaced as a whole by ``set_image``:
    the embedding ``(1, C, g, g)``, the sizes, and the backend's per-image decoding state."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    decoding: Any = None


class PredictorBase:
    """What every predictor backend shares: image input, embedding reuse, prompt checking and the
    resize of decoder logits to the image.

    A backend implements :meth:`_encode_resized`, :meth:`_prepare`, :meth:`_low_res`,
    :meth:`_embedding_shape`, :meth:`_mask_input_size`, :meth:`_num_mask_tokens` and :meth:`_model_id`,
    and sets ``model`` (with ``image_size``, ``image_format`` and ``mask_threshold``), ``transform`` and
    ``options``. Each prompt call reads the current :class:`ImageState` once, so a concurrent
    ``set_image`` never mixes two images in one answer.
    """

    model: Any
    transform: ResizeLongestSide
    options: InferenceOptions
    _image: ImageState | None = None

    # -- the official attributes, views of the current image -----------------------------------------

    @property
    def is_image_set(self) -> bool:
        return self._image is not None

    @property
    def features(self) -> torch.Tensor | None:
        return None if self._image is None else self._image.features

    @property
    def original_size(self) -> tuple[int, int] | None:
        return None if self._image is None else self._image.original_size

    @property
    def input_size(self) -> tuple[int, int] | None:
        return None if self._image is None else self._image.input_size

    @property
    def orig_h(self) -> int | None:
        return None if self._image is None else self._image.original_size[0]

    @property
    def orig_w(self) -> int | None:
        return None if self._image is None else self._image.original_size[1]

    @property
    def input_h(self) -> int | None:
        return None if self._image is None else self._image.input_size[0]

    @property
    def input_w(self) -> int | None:
        return None if self._image is None else self._image.input_size[1]

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
        return self._require_image().features

    def get_embedding(self) -> ImageEmbedding:
        """The embedding with the sizes needed to reuse it later, by any backend (see
        :meth:`set_image_embedding`), and the identity of the model that made it."""
        image = self._require_image()
        return ImageEmbedding(image.features, image.original_size, image.input_size, self._model_id())

    def set_image_embedding(
        self, embedding: torch.Tensor | ImageEmbedding, original_size: tuple[int, int] | None = None
    ) -> None:
        """Use a stored embedding instead of running the encoder. ``original_size`` (H, W) is required
        when ``embedding`` is a bare tensor. An :class:`ImageEmbedding` made by another model is refused."""
        if isinstance(embedding, ImageEmbedding):
            features, original_size = embedding.features, embedding.original_size
            mine = self._model_id() if embedding.model_id else None
            if embedding.model_id and mine and embedding.model_id != mine:
                raise ImageError(f"this embedding was made by model {embedding.model_id}; this predictor runs {mine}")
        else:
            features = embedding
            if original_size is None:
                raise ImageError("original_size (H, W) is needed with a bare embedding tensor")
        if not isinstance(features, torch.Tensor):
            raise ImageError(f"an embedding must be a torch.Tensor, not {type(features).__name__}")
        if features.ndim == 3:
            features = features[None]
        expected = self._embedding_shape()
        if tuple(features.shape) != expected:
            raise ImageError(f"embedding has shape {tuple(features.shape)}, this model needs {expected}")
        if not features.is_floating_point() or not bool(torch.isfinite(features).all()):
            raise ImageError("an embedding must hold finite floating-point numbers")
        self._adopt(features, original_size)

    def reset_image(self) -> None:
        self._image = None

    def _adopt(
        self, features: torch.Tensor, original_size: tuple[int, ...], input_size: tuple[int, int] | None = None
    ) -> None:
        """Make ``features`` the current image, all at once (see :class:`ImageState`)."""
        orig = (int(original_size[0]), int(original_size[1]))
        if min(orig) < 1:
            raise ImageError(f"original_size must be positive (H, W), got {orig}")
        inp = input_size or self.transform.get_preprocess_shape(*orig)
        features, decoding = self._prepare(features)
        self._image = ImageState(features, orig, (int(inp[0]), int(inp[1])), decoding)

    def _require_image(self) -> ImageState:
        image = self._image
        if image is None:
            raise RuntimeError("no image is set: call set_image() first")
        return image

    # -- backend hooks ---------------------------------------------------------------------------

    def _encode_resized(self, resized: np.ndarray, original_size: tuple[int, int]) -> None:
        """Run the image encoder on a resized uint8 ``(h, w, 3)`` image, then :meth:`_adopt` the result."""
        raise NotImplementedError

    def _prepare(self, features: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """A checked ``(1, C, g, g)`` embedding -> the embedding as kept, and the per-image decoding state."""
        raise NotImplementedError

    def _low_res(
        self,
        image: ImageState,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        batch: int,
        multimask_output: bool,
        skip_below: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict_low_res` on checked prompts of batch size ``batch``."""
        raise NotImplementedError

    def _embedding_shape(self) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def _mask_input_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def _num_mask_tokens(self) -> int:
        raise NotImplementedError

    def _masks_per_prompt(self, multimask_output: bool) -> int:
        """Masks returned per prompt: the multimask tokens' or the single-mask token's (SAM-HQ: one)."""
        return self._num_mask_tokens() - 1 if multimask_output else 1

    def _model_id(self) -> str | None:
        """:func:`segany.io.identity.model_id` of the model, where known."""
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
        *,
        text: str | None = None,
        text_embedding: np.ndarray | torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt set, in original image coordinates.

        Args:
            point_coords: ``(N, 2)`` pixel coordinates (x, y), finite.
            point_labels: ``(N,)``: 1 foreground, 0 background (-1 padding, 2/3 box corners).
            box: ``(4,)`` or ``(1, 4)`` as x0, y0, x1, y1.
            mask_input: ``(1, 256, 256)`` low-resolution logits, e.g. a previous call's output.
            multimask_output: three masks (for an ambiguous prompt) instead of one.
            return_logits: return logits instead of thresholded masks.
            text: a text prompt, e.g. ``"a wheel"`` (a model with a text path and a predictor with a
                CLIP, see :mod:`segany.inference.text`); combines with points and a box.
            text_embedding: ``(D,)`` or ``(1, D)``: a CLIP embedding instead of ``text`` (no CLIP needed).
        Returns:
            masks ``(M, H, W)`` (bool, or float logits), scores ``(M,)`` and low-resolution logits
            ``(M, 256, 256)``, ``M`` = 3 or 1.
        Raises:
            PromptError (a ``ValueError``): a malformed prompt (shape, NaN, label), with a one-line message.
            TextPromptError (a ``ValueError``): an empty or over-long text, a model without a text path,
            or no CLIP at hand.
        """
        image = self._require_image()
        text_embeds = self._text_embeds(text, text_embedding)
        coords_t, labels_t, box_t, mask_t = prompt_tensors(
            self.transform,
            image.original_size,
            self._mask_input_size(),
            point_coords,
            point_labels,
            box,
            mask_input,
            self.device,
        )
        masks, scores, low_res = self._predict_torch(
            image, coords_t, labels_t, box_t, mask_t, multimask_output, return_logits, text_embeds
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
        text_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for ``B`` prompt sets at once, with prompts already in the resized frame
        (use ``predictor.transform.apply_coords_torch`` / ``apply_boxes_torch``).

        Args:
            point_coords: ``(B, N, 2)``; point_labels: ``(B, N)``; boxes: ``(B, 4)``;
            mask_input: ``(B, 1, 256, 256)``; text_embeds: ``(B or 1, D)`` CLIP embeddings (a model
            with a text path; e.g. ``predictor.encode_text([...])``).
        Returns:
            masks ``(B, M, H, W)``, scores ``(B, M)``, low-resolution logits ``(B, M, 256, 256)``.
        Raises:
            PromptError (a ``ValueError``): malformed prompts, or more than fit in
            ``options.max_mask_bytes`` (the message says how many fit).
        """
        return self._predict_torch(
            self._require_image(), point_coords, point_labels, boxes, mask_input, multimask_output, return_logits,
            text_embeds,
        )

    @torch.no_grad()
    def _predict_torch(
        self,
        image: ImageState,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
        text_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = image.original_size
        per_pixel = 4 if return_logits else 1
        low_res, scores = self._predict_low_res(
            image, point_coords, point_labels, boxes, mask_input, multimask_output, None, (h * w, per_pixel),
            text_embeds,
        )
        # Same masks as model.postprocess_masks (to float rounding), without the padded-square detour.
        size = self.model.image_size
        if return_logits:
            masks = upscale_logits(low_res, image.input_size, image.original_size, size)
        else:
            masks = upscale_masks(low_res, image.input_size, image.original_size, size, self.model.mask_threshold)
        return masks, scores, low_res

    @torch.no_grad()
    def predict_low_res(
        self,
        point_coords: torch.Tensor | np.ndarray | None,
        point_labels: torch.Tensor | np.ndarray | None,
        boxes: torch.Tensor | np.ndarray | None = None,
        mask_input: torch.Tensor | np.ndarray | None = None,
        multimask_output: bool = True,
        skip_below: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder output only, like ``model.mask_decoder(...)``, for ``B`` prompt sets in the resized
        frame (as :meth:`predict_torch`): low-resolution logits ``(B, M, 4g, 4g)`` and predicted IoUs
        ``(B, M)``, ``M`` = 3 or 1.

        Args:
            skip_below: if set, a prompt whose returned IoU predictions are all ``<= skip_below`` gets no
                upscaling where the decoder allows it (the dearest part of the decoder); its logits are
                :data:`SKIPPED_LOGIT`. For callers that drop such masks anyway, like the automatic
                generator's IoU filter.
        """
        return self._predict_low_res(
            self._require_image(), point_coords, point_labels, boxes, mask_input, multimask_output, skip_below, (0, 0)
        )

    def _predict_low_res(
        self,
        image: ImageState,
        point_coords: torch.Tensor | np.ndarray | None,
        point_labels: torch.Tensor | np.ndarray | None,
        boxes: torch.Tensor | np.ndarray | None,
        mask_input: torch.Tensor | np.ndarray | None,
        multimask_output: bool,
        skip_below: float | None,
        full_size: tuple[int, int],
        text_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the prompts and the size of what they would return, then decode. ``full_size``: pixels
        and bytes per pixel of the full-size masks that will follow (0 for none)."""
        prompts = [None if x is None else torch.as_tensor(x) for x in (point_coords, point_labels, boxes, mask_input)]
        coords, labels, box_t, mask_t = prompts
        batch = check_batch(coords, labels, box_t, mask_t, self._mask_input_size())
        if text_embeds is not None:
            text_embeds = self._check_text_embeds(text_embeds, batch, coords is None and box_t is None)
            batch = text_embeds.shape[0]
        masks = self._masks_per_prompt(multimask_output)
        gh, gw = image.features.shape[-2:]
        per_prompt = masks * (16 * gh * gw * 4 + full_size[0] * full_size[1])
        limit = self.options.max_mask_bytes
        if batch * per_prompt > limit:
            raise PromptError(
                f"{batch} prompts would return {batch * per_prompt / 2**30:.1f} GiB of masks, more than "
                f"max_mask_bytes ({limit / 2**30:.1f} GiB): pass at most {max(1, limit // per_prompt)} per call"
            )
        if text_embeds is not None:
            return self._low_res_text(image, coords, labels, box_t, mask_t, text_embeds, multimask_output)
        return self._low_res(image, coords, labels, box_t, mask_t, batch, multimask_output, skip_below)

    # -- text prompts (SAM paper, section 7.5) ------------------------------------------------------

    clip: Any = None  # a segany.io.clip.ClipModel: turns text prompts into CLIP embeddings

    def _text_dim(self) -> int | None:
        return getattr(getattr(self.model, "prompt_encoder", None), "text_embed_dim", None)

    def require_text_path(self) -> int:
        """The width of the model's text path's CLIP embeddings; one line when the model has none."""
        dim = self._text_dim()
        if dim is None:
            raise TextPromptError(
                "this checkpoint has no text prompt path: fine-tune one with 'segany train RECIPE "
                "text.clip=clip_vit_l14_336' (see docs/text-prompts.md)"
            )
        return int(dim)

    def check_clip(self) -> None:
        """Refuse, with one line, a model without a text path, a missing CLIP, or a CLIP of another width."""
        dim = self.require_text_path()
        if self.clip is None:
            raise TextPromptError(
                "no CLIP weights at hand for text prompts: pass clip='clip_vit_l14_336' (or ARCH:FILE) to the "
                "predictor, or give text_embedding="
            )
        if self.clip.embed_dim != dim:
            raise TextPromptError(
                f"the CLIP at hand gives {self.clip.embed_dim}-wide embeddings, but this checkpoint's text path "
                f"takes {dim}: use the CLIP it was trained with"
            )

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """CLIP text embeddings ``(N, D)`` of ``texts`` (each checked: not empty, within CLIP's context)."""
        self.check_clip()
        return self.clip.encode_text(texts)

    def _text_embeds(self, text: str | None, embedding: np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
        if text is not None and embedding is not None:
            raise TextPromptError("give text or text_embedding, not both")
        if text is not None:
            return self.encode_text([text])
        if embedding is not None:
            emb = torch.as_tensor(np.asarray(embedding) if not isinstance(embedding, torch.Tensor) else embedding)
            return emb.reshape(1, -1) if emb.ndim == 1 else emb
        return None

    def _check_text_embeds(self, emb: torch.Tensor, batch: int, alone: bool) -> torch.Tensor:
        dim = self.require_text_path()
        emb = torch.as_tensor(emb)
        if emb.ndim != 2 or emb.shape[1] != dim or not emb.is_floating_point():
            raise TextPromptError(f"text embeddings must be float (B, {dim}), got {tuple(emb.shape)} {emb.dtype}")
        if not bool(torch.isfinite(emb).all()):
            raise TextPromptError("text embeddings hold NaN or infinite values")
        if emb.shape[0] != batch and not (emb.shape[0] == 1 or (alone and batch == 1)):
            raise TextPromptError(f"text embeddings are {emb.shape[0]} rows for {batch} prompts")
        if emb.shape[0] == 1 and batch > 1:
            emb = emb.expand(batch, -1)
        return emb

    def _low_res_text(
        self,
        image: ImageState,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        text_embeds: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts with a text token: the model's own prompt encoder and decoder (the click decoders
        take points and boxes only)."""
        raise TextPromptError("this predictor backend has no text prompts; use the torch backend")


class SamPredictor(PredictorBase):
    """Predict masks for prompts on one image at a time, reusing its embedding across prompts.

    Args:
        sam_model: the model.
        decoder: the click decoder (see :mod:`segany.inference.decoders`): ``"auto"`` (default: exact;
            the fast decoder on a CPU, the model's own elsewhere), ``"reference"`` (always the model's
            own decoder), ``"fast"``, ``"lowrank"`` (exact, opt-in; pays off on SAM's 64x64 grid only),
            or ``"bf16"`` (approximate, opt-in; for CPUs with AVX-512 BF16 or AMX, slower elsewhere).
        options: every inference option at once (:class:`~segany.inference.options.InferenceOptions`);
            the keywords below are shortcuts that change it.
        decoder_precision: ``"bf16"`` is ``decoder="bf16"`` (the older spelling).
        compile_decoder: run the decoder's transformer through ``torch.compile``: same results to float
            rounding, after a one-off compilation at the first prompt (needs a C++ compiler; without one,
            a warning and eager decoding). Kept from image to image, rebuilt when the weights change.
        encoder_precision: ``"fp32"`` (default) or ``"bf16"``: the image encoder under bfloat16 autocast
            (approximate; faster on CPUs with AVX-512 BF16 or AMX, slower elsewhere: a warning says so).
        compile_encoder: run the image encoder through ``torch.compile`` (same embedding to float
            rounding) after a one-off compilation at the first image; its frozen weights are a second copy.
        clip: for ``predict(text=...)``: a CLIP name (``"clip_vit_l14_336"``), ``"ARCH:FILE"`` or a loaded
            :class:`segany.io.clip.ClipModel` (the model must have a text prompt path).

    Which settings pay off on this machine: ``segany info --system``; measured gains, one-off costs and
    accuracy: ``benchmarks/RESULTS.md``. One predictor may be used from several threads.
    """

    def __init__(
        self,
        sam_model: Sam,
        *,
        decoder: DecoderChoice | None = None,
        options: InferenceOptions | None = None,
        decoder_precision: Precision | None = None,
        compile_decoder: bool | None = None,
        encoder_precision: Precision | None = None,
        compile_encoder: bool | None = None,
        clip: Any = None,
    ) -> None:
        if not all(hasattr(sam_model, part) for part in ("image_encoder", "prompt_encoder", "mask_decoder")):
            kind = type(sam_model).__name__
            raise TypeError(f"SamPredictor needs a SAM model (e.g. segany.load_model(...)), not {kind}")
        self.options = InferenceOptions.build(
            options,
            decoder=decoder,
            decoder_precision=decoder_precision,
            compile_decoder=compile_decoder,
            encoder_precision=encoder_precision,
            compile_encoder=compile_encoder,
        )
        if self.options.backend != "torch":
            raise ValueError("SamPredictor runs the torch backend; for onnx use segany.export.backend.predictor_for")
        self.options.warn_for(sam_model.device)
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        # Decoders and compiled encoders outlive images (building a decoder copies a few weights;
        # compiling takes seconds): kept with what they were built for, swapped under a lock.
        self._lock = threading.Lock()
        self._kept_decoder: tuple[tuple[Any, ...], ClickDecoder[Any, Any]] | None = None
        self._kept_encoder: tuple[tuple[Any, ...], CompiledCall] | None = None
        self.clip = self._load_clip(clip)
        self.reset_image()

    def _load_clip(self, clip: Any) -> Any:
        if clip is None or not isinstance(clip, str):
            return clip
        from segany.io.clip import load_clip

        return load_clip(clip, device=self.model.device)

    # The constructor's shortcuts, read back.

    @property
    def decoder_precision(self) -> Precision:
        return "bf16" if self.options.decoder == "bf16" else "fp32"

    @property
    def encoder_precision(self) -> Precision:
        return self.options.encoder_precision

    @property
    def compile_decoder(self) -> bool:
        return self.options.compile_decoder

    @property
    def compile_encoder(self) -> bool:
        return self.options.compile_encoder

    @property
    def decoder(self) -> ClickDecoder[Any, Any]:
        """The click decoder for the model's current weights and device (its ``name`` says which one
        ``"auto"`` chose, its ``exact`` whether it reproduces the model's logits)."""
        return self._decoder_for(self.model.device, torch.float32)

    def _decoder_for(self, device: torch.device, dtype: torch.dtype) -> ClickDecoder[Any, Any]:
        name = resolve_decoder(self.options.decoder, self.model, device)
        key = (name, weights_key(self.model), dtype, device)
        with self._lock:
            if self._kept_decoder is None or self._kept_decoder[0] != key:
                self._kept_decoder = (key, build_decoder(name, self.model, compiled=self.options.compile_decoder))
            return self._kept_decoder[1]

    # -- image -----------------------------------------------------------------------------------

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
        image = self.model.preprocess(transformed_image.to(self.device))
        self._adopt(self._encoder()(image), original_image_size, input_size)

    @property
    def encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The image encoder call (preprocessed ``(1, 3, S, S)`` -> float32 embedding) in the asked
        precision: an :class:`~segany.inference.decoders.compile.EncoderCall`, or with ``compile_encoder``
        its :class:`~segany.inference.decoders.compile.CompiledCall`, kept while the weights are."""
        return self._encoder()

    def _encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The image encoder in the asked precision, compiled if asked (kept while its weights are)."""
        bf16 = self.options.encoder_precision == "bf16"
        if not self.options.compile_encoder:
            return EncoderCall(self.model.image_encoder, bf16)
        key = (tensors_key(self.model.image_encoder), bf16)  # a move to another device changes the tensors
        with self._lock:
            if self._kept_encoder is None or self._kept_encoder[0] != key:
                call = EncoderCall(self.model.image_encoder, bf16)
                self._kept_encoder = (key, CompiledCall(call.__call__, dynamic=False, doing="encoding"))
            return self._kept_encoder[1]

    @torch.no_grad()
    def _prepare(self, features: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The decoder for the current weights and its per-image state (about 2% of a ViT-B encoding),
        so that every click, the first included, is equally fast."""
        features = features.to(self.device)
        decoder = self._decoder_for(features.device, features.dtype)
        return features, (decoder, decoder.prepare(features))

    def _embedding_shape(self) -> tuple[int, int, int, int]:
        grid = self.model.prompt_encoder.image_embedding_size
        # SAM-HQ's embedding carries the early encoder features after SAM's channels (model/hq.py).
        channels = self.model.prompt_encoder.embed_dim + int(getattr(self.model.mask_decoder, "early_dim", 0))
        return (1, channels, grid[0], grid[1])

    def _mask_input_size(self) -> tuple[int, int]:
        gh, gw = self.model.prompt_encoder.image_embedding_size
        # A replaced prompt encoder (research code, tests) may not say: the standard one's 4x the grid.
        size = getattr(self.model.prompt_encoder, "mask_input_size", (4 * gh, 4 * gw))
        return (int(size[0]), int(size[1]))

    def _num_mask_tokens(self) -> int:
        return int(getattr(self.model.mask_decoder, "num_mask_tokens", 4))  # a replaced decoder: SAM's 4

    def _masks_per_prompt(self, multimask_output: bool) -> int:
        from segany.model.hq import MaskDecoderHQ

        return 1 if isinstance(self.model.mask_decoder, MaskDecoderHQ) else super()._masks_per_prompt(multimask_output)

    def _model_id(self) -> str | None:
        return model_id(self.model)

    # -- prompts ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _low_res(
        self,
        image: ImageState,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        batch: int,
        multimask_output: bool,
        skip_below: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        decoder, state = image.decoding
        coords = labels = None
        if point_coords is not None and point_labels is not None:
            coords, labels = point_coords.to(self.device, torch.float32), point_labels.to(self.device)
        boxes = boxes.to(self.device, torch.float32) if boxes is not None else None
        gh, gw = self.model.prompt_encoder.image_embedding_size
        mask_size = (4 * gh, 4 * gw)
        # On a CPU, a few prompts at a time: the decoder's temporaries then stay in cache, which makes
        # large batches (the automatic generator's 64) up to twice as fast per prompt. Same results.
        step = self.options.decode_chunk or (
            max(1, CPU_ROWS_PER_CALL // (gh * gw)) if self.device.type == "cpu" else max(1, batch)
        )
        parts = []
        for start in range(0, batch, step):
            chunk_state = state
            if mask_input is not None:
                masks = mask_input[start : start + step] if mask_input.shape[0] > 1 else mask_input
                chunk_state = decoder.prepare(image.features, masks.to(self.device, torch.float32))
            part = slice(start, start + step)
            points = None if coords is None or labels is None else (coords[part], labels[part])
            chunk_boxes = None if boxes is None else boxes[part]
            parts.append(decode(decoder, chunk_state, points, chunk_boxes, multimask_output, skip_below, mask_size))
        if len(parts) == 1:
            return parts[0]
        if not parts:
            m = self._masks_per_prompt(multimask_output)
            return torch.empty(0, m, *mask_size, device=self.device), torch.empty(0, m, device=self.device)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def _low_res_text(
        self,
        image: ImageState,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        text_embeds: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.model.prompt_encoder
        points = None
        if coords is not None and labels is not None:
            points = (coords.to(self.device, torch.float32), labels.to(self.device))
        boxes = boxes.to(self.device, torch.float32) if boxes is not None else None
        if mask_input is not None:
            mask_input = mask_input.to(self.device, torch.float32)
            if mask_input.shape[0] == 1 and text_embeds.shape[0] > 1:
                mask_input = mask_input.expand(text_embeds.shape[0], -1, -1, -1)
        sparse, dense = pe(points, boxes, mask_input, text=text_embeds.to(self.device, torch.float32))
        if dense.shape[0] != sparse.shape[0]:
            dense = dense.expand(sparse.shape[0], -1, -1, -1)
        return self.model.mask_decoder(image.features, pe.get_dense_pe(), sparse, dense, multimask_output)
