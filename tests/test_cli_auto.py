"""``segany auto``: outputs in each format, reruns, bad images, bad arguments and exit statuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sam_testing import random_tiny
from segany.cli.main import main
from segany.inference.automatic import SamAutomaticMaskGenerator
from segany.io.checkpoint import save_checkpoint
from segany.io.image import read_image
from segany.io.rle import decode_rle
from segany.io.sa1b import read_sa1b

# Loose thresholds: random weights score low, and the tests need some masks.
KNOBS = ["--points-per-side", "4", "--pred-iou-thresh", "-10", "--stability-score-thresh", "0.02"]
GENERATOR_KNOBS = dict(points_per_side=4, pred_iou_thresh=-10.0, stability_score_thresh=0.02)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(random_tiny(seed=1), tmp_path_factory.mktemp("ckpt") / "tiny.pth")


def _save_small(src: Path, dst: Path, size: tuple[int, int] = (96, 72)) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.open(src).convert("RGB").resize(size).save(dst)
    return dst


@pytest.fixture
def images(tmp_path: Path, test_images: list[Path]) -> Path:
    """A folder with two small images, one in a subfolder, and a non-image file."""
    root = tmp_path / "in"
    _save_small(test_images[0], root / "first.jpg")
    _save_small(test_images[1], root / "sub" / "second.png", size=(64, 80))
    (root / "notes.txt").write_text("not an image")
    return root


def run(*argv: str) -> int:
    return main(["auto", *argv])


def test_sa1b_output_matches_the_generator(images: Path, tmp_path: Path, checkpoint: Path, capsys) -> None:
    out = tmp_path / "out"
    assert run(str(images), "-o", str(out), "-c", str(checkpoint), "--no-progress", *KNOBS) == 0
    assert "2 done, 0 skipped, 0 failed" in capsys.readouterr().out
    first, second = read_sa1b(out / "first.json"), read_sa1b(out / "sub" / "second.json")
    assert (second.image.width, second.image.height, second.image.file_name) == (64, 80, "sub/second.png")
    generator = SamAutomaticMaskGenerator(random_tiny(seed=1), output_mode="coco_rle", **GENERATOR_KNOBS)
    expected = generator.generate(read_image(images / "first.jpg"))
    assert expected and len(first.annotations) == len(expected)
    assert [a.area for a in first.annotations] == [r["area"] for r in expected]
    assert [a.segmentation for a in first.annotations] == [r["segmentation"] for r in expected]


def test_rerun_skips_finished_images_and_overwrite_redoes_them(
    images: Path, tmp_path: Path, checkpoint: Path, capsys
) -> None:
    out = tmp_path / "out"
    args = [str(images), "-o", str(out), "-c", str(checkpoint), "--no-progress", *KNOBS]
    assert run(*args) == 0
    stamp = (out / "first.json").stat().st_mtime_ns
    capsys.readouterr()
    assert run(*args) == 0
    captured = capsys.readouterr()
    assert "0 done, 2 skipped, 0 failed" in captured.out
    assert "skipping 2 image(s) already done" in captured.err
    assert (out / "first.json").stat().st_mtime_ns == stamp
    assert run(*args, "--overwrite") == 0
    assert "2 done, 0 skipped" in capsys.readouterr().out


def test_interrupted_run_keeps_finished_images(
    images: Path, tmp_path: Path, checkpoint: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "out"
    args = [str(images), "-o", str(out), "-c", str(checkpoint), "--no-progress", *KNOBS]
    real = SamAutomaticMaskGenerator.generate
    calls = []

    def interrupt_second(self, image):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, image)

    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate", interrupt_second)
    assert run(*args) == 130
    assert (out / "first.json").exists() and not (out / "sub" / "second.json").exists()
    assert not list(out.rglob("*.tmp"))  # no half-written files
    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate", real)
    capsys.readouterr()
    assert run(*args) == 0
    assert "1 done, 1 skipped, 0 failed" in capsys.readouterr().out


def test_corrupt_image_is_reported_and_the_run_goes_on(images: Path, tmp_path: Path, checkpoint: Path, capsys) -> None:
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    out = tmp_path / "out"
    assert run(str(images), "-o", str(out), "-c", str(checkpoint), "--no-progress", *KNOBS) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "broken.jpg" in line]
    assert len(errors) == 1 and "skipping" in errors[0]
    assert "2 done, 0 skipped, 1 failed" in captured.out
    assert (out / "first.json").exists() and not (out / "broken.json").exists()


def test_coco_output_covers_all_finished_images(images: Path, tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "out"
    common = ["-o", str(out), "-c", str(checkpoint), "--format", "coco", "--no-progress", *KNOBS]
    assert run(str(images / "first.jpg"), *common) == 0
    assert run(str(images), *common) == 0
    coco = COCO(str(out / "coco_instances.json"))
    assert sorted(img["file_name"] for img in coco.dataset["images"]) == ["first.jpg", "sub/second.png"]
    per_image = read_sa1b(out / "first.json").annotations + read_sa1b(out / "sub" / "second.json").annotations
    assert len(coco.dataset["annotations"]) == len(per_image) > 0
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        assert decode_rle(ann["segmentation"]).shape == (img["height"], img["width"])
        assert ann["score"] == ann["predicted_iou"]


def test_png_output_and_overlay(images: Path, tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "out"
    image = images / "first.jpg"
    args = ["-o", str(out), "-c", str(checkpoint), "--format", "png", "--overlay", "--no-progress", *KNOBS]
    assert run(str(image), *args) == 0
    lines = (out / "first" / "metadata.csv").read_text().splitlines()
    assert lines[0].startswith("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou")
    pngs = sorted((out / "first").glob("*.png"))
    assert len(pngs) == len(lines) - 1 > 0
    mask = np.asarray(Image.open(out / "first" / "0.png"))
    assert mask.shape == (72, 96) and set(np.unique(mask)) <= {0, 255}
    assert int(lines[1].split(",")[1]) == int((mask == 255).sum())
    overlay = np.asarray(Image.open(out / "first_overlay.png"))
    assert overlay.shape == (72, 96, 3)
    assert not np.array_equal(overlay, read_image(image))


def test_glob_input_and_sa1b_preset(images: Path, tmp_path: Path, checkpoint: Path, capsys) -> None:
    out = tmp_path / "out"
    pattern = str(images / "**" / "*.png")
    preset = ["--preset", "sa1b", "--crop-n-layers", "1"]
    rc = run(pattern, "-o", str(out), "-c", str(checkpoint), *preset, "--no-progress", *KNOBS)
    assert rc == 0
    assert "1 done" in capsys.readouterr().out
    saved = read_sa1b(out / "second.json")
    assert saved.image.file_name == "second.png"
    # The preset and the flag reached the generator: the same masks as from_preset gives.
    generator = SamAutomaticMaskGenerator.from_preset(
        random_tiny(seed=1), "sa1b", crop_n_layers=1, output_mode="coco_rle", **GENERATOR_KNOBS
    )
    expected = generator.generate(read_image(images / "sub" / "second.png"))
    assert [a.segmentation for a in saved.annotations] == [r["segmentation"] for r in expected]


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, c: [str(d / "missing.jpg"), "-c", c], "no such file"),
        (lambda d, c: [str(d / "*.bmp"), "-c", c], "no images match"),
        (lambda d, c: [str(d / "empty"), "-c", c], "no images found"),
        (lambda d, c: [str(d / "in"), "-c", str(d / "in" / "notes.txt")], "notes.txt"),
        (lambda d, c: [str(d / "in"), "-c", c, "--points-per-batch", "0"], "points_per_batch"),
        (lambda d, c: [str(d / "in"), "-c", c, "--box-nms-thresh", "nan"], "box_nms_thresh"),  # audit A20
        (lambda d, c: [str(d / "in"), "-c", c, "--crop-overlap-ratio", "-3"], "crop_overlap_ratio"),  # A19
        (lambda d, c: [str(d / "in"), "-c", c, "--format", "tiff"], "invalid choice"),
        (lambda d, c: [str(d / "in" / "first.jpg"), str(d / "in" / "x" / "first.png"), "-c", c], "first"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    images: Path, tmp_path: Path, checkpoint: Path, capsys, make_args, message
) -> None:
    (tmp_path / "empty").mkdir()
    _save_small(images / "first.jpg", images / "x" / "first.png")
    try:
        rc = run(*make_args(tmp_path, str(checkpoint)), "-o", str(tmp_path / "out"), "--no-progress")
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_without_checkpoint_uses_the_default_model_or_says_it_is_missing(images: Path, tmp_path: Path, capsys) -> None:
    from segany.build import default_weights_path

    rc = run(str(images), "-o", str(tmp_path / "out"), "--no-progress", *KNOBS)
    if default_weights_path() is None:
        assert rc == 2
        assert "default weights" in capsys.readouterr().err
    else:
        assert rc == 0
        assert read_sa1b(tmp_path / "out" / "first.json").image.width == 96


def test_subprocess_exit_statuses(images: Path, tmp_path: Path, checkpoint: Path) -> None:
    (images / "broken.png").write_bytes(b"garbage")
    auto = [sys.executable, "-m", "segany.cli.main", "auto"]
    cmd = [*auto, str(images), "-o", str(tmp_path / "out"), "-c", str(checkpoint), *KNOBS]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "2 done, 0 skipped, 1 failed" in done.stdout
    assert "img/s" in done.stderr or "img]" in done.stderr  # the progress bar
    missing = [*auto, str(tmp_path / "nothing_here"), "-o", str(tmp_path / "o2")]
    bad = subprocess.run(missing, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_overlay_masks_draws_each_mask_in_its_own_colour() -> None:
    from segany.errors import ImageError
    from segany.io.overlay import distinct_colors, overlay_masks

    image = np.full((20, 30, 3), 100, np.uint8)
    a = np.zeros((20, 30), bool)
    a[2:8, 3:10] = True
    b = np.zeros((20, 30), bool)
    b[10:18, 12:28] = True
    colors = distinct_colors(2)
    solid = overlay_masks(image, [a, b], alpha=1.0, outline=False)
    assert (solid[a] == colors[0]).all() and (solid[b] == colors[1]).all()
    assert (solid[~(a | b)] == 100).all()
    half = overlay_masks(image, np.stack([a, b]), alpha=0.5, outline=True)
    inner = np.zeros_like(a)
    inner[3:7, 4:9] = True  # away from the border of a
    expected = np.rint(0.5 * 100 + 0.5 * colors[0].astype(float))
    assert (half[inner] == expected).all()
    assert (half[2, 3:10] == colors[0]).all()  # the outline at full strength
    palette = distinct_colors(40)
    assert len({tuple(c) for c in palette}) == 40
    with pytest.raises(ImageError, match="shape"):
        overlay_masks(image, [np.zeros((5, 5), bool)])


def test_onnx_backend_gives_the_same_masks(
    images: Path, tmp_path: Path, checkpoint: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    outs = {}
    for backend in ("torch", "onnx"):
        outs[backend] = tmp_path / backend
        argv = [str(images / "first.jpg"), "-o", str(outs[backend]), "-c", str(checkpoint), "--no-progress"]
        assert run(*argv, *KNOBS, "--backend", backend) == 0
    ours, theirs = read_sa1b(outs["torch"] / "first.json"), read_sa1b(outs["onnx"] / "first.json")
    assert ours.annotations and len(ours.annotations) == len(theirs.annotations)
    for a, b in zip(ours.annotations, theirs.annotations):
        ma, mb = decode_rle(a.segmentation), decode_rle(b.segmentation)
        assert (ma & mb).sum() / max((ma | mb).sum(), 1) > 0.98


def test_says_so_when_no_mask_passes_the_filters(images: Path, tmp_path: Path, checkpoint: Path, capsys) -> None:
    argv = [str(images / "first.jpg"), "-o", str(tmp_path / "out"), "-c", str(checkpoint), "--no-progress"]
    assert run(*argv, "--points-per-side", "2", "--pred-iou-thresh", "2.0") == 0  # nothing can pass
    err = capsys.readouterr().err
    assert "no mask passed the filters" in err and "--pred-iou-thresh" in err
    assert run(*argv, *KNOBS, "--overwrite") == 0
    assert "no mask passed" not in capsys.readouterr().err


def test_a_checkpoint_with_its_own_thresholds_is_filtered_with_them(images: Path, tmp_path: Path) -> None:
    """`segany auto` without threshold flags uses the thresholds a checkpoint carries (the packaged
    default model's way of being useful), with the torch and the ONNX backend alike; flags still win."""
    model = random_tiny(0)
    model.config = model.config.replace(auto_mask_thresholds=(-10.0, 0.02))  # GENERATOR_KNOBS' pair
    own = save_checkpoint(model, tmp_path / "own.safetensors")
    plain = save_checkpoint(random_tiny(0), tmp_path / "plain.safetensors")  # SAM's 0.88 / 0.95
    counts = {}
    for name, ckpt, extra in (("own", own, []), ("plain", plain, []), ("flags", own, ["--pred-iou-thresh", "1000"]),
                              ("onnx", own, ["--backend", "onnx"])):
        out = tmp_path / name
        argv = [str(images / "first.jpg"), "-o", str(out), "-c", str(ckpt), "--no-progress", "--points-per-side", "4"]
        assert run(*argv, *extra) == 0
        counts[name] = len(read_sa1b(out / "first.json").annotations)
    expected = SamAutomaticMaskGenerator(model, **GENERATOR_KNOBS).generate(read_image(images / "first.jpg"))
    assert counts["own"] == len(expected) > 0
    assert counts["plain"] == 0 and counts["flags"] == 0
    assert counts["onnx"] == counts["own"]


def test_the_default_model_keeps_masks_on_a_photo_with_the_default_settings(tmp_path: Path) -> None:
    """The packaged model carries thresholds it reaches (SAM's 0.88 / 0.95 kept none of its masks): with no
    setting given, `segany auto` keeps several masks of a photo, each above the model's own thresholds."""
    from segany import load_model
    from segany.build import default_weights_path
    from segany.inference.automatic import SAM_MASK_THRESHOLDS, model_mask_thresholds

    if default_weights_path() is None:
        pytest.skip("no packaged default weights in this install")
    own = model_mask_thresholds(load_model())
    assert own != SAM_MASK_THRESHOLDS
    photo = Path(__file__).parent / "data" / "images" / "chelsea.jpg"
    assert run(str(photo), "-o", str(tmp_path / "out"), "--no-progress") == 0
    masks = read_sa1b(tmp_path / "out" / "chelsea.json").annotations
    assert len(masks) >= 3
    assert all(m.predicted_iou > own[0] and m.stability_score >= own[1] for m in masks)
