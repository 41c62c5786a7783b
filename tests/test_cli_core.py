"""``segany segment`` and ``segany info``: outputs, help, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sam_testing import random_tiny
from segany.cli.main import main
from segany.io.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(random_tiny(seed=11), tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture(scope="module")
def image(test_images):
    return next(p for p in test_images if p.name == "rocket.jpg")  # 640x427


def test_segment_writes_mask_and_overlay(tmp_path, checkpoint, image, capsys):
    out, overlay = tmp_path / "mask.png", tmp_path / "overlay.png"
    rc = main(["segment", str(image), "--point", "200,150", "--point", "50,60,0", "--box", "10,10,300,400",
               "-c", str(checkpoint), "-o", str(out), "--overlay", str(overlay), "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    mask = np.asarray(Image.open(out))
    assert mask.shape == (427, 640) and set(np.unique(mask)) <= {0, 255}
    assert result["masks"][0]["area"] == int((mask == 255).sum())
    pic = np.asarray(Image.open(overlay))
    assert pic.shape == (427, 640, 3)


def test_segment_multimask_writes_three_best_first(tmp_path, checkpoint, image, capsys):
    out = tmp_path / "m.png"
    assert main(["segment", str(image), "-p", "200,150", "--multimask", "-c", str(checkpoint), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    files = [tmp_path / f"m_{i}.png" for i in range(3)]
    assert all(f.exists() for f in files)
    scores = [float(line.split("score ")[1].split(",")[0]) for line in text.splitlines() if "score" in line]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["-p", "5000,10"], "outside the image"),
        (["-p", "10;20"], "malformed point"),
        (["-p", "10,20,7"], "label must be"),
        (["--box", "300,10,100,200"], "x1 must be >= x0"),
        (["--box", "1,2,3"], "malformed box"),
        ([], "at least one --point"),
    ],
)
def test_segment_bad_prompts(tmp_path, checkpoint, image, capsys, extra, message):
    rc = main(["segment", str(image), "-c", str(checkpoint), "-o", str(tmp_path / "m.png"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_segment_bad_files(tmp_path, checkpoint, image, capsys):
    rc = main(
        ["segment", str(tmp_path / "missing.jpg"), "-p", "1,1", "-c", str(checkpoint), "-o", str(tmp_path / "m.png")]
    )
    assert rc == 2 and "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.jpg"
    junk.write_text("junk")
    rc = main(["segment", str(junk), "-p", "1,1", "-c", str(checkpoint), "-o", str(tmp_path / "m.png")])
    assert rc == 2 and "cannot read image" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pth"
    import torch

    torch.save({"fc.weight": torch.zeros(2)}, foreign)
    rc = main(["segment", str(image), "-p", "1,1", "-c", str(foreign), "-o", str(tmp_path / "m.png")])
    assert rc == 2 and "not a SAM checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def test_info(checkpoint, capsys):
    assert main(["info", str(checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "tiny"
    assert info["parameters"] == sum(p.numel() for p in random_tiny().parameters())
    assert info["config"]["encoder_depth"] == 4
    assert main(["info", str(checkpoint)]) == 0
    assert "window 4, global blocks [1, 3]" in capsys.readouterr().out


def test_console_script_help_and_errors(tmp_path):
    exe = [sys.executable, "-m", "segany.cli.main"]
    top = subprocess.run(exe + ["--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "segment" in top.stdout and "info" in top.stdout
    sub = subprocess.run(exe + ["segment", "--help"], capture_output=True, text=True)
    assert sub.returncode == 0 and "example:" in sub.stdout
    bad = subprocess.run(exe + ["segment", "x.jpg"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    missing = subprocess.run(exe + ["info", str(tmp_path / "none.pth")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def test_segment_onnx_backend_matches_torch(tmp_path, checkpoint, image, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the export is cached here
    prompt = ["--point", "200,150", "--point", "50,60,0", "-c", str(checkpoint), "--json"]
    assert main(["segment", str(image), *prompt, "-o", str(tmp_path / "torch.png")]) == 0
    torch_result = json.loads(capsys.readouterr().out)
    for _ in range(2):  # the second run reuses the cached export
        assert main(["segment", str(image), *prompt, "--backend", "onnx", "-o", str(tmp_path / "onnx.png")]) == 0
        onnx_result = json.loads(capsys.readouterr().out)
        assert len(list((tmp_path / "cache" / "segany" / "onnx").iterdir())) == 1
    a = np.asarray(Image.open(tmp_path / "torch.png")) > 0
    b = np.asarray(Image.open(tmp_path / "onnx.png")) > 0
    assert (a & b).sum() / max((a | b).sum(), 1) > 0.99
    assert abs(onnx_result["masks"][0]["score"] - torch_result["masks"][0]["score"]) < 1e-3
    rc = main(["segment", str(image), *prompt, "--backend", "onnx", "--device", "cuda", "-o", str(tmp_path / "x.png")])
    assert rc == 2 and "runs on the CPU" in capsys.readouterr().err


def test_segment_bf16_decoder(tmp_path, checkpoint, image, capsys):
    """--decoder-precision bf16 gives (nearly) the float32 mask, with the torch and the onnx backends."""
    prompt = ["--point", "200,150", "-c", str(checkpoint), "--json"]
    assert main(["segment", str(image), *prompt, "-o", str(tmp_path / "fp32.png")]) == 0
    want = json.loads(capsys.readouterr().out)["masks"][0]["score"]
    runs = [["--decoder-precision", "bf16"], ["--decoder", "bf16"]]
    try:
        import onnxruntime  # noqa: F401

        runs.append(["--decoder-precision", "bf16", "--backend", "onnx", "--precision", "fp32"])
    except ImportError:
        pass
    a = np.asarray(Image.open(tmp_path / "fp32.png")) > 0
    for i, extra in enumerate(runs):
        out = tmp_path / f"bf16_{i}.png"
        assert main(["segment", str(image), *prompt, *extra, "-o", str(out)]) == 0
        got = json.loads(capsys.readouterr().out)["masks"][0]["score"]
        b = np.asarray(Image.open(out)) > 0
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.97 and abs(got - want) < 0.05
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(image), *prompt, "--decoder-precision", "fp16", "-o", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def _segment_twice(tmp_path, checkpoint, image, capsys, *options: str) -> tuple[float, float]:
    """Segment one point without and with ``options``: the masks' IoU and the scores' difference."""
    prompt = ["--point", "200,150", "-c", str(checkpoint), "--json"]
    scores, masks = [], []
    for i, extra in enumerate([(), options]):
        out = tmp_path / f"mask{i}.png"
        assert main(["segment", str(image), *prompt, *extra, "-o", str(out)]) == 0
        scores.append(json.loads(capsys.readouterr().out)["masks"][0]["score"])
        masks.append(np.asarray(Image.open(out)) > 0)
    a, b = masks
    return float((a & b).sum() / max((a | b).sum(), 1)), abs(scores[1] - scores[0])


def _refused_on_onnx(tmp_path, checkpoint, image, capsys, option: str, *value: str) -> None:
    args = [
        "--point",
        "200,150",
        "-c",
        str(checkpoint),
        option,
        *value,
        "--backend",
        "onnx",
        "-o",
        str(tmp_path / "x.png"),
    ]
    rc = main(["segment", str(image), *args])
    err = capsys.readouterr().err
    assert rc == 2 and option in err and "applies to the torch backend" in err and "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("option", ["--compile-decoder", "--compile-encoder"])
def test_segment_compiled(tmp_path, checkpoint, image, capsys, recwarn, option):
    """--compile-decoder and --compile-encoder give the eager mask and score (to float rounding)."""
    import torch._dynamo.utils

    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    iou, score_diff = _segment_twice(tmp_path, checkpoint, image, capsys, option)
    assert iou > 0.999 and score_diff < 1e-4
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # the option reached torch.compile
    assert not [w for w in recwarn if "torch.compile failed" in str(w.message)]  # compiled, not the fallback
    if option == "--compile-encoder":  # the onnx backend's encoder is onnxruntime's: refused with one line
        _refused_on_onnx(tmp_path, checkpoint, image, capsys, option)


def test_segment_bf16_encoder(tmp_path, checkpoint, image, capsys):
    """--encoder-precision bf16 (torch backend) gives nearly the float32 mask; the onnx backend's encoder
    is onnxruntime's, so the option is refused there with one line."""
    iou, score_diff = _segment_twice(tmp_path, checkpoint, image, capsys, "--encoder-precision", "bf16")
    assert iou > 0.95 and score_diff < 0.05
    _refused_on_onnx(tmp_path, checkpoint, image, capsys, "--encoder-precision", "bf16")


