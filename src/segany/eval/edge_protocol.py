"""Zero-shot edge detection on BSDS500 (SAM paper §D.2), and a Canny baseline for context.

SAM's edge map for an image: a regular 16 x 16 grid of foreground points, all three masks of each
point (768 masks, no filtering), their unthresholded probability maps (sigmoid of the mask
logits at full resolution), then :func:`segany.eval.edge_maps.sobel_edges_from_probs` (Sobel
magnitude kept on each mask's outer boundary, pixel-wise max, rescaled to [0, 1]) and
:func:`segany.eval.edge_maps.edge_nms`. The paper also removes redundant masks by NMS with an unstated
threshold; we do not: a pixel-wise max is unchanged by duplicate masks.

Canny baseline: the soft map is the fraction of Canny edge maps (Gaussian-blurred grey image, L2
gradient, low threshold 0.4 x high, high thresholds spread over 10..250) in which a pixel is an
edge -- strong, persistent edges score high. No training, like SAM's map.

Scores: the BSDS500 benchmark (:mod:`segany.eval.edges`) against every annotator's boundaries in
``gt/<image stem>.mat``: ODS, OIS, AP, R50 and the dataset precision-recall curve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from segany.errors import SeganyError
from segany.eval.edges import EdgeCounts, evaluate_edge_image, load_bsds_boundaries, summarize_edges
from segany.eval.report import Panel, ReportWriter, case_picture, pick_extremes, plot_pr_curves, method_entries
from segany.io.datasets import Sample, SegmentationDataset

__all__ = [
    "EdgeDataError",
    "EdgeSettings",
    "EdgeImage",
    "EdgesResult",
    "point_grid",
    "sam_edge_map",
    "canny_edge_map",
    "gt_path",
    "evaluate_edges",
    "write_edges_report",
]


class EdgeDataError(SeganyError):
    """The data set lacks the boundary ground truth (``gt/<stem>.mat``) edge evaluation needs."""


@dataclass(frozen=True)
class EdgeSettings:
    points_per_side: int = 16
    points_per_batch: int = 16  # bounds the 1024 x 1024 upsampling: 16 x 3 maps at a time
    nthresh: int = 99
    max_dist: float = 0.0075
    band: int = 1


@dataclass
class EdgeImage:
    """One image's benchmark counts, its best F (at its own best threshold) and a small edge map."""

    image_id: int
    file_name: str
    counts: EdgeCounts = field(repr=False)
    best_f: float
    edge_u8: np.ndarray = field(repr=False)  # uint8 [H, W] edge map x 255, kept for the report


@dataclass
class EdgesResult:
    method: str
    settings: EdgeSettings
    images: list[EdgeImage]
    seconds: float = 0.0

    def scores(self) -> Any:
        return summarize_edges([im.counts for im in self.images])

    def to_json(self) -> dict[str, Any]:
        sc = self.scores()
        return {
            "metrics": sc.to_dict(),
            "curves": {"thresholds": sc.thresholds.tolist(), "recall": sc.recall.tolist(),
                       "precision": sc.precision.tolist()},
            "num_images": len(self.images),
            "seconds": round(self.seconds, 2),
        }


def point_grid(n: int, height: int, width: int) -> np.ndarray:
    """``n x n`` points at the centres of a regular grid of cells: float32 [n*n, 2] (x, y) pixels."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    xs, ys = np.meshgrid(t * width, t * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def sam_edge_map(predictor: Any, image: np.ndarray, settings: EdgeSettings | None = None) -> np.ndarray:
    """SAM's edge map (paper §D.2) for an RGB uint8 [H, W, 3] image: float32 [H, W] in [0, 1].

    The probability maps of all masks (3 per grid point) are kept in float16 (768 maps of a
    481 x 321 image take 240 MB) because the Sobel step rescales by the maximum over all of them.
    """
    import torch

    from segany.eval.edge_maps import edge_nms, sobel_edges_from_probs

    st = settings or EdgeSettings()
    predictor.set_image(image)
    h, w = image.shape[:2]
    pts = torch.as_tensor(point_grid(st.points_per_side, h, w), device=predictor.device)
    probs: torch.Tensor | None = None
    for s in range(0, len(pts), st.points_per_batch):
        chunk = pts[s : s + st.points_per_batch]
        coords = predictor.transform.apply_coords_torch(chunk[:, None, :], (h, w))
        labels = torch.ones(len(chunk), 1, dtype=torch.int, device=predictor.device)
        logits, _, _ = predictor.predict_torch(coords, labels, multimask_output=True, return_logits=True)
        maps = torch.sigmoid(logits.float()).flatten(0, 1)  # [chunk * M, H, W], point-major
        m = logits.shape[1]
        if probs is None:
            probs = torch.empty((len(pts) * m, h, w), dtype=torch.float16, device=maps.device)
        probs[s * m : s * m + len(maps)] = maps
    assert probs is not None
    edges = sobel_edges_from_probs(probs, band=st.band)
    return edge_nms(edges)


def canny_edge_map(image: np.ndarray, levels: int = 25, sigma: float = 1.5) -> np.ndarray:
    """Soft Canny edges of an RGB uint8 [H, W, 3] image: float32 [H, W] in [0, 1]."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (0, 0), sigma)
    acc = np.zeros(grey.shape, np.float32)
    for high in np.linspace(10, 250, levels):
        acc += cv2.Canny(grey, 0.4 * float(high), float(high), L2gradient=True) > 0
    return acc / levels


