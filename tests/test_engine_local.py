"""The data engine's automatic stage on one machine: per-image isolation, run manifest, SA-1B shards,
resuming after the driver is killed, and the NaN-free generator records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sam_testing import random_tiny

from segany.cli.main import main
from segany.engine.job import ImageJob, ImageWorker, JobSettings
from segany.inference.automatic import SamAutomaticMaskGenerator
from segany.io.checkpoint import save_checkpoint
from segany.io.sa1b import read_sa1b

KNOBS = ["--points-per-side", "4", "--pred-iou-thresh", "-10", "--stability-score-thresh", "0.02", "--no-progress"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(random_tiny(seed=1), tmp_path_factory.mktemp("ckpt") / "tiny.pth")


def write_images(folder: Path, sources: list[Path], count: int, size: tuple[int, int] = (96, 72)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.jpg"
        Image.open(sources[i % len(sources)]).convert("RGB").resize(size).rotate(7 * i).save(path)
        paths.append(path)
    return paths


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A PNG whose header claims side x side pixels (beyond Pillow's bomb limit); no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def auto(*argv: str) -> int:
    return main(["auto", *argv])


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_each_bad_image_is_recorded_and_the_batch_goes_on(
    tmp_path: Path, checkpoint: Path, test_images, capsys
) -> None:
    folder = tmp_path / "in"
    write_images(folder, test_images, 2)
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    bomb_png(folder / "bomb.png")
    Image.new("RGB", (1, 1)).save(folder / "one.png")
    Image.new("RGB", (2000, 1)).save(folder / "strip.png")
    out = tmp_path / "out"
    rc = auto(str(folder), "-o", str(out), "-c", str(checkpoint), "--crop-n-layers", "1", *KNOBS)
    assert rc == 1  # documented: some images failed
    stdout = capsys.readouterr().out
    assert "2 done, 0 skipped, 4 failed" in stdout
    failures = report(out)["failures"]
    assert sorted(failures) == ["bomb", "garbage", "one", "strip"]
    assert "cannot read image" in failures["garbage"]
    assert "too large" in failures["bomb"] and "SEGANY_MAX_IMAGE_PIXELS" in failures["bomb"]
    assert "too small" in failures["one"] and "too thin" in failures["strip"]
    assert all(f"  {name}: " in stdout for name in failures)  # the final report lists them
    assert read_sa1b(out / "img00.json").image.width == read_sa1b(out / "img01.json").image.width == 96


def test_nan_scores_fail_that_image_only(tmp_path: Path, test_images) -> None:
    broken = random_tiny(seed=2)
    with torch.no_grad():
        broken.mask_decoder.iou_prediction_head.layers[-1].bias.fill_(float("nan"))
    settings = JobSettings(out=str(tmp_path / "out"), overrides={"points_per_side": 2, "pred_iou_thresh": 0.0,
                                                                     "stability_score_thresh": 0.0})
    worker = ImageWorker(settings, lambda: broken)
    paths = write_images(tmp_path / "in", test_images, 1)
    outcome = worker(ImageJob(1, str(paths[0]), "img00"))
    assert outcome.status == "failed" and "NaN" in outcome.reason
    assert not list((tmp_path / "out").glob("*.json"))


def test_empty_candidates_never_carry_nan_scores(test_images) -> None:
    model = random_tiny(seed=1)
    model.mask_threshold = 1e6  # every candidate mask is empty: stability 0 / 0
    image = np.asarray(Image.open(test_images[0]).convert("RGB").resize((64, 48)))
    generator = SamAutomaticMaskGenerator(model, points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert generator.generate(image) == []
    model.mask_threshold = 0.0
    records = generator.generate(image)
    assert records and all(np.isfinite(r["stability_score"]) and r["area"] > 0 for r in records)


def test_outputs_under_the_input_folder_are_never_taken_as_images(
    tmp_path: Path, checkpoint: Path, test_images, capsys
) -> None:
    folder = tmp_path / "photos"
    write_images(folder, test_images, 2)
    args = [str(folder), "-o", str(folder / "masks"), "-c", str(checkpoint), "--format", "png", "--overlay", *KNOBS]
    assert auto(*args) == 0
    assert list((folder / "masks" / "img00").glob("*.png"))
    capsys.readouterr()
    assert auto(*args) == 0
    assert "0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert not (folder / "masks" / "masks").exists()


def test_rerun_with_other_settings_is_refused(tmp_path: Path, checkpoint: Path, test_images, capsys) -> None:
    folder = tmp_path / "in"
    write_images(folder, test_images, 1)
    out = tmp_path / "out"
    base = [str(folder), "-o", str(out), "-c", str(checkpoint), *KNOBS]
    assert auto(*base) == 0
    manifest = json.loads((out / "run.json").read_text())
    assert len(manifest["fingerprint"]["model"]["sha256"]) == 64
    assert manifest["fingerprint"]["generator"]["points_per_side"] == 4
    capsys.readouterr()
    assert auto(*base, "--points-per-side", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "points_per_side: 3 now, 4 before" in err[0]
    assert auto(*base, "--points-per-side", "3", "--overwrite") == 0
    assert json.loads((out / "run.json").read_text())["fingerprint"]["generator"]["points_per_side"] == 3


def test_shards_hold_images_and_json_and_a_cut_seal_is_repaired(
    tmp_path: Path, checkpoint: Path, test_images, capsys
) -> None:
    folder = tmp_path / "in"
    paths = write_images(folder, test_images, 5)
    out = tmp_path / "out"
    args = [str(folder), "-o", str(out), "-c", str(checkpoint), "--shard-size", "2", *KNOBS]
    assert auto(*args) == 0
    assert sorted(p.name for p in out.glob("sa_*.tar")) == ["sa_000000.tar", "sa_000001.tar", "sa_000002.tar"]
    assert not list(out.glob("img*.json"))  # sealed: the loose files are gone
    first = (out / "sa_000000.tar").read_bytes()
    with tarfile.open(out / "sa_000000.tar") as tar:
        assert tar.getnames() == ["img00.jpg", "img00.json", "img01.jpg", "img01.json"]
        assert tar.extractfile("img00.jpg").read() == paths[0].read_bytes()
        record = json.loads(tar.extractfile("img01.json").read())
        tar.extractall(out, filter="data")  # as if killed after the tar, before its marker
    assert record["image"]["file_name"] == "img01.jpg" and record["image"]["image_id"] == 2
    (out / "sa_000000.done.json").unlink()
    (out / "img00.jpg").unlink()
    (out / "img01.jpg").unlink()
    (out / ".img02.json.0123456789ab.tmp").write_text('{"image": ')  # a killed write
    capsys.readouterr()
    assert auto(*args) == 0
    assert "0 done, 5 skipped, 0 failed" in capsys.readouterr().out  # nothing recomputed
    assert (out / "sa_000000.tar").read_bytes() == first  # sealed again, the same bytes
    assert (out / "sa_000000.done.json").exists() and not list(out.glob(".*.tmp"))


def test_killed_driver_rerun_finishes_without_recomputing(tmp_path: Path, checkpoint: Path, test_images) -> None:
    folder = tmp_path / "in"
    write_images(folder, test_images, 8, size=(160, 120))
    out, ref = tmp_path / "out", tmp_path / "ref"
    knobs = [*KNOBS, "--points-per-side", "8", "--shard-size", "3", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "segany.cli.main", "auto", str(folder), "-o", str(out), "-c", str(checkpoint), *knobs]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        # Kill once a shard is sealed and the next one is under way.
        while not ((out / "sa_000000.done.json").exists() and list(out.glob("img0[3-5].json"))):
            assert proc.poll() is None, "the run finished before it could be killed; use slower images"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = {p.stem for p in out.glob("img*.json")} | {"img00", "img01", "img02"}
    assert 4 <= len(finished) < 8
    assert main(["auto", str(folder), "-o", str(out), "-c", str(checkpoint), *knobs]) == 0
    counts = report(out)
    assert (counts["skipped"], counts["done"]) == (len(finished), 8 - len(finished))  # none recomputed
    assert main(["auto", str(folder), "-o", str(ref), "-c", str(checkpoint), *knobs]) == 0
    for name in ("sa_000000.tar", "sa_000001.tar", "sa_000002.tar"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    assert main(["auto", str(folder), "-o", str(out), "-c", str(checkpoint), *knobs]) == 0
    assert report(out)["done"] == 0 and report(out)["skipped"] == 8


def test_ray_flags_without_ray_give_one_line(
    tmp_path: Path, checkpoint: Path, test_images, monkeypatch, capsys
) -> None:
    from segany.engine import executors

    folder = tmp_path / "in"
    write_images(folder, test_images, 1)
    base = [str(folder), "-o", str(tmp_path / "out"), "-c", str(checkpoint), *KNOBS]
    assert auto(*base, "--workers", "3") == 2
    assert "apply to --ray runs" in capsys.readouterr().err
    monkeypatch.setattr(executors, "ray_available", lambda: False)
    assert auto(*base, "--ray") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'segany[ray]'" in err[0]
    assert auto(*base) == 0  # the one-machine path needs no Ray


def test_an_output_folder_that_cannot_be_made_is_one_line_before_any_image(
    tmp_path: Path, checkpoint: Path, test_images, capsys
) -> None:
    folder = tmp_path / "in"
    write_images(folder, test_images, 1)
    (tmp_path / "a_file").write_text("not a folder")
    assert auto(str(folder), "-o", str(tmp_path / "a_file" / "out"), "-c", str(checkpoint), *KNOBS) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a_file is a file, not a folder" in err[0]  # checked before any image or model
