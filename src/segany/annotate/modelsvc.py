"""The project's model on the server: its identity, the image-embedding cache, the decoder ONNX files
and server-side decoding.

The page decodes in the browser with segany's split decoder (``image_cache.onnx`` once per image,
``decoder_lowres.onnx`` per click; float32, or their int8 versions with ``decoder_precision="int8"``)
and falls back to the official-compatible ``decoder.onnx``; all are written by one export per model
under ``<cache>/onnx/<model id>/``.

Embeddings are cached on disk as ``.npy`` files (float32, ``(1, C, g, g)``) under
``<cache>/embeddings/<model id>/<image sha256>.npy``: keyed by content and model, so a renamed image
is not re-encoded and a new checkpoint never reuses an old model's embeddings. Each image is encoded
at most once per model, whether the background worker or a request gets there first.
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from segany.io.files import atomic_write_bytes
from segany.io.image import read_image
from segany.model import Sam


def model_id(model: Sam) -> str:
    """A short identity of the weights: the first 16 hex digits of a sha256 over the state dict
    (names, shapes, dtypes and bytes, in name order). Kept behind this one function so that a shared
    helper can replace it."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too (BatchNorm)
    return h.hexdigest()[:16]


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes, what: str, max_bytes: int = 64 << 20) -> np.ndarray:
    """Parse client-sent ``.npy`` bytes (no pickles); ValueError with a one-line reason otherwise."""
    if len(data) > max_bytes:
        raise ValueError(f"{what}: too large")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises several kinds for bad headers
        raise ValueError(f"{what}: not a .npy array ({type(exc).__name__})") from None


DecoderPrecision = Literal["fp32", "int8"]
DECODER_PRECISIONS = ("fp32", "int8")


class ModelService:
    """Encoder, embedding cache, decoder export and server-side predict for one model.

    Two predictors share the model: one encodes (the background worker and on-demand requests, one at a
    time), one decodes prompts, so that a long encode never blocks a click.
    """

    def __init__(
        self, model: Sam, cache_dir: Path, name: str = "segany", decoder_precision: DecoderPrecision = "fp32"
    ) -> None:
        from segany.inference.predictor import SamPredictor

        if decoder_precision not in DECODER_PRECISIONS:
            choices = ", ".join(DECODER_PRECISIONS)
            raise ValueError(f"decoder precision must be one of {choices}, not {decoder_precision!r}")
        self.decoder_precision = decoder_precision
        self.model = model.eval()
        self.name = name
        self.id = model_id(model)
        self.cache_dir = cache_dir
        self.embedding_dir = cache_dir / "embeddings" / self.id
        self.embedding_dir.mkdir(parents=True, exist_ok=True)
        self._encoder = SamPredictor(self.model)
        self._decoder = SamPredictor(self.model)
        self._encode_lock = threading.Lock()
        self._decode_lock = threading.Lock()
        self._export_lock = threading.Lock()
        grid = self.model.prompt_encoder.image_embedding_size[0]  # any encoder (ViT, TinyViT, conv)
        # SAM-HQ's embedding carries its early encoder features after SAM's channels (model/hq.py).
        channels = self.model.prompt_encoder.embed_dim + int(getattr(self.model.mask_decoder, "early_dim", 0))
        self.embedding_shape = [1, int(channels), int(grid), int(grid)]
        self.image_size = int(self.model.image_encoder.img_size)
        self.mask_input_size = 4 * int(grid)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "image_size": self.image_size,
            "mask_threshold": float(self.model.mask_threshold),
            "embedding_shape": self.embedding_shape,
            "mask_input_shape": [1, 1, self.mask_input_size, self.mask_input_size],
            "decoder_url": self.model_url("decoder.onnx"),
            "decoder_split": {
                "image_cache_url": self.model_url(self.split_files()[0]),
                "decoder_lowres_url": self.model_url(self.split_files()[1]),
                "precision": self.decoder_precision,
            },
        }

    def model_url(self, name: str) -> str:
        """URL of a served model file. The query names the model, so that a browser's cached copy
        (served as immutable) is never taken for another model's file."""
        return f"/api/model/{name}?model={self.id}"

    # -- embeddings ----------------------------------------------------------------------------

    def embedding_path(self, sha256: str) -> Path:
        return self.embedding_dir / f"{sha256}.npy"

    def has_embedding(self, sha256: str) -> bool:
        return self.embedding_path(sha256).is_file()

    def ensure_embedding(self, sha256: str, image_path: Path) -> Path:
        """The cached embedding of an image, encoding it first when needed."""
        path = self.embedding_path(sha256)
        if path.is_file():
            return path
        with self._encode_lock:
            if path.is_file():  # encoded by someone else while we waited
                return path
            image = read_image(image_path)
            self._encoder.set_image(image)
            features = self._encoder.get_image_embedding().detach().float().cpu().numpy()
            self._encoder.reset_image()
            atomic_write_bytes(path, npy_bytes(np.ascontiguousarray(features, dtype=np.float32)))
        return path

    def load_embedding(self, sha256: str) -> np.ndarray:
        return np.load(self.embedding_path(sha256), allow_pickle=False)

    # -- decoder ONNX --------------------------------------------------------------------------

    def split_files(self) -> tuple[str, str]:
        """File names of the split decoder the page runs: ``(image cache, low-res decoder)``."""
        suffix = ".int8.onnx" if self.decoder_precision == "int8" else ".onnx"
        return f"image_cache{suffix}", f"decoder_lowres{suffix}"

    def served_files(self) -> tuple[str, ...]:
        """Every model file a page may fetch: the official-compatible decoder and the split one."""
        return ("decoder.onnx", *self.split_files())

    def model_file(self, name: str) -> Path:
        """One of :meth:`served_files` for this model. The first request exports all of them at once
        (segany's exporter, decoder graphs only), later ones read the cache; a cache folder written
        without this file (an older version, or another precision) is exported again."""
        if name not in self.served_files():
            raise FileNotFoundError(name)
        out = self.cache_dir / "onnx" / self.id
        path = out / name
        if path.is_file():
            return path
        with self._export_lock:
            if not path.is_file():
                from segany.export import export_onnx

                # Unsigned int8 weights: the graphs run in browsers, not on this CPU, and uint8 x uint8
                # products have no 16-bit saturation on any runtime (see segany.export.quantize).
                int8 = self.decoder_precision == "int8"
                export_onnx(self.model, out, encoder=False, quantize="int8" if int8 else None,
                            int8_weights="u8")
        if not path.is_file():
            raise FileNotFoundError(name)
        return path

    def decoder_path(self) -> Path:
        """segany's official-compatible decoder graph for this model (exported once, then cached)."""
        return self.model_file("decoder.onnx")

    # -- server-side predict -------------------------------------------------------------------

    def predict(
        self,
        embedding: np.ndarray,
        original_size: tuple[int, int],
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``SamPredictor.predict`` on a cached embedding: masks (M, H, W) bool, scores (M,),
        low-resolution logits (M, 4g, 4g)."""
        with self._decode_lock:
            self._decoder.set_image_embedding(torch.from_numpy(embedding), original_size)
            return self._decoder.predict(
                point_coords=points,
                point_labels=labels,
                box=box,
                mask_input=mask_input,
                multimask_output=multimask,
            )
