"""Mask operations of the automatic generator, checked against the official code and torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from segment_anything.utils import amg as official

from segany.ops import masks as ops

# --- scores and boxes ----------------------------------------------------------------------------


def _blobby_masks(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Random masks with a few blobs each, some empty, some touching the borders."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 1, max(2, h // 8), max(2, w // 8), generator=g)
    masks = torch.nn.functional.interpolate(low, (h, w), mode="bilinear", align_corners=False)[:, 0] > 0.8
    masks[0] = False
    masks[1] = False
    masks[1, 0, 0] = True  # a single pixel at the origin: box 0, 0, 0, 0 but not empty
    masks[2] = True
    return masks


def test_stability_score_equals_official() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 37, 53, generator=g) * 3
    logits[0] = -5.0  # empty looser mask: 0 / 0
    for offset in (1.0, 0.5):
        ours = ops.stability_score(logits, 0.0, offset)
        theirs = official.calculate_stability_score(logits, 0.0, offset)
        torch.testing.assert_close(ours, theirs, equal_nan=True, rtol=0, atol=0)
    assert torch.isnan(ops.stability_score(logits, 0.0, 1.0)[0])


def test_count_above_counts_strictly_greater() -> None:
    x = torch.tensor([[[0.0, 1.0, 2.0], [1.0, -1.0, 1.5]]])
    assert ops.count_above(x, 1.0).tolist() == [2]
    assert ops.count_above(x, -2.0).tolist() == [6]


def test_boxes_equal_official_including_empty_and_edges() -> None:
    masks = _blobby_masks(12, 45, 61)
    expected = official.batched_mask_to_box(masks)
    assert torch.equal(ops.masks_to_boxes(masks), expected)
    assert ops.masks_to_boxes(masks)[1].tolist() == [0, 0, 0, 0]
    assert ops.masks_to_boxes(masks)[2].tolist() == [0, 0, 60, 44]
    # From logits without thresholding first: the same boxes.
    logits = torch.where(masks, 1.0, -1.0) + 0.1 * torch.rand(masks.shape)
    assert torch.equal(ops.logits_to_boxes(logits, 0.0), expected)
    # Leading dimensions are kept.
    assert ops.masks_to_boxes(masks.view(3, 4, 45, 61)).shape == (3, 4, 4)


def test_box_conversions() -> None:
    b = torch.tensor([[2, 3, 10, 7]])
    assert ops.box_xyxy_to_xywh(b).tolist() == [[2, 3, 8, 4]]
    assert ops.box_area(b).tolist() == [32]


# --- NMS -----------------------------------------------------------------------------------------


def _random_boxes(n: int, seed: int, size: int = 200) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, size, (n, 2), generator=g)
    wh = torch.randint(1, size // 2, (n, 2), generator=g)
    return torch.cat([xy, xy + wh], dim=1).float()


@pytest.mark.parametrize("n", [0, 1, 7, 300, 1500])
def test_batched_nms_matches_torchvision_order_included(n: int) -> None:
    boxes = _random_boxes(n, seed=n)
    g = torch.Generator().manual_seed(n + 1)
    # Few distinct scores: many ties, whose order torchvision decides (stable inside NMS, unstable
    # re-sort above 1000 boxes on the CPU).
    scores = torch.randint(0, 4, (n,), generator=g).float()
    zeros = torch.zeros(n, dtype=torch.int64)
    for thr in (0.3, 0.7):
        expected = torchvision.ops.batched_nms(boxes, scores, zeros, thr)
        assert torch.equal(ops.batched_nms(boxes, scores, zeros, thr), expected)
        assert torch.equal(ops.nms(boxes, scores, thr).sort()[0], torchvision.ops.nms(boxes, scores, thr).sort()[0])


def test_batched_nms_several_categories() -> None:
    boxes = _random_boxes(200, seed=3)
    scores = torch.rand(200, generator=torch.Generator().manual_seed(4))
    idxs = torch.arange(200) % 3
    expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5), expected)


def test_nms_threshold_is_strict_and_blocks_agree() -> None:
    # IoU exactly 0.5: kept at threshold 0.5, dropped below it.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])
    scores = torch.tensor([1.0, 0.5])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert ops.nms(boxes, scores, 0.49).tolist() == [0]
    big = _random_boxes(700, seed=9)
    s = torch.rand(700, generator=torch.Generator().manual_seed(10))
    assert torch.equal(ops.nms(big, s, 0.4, block=64), ops.nms(big, s, 0.4, block=4096))


# --- grids and crops -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 16, 32])
def test_point_grid_equals_official(n: int) -> None:
    assert np.array_equal(ops.build_point_grid(n), official.build_point_grid(n))


def test_layer_point_grids_equal_official() -> None:
    for args in [(32, 2, 2), (16, 1, 1), (10, 2, 3)]:
        ours, theirs = ops.build_all_layer_point_grids(*args), official.build_all_layer_point_grids(*args)
        assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("size", [(321, 481), (1500, 2250), (640, 378), (100, 100)])
@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_crop_boxes_equal_official(size: tuple[int, int], layers: int) -> None:
    assert ops.generate_crop_boxes(size, layers, 512 / 1500) == official.generate_crop_boxes(size, layers, 512 / 1500)


def test_crop_edge_filter_and_uncrop_equal_official() -> None:
    boxes = _random_boxes(300, seed=5, size=150).long()
    crop, image = [100, 50, 400, 300], [0, 0, 500, 300]
    assert torch.equal(
        ops.is_box_near_crop_edge(boxes, crop, image), official.is_box_near_crop_edge(boxes, crop, image)
    )
    assert torch.equal(ops.uncrop_boxes_xyxy(boxes, crop), official.uncrop_boxes_xyxy(boxes, crop))
    pts = torch.rand(10, 2, dtype=torch.float64) * 100
    assert torch.equal(ops.uncrop_points(pts, crop), official.uncrop_points(pts, crop))
    masks = _blobby_masks(3, 250, 300)
    assert torch.equal(ops.uncrop_masks(masks, crop, 320, 410), official.uncrop_masks(masks, crop, 320, 410))
    assert ops.uncrop_masks(masks, [0, 0, 300, 250], 250, 300) is masks


# --- small regions -------------------------------------------------------------------------------


def _noisy_masks(seed: int, h: int = 60, w: int = 80) -> list[np.ndarray]:
    """Masks with holes and islands of many sizes, near and away from the borders."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(40):
        m = np.zeros((h, w), dtype=bool)
        for _ in range(rng.integers(1, 6)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            r = rng.integers(1, 15)
            yy, xx = np.ogrid[:h, :w]
            m |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        m ^= rng.random((h, w)) < 0.02 * (k % 3)  # salt and pepper: tiny holes and islands
        if k % 7 == 0:
            m[:, :] = False
            m[5:9, :] = True  # spans the width: splits the background in two
        if k % 11 == 0:
            m[:, :] = True
            m[20:22, 30:33] = False  # almost everything: the background is tiny
        out.append(m)
    return out


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_equals_official(mode: str) -> None:
    for mask in _noisy_masks(0):
        for thresh in (3, 20, 100):
            ours, changed = ops.remove_small_regions(mask, thresh, mode)
            theirs, their_changed = official.remove_small_regions(mask, thresh, mode)
            assert changed == their_changed
            assert np.array_equal(ours, theirs)


def test_clean_small_regions_equals_whole_image_processing() -> None:
    masks = _noisy_masks(1) + [np.zeros((60, 80), bool)]
    single = np.zeros((60, 80), bool)
    single[0, 0] = True
    masks.append(single)
    for mask in masks:
        for thresh in (2, 30, 200, 10_000):
            expected, c1 = official.remove_small_regions(mask, thresh, "holes")
            expected, c2 = official.remove_small_regions(expected, thresh, "islands")
            window, box, changed = ops.clean_small_regions(mask, thresh)
            full = np.zeros_like(mask)
            full[box[1] : box[3], box[0] : box[2]] = window
            assert changed == (c1 or c2)
            assert np.array_equal(full, expected)


def test_paper_rule_drops_masks_whose_islands_are_all_small() -> None:
    """keep_largest=False (paper, Appendix B) empties a mask of small islands only; otherwise the
    result equals the official rule, in the whole-image and the windowed computation alike."""
    two_small = np.zeros((60, 80), bool)
    two_small[5:9, 5:9] = True  # 16 px
    two_small[30:35, 40:45] = True  # 25 px
    for mask in [two_small, *_noisy_masks(2)]:
        for thresh in (20, 30, 10_000):
            kept, _ = ops.remove_small_regions(mask, thresh, "islands", keep_largest=True)
            dropped, _ = ops.remove_small_regions(mask, thresh, "islands", keep_largest=False)
            labels_all_small = kept.sum() < thresh and kept.any()
            assert np.array_equal(dropped, np.zeros_like(mask) if labels_all_small else kept)
            window, box, _ = ops.clean_small_regions(mask, thresh, keep_largest=False)
            full = np.zeros_like(mask)
            full[box[1] : box[3], box[0] : box[2]] = window
            holes, _ = ops.remove_small_regions(mask, thresh, "holes")
            assert np.array_equal(full, ops.remove_small_regions(holes, thresh, "islands", keep_largest=False)[0])
    assert not ops.remove_small_regions(two_small, 30, "islands", keep_largest=False)[0].any()
    assert ops.remove_small_regions(two_small, 30, "islands")[0].sum() == 25
