"""Inference options: one frozen object, validated once, shared by every predictor backend and the CLI.

:class:`InferenceOptions` holds every speed/precision choice of :class:`~segany.inference.predictor.SamPredictor`,
:class:`~segany.inference.onnx_backend.OnnxPredictor` and :func:`segany.export.backend.predictor_for`.
Each option says which backend it applies to (:data:`APPLIES_TO`); a value that does not apply to the
chosen backend is refused with one line naming the option and its CLI flag. :func:`recommendations` reads
this CPU's features (:mod:`segany.inference.cpu`) and says which settings to use; ``segany info --system``
prints them. Measured gains and accuracy of each setting are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch

from segany.errors import SeganyError
from segany.inference.cpu import cpu_flags, cpu_has_bf16
from segany.inference.decoders import DECODERS

__all__ = ["APPLIES_TO", "InferenceOptions", "OptionsError", "Recommendation", "recommendations"]

Backend = Literal["torch", "onnx"]
Decoder = Literal["auto", "reference", "fast", "lowrank", "bf16", "onnx"]
Precision = Literal["fp32", "bf16"]
OnnxPrecision = Literal["auto", "fp32", "int8"]

# option -> (CLI flag, where it applies). "torch decoder": segany's PyTorch decoder, which runs prompts
# with the torch backend and, given the model, with the onnx backend too.
APPLIES_TO: dict[str, tuple[str, str]] = {
    "backend": ("--backend", "both backends"),
    "decoder": ("--decoder", "both backends (onnx: the exported graphs, or the PyTorch decoder given the model)"),
    "encoder_precision": ("--encoder-precision", "the torch backend"),
    "compile_encoder": ("--compile-encoder", "the torch backend"),
    "compile_decoder": ("--compile-decoder", "segany's PyTorch decoder (not decoder='onnx')"),
    "onnx_precision": ("--onnx-precision", "the onnx backend"),
    "num_threads": ("--num-threads", "the onnx backend"),
    "decode_chunk": ("--decode-chunk", "segany's PyTorch decoder (not decoder='onnx')"),
    "max_mask_bytes": ("", "both backends"),
}


class OptionsError(SeganyError, ValueError):
    """An inference option with a bad value, or one that does not apply to the chosen backend."""


def _refuse(option: str, value: object, where: str) -> OptionsError:
    flag = APPLIES_TO[option][0]
    named = f"{option}={value!r}" + (f" ({flag})" if flag else "")
    return OptionsError(f"{named} applies to {APPLIES_TO[option][1]}; not to {where}")


@dataclass(frozen=True)
class InferenceOptions:
    """How a predictor runs. Every field has the exact, portable default; see :func:`recommendations`.

    Attributes:
        backend: ``"torch"`` (PyTorch) or ``"onnx"`` (onnxruntime image encoder; prompts in segany's
            PyTorch decoder when the model is at hand, else in the exported graphs).
        decoder: the click decoder (see :mod:`segany.inference.decoders`): ``"auto"`` (exact: the fast
            decoder on a CPU, the model's own elsewhere), ``"reference"`` (always the model's own),
            ``"fast"``, ``"lowrank"`` (exact, opt-in), ``"bf16"`` (approximate, opt-in, for CPUs with
            AVX-512 BF16 or AMX); ``"onnx"``: the exported decoder graphs (onnx backend only).
        encoder_precision: torch backend: ``"fp32"`` or ``"bf16"`` (bfloat16 autocast, approximate; for CPUs
            with AVX-512 BF16 or AMX). The onnx backend's encoder precision is ``onnx_precision``.
        compile_encoder: torch backend: the image encoder through ``torch.compile`` (same results to
            float rounding; a one-off compilation at the first image).
        compile_decoder: the PyTorch decoder's transformer through ``torch.compile`` (same results to
            float rounding; a one-off compilation at the first prompt).
        onnx_precision: onnx backend: ``"auto"`` (int8 graphs where the export has them), ``"fp32"`` or
            ``"int8"`` (approximate).
        num_threads: onnx backend: onnxruntime's intra-op threads (default: ``torch.get_num_threads()``).
        decode_chunk: prompts per PyTorch decoder call (same results); default: about 16384 embedding
            rows' worth on a CPU (4 prompts on SAM's 64x64 grid: the temporaries stay in cache), all at
            once elsewhere.
        max_mask_bytes: the largest mask array one ``predict_torch``/``predict_low_res`` call may return;
            a call with more prompts is refused before any work, with the number that fits.
    """

    backend: Backend = "torch"
    decoder: Decoder = "auto"
    encoder_precision: Precision = "fp32"
    compile_encoder: bool = False
    compile_decoder: bool = False
    onnx_precision: OnnxPrecision = "auto"
    num_threads: int | None = None
    decode_chunk: int | None = None
    max_mask_bytes: int = 8 << 30

    def __post_init__(self) -> None:
        self._check_values()
        self._check_backend()

    def _check_values(self) -> None:
        choices: dict[str, tuple[object, ...]] = {
            "backend": ("torch", "onnx"),
            "decoder": ("auto", *DECODERS, "onnx"),
            "encoder_precision": ("fp32", "bf16"),
            "onnx_precision": ("auto", "fp32", "int8"),
            "compile_encoder": (True, False),
            "compile_decoder": (True, False),
        }
        for option, allowed in choices.items():
            value = getattr(self, option)
            if value not in allowed or (isinstance(value, bool) != isinstance(allowed[0], bool)):
                shown = ", ".join(repr(a) for a in allowed)
                raise OptionsError(f"{option} must be one of {shown}, not {value!r}")
        for option in ("num_threads", "decode_chunk", "max_mask_bytes"):
            value = getattr(self, option)
            if value is None and option != "max_mask_bytes":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionsError(f"{option} must be a positive integer, not {value!r}")

    def _check_backend(self) -> None:
        if self.backend == "torch":
            if self.decoder == "onnx":
                raise _refuse("decoder", "onnx", "the torch backend")
            if self.onnx_precision != "auto":
                raise _refuse("onnx_precision", self.onnx_precision, "the torch backend")
            if self.num_threads is not None:
                raise _refuse("num_threads", self.num_threads, "the torch backend")
            return
        if self.encoder_precision != "fp32":
            raise _refuse("encoder_precision", self.encoder_precision, "the onnx backend (use onnx_precision='int8')")
        if self.compile_encoder:
            raise _refuse("compile_encoder", True, "the onnx backend (its encoder runs in onnxruntime)")
        if self.decoder == "onnx":
            if self.compile_decoder:
                raise _refuse("compile_decoder", True, "decoder='onnx' (the exported graphs)")
            if self.decode_chunk is not None:
                raise _refuse("decode_chunk", self.decode_chunk, "decoder='onnx' (the exported graphs)")

    # -- building ----------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        options: InferenceOptions | None = None,
        *,
        decoder_precision: str | None = None,
        **changes: Any,
    ) -> InferenceOptions:
        """``options`` (default: the defaults) with ``changes`` applied, validated once. Changes equal to
        None are ignored; ``decoder_precision="bf16"`` is the older spelling of ``decoder="bf16"``."""
        base = options if options is not None else cls()
        if not isinstance(base, InferenceOptions):
            raise OptionsError(f"options must be an InferenceOptions, not {type(base).__name__}")
        kept = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(kept) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise OptionsError(f"unknown inference option {unknown[0]!r}")
        if decoder_precision is not None:
            if decoder_precision not in ("fp32", "bf16"):
                raise OptionsError(f"decoder_precision must be 'fp32' or 'bf16', not {decoder_precision!r}")
            if decoder_precision == "bf16":
                chosen = kept.get("decoder", base.decoder)
                if chosen not in ("auto", "bf16"):
                    raise OptionsError(
                        f"decoder_precision='bf16' (the PyTorch decoder's bfloat16 variant) and decoder={chosen!r} "
                        "disagree: pass decoder='bf16'"
                    )
                kept["decoder"] = "bf16"
        return dataclasses.replace(base, **kept) if kept else base

    # -- what applies on a device ------------------------------------------------------------------

    def warn_for(self, device: torch.device, stacklevel: int = 3) -> None:
        """Warn about choices that will be slow on ``device`` (bfloat16 on a CPU without its instructions)."""
        if device.type != "cpu" or cpu_has_bf16():
            return
        for option, what in (("decoder", "clicks"), ("encoder_precision", "image encoding")):
            if getattr(self, option) == "bf16":
                warnings.warn(
                    f"{option}='bf16' on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): "
                    f"{what} will be slower than with the float32 default",
                    RuntimeWarning,
                    stacklevel=stacklevel,
                )

    @property
    def exact(self) -> bool:
        """Whether every choice reproduces the model's float32 results to float rounding."""
        return self.decoder != "bf16" and self.encoder_precision == "fp32" and not (
            self.backend == "onnx" and self.onnx_precision == "int8"
        )


