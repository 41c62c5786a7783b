"""MobileSAM against ViT-B on this CPU: image encoding and one click, with segany's SamPredictor.

Random weights (the timings do not depend on the values), the same real photo, interleaved rounds,
medians. The MobileSAM reference package (``mobilesam-mirror``) encodes the same image with the same
weights for comparison. Writes the "## Model families: MobileSAM and ViT-B" section of
benchmarks/RESULTS.md with --write.

    nice -n 19 python benchmarks/bench_families.py --rounds 3 --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _results import cpu_name, timed, write_section  # beside this script

SECTION = "## Model families: MobileSAM and ViT-B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sam_testing import randomize_

    from segany import SamPredictor
    from segany.io.image import read_image
    from segany.model import PRESETS, build_sam
    from segany.ops.transforms import ResizeLongestSide

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry as mobile_registry

    image = read_image(ROOT / "tests/data/images/rocket.jpg")
    models = {name: randomize_(build_sam(PRESETS[name]), seed=0).eval() for name in ("vit_b", "mobile_sam")}
    reference = mobile_registry["vit_t"]()
    reference.load_state_dict(models["mobile_sam"].state_dict())
    reference.eval()  # after loading: it caches its attention biases on eval()
    predictors = {name: SamPredictor(m) for name, m in models.items()}
    h, w = image.shape[:2]
    prompt = {"point_coords": np.array([[w * 0.5, h * 0.5]]), "point_labels": np.array([1]), "multimask_output": True}
    resized = ResizeLongestSide(1024).apply_image(image)
    ref_input = reference.preprocess(torch.as_tensor(resized).permute(2, 0, 1).float()[None])

    encode: dict[str, list[float]] = {"vit_b": [], "mobile_sam": [], "reference": []}
    click: dict[str, list[float]] = {"vit_b": [], "mobile_sam": []}
    with torch.inference_mode():
        for p in predictors.values():  # warm-up
            p.set_image(image)
            p.predict(**prompt)
        reference.image_encoder(ref_input)
        for r in range(args.rounds):
            for name, p in predictors.items():
                encode[name].append(timed(lambda p=p: p.set_image(image)))
                p.predict(**prompt)
                click[name].append(statistics.median(timed(lambda p=p: p.predict(**prompt)) for _ in range(5)))
            encode["reference"].append(timed(lambda: reference.image_encoder(ref_input)))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in encode.items()), flush=True)

    med = {k: statistics.median(v) for k, v in {**{f"enc_{k}": v for k, v in encode.items()},
                                                  **{f"click_{k}": v for k, v in click.items()}}.items()}
    params = {k: sum(p.numel() for p in m.image_encoder.parameters()) / 1e6 for k, m in models.items()}
    cpu = cpu_name()
    lines = [
        SECTION,
        "",
        f"Machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
        f"{os.getloadavg()[0]:.1f} at the end (compare the rows with each other; other sections ran at other "
        f"times). Medians of {args.rounds} interleaved rounds (clicks: median of 5 per round), random weights, "
        "a 1024-pixel input from a real photo (rocket.jpg), `SamPredictor.set_image` and one-point `predict` "
        "(3 masks). `benchmarks/bench_families.py`.",
        "",
        "| model | encoder parameters | image encoding (s) | one click (ms) |",
        "| --- | --- | --- | --- |",
        f"| ViT-B (`vit_b`) | {params['vit_b']:.1f} M | {med['enc_vit_b']:.2f} | {med['click_vit_b'] * 1e3:.1f} |",
        f"| MobileSAM (`mobile_sam`, segany) | {params['mobile_sam']:.1f} M | {med['enc_mobile_sam']:.2f} | "
        f"{med['click_mobile_sam'] * 1e3:.1f} |",
        f"| MobileSAM reference (`mobilesam-mirror`, encoder only) | {params['mobile_sam']:.1f} M | "
        f"{med['enc_reference']:.2f} | - |",
        "",
        f"MobileSAM encodes {med['enc_vit_b'] / med['enc_mobile_sam']:.1f}x faster than ViT-B here; a click costs "
        "the same (same decoder). MobileSAM's encoder count includes the ImageNet head its checkpoint keeps "
        "(0.3 M, never run).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
