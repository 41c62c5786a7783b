"""Tests for segany.eval.edges and edge_maps: BSDS-style matching and scores, thinning, SAM edge maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segany.eval.edge_maps import edge_nms, sobel_edges_from_probs
from segany.eval.edges import (
    edge_thresholds,
    evaluate_edge_image,
    load_bsds_boundaries,
    match_boundaries,
    summarize_edges,
    thin,
)

N = 100  # 100 x 100 images: tolerance 0.0075 * 141.4 = 1.06 px


def _hline(row: int, c0: int, c1: int, shape: tuple[int, int] = (N, N)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[row, c0:c1] = True
    return m


def _scores(edge: np.ndarray, gts: list[np.ndarray], **kw: object) -> dict[str, float]:
    return summarize_edges([evaluate_edge_image(edge, gts, **kw)]).to_dict()


# ----------------------------------------------------------------------------- matching and scores


def test_thresholds_match_benchmark_definition() -> None:
    t = edge_thresholds(99)
    assert len(t) == 99 and t[0] == pytest.approx(0.01) and t[-1] == pytest.approx(0.99)


def test_identical_prediction_is_perfect() -> None:
    gt = _hline(50, 10, 90) | np.eye(N, dtype=bool)
    s = _scores(gt.astype(float), [gt])
    assert s["ODS"] == pytest.approx(1.0) and s["OIS"] == pytest.approx(1.0)
    assert s["ODS_recall"] == pytest.approx(1.0) and s["ODS_precision"] == pytest.approx(1.0)


def test_one_pixel_shift_is_within_tolerance_and_far_shift_is_not() -> None:
    gt = _hline(50, 10, 90)
    near = _scores(_hline(51, 10, 90).astype(float), [gt])
    assert near["ODS"] == pytest.approx(1.0)
    far = _scores(_hline(54, 10, 90).astype(float), [gt])
    assert far["ODS"] == pytest.approx(0.0) and far["OIS"] == pytest.approx(0.0)


def test_half_the_edges_gives_half_recall_full_precision() -> None:
    gt = _hline(30, 10, 50) | _hline(70, 10, 50)
    s = _scores(_hline(30, 10, 50).astype(float), [gt])
    assert s["ODS_recall"] == pytest.approx(0.5) and s["ODS_precision"] == pytest.approx(1.0)
    assert s["ODS"] == pytest.approx(2 / 3)


def test_two_annotators_recall_pools_and_precision_matches_any() -> None:
    a = _hline(20, 10, 50)  # 40 px
    b = _hline(80, 20, 80)  # 60 px
    counts = evaluate_edge_image(a.astype(float), [a, b], nthresh=5)
    assert counts.sum_r.tolist() == [100] * 5
    assert counts.cnt_r.tolist() == [40] * 5
    assert counts.cnt_p.tolist() == counts.sum_p.tolist() == [40] * 5


def test_matching_is_one_to_one() -> None:
    gt = _hline(50, 10, 50)
    double = gt | _hline(51, 10, 50)  # every GT pixel has two candidates
    mp, mg = match_boundaries(double, gt)
    assert mg.sum() == 40 and mp.sum() == 40
    c = evaluate_edge_image(double.astype(float), [gt], nthresh=3, thin_pred=False)
    assert c.cnt_p.tolist() == [40] * 3 and c.sum_p.tolist() == [80] * 3
    # With the benchmark's thinning, the 2-px band becomes one line first (its ends may erode
    # by a pixel, which can cost a GT end pixel).
    s = _scores(double.astype(float), [gt])
    assert s["ODS_precision"] == pytest.approx(1.0) and s["ODS_recall"] >= 38 / 40


def test_empty_inputs() -> None:
    gt = _hline(50, 10, 50)
    mp, mg = match_boundaries(np.zeros_like(gt), gt)
    assert not mp.any() and not mg.any()
    c = evaluate_edge_image(np.zeros((N, N)), [gt], nthresh=3)
    assert c.cnt_r.tolist() == [0] * 3 and c.sum_r.tolist() == [40] * 3 and c.sum_p.tolist() == [0] * 3
    with pytest.raises(ValueError):
        evaluate_edge_image(np.zeros((N, N)), [])
    with pytest.raises(ValueError):
        evaluate_edge_image(np.zeros((N, N)), [np.zeros((N, N + 1), bool)])


def test_ods_ois_ap_r50_hand_computed() -> None:
    # Image A: a true line at strength 0.805 and an equally long false line at 0.405.
    gt_a = _hline(20, 10, 50)
    edge_a = 0.805 * gt_a + 0.405 * _hline(70, 10, 50)
    # Image B: a true line at strength 0.305.
    gt_b = _hline(50, 30, 70)
    edge_b = 0.305 * gt_b
    s = summarize_edges([evaluate_edge_image(edge_a, [gt_a]), evaluate_edge_image(edge_b, [gt_b])])
    # Pooled: t <= .30 -> R 1, P 80/120; .31-.40 -> R .5, P .5; .41-.80 -> R .5, P 1; else 0.
    assert s.ods == pytest.approx(0.8)
    assert s.ods_recall == pytest.approx(1.0) and s.ods_precision == pytest.approx(2 / 3)
    # Each image at its own best threshold is perfect.
    assert s.ois == pytest.approx(1.0)
    # Precision at recall 0, .5, 1 (lowest threshold per recall): 0, .5, 2/3; linear in between,
    # summed on the 0:0.01:1 grid: (12.75 + 29.25) * 0.01.
    assert s.ap == pytest.approx(0.42)
    assert s.r50 == pytest.approx(0.5)


def test_summarize_rejects_mismatched_thresholds() -> None:
    gt = _hline(50, 10, 50)
    with pytest.raises(ValueError):
        five, seven = (evaluate_edge_image(gt * 1.0, [gt], nthresh=n) for n in (5, 7))
        summarize_edges([five, seven])
    with pytest.raises(ValueError):
        summarize_edges([])


# ----------------------------------------------------------------------------- thinning


def test_thinning_makes_thick_lines_one_pixel_wide() -> None:
    band = np.zeros((30, 60), bool)
    band[10:13, 5:55] = True  # horizontal, 3 px thick
    t = thin(band)
    assert (t & ~band).sum() == 0
    cols = t[:, 8:52].sum(axis=0)
    assert (cols == 1).all()
    vert = thin(band.T)
    assert (vert[8:52, :].sum(axis=1) == 1).all()
    diag = np.zeros((60, 60), bool)
    for d in (-1, 0, 1):
        diag |= np.eye(60, k=d, dtype=bool)
    td = thin(diag)
    assert td.sum() < diag.sum() / 2
    assert (td[5:55, :].sum(axis=1) == 1).all()


def test_thinning_keeps_thin_structures() -> None:
    line = _hline(50, 10, 50)
    assert np.array_equal(thin(line), line)
    diag = np.eye(40, dtype=bool)
    assert np.array_equal(thin(diag), diag)
    dot = np.zeros((5, 5), bool)
    dot[2, 2] = True
    assert np.array_equal(thin(dot), dot)


# ----------------------------------------------------------------------------- BSDS ground truth


def test_load_real_bsds_ground_truth(shared_data: Path) -> None:
    from PIL import Image

    bsds = shared_data / "BSDS500"

    for stem in ("100007", "2018"):
        mat = bsds / "gt" / f"{stem}.mat"
        if not mat.exists():
            continue
        gts = load_bsds_boundaries(mat)
        with Image.open(bsds / "images" / f"{stem}.jpg") as im:
            w, h = im.size
        assert 4 <= len(gts) <= 9
        for g in gts:
            assert g.dtype == bool and g.shape == (h, w)
            assert 0 < g.sum() < 0.2 * g.size


# ----------------------------------------------------------------------------- edge maps


def _soft_disk(h: int, w: int, cx: float, cy: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    dist = torch.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    return torch.sigmoid((r - dist) * 2.0)


def test_sobel_edges_keep_only_mask_boundaries() -> None:
    h, w = 64, 96
    a = _soft_disk(h, w, 25, 30, 12)
    b = _soft_disk(h, w, 70, 30, 15)
    e = sobel_edges_from_probs(torch.stack([a, b, torch.full((h, w), 0.3)]))
    assert e.shape == (h, w) and e.max().item() == pytest.approx(1.0) and e.min().item() >= 0
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    da = torch.sqrt((xx - 25.0) ** 2 + (yy - 30.0) ** 2)
    db = torch.sqrt((xx - 70.0) ** 2 + (yy - 30.0) ** 2)
    near = ((da - 12).abs() <= 2.5) | ((db - 15).abs() <= 2.5)
    assert e[~near].abs().max().item() == 0.0  # nothing inside, outside, or from the flat map
    assert (e[(da - 12).abs() < 0.5] > 0.3).all() and (e[(db - 15).abs() < 0.5] > 0.3).all()
    assert sobel_edges_from_probs(torch.full((2, 10, 10), 0.2)).abs().sum().item() == 0.0


def _ridge(h: int, w: int, angle_deg: float, sigma: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian ridge through the image centre; returns (map, distance to the ridge line)."""
    yy, xx = np.mgrid[:h, :w].astype(float)
    a = np.deg2rad(angle_deg)
    # Signed distance along the normal (cos a, sin a) from the centre.
    d = (xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)
    return np.exp(-(d**2) / (2 * sigma**2)), np.abs(d)


