"""Export and the ONNX backend under faults (issue 20; audit X01-X15, N01-N07): the output folder is
checked before the model loads, a failed export leaves nothing (and no staging folder after a kill),
NaN outputs fail the check, and a damaged cached export is detected and rebuilt."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import dead_pid
from sam_testing import random_tiny

ort = pytest.importorskip("onnxruntime")

from segany.cli.main import main
from segany.errors import CheckpointError
from segany.export import backend
from segany.export import onnx as onnx_export
from segany.export.onnx import MANIFEST, ExportError, _check, export_onnx
from segany.io import files
from segany.io.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def model():
    return random_tiny(seed=5)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "ex"
    export_onnx(model, out, check=False)
    return out


@pytest.fixture
def copy_export(exported: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace exporting by copying the module's export (exporting takes 10-30 s); records each call."""
    calls: list[Path] = []

    def fake_export(sam: object, out: str | os.PathLike[str], **kw: object) -> None:
        out = Path(out)
        calls.append(out)
        out.mkdir(parents=True, exist_ok=True)
        for f in exported.iterdir():
            shutil.copy(f, out / f.name)

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    return calls


def test_manifest_records_file_sizes(exported: Path) -> None:
    import json

    manifest = json.loads((exported / MANIFEST).read_text())
    assert manifest["file_bytes"] == {
        name: (exported / name).stat().st_size for name in manifest["files"].values() if name != MANIFEST
    }
    assert not [p for p in exported.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_output_that_is_a_file_fails_before_loading(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "ex_file").write_text("x")  # audit X13: FileExistsError as an internal error
    rc = main(["export", "tiny", "-o", str(tmp_path / "ex_file")])
    err = capsys.readouterr().err
    assert rc == 2 and "exists and is not a folder" in err


def test_unsupported_opset_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["export", "tiny", "-o", str(tmp_path / "x11"), "--opset", "999"])  # audit X11
    err = capsys.readouterr().err
    assert rc == 2 and "opset 999 is newer than" in err and "onnxscript" not in err
    assert not (tmp_path / "x11").exists()


def test_failed_export_leaves_nothing(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module, args, path, *rest):
        Path(path).write_bytes(b"half a graph")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export, "_export_graph", broken)
    with pytest.raises(ExportError, match="No space left"):
        export_onnx(model, tmp_path / "new" / "ex", check=False)
    assert not (tmp_path / "new" / "ex").exists()
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "encoder.onnx").write_bytes(b"earlier graph")
    stale = keep / f".export.{files._HOST}-{dead_pid()}-abcdef.tmp"  # a killed export's staging (X15)
    stale.mkdir()
    (stale / "encoder.onnx").write_bytes(b"partial")
    with pytest.raises(ExportError):
        export_onnx(model, keep, check=False)
    assert sorted(p.name for p in keep.iterdir()) == ["encoder.onnx"]
    assert (keep / "encoder.onnx").read_bytes() == b"earlier graph"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_nan_outputs_fail_the_check(tmp_path: Path) -> None:
    """Audit X14: Python's max() dropped NaN differences, so NaN weights passed the check."""
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    args = (torch.ones(1, 3),)
    path = tmp_path / "lin.onnx"
    torch.onnx.export(layer, args, str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    assert np.isnan(_check(path, layer, args, ["x"]))
    with torch.no_grad():
        layer.weight[0, 0] = 1.0
    torch.onnx.export(layer, args, str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    assert _check(path, layer, args, ["x"]) < 1e-6


def _predict_ok(predictor) -> None:
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1]))
    assert masks.shape[1:] == (40, 50) and np.isfinite(scores).all()


@pytest.mark.parametrize("damage", ["truncate", "garbage", pytest.param("delete", marks=pytest.mark.slow)])
def test_damaged_cache_is_rebuilt(
    model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy_export: list[Path], damage: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Audit N05/N06: a corrupt graph in ~/.cache/segany/onnx failed every run until deleted by hand."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ckpt = save_checkpoint(model, tmp_path / "m.safetensors")
    _predict_ok(backend.predictor_for(str(ckpt), "onnx"))
    assert len(copy_export) == 1
    _predict_ok(backend.predictor_for(str(ckpt), "onnx"))
    assert len(copy_export) == 1  # cached
    graph = copy_export[0] / "encoder.onnx"
    data = graph.read_bytes()
    if damage == "truncate":
        graph.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":  # same size: only onnxruntime can tell
        graph.write_bytes(b"\x07" * len(data))
    else:
        graph.unlink()
    capsys.readouterr()
    _predict_ok(backend.predictor_for(str(ckpt), "onnx"))
    assert len(copy_export) == 2 and "damaged; exporting again" in capsys.readouterr().err
    assert graph.read_bytes() == data


def test_broken_export_folder_is_a_clear_error(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Audit N01: onnxruntime's InvalidProtobuf surfaced as an internal error."""
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    data = (broken / "encoder.onnx").read_bytes()
    (broken / "encoder.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        backend.predictor_for(str(broken), "onnx")
    image = tmp_path / "i.png"
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    rc = main(
        ["segment", str(image), "-p", "3,3", "--backend", "onnx", "-c", str(broken), "-o", str(tmp_path / "m.png")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "cannot be loaded" in err and "internal error" not in err


def test_temporary_export_is_removed(
    model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy_export: list[Path]
) -> None:
    """Audit N07: every '-c tiny --backend onnx' run left a 3 MB folder in the temp folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _predict_ok(backend.predictor_for(model, "onnx"))
    assert len(copy_export) == 1 and list(tmp_path.iterdir()) == []
