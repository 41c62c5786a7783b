"""The training loop end to end on the tiny preset: learning, exact resume, fine-tuning from a
``.pth`` checkpoint, and weights that segany and the official package both load."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from segany.io.checkpoint import load_checkpoint, save_checkpoint
from segany.model import PRESETS, build_sam
from segany.train.config import load_config
from segany.train.loop import build_model, train


def _recipe(tmp_path: Path, data: Path, **loop: object) -> Path:
    settings = {
        "steps": 4, "global_batch": 1, "num_rounds": 2, "threads": 1, "log_every": 1,
        "checkpoint_every": 100, **loop,
    }
    lines = [
        "[model]", 'preset = "tiny"', "[data]",
        f'datasets = ["{data}"]', "masks_per_image = 2", f'cache_dir = "{tmp_path / "cache"}"',
        "[optim]", "lr = 2e-3", "warmup_steps = 1", "[loop]",
    ] + [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()]
    path = tmp_path / "recipe.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_loss_decreases_when_overfitting_two_images(tmp_path: Path, shapes_data: Path) -> None:
    recipe = _recipe(tmp_path, shapes_data, steps=24, num_rounds=1)
    # two images over and over: the same prompts' loss must fall well below its start
    cfg = load_config(recipe, ["data.limit_per_dataset=2", "loop.global_batch=2", "optim.weight_decay=0.0"])
    train(cfg, tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, losses


def test_resume_is_exact(tmp_path: Path, shapes_data: Path) -> None:
    recipe = _recipe(tmp_path, shapes_data, steps=4)
    # 2 steps, stop, then resume for the remaining 2: drop path on, so RNG states must round-trip
    cfg = load_config(recipe, ["loop.steps=2", "loop.checkpoint_every=2", "model.drop_path_rate=0.2"])
    train(cfg, tmp_path / "split", progress=False)
    cfg = load_config(recipe, ["loop.steps=4", "model.drop_path_rate=0.2"])
    resumed = train(cfg, tmp_path / "split", resume=True, progress=False)
    cfg_whole = load_config(recipe, ["model.drop_path_rate=0.2"])
    whole = train(cfg_whole, tmp_path / "whole_dp", progress=False)
    assert resumed.step == whole.step == 4
    a = torch.load(tmp_path / "whole_dp" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "model.pth", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(tmp_path / "whole_dp") == pytest.approx(_losses(tmp_path / "split"), rel=1e-6)


def test_finetune_from_pth_and_export_loads_everywhere(tmp_path: Path, shapes_data: Path) -> None:
    from sam_testing import official_model
    import segany

    torch.manual_seed(3)
    init = build_sam(PRESETS["tiny"])
    save_checkpoint(init, tmp_path / "init.pth")
    recipe = _recipe(tmp_path, shapes_data, steps=2)
    overrides = [
        f"model.init={tmp_path / 'init.pth'}", "model.drop_path_rate=0.1", "optim.layer_decay=0.8",
        "model.freeze_image_encoder=true",
    ]
    cfg = load_config(recipe, overrides)
    start = build_model(cfg)
    for k, v in init.state_dict().items():
        assert torch.equal(start.state_dict()[k], v), k
    result = train(cfg, tmp_path / "ft", progress=False)
    tuned = segany.load_model(result.weights)
    # frozen encoder unchanged, decoder trained
    for k, v in init.state_dict().items():
        if k.startswith("image_encoder."):
            assert torch.equal(tuned.state_dict()[k], v), k
    assert not torch.equal(
        tuned.state_dict()["mask_decoder.iou_token.weight"], init.state_dict()["mask_decoder.iou_token.weight"]
    )
    # the .pth export is a plain state dict in the official key layout
    state = torch.load(tmp_path / "ft" / "model.pth", weights_only=True)
    official = official_model(tuned.config)
    official.load_state_dict(state, strict=True)
    assert torch.equal(segany.load_model(tmp_path / "ft" / "model.pth").state_dict()["mask_decoder.iou_token.weight"],
                       state["mask_decoder.iou_token.weight"])


def test_a_frozen_convolutional_encoder_keeps_its_batchnorm_statistics(tmp_path: Path, shapes_data: Path) -> None:
    recipe = _recipe(tmp_path, shapes_data, steps=2)
    small = ["model.preset=conv_small", "model.architecture={image_size = 128, conv_widths = [8, 8, 16, 16]}"]
    cfg = load_config(recipe, small)
    torch.manual_seed(0)
    save_checkpoint(build_model(cfg), tmp_path / "init.safetensors")
    init = load_checkpoint(tmp_path / "init.safetensors").state_dict()
    start = f"model.init={tmp_path / 'init.safetensors'}"
    frozen = load_config(recipe, [*small, start, "model.freeze_image_encoder=true"])
    tuned = load_checkpoint(train(frozen, tmp_path / "frozen", progress=False).weights).state_dict()
    running = [k for k in init if k.startswith("image_encoder.") and "running_" in k]
    assert running  # the encoder has BatchNorm layers
    for k, v in init.items():
        if k.startswith("image_encoder."):
            assert torch.equal(tuned[k], v), k  # weights and running statistics alike
    trained = load_config(recipe, [*small, start])
    moved = load_checkpoint(train(trained, tmp_path / "trained", progress=False).weights).state_dict()
    assert any(not torch.equal(moved[k], init[k]) for k in running)  # not frozen: the statistics follow the data


def test_cli_train_runs(tmp_path: Path, shapes_data: Path) -> None:
    from segany.cli.main import main

    recipe = _recipe(tmp_path, shapes_data, steps=1)
    out = tmp_path / "cli"
    assert main(["train", str(recipe), "loop.bf16=true", "--output", str(out), "--no-progress"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "checkpoint.pt").is_file()
    assert (out / "loss.png").is_file()
    assert main(["train", str(recipe), "--set", "loop.nope=1", "--output", str(out)]) == 2
