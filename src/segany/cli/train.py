"""``segany train``: train or fine-tune a SAM model from a TOML recipe (also under torchrun)."""

from __future__ import annotations

import argparse

HELP = "train or fine-tune a SAM model from a recipe (one process or torchrun)"

EXAMPLES = """examples:
  segany train recipes/tiny_smoke.toml --output runs/tiny_smoke
  segany train recipes/tiny_smoke.toml loop.steps=40 --output runs/tiny_smoke --resume
  segany train recipes/tiny_smoke.toml --output runs/tiny_smoke --overwrite
  torchrun --standalone --nproc_per_node 2 -m segany train recipes/tiny_smoke.toml --output runs/tiny_ddp
  segany train recipes/finetune_vit_b.toml model.init=sam_vit_b_01ec64.pth --output runs/ft
overrides are SECTION.KEY=VALUE with TOML values (optim.lr=1e-4, loop.bf16=true, data.masks_per_image=16)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe file (TOML), e.g. recipes/tiny_smoke.toml")
    parser.add_argument(
        "overrides", nargs="*", metavar="SECTION.KEY=VALUE",
        help="settings that replace the recipe's (right after CONFIG, before any option; or use --set)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="one more override (repeatable, anywhere)",
    )
    parser.add_argument("--output", "-o", default=None, help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt if it exists")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an earlier run in OUTPUT (without it or --resume, a folder holding a run is refused)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from segany.io.files import check_output_path
    from segany.train.config import load_config
    from segany.train.loop import train

    cfg = load_config(args.config, [*args.overrides, *args.set])
    output = check_output_path(Path(args.output) if args.output else Path("runs") / cfg.name, folder=True)
    result = train(cfg, output, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    if result.weights is not None:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        print(f"done: step {result.step} in {result.seconds:.0f} s; {figures}; weights: {result.weights}")
    from segany.train.distributed import shutdown

    shutdown()
    return 0
