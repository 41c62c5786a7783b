"""Opt-in ``torch.compile`` for the click decoders: ``SamPredictor(model, compile_decoder=True)``.

A click runs a few hundred small kernels: products of the ~7 prompt tokens, LayerNorms, softmaxes and
dtype conversions over the image rows, each a separate pass over memory in eager PyTorch. Inductor fuses
the elementwise work into its neighbours and, with frozen weights, runs the products on pre-packed
weights. Only the decoders' ``transform`` (the two-way transformer and heads) is compiled: on a 2-core
AVX-512 CPU it gets ~15% faster (bfloat16 decoder: 6.6-7.2 against 5.3-6.1 ms), a whole click 5-10%;
compiled, the upscaling was no faster (figures in ``benchmarks/RESULTS.md``).

The price is a compilation of 10-17 s (ViT-B) at the first prompt of a predictor (frozen weights are
constants of the compiled code, so it is not cached on disk across processes), once more for a new kind
of batch (one prompt, a batch of prompts), and a working C++ compiler. Shapes are dynamic: more points,
a box or a mask prompt do not recompile. If compilation fails, the decoder runs eagerly and a warning
says why.

Frozen weights are read at compilation: :class:`segany.inference.predictor.SamPredictor` rebuilds its
compiled decoders when a decoder or prompt-encoder parameter has been replaced or changed in place
(see :func:`weights_key`).
"""

from __future__ import annotations

import itertools
import types
import warnings
from typing import Any, Callable, TypeVar

import torch

from segany.model import Sam

__all__ = ["COMPILE_OPTIONS", "CompiledCall", "compile_methods", "weights_key"]

# Freezing: weights become constants (pre-packed for the products), the larger share of the gain.
# cpp_wrapper: the compiled graph's kernel calls from C++, not Python (~0.5 ms a click).
COMPILE_OPTIONS: dict[str, Any] = {"freezing": True, "cpp_wrapper": True}

D = TypeVar("D")


class CompiledCall:
    """``method`` through ``torch.compile`` (dynamic shapes, no autograd), or eagerly once compilation
    has failed."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self.eager = method
        # Compile the method's own code, not a no_grad decorator's wrapper: Dynamo keeps its compiled
        # graphs per code object, and every decorated method shares the decorator's.
        inner = getattr(getattr(method, "__func__", None), "__wrapped__", None)
        target = types.MethodType(inner, method.__self__) if inner is not None else method  # type: ignore[attr-defined]
        self.compiled = torch.compile(target, dynamic=True, options=COMPILE_OPTIONS)
        self.failed: str | None = None

    @torch.no_grad()  # inference only (frozen weights); also one grad mode, so one compiled graph
    def __call__(self, *args: Any) -> Any:
        if self.failed is None:
            try:
                return self.compiled(*args)
            except Exception as error:  # compilers fail in many ways: no C++ compiler, an unsupported op, ...
                # Bad input fails eagerly too, and that error is the one the caller should see.
                result = self.eager(*args)
                first_line = (str(error).strip().splitlines() or [""])[0][:200]
                self.failed = f"{type(error).__name__}: {first_line}"
                warnings.warn(f"torch.compile failed, decoding without it ({self.failed})", RuntimeWarning, stacklevel=3)
                return result
        return self.eager(*args)


def compile_methods(decoder: D, *names: str) -> D:
    """Replace the bound methods ``names`` of ``decoder`` (in place) by :class:`CompiledCall` wrappers."""
    for name in names:
        setattr(decoder, name, CompiledCall(getattr(decoder, name)))
    return decoder


def weights_key(model: Sam) -> tuple[tuple[int, int], ...]:
    """Identity and in-place version of every prompt-encoder and mask-decoder tensor: changes when one is
    replaced (``load_state_dict(assign=True)``, ``param.data = ...``) or modified in place by autograd-
    visible operations (optimizer steps, ``load_state_dict``). Writes through ``param.data`` are not seen."""
    tensors = itertools.chain(
        model.prompt_encoder.parameters(), model.prompt_encoder.buffers(), model.mask_decoder.parameters()
    )
    return tuple((t.data_ptr(), t._version) for t in tensors)
