"""The model in the loop on the tiny preset: an annotation export (COCO) -> train -> stage 3 with the new
checkpoint (SA-1B shards) -> train again on both -> stage 3 again. Also: the training reader takes SA-1B
tar shards and ``segany auto`` folders directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_engine_local import KNOBS, write_images

from segany.cli.main import main
from segany.engine.layout import file_sha256
from segany.io.datasets import SegmentationDataset
from segany.io.rle import encode_mask

LOOSE = [*KNOBS, "--stability-score-thresh", "0"]  # a 2-step model's masks are far from stable


def annotate_export(root: Path, sources: list[Path], count: int = 3) -> Path:
    """What an annotation tool's COCO export looks like: images/ and annotations.json (two boxes each)."""
    paths = write_images(root / "images", sources, count, size=(96, 64))
    images, annotations = [], []
    for i, path in enumerate(paths, start=1):
        images.append({"id": i, "file_name": path.name, "width": 96, "height": 64})
        for k, (y0, y1, x0, x1) in enumerate([(5, 30, 10, 50), (30, 60, 40, 90)]):
            mask = np.zeros((64, 96), bool)
            mask[y0:y1, x0:x1] = True
            annotations.append({"id": i * 10 + k, "image_id": i, "category_id": 1, "iscrowd": 0,
                                "segmentation": encode_mask(mask), "area": int(mask.sum()),
                                "bbox": [x0, y0, x1 - x0, y1 - y0]})
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def recipe(path: Path, datasets: list[Path], init: Path | None = None) -> Path:
    lines = ["[model]", 'preset = "tiny"'] + ([f'init = "{init}"'] if init else []) + [
        "[data]", f"datasets = {json.dumps([str(d) for d in datasets])}", "masks_per_image = 2",
        f'cache_dir = "{path.parent / "cache"}"',
        "[optim]", "lr = 2e-3", "warmup_steps = 1",
        "[loop]", "steps = 2", "global_batch = 1", "num_rounds = 1", "threads = 1", "log_every = 1",
        "checkpoint_every = 100",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_annotate_train_auto_train_auto(tmp_path: Path, test_images, capsys) -> None:
    coco = annotate_export(tmp_path / "export", test_images)
    # Round 1: train on the annotation export.
    run1 = tmp_path / "runs" / "round1"
    assert main(["train", str(recipe(tmp_path / "r1.toml", [coco])), "-o", str(run1), "--no-progress"]) == 0
    weights1 = run1 / "model.safetensors"
    assert weights1.is_file()
    # Stage 3 with the new checkpoint, sealed into SA-1B shards (images inside).
    stage3 = tmp_path / "stage3"
    unlabelled = tmp_path / "unlabelled"
    write_images(unlabelled, test_images[1:], 4, size=(96, 64))
    argv = [str(unlabelled), "-o", str(stage3), "-c", str(weights1), "--shard-size", "2", *LOOSE]
    assert main(["auto", *argv]) == 0
    assert json.loads((stage3 / "run.json").read_text())["fingerprint"]["model"]["sha256"] == file_sha256(weights1)
    shards = SegmentationDataset(stage3)
    assert len(shards) == 4 and sum(len(s.annotations) for s in shards) > 0
    # Round 2: fine-tune the round-1 model on the export and the stage-3 shards together.
    run2 = tmp_path / "runs" / "round2"
    r2 = recipe(tmp_path / "r2.toml", [coco, stage3], init=weights1)
    capsys.readouterr()
    assert main(["train", str(r2), "-o", str(run2), "--no-progress"]) == 0
    assert "segany train: 7 images" in capsys.readouterr().out  # 3 annotated + 4 from stage 3
    weights2 = run2 / "model.safetensors"
    assert file_sha256(weights2) != file_sha256(weights1)
    again = tmp_path / "stage3_round2"
    assert main(["auto", str(unlabelled), "-o", str(again), "-c", str(weights2), *LOOSE]) == 0
    assert json.loads((again / "run.json").read_text())["fingerprint"]["model"]["sha256"] == file_sha256(weights2)


def test_training_reader_takes_shards_and_auto_folders(tmp_path: Path, test_images) -> None:
    folder = tmp_path / "in"
    write_images(folder / "sub", test_images, 3, size=(80, 60))
    from sam_testing import random_tiny

    from segany.io.checkpoint import save_checkpoint

    ckpt = save_checkpoint(random_tiny(seed=1), tmp_path / "tiny.pth")
    loose, sealed = tmp_path / "loose", tmp_path / "sealed"
    assert main(["auto", str(folder), "-o", str(loose), "-c", str(ckpt), *KNOBS]) == 0
    assert main(["auto", str(folder), "-o", str(sealed), "-c", str(ckpt), "--shard-size", "2", *KNOBS]) == 0
    a, b, c = SegmentationDataset(loose), SegmentationDataset(sealed), SegmentationDataset(sealed / "sa_000001.tar")
    assert len(a) == len(b) == 3 and len(c) == 1
    for x, y in zip(a, b):
        assert x.image_id == y.image_id and (x.width, x.height) == (y.width, y.height) == (80, 60)
        assert np.array_equal(x.load_image(), y.load_image())
        assert np.array_equal(x.masks(), y.masks())
    expected = np.asarray(Image.open(folder / "sub" / "img02.jpg").convert("RGB"))
    assert np.array_equal(c[0].load_image(), expected)
    (folder / "sub" / "img01.jpg").unlink()
    from segany.io import FormatError

    with pytest.raises(FormatError, match="img01"):
        SegmentationDataset(loose)
