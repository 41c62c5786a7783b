"""The CLI with every family and by name: ``segany info`` on MobileSAM, SAM-HQ and Hugging Face files,
``segany info NAME``, ``-c NAME`` (from the cache), and ``python -m segany``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sam_testing import random_tiny, randomize_

from segany.cli.main import main
from segany.io import hub
from segany.io.checkpoint import save_checkpoint
from segany.model import PRESETS, build_sam

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGANY_CHECKPOINTS", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def _info(args, capsys) -> dict:
    assert main(["info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_names_each_family_without_building(tmp_path, capsys):
    mobile = PRESETS["mobile_sam"].replace(tiny_vit_dims=(8, 16, 24, 32), tiny_vit_depths=(1, 1, 1, 1),
                                          tiny_vit_heads=(2, 2, 2, 2), tiny_vit_classes=3)
    cases = {
        "mobile.pt": (mobile, "MobileSAM"),
        "hq.pth": (PRESETS["tiny"].replace(hq=True), "SAM-HQ"),
        "plain.safetensors": (PRESETS["tiny"], "SAM"),
    }
    for filename, (config, family) in cases.items():
        model = build_sam(config)
        path = save_checkpoint(model, tmp_path / filename)
        info = _info([str(path)], capsys)
        assert info["family"] == family, filename
        assert info["parameters"] == sum(p.numel() for p in model.parameters())
        assert info["release"] is None and info["file_bytes"] == path.stat().st_size
    assert main(["info", str(tmp_path / "mobile.pt")]) == 0
    text = capsys.readouterr().out
    assert "MobileSAM" in text and "TinyViT" in text and "no known release" in text


def test_info_recognises_a_release_by_checksum(tmp_path, capsys, monkeypatch):
    path = save_checkpoint(random_tiny(seed=1), tmp_path / "t.pth")
    data = path.read_bytes()
    release = hub.Release("tiny", "t.pth", "https://example.invalid/t.pth", "tiny", size=len(data),
                          sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(hub.WEIGHTS, "tiny", release)
    assert _info([str(path)], capsys)["release"] == "tiny"
    monkeypatch.setitem(hub.WEIGHTS, "tiny", release.__class__(**{**release.__dict__, "sha256": "0" * 64}))
    assert _info([str(path)], capsys)["release"] is None


def test_info_of_a_name_says_where_the_file_is_or_would_go(capsys):
    info = _info(["sam_hq_vit_h"], capsys)
    assert info["family"] == "SAM-HQ" and info["cached"] is None
    assert info["download_to"] == str(hub.cache_dir() / "sam_hq_vit_h.pth")
    assert info["url"].startswith("https://huggingface.co/lkeab/hq-sam/")
    assert 630e6 < info["parameters"] < 650e6
    info = _info(["mobile_sam"], capsys)
    assert info["family"] == "MobileSAM" and 9e6 < info["parameters"] < 11e6
    assert 5e6 < info["parameters_by_part"]["image_encoder"] < 7e6  # TinyViT-5M and its neck and unused head


def test_info_of_a_hf_folder(tmp_path, capsys):
    from segany.io.checkpoint import save_hf_folder

    folder = save_hf_folder(random_tiny(seed=2), tmp_path / "sam-hf")
    info = _info([str(folder)], capsys)
    assert info["format"] == "Hugging Face transformers model folder" and info["architecture"] == "tiny"


def test_unknown_name_is_one_line_exit_2(capsys):
    assert main(["info", "vit_q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a known checkpoint name" in err or "neither a file" in err


def test_segment_with_a_name_from_the_cache(tmp_path, capsys, monkeypatch, test_images):
    model = random_tiny(seed=3)
    data = save_checkpoint(model, tmp_path / "src.pth").read_bytes()
    monkeypatch.setitem(hub.WEIGHTS, "tiny", hub.Release("tiny", "tiny_release.pth", "http://127.0.0.1:9/x", "t"))
    cache = hub.cache_dir()
    cache.mkdir(parents=True)
    (cache / "tiny_release.pth").write_bytes(data)
    image = next(p for p in test_images if p.name == "coffee.jpg")
    out = tmp_path / "mask.png"
    assert main(["segment", str(image), "-p", "100,100", "-c", "tiny", "-o", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (320, 480)


def test_segment_with_mobile_and_hq_checkpoints(tmp_path, test_images):
    image = next(p for p in test_images if p.name == "coffee.jpg")
    mobile = PRESETS["tiny"].replace(encoder="tiny_vit", tiny_vit_dims=(16, 24, 32, 48), tiny_vit_depths=(1, 1, 1, 1),
                                     tiny_vit_heads=(2, 2, 2, 2), tiny_vit_windows=(7, 4, 4, 4), tiny_vit_classes=3)
    for name, config in [("mobile.safetensors", mobile), ("hq.safetensors", PRESETS["tiny"].replace(hq=True))]:
        path = save_checkpoint(randomize_(build_sam(config), 4), tmp_path / name)
        out = tmp_path / f"{name}.png"
        assert main(["segment", str(image), "-p", "100,100", "-c", str(path), "-o", str(out)]) == 0, name
        assert np.asarray(Image.open(out)).shape == (320, 480)


def test_python_m_segany_runs_the_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "segany", "info", str(tmp_path / "none.pth")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().endswith("no such file")
