"""``segany eval``: reports written, exit codes for bad input, tiny runs on the committed and shared data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segany.cli.main import main
from test_eval_protocols import GT, make_bsds, make_dataset, square


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sam_testing import random_tiny

    from segany.io.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(random_tiny(), path)
    return path


@pytest.fixture()
def synthetic(tmp_path: Path) -> Path:
    disk = np.hypot(*np.mgrid[:64, :64] - np.array([45, 45])[:, None, None]) < 9
    return make_dataset(tmp_path / "data", [[GT, disk], [square(5, 30, 30, 60)]])


def _eval(*argv: object) -> int:
    return main(["eval", *[str(a) for a in argv], "--quiet"])


def _fails(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    with pytest.raises(SystemExit) as info:  # argparse errors exit directly
        code = _eval(*argv)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1, err
    return err


def test_points_report(tmp_path: Path, synthetic: Path, tiny_ckpt: Path) -> None:
    out = tmp_path / "report"
    assert _eval("points", "--data", synthetic, "-c", tiny_ckpt, "-o", out, "--max-clicks", "3",
                 "--baseline", "grabcut") == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"] == "points" and res["dataset"]["num_images"] == 2
    assert set(res["methods"]) == {"tiny", "grabcut"}
    tiny = res["methods"]["tiny"]
    assert tiny["metrics"]["top"]["num_objects"] == 3
    assert 0.0 <= tiny["metrics"]["top"]["miou@1"] <= tiny["metrics"]["oracle"]["miou@1"] <= 1.0
    assert tiny["model"]["config"] == "tiny" and len(tiny["model"]["sha256"]) == 64
    assert res["methods"]["grabcut"]["metrics"]["top"] == res["methods"]["grabcut"]["metrics"]["oracle"]
    md = (out / "report.md").read_text()
    assert "segany eval points --data" in md and "--baseline grabcut" in md and "| tiny | top |" in md
    assert (out / "miou_vs_clicks.png").stat().st_size > 1000
    cases = sorted(p.name for p in (out / "cases").iterdir())
    assert any(c.startswith("tiny_best") for c in cases) and any(c.startswith("grabcut_worst") for c in cases)
    objects = json.loads((out / "objects.json").read_text())
    assert len(objects["tiny"]) == 3 and len(objects["tiny"][0]["top"]) >= 1
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary file behind

    again = tmp_path / "again"
    assert _eval("points", "--data", synthetic, "--baseline", "grabcut", "-o", again, "--max-clicks", "2",
                 "--compare", out) == 0
    md = (again / "report.md").read_text()
    assert "tiny (earlier run)" in md and "not directly comparable" not in md  # same objects
    other = tmp_path / "other"
    assert _eval("points", "--data", synthetic, "--baseline", "grabcut", "-o", other, "--max-clicks", "2",
                 "--limit", "1", "--compare", out / "results.json") == 0
    assert "not directly comparable" in (other / "report.md").read_text()


def test_points_with_the_otsu_baseline(tmp_path: Path, synthetic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "otsu"
    assert _eval("points", "--data", synthetic, "--baseline", "otsu", "-o", out, "--max-clicks", "2") == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"otsu"}
    top = res["methods"]["otsu"]["metrics"]["top"]
    assert top["num_objects"] == 3 and top["miou@1"] > 0.9  # plain shapes on a plain background
    assert "--baseline otsu" in (out / "report.md").read_text()
    assert "points" in _fails(capsys, "boxes", "--data", synthetic, "--baseline", "otsu", "-o", tmp_path / "b")


def test_boxes_and_proposals_reports(tmp_path: Path, synthetic: Path, tiny_ckpt: Path) -> None:
    assert _eval("boxes", "--data", synthetic, "-c", tiny_ckpt, "-o", tmp_path / "b", "--limit", "1") == 0
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res["dataset"]["num_images"] == 1 and res["methods"]["tiny"]["metrics"]["num_objects"] == 2
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "mIoU"} <= set(res["methods"]["tiny"]["metrics"])
    assert (tmp_path / "b" / "iou_histogram.png").is_file()

    pytest.importorskip("segany.inference.automatic")
    assert _eval("proposals", "--data", synthetic, "-c", tiny_ckpt, "-o", tmp_path / "p",
                 "--points-per-side", "4", "--max-proposals", "20") == 0
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    m = res["methods"]["tiny"]["metrics"]
    assert 0.0 <= m["AR@20"] <= 1.0 and m["proposals_per_image"] <= 20
    assert res["settings"]["points_per_side"] == 4


def test_edges_report(tmp_path: Path, tiny_ckpt: Path) -> None:
    from test_eval_protocols import _outline

    root = make_bsds(tmp_path / "bsds", [_outline(GT)])
    out = tmp_path / "e"
    assert _eval("edges", "--data", root, "-c", tiny_ckpt, "--baseline", "canny", "-o", out,
                 "--points-per-side", "3", "--nthresh", "5") == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"tiny", "canny"}
    for m in res["methods"].values():
        assert 0.0 <= m["metrics"]["ODS"] <= 1.0 and len(m["curves"]["recall"]) == 5
    assert (out / "precision_recall.png").is_file() and "ODS" in (out / "report.md").read_text()


def test_bad_input_exits_2(
    tmp_path: Path, synthetic: Path, tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    assert "not found" in _fails(capsys, "points", "--data", tmp_path / "nope", "-c", tiny_ckpt, "-o", out)
    _fails(capsys, "pointz", "--data", synthetic, "-o", out)
    garbage = tmp_path / "bad.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    _fails(capsys, "points", "--data", synthetic, "-c", garbage, "-o", out)
    _fails(capsys, "points", "--data", synthetic, "-c", tmp_path / "missing.pth", "-o", out)
    bare = tmp_path / "bare"
    (bare / "images").mkdir(parents=True)
    (bare / "images" / "a.png").write_bytes((synthetic / "images" / "1.png").read_bytes())
    _fails(capsys, "points", "--data", bare, "-c", tiny_ckpt, "-o", out)
    assert "baseline" in _fails(capsys, "proposals", "--data", synthetic, "--baseline", "grabcut", "-o", out)
    dets = tmp_path / "dets.json"
    dets.write_text("{}")
    _fails(capsys, "boxes", "--data", synthetic, "-c", tiny_ckpt, "--detections", dets, "-o", out)
    assert "gt" in _fails(capsys, "edges", "--data", synthetic, "--baseline", "canny", "-o", out)
    _fails(capsys, "points", "--data", synthetic, "-c", tiny_ckpt, "-o", out, "--limit", "0")
    assert not out.exists()  # nothing written for a failed run


# --------------------------------------------------------------------------- committed and shared data


def test_points_and_boxes_on_committed_data(shapes_data: Path, tmp_path: Path, tiny_ckpt: Path) -> None:
    data = shapes_data
    assert _eval("points", "--data", data, "-c", tiny_ckpt, "-o", tmp_path / "p", "--limit", "2",
                 "--max-clicks", "3") == 0
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert res["methods"]["tiny"]["metrics"]["top"]["num_objects"] == 2
    assert _eval("boxes", "--data", data, "-c", tiny_ckpt, "-o", tmp_path / "b", "--limit", "2") == 0
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res["dataset"]["num_images"] == 2 and -1.0 <= res["methods"]["tiny"]["metrics"]["AP"] <= 1.0


def test_proposals_on_committed_data(shapes_data: Path, tmp_path: Path, tiny_ckpt: Path) -> None:
    assert _eval("proposals", "--data", shapes_data, "-c", tiny_ckpt, "-o", tmp_path / "p",
                 "--limit", "2", "--points-per-side", "4") == 0
    assert json.loads((tmp_path / "p" / "results.json").read_text())["dataset"]["num_images"] == 2


def test_edges_on_bsds_test(shared_data: Path, tmp_path: Path, tiny_ckpt: Path) -> None:
    out = tmp_path / "e"
    assert _eval("edges", "--data", shared_data / "BSDS500", "-c", tiny_ckpt, "--baseline", "canny", "-o", out,
                 "--limit", "2", "--points-per-side", "4", "--nthresh", "5") == 0
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"]["split"] == "test" and res["dataset"]["num_images"] == 2
    split = json.loads((shared_data / "BSDS500" / "splits.json").read_text())["test"]
    assert all(Path(im).stem in split for im in [p.name.split("_", 2)[2][:-4] for p in (out / "cases").iterdir()])