def test_python_dash_m_segany(tmp_path):
    import os
    from pathlib import Path

    import segany

    src = str(Path(segany.__file__).resolve().parents[1])  # this checkout's segany, not another install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "segany", *args], capture_output=True, text=True, env=env)

    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"segany {segany.__version__}"
    done = run("info", str(tmp_path / "missing.pth"))
    assert done.returncode == 2 and done.stderr.startswith("segany info: error:") and "Traceback" not in done.stderr
    assert run().returncode == 2


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--onnx-precision", "int8"], "--onnx-precision"),  # onnx backend only
        (["--precision", "fp32"], "--onnx-precision"),  # its older name
        (["--decoder", "onnx"], "--decoder"),  # the exported graphs: onnx backend only
        (["--num-threads", "2"], "--num-threads"),
        (["--decoder", "fast", "--decoder-precision", "bf16"], "disagree"),
    ],
)
def test_inference_flags_that_do_not_apply_are_refused(tmp_path, checkpoint, image, capsys, flags, named):
    """Each inference flag says where it applies; elsewhere it is refused with one line and exit 2, before
    any work (no output written)."""
    out = tmp_path / "x.png"
    rc = main(["segment", str(image), "--point", "200,150", "-c", str(checkpoint), *flags, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and named in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "prompt", [["--box", "nan,nan,nan,nan"], ["--box=-inf,-inf,100,100"], ["--point", "10,10,nan"]]
)
def test_non_finite_prompts_are_refused(tmp_path, checkpoint, image, capsys, prompt):
    rc = main(["segment", str(image), *prompt, "-c", str(checkpoint), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "internal error" not in err and err.count("\n") == 1


def test_info_system_recommends_settings(capsys):
    """``segany info --system``: CPU features and recommended settings as flags the CLI accepts."""
    assert main(["info", "--system", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "cpu" in info and info["devices"][0] == "cpu"
    assert info["recommended"][0]["exact"] and info["recommended"][0]["flags"] == "(defaults)"
    assert all(r["python"].startswith("InferenceOptions(") for r in info["recommended"])
    assert main(["info", "--system"]) == 0
    assert "recommended" in capsys.readouterr().out
    assert main(["info"]) == 2 and "--system" in capsys.readouterr().err
