"""Dataset statistics of the paper's section 5 (figures 5-6), streamed over COCO and SA-1B data.

Per data set: masks per image, relative mask size (sqrt(mask area / image area)), concavity
(1 - mask area / convex hull area), where mask centres lie in the image, image sizes, and how images
and masks spread over an image attribute. Everything is accumulated in fixed histograms and counters,
so memory is bounded by one image's masks whatever the data set's size.

Readers (:func:`iter_images`) take a COCO folder (``annotations.json`` + ``images/``) or COCO JSON
file, a folder of SA-1B per-image JSON files (e.g. a ``segany auto`` output), SA-1B tar shards
(``sa_*.tar``, read as a stream), or a folder holding such shards. A data set splits into pieces
(:func:`units`) that one process reads in order, or Ray tasks in parallel (:mod:`segany.engine.stats_ray`).
"""

from __future__ import annotations

import json
import math
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segany.errors import SeganyError
from segany.io import FormatError

__all__ = ["DERIVED_ATTRIBUTES", "DatasetStats", "ImageMasks", "compute_stats", "iter_images"]

SIZE_BINS = np.linspace(0.0, 1.0, 41)  # relative mask size, 40 bins
CONCAVITY_BINS = np.linspace(0.0, 1.0, 21)
CENTRE_GRID = 32  # mask centres on a 32 x 32 grid of the normalised image
MASK_COUNT_EDGES = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500]  # masks per image: [a, b) bins, last open
MEGAPIXEL_EDGES = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
_SKIP_JSON = {"run.json", "report.json", "coco_instances.json", "splits.json", "annotations.json"}
DERIVED_ATTRIBUTES = ("dataset", "orientation", "size_class", "format")
MISSING = "(none)"


@dataclass
class ImageMasks:
    """One image's size, attributes and masks (COCO RLEs, decoded one at a time)."""

    width: int
    height: int
    attributes: dict[str, Any]
    rles: list[dict[str, Any]]


def _size_class(width: int, height: int) -> str:
    side = max(width, height)
    for limit, name in ((512, "<512 px"), (1024, "512-1023 px"), (2048, "1024-2047 px")):
        if side < limit:
            return name
    return ">=2048 px"


def _derived(width: int, height: int, file_name: str) -> dict[str, Any]:
    orientation = "landscape" if width > height else "portrait" if height > width else "square"
    suffix = Path(file_name).suffix.lower().lstrip(".") or MISSING
    return {"orientation": orientation, "size_class": _size_class(width, height), "format": suffix}


def _standard(image: dict[str, Any], where: str) -> tuple[int, int, str]:
    try:
        return int(image["width"]), int(image["height"]), str(image.get("file_name", ""))
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"{where}: image entry without an integer width and height") from None


def _from_sa1b(data: Any, where: str) -> ImageMasks:
    if not isinstance(data, dict) or not isinstance(data.get("image"), dict) or not isinstance(
        data.get("annotations"), list
    ):
        raise FormatError(f"{where}: not an SA-1B file (expected 'image' and 'annotations')")
    image = data["image"]
    width, height, file_name = _standard(image, where)
    attributes = {k: v for k, v in image.items() if k not in ("image_id", "id", "width", "height", "file_name")}
    rles = [a["segmentation"] for a in data["annotations"] if isinstance(a, dict) and "segmentation" in a]
    return ImageMasks(width, height, {**_derived(width, height, file_name), **attributes}, rles)


