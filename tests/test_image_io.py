"""Reading images: every kind a user may have ends up (H, W, 3) uint8 RGB, bad files give ImageError."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segany.errors import ImageError
from segany.io.image import read_image, to_rgb_uint8


def test_every_test_image_reads_as_rgb(test_images):
    assert len(test_images) >= 5
    for path in test_images:
        image = read_image(path)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, path
        with Image.open(path) as im:
            assert image.shape[:2] == (im.height, im.width)


def test_greyscale_is_replicated(test_images):
    path = next(p for p in test_images if p.name == "coins.png")
    image = read_image(path)
    raw = np.asarray(Image.open(path))
    assert np.array_equal(image[..., 0], raw) and np.array_equal(image[..., 1], raw)


def test_sixteen_bit_is_stretched_not_clipped(test_images):
    path = next(p for p in test_images if "16bit" in p.name)
    image = read_image(path)
    assert image.min() == 0 and image.max() == 255
    eight = read_image(next(p for p in test_images if p.name == "coins.png"))
    # Same picture at two bit depths: a strong linear relation survives the stretch.
    assert np.corrcoef(image[..., 0].ravel(), eight[..., 0].ravel())[0, 1] > 0.999


def test_rgba_drops_alpha(test_images):
    path = next(p for p in test_images if "rgba" in p.name)
    image = read_image(path)
    raw = np.asarray(Image.open(path))
    assert np.array_equal(image, raw[..., :3])


@pytest.mark.parametrize(
    "array,shape",
    [
        (np.zeros((5, 7), np.uint8), (5, 7, 3)),
        (np.zeros((5, 7, 1), np.uint16), (5, 7, 3)),
        (np.ones((5, 7, 4), np.float32), (5, 7, 3)),
        (np.zeros((5, 7), bool), (5, 7, 3)),
    ],
)
def test_to_rgb_uint8_shapes(array, shape):
    out = to_rgb_uint8(array)
    assert out.shape == shape and out.dtype == np.uint8


@pytest.mark.parametrize("shape", [(5,), (5, 7, 2), (0, 7, 3), (2, 5, 7, 3)])
def test_to_rgb_uint8_rejects(shape):
    with pytest.raises(ImageError):
        to_rgb_uint8(np.zeros(shape, np.uint8))


def test_bad_files(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="cannot read"):
        read_image(bad)
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)


def test_truncated_jpeg(tmp_path, test_images):
    data = next(p for p in test_images if p.suffix == ".jpg").read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError):
        read_image(bad)
