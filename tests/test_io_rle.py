"""Tests of segany.io.rle: COCO RLE and uncompressed RLE against numpy, pycocotools and the official package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from segany.io import FormatError
from segany.io.rle import (
    decode_rle,
    encode_mask,
    encode_masks,
    mask_to_uncompressed_rle,
    masks_to_uncompressed_rle_torch,
    rle_area,
    rle_to_bbox,
    to_coco_rle,
    uncompressed_rle_to_coco,
)


def _random_masks(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Blobby random masks plus the edge cases: empty, full, first pixel set, last pixel set."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) < rng.random((n, 1, 1))
    masks[0] = False
    masks[1] = True
    masks[2] = False
    masks[2, 0, 0] = True
    masks[3] = False
    masks[3, -1, -1] = True
    return masks


def _numpy_bbox(mask: np.ndarray) -> list[float]:
    """COCO box (x, y, w, h) of a mask, by brute force."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


@pytest.mark.parametrize("shape", [(8, 13, 17), (6, 1, 9), (5, 32, 1), (6, 64, 48)])
def test_encode_decode_round_trip_random(shape: tuple[int, int, int]) -> None:
    masks = _random_masks(*shape, seed=sum(shape))
    rles = encode_masks(masks)
    assert len(rles) == shape[0]
    for mask, rle in zip(masks, rles):
        assert rle["size"] == [shape[1], shape[2]]
        assert isinstance(rle["counts"], str)
        json.dumps(rle)  # serialisable as is
        decoded = decode_rle(rle)
        assert decoded.dtype == bool
        np.testing.assert_array_equal(decoded, mask)
        assert rle_area(rle) == int(mask.sum())
        assert rle_to_bbox(rle) == _numpy_bbox(mask)


def test_encode_accepts_single_mask_torch_and_integers() -> None:
    masks = _random_masks(4, 10, 12, seed=3)
    from_torch = encode_masks(torch.from_numpy(masks))
    assert from_torch == encode_masks(masks)
    assert encode_masks(masks[1]) == [encode_mask(masks[1])]
    assert encode_masks(masks.astype(np.uint8)) == from_torch
    assert encode_masks(np.zeros((0, 5, 5), bool)) == []
    with pytest.raises(TypeError):
        encode_masks(masks.astype(np.float32))
    with pytest.raises(ValueError):
        encode_masks(np.zeros((2, 3, 4, 5), bool))


def test_decode_accepts_bytes_uncompressed_and_polygons() -> None:
    mask = _random_masks(5, 9, 7, seed=5)[4]
    rle = encode_mask(mask)
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode()}
    np.testing.assert_array_equal(decode_rle(as_bytes), mask)
    np.testing.assert_array_equal(decode_rle(mask_to_uncompressed_rle(mask)), mask)
    # A square polygon: foreground inside its corners only, centre set.
    square = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]
    poly = decode_rle(square, 10, 12)
    assert poly.shape == (10, 12)
    assert poly[4, 4]
    ys, xs = np.nonzero(poly)
    assert ys.min() >= 2 and ys.max() <= 6 and xs.min() >= 2 and xs.max() <= 6
    assert 16 <= poly.sum() <= 25
    with pytest.raises(ValueError):
        decode_rle(square)  # polygons need the image size


def test_decode_rejects_bad_rles() -> None:
    with pytest.raises(FormatError, match="sum"):
        decode_rle({"size": [4, 5], "counts": [3, 3]})  # 6 of 20 pixels
    short = mask_utils.frPyObjects({"size": [4, 5], "counts": [3, 3]}, 4, 5)["counts"].decode()
    with pytest.raises(FormatError, match="cover"):
        decode_rle({"size": [4, 5], "counts": short})  # compressed, still 6 of 20 pixels
    with pytest.raises(FormatError):
        decode_rle({"size": [4, 5], "counts": [3, 30]})
    with pytest.raises(FormatError):
        decode_rle({"size": [4, 5], "counts": "ZZZZ"})
    with pytest.raises(FormatError, match="size"):
        decode_rle({"size": [4], "counts": "3"})
    with pytest.raises(FormatError, match="does not match"):
        to_coco_rle(encode_mask(np.ones((4, 5), bool)), 5, 4)
    with pytest.raises(FormatError):
        decode_rle("not a segmentation")


