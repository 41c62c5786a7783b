"""Training losses: focal and dice against hand-computed values, min-over-masks, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from segany.train.losses import binary_iou, dice_loss, iou_rank_loss, sam_loss, sigmoid_focal_loss


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_focal_loss_matches_hand_computation() -> None:
    logits = torch.tensor([[[0.0, 2.0]]])  # (1, H=1, W=2)
    targets = torch.tensor([[[1.0, 0.0]]])
    # pixel 1: p = 0.5, target 1 -> ce = ln 2, (1 - p_t)^2 = 0.25, alpha_t = 0.25
    a = 0.25 * 0.25 * math.log(2)
    # pixel 2: p = sigmoid(2), target 0 -> ce = -ln(1 - p), (1 - p_t)^2 = p^2, alpha_t = 0.75
    p = _sig(2.0)
    b = 0.75 * p**2 * -math.log(1 - p)
    got = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    assert got.shape == (1,)
    assert got.item() == pytest.approx((a + b) / 2, rel=1e-5)
    # alpha disabled, gamma 0: plain binary cross-entropy
    bce = (math.log(2) - math.log(1 - p)) / 2
    assert sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0).item() == pytest.approx(bce, rel=1e-5)


def test_dice_loss_matches_hand_computation() -> None:
    logits = torch.tensor([[[0.0, 1.0], [-1.0, 3.0]]])  # (1, 2, 2)
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    p = [_sig(0.0), _sig(1.0), _sig(-1.0), _sig(3.0)]
    t = [1, 0, 0, 1]
    inter = sum(pi * ti for pi, ti in zip(p, t))
    expected = 1 - (2 * inter + 1) / (sum(p) + sum(t) + 1)
    assert dice_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    # a confident perfect prediction has (almost) no dice loss; the opposite is (almost) 1
    gt = torch.zeros(1, 8, 8)
    gt[0, 2:6, 2:6] = 1
    assert dice_loss(torch.where(gt > 0, 30.0, -30.0), gt).item() < 1e-3
    assert dice_loss(torch.where(gt > 0, -30.0, 30.0), gt).item() > 0.95


def test_binary_iou() -> None:
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :2, :] = True  # 8 pixels
    logits = torch.full((1, 4, 4), -1.0)
    logits[0, :1, :] = 1.0  # 4 pixels, all inside
    assert binary_iou(logits, gt).item() == pytest.approx(0.5)
    assert binary_iou(torch.full((1, 4, 4), -1.0), torch.zeros(1, 4, 4, dtype=torch.bool)).item() == 1.0


def test_sam_loss_keeps_the_best_candidate_and_trains_iou_on_all() -> None:
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[:, 1:5, 1:5] = True
    good = torch.where(gt, 8.0, -8.0)
    bad = -good
    half = torch.where(gt, 8.0, -8.0)
    half[:, 1:5, 1:3] = -8.0  # half the object
    # row 0: best is candidate 2; row 1: best is candidate 0
    logits = torch.stack([torch.stack([bad[0], half[0], good[0]]), torch.stack([good[1], bad[1], half[1]])])
    logits.requires_grad_(True)
    iou_pred = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.0, 0.5]], requires_grad=True)
    terms = sam_loss(logits, iou_pred, gt)
    assert terms.chosen.tolist() == [2, 0]
    assert terms.true_iou.tolist() == pytest.approx([1.0, 1.0])
    # the IoU head's target for every candidate is its true IoU: [0, 0.5, 1] and [1, 0, 0.5]
    expected_iou_loss = [((0.1 - 0) ** 2 + (0.2 - 0.5) ** 2 + (0.3 - 1) ** 2) / 3, ((0.9 - 1) ** 2 + 0 + 0) / 3]
    assert terms.iou.tolist() == pytest.approx(expected_iou_loss, rel=1e-5)
    t = gt.float()
    best0 = 20 * sigmoid_focal_loss(good[0], t[0]) + dice_loss(good[0], t[0])
    assert terms.total[0].item() == pytest.approx(best0.item() + expected_iou_loss[0], rel=1e-5)
    terms.total.sum().backward()
    # gradients reach the chosen masks and the IoU predictions, never the discarded masks
    assert logits.grad[0, 2].abs().sum() > 0 and logits.grad[1, 0].abs().sum() > 0
    assert logits.grad[0, :2].abs().sum() == 0 and logits.grad[1, 1:].abs().sum() == 0
    assert iou_pred.grad.abs().sum() > 0


def test_soft_targets_are_accepted() -> None:
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    soft = torch.full((1, 4, 4), 0.25)
    terms = sam_loss(logits, torch.zeros(1, 1), soft)
    assert torch.isfinite(terms.total).all()
    terms.total.sum().backward()
    assert logits.grad.abs().sum() > 0


def test_rank_loss_is_zero_for_the_true_ious_up_to_a_constant_and_grows_with_misorder() -> None:
    true = torch.tensor([[0.8, 0.5, 0.2]])
    right = iou_rank_loss(torch.tensor([[0.8, 0.5, 0.2]]), true)
    shifted = iou_rank_loss(torch.tensor([[0.6, 0.3, 0.0]]), true)  # off by a constant: same order
    swapped = iou_rank_loss(torch.tensor([[0.5, 0.8, 0.2]]), true)
    reversed_ = iou_rank_loss(torch.tensor([[0.2, 0.5, 0.8]]), true)
    assert right.item() == pytest.approx(0.0, abs=1e-6) and shifted.item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < swapped.item() < reversed_.item()
    assert iou_rank_loss(torch.tensor([[0.1]]), torch.tensor([[0.9]])).item() == 0.0  # one candidate: no order


def test_rank_weight_adds_the_ranking_term_and_pushes_the_best_candidate_up() -> None:
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[:, 1:5, 1:5] = True
    good = torch.where(gt, 8.0, -8.0)
    half = good.clone()
    half[:, 1:5, 1:3] = -8.0
    logits = torch.stack([-good, half, good], dim=1)  # true IoUs 0, 0.5, 1
    iou_pred = torch.tensor([[0.9, 0.5, 0.4]], requires_grad=True)  # ranks the worst mask first
    plain = sam_loss(logits, iou_pred, gt)
    ranked = sam_loss(logits, iou_pred, gt, rank_weight=0.5)
    extra = 0.5 * iou_rank_loss(iou_pred, torch.tensor([[0.0, 0.5, 1.0]]))
    assert ranked.iou.item() == pytest.approx(plain.iou.item() + extra.item(), rel=1e-5)
    (ranked.iou - plain.iou).sum().backward()  # the ranking term alone
    grad = iou_pred.grad[0]
    assert grad[2] < 0 < grad[0]  # gradient descent raises the best candidate and lowers the worst
