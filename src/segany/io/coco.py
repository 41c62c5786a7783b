"""COCO instance-segmentation JSON: export of generated masks, and a validating reader.

The export (:func:`coco_instances_from_records`) loads in :class:`pycocotools.coco.COCO` and can be
scored with ``COCOeval``: every mask is a COCO RLE, ``iscrowd`` is 0, every object is category 1
("object", SAM masks have no class) and ``score`` is the mask's ``predicted_iou``.

The reader (:func:`load_coco`) checks the structure once, up front, so that a broken file fails
with a message naming the file, the record and the field instead of failing deep inside training.
It keeps the annotations' segmentations as they are (masks are decoded only when asked for).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segany.io import FormatError
from segany.io.files import atomic_write_json, json_float, json_floats, json_int, read_json
from segany.io.rle import rle_area, rle_to_bbox, to_coco_rle
from segany.io.sa1b import SA1BImage, sa1b_annotation, sa1b_image

__all__ = ["CocoFile", "coco_instances_from_records", "write_coco", "load_coco", "OBJECT_CATEGORY"]

OBJECT_CATEGORY: dict[str, Any] = {"id": 1, "name": "object"}

ImageRecords = tuple[SA1BImage | Mapping[str, Any], Iterable[Mapping[str, Any]]]


def coco_instances_from_records(images: Iterable[ImageRecords]) -> dict[str, Any]:
    """Build a COCO instances dict from the automatic generator's output for several images.

    Args:
        images: ``(image_info, records)`` pairs; ``image_info`` has ``id`` (or ``image_id``),
            ``width``, ``height``, ``file_name``; ``records`` are generator records (see
            :func:`segany.io.sa1b.write_sa1b`).

    Returns:
        ``{"images", "annotations", "categories"}``. Annotation ids run from 1; ``bbox`` is the
        COCO box of the mask (``w = x_max - x_min + 1``), ``area`` its pixel count, ``score`` its
        ``predicted_iou``; ``stability_score``, ``point_coords`` and ``crop_box`` are kept.
    """
    out_images: list[dict[str, Any]] = []
    out_annotations: list[dict[str, Any]] = []
    seen: set[int] = set()
    for index, (info, records) in enumerate(images):
        image = sa1b_image(info, f"image #{index}")
        if image.image_id in seen:
            raise FormatError(f"image #{index} ({image.file_name}): duplicate image id {image.image_id}")
        seen.add(image.image_id)
        out_images.append(
            {"id": image.image_id, "file_name": image.file_name, "width": image.width, "height": image.height}
        )
        for j, record in enumerate(records):
            ann_id = len(out_annotations) + 1
            ann = sa1b_annotation(record, image, ann_id, f"image {image.file_name}: record #{j}")
            out_annotations.append(
                {
                    "id": ann_id,
                    "image_id": image.image_id,
                    "category_id": OBJECT_CATEGORY["id"],
                    "segmentation": ann.segmentation,
                    "area": ann.area,
                    "bbox": rle_to_bbox(ann.segmentation),
                    "iscrowd": 0,
                    "score": ann.predicted_iou,
                    "predicted_iou": ann.predicted_iou,
                    "stability_score": ann.stability_score,
                    "point_coords": ann.point_coords,
                    "crop_box": ann.crop_box,
                }
            )
    return {"images": out_images, "annotations": out_annotations, "categories": [dict(OBJECT_CATEGORY)]}


def write_coco(path: str | os.PathLike[str], coco: Mapping[str, Any]) -> Path:
    """Write a COCO dict as JSON, atomically; return the path."""
    return atomic_write_json(path, coco)


@dataclass
class CocoFile:
    """A validated COCO instances file.

    ``images`` and ``annotations`` are the file's own dicts (extra keys such as ``split`` kept), with
    ``iscrowd`` (default 0), ``category_id`` (default 1), and ``area``/``bbox`` (computed when absent)
    filled in. ``segmentation`` is left as stored: COCO RLE, uncompressed RLE or polygons.
    """

    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    def annotations_by_image(self) -> dict[int, list[dict[str, Any]]]:
        """Annotations grouped by ``image_id`` (every image present, possibly with an empty list)."""
        groups: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in self.images}
        for ann in self.annotations:
            groups[ann["image_id"]].append(ann)
        return groups


def _check_image(img: Any, where: str) -> dict[str, Any]:
    """Validate one ``images`` entry in place and return it."""
    if not isinstance(img, dict):
        raise FormatError(f"{where}: must be an object, got {type(img).__name__}")
    for name in ("id", "file_name", "width", "height"):
        if name not in img:
            raise FormatError(f"{where}: missing '{name}'")
    img["id"] = json_int(img["id"], where, "id")
    img["width"] = json_int(img["width"], where, "width", minimum=1)
    img["height"] = json_int(img["height"], where, "height", minimum=1)
    if not isinstance(img["file_name"], str) or not img["file_name"]:
        raise FormatError(f"{where}: 'file_name' must be a non-empty string, got {img['file_name']!r}")
    return img


def _check_segmentation(seg: Any, image: Mapping[str, Any], where: str) -> None:
    """Check a segmentation's shape and size without decoding it."""
    h, w = image["height"], image["width"]
    if isinstance(seg, Mapping):
        size = seg.get("size")
        if "counts" not in seg or not isinstance(size, (list, tuple)) or len(size) != 2:
            raise FormatError(f"{where}: 'segmentation' RLE needs 'size' [h, w] and 'counts'")
        if list(size) != [h, w]:
            raise FormatError(
                f"{where}: segmentation size {list(size)} does not match image {image['id']} "
                f"({image['file_name']}) of height {h} and width {w}"
            )
        if not isinstance(seg["counts"], (str, list)):
            raise FormatError(f"{where}: RLE 'counts' must be a string or a list of integers")
    elif isinstance(seg, list):
        if not seg or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
            raise FormatError(f"{where}: polygon 'segmentation' must be lists of at least 3 (x, y) points")
    else:
        raise FormatError(f"{where}: 'segmentation' must be an RLE object or polygons, got {type(seg).__name__}")


