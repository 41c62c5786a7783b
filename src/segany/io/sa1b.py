"""SA-1B per-image annotation files.

The SA-1B release stores one JSON file per image, next to the image and with the same stem::

    {"image": {"image_id": int, "width": int, "height": int, "file_name": str},
     "annotations": [{"id": int, "segmentation": COCO RLE, "bbox": [x, y, w, h], "area": int,
                      "predicted_iou": float, "stability_score": float,
                      "crop_box": [x, y, w, h], "point_coords": [[x, y]]}, ...]}

:func:`write_sa1b` turns the automatic mask generator's records into such a file (atomically) and
:func:`read_sa1b` reads and validates one, raising :class:`~segany.io.FormatError` with the file
name and the offending field.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segany.io import FormatError
from segany.io.files import (
    atomic_write_json,
    json_float,
    json_floats,
    json_int,
    read_json,
)
from segany.io.rle import decode_rle, encode_mask, rle_area, rle_to_bbox, to_coco_rle

__all__ = [
    "SA1BAnnotation",
    "SA1BFile",
    "SA1BImage",
    "read_sa1b",
    "sa1b_annotation",
    "sa1b_from_json",
    "sa1b_image",
    "write_sa1b",
]


@dataclass(frozen=True)
class SA1BImage:
    """The ``image`` block of an SA-1B file."""

    image_id: int
    width: int
    height: int
    file_name: str


@dataclass
class SA1BAnnotation:
    """One mask of an SA-1B file. ``segmentation`` is a COCO RLE with str counts."""

    id: int
    segmentation: dict[str, Any]
    bbox: list[float]
    area: int
    predicted_iou: float
    stability_score: float
    crop_box: list[float]
    point_coords: list[list[float]] = field(default_factory=list)

    def mask(self) -> np.ndarray:
        """Decode the mask: bool (H, W)."""
        return decode_rle(self.segmentation)


@dataclass
class SA1BFile:
    """A parsed SA-1B file; ``path`` is where it was read from (None when built in memory)."""

    image: SA1BImage
    annotations: list[SA1BAnnotation]
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the file (plain dicts and lists)."""
        return {"image": asdict(self.image), "annotations": [asdict(a) for a in self.annotations]}


def sa1b_image(info: SA1BImage | Mapping[str, Any], where: str) -> SA1BImage:
    """Validate an ``image`` block (``image_id`` or COCO's ``id``, width, height, file_name)."""
    if isinstance(info, SA1BImage):
        return info
    if not isinstance(info, Mapping):
        raise FormatError(f"{where}: 'image' must be an object, got {type(info).__name__}")
    key = "image_id" if "image_id" in info else "id"
    for name in (key, "width", "height", "file_name"):
        if name not in info:
            raise FormatError(f"{where}: 'image' has no '{name}'")
    file_name = info["file_name"]
    if not isinstance(file_name, str) or not file_name:
        raise FormatError(f"{where}: image 'file_name' must be a non-empty string, got {file_name!r}")
    return SA1BImage(
        image_id=json_int(info[key], where, f"image.{key}"),
        width=json_int(info["width"], where, "image.width", minimum=1),
        height=json_int(info["height"], where, "image.height", minimum=1),
        file_name=file_name,
    )


def _segmentation_to_rle(seg: Any, image: SA1BImage, where: str) -> dict[str, Any]:
    """Binary mask, uncompressed RLE or COCO RLE -> COCO RLE of the image's size."""
    if hasattr(seg, "shape") and not isinstance(seg, Mapping):
        if tuple(seg.shape) != (image.height, image.width):
            raise FormatError(
                f"{where}: mask shape {tuple(seg.shape)} does not match the image size ({image.height}, {image.width})"
            )
        return encode_mask(seg)
    try:
        return to_coco_rle(seg, image.height, image.width)
    except FormatError as exc:
        raise FormatError(f"{where}: segmentation: {exc}") from exc


