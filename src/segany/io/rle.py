"""Binary masks <-> run-length encodings.

Two encodings are used:

* **COCO RLE** (``{"size": [h, w], "counts": str}``), the compressed form of COCO and SA-1B files.
  All compression, decoding, area and box computations go through :mod:`pycocotools.mask`.
* **Uncompressed RLE** (``{"size": [h, w], "counts": [int, ...]}``), the ``uncompressed_rle`` output
  mode of the automatic mask generator: run lengths over the mask read in column-major (Fortran)
  order, alternating zeros and ones and always starting with a run of zeros (of length 0 when the
  first pixel is set). :func:`masks_to_uncompressed_rle_torch` computes it for a whole batch on the
  mask's device, which avoids copying full masks to the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils

from segany.io import FormatError

if TYPE_CHECKING:
    import torch

__all__ = [
    "encode_masks",
    "encode_mask",
    "decode_rle",
    "to_coco_rle",
    "rle_area",
    "rle_to_bbox",
    "uncompressed_rle_to_coco",
    "mask_to_uncompressed_rle",
    "masks_to_uncompressed_rle_torch",
    "is_coco_rle",
    "is_uncompressed_rle",
]

Rle = dict[str, Any]


def _as_bool_numpy(masks: Any) -> np.ndarray:
    """Return ``masks`` (numpy array or torch tensor, bool or integer) as a numpy bool array."""
    if hasattr(masks, "detach"):  # torch tensor; checked by duck typing so torch stays optional here
        masks = masks.detach().cpu().numpy()
    arr = np.asarray(masks)
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return arr != 0
    raise TypeError(f"masks must be bool (or 0/1 integers), got dtype {arr.dtype}; threshold them first")


def encode_masks(masks: Any) -> list[Rle]:
    """Compress binary masks to COCO RLE.

    Args:
        masks: bool array or tensor of shape (N, H, W) or (H, W) (integer 0/1 accepted).

    Returns:
        N dicts ``{"size": [H, W], "counts": str}`` (one for a single (H, W) mask), ready for JSON.
    """
    arr = _as_bool_numpy(masks)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W) or (H, W), got {arr.shape}")
    if arr.shape[0] == 0:
        return []
    # pycocotools wants a Fortran-ordered uint8 (H, W, N) array.
    fortran = np.asfortranarray(arr.transpose(1, 2, 0).astype(np.uint8))
    encoded = mask_utils.encode(fortran)
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("utf-8")} for r in encoded]


def encode_mask(mask: Any) -> Rle:
    """Compress one (H, W) binary mask to a COCO RLE dict with string counts."""
    arr = _as_bool_numpy(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {arr.shape}")
    return encode_masks(arr)[0]


def is_coco_rle(obj: Any) -> bool:
    """True for a compressed COCO RLE: a mapping with ``size`` and str/bytes ``counts``."""
    return isinstance(obj, Mapping) and "size" in obj and isinstance(obj.get("counts"), (str, bytes))


def is_uncompressed_rle(obj: Any) -> bool:
    """True for an uncompressed RLE: a mapping with ``size`` and a list of run lengths as ``counts``."""
    return isinstance(obj, Mapping) and "size" in obj and isinstance(obj.get("counts"), (list, tuple))


def _check_size(size: Any) -> tuple[int, int]:
    """Validate an RLE ``size`` field ([h, w], non-negative integers) and return it as a tuple."""
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in size)
    ):
        raise FormatError(f"RLE 'size' must be [height, width] with non-negative integers, got {size!r}")
    return int(size[0]), int(size[1])


def to_coco_rle(segmentation: Any, height: int | None = None, width: int | None = None) -> Rle:
    """Normalise any COCO segmentation to a compressed RLE dict with str counts.

    Args:
        segmentation: compressed RLE (str or bytes counts), uncompressed RLE (list counts), or
            polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists, which need ``height``/``width``).
        height, width: image size; required for polygons, checked against ``size`` for RLEs.

    Raises:
        FormatError: the segmentation is malformed or its size disagrees with ``height``/``width``.
    """
    if isinstance(segmentation, Mapping):
        if "size" not in segmentation or "counts" not in segmentation:
            raise FormatError(f"RLE needs 'size' and 'counts', got keys {sorted(segmentation)}")
        h, w = _check_size(segmentation["size"])
        if (height is not None and h != height) or (width is not None and w != width):
            raise FormatError(f"RLE size [{h}, {w}] does not match the image size [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, str):
            return {"size": [h, w], "counts": counts}
        if isinstance(counts, bytes):
            return {"size": [h, w], "counts": counts.decode("utf-8")}
        if isinstance(counts, (list, tuple)):
            return uncompressed_rle_to_coco({"size": [h, w], "counts": counts})
        raise FormatError(f"RLE 'counts' must be a string or a list of integers, got {type(counts).__name__}")
    if isinstance(segmentation, (list, tuple)):
        if height is None or width is None:
            raise ValueError("polygon segmentations need the image height and width")
        polygons = [list(p) for p in segmentation]
        if not polygons or any(len(p) < 6 or len(p) % 2 for p in polygons):
            raise FormatError("a polygon segmentation needs at least 3 (x, y) points per polygon")
        try:
            parts = mask_utils.frPyObjects(polygons, int(height), int(width))
        except (TypeError, ValueError) as exc:
            raise FormatError(f"invalid polygon segmentation: {exc}") from exc
        merged = mask_utils.merge(parts)
        return {"size": [int(height), int(width)], "counts": merged["counts"].decode("utf-8")}
    raise FormatError(f"a segmentation must be an RLE dict or a list of polygons, got {type(segmentation).__name__}")


def _pycoco_rle(rle: Rle) -> Rle:
    """Return the dict pycocotools expects (bytes counts) for a compressed RLE."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}


