"""The per-image job of the data engine's automatic stage: one image in, its outputs and one status row out.

:class:`ImageWorker` loads the model once and then processes :class:`ImageJob` s one by one. The same
class runs in the one-machine loop and inside every Ray actor (Ray only executes it), so both give the
same files. Each call is *isolated*: anything that goes wrong with one image (an undecodable file, a
decompression bomb, an image too small or too thin for the settings, a NaN score) becomes a ``failed``
row with its reason, and the next image goes on. Each call is also *idempotent*: outputs are written
atomically and an image whose outputs already exist is not computed again, so a task that Ray retries
after its worker died (at-least-once execution) costs nothing and writes nothing twice.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ImageJob", "ImageWorker", "JobSettings", "Outcome", "is_done", "output_path", "size_problem"]

# Official amg.py metadata columns, same order.
CSV_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)
WORKERS_DIR = "_workers"


@dataclass(frozen=True)
class ImageJob:
    """One input image: its id in the run (1-based position in the sorted input list), its file and
    the name (``a/b`` for ``folder/a/b.jpg``) its outputs are written under."""

    image_id: int
    path: str
    name: str


@dataclass(frozen=True)
class JobSettings:
    """What a worker needs besides the model: where and how to write, and the generator settings."""

    out: str
    format: str = "sa1b"  # sa1b | coco | png
    preset: str = "default"
    overrides: dict[str, Any] = field(default_factory=dict)
    overlay: bool = False
    threads: int | None = None  # torch threads per worker (None: leave torch's default)
    record_pid: bool = False  # write OUT/_workers/<pid> (Ray actors: diagnostics and fault tests)


@dataclass
class Outcome:
    """The status row of one image: ``ok``, ``skipped`` (its outputs already existed) or ``failed``."""

    image_id: int
    name: str
    status: str
    masks: int = 0
    reason: str = ""
    seconds: float = 0.0
    pid: int = 0
    finished: float = 0.0  # wall clock (time.time()) when the worker was done with the image

    def __post_init__(self) -> None:
        self.finished = self.finished or time.time()

    def row(self) -> dict[str, Any]:
        return asdict(self)


def output_path(out: Path, name: str, fmt: str) -> Path:
    """The file whose presence means the image is done (written last, atomically)."""
    return out / name / "metadata.csv" if fmt == "png" else out / f"{name}.json"


def is_done(out: Path, name: str, fmt: str, overlay: bool) -> bool:
    if overlay and not (out / f"{name}_overlay.png").exists():
        return False
    return output_path(out, name, fmt).exists()


def size_problem(height: int, width: int, settings: Any, long_side: int) -> str | None:
    """Why an ``height x width`` image cannot go through the generator's crops and resizing, or None.

    Every crop window must keep at least one pixel per side after the resize to ``long_side`` (a
    2000x1 strip becomes 1024x0, a 1x1 image has empty second-layer crops)."""
    from segany.ops.masks import generate_crop_boxes
    from segany.ops.transforms import preprocess_shape

    boxes, layers = generate_crop_boxes((height, width), settings.crop_n_layers, settings.crop_overlap_ratio)
    for (x0, y0, x1, y1), layer in zip(boxes, layers):
        h, w = y1 - y0, x1 - x0
        if h < 1 or w < 1 or min(preprocess_shape(h, w, long_side)) < 1:
            what = "image" if layer == 0 else f"its crop layer {layer} ({w}x{h} windows)"
            kind = "too thin" if max(height, width) > 2 * long_side * min(height, width) else "too small"
            return f"{width}x{height} pixels is {kind} for these settings: {what} would be empty after resizing"
    return None


def _write_png_folder(folder: Path, records: list[dict[str, Any]]) -> None:
    """Masks as ``<k>.png`` plus ``metadata.csv``, built in a hidden folder and renamed into place."""
    from segany.io.files import temp_path
    from segany.io.overlay import png_bytes

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(folder)  # names this process, so a later run can tell a stale one (sweep_stale_temps)
    tmp.mkdir()
    try:
        lines = [CSV_HEADER]
        for k, r in enumerate(records):
            (tmp / f"{k}.png").write_bytes(png_bytes(r["segmentation"]))
            values = [k, r["area"], *r["bbox"], *r["point_coords"][0]]
            values += [r["predicted_iou"], r["stability_score"], *r["crop_box"]]
            lines.append(",".join(str(v) for v in values))
        (tmp / "metadata.csv").write_text("\n".join(lines) + "\n")
        old = None
        if folder.exists():  # --overwrite: a folder cannot replace a non-empty one in one step
            old = folder.parent / f".{folder.name}.{secrets.token_hex(6)}.old"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _reason(exc: BaseException) -> str:
    """One line for the report: our own errors as they are, anything else with its type."""
    from segany.errors import SeganyError
    from segany.io import FormatError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (SeganyError, FormatError)):
        return text or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "out of memory on this image"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ImageWorker:
    """Loads the model once, then turns :class:`ImageJob` s into outputs and :class:`Outcome` s.

    Args:
        settings: output folder, format and generator settings.
        make_predictor: builds the model or predictor (called once, here); it must be picklable to
            run on Ray (e.g. a :func:`functools.partial` of a module-level function).
        overwrite: recompute images whose outputs exist.
    """

    def __init__(self, settings: JobSettings, make_predictor: Callable[[], Any], overwrite: bool = False) -> None:
        import torch

        from segany.inference.automatic import SamAutomaticMaskGenerator

        if settings.threads:
            torch.set_num_threads(int(settings.threads))
        self.settings = settings
        self.out = Path(settings.out)
        self.overwrite = overwrite
        need_masks = settings.format == "png" or settings.overlay
        overrides = {**settings.overrides, "output_mode": "binary_mask" if need_masks else "coco_rle"}
        self.generator = SamAutomaticMaskGenerator.from_preset(make_predictor(), settings.preset, **overrides)
        if settings.record_pid:  # once ready: a listed worker has its model loaded
            folder = self.out / WORKERS_DIR
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(os.getpid())).write_text(str(time.time()))

    def __call__(self, job: ImageJob) -> Outcome:
        """Process one image; never raises for a problem of that image (only for interrupts)."""
        start = time.perf_counter()
        fmt = self.settings.format
        if not self.overwrite and is_done(self.out, job.name, fmt, self.settings.overlay):
            return Outcome(job.image_id, job.name, "skipped", pid=os.getpid())
        try:
            masks = self._process(job)
        except Exception as exc:  # noqa: BLE001 (isolate): one image's failure is a row, not the end of the batch
            return Outcome(job.image_id, job.name, "failed", reason=_reason(exc),
                           seconds=time.perf_counter() - start, pid=os.getpid())
        return Outcome(job.image_id, job.name, "ok", masks=masks, seconds=time.perf_counter() - start, pid=os.getpid())

    def _process(self, job: ImageJob) -> int:
        import math

        import torch

        from segany.errors import ImageError
        from segany.io.files import atomic_write_bytes
        from segany.io.image import read_image
        from segany.io.overlay import overlay_masks, png_bytes
        from segany.io.sa1b import write_sa1b

        path = Path(job.path)
        image = read_image(path)
        height, width = image.shape[:2]
        long_side = int(self.generator.predictor.model.image_size)
        problem = size_problem(height, width, self.generator, long_side)
        if problem:
            raise ImageError(problem)
        with torch.inference_mode():
            records = self.generator.generate(image)
        for r in records:
            if not (math.isfinite(r["predicted_iou"]) and math.isfinite(r["stability_score"])):
                raise ImageError("the model gave a NaN or infinite mask score (broken weights or input?)")
        if self.settings.format == "png":
            _write_png_folder(self.out / job.name, records)
        else:
            info = {"image_id": job.image_id, "width": width, "height": height, "file_name": job.name + path.suffix}
            write_sa1b(output_path(self.out, job.name, self.settings.format), info, records)
        if self.settings.overlay:
            picture = overlay_masks(image, [r["segmentation"] for r in records])
            atomic_write_bytes(self.out / f"{job.name}_overlay.png", png_bytes(picture))
        return len(records)
