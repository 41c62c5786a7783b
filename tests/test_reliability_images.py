"""Images from strangers (issue 20, audit S01-S14, S54-S60, A05): every file either reads as
``(H, W, 3)`` uint8 or fails with one :class:`ImageError` naming it; sizes are checked against the
documented pixel cap before anything is decoded, with memory bounded in the tests themselves."""

from __future__ import annotations

import io
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from reliability_helpers import png_bomb, run_limited

from segany.errors import ImageError, SeganyError
from segany.io.image import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_PIXELS_ENV,
    max_image_pixels,
    read_image,
    to_rgb_uint8,
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _save(path: Path, image: Image.Image, **kw: object) -> Path:
    image.save(path, **kw)
    return path


# -- files that are not images, or broken ones ----------------------------------------------------


@pytest.mark.parametrize(
    "name, data, fragment",
    [
        ("empty.jpg", b"", "cannot read image"),
        ("text.jpg", b"this is not a picture\n" * 20, "cannot read image"),
        ("header_only.png", b"\x89PNG\r\n\x1a\n", "cannot read image"),
        ("junk.jpg", b"\xff\xd8\xff\xe0" + os.urandom(300), "cannot read image"),
    ],
)
def test_non_images_are_one_clear_error(tmp_path: Path, name: str, data: bytes, fragment: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageError, match=fragment) as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_files_of_every_common_format(tmp_path: Path, photo: np.ndarray) -> None:
    for fmt in ("PNG", "JPEG", "TIFF", "BMP", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, format=fmt)
        for cut in (0.3, 0.7):
            path = tmp_path / f"cut{int(cut * 10)}.{fmt.lower()}"
            path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * cut)])
            with pytest.raises(ImageError, match=str(path.name)):
                read_image(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a folder"):
        read_image(tmp_path)


def test_zero_size_image_in_header(tmp_path: Path) -> None:
    """A TIFF may declare 0 pixels; Pillow opens it but there is nothing to segment."""
    path = tmp_path / "zero.png"
    png_bomb(path, 1, 1)
    data = bytearray(path.read_bytes())
    data[16:24] = (0).to_bytes(4, "big") + (5).to_bytes(4, "big")  # IHDR width 0 (CRC now wrong, too)
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError):
        read_image(path)


# -- the pixel cap ----------------------------------------------------------------------------------


def test_cap_refuses_before_decoding_quickly(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "warn27k.png", 27000, 27000)  # 729 Mpx in ~90 KB (audit S14)
    assert bomb.stat().st_size < 200_000
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no DecompressionBombWarning on the way
        with pytest.raises(ImageError, match=r"too large \(27000x27000 = 729 Mpx, the cap is 300 Mpx"):
            read_image(bomb)
    assert time.perf_counter() - start < 5


def test_cap_is_documented_and_adjustable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photo: np.ndarray) -> None:
    path = _save(tmp_path / "p.png", Image.fromarray(photo))
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS == 300_000_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageError, match=f"48 = 3 Mpx|{MAX_PIXELS_ENV}"):
        read_image(path)
    assert read_image(path, max_pixels=None).shape == (48, 64, 3)  # the API can lift it per call
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")  # no cap
    assert max_image_pixels() is None and read_image(path).shape == (48, 64, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1e9")
    assert max_image_pixels() == 1_000_000_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ImageError, match="expected a number of pixels"):
        read_image(path)