@pytest.mark.parametrize("angle", [0.0, 90.0, 30.0, 45.0, 120.0])
def test_edge_nms_thins_ridges_at_any_angle(angle: float) -> None:
    e, dist = _ridge(60, 80, angle)
    out = edge_nms(e)
    inner = np.zeros_like(out, dtype=bool)
    inner[8:-8, 8:-8] = True
    kept = (out > 0) & inner
    assert kept.any()
    assert dist[kept].max() <= 1.0  # survivors sit on the ridge
    ridge_px = (dist <= 0.5) & inner
    assert kept.sum() <= 1.5 * max(ridge_px.sum(), 1)  # about one pixel across
    assert (out <= e + 1e-6).all()


def test_edge_nms_fades_image_border() -> None:
    e = np.zeros((40, 40))
    e[:, 20] = 1.0
    out = edge_nms(e)
    assert out[0, 20] == 0.0 and out[20, 20] == pytest.approx(1.0)
    assert 0 < out[2, 20] < out[4, 20] < 1.0


def test_match_count_equals_reference_maximum_matching() -> None:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    for _ in range(5):
        pred = rng.random((40, 40)) > 0.9
        gt = rng.random((40, 40)) > 0.9
        mp, mg = match_boundaries(pred, gt, max_dist=0.05)  # radius 2.83 px
        d = cdist(np.argwhere(pred), np.argwhere(gt))
        ref = maximum_bipartite_matching(csr_matrix(d <= 0.05 * np.hypot(40, 40)), perm_type="column")
        assert mp.sum() == mg.sum() == (ref >= 0).sum()
        assert not (mp & ~pred).any() and not (mg & ~gt).any()
