"""Quick core benchmark: vit_b image encoding and one click, segany against the official package.

Same random weights in both, same real photo, interleaved rounds, median ratio. On CPUs with bfloat16
products (AVX-512 BF16, AMX) the clicks are also timed with ``SamPredictor(decoder_precision="bf16")``
(the opt-in bfloat16 decoder) on segany's embedding, eager and through torch.compile
(``compile_decoder=True``; compiled once, before timing), and the opt-in bfloat16 encoder
(``encoder_precision="bf16"``) is timed beside the float32 one. Writes the
"## Core: vit_b encoder and one click" section of benchmarks/RESULTS.md with --write.
The fuller CPU benchmark (ONNX, int8, memory, generator) is bench_cpu.py.

    nice python benchmarks/bench_core.py --rounds 2 --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
from _results import cpu_name, write_section  # beside this script
sys.path.insert(0, str(ROOT / "tests"))


def median_click(predictor: object, prompt: dict[str, np.ndarray], repeats: int = 5) -> float:
    """Median seconds of ``predictor.predict(**prompt)`` after one warm-up call."""
    predictor.predict(**prompt)  # type: ignore[attr-defined]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        predictor.predict(**prompt)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from sam_testing import official_twin, randomize_
    from segment_anything import SamPredictor as OfficialPredictor

    from segany import SamPredictor
    from segany.inference.cpu import cpu_has_bf16
    from segany.io.image import read_image
    from segany.model import PRESETS, build_sam

    model = randomize_(build_sam(PRESETS["vit_b"]), seed=0).eval()
    ref = official_twin(model)
    image = read_image(ROOT / "tests/data/images/rocket.jpg")
    point = dict(point_coords=np.array([[300.0, 250.0]]), point_labels=np.array([1]))
    ours, theirs = SamPredictor(model), OfficialPredictor(ref)
    # The opt-in bfloat16 decoder, on the same embedding (its encoder is segany's float32 one).
    bf16 = SamPredictor(model, decoder_precision="bf16") if cpu_has_bf16() else None
    bf16c = SamPredictor(model, decoder_precision="bf16", compile_decoder=True) if cpu_has_bf16() else None
    # The opt-in bfloat16 encoder (encoder_precision="bf16"), timed on set_image only.
    enc16 = SamPredictor(model, encoder_precision="bf16") if cpu_has_bf16() else None
    enc: dict[str, list[float]] = {"official": [], "segany": [], "bf16": []}
    click: dict[str, list[float]] = {"official": [], "segany": [], "bf16": [], "bf16c": []}
    for _ in range(args.rounds):
        for name, p in (("official", theirs), ("segany", ours)):
            t = time.perf_counter()
            p.set_image(image)
            enc[name].append(time.perf_counter() - t)
            click[name].append(median_click(p, point))
            if name == "segany" and enc16 is not None:
                t = time.perf_counter()
                enc16.set_image(image)
                enc["bf16"].append(time.perf_counter() - t)
            if name == "segany" and bf16 is not None and bf16c is not None:
                for key, q in (("bf16", bf16), ("bf16c", bf16c)):
                    q.set_image_embedding(ours.get_image_embedding(), image.shape[:2])
                    click[key].append(median_click(q, point))
    diff = (ours.get_image_embedding() - theirs.get_image_embedding()).abs().max().item()
    # The same click on an SA-1B-sized photo (1500 x 2250; same embedding, only the masks' size differs),
    # where resizing three masks to the image is a large part of a click.
    big = (1500, 2250)
    embedding = ours.get_image_embedding()
    for p in (ours, bf16, bf16c):
        if p is not None:
            p.set_image_embedding(embedding, big)
    theirs.reset_image()
    theirs.features, theirs.original_size = embedding, big
    theirs.input_size = theirs.transform.get_preprocess_shape(*big, ref.image_encoder.img_size)
    theirs.is_image_set = True
    big_point = dict(point_coords=np.array([[900.0, 700.0]]), point_labels=np.array([1]))
    click_big: dict[str, list[float]] = {"official": [], "segany": [], "bf16": [], "bf16c": []}
    for _ in range(args.rounds):
        for name, p in (("official", theirs), ("segany", ours), ("bf16", bf16), ("bf16c", bf16c)):
            if p is not None:
                click_big[name].append(median_click(p, big_point))

    def ratio(times: dict[str, list[float]], name: str) -> float:
        return statistics.median(o / s for o, s in zip(times["official"], times[name]))

    def bf16_cells(times: dict[str, list[float]]) -> str:
        if not times["bf16"]:
            return "- | - | - | -"
        return " | ".join(
            f"{statistics.median(times[k]) * 1e3:.1f} ms | {ratio(times, k):.2f}x" for k in ("bf16", "bf16c")
        )

    r_enc, r_click, r_big = ratio(enc, "segany"), ratio(click, "segany"), ratio(click_big, "segany")
    enc16_cells = (
        f"{statistics.median(enc['bf16']):.2f} (bf16 encoder) | {ratio(enc, 'bf16'):.2f}x" if enc["bf16"] else "- | -"
    )
    cpu = cpu_name()
    lines = [
        "## Core: vit_b encoder and one click",
        "",
        f"Machine: {cpu}, 2 threads, torch {torch.__version__}, {datetime.date.today()}; load average "
        f"{os.getloadavg()[0]:.1f} at the end (this benchmark alone gives ~2).",
        f"Image {image.shape[1]}x{image.shape[0]}, random vit_b weights identical in both; "
        f"{args.rounds} interleaved rounds,",
        f"median ratio. Max embedding difference {diff:.1e}. "
        f"Command: `nice python benchmarks/bench_core.py --rounds {args.rounds} --write`.",
        "",
        "| step | official (s) | segany (s) | speed-up | segany, bf16 decoder | speed-up | bf16, compiled | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| image encoder (set_image) | {statistics.median(enc['official']):.2f} | "
        f"{statistics.median(enc['segany']):.2f} | {r_enc:.2f}x | {enc16_cells} | - | - |",
        f"| one click (predict, 3 masks, to image size) | {statistics.median(click['official']) * 1e3:.1f} ms | "
        f"{statistics.median(click['segany']) * 1e3:.1f} ms | {r_click:.2f}x | {bf16_cells(click)} |",
        f"| one click, masks at 2250x1500 (SA-1B size) | {statistics.median(click_big['official']) * 1e3:.1f} ms | "
        f"{statistics.median(click_big['segany']) * 1e3:.1f} ms | {r_big:.2f}x | {bf16_cells(click_big)} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("## Core: vit_b encoder and one click", text)


if __name__ == "__main__":
    main()
