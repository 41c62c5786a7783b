"""The interactive training simulation (SAM paper, Appendix A), for one micro-batch of images.

For every sampled mask, ``num_rounds`` rounds are simulated:

* round 1: a foreground point drawn uniformly inside the mask, or the mask's box with Gaussian
  noise on each coordinate (std 10% of the side, at most 20 px), with equal probability;
* later rounds: one point drawn uniformly from the error region of the previous prediction
  (foreground if it fell in a false negative, background if in a false positive); points accumulate,
  and the previous round's low-resolution logits are fed back as the mask prompt; two rounds add no
  point (one at a random position, the last one), per :func:`segany.ops.clicks.round_schedule`;
* with a text path (:mod:`segany.train.text`), a share of the masks get their crop's CLIP image
  embedding as round-1 prompt instead (then points as above);
* a prompt that is a single point is ambiguous: the three multimask outputs are scored and only the
  best one's mask loss counts; any other prompt uses the single-mask output;
* the highest-predicted-IoU mask is the one fed back and used to sample the next point.

Clicks come from :mod:`segany.ops.clicks` (shared with evaluation). Every random draw for an image
uses a generator seeded by ``(seed, step, image index)``, so the prompts do not depend on how images
are spread over processes or micro-batches.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segany.inference.fast_decoder import DecoderImageCache, FastMaskDecoder, supports
from segany.model import Sam
from segany.ops.clicks import (
    center_point,
    error_region_points,
    next_click,
    noisy_boxes,
    round_schedule,
    sample_points_uniform,
)
from segany.train.config import ConfigError, LoopSection
from segany.train.losses import sam_loss
from segany.train.text import TextTraining

STAT_NAMES = ("loss", "focal", "dice", "iou_loss", "iou_first", "iou_last")


@dataclass
class StepOutput:
    """``loss``: the sum over images of each image's loss (mean over its masks and loss rounds), a
    scalar with gradient; ``stats``: sums over images of the :data:`STAT_NAMES` values (floats);
    ``images`` and ``masks``: how many were used."""

    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)
    images: int = 0
    masks: int = 0


def _boxes_of(masks: torch.Tensor) -> torch.Tensor:
    """bool ``(B, H, W)`` -> ``(B, 4)`` x0, y0, x1, y1 pixel boxes (inclusive) of non-empty masks."""
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    h, w = masks.shape[1:]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values
    x0 = torch.where(cols, ar_w, w).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def _generators(batch: list[dict[str, Any]], seed: int, device: torch.device) -> list[torch.Generator]:
    gens = []
    for item in batch:
        g = torch.Generator(device=device)
        # A different stream from the data sampler's (which uses the same triple without the +1).
        g.manual_seed(int(np.random.SeedSequence([seed, item["step"], item["index"], 1]).generate_state(1)[0]))
        gens.append(g)
    return gens


def rounds_of_step(loop: LoopSection, step: int) -> int:
    """Rounds simulated at ``step``: ``loop.num_rounds``, or, when ``loop.min_rounds`` is set, a number
    drawn uniformly from ``[min_rounds, num_rounds]`` per step (the same on every process).

    The prompts still follow the ``num_rounds`` schedule; the simulation is only cut short. With
    ``loss_rounds = "first_last"`` every click count of the schedule is trained, at about half the
    cost of running every round each step."""
    if loop.min_rounds is None or loop.min_rounds >= loop.num_rounds:
        return loop.num_rounds
    rng = np.random.default_rng([loop.seed, step, 3])
    return int(rng.integers(loop.min_rounds, loop.num_rounds + 1))


def _mix_center_clicks(
    pts: torch.Tensor,
    labels: torch.Tensor | None,
    pred: torch.Tensor | None,
    gt: torch.Tensor,
    probability: float,
    generator: torch.Generator,
) -> None:
    """Replace, in place and with ``probability`` per row, a uniformly drawn click by the evaluation
    clicker's (:func:`segany.ops.clicks.center_point` when ``pred`` is None, else
    :func:`segany.ops.clicks.next_click` in "center" mode), so training also sees the clicks a user or
    the benchmark makes.

    Args:
        pts: float ``(B, 2)`` clicks; labels: int ``(B,)`` (None for a first click).
        pred, gt: bool ``(B, H, W)`` current prediction (None for a first click) and ground truth.
    """
    if probability <= 0:
        return
    pick = torch.rand(len(pts), generator=generator, device=pts.device) < probability
    rows = torch.nonzero(pick).squeeze(1).tolist()
    if not rows:
        return
    gt_np = gt[rows].cpu().numpy()
    pred_np = pred[rows].cpu().numpy() if pred is not None else None
    for j, row in enumerate(rows):
        if pred_np is None:
            xy = center_point(gt_np[j])
            if xy is not None:
                pts[row] = torch.tensor(xy, dtype=pts.dtype)
            continue
        click = next_click(pred_np[j], gt_np[j])
        if click is not None and labels is not None:
            pts[row] = torch.tensor((click.x, click.y), dtype=pts.dtype)
            labels[row] = int(click.is_positive)


@dataclass
class _Targets:
    """The micro-batch laid out per mask row: ``gt`` bool ``(B, S, S)`` (padded), ``valid`` bool
    ``(B, S, S)`` (pixels of the image, not the padding), ``owner`` ``(B,)`` image of each row,
    ``rows_of`` the rows of each image, and the loss-resolution targets ``loss_gt`` / ``loss_valid``."""

    images: torch.Tensor
    gt: torch.Tensor
    valid: torch.Tensor
    owner: torch.Tensor
    rows_of: list[torch.Tensor]
    loss_gt: torch.Tensor
    loss_valid: torch.Tensor | None


@dataclass
class _Prompts:
    """Round-1 prompts (a point or a noisy box per row), the points added since, and each image's
    round schedule."""

    use_box: torch.Tensor
    first_pts: torch.Tensor
    boxes: torch.Tensor
    schedules: list[list[bool]]
    extra_pts: torch.Tensor
    extra_lbl: torch.Tensor
    use_text: torch.Tensor | None = None  # bool (B,): the round-1 prompt is a CLIP crop embedding
    text_emb: torch.Tensor | None = None  # (B, D) for those rows (zeros elsewhere)


@dataclass
class _RoundResult:
    """One round's per-row loss and terms, the mask fed back (index) and its true IoU."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    feedback: torch.Tensor
    true_iou: torch.Tensor


