"""SamPredictor behaviour beyond parity: inputs, embedding reuse, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_testing import random_tiny
from segany import ImageEmbedding, SamPredictor
from segany.errors import ImageError, PromptError
from segany.inference.options import InferenceOptions
from segany.io.image import read_image


@pytest.fixture(scope="module")
def predictor(test_images):
    p = SamPredictor(random_tiny(seed=4))
    p.set_image(test_images[0])
    return p


def test_predict_shapes(predictor):
    h, w = predictor.original_size
    masks, scores, low = predictor.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
    assert masks.shape == (3, h, w) and masks.dtype == bool
    assert scores.shape == (3,) and low.shape == (3, 64, 64)
    masks, scores, low = predictor.predict(box=np.array([1, 2, w / 2, h / 2]), multimask_output=False)
    assert masks.shape == (1, h, w)
    logits, _, _ = predictor.predict(box=np.array([1, 2, w / 2, h / 2]), multimask_output=False, return_logits=True)
    assert logits.dtype == np.float32 and np.array_equal(logits > 0, masks)


def test_stored_embedding_gives_same_masks(predictor, tmp_path):
    prompt = dict(point_coords=np.array([[30.0, 40.0], [100.0, 80.0]]), point_labels=np.array([1, 0]))
    expected = predictor.predict(**prompt)
    path = tmp_path / "embedding.safetensors"
    predictor.get_embedding().save(path)
    other = SamPredictor(predictor.model)
    other.set_image_embedding(ImageEmbedding.load(path))
    for a, b in zip(expected, other.predict(**prompt)):
        np.testing.assert_array_equal(a, b)
    # A bare tensor with the original size works too.
    third = SamPredictor(predictor.model)
    third.set_image_embedding(predictor.get_image_embedding(), predictor.original_size)
    np.testing.assert_array_equal(third.predict(**prompt)[0], expected[0])


def test_embedding_of_wrong_model_rejected(predictor):
    with pytest.raises(ImageError, match="shape"):
        predictor.set_image_embedding(torch.zeros(1, 256, 64, 64), (100, 100))
    p = SamPredictor(predictor.model)
    with pytest.raises(ImageError, match="original_size"):
        p.set_image_embedding(torch.zeros(1, 64, 16, 16))


def test_path_and_array_inputs_agree(test_images):
    model = random_tiny(seed=4)
    a, b = SamPredictor(model), SamPredictor(model)
    a.set_image(test_images[1])
    b.set_image(read_image(test_images[1]))
    assert torch.equal(a.get_image_embedding(), b.get_image_embedding())


def test_predict_before_set_image():
    with pytest.raises(RuntimeError, match="set_image"):
        SamPredictor(random_tiny()).predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))


@pytest.mark.parametrize(
    "prompt",
    [
        dict(point_coords=np.array([[1.0, 2.0]])),
        dict(point_coords=np.array([1.0, 2.0]), point_labels=np.array([1])),
        dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 1])),
        dict(box=np.array([1.0, 2.0, 3.0])),
        dict(mask_input=np.zeros((1, 32, 32))),
    ],
)
def test_bad_prompts(predictor, prompt):
    with pytest.raises(PromptError):
        predictor.predict(**prompt)


def test_bad_image_format(predictor):
    with pytest.raises(ImageError):
        predictor.set_image(np.zeros((10, 10, 3), np.uint8), image_format="HSV")


def _model_decoder(predictor, coords, labels, boxes=None, mask_input=None, multimask=True):
    """The model's own decoder on the predictor's image: what the fast path must reproduce."""
    points = (coords, labels) if coords is not None else None
    sparse, dense = predictor.model.prompt_encoder(points, boxes, mask_input)
    with torch.no_grad():
        return predictor.model.mask_decoder(
            predictor.features, predictor.model.prompt_encoder.get_dense_pe(), sparse, dense, multimask
        )


@pytest.mark.parametrize("multimask", [True, False])
def test_predict_low_res_equals_model_decoder(predictor, multimask):
    g = torch.Generator().manual_seed(0)
    s = predictor.model.image_size
    coords = torch.rand(5, 2, 2, generator=g) * s
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [1, -1], [1, 0]])
    boxes = torch.tensor([[4.0, 5.0, 90.0, 120.0]] * 5)
    masks = torch.randn(5, 1, 64, 64, generator=g)
    for kwargs in ({}, {"boxes": boxes}, {"mask_input": masks}, {"boxes": boxes, "mask_input": masks}):
        want_low, want_iou = _model_decoder(predictor, coords, labels, multimask=multimask, **kwargs)
        got_low, got_iou = predictor.predict_low_res(coords, labels, multimask_output=multimask, **kwargs)
        torch.testing.assert_close(got_low, want_low, atol=1e-4, rtol=0)
        torch.testing.assert_close(got_iou, want_iou, atol=1e-5, rtol=0)


def test_predict_low_res_skips_only_prompts_below_the_threshold(predictor):
    from segany.inference.predictor import SKIPPED_LOGIT

    coords = torch.rand(16, 1, 2, generator=torch.Generator().manual_seed(1)) * predictor.model.image_size
    labels = torch.ones(16, 1, dtype=torch.int)
    full_low, iou = predictor.predict_low_res(coords, labels)
    threshold = float(iou.max(dim=1).values.median())  # about half of the prompts fall below
    low, iou2 = predictor.predict_low_res(coords, labels, skip_below=threshold)
    torch.testing.assert_close(iou2, iou)
    computed = (iou > threshold).any(dim=1)
    assert 0 < int(computed.sum()) < 16
    torch.testing.assert_close(low[computed], full_low[computed])
    assert bool((low[~computed] == SKIPPED_LOGIT).all())


def test_predictor_sees_weights_loaded_after_it_was_built(test_images):
    """The fast decoder reads the model's weights at each image, never a stale copy."""
    model = random_tiny(seed=4)
    predictor = SamPredictor(model)
    point = dict(point_coords=np.array([[20.0, 30.0]]), point_labels=np.array([1]))
    predictor.set_image(test_images[0])
    before = predictor.predict(**point)[1]
    model.load_state_dict(random_tiny(seed=9).state_dict())
    predictor.set_image(test_images[0])
    assert not np.allclose(predictor.predict(**point)[1], before)
    fresh = SamPredictor(random_tiny(seed=9))
    fresh.set_image(test_images[0])
    for a, b in zip(predictor.predict(**point)[1:], fresh.predict(**point)[1:]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_prompts_decoded_in_chunks_give_the_same_results(predictor, monkeypatch):
    """On a CPU prompts are decoded a few at a time (cache-sized temporaries); chunking changes nothing."""
    from segany.inference.decoders.fast import FastMaskDecoder

    g = torch.Generator().manual_seed(2)
    coords = torch.rand(5, 2, 2, generator=g) * predictor.model.image_size
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [1, -1], [1, 0]])
    masks = torch.randn(5, 1, 64, 64, generator=g)
    whole = [predictor.predict_low_res(coords, labels, mask_input=m) for m in (None, masks)]
    chunked = SamPredictor(predictor.model, options=InferenceOptions(decode_chunk=2))
    chunked.set_image_embedding(predictor.get_embedding())
    calls = []
    run = FastMaskDecoder.run_transformer
    monkeypatch.setattr(FastMaskDecoder, "run_transformer", lambda self, *a: calls.append(len(a[-1])) or run(self, *a))
    for m, (want_low, want_iou) in zip((None, masks), whole):
        got_low, got_iou = chunked.predict_low_res(coords, labels, mask_input=m)
        torch.testing.assert_close(got_low, want_low, atol=1e-5, rtol=0)
        torch.testing.assert_close(got_iou, want_iou, atol=1e-6, rtol=0)
    assert calls == [2, 2, 1, 2, 2, 1]


