"""Training data: images resized to the model's input size, a few sampled masks per image.

Reading and resizing the originals is slow on a small machine (BSDS500 alone has 56k masks), so each
data set is resized once and cached (``<cache_dir>/<name>-<split>-<size>-<digest>.npz``: images at the
model's long-side size as uint8 arrays, masks as COCO RLE at that size in a JSON string). The cache is
read with ``allow_pickle=False``: a planted file can hold wrong data, never code. Every item is then
cheap: decode a few RLEs.

Randomness (which masks, the jitter) depends only on ``(seed, step, image index)``, so a run that
resumes, or runs on any number of processes, sees the same items as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segany.io.datasets import SegmentationDataset
from segany.io.files import atomic_write_bytes
from segany.io.rle import decode_rle, encode_mask
from segany.ops.transforms import ResizeLongestSide

CACHE_VERSION = 2


@dataclass
class CachedImage:
    """One resized image and its resized masks."""

    image: np.ndarray  # uint8 (h, w, 3), long side = the model's input size
    rles: list[dict[str, Any]]  # COCO RLE of each mask at (h, w)
    area_fraction: np.ndarray  # float (M,): mask area / image area
    pixels: np.ndarray  # int (M,): mask area in pixels at (h, w)
    source: str  # "dataset/file_name", for error messages and inspection


def split_dataset_spec(spec: str) -> tuple[str, str | None]:
    """``"path:train+val"`` -> ``("path", "train+val")``; ``"path"`` -> ``("path", None)``."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and "/" not in tail and tail:
        return head, tail
    return spec, None


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool (H, W) -> bool (h, w); area averaging when shrinking keeps thin parts fairly."""
    h, w = size
    shrink = h < mask.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = cv2.resize(mask.astype(np.float32), (w, h), interpolation=interp)
    return out >= 0.5


def build_cache(
    root: str | os.PathLike[str],
    split: str | None,
    size: int,
    cache_dir: str | os.PathLike[str],
    limit: int | None = None,
) -> list[CachedImage]:
    """Resize a data set once (images and masks to long side ``size``) and cache it on disk."""
    root = Path(root)
    key = f"{root.resolve()}|{split}|{size}|{limit}|{CACHE_VERSION}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    cache = Path(cache_dir) / f"{root.name}-{(split or 'all').replace('+', '_')}-{size}-{digest}.npz"
    if cache.is_file():
        try:
            return read_cache(cache)
        except (ValueError, KeyError, OSError, TypeError) as exc:
            raise ValueError(f"{cache}: unreadable training cache ({exc}); delete it to rebuild") from None
    dataset = SegmentationDataset(root, split=split, limit=limit)
    resize = ResizeLongestSide(size)
    items: list[CachedImage] = []
    for sample in dataset:
        image = resize.apply_image(sample.load_image())
        h, w = image.shape[:2]
        rles, fractions, pixels = [], [], []
        for inst in sample.annotations:
            if inst.iscrowd:
                continue
            small = _resize_mask(inst.mask(), (h, w))
            n = int(small.sum())
            if n == 0:
                continue
            rles.append(encode_mask(small))
            fractions.append(n / (h * w))
            pixels.append(n)
        items.append(
            CachedImage(
                image, rles, np.asarray(fractions, float), np.asarray(pixels, int), f"{root.name}/{sample.file_name}"
            )
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_cache(cache, items)
    return items


def write_cache(path: Path, items: Sequence[CachedImage]) -> None:
    """Images as ``image{i}`` arrays and everything else as one JSON string, in an ``.npz``, atomically."""
    meta = [
        {"rles": it.rles, "area_fraction": it.area_fraction.tolist(), "pixels": it.pixels.tolist(), "source": it.source}
        for it in items
    ]
    arrays = {f"image{i}": it.image for i, it in enumerate(items)}
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_cache(path: Path) -> list[CachedImage]:
    """The items of a cache written by :func:`write_cache` (no pickles are loaded)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        items = []
        for i, m in enumerate(meta):
            image = z[f"image{i}"]
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image{i} is not a uint8 (h, w, 3) array")
            items.append(
                CachedImage(
                    image,
                    list(m["rles"]),
                    np.asarray(m["area_fraction"], float),
                    np.asarray(m["pixels"], int),
                    str(m["source"]),
                )
            )
    return items


def item_rng(seed: int, step: int, index: int, salt: int = 0) -> np.random.Generator:
    """The generator for one image at one step: independent of process count and resumption."""
    return np.random.default_rng([seed, step, index, salt])


