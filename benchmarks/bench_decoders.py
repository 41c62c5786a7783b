"""The click decoders side by side: one click (3 masks, resized to a 640x480 image) with each
``SamPredictor(model, decoder=...)`` choice, on the same embedding, in interleaved rounds.

What ``decoder="auto"`` picks on a CPU is decided from this table (and from ``bench_cpu.py``'s, which
times the predictor against the official package). ViT-B's decoder is timed with random weights and a
random 64x64 embedding: a decoder's cost does not depend on the weights' values, and no encoder runs.

    nice python benchmarks/bench_decoders.py --rounds 5 --write
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
from _results import write_section  # beside this script
SECTION = "## Click decoders"


def _model(name: str) -> torch.nn.Module:
    from segany.build import load_model
    from segany.model import PRESETS, build_sam

    if name == "default":
        return load_model(None)
    torch.manual_seed(0)
    return build_sam(PRESETS[name]).eval()


def _time(predictor, prompts: list[dict]) -> float:
    """Median seconds per click over ``prompts``."""
    times = []
    for prompt in prompts:
        tick = time.perf_counter()
        predictor.predict(**prompt)
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def run(models: list[str], rounds: int, clicks: int) -> list[tuple[str, str, float, float]]:
    from segany import SamPredictor
    from segany.inference.cpu import cpu_has_bf16
    from segany.inference.decoders import DECODERS

    rows = []
    names = [d for d in DECODERS if d != "bf16" or cpu_has_bf16()]
    rng = np.random.default_rng(0)
    prompts = [dict(point_coords=rng.uniform(0, 480, (1, 2)), point_labels=np.array([1])) for _ in range(clicks)]
    for model_name in models:
        model = _model(model_name)
        gh, gw = model.prompt_encoder.image_embedding_size
        embedding = torch.randn(1, model.prompt_encoder.embed_dim, gh, gw, generator=torch.Generator().manual_seed(1))
        predictors = {}
        for name in names:
            p = SamPredictor(model, decoder=name)
            p.set_image_embedding(embedding, (480, 640))
            p.predict(**prompts[0])  # warm-up: allocations, buffers
            predictors[name] = p
        per_round: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(rounds):
            for name in names:
                per_round[name].append(_time(predictors[name], prompts))
        for name in names:
            ratios = [r / t for r, t in zip(per_round["reference"], per_round[name])]
            rows.append((model_name, name, statistics.median(per_round[name]), statistics.median(ratios)))
        print(f"{model_name}: " + ", ".join(f"{n} {statistics.median(per_round[n]) * 1e3:.1f} ms" for n in names))
    return rows


def verdict(rows: list[tuple[str, str, float, float]]) -> list[str]:
    """Which variants pay for their code, in words computed from this run's rows."""
    t = {(m, n): s for m, n, s, _ in rows}
    models = list(dict.fromkeys(m for m, *_ in rows))

    def gain(name: str, over: str) -> str:
        parts = [f"{t[(m, over)] / t[(m, name)]:.2f}x on {m}" for m in models if (m, name) in t and (m, over) in t]
        return ", ".join(parts) or "not measured"

    return [
        "Which variants pay for their code (this run):",
        "",
        f"- `fast` (exact, ~370 lines): {gain('fast', 'reference')} over `reference`. What `decoder=\"auto\"` "
        "runs on a CPU; `reference` stays for GPUs (no GPU run of this script yet) and models whose decoder "
        "`fast` does not reproduce.",
        f"- `bf16` (approximate, ~250 lines on top of `fast`): {gain('bf16', 'fast')} over `fast`, on CPUs "
        "with AVX-512 BF16 or AMX; opt-in, its accuracy is in the CPU inference section.",
        f"- `lowrank` (exact, ~420 lines): {gain('lowrank', 'fast')} over `fast`. It pays only on SAM's "
        "64x64 grid in float32 (ViT-B/L/H clicks and the automatic generator's batches); on small grids it "
        "is no faster, and it is unused with `bf16`. Opt-in; the first variant to drop if the gain vanishes.",
    ]


def section(rows: list[tuple[str, str, float, float]], rounds: int, clicks: int) -> str:
    from segany.inference.cpu import cpu_flags

    flags = " ".join(f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in cpu_flags())
    load = " ".join(f"{x:.1f}" for x in __import__("os").getloadavg())
    lines = [
        SECTION,
        "",
        f"Measured {datetime.now():%Y-%m-%d %H:%M} by `nice python benchmarks/bench_decoders.py --rounds {rounds}` "
        f"on {platform.processor() or platform.machine()} ({flags or 'no AVX-512'}), {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}; load average {load} (a shared machine: ratios are medians of "
        f"per-round ratios of interleaved runs). One click = `predict` of one point, 3 masks resized to 640x480; "
        f"median of {clicks} clicks per round, {rounds} rounds. vit_b: random weights and embedding.",
        "",
        "| model | decoder | median click | speed vs reference |",
        "| --- | --- | --- | --- |",
    ]
    for model, name, seconds, ratio in rows:
        lines.append(f"| {model} | {name} | {seconds * 1e3:.1f} ms | {ratio:.2f}x |")
    lines += ["", *verdict(rows)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit_b,default")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--write", action="store_true", help=f"replace the '{SECTION}' section of RESULTS.md")
    args = parser.parse_args(argv)
    rows = run(args.models.split(","), args.rounds, args.clicks)
    text = section(rows, args.rounds, args.clicks)
    print(text)
    if args.write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
