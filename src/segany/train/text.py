"""Training the text prompt path (SAM paper, section 7.5 and Appendix D.5) without any text.

In a share (``text.rate``) of the masks, the first prompt is the frozen CLIP's *image* embedding of the
object's crop: the mask's box enlarged by a factor drawn from ``text.scale`` (the paper: 1 to 2), made
square and resized to CLIP's input; with probability ``text.mask_out_probability`` the pixels outside the
mask are zeroed. Points follow in later rounds as for any prompt. At inference the CLIP *text* embedding
takes the crop's place: CLIP puts both in one space.

Crop embeddings are cached on disk (``<cache>/clip-<digest>/*.npz``), keyed by the image's and mask's
bytes, the enlargement, the masking and the CLIP model, so repeated epochs and later runs on the same data
skip CLIP. The enlargement is drawn from ``text.scale_levels`` evenly spaced values so that keys repeat.
``text.precompute`` (:func:`precompute`) embeds every crop the run can ask for before the first step.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segany.io.clip import ClipModel
from segany.io.files import atomic_write_bytes
from segany.ops.crops import object_crop


@dataclass
class CropRequest:
    """One object to embed: image uint8 ``(3, h, w)`` (a training item's), mask bool ``(h, w)``, the
    box enlargement and whether the outside of the mask is zeroed."""

    image: torch.Tensor
    mask: torch.Tensor
    scale: float
    masked: bool


def _digest(t: torch.Tensor) -> bytes:
    a = t.detach().cpu().contiguous().numpy()
    return hashlib.sha1(str(a.shape).encode() + a.tobytes()).digest()


class CropEmbedder:
    """CLIP image embeddings ``(N, D)`` of object crops, through an on-disk cache (None: memory only).

    Not thread-safe; each training process keeps its own and writes its own cache files."""

    FLUSH_EVERY = 512

    def __init__(self, clip: ClipModel, cache_dir: str | os.PathLike[str] | None, batch: int = 32) -> None:
        self.clip = clip
        self.batch = batch
        self.folder = None
        tag = hashlib.sha1(clip.identity.encode()).hexdigest()[:12]
        self.memory: dict[bytes, np.ndarray] = {}
        self.pending: dict[bytes, np.ndarray] = {}
        self.hits = self.misses = 0
        if cache_dir is not None:
            self.folder = Path(cache_dir) / f"clip-{tag}"
            for shard in sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []:
                try:
                    with np.load(shard, allow_pickle=False) as z:
                        keys, values = z["keys"], z["values"]
                    if values.ndim != 2 or values.shape[1] != clip.embed_dim or len(keys) != len(values):
                        continue  # another model's or a damaged file: ignored, recomputed
                    if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != 20:
                        continue
                    self.memory.update(zip((k.tobytes() for k in keys), values.astype(np.float32)))
                except (OSError, ValueError, KeyError):
                    continue

    def key(self, r: CropRequest, image_digest: bytes | None = None) -> bytes:
        h = hashlib.sha1(self.clip.identity.encode())
        h.update(image_digest or _digest(r.image))
        h.update(_digest(r.mask))
        h.update(f"{r.scale:.4f}|{int(r.masked)}".encode())
        return h.digest()

    def __call__(self, requests: list[CropRequest]) -> torch.Tensor:
        """Embeddings ``(len(requests), D)`` float32 on the CLIP's device."""
        digests: dict[int, bytes] = {}
        keys = []
        for r in requests:
            ident = id(r.image)
            if ident not in digests:
                digests[ident] = _digest(r.image)
            keys.append(self.key(r, digests[ident]))
        out = np.zeros((len(requests), self.clip.embed_dim), dtype=np.float32)
        todo = [i for i, k in enumerate(keys) if k not in self.memory]
        self.hits += len(requests) - len(todo)
        self.misses += len(todo)
        for start in range(0, len(todo), self.batch):
            part = todo[start : start + self.batch]
            crops, keeps = [], []
            for i in part:
                r = requests[i]
                image = r.image.permute(1, 2, 0).cpu().numpy()
                crop, keep = object_crop(image, r.mask.cpu().numpy(), r.scale, self.clip.image_size)
                crops.append(crop)
                keeps.append(keep if r.masked else np.ones_like(keep))
            emb = self.clip.encode_crops(np.stack(crops), np.stack(keeps)).cpu().numpy()
            for i, e in zip(part, emb):
                self.memory[keys[i]] = e
                self.pending[keys[i]] = e
        for i, k in enumerate(keys):
            out[i] = self.memory[k]
        if len(self.pending) >= self.FLUSH_EVERY:
            self.flush()
        return torch.from_numpy(out).to(self.clip.device)

    def flush(self) -> None:
        """Write the embeddings computed since the last flush as one new cache file (atomically)."""
        if self.folder is None or not self.pending:
            self.pending.clear()
            return
        import io

        self.folder.mkdir(parents=True, exist_ok=True)
        # Raw digest bytes (a fixed-width bytes dtype would drop trailing zero bytes).
        keys = np.frombuffer(b"".join(self.pending), dtype=np.uint8).reshape(-1, 20)
        values = np.stack(list(self.pending.values())).astype(np.float32)
        buf = io.BytesIO()
        np.savez(buf, keys=keys, values=values)
        name = hashlib.sha1(keys.tobytes()).hexdigest()[:16]
        atomic_write_bytes(self.folder / f"{name}.npz", buf.getvalue())
        self.pending.clear()


def scale_levels(low: float, high: float, levels: int) -> np.ndarray:
    """The enlargements drawn from: ``levels`` evenly spaced values in ``[low, high]``."""
    return np.linspace(low, high, max(1, levels)) if levels > 1 else np.array([low])


@dataclass
class TextTraining:
    """What the interactive simulation needs for text rounds: the embedder and the recipe's settings."""

    embedder: CropEmbedder
    rate: float
    scales: np.ndarray
    mask_out_probability: float

    def requests(self, item: dict[str, Any], masks: torch.Tensor, rng: np.random.Generator) -> list[CropRequest]:
        """One request per mask of ``item`` (masks bool ``(k, h, w)`` at the item's size), drawn from ``rng``."""
        out = []
        for m in masks:
            scale = float(self.scales[rng.integers(len(self.scales))])
            out.append(CropRequest(item["image"], m, scale, bool(rng.random() < self.mask_out_probability)))
        return out


def precompute(text: TextTraining, items: list[tuple[Any, np.ndarray]], progress: bool = True) -> int:
    """Embed every crop the run can ask for, before training: each usable mask of each cached image
    (``items``: :attr:`segany.train.data.TrainDataset.items`) at every enlargement, masked and not (as
    the mask-out probability allows), and write them to the cache. Returns how many were new.

    Only images the run sees unchanged are covered: with large-scale jitter, flips or colour jitter the
    training crops differ and are embedded as they come."""
    from segany.io.rle import decode_rle

    p = text.mask_out_probability
    variants = [v for v, keep in ((False, p < 1.0), (True, p > 0.0)) if keep]
    total = sum(len(ok) for _, ok in items) * len(text.scales) * len(variants)
    before = text.embedder.misses
    from tqdm import tqdm

    with tqdm(total=total, desc="CLIP crop embeddings", disable=None if progress else True, leave=False) as bar:
        for cached, ok in items:
            image = torch.from_numpy(np.ascontiguousarray(cached.image)).permute(2, 0, 1).contiguous()
            requests = [
                CropRequest(image, torch.from_numpy(decode_rle(cached.rles[i])), float(s), masked)
                for i in ok
                for s in text.scales
                for masked in variants
            ]
            text.embedder(requests)
            bar.update(len(requests))
    text.embedder.flush()
    return text.embedder.misses - before