def _prepare_targets(model: Sam, batch: list[dict[str, Any]], loss_size: int) -> _Targets:
    device, s = model.device, model.image_size
    images = torch.stack([model.preprocess(item["image"].to(device).float()) for item in batch])
    gts, owner, valid = [], [], []
    for i, item in enumerate(batch):
        m = item["masks"].to(device)
        h, w = m.shape[-2:]
        gts.append(F.pad(m, (0, s - w, 0, s - h)))
        owner += [i] * len(m)
        v = torch.zeros(s, s, dtype=torch.bool, device=device)
        v[:h, :w] = True
        valid.append(v)
    gt = torch.cat(gts)
    owner_t = torch.tensor(owner, device=device)
    valid_px = torch.stack(valid)[owner_t]
    rows_of = [torch.nonzero(owner_t == i).squeeze(1) for i in range(len(batch))]
    loss_gt, loss_valid = gt, None
    if loss_size != s:
        loss_gt = F.interpolate(gt.unsqueeze(1).float(), (loss_size, loss_size), mode="area").squeeze(1)
        loss_valid = F.interpolate(valid_px.unsqueeze(1).float(), (loss_size, loss_size), mode="area").squeeze(1) > 0
    return _Targets(images, gt, valid_px, owner_t, rows_of, loss_gt, loss_valid)


def _first_prompts(
    t: _Targets,
    batch: list[dict[str, Any]],
    gens: list[torch.Generator],
    loop: LoopSection,
    text: TextTraining | None = None,
) -> _Prompts:
    """Round-1 prompt and round schedule, per image from its own generator (the text rows' crops from
    ``(seed, step, index, 4)``)."""
    n_rows, device = t.gt.shape[0], t.gt.device
    use_box = torch.zeros(n_rows, dtype=torch.bool, device=device)
    first_pts = torch.zeros(n_rows, 2, device=device)
    boxes = torch.zeros(n_rows, 4, device=device)
    schedules = []
    for i, rows in enumerate(t.rows_of):
        g = gens[i]
        use_box[rows] = torch.rand(len(rows), generator=g, device=device) < loop.box_probability
        pts = sample_points_uniform(t.gt[rows], generator=g)
        _mix_center_clicks(pts, None, None, t.gt[rows], loop.center_click_probability, g)
        first_pts[rows] = pts
        h, w = batch[i]["masks"].shape[-2:]
        boxes[rows] = noisy_boxes(
            _boxes_of(t.gt[rows]), loop.box_noise_fraction, loop.box_noise_max, generator=g, image_size=(h, w)
        )
        np_rng = np.random.default_rng([loop.seed, batch[i]["step"], batch[i]["index"], 2])
        schedules.append(round_schedule(loop.num_rounds, np_rng))
    p = _Prompts(
        use_box, first_pts, boxes, schedules,
        extra_pts=torch.zeros(n_rows, 0, 2, device=device),  # points added after round 1
        extra_lbl=torch.zeros(n_rows, 0, dtype=torch.long, device=device),
    )
    if text is not None:
        _text_prompts(p, t, batch, gens, loop, text)
    return p


