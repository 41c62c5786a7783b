"""Interactive prediction with onnxruntime: a drop-in for :class:`SamPredictor` on CPUs.

:class:`OnnxPredictor` runs a folder written by ``segany export`` (:func:`segany.export.onnx.export_onnx`)
and has the predictor's API: ``set_image``, ``predict``, ``predict_torch``, ``get_image_embedding``,
``get_embedding`` / ``set_image_embedding``, ``reset_image``, ``transform``, ``model.mask_threshold``.
It adds :meth:`OnnxPredictor.predict_low_res` (batched prompts -> low-resolution logits and scores), the
one call the automatic mask generator needs. Use :func:`segany.export.backend.predictor_for` to get
either backend (exporting when needed).

Per image, the encoder graph and the decoder's image cache graph run once; per prompt batch only the
small ``decoder_lowres`` graph runs, then :func:`segany.ops.postprocess.upscale_logits` maps logits
to the image.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segany.errors import CheckpointError, ImageError
from segany.inference.cpu import cpu_has_int8_dot
from segany.inference.decoders import ClickDecoder, DecoderChoice
from segany.inference.options import InferenceOptions, OnnxPrecision, OptionsError, Precision
from segany.inference.predictor import ImageState, PredictorBase, SamPredictor
from segany.io.identity import model_id
from segany.ops.transforms import ResizeLongestSide

__all__ = ["OnnxPredictor", "OnnxModelInfo", "MANIFEST", "is_export_folder"]

MANIFEST = "segany_onnx.json"  # same name as segany.export.onnx.MANIFEST (export may not be imported here)
# Labels of the exported graphs: 2/3 box corners, -1 padding.
_PAD, _TOP_LEFT, _BOTTOM_RIGHT = -1.0, 2.0, 3.0


@dataclass(frozen=True)
class OnnxModelInfo:
    """What callers read off ``predictor.model`` besides the networks themselves."""

    image_size: int
    mask_threshold: float
    image_format: str
    embed_dim: int
    embedding_size: tuple[int, int]
    mask_input_size: tuple[int, int]
    num_mask_tokens: int
    config: dict[str, Any]
    embedding_channels: int = 0  # the encoder's output channels (SAM-HQ: embed_dim + early_dim); 0: embed_dim

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


class OnnxPredictor(PredictorBase):
    """Predict masks with onnxruntime from an exported folder.

    Args:
        folder: a folder written by ``segany export``.
        precision: ``options.onnx_precision``: ``"fp32"``, ``"int8"`` (needs an export with ``--quantize
            int8``) or ``"auto"`` (int8 where the folder has it).
        num_threads: ``options.num_threads``: onnxruntime intra-op threads (default: ``torch.get_num_threads()``).
        decoder_model: the exported model itself, if at hand: prompts then run segany's PyTorch decoder
            (:class:`SamPredictor`'s, faster on CPUs than the exported decoder graphs) on the onnxruntime
            embedding; only the image encoder runs in onnxruntime. It must be the exported model (the
            export records its :func:`~segany.io.identity.model_id`).
        decoder: ``options.decoder``: with ``decoder_model``, the PyTorch decoder (see :class:`SamPredictor`);
            ``"onnx"``: the exported graphs even so.
        options: every option at once (:class:`~segany.inference.options.InferenceOptions` with
            ``backend="onnx"``); the keywords are shortcuts that change it.
        decoder_precision, compile_decoder: with ``decoder_model``, as in :class:`SamPredictor`.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        precision: OnnxPrecision | None = None,
        num_threads: int | None = None,
        decoder_model: Any | None = None,
        decoder_precision: Precision | None = None,
        compile_decoder: bool | None = None,
        *,
        decoder: DecoderChoice | None = None,
        options: InferenceOptions | None = None,
    ) -> None:
        import onnxruntime as ort

        if options is not None and options.backend != "onnx":
            raise OptionsError("OnnxPredictor runs the onnx backend: pass options with backend='onnx'")
        self.options = InferenceOptions.build(
            options or InferenceOptions(backend="onnx"),
            onnx_precision=precision,
            num_threads=num_threads,
            decoder=decoder,
            decoder_precision=decoder_precision,
            compile_decoder=compile_decoder,
        )
        opts = self.options
        use_torch = decoder_model is not None and opts.decoder != "onnx"
        if not use_torch:
            for option, value, default in (
                ("decoder", opts.decoder, ("auto", "onnx")),
                ("compile_decoder", opts.compile_decoder, (False,)),
                ("decode_chunk", opts.decode_chunk, (None,)),
            ):
                if value not in default:
                    raise OptionsError(
                        f"{option}={value!r} applies to segany's PyTorch decoder: pass decoder_model (the exported "
                        "model), or leave it for the exported decoder graphs"
                    )

        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            raise CheckpointError(f"{self.folder}: not an ONNX export folder (no {MANIFEST}); run 'segany export'")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{manifest_path}: unreadable manifest: {exc}") from exc
        if manifest.get("format") != "segany-onnx":
            raise CheckpointError(f"{manifest_path}: not a segany ONNX manifest")
        files: dict[str, str] = manifest["files"]
        self.exported_model_id: str | None = manifest.get("model_id")
        self._hq = bool(manifest.get("hq"))  # SAM-HQ: one mask per prompt
        precision = opts.onnx_precision
        if precision == "int8" and not any(k.endswith(".int8") for k in files):
            raise CheckpointError(f"{self.folder}: has no int8 graphs; export with --quantize int8")
        self.precision = "int8" if precision == "int8" or (precision == "auto" and "encoder.int8" in files) else "fp32"
        if self.precision == "int8" and manifest.get("int8_weights") == "s8" and not cpu_has_int8_dot():
            warnings.warn(
                f"{self.folder}: int8 graphs with signed weights were made for CPUs with VNNI/AMX; on this CPU "
                "they may lose accuracy (16-bit saturation). Re-export here or use --precision fp32.",
                RuntimeWarning,
                stacklevel=2,
            )
        self.model = OnnxModelInfo(
            image_size=int(manifest["image_size"]),
            mask_threshold=float(manifest["mask_threshold"]),
            image_format=str(manifest["image_format"]),
            embed_dim=int(manifest["embed_dim"]),
            embedding_size=(int(manifest["embedding_size"][0]), int(manifest["embedding_size"][1])),
            mask_input_size=(int(manifest["mask_input_size"][0]), int(manifest["mask_input_size"][1])),
            num_mask_tokens=int(manifest["num_mask_tokens"]),
            config=dict(manifest.get("config", {})),
            embedding_channels=int(manifest.get("embedding_channels") or manifest["embed_dim"]),
        )
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = int(opts.num_threads or torch.get_num_threads())
        session_options.inter_op_num_threads = 1
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def session(role: str) -> Any:
            name = files.get(f"{role}.int8") if self.precision == "int8" else None
            name = name or files.get(role)
            if name is None:
                raise CheckpointError(f"{self.folder}: the export has no {role} graph")
            return ort.InferenceSession(str(self.folder / name), session_options, providers=["CPUExecutionProvider"])

        self._encoder = session("encoder") if "encoder" in files else None
        # Prompts run either in segany's PyTorch decoder or in the exported decoder graphs, never both:
        # only the graphs in use are loaded.
        self._torch_decoder: SamPredictor | None = None
        self._cache_graph: Any = None
        self._decoder: Any = None
        if decoder_model is not None and self.exported_model_id and model_id(decoder_model) != self.exported_model_id:
            raise CheckpointError(
                f"{self.folder}: decoder_model is not the exported model ({model_id(decoder_model)}, "
                f"the export's is {self.exported_model_id})"
            )
        if use_torch:
            assert decoder_model is not None
            torch_options = dataclasses.replace(opts, backend="torch", onnx_precision="auto", num_threads=None)
            self._torch_decoder = SamPredictor(decoder_model, options=torch_options)
            if self._torch_decoder._embedding_shape() != self._embedding_shape():
                raise CheckpointError(
                    f"{self.folder}: decoder_model is not the exported model (embedding shapes differ)"
                )
        else:
            if manifest.get("hq"):
                raise CheckpointError(
                    f"{self.folder}: a SAM-HQ export has no onnxruntime decoder split: its prompts run in "
                    "segany's PyTorch decoder (pass decoder_model= or the checkpoint, without decoder='onnx')"
                )
            self._cache_graph = session("image_cache")
            self._decoder = session("decoder_lowres")
        self.transform = ResizeLongestSide(self.model.image_size)
        self.reset_image()

    @property
    def decoder(self) -> ClickDecoder[Any, Any] | None:
        """segany's PyTorch click decoder where it runs the prompts (given ``decoder_model``), or None
        where the exported decoder graphs do."""
        return None if self._torch_decoder is None else self._torch_decoder.decoder

    # -- image (the rest is PredictorBase's) ---------------------------------------------------

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Encode an already resized ``(1, 3, h, w)`` image (values 0..255; rounded to uint8)."""
        if transformed_image.ndim != 4 or transformed_image.shape[:2] != (1, 3):
            raise ImageError(f"expected a (1, 3, h, w) tensor, got shape {tuple(transformed_image.shape)}")
        hwc = transformed_image[0].permute(1, 2, 0).detach().cpu().float().round().clamp(0, 255)
        self._encode_resized(np.ascontiguousarray(hwc.to(torch.uint8).numpy()), tuple(original_image_size))

    def _encode_resized(self, resized: np.ndarray, original_size: tuple[int, ...]) -> None:
        if self._encoder is None:
            raise ImageError(f"{self.folder}: exported without the image encoder; use set_image_embedding")
        if max(resized.shape[:2]) != self.model.image_size:
            raise ImageError(f"the long side must be {self.model.image_size}; resize with ResizeLongestSide")
        (embedding,) = self._encoder.run(None, {"image": resized})
        self._adopt(torch.from_numpy(embedding), original_size)

    def _prepare(self, features: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The embedding as float32 on the CPU; per image, the PyTorch decoder's state, or the numpy
        embedding and the exported decoder's image cache."""
        embedding = np.ascontiguousarray(features.detach().cpu().float().numpy(), dtype=np.float32)
        features = torch.from_numpy(embedding)
        if self._torch_decoder is not None:
            return self._torch_decoder._prepare(features)
        return features, (embedding, self._run_cache(embedding, None))

    def _embedding_shape(self) -> tuple[int, int, int, int]:
        return (1, self.model.embedding_channels or self.model.embed_dim, *self.model.embedding_size)

    def _mask_input_size(self) -> tuple[int, int]:
        return self.model.mask_input_size

    def _num_mask_tokens(self) -> int:
        return self.model.num_mask_tokens

    def _masks_per_prompt(self, multimask_output: bool) -> int:
        return 1 if self._hq else super()._masks_per_prompt(multimask_output)

    def _model_id(self) -> str | None:
        return self.exported_model_id

    def _run_cache(self, embedding: np.ndarray, mask: np.ndarray | None) -> list[np.ndarray]:
        """The decoder's image-side cache for ``embedding`` and an optional ``(1, 1, h, w)`` mask."""
        has = np.array([0.0 if mask is None else 1.0], dtype=np.float32)
        if mask is None:
            mask = np.zeros((1, 1, *self.model.mask_input_size), dtype=np.float32)
        feeds = {"image_embeddings": embedding, "mask_input": mask, "has_mask_input": has}
        return self._cache_graph.run(None, feeds)

    # -- prompts (predict, predict_torch and predict_low_res are PredictorBase's) -----------------

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
        """Decoder output (see :meth:`PredictorBase.predict_low_res`). ``skip_below`` works as in
        :class:`SamPredictor` with the PyTorch decoder; the exported graphs upscale every prompt."""
        if self._torch_decoder is not None:
            return self._torch_decoder._low_res(
                image, point_coords, point_labels, boxes, mask_input, batch, multimask_output, skip_below
            )
        embedding, cache = image.decoding
        coords, labels = self._sparse_prompts(point_coords, point_labels, boxes, batch)
        keep = slice(1, None) if multimask_output else slice(0, 1)
        if mask_input is None:
            low_res, scores = self._decode(cache, coords, labels)
            return torch.from_numpy(low_res[:, keep]), torch.from_numpy(scores[:, keep])
        masks = _numpy(mask_input).astype(np.float32, copy=False)
        # The cache depends on the mask, so prompts with masks are decoded one at a time.
        outs = [
            self._decode(
                self._run_cache(embedding, np.ascontiguousarray(masks[i if masks.shape[0] > 1 else 0][None])),
                coords[i : i + 1],
                labels[i : i + 1],
            )
            for i in range(coords.shape[0])
        ]
        low_res = np.concatenate([o[0] for o in outs])[:, keep]
        scores = np.concatenate([o[1] for o in outs])[:, keep]
        return torch.from_numpy(np.ascontiguousarray(low_res)), torch.from_numpy(np.ascontiguousarray(scores))

    def _decode(self, cache: list[np.ndarray], coords: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        src, k1, v1, q1 = cache
        feeds = {"src": src, "k1": k1, "v1": v1, "q1": q1, "point_coords": coords, "point_labels": labels}
        return self._decoder.run(None, feeds)

    def _sparse_prompts(
        self,
        point_coords: torch.Tensor | np.ndarray | None,
        point_labels: torch.Tensor | np.ndarray | None,
        boxes: torch.Tensor | np.ndarray | None,
        batch: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Checked points and box corners as one ``(B, K, 2)`` / ``(B, K)`` pair in the graphs' convention."""
        parts_c: list[np.ndarray] = []
        parts_l: list[np.ndarray] = []
        b = batch
        if point_coords is not None and point_labels is not None:
            parts_c.append(_numpy(point_coords).astype(np.float32))
            parts_l.append(_numpy(point_labels).astype(np.float32))  # -1, 0, 1, 2, 3: the graphs' labels too
        if boxes is not None:
            parts_c.append(_numpy(boxes).astype(np.float32).reshape(-1, 2, 2))
            parts_l.append(np.tile(np.array([[_TOP_LEFT, _BOTTOM_RIGHT]], dtype=np.float32), (b, 1)))
        else:
            # Without a box the model was trained with an extra padding token.
            if point_coords is not None:
                parts_c.append(np.zeros((b, 1, 2), dtype=np.float32))
                parts_l.append(np.full((b, 1), _PAD, dtype=np.float32))
        if not parts_c:
            return np.zeros((b, 0, 2), dtype=np.float32), np.zeros((b, 0), dtype=np.float32)
        coords = np.ascontiguousarray(np.concatenate(parts_c, axis=1))
        return coords, np.ascontiguousarray(np.concatenate(parts_l, axis=1))


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# -- choosing a backend --------------------------------------------------------------------------


def is_export_folder(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``segany export``."""
    return path.is_dir() and (path / MANIFEST).is_file()
