"""``segany eval`` on damaged data (issue 20; audit E03-E06, E21, E35, E37, E38): every bad file is a
one-line exit-2 message naming the file (and the annotation), before or instead of an internal error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_eval_protocols import GT, make_bsds, make_dataset, square

from segany.cli.main import main
from segany.io import FormatError


def _eval(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    rc = main(["eval", *[str(a) for a in argv], "--quiet"])
    return rc, capsys.readouterr().err


def _edit(root: Path, change) -> Path:
    path = root / "annotations.json"
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))
    return root


@pytest.mark.parametrize(
    "counts, fragment",
    [
        ("!!!!garbage~~~~", "invalid RLE counts"),  # E03/E04
        ("0", "do not cover exactly"),  # E05
        ([10**8, 14], "run lengths sum to"),  # E06
    ],
)
def test_garbage_rle_names_file_image_and_annotation(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, counts: object, fragment: str
) -> None:
    root = make_dataset(tmp_path / "data", [[GT], [square(5, 30, 30, 60)]])
    _edit(root, lambda c: c["annotations"][1]["segmentation"].update(counts=counts))
    rc, err = _eval(capsys, "boxes", "--data", root, "-o", tmp_path / "rep")
    assert rc == 2 and err.count("\n") == 1, err
    assert fragment in err and "annotations.json" in err and "2.png" in err and "annotation id 2" in err
    assert not (tmp_path / "rep").exists()


def test_negative_bbox_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Audit E21: a negative-size box was accepted silently and skewed box AP."""
    root = make_dataset(tmp_path / "data", [[GT]])
    _edit(root, lambda c: c["annotations"][0].update(bbox=[30, 10, -21, 21]))
    rc, err = _eval(capsys, "boxes", "--data", root, "-o", tmp_path / "rep")
    assert rc == 2 and "negative size" in err and "annotations[0]" in err
    _edit(root, lambda c: c["annotations"][0].update(bbox=[30, 10, 0, 21]))  # zero width is legal
    from segany.io.coco import load_coco

    assert load_coco(root / "annotations.json").annotations[0]["bbox"] == [30.0, 10.0, 0.0, 21.0]


@pytest.mark.parametrize("damage", ["truncated", "junk", "no_groundtruth", "wrong_struct"])
def test_bad_boundary_mat_files(capsys: pytest.CaptureFixture[str], tmp_path: Path, damage: str) -> None:
    """Audit E37/E38: 'OSError: could not read bytes' / 'IndexError' as internal errors, no file name."""
    import scipy.io

    root = make_bsds(tmp_path / "bsds", [np.zeros((64, 64), bool)])
    mat = root / "gt" / "1.mat"
    data = mat.read_bytes()
    if damage == "truncated":
        mat.write_bytes(data[: len(data) // 3])
    elif damage == "junk":
        mat.write_bytes(data[:128] + b"\x13" * 400)
    elif damage == "no_groundtruth":
        scipy.io.savemat(mat, {"other": np.zeros(3)})
    else:
        scipy.io.savemat(mat, {"groundTruth": np.zeros((2, 2))})
    from segany.eval.edges import load_bsds_boundaries

    with pytest.raises(FormatError, match="1.mat"):
        load_bsds_boundaries(mat)
    rc, err = _eval(capsys, "edges", "--data", root, "-o", tmp_path / "rep", "--baseline", "canny", "--nthresh", "3")
    assert rc == 2 and "1.mat" in err and "internal error" not in err, err


def test_report_folder_checked_before_the_data(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    rc, err = _eval(capsys, "boxes", "--data", tmp_path, "-o", tmp_path / "file" / "rep")
    assert rc == 2 and "is a file, not a folder" in err
    rc, err = _eval(capsys, "boxes", "--data", tmp_path, "-o", tmp_path / "file")  # E35
    assert rc == 2 and "exists and is not a folder" in err
    rc, err = _eval(capsys, "boxes", "--data", tmp_path, "-o", tmp_path / "rep", "--device", "banana")
    assert rc == 2 and "not a torch device" in err
