"""``segany stats``: the figures of hand-made data sets, COCO vs SA-1B folders vs tar shards, attributes,
bad input."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

from segany.cli.main import main
from segany.engine.stats import measure_mask
from segany.io.rle import encode_mask


def rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def ell(h: int, w: int) -> np.ndarray:
    """An L: a 10x2 bar and a 2x10 foot in a 10x10 box (36 pixels; the hull covers 64)."""
    m = np.zeros((h, w), bool)
    m[0:10, 0:2] = True
    m[8:10, 0:10] = True
    return m


# Image 1 (40x20, landscape, source "a"): a 10x20 rectangle at the top left and the L.
# Image 2 (20x40, portrait, source "b"): one 20x20 square filling the lower half.
MASKS = {
    1: (20, 40, [rect(20, 40, 0, 10, 0, 20), ell(20, 40)]),
    2: (40, 20, [rect(40, 20, 20, 40, 0, 20)]),
}


def _annotations(image_id: int, masks: list[np.ndarray]) -> list[dict]:
    return [
        {"id": image_id * 10 + k, "image_id": image_id, "segmentation": encode_mask(m), "area": int(m.sum()),
         "bbox": [0, 0, 1, 1], "iscrowd": 0, "category_id": 1, "predicted_iou": 0.9, "stability_score": 0.9,
         "crop_box": [0, 0, 1, 1], "point_coords": [[0, 0]]}
        for k, m in enumerate(masks)
    ]


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    images = [{"id": i, "file_name": f"{i}.jpg", "height": h, "width": w, "source": "ab"[i - 1]}
              for i, (h, w, _) in MASKS.items()]
    anns = [a for i, (_, _, ms) in MASKS.items() for a in _annotations(i, ms)]
    for img in images:
        (root / "images" / img["file_name"]).write_bytes(b"")  # stats never reads pixels
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def sa1b_records() -> dict[str, bytes]:
    files = {}
    for i, (h, w, ms) in MASKS.items():
        image = {"image_id": i, "width": w, "height": h, "file_name": f"sa_{i}.jpg", "source": "ab"[i - 1]}
        files[f"sa_{i}.json"] = json.dumps({"image": image, "annotations": _annotations(i, ms)}).encode()
    return files


def stats_of(tmp_path: Path, *data: str, extra: tuple[str, ...] = ()) -> dict:
    out = tmp_path / "stats"
    assert main(["stats", *data, "-o", str(out), "--no-progress", *extra]) == 0
    assert (out / "distributions.png").stat().st_size > 0 and (out / "centres.png").stat().st_size > 0
    return json.loads((out / "stats.json").read_text())


def test_measures_of_one_mask() -> None:
    assert measure_mask(rect(10, 10, 2, 6, 3, 8)) == (20, 4.0, 5.5, 0.0)  # convex: concavity 0
    area, _, _, concavity = measure_mask(ell(20, 40))
    assert (area, concavity) == (36, 1 - 36 / 64)
    assert measure_mask(np.zeros((5, 5), bool)) is None


def test_figures_of_a_hand_made_coco_set(tmp_path: Path, coco: Path) -> None:
    result = stats_of(tmp_path, str(coco))["datasets"]["coco"]
    assert (result["images"], result["masks"]) == (2, 3)
    assert result["masks_per_image"]["mean"] == 1.5 and result["masks_per_image"]["images_per_bin"][1:3] == [1, 1]
    sizes = [math.sqrt(200 / 800), math.sqrt(36 / 800), math.sqrt(400 / 800)]
    assert result["relative_size"]["mean"] == pytest.approx(sum(sizes) / 3)
    bins = result["relative_size"]["masks_per_bin"]
    assert [i for i, n in enumerate(bins) for _ in range(n)] == sorted(int(s * 40) for s in sizes)
    assert result["concavity"]["mean"] == pytest.approx((1 - 36 / 64) / 3)
    assert result["concavity"]["masks_per_bin"][0] == 2 and result["concavity"]["masks_per_bin"][8] == 1
    cells = np.array(result["centres"]["masks_per_cell"])
    # Rectangle 1: centre (5, 10) of 20x40 -> cell (8, 8); square: centre (30, 10) of 40x20 -> cell (24, 16).
    assert cells.sum() == 3 and cells[8, 8] == 1 and cells[24, 16] == 1
    assert result["image_size"]["mean_width"] == 30 and result["image_size"]["images_per_bin"][0] == 2


def test_coco_sa1b_folder_and_tar_shard_give_the_same_figures(tmp_path: Path, coco: Path) -> None:
    folder = tmp_path / "sa1b"
    folder.mkdir()
    for name, data in sa1b_records().items():
        (folder / name).write_bytes(data)
    (folder / "run.json").write_text("{}")  # a segany auto run's own files are not images
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "sa_000000.tar", "w") as tar:
        for name, data in sa1b_records().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            jpg = tarfile.TarInfo(name.replace(".json", ".jpg"))
            tar.addfile(jpg, io.BytesIO(b""))
    result = stats_of(tmp_path, str(coco), str(folder), str(shards / "sa_000000.tar"), extra=("--by", "source"))
    figures = result["datasets"]
    assert list(figures) == ["coco", "sa1b", "sa_000000"]
    assert figures["coco"] == figures["sa1b"] == figures["sa_000000"]
    by = result["by"]["datasets"]
    assert by["coco"] == {"a": {"images": 1, "masks": 2}, "b": {"images": 1, "masks": 1}} == by["sa_000000"]
    assert (tmp_path / "stats" / "by_source.png").is_file()


def test_derived_attributes_and_missing_values(tmp_path: Path, coco: Path) -> None:
    result = stats_of(tmp_path, str(coco), str(coco / "annotations.json"), extra=("--by", "orientation"))
    assert result["by"]["datasets"]["coco"] == {"landscape": {"images": 1, "masks": 2},
                                                 "portrait": {"images": 1, "masks": 1}}
    assert list(result["datasets"]) == ["coco", "coco-2"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{coco}", "--by", "country"], "the data has: dataset, format, orientation, size_class, source"),
        (["{tmp}/nothing"], "no such file or folder"),
        (["{tmp}"], "no annotations.json"),
        (["{coco}", "--names", "a,b"], "--names needs 1"),
        (["{coco}", "--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path: Path, coco: Path, capsys, argv: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    args = [a.format(coco=coco, tmp=tmp_path / "empty") for a in argv]
    assert main(["stats", *args, "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()  # nothing written
