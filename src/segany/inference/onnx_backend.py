"""Interactive prediction with onnxruntime: a drop-in for :class:`SamPredictor` on CPUs.

:class:`OnnxPredictor` runs a folder written by ``segany export`` (:func:`segany.export.onnx.export_onnx`)
and has the predictor's API: ``set_image``, ``predict``, ``predict_torch``, ``get_image_embedding``,
``get_embedding`` / ``set_image_embedding``, ``reset_image``, ``transform``, ``model.mask_threshold``.
It adds :meth:`OnnxPredictor.predict_low_res` (batched prompts -> low-resolution logits and scores), the
one call the automatic mask generator needs. Use :func:`segany.export.backend.predictor_for` to get either backend (exporting when needed).

Per image, the encoder graph and the decoder's image cache graph run once; per prompt batch only the
small ``decoder_lowres`` graph runs, then :func:`segany.ops.postprocess.upscale_logits` maps logits
to the image.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from segany.errors import CheckpointError, ImageError, PromptError
from segany.inference.cpu import cpu_has_int8_dot
from segany.inference.predictor import PredictorBase, SamPredictor
from segany.ops.transforms import ResizeLongestSide

__all__ = ["OnnxPredictor", "OnnxModelInfo", "MANIFEST", "is_export_folder", "cpu_has_int8_dot"]

MANIFEST = "segany_onnx.json"  # same name as segany.export.onnx.MANIFEST (export may not be imported here)
# Labels of the exported graphs: 2/3 box corners, -1 padding; 4 has no learned embedding, which is how
# the PyTorch prompt encoder treats any label other than 0, 1 and -1.
_PAD, _TOP_LEFT, _BOTTOM_RIGHT, _POSITION_ONLY = -1.0, 2.0, 3.0, 4.0


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

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


class OnnxPredictor(PredictorBase):
    """Predict masks with onnxruntime from an exported folder.

    Args:
        folder: a folder written by ``segany export``.
        precision: ``"fp32"``, ``"int8"`` (needs an export with ``--quantize int8``) or ``"auto"``
            (int8 where the folder has it).
        num_threads: onnxruntime intra-op threads (default: ``torch.get_num_threads()``).
        decoder_model: the exported model itself, if at hand: prompts then run segany's PyTorch decoder
            (:class:`SamPredictor`'s, faster on CPUs than the exported decoder graphs and float32 exact)
            on the onnxruntime embedding; only the image encoder runs in onnxruntime.
        decoder_precision: with ``decoder_model``, the PyTorch decoder's precision (see
            :class:`SamPredictor`): ``"fp32"`` or ``"bf16"``.
        compile_decoder: with ``decoder_model``, compile the PyTorch decoder (see :class:`SamPredictor`).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        precision: Literal["auto", "fp32", "int8"] = "auto",
        num_threads: int | None = None,
        decoder_model: Any | None = None,
        decoder_precision: Literal["fp32", "bf16"] = "fp32",
        compile_decoder: bool = False,
    ) -> None:
        import onnxruntime as ort

        if decoder_precision != "fp32" and decoder_model is None:
            raise ValueError("decoder_precision other than 'fp32' needs decoder_model (segany's PyTorch decoder)")
        if compile_decoder and decoder_model is None:
            raise ValueError("compile_decoder needs decoder_model (segany's PyTorch decoder)")

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
        if precision not in ("auto", "fp32", "int8"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'int8', not {precision!r}")
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
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def session(role: str) -> Any:
            name = files.get(f"{role}.int8") if self.precision == "int8" else None
            name = name or files.get(role)
            if name is None:
                raise CheckpointError(f"{self.folder}: the export has no {role} graph")
            return ort.InferenceSession(str(self.folder / name), options, providers=["CPUExecutionProvider"])

        self._encoder = session("encoder") if "encoder" in files else None
        # Prompts run either in segany's PyTorch decoder or in the exported decoder graphs, never both:
        # only the graphs in use are loaded.
        self._torch_decoder: SamPredictor | None = None
        self._cache_graph: Any = None
        self._decoder: Any = None
        if decoder_model is not None:
            self._torch_decoder = SamPredictor(
                decoder_model, decoder_precision=decoder_precision, compile_decoder=compile_decoder
            )
            if self._torch_decoder._embedding_shape() != self._embedding_shape():
                raise CheckpointError(f"{self.folder}: decoder_model is not the exported model (embedding shapes differ)")
        else:
            self._cache_graph = session("image_cache")
            self._decoder = session("decoder_lowres")
        self.transform = ResizeLongestSide(self.model.image_size)
        self.reset_image()

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
        self._use_features(torch.from_numpy(embedding), (int(original_size[0]), int(original_size[1])))

    def _use_features(self, features: torch.Tensor, original_size: tuple[int, int]) -> None:
        self._start_image(original_size)
        self._embedding = np.ascontiguousarray(features.detach().cpu().float().numpy(), dtype=np.float32)
        self.features = torch.from_numpy(self._embedding)
        if self._torch_decoder is not None:
            self._torch_decoder._use_features(self.features, original_size)
        else:
            self._cache = self._run_cache(None)
        self.is_image_set = True

    def _embedding_shape(self) -> tuple[int, int, int, int]:
        return (1, self.model.embed_dim, *self.model.embedding_size)

    def _mask_input_size(self) -> tuple[int, int]:
        return self.model.mask_input_size

    def _run_cache(self, mask: np.ndarray | None) -> list[np.ndarray]:
        """The decoder's image-side cache for the current embedding and an optional ``(1, 1, h, w)`` mask."""
        has = np.array([0.0 if mask is None else 1.0], dtype=np.float32)
        if mask is None:
            mask = np.zeros((1, 1, *self.model.mask_input_size), dtype=np.float32)
        feeds = {"image_embeddings": self._embedding, "mask_input": mask, "has_mask_input": has}
        return self._cache_graph.run(None, feeds)

    def reset_image(self) -> None:
        super().reset_image()
        self._embedding: np.ndarray | None = None
        self._cache: list[np.ndarray] | None = None
        if getattr(self, "_torch_decoder", None) is not None:
            self._torch_decoder.reset_image()

    # -- prompts (predict and predict_torch are PredictorBase's) --------------------------------

    def predict_low_res(
        self,
        point_coords: torch.Tensor | np.ndarray | None,
        point_labels: torch.Tensor | np.ndarray | None,
        boxes: torch.Tensor | np.ndarray | None = None,
        mask_input: torch.Tensor | np.ndarray | None = None,
        multimask_output: bool = True,
        skip_below: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder output only, like ``model.mask_decoder(...)``: low-resolution logits ``(B, M, 4g, 4g)``
        and predicted IoUs ``(B, M)`` for ``B`` prompt sets in the resized frame (points ``(B, N, 2)``,
        labels ``(B, N)``, boxes ``(B, 4)``, masks ``(B, 1, 4g, 4g)``). ``skip_below`` works as in
        :meth:`SamPredictor.predict_low_res` with the PyTorch decoder; the exported graphs upscale every
        prompt."""
        self._require_image()
        if self._torch_decoder is not None:
            return self._torch_decoder.predict_low_res(
                *(None if x is None else torch.as_tensor(x) for x in (point_coords, point_labels, boxes, mask_input)),
                multimask_output=multimask_output,
                skip_below=skip_below,
            )
        coords, labels = self._sparse_prompts(point_coords, point_labels, boxes)
        keep = slice(1, None) if multimask_output else slice(0, 1)
        if mask_input is None:
            low_res, scores = self._decode(self._cache, coords, labels)
            return torch.from_numpy(low_res[:, keep]), torch.from_numpy(scores[:, keep])
        masks = _numpy(mask_input).astype(np.float32, copy=False)
        if masks.ndim != 4 or masks.shape[1:] != (1, *self.model.mask_input_size) or masks.shape[0] != coords.shape[0]:
            raise PromptError(f"mask_input must have shape ({coords.shape[0]}, 1, *{self.model.mask_input_size})")
        # The cache depends on the mask, so prompts with masks are decoded one at a time.
        outs = [
            self._decode(self._run_cache(np.ascontiguousarray(masks[i : i + 1])), coords[i : i + 1], labels[i : i + 1])
            for i in range(coords.shape[0])
        ]
        low_res = np.concatenate([o[0] for o in outs])[:, keep]
        scores = np.concatenate([o[1] for o in outs])[:, keep]
        return torch.from_numpy(np.ascontiguousarray(low_res)), torch.from_numpy(np.ascontiguousarray(scores))

    def _decode(self, cache: list[np.ndarray] | None, coords: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        assert cache is not None
        src, k1, v1, q1 = cache
        feeds = {"src": src, "k1": k1, "v1": v1, "q1": q1, "point_coords": coords, "point_labels": labels}
        return self._decoder.run(None, feeds)

    def _sparse_prompts(
        self,
        point_coords: torch.Tensor | np.ndarray | None,
        point_labels: torch.Tensor | np.ndarray | None,
        boxes: torch.Tensor | np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Points and box corners as one ``(B, K, 2)`` / ``(B, K)`` pair in the graphs' convention."""
        parts_c: list[np.ndarray] = []
        parts_l: list[np.ndarray] = []
        b = None
        if point_coords is not None:
            if point_labels is None:
                raise PromptError("point_labels are required with point_coords")
            c = _numpy(point_coords).astype(np.float32)
            lab = _numpy(point_labels).astype(np.float32)
            if c.ndim != 3 or c.shape[2] != 2 or lab.shape != c.shape[:2]:
                raise PromptError(f"point_coords must be (B, N, 2) and point_labels (B, N); got {c.shape}, {lab.shape}")
            lab = np.where(np.isin(lab, (-1.0, 0.0, 1.0)), lab, _POSITION_ONLY).astype(np.float32)
            parts_c.append(c)
            parts_l.append(lab)
            b = c.shape[0]
        if boxes is not None:
            bx = _numpy(boxes).astype(np.float32).reshape(-1, 2, 2)
            if b is not None and bx.shape[0] != b:
                raise PromptError(f"got {bx.shape[0]} boxes for {b} point sets")
            b = bx.shape[0]
            parts_c.append(bx)
            parts_l.append(np.tile(np.array([[_TOP_LEFT, _BOTTOM_RIGHT]], dtype=np.float32), (b, 1)))
        else:
            # Without a box the model was trained with an extra padding token.
            b = b if b is not None else 1
            if point_coords is not None:
                parts_c.append(np.zeros((b, 1, 2), dtype=np.float32))
                parts_l.append(np.full((b, 1), _PAD, dtype=np.float32))
        if not parts_c:
            return np.zeros((b, 0, 2), dtype=np.float32), np.zeros((b, 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(parts_c, axis=1)), np.ascontiguousarray(np.concatenate(parts_l, axis=1))


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# -- choosing a backend --------------------------------------------------------------------------


def is_export_folder(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``segany export``."""
    return path.is_dir() and (path / MANIFEST).is_file()