def _text_prompts(
    p: _Prompts, t: _Targets, batch: list[dict[str, Any]], gens: list[torch.Generator], loop: LoopSection,
    text: TextTraining,
) -> None:
    """Turn a ``text.rate`` share of the rows into text rows: their round-1 prompt is the CLIP image
    embedding of their object's crop (drawn after the other round-1 draws, so those stay as they were)."""
    n_rows, device = t.gt.shape[0], t.gt.device
    use_text = torch.zeros(n_rows, dtype=torch.bool, device=device)
    requests, rows_all = [], []
    for i, rows in enumerate(t.rows_of):
        chosen = rows[torch.rand(len(rows), generator=gens[i], device=device) < text.rate]
        if not len(chosen):
            continue
        use_text[chosen] = True
        h, w = batch[i]["masks"].shape[-2:]
        rng = np.random.default_rng([loop.seed, batch[i]["step"], batch[i]["index"], 4])
        requests += text.requests(batch[i], t.gt[chosen, :h, :w], rng)
        rows_all.append(chosen)
    emb = torch.zeros(n_rows, text.embedder.clip.embed_dim, device=device)
    if requests:
        emb[torch.cat(rows_all)] = text.embedder(requests).to(device)
    p.use_box = p.use_box & ~use_text
    p.use_text, p.text_emb = use_text, emb


def _sparse_embeddings(model: Sam, p: _Prompts) -> torch.Tensor:
    """``(B, k + 2, C)`` sparse prompt embeddings: point rows get their first point plus the ``k``
    added ones, box rows their box plus the added points."""
    pe = model.prompt_encoder
    n_rows, device = p.use_box.shape[0], p.use_box.device
    k = p.extra_pts.shape[1]
    is_text = p.use_text if p.use_text is not None else torch.zeros_like(p.use_box)
    box_rows = torch.nonzero(p.use_box).squeeze(1)
    pt_rows = torch.nonzero(~p.use_box & ~is_text).squeeze(1)
    text_rows = torch.nonzero(is_text).squeeze(1)
    sparse = torch.zeros(n_rows, k + 2, pe.embed_dim, device=device)
    if len(pt_rows):
        coords = torch.cat([p.first_pts[pt_rows].unsqueeze(1), p.extra_pts[pt_rows]], dim=1)
        labels = torch.cat([torch.ones(len(pt_rows), 1, dtype=torch.long, device=device), p.extra_lbl[pt_rows]], 1)
        sp, _ = pe((coords, labels), None, None)
        sparse = sparse.index_copy(0, pt_rows, sp.to(sparse.dtype))
    if len(box_rows):
        pts = (p.extra_pts[box_rows], p.extra_lbl[box_rows]) if k else None
        sp, _ = pe(pts, p.boxes[box_rows], None)
        sparse = sparse.index_copy(0, box_rows, sp.to(sparse.dtype))
    if len(text_rows) and p.text_emb is not None:
        # The added points, "not a point", then the text token: k + 2 tokens, as the other rows.
        pts = (p.extra_pts[text_rows], p.extra_lbl[text_rows])
        sp, _ = pe(pts, None, None, text=p.text_emb[text_rows])
        sparse = sparse.index_copy(0, text_rows, sp.to(sparse.dtype))
    return sparse


