"""``segany auto``: automatic masks for many images (the data engine's fully automatic stage)."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segany.cli._common import add_backend_arguments, add_model_arguments, predictor_from_args
from segany.errors import SeganyError

HELP = "generate masks for every object in images (automatic mask generation)"
EXAMPLES = """examples:
  segany auto photos/ -o masks/ --checkpoint sam_vit_b_01ec64.pth
  segany auto photos/ -o masks/ --backend onnx --onnx-precision int8   # onnxruntime, int8 encoder
  segany auto 'photos/**/*.jpg' -o masks/ --preset sa1b --format coco --overlay
  segany auto a.jpg b.png -o out/ --format png --points-per-side 16 --pred-iou-thresh 0.8

INPUT: image files, folders (searched recursively) or quoted glob patterns.
Formats: sa1b  OUTDIR/<name>.json per image (SA-1B layout, COCO RLE masks)
         coco  the same per-image files, plus OUTDIR/coco_instances.json for all finished images
         png   OUTDIR/<name>/<k>.png per mask plus OUTDIR/<name>/metadata.csv
Each image's output is written atomically: an interrupted run loses nothing it finished, and a rerun
skips finished images (--overwrite redoes them). Unreadable images are reported and skipped; the exit
status is 1 if any image failed, 2 for bad arguments."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"})
COCO_FILE = "coco_instances.json"
# Official amg.py metadata columns, same order.
CSV_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)

# (flag, generator setting, type, help)
KNOBS: list[tuple[str, str, type, str]] = [
    ("--points-per-side", "points_per_side", int, "grid points per image side"),
    ("--points-per-batch", "points_per_batch", int, "prompts decoded at once"),
    ("--pred-iou-thresh", "pred_iou_thresh", float, "keep masks with predicted IoU above this"),
    ("--stability-score-thresh", "stability_score_thresh", float, "keep masks at least this stable"),
    ("--stability-score-offset", "stability_score_offset", float, "logit offset of the stability score"),
    ("--box-nms-thresh", "box_nms_thresh", float, "box IoU that makes two masks duplicates"),
    ("--crop-n-layers", "crop_n_layers", int, "layers of zoomed-in crops (0: whole image only)"),
    ("--crop-nms-thresh", "crop_nms_thresh", float, "box IoU for duplicates across crops"),
    ("--crop-overlap-ratio", "crop_overlap_ratio", float, "overlap of neighbouring crops"),
    ("--crop-n-points-downscale-factor", "crop_n_points_downscale_factor", int, "fewer points per crop layer"),
    ("--min-mask-region-area", "min_mask_region_area", int, "fill holes / drop islands below this many pixels"),
    ("--max-mask-region-fraction", "max_mask_region_fraction", float, "drop masks covering this much of the image"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created)")
    parser.add_argument(
        "--format", choices=("sa1b", "coco", "png"), default="sa1b", help="output format (default sa1b)"
    )
    parser.add_argument("--preset", choices=("default", "sa1b"), default="default",
                        help="generator settings: the official defaults, or the paper's SA-1B ones (crops, clean-up)")
    group = parser.add_argument_group("generator settings (override the preset)")
    for flag, _, kind, text in KNOBS:
        group.add_argument(flag, type=kind, default=None, help=text)
    parser.add_argument("--overlay", action="store_true", help="also write OUTDIR/<name>_overlay.png")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose output already exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser)
    add_backend_arguments(parser)


@dataclass(frozen=True)
class _Job:
    """One input image and the name (``a/b`` for ``folder/a/b.jpg``) its outputs are written under."""

    path: Path
    name: str