def _point_coords(value: Any, where: str) -> list[list[float]]:
    """Validate ``point_coords``: a list of [x, y] pairs (numpy arrays accepted)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise FormatError(f"{where}: 'point_coords' must be a list of [x, y] pairs, got {value!r}")
    return [json_floats(p, where, "point_coords", 2) for p in value]


def sa1b_annotation(record: Mapping[str, Any], image: SA1BImage, default_id: int, where: str) -> SA1BAnnotation:
    """Build a validated annotation from a generator record or an SA-1B JSON annotation.

    ``segmentation`` may be a binary mask, an uncompressed RLE or a COCO RLE. ``area`` is always
    recomputed from the mask; ``bbox`` is kept when given (the generator uses SAM's box convention)
    and computed with :func:`~segany.io.rle.rle_to_bbox` otherwise.
    """
    if not isinstance(record, Mapping):
        raise FormatError(f"{where}: must be an object, got {type(record).__name__}")
    for name in ("segmentation", "predicted_iou", "stability_score", "crop_box", "point_coords"):
        if name not in record:
            raise FormatError(f"{where}: missing '{name}'")

    def listed(value: Any) -> Any:
        return value.tolist() if hasattr(value, "tolist") else value

    rle = _segmentation_to_rle(record["segmentation"], image, where)
    bbox = record.get("bbox")
    return SA1BAnnotation(
        id=json_int(listed(record.get("id", default_id)), where, "id"),
        segmentation=rle,
        bbox=json_floats(listed(bbox), where, "bbox", 4) if bbox is not None else rle_to_bbox(rle),
        area=rle_area(rle),
        predicted_iou=json_float(listed(record["predicted_iou"]), where, "predicted_iou"),
        stability_score=json_float(listed(record["stability_score"]), where, "stability_score"),
        crop_box=json_floats(listed(record["crop_box"]), where, "crop_box", 4),
        point_coords=_point_coords(record["point_coords"], where),
    )


def write_sa1b(
    path: str | os.PathLike[str],
    image_info: SA1BImage | Mapping[str, Any],
    records: Iterable[Mapping[str, Any]],
    first_id: int = 1,
) -> Path:
    """Write the automatic generator's records for one image as an SA-1B JSON file, atomically.

    Args:
        path: output file (conventionally ``<image stem>.json`` next to the image).
        image_info: ``{"image_id" (or "id"), "width", "height", "file_name"}`` or an SA1BImage.
        records: dicts with ``segmentation`` (bool (H, W) array/tensor, uncompressed RLE or COCO
            RLE), ``predicted_iou``, ``stability_score``, ``crop_box``, ``point_coords`` and
            optionally ``bbox``, ``area`` (recomputed) and ``id`` (default: ``first_id`` + index).

    Returns:
        The path written.
    """
    where = str(path)
    image = sa1b_image(image_info, where)
    annotations = [sa1b_annotation(rec, image, first_id + i, f"{where}: record #{i}") for i, rec in enumerate(records)]
    return atomic_write_json(path, SA1BFile(image, annotations).to_json())


def read_sa1b(path: str | os.PathLike[str]) -> SA1BFile:
    """Read and validate one SA-1B JSON file.

    Raises:
        FormatError: missing file, invalid JSON, a missing or mistyped field, or a mask whose size
            differs from the image's; the message names the file, the annotation and the field.
    """
    p = Path(path)
    return sa1b_from_json(read_json(p, "SA-1B annotation file"), str(p), p)


def sa1b_from_json(data: Any, where: str, path: Path | None = None) -> SA1BFile:
    """Validate the parsed JSON of one SA-1B file (e.g. a member of a tar shard); ``where`` names it
    in error messages. Raises :class:`~segany.io.FormatError` as :func:`read_sa1b` does."""
    if not isinstance(data, dict) or "image" not in data or "annotations" not in data:
        raise FormatError(f"{where}: not an SA-1B file (expected an object with 'image' and 'annotations')")
    image = sa1b_image(data["image"], where)
    raw = data["annotations"]
    if not isinstance(raw, list):
        raise FormatError(f"{where}: 'annotations' must be a list")
    annotations = []
    for i, ann in enumerate(raw):
        if not isinstance(ann, Mapping):
            raise FormatError(f"{where}: annotation #{i} must be an object, got {type(ann).__name__}")
        label = f"{where}: annotation #{i} (id {ann.get('id', '?')})"
        for name in ("id", "bbox"):
            if name not in ann:
                raise FormatError(f"{label}: missing '{name}'")
        seg = ann.get("segmentation")
        if not (isinstance(seg, Mapping) and isinstance(seg.get("counts"), str)):
            raise FormatError(f"{label}: 'segmentation' must be a COCO RLE with string counts")
        annotations.append(sa1b_annotation(ann, image, 0, label))
    return SA1BFile(image=image, annotations=annotations, path=path)
