"""The Python API's image entry points under hostile input (issue 20; audit P33-P46): any array given to
``SamPredictor.set_image`` either works or raises ``ImageError`` (a ``ValueError``), and the file
helpers keep their promises for API users too."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sam_testing import random_tiny

from segany import SamPredictor
from segany.errors import ImageError, OutputError
from segany.io.files import atomic_write_json, read_json


@pytest.fixture(scope="module")
def predictor() -> SamPredictor:
    return SamPredictor(random_tiny(seed=2))


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    data=st.data(),
    dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.bool_]),
    shape=st.one_of(
        st.tuples(st.integers(0, 24), st.integers(0, 24)),
        st.tuples(st.integers(0, 24), st.integers(0, 24), st.sampled_from([1, 2, 3, 4, 5])),
        hnp.array_shapes(min_dims=0, max_dims=4, max_side=4),
    ),
)
def test_set_image_any_array(predictor: SamPredictor, data: st.DataObject, dtype: type, shape: tuple[int, ...]) -> None:
    array = data.draw(hnp.arrays(dtype, shape))
    try:
        predictor.set_image(array)
    except ImageError as exc:
        assert isinstance(exc, ValueError) and "\n" not in str(exc)
        return
    h, w = array.shape[:2]
    masks, scores, _ = predictor.predict(point_coords=np.array([[0.0, 0.0]]), point_labels=np.array([1]))
    assert masks.shape[1:] == (h, w) and np.isfinite(scores).all()


@pytest.mark.parametrize(
    "bad",
    [np.array([["a", "b"], ["c", "d"]]), np.full((4, 4, 3), None, dtype=object), np.zeros((3, 3), "datetime64[s]"),
     "not an image path", None],
)
def test_set_image_refuses_non_numeric(predictor: SamPredictor, bad: object) -> None:
    with pytest.raises(ImageError):
        predictor.set_image(bad)


def test_set_image_nested_lists_and_extremes(predictor: SamPredictor) -> None:
    predictor.set_image([[0, 1.5], [255, 7]])  # P40: nested lists of numbers
    predictor.set_image(np.full((5, 6, 3), np.iinfo(np.int64).max))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor.set_image(np.full((5, 6, 3), np.nan, np.float32))  # P34: all NaN -> black
    assert predictor.original_size == (5, 6)


def test_file_helpers_for_api_users(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError) as info:
        atomic_write_json(tmp_path / "d", {"a": 1})
    assert isinstance(info.value, OSError) and "d" in str(info.value)
    with pytest.raises(TypeError):  # not serialisable: refused before the file is touched
        atomic_write_json(tmp_path / "x.json", {"a": object()})
    atomic_write_json(tmp_path / "ok.json", {"a": np.float32(0.5)})
    assert read_json(tmp_path / "ok.json") == {"a": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "ok.json"]