def large_scale_jitter(
    image: np.ndarray, masks: np.ndarray, size: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rescale by a factor drawn from ``scale`` and crop a random window of at most ``size``.

    Args:
        image: uint8 (h, w, 3); masks: bool (M, h, w).
    Returns:
        the jittered image (h', w', 3) and masks (M, h', w'), h', w' <= ``size``.
    """
    s = float(rng.uniform(*scale))
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if len(masks):
        masks = np.stack([cv2.resize(m.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) for m in masks]) > 0
    else:
        masks = np.zeros((0, nh, nw), bool)
    y0 = int(rng.integers(0, nh - min(nh, size) + 1))
    x0 = int(rng.integers(0, nw - min(nw, size) + 1))
    crop = (slice(y0, y0 + size), slice(x0, x0 + size))
    return image[crop], masks[(slice(None), *crop)]


def photometric_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation, each scaled by ``1 + U(-strength, strength)``.

    Args:
        image: uint8 (h, w, 3). Returns a new uint8 (h, w, 3).
    """
    b, c, s = (1.0 + rng.uniform(-strength, strength, size=3)).tolist()
    x = image.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * s + grey
    return np.clip(x, 0, 255).astype(np.uint8)


def paste_object(
    image: np.ndarray,
    masks: np.ndarray,
    donor_image: np.ndarray,
    donor_mask: np.ndarray,
    scale: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simple copy-paste (Ghiasi et al., 2021): one annotated object pasted onto another image.

    The object (``donor_mask``'s pixels of ``donor_image``) is rescaled by a factor drawn log-uniformly
    from ``scale`` (shrunk further if it would not fit) and pasted at a random place; the masks it covers
    lose those pixels. It teaches isolated objects on unrelated backgrounds, where the whole field is
    never the answer.

    Args:
        image: uint8 (h, w, 3); masks: bool (M, h, w); donor_image: uint8 (h2, w2, 3); donor_mask: bool
        (h2, w2), not empty.
    Returns:
        the new image (h, w, 3), ``masks`` minus the pasted pixels (M, h, w), and the pasted object's mask
        (h, w).
    """
    ys, xs = np.nonzero(donor_mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    patch, shape = donor_image[y0:y1, x0:x1], donor_mask[y0:y1, x0:x1]
    h, w = image.shape[:2]
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    s = min(s, h / patch.shape[0], w / patch.shape[1])
    ph, pw = max(1, min(h, round(patch.shape[0] * s))), max(1, min(w, round(patch.shape[1] * s)))
    patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_LINEAR)
    shape = cv2.resize(shape.astype(np.uint8), (pw, ph), interpolation=cv2.INTER_NEAREST) > 0
    ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    pasted = np.zeros((h, w), bool)
    pasted[ty : ty + ph, tx : tx + pw] = shape
    out = image.copy()
    out[pasted] = patch[shape]
    return out, masks & ~pasted, pasted


class TrainDataset(Dataset):
    """Cached images with up to ``masks_per_image`` sampled masks each.

    Items are fetched by ``(index, step)`` keys (see :class:`StepBatchSampler`) and are dicts with
    ``image`` uint8 ``(3, h, w)``, ``masks`` bool ``(M, h, w)`` (1 <= M <= masks_per_image), ``index``
    and ``step``. ``h, w <= size``; padding to the square input happens in the model's preprocess.
    Augmentations, in order: large-scale jitter, horizontal flip, copy-paste of other images' objects
    (:func:`paste_object`), photometric jitter.
    """

    def __init__(
        self,
        items: Sequence[CachedImage],
        size: int,
        masks_per_image: int,
        max_area_fraction: float = 0.9,
        min_mask_pixels: int = 4,
        jitter: tuple[float, float] | None = None,
        seed: int = 0,
        hflip: bool = False,
        color_jitter: float = 0.0,
        copy_paste: float = 0.0,
        copy_paste_max: int = 3,
        copy_paste_scale: tuple[float, float] = (0.25, 1.0),
    ) -> None:
        self.size = size
        self.copy_paste, self.copy_paste_max, self.copy_paste_scale = copy_paste, copy_paste_max, copy_paste_scale
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.masks_per_image = masks_per_image
        self.jitter = jitter
        self.min_mask_pixels = min_mask_pixels
        self.seed = seed
        # Keep, per image, the masks that pass the filters; drop images left with none.
        self.items: list[tuple[CachedImage, np.ndarray]] = []
        for item in items:
            ok = np.nonzero((item.area_fraction <= max_area_fraction) & (item.pixels >= min_mask_pixels))[0]
            if len(ok):
                self.items.append((item, ok))

    def __len__(self) -> int:
        return len(self.items)

    def num_masks(self) -> int:
        return int(sum(len(ok) for _, ok in self.items))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, step = key if isinstance(key, tuple) else (key, 0)
        item, ok = self.items[index]
        rng = item_rng(self.seed, step, index)
        chosen = ok if len(ok) <= self.masks_per_image else rng.choice(ok, self.masks_per_image, replace=False)
        masks = np.stack([decode_rle(item.rles[i]) for i in sorted(chosen)])
        image = item.image
        if self.jitter is not None:
            image, masks = large_scale_jitter(image, masks, self.size, self.jitter, rng)
            keep = masks.reshape(len(masks), -1).sum(1) >= self.min_mask_pixels
            if not keep.any():  # the crop missed every mask: fall back to the unjittered image
                masks = np.stack([decode_rle(item.rles[i]) for i in sorted(chosen)])
                image = item.image
            else:
                masks = masks[keep]
        if self.hflip and rng.random() < 0.5:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        if self.copy_paste > 0 and rng.random() < self.copy_paste:
            image, masks = self._paste(image, masks, rng)
        if self.color_jitter > 0:
            image = photometric_jitter(image, self.color_jitter, rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(),
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
            "index": index,
            "step": step,
        }

    def _paste(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Paste 1..``copy_paste_max`` objects of random images; pasted objects are kept first under the cap."""
        before = image, masks
        originals, pasted = masks, []
        for _ in range(int(rng.integers(1, self.copy_paste_max + 1))):
            donor, ok = self.items[int(rng.integers(len(self.items)))]
            donor_mask = decode_rle(donor.rles[int(rng.choice(ok))])
            image, originals, new = paste_object(image, originals, donor.image, donor_mask, self.copy_paste_scale, rng)
            pasted = [p & ~new for p in pasted] + [new]
        big = [m for m in pasted if m.sum() >= self.min_mask_pixels][-self.masks_per_image :]
        rest = [m for m in originals if m.sum() >= self.min_mask_pixels]
        room = max(0, self.masks_per_image - len(big))
        if len(rest) > room:
            rest = [rest[i] for i in sorted(rng.choice(len(rest), room, replace=False))]
        kept = big + rest
        if not kept:  # what was pasted is too small and cut every mask below the minimum: leave the item as it was
            return before
        return image, np.stack(kept)


def collate_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Images differ in size: keep the batch a list (the loop pads them)."""
    return batch


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this process's micro-batches, step by step, as lists of ``(index, step)`` keys.

    Each step's global batch is a slice of a per-epoch permutation seeded by ``(seed, epoch)``;
    process ``rank`` of ``world`` takes images ``[rank * per_rank, (rank + 1) * per_rank)`` of it and
    splits them into ``accumulation`` micro-batches. So the images of a step do not depend on the
    number of processes, and a resumed run continues exactly where it stopped.
    """

    def __init__(
        self,
        num_items: int,
        global_batch: int,
        start_step: int,
        end_step: int,
        rank: int = 0,
        world: int = 1,
        micro_batch: int | None = None,
        seed: int = 0,
    ) -> None:
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
        if num_items < global_batch:
            raise ValueError(f"only {num_items} usable images for a global batch of {global_batch}")
        self.num_items = num_items
        self.global_batch = global_batch
        self.start_step, self.end_step = start_step, end_step
        self.rank, self.world = rank, world
        self.per_rank = global_batch // world
        micro = min(micro_batch or self.per_rank, self.per_rank)
        self.accumulation = -(-self.per_rank // micro)
        self.micro = -(-self.per_rank // self.accumulation)
        self.seed = seed
        self.steps_per_epoch = num_items // global_batch

    def step_indices(self, step: int) -> list[int]:
        """Dataset indices of the whole global batch of ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = torch.randperm(self.num_items, generator=g)
        return perm[within * self.global_batch : (within + 1) * self.global_batch].tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.end_step):
            mine = self.step_indices(step)[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
            for i in range(0, len(mine), self.micro):
                yield [(idx, step) for idx in mine[i : i + self.micro]]

    def __len__(self) -> int:
        return (self.end_step - self.start_step) * self.accumulation
