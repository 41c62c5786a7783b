"""``segany stats``: the paper's dataset statistics (section 5) for COCO and SA-1B data, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "dataset statistics: masks per image, mask sizes, concavity, centres, image sizes, attributes"
EXAMPLES = """examples:
  segany stats /data/COCO_MVal /data/BSDS500 masks/ -o stats/
  segany stats sa1b_shards/ coco/annotations.json -o stats/ --by orientation
  segany stats masks/sa_000000.tar -o stats/ --names auto --limit 1000
  segany stats /shared/sa1b/ -o stats/ --ray ray://head:10001     # one Ray task per tar shard

DATA: a COCO folder (annotations.json + images/) or COCO JSON file; a folder of SA-1B per-image JSON
files (a 'segany auto' output); SA-1B tar shards (sa_*.tar) or a folder holding them. Images are not
read: sizes come from the annotations. Each data set is streamed, one image at a time.
Outputs in DIR: stats.json (every figure's numbers), distributions.png (masks per image, relative
mask size sqrt(area / image area), concavity 1 - area / convex hull area, image sizes), centres.png
(mask centres), and with --by KEY by_KEY.png (images and masks per value of an image attribute: any
key of the image records, or one of: dataset, orientation, size_class, format)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", metavar="DATA", help="data sets (folders, COCO JSON files, tar shards)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--names", default=None, help="comma-separated names for the data sets (default: folder names)")
    parser.add_argument(
        "--by", default=None, metavar="KEY", help="also count images and masks per value of this image attribute"
    )
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images of each data set")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="read the pieces of each data set (COCO file, tar shards, groups of 256 files) "
                        "in Ray tasks: a new local instance, or the cluster at ADDRESS")


def run(args: argparse.Namespace) -> int:
    from segany.engine.stats import compute_stats
    from segany.engine.stats_plots import (
        plot_attribute,
        plot_centres,
        plot_distributions,
    )
    from segany.errors import SeganyError
    from segany.io.files import atomic_write_json

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if names is not None and (len(names) != len(args.data) or len(set(names)) != len(names)):
        raise SeganyError(f"--names needs {len(args.data)} distinct names, one per data set")
    if args.limit is not None and args.limit < 1:
        raise SeganyError(f"--limit must be >= 1, got {args.limit}")
    if args.limit is not None and args.ray is not None:
        raise SeganyError("--limit reads the first images in order; it does not combine with --ray")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise SeganyError(f"output {out} exists and is not a folder")
    stats = compute_stats(args.data, names, by=args.by, limit=args.limit, progress=not args.no_progress, ray=args.ray)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SeganyError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    result: dict = {"datasets": {s.name: s.to_json() for s in stats}}
    if args.by:
        result["by"] = {
            "key": args.by,
            "datasets": {s.name: {v: dict(c) for v, c in sorted(s.by.items())} for s in stats},
        }
    atomic_write_json(out / "stats.json", result, indent=1)
    plot_distributions(stats, out / "distributions.png")
    plot_centres(stats, out / "centres.png")
    if args.by:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in args.by)
        plot_attribute(stats, args.by, out / f"by_{safe}.png")
    for s in stats:
        summary = s.to_json()
        print(f"{s.name}: {s.images} images, {s.masks} masks ({summary['masks_per_image']['mean']:.1f} per image), "
              f"relative size {summary['relative_size']['mean']:.3f}, concavity {summary['concavity']['mean']:.3f}")
    print(f"segany stats: wrote {out / 'stats.json'} and the plots in {out}")
    return 0