@dataclass(frozen=True)
class Recommendation:
    """One suggested configuration: what it is for, the options, and the same as CLI flags."""

    purpose: str
    options: InferenceOptions
    exact: bool
    why: str

    @property
    def flags(self) -> str:
        parts = []
        for f in dataclasses.fields(InferenceOptions):
            value = getattr(self.options, f.name)
            if value == f.default:
                continue
            flag = APPLIES_TO[f.name][0]
            parts.append(flag if value is True else f"{flag} {value}")
        return " ".join(parts) or "(defaults)"

    @property
    def python(self) -> str:
        changed = [
            f"{f.name}={getattr(self.options, f.name)!r}"
            for f in dataclasses.fields(InferenceOptions)
            if getattr(self.options, f.name) != f.default
        ]
        return f"InferenceOptions({', '.join(changed)})"


def recommendations(flags: frozenset[str] | None = None) -> list[Recommendation]:
    """Suggested settings for a CPU with the x86 feature ``flags`` (default: this one's), exact first.

    Based on the CPU inference figures of ``benchmarks/RESULTS.md``: the bfloat16 decoder and encoder pay
    off on CPUs with bfloat16 dot products (most with AMX) and are slower elsewhere; int8 onnxruntime
    encoders pay off with int8 dot products (VNNI/AMX); compiling pays off over many images or prompts."""
    flags = cpu_flags() if flags is None else flags
    bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    int8 = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    out = [
        Recommendation("exact (the default)", InferenceOptions(), True, "the official model's results, any CPU"),
        Recommendation(
            "exact, many images",
            InferenceOptions(compile_encoder=True),
            True,
            "the compiled encoder is faster after a one-off compilation at the first image",
        ),
    ]
    if bf16:
        amx = "amx_bf16" in flags
        out.append(
            Recommendation(
                "fastest, approximate",
                InferenceOptions(decoder="bf16", encoder_precision="bf16", compile_decoder=True, compile_encoder=True),
                False,
                "AMX: bfloat16 products are several times faster than float32 ones here"
                if amx
                else "AVX-512 BF16 (no AMX): the bfloat16 decoder and encoder were measured faster than float32",
            )
        )
    elif int8:
        out.append(
            Recommendation(
                "fastest, approximate",
                InferenceOptions(backend="onnx", onnx_precision="int8"),
                False,
                "VNNI: int8 products are fast here, bfloat16 ones are not (the onnxruntime int8 encoder)",
            )
        )
    return out