def gt_path(data_root: Path, sample: Sample) -> Path:
    """Where a BSDS500-style folder keeps an image's boundary ground truth."""
    return Path(data_root) / "gt" / f"{Path(sample.file_name).stem}.mat"


def evaluate_edges(
    dataset: SegmentationDataset | Sequence[Sample],
    data_root: Path,
    edge_fn: Callable[[np.ndarray], np.ndarray],
    name: str,
    settings: EdgeSettings | None = None,
    progress: bool = True,
) -> EdgesResult:
    """Edge maps from ``edge_fn(image)`` for every image, scored against ``gt/<stem>.mat``.

    Raises:
        EdgeDataError: an image has no ground-truth file, or its size differs from the image's.
    """
    from tqdm import tqdm

    st = settings or EdgeSettings()
    samples = list(dataset)
    missing = [s.file_name for s in samples if not gt_path(data_root, s).is_file()]
    if missing:
        raise EdgeDataError(
            f"{data_root}: no boundary ground truth gt/<stem>.mat for {len(missing)} image(s), e.g. {missing[0]} "
            "(edge evaluation needs BSDS500's groundTruth files)"
        )
    start = time.perf_counter()
    images = []
    for sample in tqdm(samples, desc=f"edges ({name})", unit="img", disable=not progress):
        image = sample.load_image()
        gts = load_bsds_boundaries(gt_path(data_root, sample))
        if any(g.shape != image.shape[:2] for g in gts):
            raise EdgeDataError(f"{gt_path(data_root, sample)}: ground truth size differs from {sample.file_name}")
        edge = np.asarray(edge_fn(image), np.float32)
        counts = evaluate_edge_image(edge, gts, nthresh=st.nthresh, max_dist=st.max_dist)
        r = counts.cnt_r / np.maximum(counts.sum_r, 1)
        p = counts.cnt_p / np.maximum(counts.sum_p, 1)
        f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
        images.append(EdgeImage(sample.image_id, sample.file_name, counts, float(f.max()),
                                (np.clip(edge, 0, 1) * 255).astype(np.uint8)))
    return EdgesResult(name, st, images, time.perf_counter() - start)


def write_edges_report(
    writer: ReportWriter,
    results: Sequence[EdgesResult],
    samples: Mapping[int, Sample],
    data_root: Path,
    compare: Sequence[Mapping[str, Any]] = (),
    num_cases: int = 3,
) -> None:
    """Score table, PR curves and best/worst images into ``writer``."""
    if not results:
        return
    keys = ["ODS", "OIS", "AP", "R50"]
    entries = method_entries(results, compare)
    rows = [[name + tag, js.get("num_images", 0), *[js["metrics"].get(k, float("nan")) for k in keys]]
            for name, js, tag in entries]
    st = results[0].settings
    writer.table(
        "Results", ["method", "images", *keys], rows,
        note=(f"BSDS500 benchmark against every annotator ({st.nthresh} thresholds, match distance "
              f"{st.max_dist} x diagonal). SAM: {st.points_per_side}x{st.points_per_side} point grid, "
              f"3 masks per point, Sobel on the mask probabilities, edge NMS. For reference, the paper's "
              "Table 3 (all 200 test images, ViT-H): SAM ODS .768 OIS .786 AP .794 R50 .928; Canny ODS .600 "
              "OIS .640 AP .580."),
    )
    curves = {name + tag: (js["curves"]["recall"], js["curves"]["precision"], js["metrics"]["ODS"])
              for name, js, tag in entries if "curves" in js}
    writer.plot(
        "precision_recall.png", plot_pr_curves(curves, "BSDS500 boundaries"), "Precision-recall (dataset level)"
    )
    pictures = []
    for res in results:
        best, worst = pick_extremes(res.images, lambda im: im.best_f, num_cases)
        for kind, group in (("best", best), ("worst", worst)):
            for im in group:
                sample = samples[im.image_id]
                gts = load_bsds_boundaries(gt_path(data_root, sample))
                gt_mean = np.mean([g.astype(np.float32) for g in gts], axis=0)
                pic = case_picture(sample.load_image(), [
                    Panel("image"),
                    Panel(f"{res.method} edges (best F {im.best_f:.3f})", heatmap=im.edge_u8 / 255.0),
                    Panel(f"ground truth ({len(gts)} annotators)", heatmap=gt_mean),
                ])
                stem = Path(im.file_name).stem
                pictures.append(
                    (f"{res.method}_{kind}_{stem}", pic, f"{res.method}, {kind}: {im.file_name}, F {im.best_f:.3f}")
                )
    writer.cases(f"Best and worst images by their own best F ({num_cases} each)", pictures)
