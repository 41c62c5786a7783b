"""One reader for segmentation data sets, shared by training and evaluation.

:class:`SegmentationDataset` recognises three layouts:

(a) a COCO folder: ``root/annotations.json`` and ``root/images/`` (the folders of the shared data);
(b) an SA-1B folder: images and same-stem SA-1B JSON files side by side (``sa_1.jpg``, ``sa_1.json``);
(c) a COCO JSON file, with its images in ``images_dir``, else in an ``images/`` folder next to the
    file, else next to the file itself.

Items are :class:`Sample` objects holding the image's metadata and its :class:`Instance` list; the
image and the masks are read only when asked for (``sample.load_image()``, ``instance.mask()``), so
even BSDS500's 56k masks cost little memory. An optional ``splits.json`` next to the annotations
(``{"train": [stems], "val": [...], "test": [...]}``) selects a split.

Pixels to ignore in scoring: the ``iscrowd`` instances, plus an optional per-image ignore mask (any
non-zero pixel), e.g. the boundary band of the GrabCut data set: a PNG named by the image record's
``"ignore_mask"`` key (relative to the images folder), or else ``ignore/<image stem>.png`` beside
``images/`` (COCO folders).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segany.io import FormatError
from segany.io.coco import load_coco
from segany.io.files import read_json
from segany.io.image import read_image
from segany.io.rle import decode_rle, to_coco_rle
from segany.io.sa1b import read_sa1b

__all__ = ["Instance", "Sample", "SegmentationDataset", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")

# Keys that Instance/Sample hold as fields; anything else goes into ``attributes``.
_ANNOTATION_FIELDS = {"id", "image_id", "bbox", "area", "iscrowd", "category_id", "segmentation"}
_IMAGE_FIELDS = {"id", "image_id", "file_name", "width", "height"}


@dataclass
class Instance:
    """One annotated object. ``rle`` is a COCO RLE (str counts); ``bbox`` is xywh in pixels."""

    id: int
    bbox: list[float]
    area: float
    iscrowd: int
    category_id: int
    rle: dict[str, Any]
    attributes: dict[str, Any] = field(default_factory=dict)  # e.g. BSDS500 "annotator"
    source: str = ""  # where the annotation comes from (file, image), for error messages

    def mask(self) -> np.ndarray:
        """Decode the mask (not cached, to keep memory flat): bool (H, W).

        Raises:
            FormatError: the RLE is invalid; the message names the file, the image and the annotation id.
        """
        try:
            return decode_rle(self.rle)
        except FormatError as exc:
            if not self.source:
                raise
            raise FormatError(f"{self.source}: annotation id {self.id}: {exc}") from exc


@dataclass
class Sample:
    """One image of a data set and its annotations."""

    image_id: int
    file_name: str
    path: Path
    height: int
    width: int
    annotations: list[Instance]
    attributes: dict[str, Any] = field(default_factory=dict)  # other image keys, e.g. "split"
    ignore_path: Path | None = None  # per-image ignore mask (PNG, non-zero = ignore), if any

    def load_image(self) -> np.ndarray:
        """Read the image as (H, W, 3) uint8 RGB (greyscale, RGBA, 16-bit converted).

        Raises:
            FormatError: the file's size differs from the annotated ``height``/``width``.
            ImageError: the file is missing or unreadable.
        """
        image = read_image(self.path, exif_transpose=False)
        if image.shape[:2] != (self.height, self.width) and image.shape[:2] == (self.width, self.height):
            # Annotations made on the EXIF-rotated view of a photo.
            image = read_image(self.path, exif_transpose=True)
        if image.shape[:2] != (self.height, self.width):
            raise FormatError(
                f"image {self.file_name} (id {self.image_id}) is {image.shape[1]}x{image.shape[0]} pixels "
                f"but its annotations say {self.width}x{self.height} (width x height)"
            )
        return image

    def masks(self, include_crowd: bool = False) -> np.ndarray:
        """Decode the (non-crowd, unless asked) instance masks: bool (N, H, W)."""
        chosen = [inst for inst in self.annotations if include_crowd or not inst.iscrowd]
        if not chosen:
            return np.zeros((0, self.height, self.width), dtype=bool)
        return np.stack([inst.mask() for inst in chosen])

    def ignore_mask(self) -> np.ndarray | None:
        """Pixels to ignore: the union of the ``iscrowd`` instances and the per-image ignore mask,
        bool (H, W), or None if there are neither.

        Raises:
            FormatError: the ignore mask's size differs from the image's.
        """
        crowd = [inst for inst in self.annotations if inst.iscrowd]
        if not crowd and self.ignore_path is None:
            return None
        union = np.zeros((self.height, self.width), dtype=bool)
        for inst in crowd:
            union |= inst.mask()
        if self.ignore_path is not None:
            band = read_image(self.ignore_path, exif_transpose=False).max(axis=2) > 0
            if band.shape != union.shape:
                raise FormatError(
                    f"ignore mask {self.ignore_path} is {band.shape[1]}x{band.shape[0]} pixels but image "
                    f"{self.file_name} is {self.width}x{self.height}"
                )
            union |= band
        return union


def _instance(ann: Mapping[str, Any], height: int, width: int, source: str = "") -> Instance:
    """Instance from a validated COCO (or SA-1B) annotation dict."""
    try:
        rle = to_coco_rle(ann["segmentation"], height, width)
    except FormatError as exc:
        raise FormatError(f"{source}: annotation id {ann['id']}: {exc}" if source else str(exc)) from exc
    return Instance(
        id=int(ann["id"]),
        bbox=[float(v) for v in ann["bbox"]],
        area=float(ann["area"]),
        iscrowd=int(ann.get("iscrowd", 0)),
        category_id=int(ann.get("category_id", 1)),
        rle=rle,
        attributes={k: v for k, v in ann.items() if k not in _ANNOTATION_FIELDS},
        source=source,
    )


def _split_names(split: str | Sequence[str]) -> list[str]:
    """``"train+val"`` or ``["train", "val"]`` -> ``["train", "val"]``."""
    names = split.split("+") if isinstance(split, str) else list(split)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError(f"empty split {split!r}")
    return names


def _split_stems(splits_file: Path, split: str | Sequence[str]) -> set[str]:
    """File stems in the chosen split(s) of a ``splits.json``."""
    if not splits_file.is_file():
        raise FormatError(f"split {split!r} asked for, but there is no {splits_file}")
    table = read_json(splits_file, "splits file")
    if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
        raise FormatError(f"{splits_file}: expected {{split name: [file stems]}}")
    stems: set[str] = set()
    for name in _split_names(split):
        if name not in table:
            raise FormatError(f"{splits_file}: no split {name!r} (it has {', '.join(sorted(table))})")
        stems.update(str(s) for s in table[name])
    return stems


class SegmentationDataset:
    """Images and instance masks from a COCO folder, an SA-1B folder or a COCO JSON file.

    Args:
        root: the folder or the COCO JSON file (see the module docstring for the layouts).
        split: ``None`` for every image, else a split name of ``splits.json`` (``"train"``),
            several (``"train+val"`` or a list).
        limit: keep only the first ``limit`` images (after the split).
        images_dir: where the images of a COCO JSON file (layout c) are.

    Raises:
        FormatError: unknown layout, missing images folder or image files, invalid annotations,
            unknown split.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | Sequence[str] | None = None,
        limit: int | None = None,
        images_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        # COCO layouts: (image dict, its annotation dicts); SA-1B: (image path, JSON path).
        self._coco: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        self._sa1b: list[tuple[Path, Path]] = []
        if self.root.is_file():
            folder = self.root.parent
            given = Path(images_dir) if images_dir is not None else None
            self.image_dir = given or (folder / "images" if (folder / "images").is_dir() else folder)
            self.layout = "coco"
            self._annotations_file = self.root
            self._load_coco(self.root, folder / "splits.json")
        elif self.root.is_dir() and (self.root / "annotations.json").is_file():
            self.image_dir = Path(images_dir) if images_dir is not None else self.root / "images"
            self.layout = "coco"
            self._annotations_file = self.root / "annotations.json"
            self._load_coco(self.root / "annotations.json", self.root / "splits.json")
        elif self.root.is_dir():
            self.image_dir = self.root
            self.layout = "sa1b"
            self._load_sa1b(self.root / "splits.json")
        else:
            raise FormatError(f"data set not found: {self.root}")
        self._ignore_dir = self.image_dir.parent / "ignore"
        if limit is not None:
            if limit < 0:
                raise ValueError(f"limit must be >= 0, got {limit}")
            self._coco = self._coco[:limit]
            self._sa1b = self._sa1b[:limit]

    # --- construction ---------------------------------------------------------------------------

    def _load_coco(self, annotations: Path, splits_file: Path) -> None:
        if not self.image_dir.is_dir():
            raise FormatError(f"{annotations}: images folder {self.image_dir} is missing")
        stems = _split_stems(splits_file, self.split) if self.split is not None else None
        coco = load_coco(annotations)
        groups = coco.annotations_by_image()
        missing: list[str] = []
        for img in coco.images:
            if stems is not None and Path(img["file_name"]).stem not in stems:
                continue
            if not (self.image_dir / img["file_name"]).is_file():
                missing.append(img["file_name"])
            self._coco.append((img, groups[img["id"]]))
        if missing:
            raise FormatError(
                f"{annotations}: {len(missing)} image file(s) listed but not found in {self.image_dir}, "
                f"e.g. {missing[0]}"
            )

    def _load_sa1b(self, splits_file: Path) -> None:
        jsons = {p.stem: p for p in self.root.glob("*.json") if p.name != "splits.json"}
        images = {p.stem: p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
        if not jsons:
            raise FormatError(
                f"{self.root}: not a data set folder (no annotations.json, and no SA-1B image/JSON pairs)"
            )
        orphans = sorted(set(jsons) - set(images))
        if orphans:
            raise FormatError(f"{self.root}: SA-1B file {jsons[orphans[0]].name} has no image with the same stem")
        stems = _split_stems(splits_file, self.split) if self.split is not None else None
        self._sa1b = [(images[s], jsons[s]) for s in sorted(jsons) if stems is None or s in stems]

    # --- access -----------------------------------------------------------------------------------

    def _ignore_path(self, img: Mapping[str, Any]) -> Path | None:
        """The image's ignore mask file: its record's ``ignore_mask`` or ``ignore/<stem>.png``."""
        named = img.get("ignore_mask")
        if named:
            path = self.image_dir / str(named)
            if not path.is_file():
                raise FormatError(f"image {img['file_name']}: ignore mask {path} not found")
            return path
        default = self._ignore_dir / (Path(str(img["file_name"])).stem + ".png")
        return default if default.is_file() else None

    def __len__(self) -> int:
        return len(self._coco) if self.layout == "coco" else len(self._sa1b)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        if self.layout == "coco":
            img, anns = self._coco[index]
            h, w = img["height"], img["width"]
            return Sample(
                image_id=img["id"],
                file_name=img["file_name"],
                path=self.image_dir / img["file_name"],
                height=h,
                width=w,
                annotations=[_instance(a, h, w, f"{self._annotations_file} ({img['file_name']})") for a in anns],
                attributes={k: v for k, v in img.items() if k not in _IMAGE_FIELDS},
                ignore_path=self._ignore_path(img),
            )
        image_path, json_path = self._sa1b[index]
        parsed = read_sa1b(json_path)
        info = parsed.image
        return Sample(
            image_id=info.image_id,
            file_name=image_path.name,
            path=image_path,
            height=info.height,
            width=info.width,
            annotations=[
                Instance(
                    id=a.id,
                    bbox=a.bbox,
                    area=float(a.area),
                    iscrowd=0,
                    category_id=1,
                    rle=a.segmentation,
                    attributes={
                        "predicted_iou": a.predicted_iou,
                        "stability_score": a.stability_score,
                        "point_coords": a.point_coords,
                        "crop_box": a.crop_box,
                    },
                )
                for a in parsed.annotations
            ],
        )

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def num_instances(self) -> int:
        """Number of annotated objects (crowd regions included); reads every SA-1B file."""
        if self.layout == "coco":
            return sum(len(anns) for _, anns in self._coco)
        return sum(len(self[i].annotations) for i in range(len(self)))

    def iter_instances(
        self, limit: int | None = None, include_crowd: bool = False
    ) -> Iterator[tuple[Sample, Instance]]:
        """Yield ``(sample, instance)`` for every object, in order, at most ``limit`` of them.

        Crowd regions are skipped unless ``include_crowd``: per-object protocols do not prompt them.
        """
        if limit is not None and limit <= 0:
            return
        count = 0
        for sample in self:
            for inst in sample.annotations:
                if inst.iscrowd and not include_crowd:
                    continue
                yield sample, inst
                count += 1
                if limit is not None and count >= limit:
                    return

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({str(self.root)!r}, layout={self.layout!r}, split={self.split!r}, images={len(self)})"
        )
