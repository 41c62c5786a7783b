"""Tests for segany.eval.metrics: IoU, interactive scores, COCO AP / AR on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from segany.eval.metrics import (
    InteractiveScores,
    batched_mask_iou,
    coco_proposal_ar,
    coco_segm_ap,
    mask_iou,
)

H, W = 96, 128


def _box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def _gt(masks_per_image: dict[int, list[tuple[np.ndarray, int]]]) -> dict:
    images, anns = [], []
    for img_id, items in masks_per_image.items():
        images.append({"id": img_id, "height": H, "width": W, "file_name": f"{img_id}.png"})
        for m, cat in items:
            r = _rle(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": cat,
                    "segmentation": r,
                    "area": float(m.sum()),
                    "bbox": list(mask_utils.toBbox(r)),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}


# ----------------------------------------------------------------------------- IoU


def test_mask_iou_known_values() -> None:
    a = _box_mask(0, 0, 10, 10)
    b = _box_mask(5, 0, 15, 10)  # overlap 50, union 150
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, np.zeros_like(a)) == 0.0
    assert mask_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0
    ignore = _box_mask(10, 0, 15, 10)  # hide b's extra part: overlap 50, union 100
    assert mask_iou(a, b, ignore=ignore) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mask_iou(a, a[:-1])


def test_batched_mask_iou_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((5, 20, 30)) > 0.5
    g = rng.random((5, 20, 30)) > 0.6
    p[4] = False
    g[4] = False
    ign = rng.random((5, 20, 30)) > 0.8
    got = batched_mask_iou(torch.from_numpy(p), torch.from_numpy(g), torch.from_numpy(ign))
    want = [mask_iou(p[i], g[i], ign[i]) for i in range(5)]
    assert got.tolist() == pytest.approx(want)
    assert got[4].item() == 1.0


# ----------------------------------------------------------------------------- interactive scores


def test_interactive_scores_miou_carries_last_value_forward() -> None:
    s = InteractiveScores()
    s.add([0.5, 0.8, 0.95])
    s.add([0.2])  # finished after one click
    assert len(s) == 2
    assert s.miou_at(1) == pytest.approx(0.35)
    assert s.miou_at(2) == pytest.approx(0.5)
    assert s.miou_at(9) == pytest.approx((0.95 + 0.2) / 2)
    with pytest.raises(ValueError):
        s.miou_at(0)
    with pytest.raises(ValueError):
        s.add([])


def test_interactive_scores_noc_and_failures() -> None:
    s = InteractiveScores()
    s.add([0.5, 0.86, 0.91])  # 85%: 2 clicks, 90%: 3 clicks
    s.add([0.9])  # 1 click for both (0.9 >= 0.9)
    s.add([0.1] * 25 + [0.99])  # reaches only at click 26 > max_clicks -> counts as 20
    assert s.noc_per_object(0.85).tolist() == [2, 1, 20]
    assert s.noc(0.85) == pytest.approx(23 / 3)
    assert s.noc(0.9) == pytest.approx(24 / 3)
    assert s.failures(0.9) == 1
    assert s.failures(0.9, max_clicks=30) == 0
    assert s.noc_per_object(0.9, max_clicks=30).tolist() == [3, 1, 26]
    d = s.to_dict()
    assert d["num_objects"] == 3
    assert set(d) >= {"miou@1", "miou@2", "miou@3", "miou@5", "miou@9", "noc@85", "noc@90", "nof@90"}
    assert d["noc@90"] == pytest.approx(8.0)


def test_interactive_scores_empty() -> None:
    s = InteractiveScores()
    assert math.isnan(s.miou_at(1)) and math.isnan(s.noc(0.9)) and s.failures(0.9) == 0


# ----------------------------------------------------------------------------- COCO AP


def test_segm_ap_perfect_predictions() -> None:
    small = _box_mask(2, 2, 12, 12)  # area 100 < 32^2
    medium = _box_mask(40, 20, 80, 60)  # area 1600
    gt = _gt({1: [(small, 1), (medium, 2)], 2: [(_box_mask(0, 0, 50, 40), 1)]})
    dets = [
        {"image_id": 1, "category_id": 1, "segmentation": small, "score": 0.9},
        {"image_id": 1, "category_id": 2, "segmentation": _rle(medium), "score": 0.8},
        {"image_id": 2, "category_id": 1, "segmentation": _box_mask(0, 0, 50, 40), "score": 0.7},
    ]
    ap = coco_segm_ap(gt, dets)
    assert ap["AP"] == pytest.approx(1.0)
    assert ap["AP50"] == pytest.approx(1.0) and ap["AP75"] == pytest.approx(1.0)
    assert ap["APs"] == pytest.approx(1.0) and ap["APm"] == pytest.approx(1.0)
    assert ap["APl"] == -1.0  # no large object (area > 96^2) in the ground truth


def test_segm_ap_partial_overlap_hand_computed() -> None:
    g = _box_mask(20, 20, 60, 60)  # 40 x 40 = 1600
    d = _box_mask(20, 20, 84, 60)  # 64 x 40: IoU = 1600 / 2560 = 0.625
    ap = coco_segm_ap(_gt({1: [(g, 1)]}), [{"image_id": 1, "category_id": 1, "segmentation": d, "score": 1.0}])
    # Matched at IoU thresholds 0.50, 0.55, 0.60 (3 of 10) with precision 1, else 0.
    assert ap["AP"] == pytest.approx(0.3)
    assert ap["AP50"] == pytest.approx(1.0)
    assert ap["AP75"] == pytest.approx(0.0)


def test_segm_ap_half_recall_and_ranking() -> None:
    a, b = _box_mask(0, 0, 40, 40), _box_mask(60, 40, 100, 80)
    gt = _gt({1: [(a, 1), (b, 1)]})
    # One of two objects found: precision 1 for recall thresholds 0.00..0.50 -> 51 of 101.
    ap = coco_segm_ap(gt, [{"image_id": 1, "category_id": 1, "segmentation": a, "score": 0.5}])
    assert ap["AP"] == pytest.approx(51 / 101)
    # A false positive ranked above both true positives: precision 0, 1/2, 2/3 -> the
    # interpolated precision is 2/3 at every recall level.
    fp = _box_mask(100, 0, 128, 20)
    dets = [
        {"image_id": 1, "category_id": 1, "segmentation": fp, "score": 0.9},
        {"image_id": 1, "category_id": 1, "segmentation": a, "score": 0.8},
        {"image_id": 1, "category_id": 1, "segmentation": b, "score": 0.7},
    ]
    assert coco_segm_ap(gt, dets)["AP"] == pytest.approx(2 / 3)
    # Wrong category: nothing matches.
    wrong = [{"image_id": 1, "category_id": 2, "segmentation": a, "score": 0.5}]
    assert coco_segm_ap(gt, wrong)["AP"] == pytest.approx(0.0)


def test_segm_ap_empty_detections_and_unknown_image() -> None:
    gt = _gt({1: [(_box_mask(0, 0, 40, 40), 1)]})
    assert coco_segm_ap(gt, [])["AP"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        coco_segm_ap(gt, [{"image_id": 7, "category_id": 1, "segmentation": _box_mask(0, 0, 4, 4), "score": 1.0}])


# ----------------------------------------------------------------------------- proposals AR


def test_proposal_ar_respects_budgets_and_sizes() -> None:
    target = _box_mask(2, 2, 12, 12)  # small object
    gt = _gt({1: [(target, 2)]})  # category is ignored for proposals
    junk = [
        {"image_id": 1, "segmentation": _box_mask(60 + i % 20, 50, 80 + i % 20, 70), "score": 1.0 - i * 1e-3}
        for i in range(150)
    ]
    # The right proposal is ranked 121st: inside the 1000 budget, outside the 100 budget.
    props = junk[:120] + [{"image_id": 1, "segmentation": target, "score": 0.5}] + junk[120:]
    props[120]["score"] = 1.0 - 120.5e-3
    ar = coco_proposal_ar(gt, props)
    assert ar["AR@100"] == pytest.approx(0.0)
    assert ar["AR@1000"] == pytest.approx(1.0)
    assert ar["ARs@1000"] == pytest.approx(1.0)
    assert ar["ARm@1000"] == -1.0 and ar["ARl@1000"] == -1.0


def test_proposal_ar_partial_iou() -> None:
    g = _box_mask(20, 20, 60, 60)
    d = _box_mask(20, 20, 84, 60)  # IoU 0.625: recalled at 3 of 10 IoU thresholds
    ar = coco_proposal_ar(_gt({1: [(g, 1)]}), [{"image_id": 1, "segmentation": d, "score": 1.0}], max_dets=[10])
    assert ar == pytest.approx({"AR@10": 0.3, "ARs@10": -1.0, "ARm@10": 0.3, "ARl@10": -1.0})
