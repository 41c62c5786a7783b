"""Tests for segany.ops.clicks: evaluation clicks (numpy) and training clicks (torch)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scipy import ndimage

from segany.ops.clicks import (
    Click,
    center_point,
    error_region_points,
    next_click,
    noisy_boxes,
    round_schedule,
    sample_points_uniform,
)


def _disk(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _padded_edt(region: np.ndarray) -> np.ndarray:
    """Independent reference: scipy's exact EDT with a 1-px background frame."""
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


# ----------------------------------------------------------------------------- center_point


def test_center_point_of_odd_square_is_its_centre() -> None:
    m = np.zeros((30, 40), bool)
    m[5:16, 10:21] = True  # 11 x 11, centre (15, 10)
    assert center_point(m) == (15, 10)


def test_center_point_ties_go_to_first_pixel_in_row_major_order() -> None:
    m = np.zeros((30, 40), bool)
    m[5:16, 10:31] = True  # 11 rows x 21 cols: distance 6 all along row 10 for x in 15..25
    assert center_point(m) == (15, 10)


def test_center_point_treats_image_border_as_boundary() -> None:
    m = np.zeros((9, 20), bool)
    m[:, :9] = True  # touches top, bottom and left borders; 9x9 square
    assert center_point(m) == (4, 4)


def test_center_point_prefers_larger_component_and_respects_ignore() -> None:
    small = _disk(60, 80, 15, 15, 4)
    big = _disk(60, 80, 50, 35, 12)
    assert center_point(small | big) == (50, 35)
    assert center_point(small | big, ignore=big) == (15, 15)


def test_center_point_empty_is_none() -> None:
    assert center_point(np.zeros((5, 5), bool)) is None
    ones = np.ones((5, 5), bool)
    assert center_point(ones, ignore=ones) is None


def test_center_point_reaches_maximum_distance_on_random_blobs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = ndimage.binary_opening(rng.random((40, 50)) > 0.35, iterations=2)
        if not m.any():
            continue
        x, y = center_point(m)
        ref = _padded_edt(m)
        assert m[y, x]
        assert ref[y, x] == pytest.approx(ref.max(), abs=1e-4)


# ----------------------------------------------------------------------------- next_click


def test_first_click_on_empty_prediction_is_positive_centre() -> None:
    gt = np.zeros((30, 40), bool)
    gt[5:16, 10:21] = True
    click = next_click(np.zeros_like(gt), gt)
    assert click == Click(15, 10, True)


def test_larger_false_positive_gives_negative_click_at_its_centre() -> None:
    gt = _disk(60, 80, 20, 30, 10)
    fp_blob = _disk(60, 80, 60, 30, 8)
    pred = gt.copy()
    pred[28:31, 18:21] = False  # small false negative hole, 3x3
    pred |= fp_blob
    click = next_click(pred, gt)
    assert click == Click(60, 30, False)


def test_larger_false_negative_gives_positive_click() -> None:
    gt = _disk(60, 80, 30, 30, 15)
    pred = gt & ~_disk(60, 80, 30, 30, 7)  # a hole of radius 7 inside the object
    pred[0:2, 70:72] = True  # tiny false positive
    assert next_click(pred, gt) == Click(30, 30, True)


def test_next_click_distance_matches_reference_on_random_errors() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        gt = ndimage.binary_opening(rng.random((40, 50)) > 0.4, iterations=2)
        pred = ndimage.binary_opening(rng.random((40, 50)) > 0.4, iterations=2)
        click = next_click(pred, gt)
        fn_d = _padded_edt(gt & ~pred)
        fp_d = _padded_edt(pred & ~gt)
        if fn_d.max() == 0 and fp_d.max() == 0:
            assert click is None
            continue
        assert click is not None
        best = max(fn_d.max(), fp_d.max())
        chosen = fn_d if click.is_positive else fp_d
        assert chosen[click.y, click.x] == pytest.approx(best, abs=1e-4)
        assert bool(gt[click.y, click.x]) == click.is_positive


def test_no_error_or_ignored_error_gives_none() -> None:
    gt = _disk(20, 20, 10, 10, 5)
    assert next_click(gt.copy(), gt) is None
    pred = gt.copy()
    pred[0:3, 0:3] = True
    assert next_click(pred, gt) is not None
    ignore = np.zeros_like(gt)
    ignore[0:3, 0:3] = True
    assert next_click(pred, gt, ignore=ignore) is None


def test_avoid_skips_already_clicked_pixels() -> None:
    gt = np.zeros((10, 10), bool)
    gt[4, 6] = True
    first = next_click(np.zeros_like(gt), gt)
    assert first == Click(6, 4, True)
    assert next_click(np.zeros_like(gt), gt, avoid=[first]) is None


def test_random_mode_labels_and_frequencies() -> None:
    gt = np.zeros((10, 10), bool)
    gt[0, 0:2] = True  # 2 FN pixels (pred empty there)
    pred = np.zeros_like(gt)
    pred[9, 0:6] = True  # 6 FP pixels
    rng = np.random.default_rng(0)
    clicks = [next_click(pred, gt, mode="random", rng=rng) for _ in range(2000)]
    assert all(c is not None and (gt[c.y, c.x] if c.is_positive else pred[c.y, c.x]) for c in clicks)
    frac_pos = np.mean([c.is_positive for c in clicks])
    assert 0.2 < frac_pos < 0.3  # expected 2 / 8
    again = [next_click(pred, gt, mode="random", rng=np.random.default_rng(0)) for _ in range(1)]
    assert again[0] == clicks[0]


