"""Speed of segany's automatic mask generator against the official one: same weights, image and knobs.

    nice python benchmarks/bench_amg.py                 # smooth, tiny, vit_b: print a table
    nice python benchmarks/bench_amg.py --write         # and update benchmarks/RESULTS.md
    nice python benchmarks/bench_amg.py --models tiny --repeats 3

Weights are random (no trained checkpoint is available offline), so the official default thresholds
drop (nearly) every candidate at the predicted-IoU or stability filter. Each model is therefore timed
with the defaults and with both filters off ("loose": pred_iou_thresh = stability_score_thresh = 0),
where every candidate is upscaled and reaches box NMS. Random weights give texture-like masks, the worst
case for the official generator's Python run-length encoding; the "smooth" rows replace the decoder of
the tiny model by a synthetic one (three discs around each point, tests/test_amg.py) in both generators,
to show the pipeline on mask shapes like real ones (its encoder is the tests' 2-block tiny one). Timings
are the best of ``--repeats`` runs, with the encoder and without it (the run's time minus its
image-encoder calls, timed the same way for both). Where segany saves time: its decoder gives the same
logits with about half the multiply-adds (segany.inference.decoders.fast; ~1.74 GMAC per ViT-B
prompt in the official one) and decodes a few prompts per call so that its temporaries stay in cache
(4 for a 64x64 embedding grid), it upscales no prompt whose three masks all fail the predicted-IoU filter (with random
weights that is nearly all of them in the "defaults" rows: a real checkpoint keeps more, so expect a
ratio between the "defaults" and "loose" rows), it resizes logits to the image in one banded pass per
axis, and it run-length encodes only the masks that survive NMS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from sam_testing import official_twin, randomize_  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator  # noqa: E402

from segany.inference.automatic import SamAutomaticMaskGenerator  # noqa: E402
from segany.io.image import read_image  # noqa: E402
from segany.model import PRESETS, build_sam  # noqa: E402

from _results import cpu_name, write_section  # noqa: E402  (beside this script)

HEADING = "## Automatic mask generation"
DEFAULT_IMAGE = REPO / "tests" / "data" / "images" / "coffee.jpg"
LOOSE = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def machine() -> str:
    cpu = cpu_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores (load average {load:.1f} at start), torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op thread(s), {dt.date.today().isoformat()}"
    )


def models(name: str) -> tuple[Any, Any]:
    """segany's model with random weights (every tensor randomised) and the official twin."""
    if name == "smooth":
        from test_amg import blob_pair

        return blob_pair(seed=1, cache=False)
    model = randomize_(build_sam(PRESETS[name]), seed=0).eval()
    return model, official_twin(model)


def timed(generator: Any, image: np.ndarray, repeats: int) -> tuple[float, float, list[dict]]:
    """Best total time of ``generator.generate(image)`` over ``repeats`` runs, the encoder's share
    of that run (its ``predictor.set_image`` calls, timed the same way for both generators) and the
    records."""
    predictor = generator.predictor
    encode = predictor.set_image
    spent = [0.0]

    def timed_set_image(*a: Any, **k: Any) -> None:
        start = time.perf_counter()
        encode(*a, **k)
        spent[0] += time.perf_counter() - start

    predictor.set_image = timed_set_image
    best = (float("inf"), 0.0, [])
    for _ in range(repeats):
        spent[0] = 0.0
        start = time.perf_counter()
        records = generator.generate(image)
        total = time.perf_counter() - start
        if total < best[0]:
            best = (total, spent[0], records)
    return best


def matched_iou(ours: list[dict], theirs: list[dict]) -> float:
    """Worst IoU over a one-to-one matching of the two mask sets (1.0 when both are empty)."""
    from pycocotools import mask as mask_utils
    from scipy.optimize import linear_sum_assignment

    from segany.io.rle import encode_masks

    if not ours or not theirs:
        return 1.0 if len(ours) == len(theirs) else 0.0
    a = [dict(r, counts=r["counts"].encode()) for r in encode_masks(np.stack([r["segmentation"] for r in ours]))]
    b = [dict(r, counts=r["counts"].encode()) for r in encode_masks(np.stack([r["segmentation"] for r in theirs]))]
    ious = np.asarray(mask_utils.iou(a, b, [0] * len(b))).reshape(len(a), len(b))
    rows, cols = linear_sum_assignment(-ious)
    return float(ious[rows, cols].min()) if len(a) == len(b) else 0.0