def _round_loss(
    low: torch.Tensor, iou_pred: torch.Tensor, t: _Targets, p: _Prompts, loop: LoopSection, s: int
) -> tuple[_RoundResult, torch.Tensor]:
    """Losses of one round's masks ``low`` ``(B, M, h, w)``; returns them and the full-size logits.

    A prompt of exactly one point and no box is ambiguous: the three multimask outputs are scored and
    the best one's mask loss counts; any other prompt uses the single-mask output."""
    n_rows, device = t.gt.shape[0], t.gt.device
    n_valid = 1 + (p.extra_lbl >= 0).sum(1)
    ambiguous = (~p.use_box) & (n_valid == 1)
    if p.use_text is not None:  # a crop embedding names its object: one mask is asked for
        ambiguous = ambiguous & ~p.use_text
    logits = F.interpolate(low, (s, s), mode="bilinear", align_corners=False)
    logits = logits.masked_fill(~t.valid.unsqueeze(1), -20.0)  # padding is never the object
    if t.loss_valid is not None:
        # Cheaper loss: low-res logits (resampled to the loss size) against area-averaged targets.
        size = t.loss_valid.shape[-1]
        loss_logits = (
            low if low.shape[-1] == size else F.interpolate(low, (size, size), mode="bilinear", align_corners=False)
        )
        loss_logits = loss_logits.masked_fill(~t.loss_valid.unsqueeze(1), -20.0)
    else:
        loss_logits = logits
    total = torch.zeros(n_rows, device=device)
    feedback = torch.zeros(n_rows, dtype=torch.long, device=device)
    true_iou = torch.zeros(n_rows, device=device)
    terms_all = {k: torch.zeros(n_rows, device=device) for k in ("focal", "dice", "iou_loss")}
    for rows, sel in (
        (torch.nonzero(ambiguous).squeeze(1), slice(1, None)),
        (torch.nonzero(~ambiguous).squeeze(1), slice(0, 1)),
    ):
        if not len(rows):
            continue
        terms = sam_loss(
            loss_logits[rows, sel], iou_pred[rows, sel], t.loss_gt[rows],
            loop.focal_weight, loop.dice_weight, loop.iou_weight, loop.focal_alpha, loop.focal_gamma,
            loop.rank_weight,
        )
        total = total.index_copy(0, rows, terms.total)
        for name, value in (("focal", terms.focal), ("dice", terms.dice), ("iou_loss", terms.iou)):
            terms_all[name] = terms_all[name].index_copy(0, rows, value.detach())
        feedback[rows] = iou_pred[rows, sel].detach().argmax(1) + sel.start
        chosen = logits[rows, feedback[rows]] > 0
        true_iou[rows] = (
            (chosen & t.gt[rows]).flatten(1).sum(1).float()
            / (chosen | t.gt[rows]).flatten(1).sum(1).clamp(min=1).float()
        ).detach()
    return _RoundResult(total, terms_all, feedback, true_iou), logits


def _add_clicks(
    p: _Prompts, t: _Targets, logits: torch.Tensor, feedback: torch.Tensor, next_round: int,
    gens: list[torch.Generator], loop: LoopSection,
) -> None:
    """Append one point per row (where the image's schedule adds one in ``next_round``) from the
    error region of the mask fed back; rows without a new point get SAM's "not a point"."""
    n_rows, device = t.gt.shape[0], t.gt.device
    row_idx = torch.arange(n_rows, device=device)
    pred = (logits[row_idx, feedback].detach() > 0) & t.valid
    new_pts = torch.full((n_rows, 1, 2), -1.0, device=device)
    new_lbl = torch.full((n_rows, 1), -1, dtype=torch.long, device=device)
    for i, rows in enumerate(t.rows_of):
        if p.schedules[i][next_round]:
            pts, lbl = error_region_points(pred[rows], t.gt[rows], generator=gens[i])
            _mix_center_clicks(pts, lbl, pred[rows], t.gt[rows], loop.center_click_probability, gens[i])
            new_pts[rows, 0] = pts
            new_lbl[rows, 0] = lbl
    p.extra_pts = torch.cat([p.extra_pts, new_pts], dim=1)
    p.extra_lbl = torch.cat([p.extra_lbl, new_lbl], dim=1)


def _summarise(
    per_row_loss: torch.Tensor, sums: dict[str, torch.Tensor], loss_rounds: int,
    iou_first: torch.Tensor, iou_last: torch.Tensor, t: _Targets, n_images: int,
) -> StepOutput:
    """Per image: the mean over its masks of the per-round mean loss; summed over images."""
    rounds = max(loss_rounds, 1)
    loss = torch.zeros((), device=per_row_loss.device)
    per_row_stats = {
        "focal": sums["focal"] / rounds,
        "dice": sums["dice"] / rounds,
        "iou_loss": sums["iou_loss"] / rounds,
        "iou_first": iou_first,
        "iou_last": iou_last,
    }
    stats = {name: 0.0 for name in STAT_NAMES}
    for rows in t.rows_of:
        image_loss = (per_row_loss[rows] / rounds).mean()
        loss = loss + image_loss
        stats["loss"] += float(image_loss.detach())
        for name, values in per_row_stats.items():
            stats[name] += float(values[rows].mean())
    return StepOutput(loss=loss, stats=stats, images=n_images, masks=int(t.gt.shape[0]))


