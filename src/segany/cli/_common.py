"""Helpers shared by subcommands: parsing prompt strings, loading a model with a clean error."""

from __future__ import annotations

import argparse
import math
from typing import Any

from segany.errors import PromptError, SeganyError


def parse_numbers(text: str, what: str, count: tuple[int, ...]) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise PromptError(f"malformed {what} {text!r}: expected comma-separated numbers") from None
    if len(values) not in count:
        expected = " or ".join(str(c) for c in count)
        raise PromptError(f"malformed {what} {text!r}: expected {expected} numbers, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise PromptError(f"malformed {what} {text!r}: every number must be finite (not nan or inf)")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """``X,Y`` (foreground) or ``X,Y,LABEL`` with LABEL 1 (foreground) or 0 (background)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 3 and parts[2].lower() not in ("0", "1", "0.0", "1.0"):
        raise PromptError(f"malformed point {text!r}: the label must be 1 (foreground) or 0 (background)")
    values = parse_numbers(text, "point", (2, 3))
    label = int(values[2]) if len(values) == 3 else 1
    return values[0], values[1], label


def parse_box(text: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = parse_numbers(text, "box", (4,))
    if x1 < x0 or y1 < y0:
        raise PromptError(f"box {text!r}: x1 must be >= x0 and y1 >= y0 (the format is X0,Y0,X1,Y1)")
    return x0, y0, x1, y1


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--checkpoint", metavar="PATH|NAME",
        help="model weights: a file (.pth/.pt/.safetensors: SAM, MobileSAM, SAM-HQ, segany, Hugging Face; or a "
        "Hugging Face model folder) or a released model's name (vit_b, vit_l, vit_h, mobile_sam, sam_hq_vit_b, "
        "sam_hq_vit_l, sam_hq_vit_h, sam_hq_vit_tiny: taken from ~/.cache/segany/checkpoints or torch hub's "
        "cache, else downloaded); default: the packaged default model",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=("torch", "onnx"), default="torch",
        help="run the model in PyTorch (default) or onnxruntime; with onnx, the image encoder runs in "
        "onnxruntime (int8 with --precision int8) and prompts in segany's PyTorch decoder (faster on CPUs), "
        "or in onnxruntime too when --checkpoint is a 'segany export' folder; checkpoints are exported once "
        "to ~/.cache/segany/onnx",
    )
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "int8"), default="auto",
        help="onnx backend: int8 graphs where the export has them (auto), or force fp32/int8",
    )
    parser.add_argument(
        "--decoder-precision", choices=("fp32", "bf16"), default="fp32",
        help="segany's PyTorch decoder: fp32 (default; the official model's masks) or bf16 (faster clicks "
        "on CPUs with AVX-512 BF16 or AMX, masks very close to fp32's; slower on other CPUs). Figures: "
        "benchmarks/RESULTS.md",
    )
    parser.add_argument(
        "--encoder-precision", choices=("fp32", "bf16"), default="fp32",
        help="torch backend's image encoder: fp32 (default) or bf16 (faster on CPUs with AVX-512 BF16 or AMX, "
        "embedding very close to fp32's; slower on other CPUs). Figures: benchmarks/RESULTS.md",
    )
    parser.add_argument(
        "--compile-decoder", action="store_true",
        help="compile segany's PyTorch decoder with torch.compile: same masks, after a one-off compilation "
        "at the first prompt (needs a C++ compiler); worth it with --decoder-precision bf16 over many prompts, "
        "on the CPUs where benchmarks/RESULTS.md shows a gain",
    )
    parser.add_argument(
        "--compile-encoder", action="store_true",
        help="torch backend: compile the image encoder with torch.compile: faster encoding after a one-off "
        "compilation at the first image (needs a C++ compiler); pays off over many images. Figures: "
        "benchmarks/RESULTS.md",
    )


def predictor_from_args(args: argparse.Namespace) -> Any:
    """The predictor the ``--checkpoint``, ``--device``, ``--backend``, ``--precision``,
    ``--decoder-precision``, ``--encoder-precision``, ``--compile-decoder`` and ``--compile-encoder`` ask for."""
    if getattr(args, "backend", "torch") == "torch":
        from segany.inference.predictor import SamPredictor

        return SamPredictor(
            load_model_from_args(args),
            decoder_precision=getattr(args, "decoder_precision", "fp32"),
            compile_decoder=getattr(args, "compile_decoder", False),
            encoder_precision=getattr(args, "encoder_precision", "fp32"),
            compile_encoder=getattr(args, "compile_encoder", False),
        )
    if getattr(args, "encoder_precision", "fp32") != "fp32":
        raise SeganyError("--encoder-precision applies to the torch backend; with --backend onnx use --precision int8")
    if getattr(args, "compile_encoder", False):
        raise SeganyError("--compile-encoder applies to the torch backend; --backend onnx encodes in onnxruntime")
    if args.device != "cpu":
        raise SeganyError("--backend onnx runs on the CPU; drop --device")
    from segany.build import default_weights_path
    from segany.export.backend import predictor_for

    # The packaged model by its file, so that its export is cached like any checkpoint's.
    source = args.checkpoint or default_weights_path() or None
    quantize = "int8" if args.precision == "int8" else None
    return predictor_for(
        source,
        "onnx",
        precision=args.precision,
        quantize=quantize,
        decoder_precision=getattr(args, "decoder_precision", "fp32"),
        compile_decoder=getattr(args, "compile_decoder", False),
    )


def check_device(device: str) -> str:
    """``device`` if torch knows it and this machine has it; else a :class:`SeganyError` (exit 2)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise SeganyError(f"--device {device!r}: not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    available = {
        "cpu": lambda: True,
        "cuda": torch.cuda.is_available,
        "mps": lambda: bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
        "xpu": lambda: bool(getattr(torch, "xpu", None)) and torch.xpu.is_available(),
    }.get(dev.type)
    if available is not None and not available():
        raise SeganyError(f"--device {device}: no {dev.type} device is available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SeganyError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_model_from_args(args: argparse.Namespace) -> Any:
    from segany.build import load_model

    return load_model(args.checkpoint, device=check_device(args.device))
