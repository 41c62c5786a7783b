"""Automatic masks as object proposals (SAM paper §D.3), scored with class-agnostic mask AR.

The automatic mask generator runs with the paper's proposal setup -- no crops, no predicted-IoU or
stability filter, box NMS at 0.9 -- except that the point grid is configurable (the paper uses
64 x 64; the default here is 32 x 32, which CPUs can afford). Masks are ranked by the mean of
their predicted IoU and stability score and the best ``max_proposals`` (1000) are kept; that
mean is also the proposal's score. Recall comes from pycocotools
(:func:`segany.eval.metrics.coco_proposal_ar`, ``useCats=0``): AR@N for every budget N, and by
object size at the largest budget (plus at 100).

Per image, the average best overlap (ABO: mean over objects of the best IoU among the top 100
proposals) picks the best and worst cases for the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from segany.eval.metrics import coco_proposal_ar
from segany.eval.report import (
    Panel,
    ReportWriter,
    case_picture,
    method_entries,
    metric_rows,
    pick_extremes,
    plot_curves,
)
from segany.io.datasets import Sample, SegmentationDataset
from segany.io.rle import decode_rle, encode_mask, to_coco_rle

__all__ = [
    "ProposalSettings",
    "ImageProposals",
    "ProposalsResult",
    "make_generator",
    "rank_proposals",
    "evaluate_proposals",
    "write_proposals_report",
]


@dataclass(frozen=True)
class ProposalSettings:
    """Generator knobs (paper §D.3 except the grid) and the recall budgets."""

    points_per_side: int = 32
    points_per_batch: int = 64
    box_nms_thresh: float = 0.9
    pred_iou_thresh: float = 0.0
    stability_score_thresh: float = 0.0
    max_proposals: int = 1000
    budgets: tuple[int, ...] = (1, 10, 100, 1000)


@dataclass
class ImageProposals:
    """One image's ranked proposals (COCO RLEs, best first) and its ABO@100."""

    image_id: int
    file_name: str
    num_objects: int
    rles: list[dict[str, Any]] = field(repr=False)
    scores: list[float]
    abo: float


@dataclass
class ProposalsResult:
    method: str
    settings: ProposalSettings
    images: list[ImageProposals]
    recall: dict[str, float]
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        metrics = dict(self.recall)
        abo = [im.abo for im in self.images if np.isfinite(im.abo)]
        metrics["ABO@100"] = float(np.mean(abo)) if abo else float("nan")
        metrics["proposals_per_image"] = float(np.mean([len(im.rles) for im in self.images])) if self.images else 0.0
        metrics["num_objects"] = sum(im.num_objects for im in self.images)
        return {"metrics": metrics, "num_images": len(self.images), "seconds": round(self.seconds, 2)}


def make_generator(model: Any, settings: ProposalSettings) -> Any:
    """segany's automatic mask generator with the proposal setup (output: COCO RLE)."""
    from segany.inference.automatic import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(
        model,
        points_per_side=settings.points_per_side,
        points_per_batch=settings.points_per_batch,
        pred_iou_thresh=settings.pred_iou_thresh,
        stability_score_thresh=settings.stability_score_thresh,
        box_nms_thresh=settings.box_nms_thresh,
        output_mode="coco_rle",
    )


def rank_proposals(records: Sequence[Mapping[str, Any]], height: int, width: int, max_proposals: int
                   ) -> tuple[list[dict[str, Any]], list[float]]:
    """Generator records -> (COCO RLEs, scores), by mean(predicted IoU, stability) descending,
    at most ``max_proposals``. A record's ``segmentation`` may be an RLE or a bool [H, W] mask."""
    scored = sorted(
        ((0.5 * (float(r["predicted_iou"]) + float(r["stability_score"])), i) for i, r in enumerate(records)),
        key=lambda s: (-s[0], s[1]),
    )[:max_proposals]
    rles, scores = [], []
    for score, i in scored:
        seg = records[i]["segmentation"]
        rles.append(to_coco_rle(seg, height, width) if isinstance(seg, Mapping) else encode_mask(np.asarray(seg, bool)))
        scores.append(score)
    return rles, scores


def _abo(rles: list[dict[str, Any]], sample: Sample) -> float:
    from pycocotools import mask as mask_utils

    gts = [a.rle for a in sample.annotations if not a.iscrowd]
    if not gts:
        return float("nan")
    if not rles:
        return 0.0
    ious = np.asarray(mask_utils.iou(rles, gts, [0] * len(gts))).reshape(len(rles), len(gts))
    return float(ious.max(axis=0).mean())