def interactive_step(
    model: Sam,
    batch: list[dict[str, Any]],
    loop: LoopSection,
    freeze_image_encoder: bool = False,
    text: TextTraining | None = None,
) -> StepOutput:
    """Simulate the interactive rounds on a micro-batch and return its summed loss.

    Args:
        model: the SAM model (training mode).
        batch: items of :class:`segany.train.data.TrainDataset`: ``image`` uint8 ``(3, h, w)`` with
            ``max(h, w) <= model.image_size``, ``masks`` bool ``(M, h, w)``, ``index``, ``step``.
        loop: the loop settings (rounds, losses, box probability and noise, bf16, seed).
        freeze_image_encoder: encode without gradient.
        text: the text prompt path's training (None: no text rounds).
    """
    if loop.loss_rounds not in ("all", "first_last"):
        raise ConfigError(f"loop.loss_rounds must be 'all' or 'first_last', not {loop.loss_rounds!r}")
    num_rounds = rounds_of_step(loop, int(batch[0]["step"]))
    device, s = model.device, model.image_size
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if loop.bf16 else contextlib.nullcontext()
    t = _prepare_targets(model, batch, loop.loss_size or s)
    n_rows = t.gt.shape[0]
    gens = _generators(batch, loop.seed, device)
    with autocast, torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_image_encoder):
        embeddings = model.image_encoder(t.images)  # (n, C, g, g)
    row_embeddings = embeddings[t.owner]
    p = _first_prompts(t, batch, gens, loop, text)

    # The fast decoder computes the same function with about half the multiply-adds; in round 1 (no
    # mask prompt) it also shares the image side of the first layer between the masks of an image.
    fast = loop.fast_decoder and supports(model)
    if fast:
        image_cache, fast_decoder = DecoderImageCache(model), FastMaskDecoder(model)
    prev_logits: torch.Tensor | None = None
    pe = model.prompt_encoder
    image_pe = pe.get_dense_pe()
    per_row_loss = torch.zeros(n_rows, device=device)
    sums = {k: torch.zeros(n_rows, device=device) for k in ("focal", "dice", "iou_loss")}
    iou_first = iou_last = torch.zeros(n_rows, device=device)
    loss_rounds = 0
    for r in range(num_rounds):
        with_grad = torch.is_grad_enabled() and (loop.loss_rounds == "all" or r in (0, num_rounds - 1))
        with autocast, torch.set_grad_enabled(with_grad):
            sparse = _sparse_embeddings(model, p)
            if fast:
                if prev_logits is None:
                    cache = [c[t.owner] for c in image_cache(embeddings)]
                else:
                    cache = list(image_cache(row_embeddings, prev_logits))
                low, iou_pred = fast_decoder(*cache, sparse)
            else:
                if prev_logits is None:
                    _, dense = pe(None, None, None)
                    dense = dense.expand(n_rows, -1, -1, -1)
                else:
                    _, dense = pe(None, None, prev_logits)
                low, iou_pred = model.mask_decoder.predict_masks(row_embeddings, image_pe, sparse, dense)
            low, iou_pred = low.float(), iou_pred.float()
            res, logits = _round_loss(low, iou_pred, t, p, loop, s)
        if with_grad:
            per_row_loss = per_row_loss + res.total
            sums = {name: value + res.terms[name] for name, value in sums.items()}
            loss_rounds += 1
        if r == 0:
            iou_first = res.true_iou
        iou_last = res.true_iou
        if r == num_rounds - 1:
            break
        # Feed back the chosen mask's logits and, where the schedule says so, add a point.
        prev_logits = low[torch.arange(n_rows, device=device), res.feedback].detach().unsqueeze(1)
        _add_clicks(p, t, logits, res.feedback, r + 1, gens, loop)
    return _summarise(per_row_loss, sums, loss_rounds, iou_first, iou_last, t, len(batch))