def bench_case(
    model_name: str, knobs_name: str, knobs: dict[str, Any], image: np.ndarray, repeats: int
) -> dict[str, Any]:
    model, ref = models(model_name)
    row: dict[str, Any] = {"model": model_name, "knobs": knobs_name, "image": f"{image.shape[1]}x{image.shape[0]}"}
    # Warm up both (first calls pay one-time costs), then time with the encoder.
    SamAutomaticMaskGenerator(model, points_per_side=2).generate(image)
    OfficialGenerator(ref, points_per_side=2).generate(image)
    ours_gen, official_gen = SamAutomaticMaskGenerator(model, **knobs), OfficialGenerator(ref, **knobs)
    total, encoder, theirs = timed(official_gen, image, repeats)
    row["official_incl"], row["official_excl"] = total, total - encoder
    total, encoder, ours = timed(ours_gen, image, repeats)
    row["ours_incl"], row["ours_excl"] = total, total - encoder
    row["stages"] = dict(ours_gen.last_timings)
    row["masks"] = (len(ours), len(theirs))
    row["worst_iou"] = matched_iou(ours, theirs)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | knobs | image | masks segany / official (worst matched IoU) "
        "| with encoder: official / segany = speed-up "
        "| encoder excluded: official / segany = speed-up | segany stages (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items() if k != "total" and v >= 0.005)
        lines.append(
            f"| {r['model']} | {r['knobs']} | {r['image']} | {r['masks'][0]} / {r['masks'][1]} ({r['worst_iou']:.4f}) "
            f"| {r['official_incl']:.2f} / {r['ours_incl']:.2f} s = **{r['official_incl'] / r['ours_incl']:.1f}x** "
            f"| {r['official_excl']:.2f} / {r['ours_excl']:.2f} s = **{r['official_excl'] / r['ours_excl']:.1f}x** "
            f"| {stages} |"
        )
    return "\n".join(lines)


def write_results(text: str) -> Path:
    return write_section(HEADING, f"{HEADING}\n\n{text.strip()}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smooth,tiny,vit_b", help="comma-separated: smooth, tiny, vit_b, ...")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--long-side", type=int, default=0, help="resize the image first (0: as is)")
    parser.add_argument(
        "--points-per-side", default="", help="per model or model:knobs, e.g. vit_b:loose=16 (default: 32 for all)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both generators")
    parser.add_argument("--knobs", default="defaults,loose", help="comma-separated: defaults, loose")
    parser.add_argument("--write", action="store_true", help="update the section in benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = read_image(args.image)
    if args.long_side:
        from PIL import Image

        h, w = image.shape[:2]
        s = args.long_side / max(h, w)
        image = np.asarray(Image.fromarray(image).resize((round(w * s), round(h * s)), Image.BILINEAR))
    header = f"Machine: {machine()}. Image: {args.image.name} at {image.shape[1]}x{image.shape[0]}."
    print(header, flush=True)
    rows = []
    for model_name in args.models.split(","):
        for knobs_name in args.knobs.split(","):
            knobs = {"defaults": {}, "loose": LOOSE}[knobs_name]
            if model_name == "smooth":  # disc masks are never 0.95-stable; keep the IoU filter's default
                knobs = {"stability_score_thresh": 0.2}
                knobs.update({"pred_iou_thresh": 0.3} if knobs_name == "loose" else {})
            pps = dict(item.split("=") for item in args.points_per_side.split(",") if item)
            for key in (model_name, f"{model_name}:{knobs_name}"):
                if key in pps:
                    knobs = {**knobs, "points_per_side": int(pps[key])}
            label = ", ".join(f"{k}={v:g}" for k, v in knobs.items()) or "official defaults"
            row = bench_case(model_name, label, knobs, image, args.repeats)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.write:
        notes = __doc__.split("\n\n", 2)[2].strip()
        print("wrote", write_results(f"{header}\n\n{notes}\n\n{text}"))


if __name__ == "__main__":
    main()