def test_bomb_refused_by_the_cli_under_a_memory_limit(tmp_path: Path) -> None:
    """The audit's worst image case: 8.4 GB and exit 0 before. Under a 2 GB address-space limit the CLI
    must refuse it with exit 2 in seconds (a regression would die of the limit, not take the machine)."""
    bomb = png_bomb(tmp_path / "warn27k.png", 27000, 27000)
    start = time.perf_counter()
    result = run_limited(["segment", str(bomb), "-p", "10,10", "-o", str(tmp_path / "m.png")], timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "image too large" in result.stderr
    assert "Warning" not in result.stderr and not (tmp_path / "m.png").exists()
    assert time.perf_counter() - start < 30


@pytest.mark.slow
def test_lifting_the_cap_on_a_bomb_fails_cleanly_for_lack_of_memory(tmp_path: Path) -> None:
    """With the cap removed on purpose, decoding 729 Mpx under a 1 GB limit runs out of memory: that must
    still be one clear line with exit 2, not a crash."""
    bomb = png_bomb(tmp_path / "warn27k.png", 27000, 27000)
    from reliability_helpers import child_env

    result = run_limited(
        ["segment", str(bomb), "-p", "10,10", "-o", str(tmp_path / "m.png")],
        memory_bytes=1024**3,
        env=child_env(**{MAX_PIXELS_ENV: "0"}),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "not enough memory" in result.stderr and result.stderr.count("\n") == 1


# -- odd modes, EXIF, animation -------------------------------------------------------------------


def _odd_files(tmp_path: Path, photo: np.ndarray) -> dict[str, Path]:
    rgb = Image.fromarray(photo)
    grey16 = Image.fromarray(photo[:, :, 0].astype(np.uint16) * 200)
    floats = photo[:, :, 0].astype(np.float32)
    floats[3, 4] = np.nan
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    frames = [rgb, Image.fromarray(255 - photo)]
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "grey16.png": _save(tmp_path / "grey16.png", grey16),
        "grey16.tif": _save(tmp_path / "grey16.tif", grey16),
        "rgba.png": _save(tmp_path / "rgba.png", rgb.convert("RGBA")),
        "la.png": _save(tmp_path / "la.png", rgb.convert("LA")),
        "grey.png": _save(tmp_path / "grey.png", rgb.convert("L")),
        "bilevel.png": _save(tmp_path / "bilevel.png", rgb.convert("1")),
        "cmyk.jpg": _save(tmp_path / "cmyk.jpg", rgb.convert("CMYK")),
        "palette.png": _save(tmp_path / "palette.png", pal),
        "float_nan.tif": _save(tmp_path / "float_nan.tif", Image.fromarray(floats)),
        "int32.tif": _save(tmp_path / "int32.tif", Image.fromarray(photo[:, :, 0].astype(np.int32) - 100)),
        "anim.gif": _save(tmp_path / "anim.gif", frames[0], save_all=True, append_images=frames[1:]),
        "exif6.jpg": _save(tmp_path / "exif6.jpg", rgb, exif=exif.tobytes()),
        "one.png": _save(tmp_path / "one.png", Image.fromarray(photo[:1, :1])),
        "strip.png": _save(tmp_path / "strip.png", Image.fromarray(np.zeros((1, 2000, 3), np.uint8))),
        "ycc.jpg": _save(tmp_path / "ycc.jpg", rgb.convert("YCbCr")),
    }
    return files


def test_every_odd_mode_reads_as_rgb_uint8(tmp_path: Path, photo: np.ndarray) -> None:
    for name, path in _odd_files(tmp_path, photo).items():
        image = read_image(path)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        expected = {"exif6.jpg": (64, 48), "one.png": (1, 1), "strip.png": (1, 2000)}.get(name, (48, 64))
        assert image.shape[:2] == expected, name


def test_exif_orientation_applied_and_optional(tmp_path: Path, photo: np.ndarray) -> None:
    """Audit S59: pixels come the way a viewer shows them (rotated by EXIF 6), unless asked otherwise."""
    path = _odd_files(tmp_path, photo)["exif6.jpg"]
    shown, stored = read_image(path), read_image(path, exif_transpose=False)
    assert shown.shape == (64, 48, 3) and stored.shape == (48, 64, 3)
    assert np.abs(np.rot90(stored, k=-1).astype(int) - shown.astype(int)).mean() < 1


def test_corrupt_exif_is_ignored_not_fatal(tmp_path: Path, photo: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    good = io.BytesIO()
    Image.fromarray(photo).save(good, format="JPEG", exif=exif.tobytes())
    data = bytearray(good.getvalue())
    start = data.find(b"Exif\x00\x00")
    data[start + 10 : start + 30] = b"\xff" * 20  # scramble the IFD offsets
    path = tmp_path / "badexif.jpg"
    path.write_bytes(bytes(data))
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape[2] == 3


def test_extreme_aspect_ratio_segments(tmp_path: Path, photo: np.ndarray) -> None:
    """Audit S60: a 2000x1 strip resized to the model's input used to round to a 0-pixel side."""
    from segany.ops.transforms import preprocess_shape

    assert preprocess_shape(1, 2000, 256) == (1, 256)
    assert preprocess_shape(2000, 1, 1024) == (1024, 1)
    assert preprocess_shape(480, 640, 1024) == (768, 1024)  # ordinary sizes unchanged


# -- property tests ---------------------------------------------------------------------------------

_DTYPES = st.sampled_from(
    [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.uint64, np.float16,
     np.float32, np.float64, np.bool_, np.complex64]
)
_SHAPES = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    st.tuples(st.integers(0, 5), st.integers(0, 5), st.sampled_from([1, 2, 3, 4, 5])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), dtype=_DTYPES, shape=_SHAPES)
def test_to_rgb_uint8_any_array(data: st.DataObject, dtype: type, shape: tuple[int, ...]) -> None:
    """Any dtype/shape combination (NaN, inf, extremes included) gives a valid image or ImageError
    (which is also a ValueError), never another exception."""
    array = data.draw(hnp.arrays(dtype, shape, elements=None if dtype is not np.complex64 else st.complex_numbers(
        allow_nan=True, allow_infinity=True, width=64)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
        try:
            out = to_rgb_uint8(array)
        except ImageError as exc:
            assert isinstance(exc, ValueError) and isinstance(exc, SeganyError)
            assert "\n" not in str(exc)
            return
    squeezed = shape[:2]
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape == (*squeezed, 3)
    assert out.flags.c_contiguous


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from([object, "U3", "S2", "datetime64[s]", "timedelta64[s]"]))
def test_to_rgb_uint8_non_numeric_arrays(dtype: object) -> None:
    array = np.zeros((4, 5, 3), dtype=dtype) if dtype is not object else np.full((4, 5, 3), None, dtype=object)
    try:
        out = to_rgb_uint8(array)
    except ImageError:
        return
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "TIFF", "BMP"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8),
)
def test_damaged_files_read_or_refuse(tmp_path: Path, fmt: str, cut: float, flips: list[tuple[float, int]]) -> None:
    """Random truncation and byte damage of real files: a valid image or ImageError, nothing else."""
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(buf, format=fmt)
    data = bytearray(buf.getvalue()[: max(0, int(len(buf.getvalue()) * cut))] if cut < 1 else buf.getvalue())
    for where, value in flips:
        if data:
            data[min(len(data) - 1, int(where * len(data)))] = value
    path = tmp_path / f"damaged.{fmt.lower()}"
    path.write_bytes(bytes(data))
    try:
        image = read_image(path, max_pixels=100_000)
    except ImageError as exc:
        assert str(path) in str(exc)
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
