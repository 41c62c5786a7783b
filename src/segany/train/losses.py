"""SAM's training losses: 20 x focal + 1 x dice on the masks, MSE on the predicted IoU (paper §A).

An optional ranking term (:func:`iou_rank_loss`, not in the paper) trains the IoU head to order the
candidate masks, which is what picks the mask a single click returns.

With several candidate masks for one ambiguous prompt, only the one with the lowest mask loss is
backpropagated (:func:`sam_loss`). Every function returns per-row losses so the caller decides how
to average over rows, rounds and images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) averaged over pixels.

    Args:
        logits: ``(..., H, W)`` float; targets: same shape, values in [0, 1].
        alpha: weight of the positive class (negative: ``1 - alpha``); a negative value disables it.
    Returns:
        ``(...)`` mean over the last two dimensions.
    """
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` with ``p = sigmoid(logits)``.

    Args:
        logits: ``(..., H, W)``; targets: same shape in [0, 1]. Returns ``(...)``.
    """
    p = torch.sigmoid(logits).flatten(-2)
    t = targets.to(p.dtype).flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + smooth) / (p.sum(-1) + t.sum(-1) + smooth)


def binary_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with boolean ``targets`` ``(..., H, W)`` -> ``(...)``; 1 when both are empty."""
    pred = logits > 0
    gt = targets.bool()
    inter = (pred & gt).flatten(-2).sum(-1).float()
    union = (pred | gt).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_rank_loss(iou_pred: torch.Tensor, true_iou: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Listwise ranking loss of the predicted IoUs of ``M`` candidates.

    Cross-entropy between ``softmax(true_iou / T)`` and ``softmax(iou_pred / T)``: the candidate with
    the highest actual IoU should get the highest prediction, and near-ties matter little. MSE alone
    spends the head on absolute values; a head that is off by a constant still ranks right here.

    Args:
        iou_pred: ``(B, M)`` predicted IoUs; true_iou: ``(B, M)`` actual IoUs (no gradient).
    Returns:
        ``(B,)``; zero where ``M == 1``.
    """
    target = torch.softmax(true_iou.detach().float() / temperature, dim=-1)
    log_pred = torch.log_softmax(iou_pred.float() / temperature, dim=-1)
    # Minus the target's own entropy (a KL divergence): predictions equal to the true IoUs, or off from them
    # by a constant, cost 0, and so does M == 1.
    entropy = -(target * target.clamp(min=1e-12).log()).sum(-1)
    return -(target * log_pred).sum(-1) - entropy


@dataclass
class LossTerms:
    """Per-row losses of one round: ``total``, ``focal``, ``dice``, ``iou`` (all ``(B,)``), the chosen
    mask index ``(B,)``, and the chosen mask's true IoU ``(B,)``."""

    total: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    iou: torch.Tensor
    chosen: torch.Tensor
    true_iou: torch.Tensor


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    targets: torch.Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    rank_weight: float = 0.0,
) -> LossTerms:
    """Loss of ``M`` candidate masks per row, keeping the best candidate's mask loss.

    The IoU head is trained on every candidate (MSE against each mask's actual IoU, no gradient into
    the target), so it learns to rank all of them; the mask loss is the minimum over candidates.
    ``rank_weight`` adds :func:`iou_rank_loss` (counted in the ``iou`` term).

    Args:
        logits: ``(B, M, H, W)`` mask logits at the targets' resolution.
        iou_pred: ``(B, M)`` predicted IoUs.
        targets: ``(B, H, W)`` ground truth, bool or soft (area-averaged) in [0, 1].
    Returns:
        :class:`LossTerms` with per-row values.
    """
    t = targets.unsqueeze(1).expand_as(logits).to(logits.dtype)
    focal = sigmoid_focal_loss(logits, t, focal_alpha, focal_gamma)  # (B, M)
    dice = dice_loss(logits, t)  # (B, M)
    mask_loss = focal_weight * focal + dice_weight * dice
    chosen = mask_loss.detach().argmin(dim=1)  # (B,)
    row = torch.arange(logits.shape[0], device=logits.device)
    true_iou = binary_iou(logits.detach(), t >= 0.5)  # (B, M); soft targets count where >= 0.5
    iou_loss = F.mse_loss(iou_pred.float(), true_iou.float(), reduction="none").mean(dim=1)
    if rank_weight > 0:
        iou_loss = iou_loss + rank_weight * iou_rank_loss(iou_pred, true_iou)
    total = mask_loss[row, chosen] + iou_weight * iou_loss
    return LossTerms(total, focal[row, chosen], dice[row, chosen], iou_loss, chosen, true_iou[row, chosen])
