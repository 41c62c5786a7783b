"""The interactive simulation: round schedule, prompt accumulation, multimask choice, schedule of
learning rates, and the data pipeline's filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segany.io.rle import decode_rle, encode_mask
from segany.model import PRESETS, build_sam
from segany.ops.clicks import round_schedule
from segany.train import engine
from segany.train.config import LoopSection, OptimSection, load_config, parse_override
from segany.train.data import CachedImage, StepBatchSampler, TrainDataset
from segany.train.optim import lr_factor, param_groups


def _batch(n_images: int = 2, masks: int = 2, size: int = 64) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    batch = []
    for i in range(n_images):
        image = torch.randint(0, 255, (3, size, size - 8), generator=g, dtype=torch.uint8)
        m = torch.zeros(masks, size, size - 8, dtype=torch.bool)
        for j in range(masks):
            m[j, 4 + 8 * j : 30 + 8 * j, 6 : 20 + 5 * j] = True
        batch.append({"image": image, "masks": m, "index": i, "step": 3})
    return batch


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam(PRESETS["tiny"].replace(image_size=64)).train()


def test_rounds_follow_the_schedule_and_prompts_accumulate(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny()
    loop = LoopSection(num_rounds=11, box_probability=0.5, seed=1, fast_decoder=False)
    token_counts: list[int] = []
    real_decoder = model.mask_decoder.predict_masks

    def counting(emb, pe, sparse, dense):
        token_counts.append(sparse.shape[1])
        return real_decoder(emb, pe, sparse, dense)

    monkeypatch.setattr(model.mask_decoder, "predict_masks", counting)
    calls: list[int] = []
    real_points = engine.error_region_points

    def recording(pred, gt, generator=None):
        calls.append(pred.shape[0])
        return real_points(pred, gt, generator=generator)

    monkeypatch.setattr(engine, "error_region_points", recording)
    batch = _batch()
    out = engine.interactive_step(model, batch, loop)
    # 11 decoder passes; every round adds one token slot (a point, or padding in a no-point round)
    assert token_counts == list(range(2, 13))
    # the corrective points follow each image's round schedule: 8 point rounds out of 10 later rounds
    expected = 0
    for item in batch:
        sched = round_schedule(11, np.random.default_rng([loop.seed, item["step"], item["index"], 2]))
        assert sched[0] and not sched[-1] and sum(sched) == 9
        expected += sum(sched[1:])
    assert len(calls) == expected == 16
    assert out.images == 2 and out.masks == 4
    assert out.loss.requires_grad and torch.isfinite(out.loss)
    out.loss.backward()
    # gradients reach the encoder, the prompt encoder's point and mask-prompt layers, and the decoder
    assert model.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.prompt_encoder.mask_downscaling[0].weight.grad.abs().sum() > 0
    assert model.mask_decoder.iou_prediction_head.layers[0].weight.grad.abs().sum() > 0


def test_single_point_uses_multimask_and_box_uses_single_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny()
    seen: list[tuple[int, ...]] = []
    real = engine.sam_loss

    def spy(logits, iou_pred, targets, *args):
        seen.append(tuple(logits.shape[:2]))
        return real(logits, iou_pred, targets, *args)

    monkeypatch.setattr(engine, "sam_loss", spy)
    engine.interactive_step(model, _batch(1, 3), LoopSection(num_rounds=1, box_probability=0.0))
    assert seen == [(3, 3)]  # 3 rows, 3 candidate masks each
    seen.clear()
    engine.interactive_step(model, _batch(1, 3), LoopSection(num_rounds=1, box_probability=1.0))
    assert seen == [(3, 1)]
    seen.clear()
    # 4 rounds = initial point, one corrective point in round 2 or 3, last round without: once the
    # corrective point is in, every row has two points and uses the single-mask output
    engine.interactive_step(model, _batch(1, 3), LoopSection(num_rounds=4, box_probability=0.0))
    assert len(seen) == 4 and seen[0] == (3, 3) and seen[-1] == (3, 1)


def test_prompts_do_not_depend_on_batch_composition() -> None:
    model = _tiny().eval()  # no drop path: deterministic
    loop = LoopSection(num_rounds=4)
    batch = _batch(2, 2)
    together = engine.interactive_step(model, batch, loop)
    apart = [engine.interactive_step(model, [item], loop) for item in batch]
    assert together.loss.item() == pytest.approx(sum(o.loss.item() for o in apart), rel=1e-4)


def test_fast_decoder_gives_the_same_loss_and_gradients() -> None:
    """The rewritten decoder (shared first-layer image side, reassociated attention) trains the same
    function: same loss and same gradients, mask-prompt rounds included."""
    batch = _batch(2, 3)
    results = []
    for fast in (True, False):
        model = _tiny().eval()  # no drop path: deterministic
        out = engine.interactive_step(model, batch, LoopSection(num_rounds=3, seed=2, fast_decoder=fast))
        out.loss.backward()
        results.append(
            (out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    (fast_loss, fast_grads), (ref_loss, ref_grads) = results
    assert fast_loss == pytest.approx(ref_loss, rel=1e-5)
    for name, grad in ref_grads.items():
        if name not in fast_grads:
            # Key biases of token->image attention shift every logit of a softmax row equally: the
            # rewrite drops them, and their true gradient is zero.
            assert "token_to_image.k_proj.bias" in name and grad.abs().max() < 1e-6, name
            continue
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_frozen_encoder_gets_no_gradient() -> None:
    model = _tiny()
    model.image_encoder.requires_grad_(False)
    out = engine.interactive_step(model, _batch(1, 2), LoopSection(num_rounds=2), freeze_image_encoder=True)
    out.loss.backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert model.mask_decoder.mask_tokens.weight.grad is not None


def test_lr_schedule_warmup_then_steps() -> None:
    opt = OptimSection(lr=1.0, warmup_steps=4, decay_steps=[10, 20], decay_factor=0.1)
    assert [lr_factor(s, opt) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert lr_factor(9, opt) == 1.0 and lr_factor(10, opt) == pytest.approx(0.1)
    assert lr_factor(25, opt) == pytest.approx(0.01)


def test_layer_decay_and_no_weight_decay_groups() -> None:
    model = _tiny()
    depth = len(model.image_encoder.blocks)
    groups = param_groups(model, OptimSection(lr=1.0, layer_decay=0.5, weight_decay=0.1), depth)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["mask_decoder.iou_token.weight"]["lr"] == 1.0
    assert by_name["mask_decoder.iou_token.weight"]["weight_decay"] == 0.0
    assert by_name["image_encoder.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(0.5**depth)
    assert by_name["image_encoder.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.1
    assert by_name["image_encoder.patch_embed.proj.weight"]["lr"] == pytest.approx(0.5 ** (depth + 1))
    assert by_name["image_encoder.pos_embed"]["weight_decay"] == 0.0


def test_dataset_filters_and_sampler_split() -> None:
    h, w = 20, 30
    big = np.ones((h, w), bool)  # 100% of the image: dropped
    small = np.zeros((h, w), bool)
    small[:2, :1] = True  # 2 px: dropped with min_mask_pixels=4
    ok = np.zeros((h, w), bool)
    ok[5:10, 5:10] = True
    masks = [big, small, ok]
    item = CachedImage(
        np.zeros((h, w, 3), np.uint8), [encode_mask(m) for m in masks],
        np.array([m.mean() for m in masks]), np.array([m.sum() for m in masks]), "x",
    )
    empty = CachedImage(np.zeros((h, w, 3), np.uint8), [encode_mask(big)], np.array([1.0]), np.array([h * w]), "y")
    ds = TrainDataset([item, empty], size=32, masks_per_image=4, max_area_fraction=0.9, min_mask_pixels=4)
    assert len(ds) == 1  # the image left without masks is dropped
    got = ds[(0, 5)]
    assert got["image"].shape == (3, h, w) and got["masks"].shape == (1, h, w)
    assert torch.equal(got["masks"][0], torch.from_numpy(ok))
    # per-rank slices of a step's global batch cover it exactly once
    one = StepBatchSampler(10, 4, 0, 3, micro_batch=2, seed=7)
    ranks = [list(StepBatchSampler(10, 4, 0, 3, rank=r, world=2, seed=7)) for r in range(2)]
    steps = list(one)
    assert len(steps) == 6 and one.accumulation == 2
    for s in range(3):
        single = steps[2 * s] + steps[2 * s + 1]
        assert sorted(single) == sorted(ranks[0][s] + ranks[1][s])


def test_config_overrides(tmp_path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[optim]\nlr = 1e-3\n[loop]\nsteps = 7\n[data]\ndatasets = ["a", "b:train"]\n')
    cfg = load_config(recipe, ["loop.bf16=true", "optim.lr=2e-4", "model.init=/x/y.pth", "optim.betas=[0.9, 0.95]"])
    assert cfg.loop.steps == 7 and cfg.loop.bf16 is True and cfg.optim.lr == 2e-4
    assert cfg.model.init == "/x/y.pth" and cfg.optim.betas == (0.9, 0.95)
    assert parse_override("loop.num_rounds=3") == ("loop", "num_rounds", 3)
    from segany.train.config import ConfigError

    with pytest.raises(ConfigError):
        load_config(recipe, ["loop.nope=1"])
    with pytest.raises(ConfigError):
        load_config(recipe, ["steps=1"])


def test_random_round_counts_cover_the_range_and_repeat_per_step() -> None:
    fixed = LoopSection(num_rounds=11)
    assert {engine.rounds_of_step(fixed, s) for s in range(20)} == {11}
    loop = LoopSection(num_rounds=11, min_rounds=2, seed=4)
    counts = [engine.rounds_of_step(loop, s) for s in range(300)]
    assert set(counts) == set(range(2, 12))
    assert counts == [engine.rounds_of_step(loop, s) for s in range(300)]


def test_centre_clicks_are_the_evaluation_clickers() -> None:
    from segany.ops.clicks import center_point, next_click

    gt = torch.zeros(2, 32, 32, dtype=torch.bool)
    gt[0, 4:20, 6:30] = True
    gt[1, 10:30, 2:12] = True
    pred = torch.zeros_like(gt)
    pred[0, 4:20, 6:12] = True  # misses most of the object: a positive click in the false negatives
    pred[1, 0:32, 0:20] = True  # spills far out: a negative click in the false positives
    g = torch.Generator().manual_seed(0)
    pts = torch.full((2, 2), -1.0)
    engine._mix_center_clicks(pts, None, None, gt, 1.0, g)
    assert [tuple(p) for p in pts.long().tolist()] == [center_point(m.numpy()) for m in gt]
    lbl = torch.full((2,), -1, dtype=torch.long)
    engine._mix_center_clicks(pts, lbl, pred, gt, 1.0, g)
    for i in range(2):
        c = next_click(pred[i].numpy(), gt[i].numpy())
        assert (int(pts[i, 0]), int(pts[i, 1]), bool(lbl[i])) == (c.x, c.y, c.is_positive)
    assert lbl.tolist() == [1, 0]
    before = pts.clone()
    engine._mix_center_clicks(pts, lbl, pred, gt, 0.0, g)  # probability 0: untouched
    assert torch.equal(pts, before)


def test_flips_and_colour_jitter_keep_masks_on_their_pixels() -> None:
    from segany.train.data import photometric_jitter

    image = np.zeros((16, 24, 3), np.uint8)
    image[2:6, 1:5] = 200  # a bright square in the top-left corner, and its mask
    mask = np.zeros((16, 24), bool)
    mask[2:6, 1:5] = True
    item = CachedImage(image, [encode_mask(mask)], np.array([mask.mean()]), np.array([mask.sum()]), "x")
    ds = TrainDataset([item], 24, 1, hflip=True, color_jitter=0.3, seed=0)
    flipped = 0
    for step in range(12):
        out = ds[(0, step)]
        img, m = out["image"].numpy(), out["masks"][0].numpy()
        bright = img.mean(0) > img.mean()
        assert np.array_equal(bright, m)  # the mask follows the square whichever way the image went
        flipped += int(m[:, -1].any() or m[:, 19:].any())
    assert 0 < flipped < 12  # both orientations occur
    rng = np.random.default_rng(0)
    assert np.array_equal(photometric_jitter(image, 0.0, rng), image)
    jittered = photometric_jitter(image, 0.5, np.random.default_rng(1))
    assert jittered.dtype == np.uint8 and jittered.shape == image.shape and not np.array_equal(jittered, image)


def _square_item(size: int, box: tuple[int, int, int, int], fg: int, bg: int, name: str) -> CachedImage:
    y0, y1, x0, x1 = box
    image = np.full((size, size, 3), bg, np.uint8)
    image[y0:y1, x0:x1] = fg
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return CachedImage(image, [encode_mask(mask)], np.array([mask.mean()]), np.array([mask.sum()]), name)


def test_paste_object_moves_the_donor_pixels_and_cuts_the_masks_it_covers() -> None:
    from segany.train.data import paste_object

    target = _square_item(40, (0, 40, 0, 40), 10, 10, "t")  # one mask covering the whole image
    donor = _square_item(40, (5, 25, 10, 20), 200, 50, "d")  # a 20 x 10 object
    masks = np.ones((1, 40, 40), bool)
    for seed in range(10):
        image, cut, pasted = paste_object(
            target.image, masks, donor.image, decode_rle(donor.rles[0]), (0.5, 1.0), np.random.default_rng(seed)
        )
        ys, xs = np.nonzero(pasted)
        assert 10 <= np.ptp(ys) + 1 <= 20 and 5 <= np.ptp(xs) + 1 <= 10  # rescaled within (0.5, 1.0)
        assert (image[pasted] == 200).all() and (image[~pasted] == 10).all()  # donor pixels, nothing else
        assert np.array_equal(cut[0], ~pasted)
    big = _square_item(40, (0, 40, 0, 40), 200, 200, "b")  # larger than the target: shrunk to fit
    image, _, pasted = paste_object(
        np.zeros((16, 24, 3), np.uint8), np.zeros((0, 16, 24), bool), big.image, np.ones((40, 40), bool),
        (1.0, 1.0), np.random.default_rng(0),
    )
    assert pasted.shape == (16, 24) and pasted.sum() == 16 * 16


def test_copy_paste_adds_other_images_objects_as_masks_and_is_off_by_default() -> None:
    items = [_square_item(32, (4, 12, 4, 12), 100, 0, "a"), _square_item(32, (10, 26, 8, 30), 200, 50, "b")]
    plain = TrainDataset(items, 32, 2, seed=3)
    off = TrainDataset(items, 32, 2, seed=3, copy_paste=0.0)
    assert all(torch.equal(plain[(i, s)]["masks"], off[(i, s)]["masks"]) for i in range(2) for s in range(5))
    ds = TrainDataset(items, 32, 2, min_mask_pixels=4, seed=3, copy_paste=1.0, copy_paste_max=3)
    foreign = 0
    for step in range(20):
        for index in range(2):
            out = ds[(index, step)]
            img, masks = out["image"].numpy(), out["masks"].numpy()
            assert 1 <= len(masks) <= 2 and (masks.reshape(len(masks), -1).sum(1) >= 4).all()
            assert (masks.sum(0) <= 1).all()  # pasted objects cut the masks they cover
            for m in masks:
                colours = np.unique(img[:, m])
                assert len(colours) == 1 and colours[0] in (100, 200)  # each mask is one whole object's pixels
                foreign += int(colours[0] != (100, 200)[index])
    assert foreign > 0  # objects of the other image were pasted and kept as masks


def test_a_paste_that_leaves_no_mask_large_enough_is_undone() -> None:
    # 4 x 4 images whose one mask is the whole image; pasted at half size the object has 4 px and cuts the
    # image's mask to 12, both under min_mask_pixels = 13: the item must come back unpasted.
    items = [_square_item(4, (0, 4, 0, 4), fg, fg, name) for fg, name in ((100, "a"), (200, "b"))]
    ds = TrainDataset(
        items, 4, 2, max_area_fraction=1.0, min_mask_pixels=13, copy_paste=1.0, copy_paste_max=1,
        copy_paste_scale=(0.5, 0.5),
    )
    for step in range(8):
        for index in range(2):
            out = ds[(index, step)]
            assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), items[index].image)
            assert out["masks"].shape == (1, 4, 4) and bool(out["masks"].all())
