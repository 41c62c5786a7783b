"""SAM-HQ's click decoders on this CPU: the model's own HQ decoder (``decoder="reference"``) against
segany's fast decoder (``decoder="fast"``, what ``"auto"`` picks on a CPU), with SamPredictor.

SAM-HQ ViT-B's decoder with random weights on a random HQ embedding (256 + 768 channels, 64 x 64: the
timings do not depend on the values); one click (one point, ``multimask_output``) and the automatic
generator's batch of 64 one-point prompts (``predict_low_res``). Interleaved rounds, medians; the
largest logit difference between the two decoders in the same run. Writes the "## SAM-HQ click
decoders" section of benchmarks/RESULTS.md with --write.

    nice -n 19 python benchmarks/bench_hq_decoders.py --rounds 3 --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _results import cpu_name, timed, write_section  # beside this script

SECTION = "## SAM-HQ click decoders: fast against the model's own"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sam_testing import randomize_

    from segany import SamPredictor
    from segany.model import PRESETS, build_sam

    model = randomize_(build_sam(PRESETS["sam_hq_vit_b"]), seed=0).eval()
    g = torch.Generator().manual_seed(1)
    embedding = torch.randn(1, 256 + 768, 64, 64, generator=g)
    predictors = {name: SamPredictor(model, decoder=name) for name in ("reference", "fast")}
    for p in predictors.values():
        p.set_image_embedding(embedding, (768, 1024))
    prompt = {"point_coords": np.array([[500.0, 400.0]]), "point_labels": np.array([1]), "multimask_output": True}
    coords = torch.rand(64, 1, 2, generator=g) * 1024
    labels = torch.ones(64, 1)

    click: dict[str, list[float]] = {name: [] for name in predictors}
    batch: dict[str, list[float]] = {name: [] for name in predictors}
    with torch.inference_mode():
        outs = {name: p.predict_low_res(coords, labels) for name, p in predictors.items()}  # warm-up, and parity
        diff = float((outs["fast"][0] - outs["reference"][0]).abs().max())
        scale = float(outs["reference"][0].abs().max())
        for r in range(args.rounds):
            for name, p in predictors.items():
                p.predict(**prompt)
                click[name].append(statistics.median(timed(lambda p=p: p.predict(**prompt)) for _ in range(5)))
                batch[name].append(timed(lambda p=p: p.predict_low_res(coords, labels)))
            print(f"round {r + 1}: " + ", ".join(f"{k} click {v[-1] * 1e3:.0f} ms" for k, v in click.items()),
                  flush=True)
    med_click = {k: statistics.median(v) for k, v in click.items()}
    med_batch = {k: statistics.median(v) for k, v in batch.items()}
    cpu = cpu_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        SECTION,
        "",
        f"Machine: {cpu}, {torch.get_num_threads()} threads, load average {load:.1f} at the end of the run "
        f"(a shared machine: compare the rows with each other, not with other sections), torch {torch.__version__}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. SAM-HQ ViT-B's decoder, random "
        f"weights and HQ embedding (1024 x 64 x 64); medians of {args.rounds} interleaved rounds (a click: median "
        "of 5 per round). `benchmarks/bench_hq_decoders.py`.",
        "",
        "| decoder | one click, `predict` (ms) | 64 prompts, `predict_low_res` (s) |",
        "| --- | --- | --- |",
        f"| `reference` (the model's own HQ decoder) | {med_click['reference'] * 1e3:.1f} | "
        f"{med_batch['reference']:.2f} |",
        f"| `fast` (`auto` on a CPU) | {med_click['fast'] * 1e3:.1f} | {med_batch['fast']:.2f} |",
        "",
        f"The fast decoder takes {med_click['fast'] / med_click['reference']:.2f}x the reference's time per click "
        f"and {med_batch['fast'] / med_batch['reference']:.2f}x per 64-prompt batch; its logits differ from the "
        f"reference's by at most {diff:.1e} (largest |logit| {scale:.1f}).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
