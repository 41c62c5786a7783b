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
        raise PromptError(f"malformed {what} {text!r}: numbers must be finite (no nan or inf)")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """``X,Y`` (foreground) or ``X,Y,LABEL`` with LABEL 1 (foreground) or 0 (background)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 3 and parts[2].lower() not in ("0", "1", "0.0", "1.0"):
        raise PromptError(f"malformed point {text!r}: the label must be 1 (foreground) or 0 (background)")
    values = parse_numbers(text, "point", (2, 3))
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise PromptError(f"malformed point {text!r}: the label must be 1 (foreground) or 0 (background)")
    return values[0], values[1], int(values[2]) if len(values) == 3 else 1


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
    """The inference options (:class:`segany.inference.options.InferenceOptions`), each saying which
    backend it applies to; ``segany info --system`` says which pay off on this machine, and
    benchmarks/RESULTS.md what they gain and cost."""
    group = parser.add_argument_group(
        "inference options",
        "which of these pay off on this machine: 'segany info --system'; figures: benchmarks/RESULTS.md",
    )
    group.add_argument(
        "--backend", choices=("torch", "onnx"), default=None,
        help="run the model in PyTorch (default) or onnxruntime; with onnx, the image encoder runs in "
        "onnxruntime (int8 with --onnx-precision int8) and prompts in segany's PyTorch decoder (faster on CPUs), "
        "or in onnxruntime too when --checkpoint is a 'segany export' folder; checkpoints are exported once "
        "to ~/.cache/segany/onnx",
    )
    group.add_argument(
        "--decoder", choices=("auto", "reference", "fast", "lowrank", "bf16", "onnx"), default=None,
        help="both backends: the click decoder. auto (default; exact: the fast decoder on a CPU, the model's own "
        "elsewhere), reference (always the model's own), fast, lowrank (exact; SAM's 64x64 grid only), bf16 "
        "(approximate; for CPUs with AVX-512 BF16 or AMX, slower on others), onnx (the exported graphs; onnx backend)",
    )
    group.add_argument(
        "--decoder-precision", choices=("fp32", "bf16"), default=None,
        help="the older spelling of --decoder bf16 (bf16) and of the default (fp32)",
    )
    group.add_argument(
        "--encoder-precision", choices=("fp32", "bf16"), default=None,
        help="torch backend: the image encoder in fp32 (default) or bf16 (approximate; for CPUs with AVX-512 BF16 "
        "or AMX, slower on others)",
    )
    group.add_argument(
        "--compile-decoder", action="store_true", default=None,
        help="segany's PyTorch decoder (not --decoder onnx): compile it with torch.compile; same masks, a one-off "
        "compilation at the first prompt (needs a C++ compiler); pays off over many prompts",
    )
    group.add_argument(
        "--compile-encoder", action="store_true", default=None,
        help="torch backend: compile the image encoder with torch.compile; same masks, a one-off compilation at "
        "the first image (needs a C++ compiler); pays off over many images",
    )
    group.add_argument(
        "--onnx-precision", "--precision", dest="onnx_precision", choices=("auto", "fp32", "int8"), default=None,
        help="onnx backend: int8 graphs where the export has them (auto, default), or force fp32/int8 "
        "(int8: approximate, exported on first use)",
    )
    group.add_argument(
        "--num-threads", type=int, default=None, metavar="N",
        help="onnx backend: onnxruntime's threads (default: PyTorch's)",
    )


def inference_options_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~segany.inference.options.InferenceOptions` the command line asks for, validated once
    (a flag that does not apply to the backend: an error naming it, exit 2)."""
    from segany.inference.options import InferenceOptions

    return InferenceOptions.build(
        backend=getattr(args, "backend", None),
        decoder=getattr(args, "decoder", None),
        decoder_precision=getattr(args, "decoder_precision", None),
        encoder_precision=getattr(args, "encoder_precision", None),
        compile_decoder=getattr(args, "compile_decoder", None),
        compile_encoder=getattr(args, "compile_encoder", None),
        onnx_precision=getattr(args, "onnx_precision", None),
        num_threads=getattr(args, "num_threads", None),
    )


def predictor_from_args(args: argparse.Namespace) -> Any:
    """The predictor the ``--checkpoint``, ``--device`` and inference options ask for."""
    options = inference_options_from_args(args)
    if options.backend == "torch":
        from segany.inference.predictor import SamPredictor

        return SamPredictor(load_model_from_args(args), options=options)
    if args.device != "cpu":
        raise SeganyError("--backend onnx runs on the CPU; drop --device")
    from segany.build import default_weights_path
    from segany.export.backend import predictor_for

    # The packaged model by its file, so that its export is cached like any checkpoint's.
    source = args.checkpoint or default_weights_path() or None
    quantize = "int8" if options.onnx_precision == "int8" else None
    return predictor_for(source, options=options, quantize=quantize)


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
