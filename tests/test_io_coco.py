"""Tests of COCO export and loading (segany.io.coco) with pycocotools' COCO and COCOeval."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segany.io import FormatError
from segany.io.coco import coco_instances_from_records, load_coco, write_coco


def _gt_records(folder: Path) -> tuple[dict, list[tuple[dict, list[dict]]]]:
    """Ground truth of a COCO data set turned into generator-style records (binary masks)."""
    gt = json.loads((folder / "annotations.json").read_text())
    per_image: list[tuple[dict, list[dict]]] = []
    for image in gt["images"]:
        records = []
        for ann in gt["annotations"]:
            if ann["image_id"] != image["id"]:
                continue
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            ys, xs = np.nonzero(mask)
            records.append(
                {
                    "segmentation": mask,
                    "area": int(mask.sum()),
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
                    "predicted_iou": 0.9,
                    "point_coords": [[float(xs[0]), float(ys[0])]],
                    "stability_score": 0.95,
                    "crop_box": [0, 0, image["width"], image["height"]],
                }
            )
        per_image.append((image, records))
    return gt, per_image


def _segm_ap(gt_file: Path, detections: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO(str(gt_file))
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_export_loads_in_pycocotools_and_scores(shapes_data: Path, tmp_path: Path) -> None:
    _check_export_round_trip(shapes_data, tmp_path)


@pytest.mark.parametrize("dataset", ["KvasirSEG_sample", "SUIM_sample"])
def test_export_round_trip_on_shared_data(shared_data: Path, tmp_path: Path, dataset: str) -> None:
    _check_export_round_trip(shared_data / dataset, tmp_path)


def _check_export_round_trip(folder: Path, tmp_path: Path) -> None:
    gt, per_image = _gt_records(folder)
    exported = coco_instances_from_records(per_image)
    out = write_coco(tmp_path / "pred.json", exported)

    with contextlib.redirect_stdout(io.StringIO()):
        loaded = COCO(str(out))
    assert len(loaded.getImgIds()) == len(gt["images"])
    assert len(loaded.getAnnIds()) == len(gt["annotations"])
    assert loaded.loadCats(1) == [{"id": 1, "name": "object"}]
    for ann in exported["annotations"]:
        assert ann["iscrowd"] == 0 and ann["category_id"] == 1 and ann["score"] == pytest.approx(0.9)
        assert isinstance(ann["segmentation"]["counts"], str)
        mask = loaded.annToMask(loaded.loadAnns(ann["id"])[0])
        assert int(mask.sum()) == ann["area"]
    # Same boxes and areas as the data set's own (COCO convention) annotations.
    by_key = {(a["image_id"], a["area"]): a["bbox"] for a in gt["annotations"]}
    for ann in exported["annotations"]:
        assert [float(v) for v in by_key[(ann["image_id"], ann["area"])]] == ann["bbox"]

    # Perfect masks score AP 1; dropping half the masks must lower it.
    gt_file = folder / "annotations.json"
    assert _segm_ap(gt_file, exported["annotations"]) == pytest.approx(1.0)
    half = exported["annotations"][::2]
    assert _segm_ap(gt_file, half) < 0.99

    reread = load_coco(out)
    assert [i["id"] for i in reread.images] == [i["id"] for i in gt["images"]]
    assert len(reread.annotations) == len(exported["annotations"])
    assert sum(len(v) for v in reread.annotations_by_image().values()) == len(exported["annotations"])


def test_export_rejects_duplicate_images() -> None:
    info = {"id": 3, "width": 4, "height": 4, "file_name": "a.png"}
    with pytest.raises(FormatError, match="duplicate image id 3"):
        coco_instances_from_records([(info, []), (dict(info, file_name="b.png"), [])])


def _tiny_coco() -> dict:
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:7] = True
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
        "annotations": [{"id": 5, "image_id": 1, "segmentation": {"size": [6, 8], "counts": rle["counts"].decode()}}],
        "categories": [{"id": 1, "name": "object"}],
    }


def test_load_fills_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_tiny_coco()))
    loaded = load_coco(path)
    ann = loaded.annotations[0]
    assert ann["iscrowd"] == 0 and ann["category_id"] == 1
    assert ann["area"] == 15.0
    assert ann["bbox"] == [2.0, 1.0, 5.0, 3.0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("images"), r"no 'images' list"),
        (lambda d: d["annotations"][0].update(image_id=9), r"annotations\[0\] \(id 5\): 'image_id' 9 is not in"),
        (
            lambda d: d["images"][0].update(width=9),
            r"\(id 5\): segmentation size \[6, 8\] does not match image 1 \(a\.png\)",
        ),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), r"annotations\[1\]: duplicate annotation id 5"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\]: missing 'file_name'"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2]), r"'bbox' must be a list of 4 numbers"),
        (lambda d: d["annotations"][0].update(iscrowd=2), r"'iscrowd' must be 0 or 1"),
        (lambda d: d["annotations"][0].update(segmentation=7), r"'segmentation' must be an RLE object or polygons"),
    ],
)
def test_load_errors(tmp_path: Path, edit, message: str) -> None:
    data = _tiny_coco()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=message) as info:
        load_coco(path)
    assert str(path) in str(info.value)


def test_load_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(_tiny_coco())[:-20])
    with pytest.raises(FormatError, match=r"cut\.json: invalid JSON.*truncated"):
        load_coco(path)