_NUMBER_TYPES = (int, float)  # exact types: bool is excluded on purpose


def _is_well_formed(ann: Any, images: Mapping[int, dict[str, Any]]) -> bool:
    """Fast check of the common case (RLE with str counts, every field present and well typed).

    BSDS500 alone has 56k annotations; this keeps loading at JSON-parsing speed, and anything it
    does not accept goes through :func:`_check_annotation` for a precise message.
    """
    try:
        seg = ann["segmentation"]
        bbox = ann["bbox"]
        image = images[ann["image_id"]]
        return (
            type(ann["id"]) is int
            and type(seg) is dict
            and type(seg.get("counts")) is str
            and seg.get("size") == [image["height"], image["width"]]
            and type(ann["area"]) in _NUMBER_TYPES
            and type(bbox) is list
            and len(bbox) == 4
            and all(type(v) in _NUMBER_TYPES and math.isfinite(v) for v in bbox)
            and bbox[2] >= 0
            and bbox[3] >= 0
            and type(ann.get("iscrowd", 0)) is int
            and ann.get("iscrowd", 0) in (0, 1)
            and type(ann.get("category_id", 1)) is int
        )
    except (KeyError, TypeError):
        return False


def _check_annotation(ann: Any, images: Mapping[int, dict[str, Any]], where: str) -> dict[str, Any]:
    """Validate one ``annotations`` entry in place (filling defaults) and return it."""
    if not isinstance(ann, dict):
        raise FormatError(f"{where}: must be an object, got {type(ann).__name__}")
    for name in ("id", "image_id", "segmentation"):
        if name not in ann:
            raise FormatError(f"{where}: missing '{name}'")
    ann["id"] = json_int(ann["id"], where, "id")
    where = f"{where} (id {ann['id']})"
    ann["image_id"] = json_int(ann["image_id"], where, "image_id")
    image = images.get(ann["image_id"])
    if image is None:
        raise FormatError(f"{where}: 'image_id' {ann['image_id']} is not in 'images'")
    _check_segmentation(ann["segmentation"], image, where)
    ann["iscrowd"] = json_int(ann.get("iscrowd", 0), where, "iscrowd")
    if ann["iscrowd"] not in (0, 1):
        raise FormatError(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']}")
    ann["category_id"] = json_int(ann.get("category_id", OBJECT_CATEGORY["id"]), where, "category_id")
    if "area" not in ann or "bbox" not in ann:  # rare; needs the RLE
        rle = to_coco_rle(ann["segmentation"], image["height"], image["width"])
        ann.setdefault("area", rle_area(rle))
        ann.setdefault("bbox", rle_to_bbox(rle))
    ann["area"] = json_float(ann["area"], where, "area")
    ann["bbox"] = json_floats(ann["bbox"], where, "bbox", 4)
    if ann["bbox"][2] < 0 or ann["bbox"][3] < 0:
        raise FormatError(f"{where}: 'bbox' [x, y, width, height] has a negative size: {ann['bbox']}")
    return ann


def load_coco(path: str | os.PathLike[str]) -> CocoFile:
    """Read and validate a COCO instances JSON file.

    Raises:
        FormatError: missing file, invalid JSON, missing keys, duplicate ids, an annotation whose
            image does not exist or whose mask size differs from its image; the message names the
            file and the record.
    """
    p = Path(path)
    data = read_json(p, "COCO annotation file")
    name = str(p)
    if not isinstance(data, dict):
        raise FormatError(f"{name}: not a COCO file (expected a JSON object, got {type(data).__name__})")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise FormatError(f"{name}: not a COCO instances file (no '{key}' list)")
    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        checked = _check_image(img, f"{name}: images[{i}]")
        if checked["id"] in images:
            raise FormatError(f"{name}: images[{i}]: duplicate image id {checked['id']}")
        images[checked["id"]] = checked
    ann_ids: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        if _is_well_formed(ann, images):
            ann.setdefault("iscrowd", 0)
            ann.setdefault("category_id", OBJECT_CATEGORY["id"])
            checked = ann
        else:
            checked = _check_annotation(ann, images, f"{name}: annotations[{i}]")
        if checked["id"] in ann_ids:
            raise FormatError(f"{name}: annotations[{i}]: duplicate annotation id {checked['id']}")
        ann_ids.add(checked["id"])
    categories = data.get("categories", [])
    if not isinstance(categories, list):
        raise FormatError(f"{name}: 'categories' must be a list")
    return CocoFile(images=data["images"], annotations=data["annotations"], categories=categories, path=p)