def _official_rle(masks: torch.Tensor) -> list[dict]:
    from segment_anything.utils.amg import mask_to_rle_pytorch

    return mask_to_rle_pytorch(masks)


@pytest.mark.parametrize("shape", [(7, 11, 13), (4, 1, 1), (5, 30, 2), (4, 64, 80)])
def test_uncompressed_rle_matches_official(shape: tuple[int, int, int]) -> None:
    masks = torch.from_numpy(_random_masks(*shape, seed=shape[1]))
    official = _official_rle(masks)
    batched = masks_to_uncompressed_rle_torch(masks)
    single = [mask_to_uncompressed_rle(m) for m in masks]
    assert batched == official
    assert single == official
    for mask, rle in zip(masks.numpy(), batched):
        assert (rle["counts"][0] == 0) == bool(mask[0, 0])  # a leading zero-run only when needed
        assert sum(rle["counts"]) == mask.size
        # pycocotools reads it as an uncompressed RLE of the same mask.
        h, w = rle["size"]
        via_pycoco = mask_utils.decode(mask_utils.frPyObjects(rle, h, w)).astype(bool)
        np.testing.assert_array_equal(via_pycoco, mask)
        assert uncompressed_rle_to_coco(rle) == encode_mask(mask)


def test_uncompressed_rle_edge_cases() -> None:
    assert masks_to_uncompressed_rle_torch(torch.zeros((0, 4, 4), dtype=torch.bool)) == []
    assert mask_to_uncompressed_rle(np.zeros((3, 4), bool)) == {"size": [3, 4], "counts": [12]}
    assert mask_to_uncompressed_rle(np.ones((3, 4), bool)) == {"size": [3, 4], "counts": [0, 12]}
    with pytest.raises(TypeError):
        masks_to_uncompressed_rle_torch(torch.zeros((1, 4, 4)))
    with pytest.raises(FormatError, match="sum"):
        uncompressed_rle_to_coco({"size": [3, 4], "counts": [5, 6]})


def test_committed_masks_round_trip(shapes_data: Path) -> None:
    _check_round_trip(json.loads((shapes_data / "annotations.json").read_text()))


@pytest.mark.parametrize("dataset", ["DSB2018", "BSDS500", "CVPPP_A1", "KvasirSEG_sample"])
def test_real_masks_round_trip(shared_data: Path, dataset: str) -> None:
    _check_round_trip(json.loads((shared_data / dataset / "annotations.json").read_text()))


def _check_round_trip(coco: dict) -> None:
    anns = coco["annotations"][:25]
    for ann in anns:
        rle = ann["segmentation"]
        mask = decode_rle(rle)
        assert mask.shape == tuple(rle["size"])
        assert int(mask.sum()) == ann["area"] == rle_area(rle)
        assert rle_to_bbox(rle) == _numpy_bbox(mask) == [float(v) for v in ann["bbox"]]
        # pycocotools encodings are canonical: re-encoding gives back the stored string.
        assert encode_mask(mask) == {"size": rle["size"], "counts": rle["counts"]}
    size = anns[0]["segmentation"]["size"]
    stacked = np.stack([decode_rle(a["segmentation"]) for a in anns if a["segmentation"]["size"] == size])
    official = _official_rle(torch.from_numpy(stacked))
    assert masks_to_uncompressed_rle_torch(torch.from_numpy(stacked)) == official


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_uncompressed_rle_on_cuda_matches_cpu() -> None:
    masks = torch.from_numpy(_random_masks(6, 70, 90, seed=11))
    assert masks_to_uncompressed_rle_torch(masks.cuda()) == [mask_to_uncompressed_rle(m) for m in masks]
