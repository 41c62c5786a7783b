"""The convolutional image encoder family (``conv_small``): shapes, gradients, bad settings, and a
model of that family loading and working through segany's public paths (load_model, predictor,
automatic generator, ONNX export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import segany
from segany.errors import CheckpointError
from segany.io.checkpoint import infer_config, save_checkpoint
from segany.model import PRESETS, build_sam
from segany.model.conv_encoder import ConvImageEncoder

# A small member of the family: 64-px input (4 x 4 grid), narrow everywhere.
SMALL = PRESETS["conv_small"].replace(
    image_size=64, conv_widths=(8, 8, 16, 16), conv_depths=(1, 1, 1), prompt_embed_dim=32,
    decoder_mlp_dim=64, iou_head_hidden_dim=32, name="custom",
)


def _model(seed: int = 0) -> segany.Sam:
    # Default initialisation (random weights; BatchNorm statistics 0 and 1) keeps every output finite.
    torch.manual_seed(seed)
    return build_sam(SMALL).eval()


def test_encoder_emits_sams_grid_and_all_parameters_learn() -> None:
    enc = ConvImageEncoder(64, (8, 8, 16, 16), (1, 1, 1), out_chans=32).train()
    x = torch.randn(2, 3, 64, 64)
    y = enc(x)
    assert y.shape == (2, 32, 4, 4)
    # LayerNorm2d neck: every grid cell has zero mean over channels (before its affine, which starts at identity)
    assert torch.allclose(y.mean(1), torch.zeros(2, 4, 4), atol=1e-4)
    y.square().mean().backward()
    no_grad = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad
    # each image is encoded on its own in eval mode (BatchNorm uses running statistics)
    enc.eval()
    with torch.no_grad():
        assert torch.allclose(enc(x)[1:], enc(x[1:]), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"img_size": 60}, "multiple of 16"),
        ({"widths": (8, 8, 16)}, "widths needs 4"),
        ({"depths": (1, 1)}, "depths 3"),
    ],
)
def test_encoder_refuses_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConvImageEncoder(**kwargs)


def test_build_sam_refuses_unknown_encoder_type_and_wrong_stride() -> None:
    with pytest.raises(ValueError, match="encoder must be"):
        build_sam(SMALL.replace(encoder="resnet"))
    with pytest.raises(ValueError, match="stride 16"):
        build_sam(SMALL.replace(patch_size=8))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_round_trip_reads_the_family_off_the_weights(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model()
    path = save_checkpoint(model, tmp_path / f"conv{suffix}")
    loaded = segany.load_model(path)
    assert loaded.config.encoder == "conv"
    assert loaded.config.conv_widths == SMALL.conv_widths and loaded.image_size == 64
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.equal(loaded.image_encoder(loaded.preprocess(x)), model.image_encoder(model.preprocess(x)))
    # segany info describes the encoder it found
    from segany.cli.main import main

    assert main(["info", str(path)]) == 0
    assert "convolutional, widths [8, 8, 16, 16]" in capsys.readouterr().out
    # the preset's own sizes are named as the preset
    assert infer_config(build_sam(PRESETS["conv_small"]).state_dict()).name == "conv_small"


def test_checkpoint_without_input_size_is_refused(tmp_path: Path) -> None:
    state = {k: v for k, v in _model().state_dict().items() if k != "image_encoder.input_size"}
    torch.save(state, tmp_path / "no_size.pth")
    with pytest.raises(CheckpointError, match="input_size"):
        segany.load_model(tmp_path / "no_size.pth")
    state["image_encoder.input_size"] = torch.tensor(70)
    torch.save(state, tmp_path / "bad_size.pth")
    with pytest.raises(CheckpointError, match="multiple of 16"):
        segany.load_model(tmp_path / "bad_size.pth")


def test_predictor_and_generator_work_with_a_conv_model() -> None:
    model = _model()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    predictor = segany.SamPredictor(model)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(point_coords=np.array([[40, 20]]), point_labels=np.array([1]))
    assert masks.shape == (3, 48, 80) and scores.shape == (3,) and logits.shape == (3, 16, 16)
    again, _, _ = predictor.predict(point_coords=np.array([[40, 20], [10, 10]]), point_labels=np.array([1, 0]),
                                    mask_input=logits[:1], multimask_output=False)
    assert again.shape == (1, 48, 80)
    generator = segany.SamAutomaticMaskGenerator(
        model, points_per_side=4, pred_iou_thresh=-100.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    records = generator.generate(image)
    assert records and all(r["segmentation"].shape == (48, 80) for r in records)


def test_onnx_export_of_a_conv_model_matches_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from segany.export.onnx import export_onnx

    export = export_onnx(_model(), tmp_path / "onnx", check=True, tolerance=1e-3)
    assert export is not None and any((tmp_path / "onnx").glob("*.onnx"))


def test_resize_recipe_moves_a_conv_model_to_another_input_size(tmp_path: Path) -> None:
    """recipes/resize_conv_input.py: the same weights at a larger input, a larger grid, read back by
    load_model; a ViT checkpoint is refused with one line."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "recipes" / "resize_conv_input.py"
    model = _model()
    src = save_checkpoint(model, tmp_path / "small.safetensors")
    out = tmp_path / "resized.safetensors"
    done = subprocess.run([sys.executable, str(script), str(src), "96", "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "embedding grid (6, 6)" in done.stdout
    resized = segany.load_model(out).eval()
    assert resized.image_size == 96 and resized.config.conv_widths == SMALL.conv_widths
    a, b = model.state_dict(), resized.state_dict()
    assert int(b["image_encoder.input_size"]) == 96
    assert all(torch.equal(a[k], b[k]) for k in a if k != "image_encoder.input_size")
    with torch.no_grad():
        emb = resized.image_encoder(torch.zeros(1, 3, 96, 96))
    assert emb.shape == (1, SMALL.prompt_embed_dim, 6, 6)
    predictor = segany.SamPredictor(resized)
    predictor.set_image(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    masks, scores, low = predictor.predict(point_coords=np.array([[30, 20]]), point_labels=np.array([1]))
    assert masks.shape == (3, 50, 70) and low.shape == (3, 24, 24) and np.isfinite(scores).all()

    vit = save_checkpoint(build_sam(PRESETS["tiny"]), tmp_path / "vit.safetensors")
    refused = subprocess.run([sys.executable, str(script), str(vit), "96", "-o", str(tmp_path / "x.safetensors")],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "only conv encoders resize" in refused.stderr
    assert not (tmp_path / "x.safetensors").exists()
