"""``decoder="reference"``: the model's own prompt encoder and mask decoder, called as they are.

The escape hatch when a result from a rewritten decoder is in doubt, the path for models whose decoder
was replaced (research code), and what ``decoder="auto"`` uses off the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from segany.inference.decoders._kernels import Points
from segany.inference.decoders.compile import CompiledCall
from segany.model import Sam

__all__ = ["ReferenceDecoder", "ReferenceState"]


@dataclass
class ReferenceState:
    """The embedding ``(1, C, g, g)``, the dense positional encoding ``(1, C, g, g)`` and the mask
    prompts of one batch ``(B or 1, 1, 4g, 4g)`` (None: no mask)."""

    features: torch.Tensor
    image_pe: torch.Tensor
    mask_input: torch.Tensor | None


class ReferenceDecoder:
    """``model.mask_decoder(...)`` behind the :class:`~segany.inference.decoders.ClickDecoder` interface.
    It upscales inside the model's decoder, so ``upscale`` only selects prompts: no work is saved for
    prompts that a caller drops (``predict_low_res(skip_below=...)``)."""

    name = "reference"
    exact = True

    def __init__(self, model: Sam) -> None:
        self.model = model
        self._decode: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self._model_decoder

    @torch.no_grad()
    def prepare(self, features: torch.Tensor, mask_input: torch.Tensor | None = None) -> ReferenceState:
        return ReferenceState(features, self.model.prompt_encoder.get_dense_pe(), mask_input)

    @torch.no_grad()
    def run(
        self, state: ReferenceState, points: Points | None, boxes: torch.Tensor | None, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # All prompts through the model's own prompt encoder in one call, as the official predictor does.
        sparse, dense = self.model.prompt_encoder(points, boxes, state.mask_input)
        return self._decode(state.features, state.image_pe, sparse, dense, multimask_output)

    def upscale(self, state: ReferenceState, pending: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return pending if index is None else pending[index]

    def _model_decoder(
        self, features: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        low_res, iou = self.model.mask_decoder(features, image_pe, sparse, dense, multimask)
        return low_res, iou

    def compile(self) -> None:
        self._decode = CompiledCall(self._model_decoder)
