"""SAM-HQ through the click decoders: ``fast`` (and ``bf16``) against the HQ model's own decoder in the
predictor and the automatic generator, ``auto``'s choice, and ``lowrank``'s refusal."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sam_testing import randomize_

from segany import SamPredictor
from segany.inference.automatic import SamAutomaticMaskGenerator
from segany.inference.decoders import build_decoder, resolve_decoder
from segany.model import PRESETS, Sam, build_sam

TOL = 1e-4
TINY_HQ = PRESETS["tiny"].replace(hq=True, name="custom")
IMAGE = np.random.default_rng(7).integers(0, 256, (120, 150, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model() -> Sam:
    return randomize_(build_sam(TINY_HQ), seed=11).eval()


@pytest.fixture
def hq_token_only(model: Sam, request: pytest.FixtureRequest):
    """Set the model's ``hq_token_only`` for one test and restore it afterwards."""
    before = model.mask_decoder.hq_token_only
    model.mask_decoder.hq_token_only = request.param
    yield request.param
    model.mask_decoder.hq_token_only = before


PROMPTS = [
    dict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1])),
    dict(point_coords=np.array([[30.0, 40.0], [90.0, 20.0], [10.0, 100.0]]), point_labels=np.array([1, 0, 1])),
    dict(box=np.array([5.0, 8.0, 100.0, 90.0]), point_coords=np.array([[50.0, 50.0]]), point_labels=np.array([0])),
    dict(box=np.array([5.0, 8.0, 100.0, 90.0])),
]


def _close(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> None:
    got, want = torch.as_tensor(np.asarray(got)), torch.as_tensor(np.asarray(want))
    assert got.shape == want.shape
    scale = max(1.0, float(want.abs().max()) / 10)
    torch.testing.assert_close(got, want, atol=TOL * scale, rtol=0)


@pytest.mark.parametrize("hq_token_only", [False, True], indirect=True)
def test_fast_decoder_gives_the_hq_reference_masks(model, hq_token_only):
    """One mask per prompt as the HQ decoder gives it, multimask or single, with a mask prompt, and a
    batch through predict_low_res with skipped upscaling."""
    ref, fast = SamPredictor(model, decoder="reference"), SamPredictor(model, decoder="fast")
    assert fast.decoder.name == "fast"
    for p in (ref, fast):
        p.set_image(IMAGE)
    previous = ref.predict(**PROMPTS[0])[2][:1]
    cases = [dict(p, multimask_output=m) for p in PROMPTS for m in (True, False)]
    cases.append(dict(PROMPTS[0], mask_input=previous, multimask_output=False))
    for prompt in cases:
        want_masks, want_scores, want_low = ref.predict(**prompt, return_logits=True)
        got_masks, got_scores, got_low = fast.predict(**prompt, return_logits=True)
        assert got_low.shape == want_low.shape == (1, 64, 64)  # SAM-HQ: one mask either way
        _close(got_low, want_low)
        _close(got_scores, want_scores)
        _close(got_masks, want_masks)
    coords = torch.rand(5, 2, 2, generator=torch.Generator().manual_seed(5)) * model.image_size
    labels = torch.tensor([[1, 0]] * 5)
    for multimask in (True, False):
        want_low, want_iou = ref.predict_low_res(coords, labels, multimask_output=multimask)
        got_low, got_iou = fast.predict_low_res(coords, labels, multimask_output=multimask)
        _close(got_low, want_low)
        _close(got_iou, want_iou)
    threshold = float(got_iou[:, 0].median())
    skipped, _ = fast.predict_low_res(coords, labels, multimask_output=False, skip_below=threshold)
    kept = (got_iou > threshold).any(dim=1)
    assert 0 < int(kept.sum()) < len(kept)
    torch.testing.assert_close(skipped[kept], got_low[kept])


def test_stored_hq_embedding_is_accepted_and_decoded_alike(model):
    """An HQ embedding (C + early_dim channels) goes back in through set_image_embedding."""
    ref = SamPredictor(model, decoder="reference")
    ref.set_image(IMAGE)
    stored = ref.get_embedding()
    assert stored.features.shape[1] == model.prompt_encoder.embed_dim + model.mask_decoder.early_dim
    fast = SamPredictor(model, decoder="fast")
    fast.set_image_embedding(stored)
    _close(fast.predict(**PROMPTS[1], return_logits=True)[2], ref.predict(**PROMPTS[1], return_logits=True)[2])


@pytest.mark.parametrize("hq_token_only", [False, True], indirect=True)
def test_bf16_decoder_runs_hq_close_to_the_reference(model, hq_token_only):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("bfloat16 products need oneDNN")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a CPU without bfloat16 instructions
        bf16 = SamPredictor(model, decoder="bf16")
    ref = SamPredictor(model, decoder="reference")
    for p in (ref, bf16):
        p.set_image(IMAGE)
    for prompt in PROMPTS:
        want = ref.predict(**prompt, return_logits=True)
        got = bf16.predict(**prompt, return_logits=True)
        assert got[2].shape == want[2].shape == (1, 64, 64)
        a, b = got[0] > 0, want[0] > 0
        assert (a & b).sum() / max(1, (a | b).sum()) >= 0.95
        np.testing.assert_allclose(got[1], want[1], atol=0.05)


@pytest.mark.parametrize("hq_token_only", [False, True], indirect=True)
def test_automatic_generator_with_fast_equals_reference(model, hq_token_only):
    """The generator's default (auto = fast on a CPU) gives the HQ reference decoder's masks."""
    kwargs = dict(points_per_side=4, pred_iou_thresh=-10, stability_score_thresh=-10)
    auto = SamAutomaticMaskGenerator(model, **kwargs)
    assert auto.predictor.decoder.name == "fast"
    ref = SamAutomaticMaskGenerator(SamPredictor(model, decoder="reference"), **kwargs)
    got, want = auto.generate(IMAGE), ref.generate(IMAGE)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g["segmentation"].shape == (120, 150)
        np.testing.assert_allclose(g["predicted_iou"], w["predicted_iou"], atol=TOL)
        mismatch = (g["segmentation"] != w["segmentation"]).mean()
        assert mismatch <= 1e-3  # logits equal to 1e-4: at most a pixel at the threshold flips


def test_auto_picks_fast_for_hq_on_cpu_and_lowrank_refuses(model):
    assert resolve_decoder("auto", model, torch.device("cpu")) == "fast"
    assert resolve_decoder("auto", model, torch.device("cuda")) == "reference"
    with pytest.raises(ValueError, match="^decoder='lowrank' does not run SAM-HQ models; use decoder='fast'$"):
        build_decoder("lowrank", model)
    with pytest.raises(ValueError, match="lowrank"):
        SamPredictor(model, decoder="lowrank").set_image(IMAGE)


def test_fast_cache_refuses_a_plain_embedding(model):
    decoder = build_decoder("fast", model)
    with pytest.raises(ValueError, match="HQ encoder"):
        decoder.prepare(torch.zeros(1, model.prompt_encoder.embed_dim, 16, 16))


@pytest.mark.parametrize("name", ["reference", "fast"])
def test_an_empty_hq_batch_has_one_mask_per_prompt(model, name):
    p = SamPredictor(model, decoder=name)
    p.set_image(IMAGE)
    low, iou = p.predict_low_res(torch.zeros(0, 1, 2), torch.zeros(0, 1), multimask_output=True)
    assert low.shape == (0, 1, 64, 64) and iou.shape == (0, 1)
