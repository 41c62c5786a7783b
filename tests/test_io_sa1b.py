"""Tests of SA-1B file reading/writing (segany.io.sa1b) and atomic writes (segany.io.files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segany.io import FormatError
from segany.io.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from segany.io.rle import encode_mask, mask_to_uncompressed_rle
from segany.io.sa1b import SA1BImage, read_sa1b, write_sa1b

FIXTURE = Path(__file__).resolve().parent / "data" / "io" / "sa1b"


def test_read_fixture() -> None:
    raw = json.loads((FIXTURE / "sa_1.json").read_text())
    parsed = read_sa1b(FIXTURE / "sa_1.json")
    width, height = Image.open(FIXTURE / "sa_1.jpg").size
    assert parsed.image == SA1BImage(image_id=1, width=width, height=height, file_name="sa_1.jpg")
    assert len(parsed.annotations) == len(raw["annotations"]) == 3
    for ann, expected in zip(parsed.annotations, raw["annotations"]):
        mask = ann.mask()
        assert mask.shape == (height, width)
        # area and bbox in the fixture were computed with numpy when it was made.
        assert int(mask.sum()) == ann.area == expected["area"]
        assert ann.bbox == expected["bbox"]
        assert ann.id == expected["id"]
        assert ann.predicted_iou == pytest.approx(expected["predicted_iou"])
        x, y = ann.point_coords[0]
        assert mask[int(y), int(x)]  # the prompt point lies on its mask
    assert parsed.to_json() == raw


def _records(h: int, w: int) -> tuple[list[dict], list[np.ndarray]]:
    """Generator-style records using all accepted segmentation forms and numpy scalar types."""
    rng = np.random.default_rng(0)
    masks = [rng.random((h, w)) < p for p in (0.2, 0.5, 0.8, 0.4)]
    segs = [masks[0], mask_to_uncompressed_rle(masks[1]), encode_mask(masks[2]), torch.from_numpy(masks[3])]
    records = []
    for i, (mask, seg) in enumerate(zip(masks, segs)):
        ys, xs = np.nonzero(mask)
        records.append(
            {
                "segmentation": seg,
                "area": int(mask.sum()),
                # SAM's own convention (w = x_max - x_min); the writer must keep it untouched.
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
                "predicted_iou": np.float32(0.9 - 0.1 * i),
                "point_coords": np.array([[float(xs[0]), float(ys[0])]]),
                "stability_score": 0.95 - 0.01 * i,
                "crop_box": [0, 0, w, h],
            }
        )
    return records, masks


def test_write_read_round_trip(tmp_path: Path) -> None:
    h, w = 21, 34
    records, masks = _records(h, w)
    info = {"image_id": 7, "width": w, "height": h, "file_name": "img.jpg"}
    out = write_sa1b(tmp_path / "img.json", info, records, first_id=40)
    assert out == tmp_path / "img.json"
    raw = json.loads(out.read_text())
    assert set(raw) == {"image", "annotations"}
    assert raw["image"] == info
    assert set(raw["annotations"][0]) == {
        "id",
        "segmentation",
        "bbox",
        "area",
        "predicted_iou",
        "stability_score",
        "crop_box",
        "point_coords",
    }
    parsed = read_sa1b(out)
    assert [a.id for a in parsed.annotations] == [40, 41, 42, 43]
    for ann, record, mask in zip(parsed.annotations, records, masks):
        assert isinstance(ann.segmentation["counts"], str)
        np.testing.assert_array_equal(ann.mask(), mask)
        assert ann.area == int(mask.sum())
        assert ann.bbox == [float(v) for v in record["bbox"]]
        assert ann.predicted_iou == pytest.approx(float(record["predicted_iou"]))
        assert ann.stability_score == pytest.approx(record["stability_score"])
        assert ann.point_coords == record["point_coords"].tolist()
        assert ann.crop_box == [0.0, 0.0, float(w), float(h)]


def test_write_rejects_mask_of_wrong_size_and_leaves_no_file(tmp_path: Path) -> None:
    records, _ = _records(10, 12)
    target = tmp_path / "x.json"
    with pytest.raises(FormatError, match=r"record #0.*\(10, 12\).*\(11, 12\)"):
        write_sa1b(target, {"image_id": 1, "width": 12, "height": 11, "file_name": "x.jpg"}, records)
    assert list(tmp_path.iterdir()) == []
    records[0].pop("predicted_iou")
    with pytest.raises(FormatError, match="predicted_iou"):
        write_sa1b(target, {"image_id": 1, "width": 12, "height": 10, "file_name": "x.jpg"}, records)


def _broken(tmp_path: Path, edit) -> Path:
    data = json.loads((FIXTURE / "sa_1.json").read_text())
    edit(data)
    path = tmp_path / "sa_1.json"
    path.write_text(json.dumps(data))
    return path


def test_read_errors_name_file_and_field(tmp_path: Path) -> None:
    truncated = tmp_path / "cut.json"
    truncated.write_text((FIXTURE / "sa_1.json").read_text()[:700])
    with pytest.raises(FormatError, match=r"cut\.json.*truncated"):
        read_sa1b(truncated)
    with pytest.raises(FormatError, match="not found"):
        read_sa1b(tmp_path / "missing.json")

    path = _broken(tmp_path, lambda d: d["annotations"][1].pop("stability_score"))
    with pytest.raises(FormatError, match=r"sa_1\.json: annotation #1 \(id 101\): missing 'stability_score'"):
        read_sa1b(path)
    path = _broken(tmp_path, lambda d: d["image"].update(width=100))
    with pytest.raises(FormatError, match=r"annotation #0.*does not match"):
        read_sa1b(path)
    path = _broken(tmp_path, lambda d: d["annotations"][2].update(bbox=[1, 2, 3]))
    with pytest.raises(FormatError, match="'bbox' must be a list of 4 numbers"):
        read_sa1b(path)
    path = _broken(tmp_path, lambda d: d["annotations"][0].update(segmentation=[[0, 0, 5, 0, 5, 5]]))
    with pytest.raises(FormatError, match="COCO RLE"):
        read_sa1b(path)
    path = _broken(tmp_path, lambda d: d.pop("image"))
    with pytest.raises(FormatError, match="not an SA-1B file"):
        read_sa1b(path)


def test_atomic_writes(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    # A value json cannot encode: the old file stays and no temporary file is left behind.
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
    atomic_write_json(tmp_path / "n.json", {"a": np.float32(0.5), "b": np.arange(3), "c": torch.tensor([1, 2])})
    assert read_json(tmp_path / "n.json") == {"a": 0.5, "b": [0, 1, 2], "c": [1, 2]}


def test_atomic_write_failure_removes_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
