"""One reader for segmentation data sets, shared by training and evaluation.

:class:`SegmentationDataset` recognises three layouts:

(a) a COCO folder: ``root/annotations.json`` and ``root/images/`` (the folders of the shared data);
(b) an SA-1B folder: images and same-stem SA-1B JSON files side by side (``sa_1.jpg``, ``sa_1.json``);
(c) a COCO JSON file, with its images in ``images_dir``, else in an ``images/`` folder next to the
    file, else next to the file itself;
(d) SA-1B tar shards: a ``sa_*.tar`` file, or a folder of them (as ``segany auto --shard-size``
    writes and SA-1B is published: ``<stem>.jpg`` and ``<stem>.json`` side by side in each tar);
    members are indexed once and read on demand, never extracted;
(e) a ``segany auto`` output folder (``run.json`` and SA-1B JSON files): the images are found
    under the run's input folders, by each file's ``file_name``.

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

import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from segany.io import FormatError
from segany.io.coco import load_coco
from segany.io.files import read_json
from segany.io.image import read_image
from segany.io.rle import decode_rle, to_coco_rle
from segany.io.sa1b import SA1BFile, read_sa1b, sa1b_from_json

__all__ = ["IMAGE_SUFFIXES", "Instance", "Sample", "SegmentationDataset"]

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
    reader: Callable[[], bytes] | None = None  # the image's bytes when it is not a file (a tar member)

    def load_image(self) -> np.ndarray:
        """Read the image as (H, W, 3) uint8 RGB (greyscale, RGBA, 16-bit converted).

        Raises:
            FormatError: the file's size differs from the annotated ``height``/``width``.
            ImageError: the file is missing or unreadable.
        """
        read = read_image if self.reader is None else self._read_member
        image = read(self.path, exif_transpose=False)
        if image.shape[:2] != (self.height, self.width) and image.shape[:2] == (self.width, self.height):
            # Annotations made on the EXIF-rotated view of a photo.
            image = read(self.path, exif_transpose=True)
        if image.shape[:2] != (self.height, self.width):
            raise FormatError(
                f"image {self.file_name} (id {self.image_id}) is {image.shape[1]}x{image.shape[0]} pixels "
                f"but its annotations say {self.width}x{self.height} (width x height)"
            )
        return image

    def _read_member(self, where: Path, exif_transpose: bool) -> np.ndarray:
        from PIL import Image, ImageOps

        from segany.errors import ImageError
        from segany.io.image import to_rgb_uint8

        assert self.reader is not None
        try:
            with Image.open(io.BytesIO(self.reader())) as im:
                im.load()
                shown: Image.Image = ImageOps.exif_transpose(im) if exif_transpose else im
                return to_rgb_uint8(np.asarray(shown if shown.mode in ("RGB", "L") else shown.convert("RGB")))
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{where}: cannot read image ({exc})") from None

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


class _TarShard:
    """A tar's file members by name, with their data offsets (headers read once); members are read by
    seeking, so a shard is never extracted nor held in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[str, tuple[int, int]] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if member.isfile():
                        self.members[member.name] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError) as exc:
            raise FormatError(f"{path}: not a readable (uncompressed) tar shard ({exc})") from None

    def read(self, name: str) -> bytes:
        offset, size = self.members[name]
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)


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
        self._tar: list[tuple[_TarShard, str, str]] = []  # SA-1B shards: (shard, image member, JSON member)
        if self.root.is_file() and self.root.suffix == ".tar":
            self.image_dir = self.root.parent
            self.layout = "sa1b"
            self._load_tars([self.root], self.root.parent / "splits.json")
        elif self.root.is_file():
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
        elif self.root.is_dir() and any(self.root.glob("sa_*.tar")):
            self.image_dir = self.root
            self.layout = "sa1b"
            self._load_tars(sorted(self.root.glob("sa_*.tar")), self.root / "splits.json")
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
            self._tar = self._tar[:limit]

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

    def _load_tars(self, shards: list[Path], splits_file: Path) -> None:
        stems = _split_stems(splits_file, self.split) if self.split is not None else None
        for path in shards:
            shard = _TarShard(path)
            images = {n.rsplit(".", 1)[0]: n for n in shard.members if Path(n).suffix.lower() in IMAGE_SUFFIXES}
            for name in sorted(n for n in shard.members if n.endswith(".json")):
                stem = name[: -len(".json")]
                if stem not in images:
                    raise FormatError(f"{path}: SA-1B member {name} has no image with the same stem")
                if stems is None or Path(stem).name in stems:
                    self._tar.append((shard, images[stem], name))

    def _load_sa1b(self, splits_file: Path) -> None:
        if (self.root / "run.json").is_file():
            self._sa1b = self._auto_output(self.root / "run.json")
            return
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

    def _auto_output(self, run_file: Path) -> list[tuple[Path, Path]]:
        """A ``segany auto`` output folder: each ``<name>.json``'s image is ``<input>/<name>.<ext>``
        under one of the run's input folders (or beside one of its input files)."""
        run = read_json(run_file, "run manifest")
        inputs = [Path(p) for p in run.get("inputs", [])] if isinstance(run, dict) else []
        roots = [p if p.is_dir() else p.parent for p in inputs]
        skip = {"run.json", "report.json", "coco_instances.json", "splits.json"}
        pairs = []
        for json_path in sorted(self.root.rglob("*.json")):
            if json_path.name in skip or json_path.name.endswith(".done.json"):
                continue
            name = json_path.relative_to(self.root).with_suffix("")
            found = [
                c for r in roots for c in sorted(r.glob(f"{name.as_posix()}.*")) if c.suffix.lower() in IMAGE_SUFFIXES
            ]
            if not found:
                raise FormatError(
                    f"{json_path}: its image {name}.* is not in the run's inputs ({', '.join(map(str, inputs))})"
                )
            pairs.append((found[0], json_path))
        if not pairs:
            raise FormatError(f"{self.root}: a segany auto folder without loose SA-1B files")
        return pairs

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
        return len(self._coco) if self.layout == "coco" else len(self._sa1b) + len(self._tar)

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
        reader = None
        if self._tar:
            shard, image_member, json_member = self._tar[index]
            where = f"{shard.path}:{json_member}"
            try:
                data = json.loads(shard.read(json_member))
            except ValueError as exc:
                raise FormatError(f"{where}: invalid JSON ({exc})") from None
            parsed: SA1BFile = sa1b_from_json(data, where)
            image_path = Path(f"{shard.path}:{image_member}")
            reader = partial(shard.read, image_member)
        else:
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
            reader=reader,
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