def decode_rle(segmentation: Any, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Decode a segmentation (COCO RLE, uncompressed RLE or polygons) to a bool (H, W) mask.

    Raises:
        FormatError: malformed data, e.g. counts that do not cover exactly H*W pixels.
    """
    rle = to_coco_rle(segmentation, height, width)
    h, w = rle["size"]
    if h * w == 0:
        return np.zeros((h, w), dtype=bool)
    pyrle = _pycoco_rle(rle)
    # pycocotools decodes a batch into one buffer, run after run, and does not check that the counts
    # cover all H*W pixels. Decoding a full sentinel mask right after ours makes too-short counts
    # visible: the sentinel's ones then spill into the end of our mask, which the area check catches.
    sentinel = mask_utils.frPyObjects({"size": [h, w], "counts": [0, h * w]}, h, w)
    try:
        decoded = mask_utils.decode([pyrle, sentinel])[:, :, 0]
    except ValueError as exc:  # pycocotools refuses counts that run past H*W
        raise FormatError(f"invalid RLE counts for size [{h}, {w}]: {exc}") from exc
    if np.count_nonzero(decoded) != int(mask_utils.area(pyrle)):
        raise FormatError(f"invalid RLE counts: they do not cover exactly the {h}x{w} pixels of the mask")
    return decoded.astype(bool)


def rle_area(rle: Rle) -> int:
    """Number of foreground pixels of a COCO RLE (computed from the counts, without decoding)."""
    return int(mask_utils.area(_pycoco_rle(to_coco_rle(rle))))


def rle_to_bbox(rle: Rle) -> list[float]:
    """Bounding box ``[x, y, w, h]`` of a COCO RLE, COCO convention (pycocotools ``toBbox``).

    ``w = x_max - x_min + 1`` (the box covers whole pixels), and ``[0, 0, 0, 0]`` for an empty mask.
    Note that the automatic mask generator's ``bbox`` uses SAM's convention ``w = x_max - x_min``.
    """
    box = mask_utils.toBbox(_pycoco_rle(to_coco_rle(rle)))
    return [float(v) for v in box]


def uncompressed_rle_to_coco(rle: Rle) -> Rle:
    """Compress an uncompressed RLE (``counts`` a list of run lengths) to COCO RLE with str counts."""
    h, w = _check_size(rle.get("size"))
    counts = rle.get("counts")
    if not isinstance(counts, (list, tuple)):
        raise FormatError("uncompressed RLE 'counts' must be a list of run lengths")
    if any(not isinstance(c, (int, np.integer)) or isinstance(c, bool) or c < 0 for c in counts):
        raise FormatError("uncompressed RLE 'counts' must be non-negative integers")
    if sum(int(c) for c in counts) != h * w:
        raise FormatError(f"uncompressed RLE run lengths sum to {sum(counts)}, expected {h}*{w}={h * w}")
    encoded = mask_utils.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w)
    return {"size": [h, w], "counts": encoded["counts"].decode("utf-8")}


def mask_to_uncompressed_rle(mask: Any) -> Rle:
    """Uncompressed RLE of one bool (H, W) mask (numpy or torch).

    Returns:
        ``{"size": [H, W], "counts": [zeros, ones, zeros, ...]}`` over the column-major pixel order.
    """
    arr = _as_bool_numpy(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {arr.shape}")
    h, w = arr.shape
    flat = arr.ravel(order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": []}
    # Run boundaries: 0, every index whose value differs from the previous one, and H*W.
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], starts, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)  # runs always begin with zeros
    return {"size": [int(h), int(w)], "counts": counts}


def masks_to_uncompressed_rle_torch(masks: torch.Tensor) -> list[Rle]:
    """Uncompressed RLEs of a batch of bool masks, computed on the masks' device.

    Args:
        masks: bool tensor (N, H, W) on any device.

    Returns:
        N dicts ``{"size": [H, W], "counts": [...]}``, equal to :func:`mask_to_uncompressed_rle`
        of each mask. Only the run lengths (not the masks) are copied to the CPU, in one transfer.
    """
    import torch

    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor, got {masks.dtype}; threshold them first")
    n, h, w = masks.shape
    if n == 0:
        return []
    hw = h * w
    if hw == 0:
        return [{"size": [h, w], "counts": []} for _ in range(n)]
    flat = masks.transpose(1, 2).reshape(n, hw)  # column-major pixel order
    # A virtual 0 pixel before each mask makes a set first pixel a change at index 0, which yields
    # the zero-length leading run of zeros that the format requires.
    padded = torch.cat([torch.zeros((n, 1), dtype=torch.bool, device=flat.device), flat], dim=1)
    rows, starts = torch.nonzero(padded[:, 1:] != padded[:, :-1], as_tuple=True)  # sorted by row
    per_row = torch.bincount(rows, minlength=n)  # run starts (changes) per mask
    # Run length before each change: distance to the previous change of the same mask (or to 0).
    prev = torch.cat([starts.new_zeros(1), starts[:-1]])
    first_in_row = torch.ones_like(rows, dtype=torch.bool)
    first_in_row[1:] = rows[1:] != rows[:-1]
    prev = torch.where(first_in_row, torch.zeros_like(prev), prev)
    runs = starts - prev
    # Final run of each mask: from its last change (or 0) to H*W.
    ends = torch.cumsum(per_row, 0)
    last_start = torch.zeros_like(per_row)
    has_change = per_row > 0
    last_start[has_change] = starts[ends[has_change] - 1]
    final = hw - last_start
    # Interleave: each mask's change-runs followed by its final run, in one flat tensor.
    out = torch.empty(runs.numel() + n, dtype=torch.int64, device=flat.device)
    out[torch.arange(runs.numel(), device=flat.device) + rows] = runs
    out[ends + torch.arange(n, device=flat.device)] = final
    values = out.cpu().tolist()
    offsets = (ends + torch.arange(1, n + 1, device=flat.device)).cpu().tolist()
    result: list[Rle] = []
    begin = 0
    for end in offsets:
        result.append({"size": [int(h), int(w)], "counts": values[begin:end]})
        begin = end
    return result
