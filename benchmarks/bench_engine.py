"""Data engine stage 3: images per hour per core, one process vs Ray with 1 and 2 workers.

For each model (the packaged default model and ViT-B with random weights), the same images go through
``segany.engine.run.run_auto`` three times, with the official default generator settings (32x32 grid,
no crops) and 1 torch thread per worker:

* ``local``: the one-machine executor (this process);
* ``ray x1``: a local Ray instance, 1 actor with 1 CPU;
* ``ray x2``: 2 actors with 1 CPU each.

Each row gives the wall time including start-up (actors importing torch and loading the model; each
Ray row starts its own local Ray instance with 2 CPUs), the mean time one image
takes inside its worker, and the steady rate: images finished after each worker's first one, over the
time since the last worker's first image (finish times taken in the workers; start-up and first-image
warm-up excluded). Images per hour per core divides the steady rate by the cores in use (workers x 1).
Speed-up = steady rate of ray x2 / ray x1 (goal >= 1.7); Ray overhead = 1 - steady rate of ray x1 /
local (goal <= 10 %).

Usage: ``python benchmarks/bench_engine.py --images 6 --vit-b-images 6`` on an otherwise idle machine.
Give each model an even number of images, at least 4: with an odd count the last image runs alone on one
of the two workers, and the 2-worker steady rate then measures one worker (3 images gave ~1x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
from _results import cpu_name  # beside this script


def _images(folder: Path, count: int) -> list[Path]:
    """The first ``count`` COCO_MVal and BSDS500 images, alternating (real photos, 0.15-0.3 MP)."""
    data = Path(os.environ.get("SEGANY_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not data.is_dir():
        raise SystemExit(f"bench_engine: no shared data at {data}; set SEGANY_SHARED_DATA")
    pools = [sorted((data / name / "images").iterdir()) for name in ("COCO_MVal", "BSDS500")]
    picked = [pools[i % 2][i // 2] for i in range(count)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(picked):
        shutil.copy(src, folder / f"{i:02d}_{src.name}")
    return sorted(folder.iterdir())


def _checkpoint(name: str, folder: Path) -> str | None:
    """None for the packaged default model; a saved random ViT-B otherwise (one file: every worker
    loads the same weights)."""
    if name == "default":
        return None
    import torch

    from segany.io.checkpoint import save_checkpoint
    from segany.model import PRESETS, build_sam

    torch.manual_seed(0)
    return str(save_checkpoint(build_sam(PRESETS["vit_b"]).eval(), folder / "vit_b_random.pth"))


def _timed(execute: Callable[[list[Any]], Iterator[dict[str, Any]]], stamps: list[float], seconds: list[float],
           finished: list[float]):
    def run(jobs: list[Any]) -> Iterator[dict[str, Any]]:
        for row in execute(jobs):
            stamps.append(time.perf_counter())
            seconds.append(float(row["seconds"]))
            finished.append(float(row["finished"]))
            yield row

    return run


def measure(
    model: str, checkpoint: str | None, images: list[Path], executor: str, workers: int, tmp: Path
) -> dict[str, Any]:
    import argparse as ap

    from segany.cli._common import predictor_from_args
    from segany.engine.executors import RayOptions, run_local, run_ray
    from segany.engine.job import ImageJob, JobSettings
    from segany.engine.run import run_auto

    out = tmp / f"{model}-{executor}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    jobs = [ImageJob(i, str(p), p.stem) for i, p in enumerate(images, start=1)]
    settings = JobSettings(out=str(out), threads=1)
    model_args = ap.Namespace(checkpoint=checkpoint, device="cpu", backend="torch", precision="auto",
                              decoder_precision="fp32", encoder_precision="fp32", compile_decoder=False,
                              compile_encoder=False)
    make = partial(predictor_from_args, model_args)
    if executor == "local":
        execute = partial(run_local, settings=settings, make_predictor=make)
    else:
        execute = partial(run_ray, settings=settings, make_predictor=make,
                          options=RayOptions(workers=workers, cpus_per_worker=1, object_store_mb=256))
    stamps: list[float] = []
    seconds: list[float] = []
    finished: list[float] = []
    start = time.perf_counter()
    report = run_auto(jobs, settings, _timed(execute, stamps, seconds, finished), {"fingerprint": {"bench": model}},
                      progress=False)
    wall = time.perf_counter() - start
    assert report.done == len(jobs), report.to_json()
    # When the workers finished each image (Ray hands rows to the driver in batches, so the driver's
    # arrival times would overstate it); each worker's first image carries its warm-up.
    k = workers
    done = sorted(finished)
    steady = (len(done) - k) / (done[-1] - done[k - 1]) * 3600 if len(done) > k else float("nan")
    return {"model": model, "executor": executor if executor == "local" else f"ray x{workers}", "cores": workers,
            "images": len(jobs), "masks": report.masks, "wall": wall, "steady_per_hour": steady,
            "per_core_hour": steady / workers, "image_seconds": sum(seconds) / len(seconds)}


def _control_worker(args: tuple[str, str | None, list[str], str]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    model, checkpoint, images, tmp = args
    return measure(model, checkpoint, [Path(p) for p in images], "local", 1, Path(tmp))


def control(model: str, count: int) -> None:
    """Two independent one-process runs at the same time, no Ray: how far the machine itself scales."""
    import multiprocessing as mp

    tmp = Path(tempfile.mkdtemp(prefix="bench_engine_ctl_"))
    try:
        images = [str(p) for p in _images(tmp / "in", count)]
        checkpoint = _checkpoint(model, tmp)
        alone = _control_worker((model, checkpoint, images, str(tmp / "alone")))
        with mp.get_context("spawn").Pool(2) as pool:
            pair = pool.map(_control_worker, [(model, checkpoint, images, str(tmp / t)) for t in "ab"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{model}: s per image, one process alone {alone['image_seconds']:.1f}; two processes at once "
          f"{pair[0]['image_seconds']:.1f} and {pair[1]['image_seconds']:.1f} (each on the same {count} images)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="images for the default model")
    parser.add_argument("--vit-b-images", type=int, default=6, help="images for ViT-B (0 skips it)")
    parser.add_argument("--control", metavar="MODEL", choices=("default", "vit_b"),
                        help="instead: one process alone, then two at once (no Ray), on --images images")
    args = parser.parse_args()
    if args.control:
        return control(args.control, args.images)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import torch

    torch.set_num_threads(1)
    from segany.engine.executors import RayOptions, _start_ray

    tmp = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    rows = []
    try:
        for model, count in (("default", args.images), ("vit_b", args.vit_b_images)):
            if count <= 0:
                continue
            images = _images(tmp / f"in-{model}", count)
            checkpoint = _checkpoint(model, tmp)
            for executor, workers in (("local", 1), ("ray", 1), ("ray", 2)):
                if executor == "ray":
                    # A fresh local instance (2 CPUs) per Ray row: in one instance reused across rows, the
                    # 2-worker ViT-B row ran each image ~40% slower than in a fresh one (cause not found).
                    _start_ray(RayOptions(workers=2))
                try:
                    row = measure(model, checkpoint, images, executor, workers, tmp)
                finally:
                    if executor == "ray":
                        import ray

                        ray.shutdown()
                rows.append(row)
                print(f"# {row}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\nMachine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"1 thread per worker, {stamp}\n"
    )
    print("| model | executor | cores | images | masks | wall incl. start-up (s) | steady images/hour "
          "| images/hour/core | s per image in the worker |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['executor']} | {r['cores']} | {r['images']} | {r['masks']} | {r['wall']:.1f} | "
              f"{r['steady_per_hour']:.0f} | {r['per_core_hour']:.0f} | {r['image_seconds']:.1f} |")
    for model in ("default", "vit_b"):
        got = {r["executor"]: r["steady_per_hour"] for r in rows if r["model"] == model}
        if len(got) == 3:
            print(f"\n{model}: speed-up ray x2 / ray x1 = {got['ray x2'] / got['ray x1']:.2f} (goal >= 1.7); "
                  f"Ray overhead = {100 * (1 - got['ray x1'] / got['local']):.1f} % (goal <= 10 %)")


if __name__ == "__main__":
    main()