def _iter_tar(path: Path) -> Iterator[ImageMasks]:
    try:
        with tarfile.open(path, mode="r|*") as tar:  # a stream: one member at a time
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield _from_sa1b(json.loads(handle.read()), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise FormatError(f"{path}: cannot read tar shard ({exc})") from None


def _iter_coco(annotations: Path) -> Iterator[ImageMasks]:
    from segany.io.coco import load_coco
    from segany.io.rle import to_coco_rle

    coco = load_coco(annotations)
    groups = coco.annotations_by_image()
    for image in coco.images:
        width, height, file_name = _standard(image, str(annotations))
        attributes = {k: v for k, v in image.items() if k not in ("id", "width", "height", "file_name")}
        rles = [to_coco_rle(a["segmentation"], height, width) for a in groups[image["id"]] if not a.get("iscrowd")]
        yield ImageMasks(width, height, {**_derived(width, height, file_name), **attributes}, rles)


Unit = tuple[str, list[str]]  # ("coco" | "tar" | "json", paths): a piece of a data set read on its own
_FILES_PER_UNIT = 256


def units(source: str | Path) -> list[Unit]:
    """Split one data set into pieces that can be read independently (in order: one process reads
    them one after the other, Ray reads them in parallel): a COCO file, each tar shard, and the loose
    SA-1B files by groups of 256."""
    path = Path(source)
    if path.is_file() and path.suffix == ".tar":
        return [("tar", [str(path)])]
    if path.is_file():
        return [("coco", [str(path)])]
    if (path / "annotations.json").is_file():
        return [("coco", [str(path / "annotations.json")])]
    if not path.is_dir():
        raise FormatError(f"{path}: no such file or folder")
    shards = sorted(path.glob("sa_*.tar"))
    files = sorted(p for p in path.rglob("*.json") if p.name not in _SKIP_JSON and not p.name.endswith(".done.json"))
    if not shards and not files:
        raise FormatError(f"{path}: no annotations.json, SA-1B JSON files or sa_*.tar shards")
    found: list[Unit] = [("tar", [str(s)]) for s in shards]
    return found + [
        ("json", [str(f) for f in files[i : i + _FILES_PER_UNIT]]) for i in range(0, len(files), _FILES_PER_UNIT)
    ]


def iter_unit(unit: Unit) -> Iterator[ImageMasks]:
    kind, paths = unit
    for name in paths:
        path = Path(name)
        if kind == "tar":
            yield from _iter_tar(path)
        elif kind == "coco":
            yield from _iter_coco(path)
        else:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise FormatError(f"{path}: unreadable JSON ({exc})") from None
            yield _from_sa1b(data, str(path))


def iter_images(source: str | Path) -> Iterator[ImageMasks]:
    """Stream the images of one data set (see the module docstring for the layouts)."""
    for unit in units(source):
        yield from iter_unit(unit)


@dataclass
class DatasetStats:
    """Histograms and counters of one data set; :meth:`add` takes one image at a time."""

    name: str
    images: int = 0
    masks: int = 0
    masks_per_image: Counter[int] = field(default_factory=Counter)
    relative_size: np.ndarray = field(default_factory=lambda: np.zeros(len(SIZE_BINS) - 1, np.int64))
    concavity: np.ndarray = field(default_factory=lambda: np.zeros(len(CONCAVITY_BINS) - 1, np.int64))
    centres: np.ndarray = field(default_factory=lambda: np.zeros((CENTRE_GRID, CENTRE_GRID), np.int64))
    megapixels: np.ndarray = field(default_factory=lambda: np.zeros(len(MEGAPIXEL_EDGES), np.int64))
    sums: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("relative_size", "concavity", "width", "height"), 0.0)
    )
    by: dict[str, Counter[str]] = field(default_factory=dict)  # attribute value -> Counter(images=, masks=)
    keys: set[str] = field(default_factory=set)

    def add(self, item: ImageMasks, by: str | None = None) -> None:
        from segany.io.rle import decode_rle

        self.images += 1
        self.keys.update(item.attributes)
        area_image = float(item.width * item.height)
        kept = 0
        for rle in item.rles:
            mask = decode_rle(rle)
            measured = measure_mask(mask)
            if measured is None:
                continue  # an empty mask has no size, centre or shape
            area, cy, cx, concavity = measured
            kept += 1
            size = math.sqrt(area / area_image)
            self.relative_size[min(int(size * (len(SIZE_BINS) - 1)), len(SIZE_BINS) - 2)] += 1
            self.concavity[min(int(concavity * (len(CONCAVITY_BINS) - 1)), len(CONCAVITY_BINS) - 2)] += 1
            gy = min(int(cy / item.height * CENTRE_GRID), CENTRE_GRID - 1)
            gx = min(int(cx / item.width * CENTRE_GRID), CENTRE_GRID - 1)
            self.centres[gy, gx] += 1
            self.sums["relative_size"] += size
            self.sums["concavity"] += concavity
        self.masks += kept
        self.masks_per_image[kept] += 1
        mp = area_image / 1e6
        self.megapixels[int(np.searchsorted(MEGAPIXEL_EDGES, mp, side="right")) - 1] += 1
        self.sums["width"] += item.width
        self.sums["height"] += item.height
        if by is not None:
            value = item.attributes.get(by, MISSING)
            value = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            self.by.setdefault(value, Counter()).update(images=1, masks=kept)

    def merge(self, other: DatasetStats) -> None:
        """Add another part of the same data set (e.g. computed by a Ray task)."""
        self.images += other.images
        self.masks += other.masks
        self.masks_per_image.update(other.masks_per_image)
        for name in ("relative_size", "concavity", "centres", "megapixels"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, value in other.sums.items():
            self.sums[key] += value
        for value, counts in other.by.items():
            self.by.setdefault(value, Counter()).update(counts)
        self.keys |= other.keys

    def to_json(self) -> dict[str, Any]:
        median, seen = 0.0, 0
        for count in sorted(self.masks_per_image):  # the median from the counter, not a list of images
            seen += self.masks_per_image[count]
            if seen * 2 >= self.images:
                median = float(count)
                break
        per_bin = [0] * len(MASK_COUNT_EDGES)
        for n, images in self.masks_per_image.items():
            per_bin[int(np.searchsorted(MASK_COUNT_EDGES, n, side="right")) - 1] += images
        n = max(self.masks, 1)
        return {
            "images": self.images,
            "masks": self.masks,
            "masks_per_image": {
                "mean": self.masks / max(self.images, 1),
                "median": median,
                "bin_edges": MASK_COUNT_EDGES,
                "images_per_bin": per_bin,
            },
            "relative_size": {"mean": self.sums["relative_size"] / n, "bin_edges": SIZE_BINS.round(4).tolist(),
                              "masks_per_bin": self.relative_size.tolist()},
            "concavity": {"mean": self.sums["concavity"] / n, "bin_edges": CONCAVITY_BINS.round(4).tolist(),
                          "masks_per_bin": self.concavity.tolist()},
            "centres": {"grid": CENTRE_GRID, "masks_per_cell": self.centres.tolist()},
            "image_size": {"mean_width": self.sums["width"] / max(self.images, 1),
                           "mean_height": self.sums["height"] / max(self.images, 1),
                           "megapixel_edges": MEGAPIXEL_EDGES, "images_per_bin": self.megapixels.tolist()},
        }


def measure_mask(mask: np.ndarray) -> tuple[int, float, float, float] | None:
    """Area, centre (row, column, pixel centres at +0.5) and concavity of a bool ``(H, W)`` mask, or None
    when it is empty. The convex hull is rasterised like the mask (pixels), so a convex mask has
    concavity 0 and the value stays in [0, 1)."""
    import cv2

    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)
    # The hull of all pixels is the hull of the outer boundary pixels: far fewer points.
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    filled = np.zeros_like(crop)
    cv2.fillConvexPoly(filled, hull, 1)
    area = int(ys.size)
    hull_area = int(np.count_nonzero(filled | crop))
    return area, float(ys.mean()) + 0.5, float(xs.mean()) + 0.5, 1.0 - area / hull_area


