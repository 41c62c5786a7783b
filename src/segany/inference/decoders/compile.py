"""Opt-in ``torch.compile`` for the click decoders (``SamPredictor(model, compile_decoder=True)``) and the
image encoder (``compile_encoder=True``).

A click runs a few hundred small kernels: products of the ~7 prompt tokens, LayerNorms, softmaxes and
dtype conversions over the image rows, each a separate pass over memory in eager PyTorch. Inductor fuses
the elementwise work into its neighbours and, with frozen weights, runs the products on pre-packed
weights. Only a decoder's prompt-dependent transformer is compiled; compiled, the upscaling was no
faster. The image encoder (:class:`EncoderCall`) is compiled whole, with static shapes (its input is
always the padded square). Gains, compilation times and memory are measured in ``benchmarks/RESULTS.md``:
the compilation (at the first prompt or image of a predictor, not cached on disk: frozen weights are
constants of the compiled code) pays off over many prompts or images. It needs a working C++ compiler;
if compilation fails, the work runs eagerly and a warning says why. Shapes are dynamic for the decoders:
more points, a box or a mask prompt do not recompile.

Frozen weights are read at compilation: :class:`segany.inference.predictor.SamPredictor` rebuilds a
compiled decoder or encoder when one of its parameters has been replaced or changed in place (see
:func:`segany.io.identity.tensors_key`). Calls of one compiled function are serialised (a lock): Dynamo's
compilation and guard state are not meant to be entered from several threads at once.
"""

from __future__ import annotations

import threading
import types
import warnings
from typing import Any, Callable, TypeVar

import torch

from segany.io.identity import tensors_key
from segany.model import Sam

__all__ = ["COMPILE_OPTIONS", "CompiledCall", "EncoderCall", "compile_methods", "tensors_key", "weights_key"]

# Freezing: weights become constants (pre-packed for the products), the larger share of the gain.
# cpp_wrapper: the compiled graph's kernel calls from C++, not Python (~0.5 ms a click).
# Set as Inductor's configuration while compiling: passed as torch.compile(options=...), freezing did
# not take effect in the torch versions measured.
COMPILE_OPTIONS: dict[str, Any] = {"freezing": True, "cpp_wrapper": True}

D = TypeVar("D")


class CompiledCall:
    """``method`` through ``torch.compile`` (dynamic shapes unless ``dynamic=False``, no autograd), or
    eagerly once compilation has failed; ``doing`` names the work in the warning ("decoding")."""

    def __init__(self, method: Callable[..., Any], *, dynamic: bool = True, doing: str = "decoding") -> None:
        self.eager = method
        self.doing = doing
        # Compile the method's own code (not a no_grad decorator's wrapper), copied: Dynamo keeps its
        # compiled graphs per code object, and weights changed in place pass its guards, so a graph
        # frozen with the old values would be reused by the next CompiledCall of the same method.
        func = getattr(method, "__func__", method)
        func = getattr(func, "__wrapped__", func)
        target: Callable[..., Any] = method
        if isinstance(func, types.FunctionType):
            target = _own_code(func)
            if hasattr(method, "__self__"):
                target = types.MethodType(target, method.__self__)  # type: ignore[attr-defined]
        self.compiled = torch.compile(target, dynamic=dynamic)
        self.failed: str | None = None
        self._lock = threading.Lock()

    @torch.no_grad()  # inference only (frozen weights); also one grad mode, so one compiled graph
    def __call__(self, *args: Any) -> Any:
        if self.failed is None:
            try:
                # Compilation happens inside the call (the first, or a recompilation).
                with self._lock, torch._inductor.config.patch(COMPILE_OPTIONS):
                    return self.compiled(*args)
            except Exception as error:  # compilers fail in many ways: no C++ compiler, an unsupported op, ...
                # Bad input fails eagerly too, and that error is the one the caller should see.
                result = self.eager(*args)
                first_line = (str(error).strip().splitlines() or [""])[0][:200]
                self.failed = f"{type(error).__name__}: {first_line}"
                message = f"torch.compile failed, {self.doing} without it ({self.failed})"
                warnings.warn(message, RuntimeWarning, stacklevel=3)
                return result
        return self.eager(*args)


def _own_code(func: types.FunctionType) -> types.FunctionType:
    """``func`` with a code object of its own (same body)."""
    copy = types.FunctionType(
        func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__, func.__closure__
    )
    copy.__kwdefaults__ = func.__kwdefaults__
    return copy


def compile_methods(decoder: D, *names: str) -> D:
    """Replace the bound methods ``names`` of ``decoder`` (in place) by :class:`CompiledCall` wrappers."""
    for name in names:
        setattr(decoder, name, CompiledCall(getattr(decoder, name)))
    return decoder


class EncoderCall:
    """The image encoder on a preprocessed ``(B, 3, S, S)`` batch, under bfloat16 autocast if ``bf16``
    (float32 embedding either way): one callable to compile, autocast included, or to run eagerly."""

    def __init__(self, encoder: torch.nn.Module, bf16: bool = False) -> None:
        self.encoder = encoder
        self.bf16 = bf16

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            features = self.encoder(image)
        return features.float()


def weights_key(model: Sam) -> tuple[tuple[int, int], ...]:
    """:func:`tensors_key` of what a compiled decoder freezes: the prompt encoder and the mask decoder."""
    return tensors_key(model.prompt_encoder, model.mask_decoder)
