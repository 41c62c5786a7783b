"""The bfloat16 decoder (opt-in): close to the model's float32 decoder, used by the predictor on request."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_testing import random_tiny
from segany import SamPredictor
from segany.inference import cpu, options as options_module, predictor as predictor_module
from segany.inference.decoders.bf16 import BFloat16ClickDecoder
from segany.inference.decoders.fast import DecoderImageCache
from segany.io.image import read_image
from segany.model import Sam


@pytest.fixture(scope="module")
def model() -> Sam:
    return random_tiny(seed=11)


def _embedding(model: Sam, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    gh, gw = model.prompt_encoder.image_embedding_size
    return torch.randn(1, model.prompt_encoder.embed_dim, gh, gw, generator=g)


def _decode(decoder: BFloat16ClickDecoder, cache, sparse: torch.Tensor):
    return decoder(cache.src, cache.k1, cache.v1, cache.q1, sparse)


def _iou(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _assert_close_to_float32(got: torch.Tensor, want: torch.Tensor) -> None:
    """bfloat16 keeps 8 significant bits: logits within a few percent of their scale, same signs nearly
    everywhere."""
    assert got.dtype == torch.float32 and got.shape == want.shape
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) < 0.05 * scale
    for g, w in zip(got.flatten(0, 1), want.flatten(0, 1)):
        assert _iou(g > 0, w > 0) > 0.97


PROMPTS = [
    ("one click", lambda g, s: ((torch.rand(1, 1, 2, generator=g) * s, torch.tensor([[1]])), None)),
    (
        "three prompts of four points",
        lambda g, s: (
            (torch.rand(3, 4, 2, generator=g) * s, torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]])),
            None,
        ),
    ),
    ("boxes", lambda g, s: (None, torch.tensor([[4.0, 5.0, 90.0, 120.0], [0.0, 0.0, 10.0, 10.0]]))),
]


@pytest.mark.parametrize("name,make", PROMPTS, ids=[p[0] for p in PROMPTS])
def test_close_to_the_model_decoder(model, name, make):
    embedding = _embedding(model, seed=1)
    points, boxes = make(torch.Generator().manual_seed(2), model.image_encoder.img_size)
    decoder = BFloat16ClickDecoder(model)
    cache = decoder.cache(DecoderImageCache(model).cache(embedding))
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points, boxes, None)
        want_low, want_iou = model.mask_decoder.predict_masks(
            embedding, model.prompt_encoder.get_dense_pe(), sparse, dense
        )
        got_low, got_iou = _decode(decoder, cache, sparse)
    _assert_close_to_float32(got_low, want_low)
    assert got_iou.dtype == torch.float32
    torch.testing.assert_close(got_iou, want_iou, atol=0.03 * max(1.0, float(want_iou.abs().max())), rtol=0)


def test_mask_prompts(model):
    """A mask prompt changes the image side per prompt: the cache is built per prompt batch."""
    embedding = _embedding(model, seed=3)
    g = torch.Generator().manual_seed(4)
    masks = torch.randn(2, 1, *model.prompt_encoder.mask_input_size, generator=g) * 5
    points = (torch.rand(2, 1, 2, generator=g) * model.image_encoder.img_size, torch.ones(2, 1, dtype=torch.int))
    decoder = BFloat16ClickDecoder(model)
    cache = decoder.cache(DecoderImageCache(model).cache(embedding, masks))
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points, None, masks)
        want_low, _ = model.mask_decoder.predict_masks(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense)
        got_low, _ = _decode(decoder, cache, sparse)
    _assert_close_to_float32(got_low, want_low)


def test_gradients_are_not_tracked(model):
    decoder = BFloat16ClickDecoder(model)
    cache = decoder.cache(DecoderImageCache(model).cache(_embedding(model, seed=5)))
    sparse, _ = model.prompt_encoder((torch.tensor([[[10.0, 20.0]]]), torch.tensor([[1]])), None, None)
    low, iou = _decode(decoder, cache, sparse)
    assert not low.requires_grad and not iou.requires_grad


def test_needs_the_standard_decoder(model):
    import copy

    odd = copy.deepcopy(model)
    odd.mask_decoder = torch.nn.Identity()  # type: ignore[assignment]
    with pytest.raises(ValueError, match="standard mask decoder"):
        BFloat16ClickDecoder(odd)


# -- through the predictor -------------------------------------------------------------------------


def test_predictor_masks_match_float32_on_a_real_image(model, test_images):
    # With random weights the masks are texture-like and the worst of nine IoUs depends on the photo
    # (0.95-0.99 over tests/data/images); on this natural photo they stay above the 0.97 asserted here.
    image = read_image(next(p for p in test_images if p.name == "rocket.jpg"))
    exact, fast = SamPredictor(model), SamPredictor(model, decoder="bf16")
    for p in (exact, fast):
        p.set_image(image)
    h, w = image.shape[:2]
    rng = np.random.default_rng(0)
    prompts = [
        dict(point_coords=rng.uniform(0, min(h, w), (1, 2)), point_labels=np.array([1])),
        dict(point_coords=rng.uniform(0, min(h, w), (3, 2)), point_labels=np.array([1, 0, 1])),
        dict(box=np.array([5.0, 5.0, w * 0.6, h * 0.7])),
    ]
    for prompt in prompts:
        want, want_scores, want_low = exact.predict(**prompt)
        got, got_scores, got_low = fast.predict(**prompt)
        assert got.shape == want.shape and got.dtype == bool
        assert got_low.dtype == np.float32 and got_scores.dtype == np.float32
        assert min(_iou(a, b) for a, b in zip(got, want)) > 0.97
        np.testing.assert_allclose(got_scores, want_scores, atol=0.05)
        # The previous low-resolution logits as a mask prompt.
        again, _, _ = fast.predict(**prompt, mask_input=got_low[:1], multimask_output=False)
        want_again, _, _ = exact.predict(**prompt, mask_input=got_low[:1], multimask_output=False)
        assert _iou(again[0], want_again[0]) > 0.97


def test_predictor_batches_and_skipped_upscaling(model, test_images):
    """Several prompts at once (the generator's path) and the predicted-IoU skip give each prompt's own
    masks, as one by one."""
    predictor = SamPredictor(model, decoder_precision="bf16")
    predictor.set_image(test_images[1])
    s = model.image_encoder.img_size
    coords = torch.rand(6, 1, 2, generator=torch.Generator().manual_seed(6)) * s
    labels = torch.ones(6, 1, dtype=torch.int)
    low, iou = predictor.predict_low_res(coords, labels)
    for i in (0, 5):
        one_low, one_iou = predictor.predict_low_res(coords[i : i + 1], labels[i : i + 1])
        torch.testing.assert_close(one_low[0], low[i], atol=0.05 * float(low.abs().max()), rtol=0)
        torch.testing.assert_close(one_iou[0], iou[i], atol=0.02, rtol=0)
    threshold = float(iou.max(dim=1).values.median())
    skipped_low, skipped_iou = predictor.predict_low_res(coords, labels, skip_below=threshold)
    kept = (iou > threshold).any(dim=1)
    assert kept.any() and not kept.all()
    torch.testing.assert_close(skipped_low[kept], low[kept], atol=0.05 * float(low.abs().max()), rtol=0)
    assert bool((skipped_low[~kept] == predictor_module.SKIPPED_LOGIT).all())


def test_automatic_generator_takes_a_bf16_predictor(model, test_images):
    from segany.inference.automatic import SamAutomaticMaskGenerator

    image = read_image(test_images[2])
    settings = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    exact = SamAutomaticMaskGenerator(model, **settings).generate(image)
    fast = SamAutomaticMaskGenerator(SamPredictor(model, decoder_precision="bf16"), **settings).generate(image)
    assert len(fast) > 0 and abs(len(fast) - len(exact)) <= max(1, len(exact) // 5)
    for m in fast:
        assert m["segmentation"].shape == image.shape[:2] and m["segmentation"].dtype == bool


def test_bad_precision_is_refused(model):
    with pytest.raises(ValueError, match="decoder_precision"):
        SamPredictor(model, decoder_precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decoder_precision='bf16' .*and decoder='fast' disagree"):
        SamPredictor(model, decoder="fast", decoder_precision="bf16")


def test_warns_on_a_cpu_without_bfloat16_products(model, monkeypatch):
    monkeypatch.setattr(options_module, "cpu_has_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="bfloat16 instructions"):
        SamPredictor(model, decoder_precision="bf16")
    with pytest.warns(RuntimeWarning, match="decoder='bf16'.*clicks will be slower"):
        SamPredictor(model, decoder="bf16")
    monkeypatch.setattr(options_module, "cpu_has_bf16", lambda: True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SamPredictor(model, decoder_precision="bf16")
        SamPredictor(model)


def test_cpu_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr("builtins.open", fake_open)
    cpu.cpu_flags.cache_clear()
    try:
        assert cpu.cpu_has_bf16() and cpu.cpu_has_int8_dot()
        cpuinfo.write_text("flags\t\t: fpu sse2 avx2\n")
        cpu.cpu_flags.cache_clear()
        assert not cpu.cpu_has_bf16() and not cpu.cpu_has_int8_dot()
        monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
        cpu.cpu_flags.cache_clear()
        assert cpu.cpu_flags() == frozenset()
    finally:
        monkeypatch.undo()
        cpu.cpu_flags.cache_clear()