def test_bf16_encoder_close_to_float32(test_images, monkeypatch):
    """encoder_precision="bf16" encodes under bfloat16 autocast: a float32 embedding close to the float32
    encoder's (not equal: the products really ran in bfloat16), and nearly the same masks."""
    from segany.inference import options as options_module

    if not torch.backends.mkldnn.is_available():
        pytest.skip("bfloat16 products need oneDNN")
    model = random_tiny(seed=3)
    image = read_image(test_images[0])
    exact, fast = SamPredictor(model), SamPredictor(model, encoder_precision="bf16")
    for p in (exact, fast):
        p.set_image(image)
    a, b = exact.get_image_embedding(), fast.get_image_embedding()
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert 0 < float((a - b).abs().max())
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999
    prompt = dict(point_coords=np.array([[image.shape[1] / 2, image.shape[0] / 2]]), point_labels=np.array([1]))
    for x, y in zip(exact.predict(**prompt)[0], fast.predict(**prompt)[0]):
        assert (x & y).sum() / max((x | y).sum(), 1) > 0.95
    with pytest.raises(ValueError, match="encoder_precision"):
        SamPredictor(model, encoder_precision="fp16")  # type: ignore[arg-type]
    monkeypatch.setattr(options_module, "cpu_has_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="encoder_precision='bf16'.*image encoding will be slower"):
        SamPredictor(model, encoder_precision="bf16")
