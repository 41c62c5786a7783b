"""Classical interactive segmentation baselines driven by SAM-style prompts: GrabCut and Otsu.

Both mirror the predictor's interface (``set_image`` then ``predict`` with ``point_coords`` /
``point_labels`` / ``box``) so the evaluation protocols can run them unchanged, for context next to
SAM's numbers.

:class:`OtsuSegmenter` (points only): Otsu's threshold of the grey image, split into 8-connected
components on each side of it; the mask is the components under the positive clicks minus those under
the negative ones. Strong where objects differ from their background in brightness alone (nuclei).

:class:`GrabCutSegmenter` uses OpenCV's ``cv2.grabCut``:

* box only: ``GC_INIT_WITH_RECT`` (outside = background, inside = probably foreground);
* clicks (with or without a box): ``GC_INIT_WITH_MASK``. Every click paints a disk of sure
  foreground / background; without a box, a rectangle around the positive clicks, grown by a
  margin, is "probably foreground" and the rest "probably background". Only the connected
  components of the result that contain a positive click are kept.

OpenCV seeds its k-means from a global RNG; it is reset to ``seed`` before every call so that
results are reproducible.
"""

from __future__ import annotations

import cv2
import numpy as np

from segany.errors import ImageError, PromptError

__all__ = ["GrabCutSegmenter", "OtsuSegmenter"]


def _rgb_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ImageError(f"expected an RGB uint8 image of shape [H, W, 3], got {img.dtype} {img.shape}")
    if min(img.shape[:2]) < 2:
        raise ImageError(f"image too small: {img.shape[:2]}")
    return img


def _check_points(
    coords: np.ndarray | None, labels: np.ndarray | None, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validated clicks: int64 [N, 2] ``(x, y)`` rounded to pixels and int64 [N] labels (N may be 0)."""
    if coords is None:
        if labels is not None:
            raise PromptError("point_labels given without point_coords")
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    if labels is None:
        raise PromptError("point_coords needs point_labels")
    c = np.asarray(coords, dtype=np.float64)
    lab = np.asarray(labels)
    if c.ndim != 2 or c.shape[1] != 2:
        raise PromptError(f"point_coords must have shape [N, 2], got {c.shape}")
    if lab.shape != (c.shape[0],):
        raise PromptError(f"point_labels must have shape [{c.shape[0]}], got {lab.shape}")
    if not np.isin(lab, (0, 1)).all():
        raise PromptError("point_labels must be 0 (background) or 1 (foreground)")
    if not np.isfinite(c).all() or (c < 0).any() or (c[:, 0] > w - 1).any() or (c[:, 1] > h - 1).any():
        raise PromptError(f"points must lie inside the {w}x{h} image")
    return np.rint(c).astype(np.int64), lab.astype(np.int64)


class OtsuSegmenter:
    """Otsu's threshold and connected components, with a predictor-like API (clicks only)."""

    def __init__(self) -> None:
        self._components: np.ndarray | None = None  # int32 [H, W]: component ids, unique across both sides

    def set_image(self, image: np.ndarray) -> None:
        """Threshold and label the image once: RGB uint8 [H, W, 3]."""
        grey = cv2.cvtColor(_rgb_image(image), cv2.COLOR_RGB2GRAY)
        _, binary = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        n_fg, fg = cv2.connectedComponents(binary, connectivity=8)
        _, bg = cv2.connectedComponents(1 - binary, connectivity=8)
        self._components = np.where(binary > 0, fg, bg + n_fg).astype(np.int32)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
    ) -> np.ndarray:
        """The components under the positive clicks minus those under the negative ones.

        Args:
            point_coords: [N, 2] ``(x, y)`` pixel coordinates; point_labels: [N] 1 or 0; box: unsupported.
        Returns:
            bool [H, W] mask.
        """
        if self._components is None:
            raise RuntimeError("call set_image() before predict()")
        if box is not None:
            raise PromptError("the Otsu baseline takes clicks only, not a box")
        h, w = self._components.shape
        points, labels = _check_points(point_coords, point_labels, h, w)
        if not (labels == 1).any():
            raise PromptError("at least one positive (label 1) click is needed")
        ids = self._components[points[:, 1], points[:, 0]]
        keep = set(ids[labels == 1].tolist()) - set(ids[labels == 0].tolist())
        return np.isin(self._components, sorted(keep))


