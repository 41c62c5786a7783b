"""Methods behind one prompt API, for the point and box protocols.

:class:`Segmenter` is what the protocols call: ``set_image`` once per image, then
``predict_batch`` for many prompt sets at once. Two adapters provide it:

* :class:`PredictorSegmenter` wraps a :class:`~segany.inference.predictor.SamPredictor` and sends
  whole batches through ``predict_torch`` (one decoder call per chunk);
* :class:`PromptSegmenter` wraps anything with an official-style ``predict(point_coords,
  point_labels, box, ...)`` -- a classical baseline such as GrabCut, or a test double -- and calls
  it once per prompt set.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from segany.errors import PromptError

__all__ = ["Prediction", "Segmenter", "PredictorSegmenter", "PromptSegmenter", "as_segmenter", "stack_or_none"]


@dataclass
class Prediction:
    """Masks for a batch of prompt sets.

    Attributes:
        masks: bool [B, M, H, W] in original image pixels.
        scores: float32 [B, M]; NaN where the method gives no score.
        logits: float32 [B, M, h, w] low-resolution logits, or None when the method has none.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray | None


class Segmenter(Protocol):
    """What the prompt protocols need from a method (a SAM predictor or a classical baseline)."""

    name: str

    def set_image(self, image: np.ndarray) -> None:
        """Prepare for prompts on an RGB uint8 [H, W, 3] image."""

    def predict_batch(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_inputs: np.ndarray | None,
        multimask: bool,
    ) -> Prediction:
        """Masks for ``B`` prompt sets: points float [B, N, 2] (x, y pixels), labels int [B, N],
        boxes float [B, 4] (x0, y0, x1, y1), mask_inputs float [B, 1, h, w] previous logits."""


def stack_or_none(items: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """``np.stack(items)``, or None if any item is None."""
    return None if any(i is None for i in items) else np.stack(items)  # type: ignore[arg-type]


class PredictorSegmenter:
    """A :class:`~segany.inference.predictor.SamPredictor` behind the :class:`Segmenter` API.

    Prompts go through ``predict_torch`` in chunks of at most ``max_masks`` output masks, which
    bounds the memory of the full-resolution upsampling.
    """

    def __init__(self, predictor: Any, name: str = "sam", max_masks: int = 24) -> None:
        self.predictor = predictor
        self.name = name
        self.max_masks = max_masks

    def set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)

    def predict_batch(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_inputs: np.ndarray | None,
        multimask: bool,
    ) -> Prediction:
        import torch

        p = self.predictor
        size = p.original_size
        dev = p.device
        n = len(points) if points is not None else len(boxes)  # type: ignore[arg-type]
        step = max(1, self.max_masks // (3 if multimask else 1))
        masks, scores, logits = [], [], []
        for s in range(0, n, step):
            e = min(n, s + step)
            coords_t = labels_t = boxes_t = mask_t = None
            if points is not None:
                coords_t = p.transform.apply_coords_torch(
                    torch.as_tensor(points[s:e], dtype=torch.float, device=dev), size
                )
                labels_t = torch.as_tensor(np.asarray(labels)[s:e], dtype=torch.int, device=dev)
            if boxes is not None:
                boxes_t = p.transform.apply_boxes_torch(
                    torch.as_tensor(boxes[s:e], dtype=torch.float, device=dev), size
                )
            if mask_inputs is not None:
                mask_t = torch.as_tensor(mask_inputs[s:e], dtype=torch.float, device=dev)
            m, sc, lo = p.predict_torch(coords_t, labels_t, boxes_t, mask_t, multimask_output=multimask)
            masks.append(m.cpu().numpy())
            scores.append(sc.float().cpu().numpy())
            logits.append(lo.float().cpu().numpy())
        return Prediction(np.concatenate(masks), np.concatenate(scores), np.concatenate(logits))


class PromptSegmenter:
    """Any object with ``set_image(image)`` and an official-style ``predict(point_coords,
    point_labels, box, ...)`` (e.g. a classical baseline), called once per prompt set.

    ``predict`` may return ``(masks, scores, logits)``, ``(masks, scores)`` or just a mask; masks
    are [M, H, W] or [H, W]. ``mask_input`` and ``multimask_output`` are passed only when its
    signature accepts them. A prompt the method refuses (:class:`~segany.errors.PromptError`, e.g.
    GrabCut given a box that covers the whole image) yields an empty mask and is counted in
    ``failures``, so one odd object does not end a whole evaluation.
    """

    def __init__(self, method: Any, name: str | None = None) -> None:
        self.method = method
        self.name = name or getattr(method, "name", type(method).__name__)
        params = inspect.signature(method.predict).parameters
        self._takes_mask = "mask_input" in params
        self._takes_multimask = "multimask_output" in params
        self.failures = 0
        self._size: tuple[int, int] = (0, 0)

    def set_image(self, image: np.ndarray) -> None:
        self.method.set_image(image)
        self._size = (int(image.shape[0]), int(image.shape[1]))

    def _one(self, out: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        masks, scores, logits = (out + (None, None))[:3] if isinstance(out, tuple) else (out, None, None)
        masks = np.asarray(masks).astype(bool)
        if masks.ndim == 2:
            masks = masks[None]
        sc = np.full(len(masks), np.nan, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
        return masks, sc, (None if logits is None else np.asarray(logits, np.float32))

    def predict_batch(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_inputs: np.ndarray | None,
        multimask: bool,
    ) -> Prediction:
        n = len(points) if points is not None else len(boxes)  # type: ignore[arg-type]
        outs = []
        for i in range(n):
            kwargs: dict[str, Any] = {
                "point_coords": None if points is None else np.asarray(points[i], dtype=float),
                "point_labels": None if labels is None else np.asarray(labels[i]),
                "box": None if boxes is None else np.asarray(boxes[i], dtype=float),
            }
            if self._takes_mask and mask_inputs is not None:
                kwargs["mask_input"] = mask_inputs[i]
            if self._takes_multimask:
                kwargs["multimask_output"] = multimask
            try:
                outs.append(self._one(self.method.predict(**kwargs)))
            except PromptError:
                self.failures += 1
                outs.append((np.zeros((1, *self._size), bool), np.full(1, np.nan, np.float32), None))
        return Prediction(
            np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs]), stack_or_none([o[2] for o in outs])
        )


def as_segmenter(method: Any, name: str | None = None) -> Segmenter:
    """Wrap a SamPredictor (batched path) or any official-style predictor (one call per prompt)."""
    if hasattr(method, "predict_batch"):
        return method  # type: ignore[no-any-return]
    if hasattr(method, "predict_torch") and hasattr(method, "transform"):
        return PredictorSegmenter(method, name or "sam")
    return PromptSegmenter(method, name)
