"""The click decoders: sparse prompt tokens -> low-resolution mask logits and IoU predictions.

Every decoder implements :class:`ClickDecoder`: ``prepare`` once per image (and per batch of mask
prompts), ``run`` the prompt encoder and the prompt-dependent transformer per prompt batch, ``upscale``
the prompts whose masks are wanted. :class:`segany.inference.predictor.SamPredictor` picks one with ``decoder=``:

============  =====  ===============================================================================
name          exact  what
============  =====  ===============================================================================
reference     yes    the model's own decoder, called as it is (:mod:`.reference`)
fast          yes    the same function with about half the multiply-adds (:mod:`.fast`)
lowrank       yes    clicks without forming the image rows after the first layer (:mod:`.lowrank`);
                     for SAM's large grids, opt-in
bf16          no     the fast decoder's image-side products in bfloat16, for CPUs with AVX-512 BF16 or
                     AMX (:mod:`.bf16`), opt-in
============  =====  ===============================================================================

``"auto"`` (the default) resolves to ``fast`` on a CPU, where ``benchmarks/RESULTS.md`` measures it
faster than the model's decoder, and to ``reference`` elsewhere (no GPU benchmark yet) or for a model
whose decoder is neither the standard one nor SAM-HQ's. ``fast`` and ``bf16`` also run SAM-HQ models
(one mask per prompt, as the HQ decoder gives it); ``lowrank`` refuses them. ``auto`` never picks an
approximate decoder. "Exact" means the model's logits to float rounding (tests compare to 1e-4).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypeVar

import torch

from segany.inference.decoders._kernels import Points, sparse_prompts
from segany.inference.decoders.fast import is_hq, supports_fast
from segany.model import Sam

__all__ = [
    "DECODERS",
    "Points",
    "ClickDecoder",
    "DecoderChoice",
    "DecoderName",
    "SKIPPED_LOGIT",
    "build_decoder",
    "decode",
    "resolve_decoder",
    "sparse_prompts",
]

DecoderName = Literal["reference", "fast", "lowrank", "bf16"]
DecoderChoice = Literal["auto", "reference", "fast", "lowrank", "bf16"]
DECODERS: tuple[DecoderName, ...] = ("reference", "fast", "lowrank", "bf16")

# Logits given to the masks that decode(skip_below=...) does not compute: far below any threshold, finite
# so that resampling them stays well defined.
SKIPPED_LOGIT = -1.0e4

S = TypeVar("S")  # a decoder's per-image state
P = TypeVar("P")  # its pending (not yet upscaled) output of one prompt batch


class ClickDecoder(Protocol[S, P]):
    """What :class:`~segany.inference.predictor.SamPredictor` needs from a click decoder.

    Shapes: embedding ``(1, C, g, g)``; mask prompts ``(B or 1, 1, 4g, 4g)``; points ``(B, N, 2)`` and
    labels ``(B, N)``, boxes ``(B, 4)``, in the resized frame; ``M`` masks per prompt (3, or 1 without
    ``multimask_output``). Inference only: no autograd. Safe to call from several threads at once
    (per-call temporaries, per-thread buffers)."""

    name: str
    exact: bool  # the model's logits to float rounding

    def prepare(self, features: torch.Tensor, mask_input: torch.Tensor | None = None) -> S:
        """Per-image (or per mask-prompt batch) work, done once and reused by every prompt batch."""
        ...

    def run(
        self, state: S, points: Points | None, boxes: torch.Tensor | None, multimask_output: bool
    ) -> tuple[P, torch.Tensor]:
        """The prompt encoder and the prompt-dependent transformer: a pending output and the IoU
        predictions ``(B, M)``."""
        ...

    def upscale(self, state: S, pending: P, index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, M, 4g, 4g)`` of the pending output, or only of the prompts ``index`` (1-D)."""
        ...

    def compile(self) -> None:
        """Run the prompt-dependent transformer through ``torch.compile`` from now on (see :mod:`.compile`)."""
        ...


def resolve_decoder(choice: str, model: Sam, device: torch.device) -> DecoderName:
    """The decoder that ``choice`` means for ``model`` on ``device`` (``"auto"`` resolved, see above)."""
    if choice == "auto":
        return "fast" if device.type == "cpu" and supports_fast(model) else "reference"
    if choice not in DECODERS:
        raise ValueError(f"decoder must be 'auto' or one of {', '.join(DECODERS)}, not {choice!r}")
    return choice  # type: ignore[return-value]


def build_decoder(name: DecoderName, model: Sam, *, compiled: bool = False) -> ClickDecoder[Any, Any]:
    """A new decoder ``name`` for ``model``'s current weights (``compiled``: see :meth:`ClickDecoder.compile`).
    Raises ``ValueError`` when the model's decoder is not one that ``name`` reproduces."""
    decoder: ClickDecoder[Any, Any]
    if name == "reference":
        from segany.inference.decoders.reference import ReferenceDecoder

        decoder = ReferenceDecoder(model)
    elif name == "fast":
        from segany.inference.decoders.fast import FastDecoder

        decoder = FastDecoder(model)
    elif name == "lowrank":
        from segany.inference.decoders.lowrank import LowRankDecoder

        if is_hq(model):
            raise ValueError("decoder='lowrank' does not run SAM-HQ models; use decoder='fast'")
        decoder = LowRankDecoder(model)
    elif name == "bf16":
        from segany.inference.decoders.bf16 import BFloat16Decoder

        if not supports_fast(model):
            raise ValueError("decoder='bf16' needs the standard mask decoder or SAM-HQ's; use decoder='reference'")
        decoder = BFloat16Decoder(model)
    else:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {name!r}")
    if compiled:
        decoder.compile()
    return decoder


@torch.no_grad()
def decode(
    decoder: ClickDecoder[S, Any],
    state: S,
    points: Points | None,
    boxes: torch.Tensor | None,
    multimask_output: bool,
    skip_below: float | None,
    mask_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt batch through ``decoder``: logits ``(B, M, *mask_size)`` and IoU predictions ``(B, M)``.

    ``skip_below``: a prompt whose IoU predictions are all ``<= skip_below`` is not upscaled (the dearest
    part of a decoder); its logits are :data:`SKIPPED_LOGIT`."""
    pending, iou = decoder.run(state, points, boxes, multimask_output)
    if skip_below is None:
        return decoder.upscale(state, pending), iou
    keep = torch.nonzero((iou > skip_below).any(dim=1)).squeeze(1)
    low_res = torch.full((*iou.shape, *mask_size), SKIPPED_LOGIT, dtype=torch.float32, device=iou.device)
    if len(keep):
        low_res[keep] = decoder.upscale(state, pending, keep).to(low_res.dtype)
    return low_res, iou