class GrabCutSegmenter:
    """GrabCut with a predictor-like API.

    Args:
        iterations: GrabCut iterations per ``predict`` call.
        click_radius: radius in pixels of the disk each click paints.
        margin_frac: without a box, the rectangle around the positive clicks grows by this
            fraction of the image's longer side on every side.
        seed: OpenCV RNG seed set before each call.
    """

    def __init__(self, iterations: int = 5, click_radius: int = 5, margin_frac: float = 0.15, seed: int = 0) -> None:
        self.iterations = iterations
        self.click_radius = click_radius
        self.margin_frac = margin_frac
        self.seed = seed
        self._image: np.ndarray | None = None  # BGR uint8 [H, W, 3], what OpenCV expects

    def set_image(self, image: np.ndarray) -> None:
        """Set the image to segment: RGB uint8 [H, W, 3]."""
        self._image = np.ascontiguousarray(_rgb_image(image)[:, :, ::-1])

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
    ) -> np.ndarray:
        """Segment the object indicated by the prompts.

        Args:
            point_coords: [N, 2] ``(x, y)`` pixel coordinates, or None.
            point_labels: [N] 1 (foreground) or 0 (background), required with ``point_coords``.
            box: [4] ``(x0, y0, x1, y1)`` pixel coordinates, or None.

        Returns:
            bool [H, W] mask.
        """
        if self._image is None:
            raise RuntimeError("call set_image() before predict()")
        h, w = self._image.shape[:2]
        points, labels = _check_points(point_coords, point_labels, h, w)
        rect = self._check_box(box, h, w)
        if rect is None and len(points) == 0:
            raise PromptError("give at least one point or a box")
        if rect is None and not (labels == 1).any():
            raise PromptError("without a box, at least one positive (label 1) click is needed")

        cv2.setRNGSeed(self.seed)
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        if len(points) == 0:
            assert rect is not None
            mask = np.zeros((h, w), np.uint8)
            cv2.grabCut(self._image, mask, rect, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
            return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)

        mask = self._initial_mask(points, labels, rect, h, w)
        cv2.grabCut(self._image, mask, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        out = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
        pos = points[labels == 1]
        if len(pos):
            # Keep only the parts the user pointed at (GrabCut's colour model can leak elsewhere).
            _, comp = cv2.connectedComponents(out.astype(np.uint8), connectivity=8)
            keep = {int(comp[y, x]) for x, y in pos if out[y, x]}
            if keep:
                out = np.isin(comp, sorted(keep))
        return out

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _check_box(box: np.ndarray | None, h: int, w: int) -> tuple[int, int, int, int] | None:
        if box is None:
            return None
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        if b.shape != (4,) or not np.isfinite(b).all():
            raise PromptError(f"box must be 4 finite numbers (x0, y0, x1, y1), got {np.asarray(box).shape}")
        x0, y0, x1, y1 = (int(round(v)) for v in b)
        if x0 < 0 or y0 < 0 or x1 > w - 1 or y1 > h - 1 or x1 <= x0 or y1 <= y0:
            raise PromptError(f"box {b.tolist()} is empty or outside the {w}x{h} image")
        if x0 == 0 and y0 == 0 and x1 == w - 1 and y1 == h - 1:
            raise PromptError("box covers the whole image; GrabCut needs background outside it")
        return x0, y0, x1 - x0 + 1, y1 - y0 + 1

    def _initial_mask(
        self, points: np.ndarray, labels: np.ndarray, rect: tuple[int, int, int, int] | None, h: int, w: int
    ) -> np.ndarray:
        """GrabCut label map from the clicks (and box): uint8 [H, W] of cv2.GC_* values."""
        if rect is not None:
            mask = np.full((h, w), cv2.GC_BGD, np.uint8)
            x, y, rw, rh = rect
        else:
            mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
            pos = points[labels == 1]
            m = int(round(self.margin_frac * max(h, w)))
            x, y = max(int(pos[:, 0].min()) - m, 0), max(int(pos[:, 1].min()) - m, 0)
            rw = min(int(pos[:, 0].max()) + m, w - 1) - x + 1
            rh = min(int(pos[:, 1].max()) + m, h - 1) - y + 1
        mask[y : y + rh, x : x + rw] = cv2.GC_PR_FGD
        if not np.isin(mask, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
            # The rectangle swallowed the image: let the border ring seed the background model.
            mask[[0, -1], :] = cv2.GC_PR_BGD
            mask[:, [0, -1]] = cv2.GC_PR_BGD
        for (px, py), lab in zip(points, labels, strict=True):
            cv2.circle(mask, (int(px), int(py)), self.click_radius, int(cv2.GC_FGD if lab else cv2.GC_BGD), -1)
        return mask
