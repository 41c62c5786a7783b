"""Tests of the data set reader (segany.io.datasets) on the committed data set, the shared ones, and broken input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segany.io import FormatError
from segany.io.datasets import SegmentationDataset

SA1B_FIXTURE = Path(__file__).resolve().parent / "data" / "io" / "sa1b"

# Image and mask counts of the optional shared data sets (their README).
COUNTS = {
    "BSDS500": (500, 56427),
    "COCO_MVal": (377, 400),
    "ISBI2012_EM": (30, 3293),
    "SUIM_sample": (8, 57),
    "KvasirSEG_sample": (5, 6),
    "DSB2018": (110, 5940),
    "CVPPP_A1": (40, 644),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_shared_data_sets(shared_data: Path, name: str) -> None:
    images, masks = COUNTS[name]
    ds = SegmentationDataset(shared_data / name)
    assert ds.layout == "coco"
    assert len(ds) == images
    assert ds.num_instances() == masks
    for sample in (ds[0], ds[-1]):
        image = sample.load_image()  # greyscale (ISBI) and RGBA (CVPPP, DSB) files too
        assert image.shape == (sample.height, sample.width, 3) and image.dtype == np.uint8
        assert sample.path.is_file() and sample.path.name == sample.file_name
        assert sample.ignore_mask() is None  # no crowd regions in these sets
        for inst in sample.annotations[:5]:
            mask = inst.mask()
            assert mask.shape == (sample.height, sample.width)
            assert int(mask.sum()) == inst.area
            ys, xs = np.nonzero(mask)
            assert inst.bbox[:2] == [float(xs.min()), float(ys.min())]


def test_committed_data_set(shapes_data: Path) -> None:
    ds = SegmentationDataset(shapes_data)
    coco = json.loads((shapes_data / "annotations.json").read_text())
    assert ds.layout == "coco" and len(ds) == len(coco["images"]) == 8
    assert ds.num_instances() == len(coco["annotations"])
    for sample in ds:
        image = sample.load_image()  # RGB JPEG, greyscale JPEG and RGBA PNG alike
        assert image.shape == (sample.height, sample.width, 3) and image.dtype == np.uint8
        assert sample.ignore_mask() is None
        for inst in sample.annotations:
            mask = inst.mask()
            assert int(mask.sum()) == inst.area
            ys, xs = np.nonzero(mask)
            assert inst.bbox == [
                float(xs.min()),
                float(ys.min()),
                float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1),
            ]


def test_greyscale_jpeg(shapes_data: Path) -> None:
    ds = SegmentationDataset(shapes_data)
    grey = [s for s in ds if Image.open(s.path).mode == "L"]
    assert len(grey) == 1
    image = grey[0].load_image()
    assert image.shape[2] == 3
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_splits(shapes_data: Path) -> None:
    train_val = SegmentationDataset(shapes_data, split="train+val")
    test = SegmentationDataset(shapes_data, split="test")
    assert (len(train_val), len(test)) == (7, 1)
    # The images' own 'split' field agrees with splits.json.
    train_val_ids = {s.image_id: s.attributes["split"] for s in train_val}
    test_ids = {s.image_id: s.attributes["split"] for s in test}
    assert set(test_ids.values()) == {"test"} and set(train_val_ids.values()) == {"train", "val"}
    assert not train_val_ids.keys() & test_ids.keys()
    assert len(train_val_ids.keys() | test_ids.keys()) == 8
    with pytest.raises(FormatError, match=r"no split 'holdout' \(it has test, train, val\)"):
        SegmentationDataset(shapes_data, split="holdout")


def test_bsds_splits(shared_data: Path) -> None:
    train_val = SegmentationDataset(shared_data / "BSDS500", split="train+val")
    test = SegmentationDataset(shared_data / "BSDS500", split="test")
    assert (len(train_val), len(test)) == (300, 200)
    assert {s.attributes["split"] for s in test} == {"test"}


def test_split_needs_splits_file(shapes_data: Path, tmp_path: Path) -> None:
    shutil.copytree(shapes_data, tmp_path / "d", ignore=shutil.ignore_patterns("splits.json"))
    with pytest.raises(FormatError, match=r"splits\.json"):
        SegmentationDataset(tmp_path / "d", split="train")


def test_limit_and_iter_instances(shapes_data: Path) -> None:
    ds = SegmentationDataset(shapes_data, limit=3)
    assert len(ds) == 3
    total = ds.num_instances()
    assert total > 7
    pairs = list(ds.iter_instances(limit=7))
    assert len(pairs) == 7
    expected = [(s.image_id, a.id) for s in ds for a in s.annotations][:7]
    assert [(s.image_id, a.id) for s, a in pairs] == expected
    assert len(list(ds.iter_instances())) == total
    assert list(ds.iter_instances(limit=0)) == []


def test_coco_json_file_layout(shapes_data: Path, tmp_path: Path) -> None:
    src = shapes_data
    direct = SegmentationDataset(src / "annotations.json")  # images/ next to the file
    assert len(direct) == 8 and direct[0].load_image().shape[2] == 3
    # Images given explicitly, the JSON elsewhere.
    shutil.copy(src / "annotations.json", tmp_path / "gt.json")
    given = SegmentationDataset(tmp_path / "gt.json", images_dir=src / "images")
    assert [s.path for s in given] == [s.path for s in direct]
    # Images side by side with the JSON.
    flat = tmp_path / "flat"
    shutil.copytree(src / "images", flat)
    shutil.copy(src / "annotations.json", flat / "shapes.json")
    side = SegmentationDataset(flat / "shapes.json")
    assert side.image_dir == flat and side[1].load_image().shape == direct[1].load_image().shape


def test_sa1b_folder(tmp_path: Path) -> None:
    ds = SegmentationDataset(SA1B_FIXTURE)
    assert ds.layout == "sa1b" and len(ds) == 1
    sample = ds[0]
    raw = json.loads((SA1B_FIXTURE / "sa_1.json").read_text())
    assert (sample.height, sample.width) == (raw["image"]["height"], raw["image"]["width"])
    assert sample.load_image().shape == (sample.height, sample.width, 3)
    assert [a.id for a in sample.annotations] == [a["id"] for a in raw["annotations"]]
    assert [int(m.sum()) for m in sample.masks()] == [a["area"] for a in raw["annotations"]]
    assert sample.annotations[0].attributes["predicted_iou"] == raw["annotations"][0]["predicted_iou"]
    assert ds.num_instances() == 3
    # splits.json works for SA-1B folders too, with a list of split names.
    split_dir = tmp_path / "split"
    shutil.copytree(SA1B_FIXTURE, split_dir)
    (split_dir / "splits.json").write_text(json.dumps({"train": ["sa_1"], "val": []}))
    assert len(SegmentationDataset(split_dir, split=["train"])) == 1
    assert len(SegmentationDataset(split_dir, split=["val"])) == 0
    # A JSON without its image is an error, not a silent skip.
    broken = tmp_path / "sa"
    shutil.copytree(SA1B_FIXTURE, broken)
    shutil.copy(broken / "sa_1.json", broken / "sa_2.json")
    with pytest.raises(FormatError, match=r"sa_2\.json has no image"):
        SegmentationDataset(broken)


def _write_coco_folder(root: Path, image: np.ndarray, size: tuple[int, int], crowd: bool = False) -> Path:
    """A one-image COCO folder whose annotations claim ``size`` = (height, width)."""
    (root / "images").mkdir(parents=True)
    Image.fromarray(image).save(root / "images" / "a.png")
    h, w = size
    masks = np.zeros((2, h, w), bool)
    masks[0, : h // 2] = True
    masks[1, :, : w // 3] = True
    anns = []
    for i, m in enumerate(masks):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append(
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": int(crowd and i == 1),
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                "area": int(m.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            }
        )
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}], "annotations": anns}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_16bit_image_and_ignore_mask(tmp_path: Path) -> None:
    grey16 = (np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) * 250).astype(np.uint16)
    root = _write_coco_folder(tmp_path / "d", grey16, (12, 20), crowd=True)
    assert Image.open(root / "images" / "a.png").mode.startswith("I")
    sample = SegmentationDataset(root)[0]
    image = sample.load_image()
    assert image.shape == (12, 20, 3) and image.dtype == np.uint8
    assert image[0, 0, 0] < image[-1, -1, 0]  # the intensity ramp survives the conversion
    ignore = sample.ignore_mask()
    assert ignore is not None and ignore.sum() == 12 * (20 // 3) and ignore[:, : 20 // 3].all()
    assert sample.masks().shape == (1, 12, 20)
    assert sample.masks(include_crowd=True).shape == (2, 12, 20)
    assert len(list(SegmentationDataset(root).iter_instances())) == 1


def test_size_mismatch_names_the_image(tmp_path: Path) -> None:
    root = _write_coco_folder(tmp_path / "d", np.zeros((10, 14, 3), np.uint8), (10, 15))
    sample = SegmentationDataset(root)[0]
    with pytest.raises(FormatError, match=r"image a\.png \(id 1\) is 14x10 pixels but its annotations say 15x10"):
        sample.load_image()


def test_bad_folders(tmp_path: Path) -> None:
    root = _write_coco_folder(tmp_path / "d", np.zeros((10, 14, 3), np.uint8), (10, 14))
    (root / "images" / "a.png").unlink()
    with pytest.raises(FormatError, match=r"1 image file\(s\) listed but not found.*a\.png"):
        SegmentationDataset(root)
    shutil.rmtree(root / "images")
    with pytest.raises(FormatError, match=r"images folder .* is missing"):
        SegmentationDataset(root)
    (root / "images").mkdir()
    text = (root / "annotations.json").read_text()
    (root / "annotations.json").write_text(text[: len(text) // 2])
    with pytest.raises(FormatError, match=r"annotations\.json: invalid JSON.*truncated"):
        SegmentationDataset(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FormatError, match="not a data set folder"):
        SegmentationDataset(empty)
    with pytest.raises(FormatError, match="not found"):
        SegmentationDataset(tmp_path / "nowhere")


def test_per_image_ignore_mask_files(tmp_path: Path) -> None:
    """A boundary band given as a PNG (GrabCut style) joins the crowd regions in ignore_mask()."""
    band = np.zeros((12, 20), np.uint8)
    band[5:7, :] = 128  # any non-zero value means "ignore"
    root = _write_coco_folder(tmp_path / "d", np.zeros((12, 20, 3), np.uint8), (12, 20), crowd=True)
    assert SegmentationDataset(root)[0].ignore_mask().sum() == 12 * (20 // 3)  # crowd only
    (root / "ignore").mkdir()
    Image.fromarray(band).save(root / "ignore" / "a.png")  # default place: ignore/<stem>.png
    ignore = SegmentationDataset(root)[0].ignore_mask()
    assert ignore[5:7].all() and ignore[:, : 20 // 3].all()
    assert ignore.sum() == 2 * 20 + 10 * (20 // 3)
    # Named in the image record instead, relative to the images folder; a bad name is one clear error.
    coco = json.loads((root / "annotations.json").read_text())
    for ann in coco["annotations"]:
        ann["iscrowd"] = 0
    coco["images"][0]["ignore_mask"] = "../ignore/a.png"
    (root / "annotations.json").write_text(json.dumps(coco))
    assert SegmentationDataset(root)[0].ignore_mask().sum() == 2 * 20
    coco["images"][0]["ignore_mask"] = "missing.png"
    (root / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(FormatError, match="ignore mask .* not found"):
        SegmentationDataset(root)[0]
    (root / "ignore" / "a.png").unlink()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "ignore" / "a.png")
    coco["images"][0].pop("ignore_mask")
    (root / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(FormatError, match="ignore mask"):
        SegmentationDataset(root)[0].ignore_mask()