def evaluate_proposals(
    dataset: SegmentationDataset | Sequence[Sample],
    generator: Any,
    settings: ProposalSettings | None = None,
    name: str = "sam",
    progress: bool = True,
) -> ProposalsResult:
    """Proposals for every image of ``dataset`` from ``generator.generate(image)``, then AR.

    Args:
        dataset: images with instance annotations (limit it when building the data set).
        generator: anything whose ``generate(RGB uint8 [H, W, 3])`` returns official-style records
            (``segmentation``, ``predicted_iou``, ``stability_score``).
        settings: ranking and recall budgets (the generator itself is configured by its maker).
    """
    from tqdm import tqdm

    from segany.eval.boxes import coco_ground_truth

    st = settings or ProposalSettings()
    start = time.perf_counter()
    samples = list(dataset)
    images, flat = [], []
    for sample in tqdm(samples, desc=f"proposals ({name})", unit="img", disable=not progress):
        records = generator.generate(sample.load_image())
        rles, scores = rank_proposals(records, sample.height, sample.width, st.max_proposals)
        n_obj = sum(1 for a in sample.annotations if not a.iscrowd)
        images.append(ImageProposals(sample.image_id, sample.file_name, n_obj, rles, scores, _abo(rles[:100], sample)))
        flat += [{"image_id": sample.image_id, "segmentation": r, "score": s} for r, s in zip(rles, scores)]
    gt = coco_ground_truth(samples)
    recall = coco_proposal_ar(gt, flat, max_dets=st.budgets)
    if 100 in st.budgets and max(st.budgets) != 100:
        recall.update({k: v for k, v in coco_proposal_ar(gt, flat, max_dets=(100,)).items() if k != "AR@100"})
    return ProposalsResult(name, st, images, recall, time.perf_counter() - start)


def write_proposals_report(
    writer: ReportWriter,
    results: Sequence[ProposalsResult],
    samples: Mapping[int, Sample],
    compare: Sequence[Mapping[str, Any]] = (),
    num_cases: int = 3,
) -> None:
    """AR table, AR-vs-budget plot and best/worst images into ``writer``."""
    if not results:
        return
    st = results[0].settings
    top = max(st.budgets)
    keys = [f"AR@{n}" for n in st.budgets] + [f"AR{s}@{top}" for s in "sml"] + ["ABO@100", "proposals_per_image"]
    entries = method_entries(results, compare)
    rows = metric_rows(entries, keys)
    writer.table(
        "Results", ["method", "objects", *keys], rows,
        note=(f"Class-agnostic mask average recall (IoU 0.5:0.95, pycocotools) with at most N proposals per image; "
              f"ARs/m/l by object size. Generator: {st.points_per_side}x{st.points_per_side} points, box NMS "
              f"{st.box_nms_thresh}, predicted-IoU filter {st.pred_iou_thresh}, stability filter "
              f"{st.stability_score_thresh}, no crops; ranked by mean(predicted IoU, stability), top "
              f"{st.max_proposals} kept. ABO@100: mean over objects of the best IoU among the top 100."),
    )
    curves = {name + tag: (list(st.budgets), [js["metrics"].get(f"AR@{n}", float("nan")) for n in st.budgets])
              for name, js, tag in entries}
    writer.plot("ar_vs_proposals.png", plot_curves(curves, "proposals per image", "AR", "AR vs. number of proposals",
                                                   marks=list(st.budgets)), "Average recall vs. number of proposals")
    pictures = []
    for res in results:
        best, worst = pick_extremes(res.images, lambda im: im.abo, num_cases)
        for kind, group in (("best", best), ("worst", worst)):
            for im in group:
                sample = samples[im.image_id]
                gts = [a.mask() for a in sample.annotations if not a.iscrowd]
                props = [decode_rle(r) for r in im.rles[:20]]
                pic = case_picture(sample.load_image(), [
                    Panel(f"ground truth ({len(gts)} objects)", masks=gts),
                    Panel(f"top {len(props)} proposals, ABO@100 {im.abo:.3f}", masks=props),
                ])
                stem = im.file_name.rsplit(".", 1)[0].replace("/", "_")
                pictures.append(
                    (f"{res.method}_{kind}_{stem}", pic, f"{res.method}, {kind}: {im.file_name}, ABO@100 {im.abo:.3f}")
                )
    writer.cases(f"Best and worst images by ABO@100 ({num_cases} each)", pictures)