def unit_stats(unit: Unit, name: str, by: str | None) -> DatasetStats:
    """Statistics of one piece of a data set (what a Ray task computes)."""
    stats = DatasetStats(name)
    for item in iter_unit(unit):
        item.attributes.setdefault("dataset", name)
        stats.add(item, by)
    return stats


def compute_stats(sources: list[str], names: list[str] | None = None, by: str | None = None,
                  limit: int | None = None, progress: bool = False, ray: str | None = None) -> list[DatasetStats]:
    """Statistics of each data set in ``sources`` (one pass each, memory bounded by one image).

    With ``ray`` ("local" or a cluster address) the pieces of every data set (see :func:`units`) are
    read by Ray tasks in parallel and their statistics merged; the figures are the same.

    Raises:
        SeganyError: an unreadable source, or ``by`` names an attribute no image has (the message
            lists those that exist).
    """
    from tqdm import tqdm

    names = names or _names(sources)
    results = []
    if ray is not None:
        from segany.engine.stats_ray import ray_stats

        try:
            results = ray_stats(sources, names, by, ray)
        except FormatError as exc:
            raise SeganyError(str(exc)) from None
    for source, name in zip(sources, names if ray is None else []):
        stats = DatasetStats(name)
        try:
            for i, item in enumerate(tqdm(iter_images(source), desc=name, unit="img", disable=not progress)):
                if limit is not None and i >= limit:
                    break
                item.attributes.setdefault("dataset", name)
                stats.add(item, by)
        except FormatError as exc:
            raise SeganyError(str(exc)) from None
        results.append(stats)
    if by is not None and not any(by in s.keys for s in results):
        existing = sorted(set().union(*(s.keys for s in results)))
        raise SeganyError(f"no image has the attribute {by!r}; the data has: {', '.join(existing)}")
    return results


def _names(sources: list[str]) -> list[str]:
    names: list[str] = []
    for source in sources:
        path = Path(source)
        base = path.stem if path.is_file() and path.name != "annotations.json" else (
            path.parent.name if path.name == "annotations.json" else path.name)
        name, k = base or "data", 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names
