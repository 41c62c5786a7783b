"""Tests for segany.eval.baselines: GrabCut driven by clicks and boxes, Otsu by clicks."""

from __future__ import annotations

import numpy as np
import pytest

from segany.errors import ImageError, PromptError
from segany.eval.baselines import GrabCutSegmenter, OtsuSegmenter
from segany.eval.metrics import mask_iou

H, W = 120, 160


def _disk(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _image(*disks: np.ndarray, seed: int = 0) -> np.ndarray:
    """Bright disks on a dark noisy background, RGB uint8."""
    rng = np.random.default_rng(seed)
    img = rng.normal(40, 12, (H, W, 3))
    for d in disks:
        img[d] = rng.normal(210, 12, (int(d.sum()), 3)) * np.array([1.0, 0.9, 0.7])
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture()
def scene() -> tuple[GrabCutSegmenter, np.ndarray]:
    disk = _disk(80, 60, 25)
    seg = GrabCutSegmenter()
    seg.set_image(_image(disk))
    return seg, disk


def test_centre_click_segments_the_disk(scene: tuple[GrabCutSegmenter, np.ndarray]) -> None:
    seg, disk = scene
    pred = seg.predict(point_coords=np.array([[80, 60]]), point_labels=np.array([1]))
    assert pred.dtype == bool and pred.shape == (H, W)
    assert mask_iou(pred, disk) > 0.9


def test_box_segments_the_disk(scene: tuple[GrabCutSegmenter, np.ndarray]) -> None:
    seg, disk = scene
    pred = seg.predict(box=np.array([50, 30, 110, 90]))
    assert mask_iou(pred, disk) > 0.9
    both = seg.predict(
        point_coords=np.array([[80, 60], [52, 32]]), point_labels=np.array([1, 0]), box=np.array([50, 30, 110, 90])
    )
    assert mask_iou(both, disk) > 0.9


def test_click_selects_one_of_two_similar_objects() -> None:
    left, right = _disk(40, 60, 20), _disk(120, 60, 20)
    seg = GrabCutSegmenter()
    seg.set_image(_image(left, right, seed=1))
    pred = seg.predict(point_coords=np.array([[120, 60]]), point_labels=np.array([1]))
    assert mask_iou(pred, right) > 0.9
    assert not (pred & left).any()


def test_results_are_reproducible(scene: tuple[GrabCutSegmenter, np.ndarray]) -> None:
    seg, _ = scene
    a = seg.predict(point_coords=np.array([[80, 60]]), point_labels=np.array([1]))
    b = seg.predict(point_coords=np.array([[80, 60]]), point_labels=np.array([1]))
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"point_coords": np.array([80, 60]), "point_labels": np.array([1])},  # not [N, 2]
        {"point_coords": np.array([[80, 60]]), "point_labels": np.array([1, 0])},  # count mismatch
        {"point_coords": np.array([[80, 60]]), "point_labels": np.array([2])},  # bad label
        {"point_coords": np.array([[80, 60]])},  # labels missing
        {"point_labels": np.array([1])},  # coords missing
        {"point_coords": np.array([[W, 60]]), "point_labels": np.array([1])},  # outside
        {"point_coords": np.array([[np.nan, 60]]), "point_labels": np.array([1])},
        {"point_coords": np.array([[80, 60]]), "point_labels": np.array([0])},  # only negative, no box
        {"box": np.array([110, 30, 50, 90])},  # inverted
        {"box": np.array([-5, 30, 50, 90])},  # outside
        {"box": np.array([0, 0, W - 1, H - 1])},  # whole image
        {"box": np.array([1, 2, 3])},
    ],
)
def test_bad_prompts_raise_prompt_error(scene: tuple[GrabCutSegmenter, np.ndarray], kwargs: dict) -> None:
    seg, _ = scene
    with pytest.raises(PromptError):
        seg.predict(**kwargs)


def test_bad_image_and_missing_image() -> None:
    seg = GrabCutSegmenter()
    with pytest.raises(RuntimeError):
        seg.predict(box=np.array([1, 1, 5, 5]))
    with pytest.raises(ImageError):
        seg.set_image(np.zeros((10, 10), np.uint8))
    with pytest.raises(ImageError):
        seg.set_image(np.zeros((10, 10, 3), np.float32))


def test_otsu_click_picks_the_component_under_it() -> None:
    left, right = _disk(40, 60, 20), _disk(120, 60, 20)
    seg = OtsuSegmenter()
    seg.set_image(_image(left, right, seed=1))
    one = seg.predict(np.array([[120, 60]]), np.array([1]))
    assert one.dtype == bool and one.shape == (H, W)
    assert mask_iou(one, right) > 0.95 and not (one & left).any()
    both = seg.predict(np.array([[120, 60], [40, 60]]), np.array([1, 1]))
    assert mask_iou(both, left | right) > 0.95
    minus = seg.predict(np.array([[120, 60], [40, 60], [41, 61]]), np.array([1, 1, 0]))  # a negative click
    assert np.array_equal(minus, one)  # removes the component it lands on
    background = seg.predict(np.array([[5, 5]]), np.array([1]))  # the dark side is a component too
    assert mask_iou(background, ~(left | right)) > 0.95


def test_otsu_refuses_boxes_bad_clicks_and_bad_images() -> None:
    seg = OtsuSegmenter()
    with pytest.raises(RuntimeError):
        seg.predict(np.array([[1, 1]]), np.array([1]))
    with pytest.raises(ImageError):
        seg.set_image(np.zeros((10, 10), np.uint8))
    seg.set_image(_image(_disk(80, 60, 25)))
    for kwargs in (
        {"box": np.array([50, 30, 110, 90])},
        {"point_coords": np.array([[80, 60]]), "point_labels": np.array([0])},
        {"point_coords": np.array([[W, 60]]), "point_labels": np.array([1])},
        {},
    ):
        with pytest.raises(PromptError):
            seg.predict(**kwargs)
