"""``segany auto``: automatic masks for many images (the data engine's fully automatic stage).

The work itself lives in :mod:`segany.engine`: this module parses arguments, finds the images and
builds the model factory, then runs :func:`segany.engine.run.run_auto` with this process or Ray as
the executor.
"""

from __future__ import annotations

import argparse
import glob
import sys
from functools import partial
from pathlib import Path
from typing import Any

from segany.cli._common import (
    add_backend_arguments,
    add_model_arguments,
    inference_options_from_args,
    predictor_from_args,
)
from segany.engine.job import ImageJob, JobSettings, output_path
from segany.errors import SeganyError

HELP = "generate masks for every object in images (automatic mask generation, one machine or Ray)"
EXAMPLES = """examples:
  segany auto photos/ -o masks/ --checkpoint sam_vit_b_01ec64.pth
  segany auto photos/ -o masks/ --backend onnx --onnx-precision int8   # onnxruntime, int8 encoder
  segany auto 'photos/**/*.jpg' -o masks/ --preset sa1b --format coco --overlay
  segany auto a.jpg b.png -o out/ --format png --points-per-side 16 --pred-iou-thresh 0.8
  segany auto photos/ -o sa1b/ --preset sa1b --shard-size 1000 --ray --workers 2   # local Ray, 2 actors
  segany auto /data/images -o /shared/sa1b --ray ray://head:10001 --workers 64 --gpus-per-worker 1

INPUT: image files, folders (searched recursively) or quoted glob patterns; files under OUTDIR are
never taken as input.
Formats: sa1b  OUTDIR/<name>.json per image (SA-1B layout, COCO RLE masks); with --shard-size N every
               N images are sealed into OUTDIR/sa_NNNNNN.tar (images and JSON side by side, as SA-1B
               is published) with a done-marker sa_NNNNNN.done.json
         coco  the same per-image files, plus OUTDIR/coco_instances.json for all finished images
         png   OUTDIR/<name>/<k>.png per mask plus OUTDIR/<name>/metadata.csv
OUTDIR/run.json records the model (sha256) and every setting; a rerun does only what is missing, and
a rerun with other settings is refused (--overwrite redoes everything with the new ones).
OUTDIR/report.json holds the last run's counts, time and failures with their reasons.
Each image's output is written atomically: an interrupted run (or a killed Ray worker) loses nothing
it finished. Images that cannot be processed (unreadable, too large, too small or thin for the
settings, NaN scores) are reported and skipped; the exit status is 1 if any image failed, 2 for bad
arguments.
--ray runs the same per-image job on a pool of Ray actors (pip install 'segany[ray]'), each loading
the model once: a new local Ray instance without ADDRESS, else the cluster at ADDRESS (OUTDIR must then
be storage every node sees)."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"})
COCO_FILE = "coco_instances.json"

# (flag, generator setting, type, help)
KNOBS: list[tuple[str, str, type, str]] = [
    ("--points-per-side", "points_per_side", int, "grid points per image side"),
    ("--points-per-batch", "points_per_batch", int, "prompts decoded at once"),
    ("--pred-iou-thresh", "pred_iou_thresh", float,
     "keep masks with predicted IoU above this (default: the model's own, else 0.88)"),
    ("--stability-score-thresh", "stability_score_thresh", float,
     "keep masks at least this stable (default: the model's own, else 0.95)"),
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
    parser.add_argument("--shard-size", type=int, default=None, metavar="N",
                        help="seal every N images into OUTDIR/sa_NNNNNN.tar with their JSON (sa1b format)")
    parser.add_argument("--threads", type=int, default=None, metavar="K",
                        help="torch threads (per worker with --ray; default: torch's choice, 1 per CPU with --ray)")
    ray = parser.add_argument_group("Ray (pip install 'segany[ray]')")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="run on Ray: a new local instance, or the cluster at ADDRESS")
    ray.add_argument("--workers", type=int, default=2, help="actors, each loading the model once (default 2)")
    ray.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per actor (default 1)")
    ray.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor (default 0; use --device cuda)")
    ray.add_argument("--object-store-mb", type=int, default=256,
                     help="object store of a new local Ray instance, MB (default 256: only ids and rows travel)")
    add_model_arguments(parser)
    add_backend_arguments(parser)


def _under(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def find_images(inputs: list[str], exclude: Path | None = None) -> list[ImageJob]:
    """Expand files, folders (recursively, image suffixes only) and glob patterns into jobs with ids
    1..n in order; skip files under ``exclude`` (the output folder: never re-ingest our own outputs);
    fail on a missing input, an empty result or two inputs whose outputs would collide."""
    folder = exclude.resolve() if exclude is not None else None
    found: list[tuple[Path, str]] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(p, p.relative_to(path).with_suffix("").as_posix()) for p in files if not _under(p, folder)]
        elif path.is_file():
            if not _under(path, folder):
                found.append((path, path.stem))
        elif any(c in text for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise SeganyError(f"no images match {text!r}")
            found += [(m, m.stem) for m in files if not _under(m, folder)]
        else:
            raise SeganyError(f"{text}: no such file or folder")
    if not found:
        where = f" outside the output folder {exclude}" if exclude is not None else ""
        raise SeganyError(
            f"no images found in {', '.join(inputs)}{where} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    unique: dict[Path, tuple[Path, str]] = {}
    by_name: dict[str, Path] = {}
    for path, name in found:
        resolved = path.resolve()
        if resolved in unique:
            continue  # the same file named twice
        if name in by_name:
            raise SeganyError(f"{by_name[name]} and {path} would both write outputs named {name!r}")
        unique[resolved] = (path, name)
        by_name[name] = path
    return [ImageJob(i, str(p), n) for i, (p, n) in enumerate(unique.values(), start=1)]


def _write_coco(out: Path, jobs: list[ImageJob]) -> int:
    """``coco_instances.json`` from the per-image files of every finished job; returns the image count."""
    from dataclasses import asdict

    from segany.io.coco import coco_instances_from_records, write_coco
    from segany.io.sa1b import read_sa1b

    pairs = []
    for job in jobs:
        path = output_path(out, job.name, "coco")
        if path.exists():
            parsed = read_sa1b(path)
            info = {**asdict(parsed.image), "image_id": job.image_id}
            pairs.append((info, [asdict(a) for a in parsed.annotations]))
    write_coco(out / COCO_FILE, coco_instances_from_records(pairs))
    return len(pairs)


def _model_args(args: argparse.Namespace) -> argparse.Namespace:
    """Only what builds the predictor: a small picklable namespace for Ray actors."""
    names = ("checkpoint", "device", "backend", "onnx_precision", "num_threads", "decoder", "decoder_precision",
             "encoder_precision", "compile_decoder", "compile_encoder")
    return argparse.Namespace(**{n: getattr(args, n, None) for n in names if hasattr(args, n)})


def _manifest(args: argparse.Namespace, overrides: dict[str, Any], jobs: list[ImageJob]) -> dict[str, Any]:
    """run.json: the fingerprint (what shapes the outputs) plus information about the run."""
    import hashlib

    from segany import __version__
    from segany.build import default_weights_path
    from segany.engine.layout import file_sha256
    from segany.inference.automatic import GENERATOR_PRESETS
    from segany.model import PRESETS

    source = args.checkpoint or default_weights_path()
    if source is None or (isinstance(source, str) and source in PRESETS and not Path(source).exists()):
        sha = f"preset:{source} (random weights)"
    else:
        try:
            sha = file_sha256(source)
        except OSError as exc:
            raise SeganyError(f"cannot read checkpoint {source}: {exc.strerror or exc}") from None
    options = inference_options_from_args(args)  # every choice that shapes the masks, validated
    model = {"sha256": sha, "backend": options.backend, "precision": options.onnx_precision,
             "decoder": options.decoder, "encoder_precision": options.encoder_precision}
    fingerprint: dict[str, Any] = {
        "model": model,
        "generator": {"preset": args.preset, **GENERATOR_PRESETS[args.preset], **overrides},
        "format": args.format,
        "shard_size": args.shard_size,
    }
    if args.shard_size:  # shards are cut by image id: the input list must stay the same
        names = "\n".join(job.name for job in jobs).encode()
        fingerprint["inputs_sha256"] = hashlib.sha256(names).hexdigest()
    return {
        "fingerprint": fingerprint,
        "checkpoint": str(source) if source is not None else None,
        "segany": __version__,
        "images": len(jobs),
        "inputs": list(args.inputs),
    }


def _check_arguments(args: argparse.Namespace) -> None:
    if args.shard_size is not None:
        if args.shard_size < 1:
            raise SeganyError(f"--shard-size must be >= 1, got {args.shard_size}")
        if args.format != "sa1b":
            raise SeganyError("--shard-size seals SA-1B files: use it with --format sa1b")
    if args.threads is not None and args.threads < 1:
        raise SeganyError(f"--threads must be >= 1, got {args.threads}")
    if args.ray is None and any(
        getattr(args, n) != d for n, d in (("workers", 2), ("cpus_per_worker", 1.0), ("gpus_per_worker", 0.0))
    ):
        raise SeganyError("--workers, --cpus-per-worker and --gpus-per-worker apply to --ray runs")


def run(args: argparse.Namespace) -> int:
    from segany.engine.executors import RayOptions, run_local, run_ray
    from segany.engine.run import run_auto
    from segany.inference.amg_parts import check_settings
    from segany.io import FormatError

    from segany.io.files import check_output_path

    _check_arguments(args)
    out = check_output_path(args.output, folder=True)  # before images are listed or a model loads
    jobs = find_images(args.inputs, exclude=out)
    overrides = {name: getattr(args, name) for _, name, _, _ in KNOBS if getattr(args, name) is not None}
    _validate_settings(args.preset, overrides, check_settings)
    manifest = _manifest(args, overrides, jobs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SeganyError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    settings = JobSettings(out=str(out), format=args.format, preset=args.preset, overrides=overrides,
                           overlay=args.overlay, threads=args.threads)
    make_predictor = partial(predictor_from_args, _model_args(args))
    if args.ray is None:
        execute = partial(run_local, settings=settings, make_predictor=make_predictor, overwrite=args.overwrite)
    else:
        # Once here first: a bad checkpoint is one line before any actor starts, and an ONNX export is
        # cached once instead of by every actor at the same time.
        make_predictor()
        options = RayOptions(None if args.ray == "local" else args.ray, args.workers, args.cpus_per_worker,
                             args.gpus_per_worker, args.object_store_mb)
        execute = partial(run_ray, settings=settings, make_predictor=make_predictor, options=options,
                          overwrite=args.overwrite)
    report = run_auto(jobs, settings, execute, manifest, shard_size=args.shard_size, overwrite=args.overwrite,
                      progress=not args.no_progress, executor_name="local" if args.ray is None else f"ray:{args.ray}")
    if args.format == "coco":
        try:
            count = _write_coco(out, jobs)
        except FormatError as exc:
            raise SeganyError(f"cannot build {out / COCO_FILE}: {exc}") from exc
        print(f"segany auto: wrote {out / COCO_FILE} ({count} images)", file=sys.stderr)
    _print_report(report, out)
    if report.done and not report.masks:
        hint = "lower --pred-iou-thresh / --stability-score-thresh"
        if args.checkpoint is None:
            hint = f"{hint}, or pass an official checkpoint with -c (the packaged default model is a small one)"
        print(f"segany auto: no mask passed the filters; {hint}", file=sys.stderr)
    return 1 if report.failed else 0


_THRESHOLDS = ("pred_iou_thresh", "stability_score_thresh", "stability_score_offset", "box_nms_thresh",
               "crop_nms_thresh", "crop_overlap_ratio", "min_mask_region_area")


def _validate_settings(preset: str, overrides: dict[str, Any], check: Any) -> None:
    """Refuse bad generator settings before any model is loaded or any file written."""
    from segany.inference.automatic import GENERATOR_PRESETS, GeneratorSettingsError

    merged = {**GENERATOR_PRESETS[preset], **overrides}
    try:
        check(merged.get("points_per_side", 32), None, merged.get("points_per_batch", 64),
              merged.get("crop_n_layers", 0), merged.get("crop_n_points_downscale_factor", 1), "coco_rle",
              merged.get("max_mask_region_fraction"),
              **{k: merged[k] for k in _THRESHOLDS if merged.get(k) is not None})
    except GeneratorSettingsError as exc:
        raise SeganyError(str(exc)) from None


def _print_report(report: Any, out: Path) -> None:
    rate = report.done / report.seconds * 3600 if report.seconds > 0 else 0.0
    print(f"segany auto: {report.done} done, {report.skipped} skipped, {report.failed} failed; outputs in {out}")
    print(f"segany auto: {report.masks} masks in {report.seconds:.1f} s ({rate:.0f} images/hour, "
          f"{report.executor}{f', {report.workers} worker process(es)' if report.workers else ''})")
    if report.shards_sealed:
        print(f"segany auto: sealed {', '.join(report.shards_sealed)}")
    if report.failures:
        print("segany auto: failures (also in report.json):")
        for name, reason in sorted(report.failures.items()):
            print(f"  {name}: {reason}")