def find_images(inputs: list[str]) -> list[_Job]:
    """Expand files, folders (recursively, image suffixes only) and glob patterns; fail on a missing
    input, an empty result or two inputs whose outputs would collide."""
    jobs: list[_Job] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            jobs += [_Job(p, p.relative_to(path).with_suffix("").as_posix()) for p in found]
        elif path.is_file():
            jobs.append(_Job(path, path.stem))
        elif any(c in text for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise SeganyError(f"no images match {text!r}")
            jobs += [_Job(m, m.stem) for m in files]
        else:
            raise SeganyError(f"{text}: no such file or folder")
    if not jobs:
        raise SeganyError(f"no images found in {', '.join(inputs)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    unique: dict[Path, _Job] = {}
    by_name: dict[str, Path] = {}
    for job in jobs:
        resolved = job.path.resolve()
        if resolved in unique:
            continue  # the same file named twice
        if job.name in by_name:
            raise SeganyError(f"{by_name[job.name]} and {job.path} would both write outputs named {job.name!r}")
        unique[resolved] = job
        by_name[job.name] = job.path
    return list(unique.values())


def _outputs(out: Path, job: _Job, fmt: str) -> Path:
    return out / job.name / "metadata.csv" if fmt == "png" else out / f"{job.name}.json"


def _write_png_folder(folder: Path, records: list[dict[str, Any]]) -> None:
    """Masks as ``<k>.png`` plus ``metadata.csv``, built in a hidden folder and renamed into place."""
    import secrets
    import shutil

    from segany.io.overlay import png_bytes

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{secrets.token_hex(6)}.tmp"
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


def _image_info(job: _Job, image_id: int, height: int, width: int) -> dict[str, Any]:
    # The name relative to the input folder (just the file name for files given one by one).
    return {"image_id": image_id, "width": width, "height": height, "file_name": job.name + job.path.suffix}


def _write_coco(out: Path, jobs: list[_Job]) -> int:
    """``coco_instances.json`` from the per-image files of every finished job; returns the image count."""
    from dataclasses import asdict

    from segany.io.coco import coco_instances_from_records, write_coco
    from segany.io.sa1b import read_sa1b

    pairs = []
    for image_id, job in enumerate(jobs, start=1):
        path = _outputs(out, job, "coco")
        if path.exists():
            parsed = read_sa1b(path)
            info = {**asdict(parsed.image), "image_id": image_id}
            pairs.append((info, [asdict(a) for a in parsed.annotations]))
    write_coco(out / COCO_FILE, coco_instances_from_records(pairs))
    return len(pairs)


def run(args: argparse.Namespace) -> int:
    import torch

    from segany.errors import ImageError
    from segany.inference.automatic import SamAutomaticMaskGenerator
    from segany.io import FormatError
    from segany.io.files import atomic_write_bytes
    from segany.io.image import read_image
    from segany.io.overlay import overlay_masks, png_bytes
    from segany.io.sa1b import write_sa1b

    jobs = find_images(args.inputs)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise SeganyError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    def done(job: _Job) -> bool:
        overlay_ok = not args.overlay or (out / f"{job.name}_overlay.png").exists()
        return _outputs(out, job, args.format).exists() and overlay_ok

    todo = [(i, job) for i, job in enumerate(jobs, start=1) if args.overwrite or not done(job)]
    skipped = len(jobs) - len(todo)
    if skipped:
        note = f"segany auto: skipping {skipped} image(s) already done in {out} (--overwrite redoes them)"
        print(note, file=sys.stderr)

    failed = finished = masks = 0
    if todo:
        model = predictor_from_args(args)
        overrides = {name: getattr(args, name) for _, name, _, _ in KNOBS if getattr(args, name) is not None}
        need_masks = args.format == "png" or args.overlay
        overrides["output_mode"] = "binary_mask" if need_masks else "coco_rle"
        generator = SamAutomaticMaskGenerator.from_preset(model, args.preset, **overrides)
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", disable=args.no_progress, dynamic_ncols=True)
        try:
            for image_id, job in todo:
                bar.set_postfix_str(job.name[-30:], refresh=False)
                try:
                    image = read_image(job.path)
                except ImageError as exc:
                    failed += 1
                    bar.write(f"segany auto: skipping {job.path}: {exc}", file=sys.stderr)
                    bar.update(1)
                    continue
                with torch.inference_mode():
                    records = generator.generate(image)
                height, width = image.shape[:2]
                if args.format == "png":
                    _write_png_folder(out / job.name, records)
                else:
                    write_sa1b(_outputs(out, job, args.format), _image_info(job, image_id, height, width), records)
                if args.overlay:
                    picture = overlay_masks(image, [r["segmentation"] for r in records])
                    atomic_write_bytes(out / f"{job.name}_overlay.png", png_bytes(picture))
                finished += 1
                masks += len(records)
                bar.update(1)
        finally:
            bar.close()
    if args.format == "coco":
        try:
            count = _write_coco(out, jobs)
        except FormatError as exc:
            raise SeganyError(f"cannot build {out / COCO_FILE}: {exc}") from exc
        print(f"segany auto: wrote {out / COCO_FILE} ({count} images)", file=sys.stderr)
    print(f"segany auto: {finished} done, {skipped} skipped, {failed} failed; outputs in {out}")
    if finished and not masks:
        hint = "lower --pred-iou-thresh / --stability-score-thresh"
        if args.checkpoint is None:
            hint = (f"the packaged default model is a small demonstration model whose predicted IoUs and "
                    f"stability are low: {hint}, or pass an official checkpoint with -c")
        print(f"segany auto: no mask passed the filters; {hint}", file=sys.stderr)
    return 1 if failed else 0
