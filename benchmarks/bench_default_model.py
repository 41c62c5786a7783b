"""The packaged default model's speed: ``set_image`` and one click, against the previous default.

Usage (on an otherwise idle machine; COMMIT: one whose package holds the previous default)::

    git show COMMIT:src/segany/weights/segany_default.safetensors > /tmp/previous_default.safetensors
    python benchmarks/bench_default_model.py --previous /tmp/previous_default.safetensors

Issue 18's budget is ``set_image`` at most ~0.1 s on a 2-core CPU. Both models run through
``SamPredictor`` on the same photo (``tests/data/images/coffee.jpg``), interleaved, 2 torch threads;
each figure is the median of ``--rounds`` timed calls after 3 warm-up calls. Prints a markdown table for
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
from _results import cpu_name, timed  # beside this script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--previous", help="weights of the model to compare against (e.g. the previous default)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from PIL import Image

    import segany
    from segany import SamPredictor

    torch.set_num_threads(args.threads)
    image = np.array(Image.open(REPO / "tests/data/images/coffee.jpg").convert("RGB"))
    models = {"default (packaged)": segany.load_model()}
    if args.previous:
        models["previous"] = segany.load_model(args.previous)
    predictors = {name: SamPredictor(m) for name, m in models.items()}
    point, label = np.array([[230, 115]]), np.array([1])
    for p in predictors.values():
        for _ in range(3):
            p.set_image(image)
            p.predict(point_coords=point, point_labels=label)
    times: dict[str, dict[str, list[float]]] = {n: {"set_image": [], "click": []} for n in predictors}
    for _ in range(args.rounds):
        for name, p in predictors.items():
            times[name]["set_image"].append(timed(partial(p.set_image, image)))
            times[name]["click"].append(timed(partial(p.predict, point_coords=point, point_labels=label)))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    print(f"Machine: {cpu_name()}, {os.cpu_count()} cores, {args.threads} torch "
          f"threads, torch {torch.__version__}, {stamp}, load average {load:.1f} at the end. Image "
          f"{image.shape[1]}x{image.shape[0]}; median of {args.rounds} interleaved calls.\n")
    print("| model | parameters | set_image (ms) | one click, 3 masks (ms) |")
    print("| --- | --- | --- | --- |")
    for name, m in models.items():
        n = sum(p.numel() for p in m.parameters()) / 1e6
        t = times[name]
        print(f"| {name} ({m.config.encoder}, {m.image_size} px) | {n:.2f} M | {1000 * np.median(t['set_image']):.1f} | "
              f"{1000 * np.median(t['click']):.1f} |")


if __name__ == "__main__":
    main()