def test_next_click_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        next_click(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(ValueError):
        next_click(np.zeros((3, 3), bool), np.ones((3, 3), bool), mode="bogus")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- training clicks


def test_sample_points_uniform_inside_masks_and_flags_empty() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 12, 17, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[2, 11, 16] = True  # last pixel only
    pts = sample_points_uniform(masks, generator=g)
    assert pts.shape == (3, 2) and pts.dtype == torch.float32
    x, y = int(pts[0, 0]), int(pts[0, 1])
    assert masks[0, y, x]
    assert pts[1].tolist() == [-1.0, -1.0]
    assert pts[2].tolist() == [16.0, 11.0]


def test_sample_points_uniform_is_uniform_and_reproducible() -> None:
    mask = torch.zeros(8, 8, dtype=torch.bool)
    cells = [(1, 1), (1, 6), (5, 2), (7, 7)]
    for y, x in cells:
        mask[y, x] = True
    masks = mask.expand(4000, 8, 8)
    pts = sample_points_uniform(masks, generator=torch.Generator().manual_seed(3))
    counts = {c: 0 for c in cells}
    for x, y in pts.long().tolist():
        counts[(y, x)] += 1
    assert all(850 < n < 1150 for n in counts.values()), counts  # expected 1000 each
    again = sample_points_uniform(masks, generator=torch.Generator().manual_seed(3))
    assert torch.equal(pts, again)


def test_noisy_boxes_std_follows_side_and_cap() -> None:
    n = 20000
    boxes = torch.tensor([[100.0, 100.0, 200.0, 500.0]]).repeat(n, 1)  # w=100, h=400
    out = noisy_boxes(boxes, generator=torch.Generator().manual_seed(0))
    d = out - boxes
    std = d.std(dim=0)
    assert std[0].item() == pytest.approx(10.0, rel=0.05)  # 10% of width
    assert std[2].item() == pytest.approx(10.0, rel=0.05)
    assert std[1].item() == pytest.approx(20.0, rel=0.05)  # 10% of 400 = 40, capped at 20
    assert std[3].item() == pytest.approx(20.0, rel=0.05)
    assert d.mean(dim=0).abs().max().item() < 0.5


def test_noisy_boxes_clamped_and_well_formed() -> None:
    boxes = torch.tensor([[0.0, 0.0, 30.0, 30.0], [50.0, 40.0, 50.0, 40.0]]).repeat(500, 1)
    out = noisy_boxes(boxes, std_frac=0.5, generator=torch.Generator().manual_seed(1), image_size=(45, 60))
    assert (out[:, 0] <= out[:, 2]).all() and (out[:, 1] <= out[:, 3]).all()
    assert out.min() >= 0
    assert (out[:, [0, 2]] <= 59).all() and (out[:, [1, 3]] <= 44).all()
    assert (out[:, 0] < 1e-6).any()  # clamping actually happened at the left border


def test_error_region_points_labels_and_frequencies() -> None:
    gt = torch.zeros(6, 6, dtype=torch.bool)
    pred = torch.zeros(6, 6, dtype=torch.bool)
    gt[0, 0] = True  # one FN pixel
    gt[3, 3] = pred[3, 3] = True  # correct pixel, never sampled
    pred[5, 1:4] = True  # three FP pixels
    n = 4000
    pts, labels = error_region_points(pred.expand(n, 6, 6), gt.expand(n, 6, 6), torch.Generator().manual_seed(0))
    xs, ys = pts[:, 0].long(), pts[:, 1].long()
    in_fn = gt[ys, xs] & ~pred[ys, xs]
    in_fp = pred[ys, xs] & ~gt[ys, xs]
    assert bool((in_fn | in_fp).all())
    assert torch.equal(labels, in_fn.long())
    assert 0.21 < labels.float().mean().item() < 0.29  # expected 1 / 4


def test_error_region_points_without_error() -> None:
    gt = torch.zeros(2, 5, 5, dtype=torch.bool)
    gt[:, 1:3, 1:3] = True
    pred = gt.clone()
    pred[1, 4, 4] = True
    pts, labels = error_region_points(pred, gt)
    assert labels.tolist() == [-1, 0]
    assert pts.tolist() == [[-1.0, -1.0], [4.0, 4.0]]


def test_round_schedule_paper_layout() -> None:
    positions = set()
    for seed in range(200):
        s = round_schedule(11, np.random.default_rng(seed))
        assert len(s) == 11 and s[0] and not s[-1]
        assert sum(s) == 9  # initial prompt + 8 point rounds
        gap = [i for i in range(1, 10) if not s[i]]
        assert len(gap) == 1
        positions.add(gap[0])
    assert positions == set(range(1, 10))
    assert round_schedule(11, random.Random(5)) == round_schedule(11, random.Random(5))
    assert round_schedule(1) == [True]
    assert round_schedule(2) == [True, False]
    with pytest.raises(ValueError):
        round_schedule(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_training_clicks_on_gpu() -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    masks = torch.zeros(4, 64, 64, dtype=torch.bool, device=dev)
    masks[:, 10:20, 30:50] = True
    pts = sample_points_uniform(masks, generator=g)
    assert pts.device.type == "cuda"
    assert masks[torch.arange(4, device=dev), pts[:, 1].long(), pts[:, 0].long()].all()
    pred = torch.zeros_like(masks)
    p2, lab = error_region_points(pred, masks, generator=g)
    assert (lab == 1).all() and p2.device.type == "cuda"
    boxes = noisy_boxes(torch.tensor([[30.0, 10.0, 49.0, 19.0]], device=dev), generator=g, image_size=(64, 64))
    assert boxes.device.type == "cuda"
