"""SamPredictor behaviour beyond parity: inputs, embedding reuse, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_testing import random_tiny
from segany import ImageEmbedding, SamPredictor
from segany.errors import ImageError, PromptError
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
