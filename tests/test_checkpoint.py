"""Checkpoint files: architecture inference, strict loading, formats, and clear errors."""

from __future__ import annotations


import pytest
import torch

from sam_testing import official_twin, random_tiny
from segany import load_model
from segany.errors import CheckpointError
from segany.io.checkpoint import infer_config, load_checkpoint, save_checkpoint
from segany.model import PRESETS, build_sam


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h", "tiny"])
def test_infer_config_recovers_every_preset(name):
    # Shapes only: build on the meta device so ViT-H costs no memory.
    with torch.device("meta"):
        model = build_sam(PRESETS[name])
    config = infer_config(model.state_dict())
    assert config == PRESETS[name]
    assert config.name == name


def test_infer_config_custom_sizes():
    custom = PRESETS["tiny"].replace(
        image_size=384, encoder_embed_dim=96, encoder_depth=5, encoder_num_heads=3,
        encoder_global_attn_indexes=(2, 4), window_size=6, decoder_mlp_dim=96, mask_in_chans=8,
    )
    with torch.device("meta"):
        model = build_sam(custom)
    inferred = infer_config(model.state_dict())
    assert inferred == custom
    assert inferred.name == "custom"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_load_round_trip(tmp_path, suffix):
    model = random_tiny(seed=5)
    path = save_checkpoint(model, tmp_path / f"m{suffix}")
    loaded = load_model(path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        assert torch.equal(a, b), k
    assert not loaded.training


def test_saved_pth_loads_in_official_package(tmp_path):
    model = random_tiny(seed=6)
    path = save_checkpoint(model, tmp_path / "m.pth")
    ref = official_twin(random_tiny(seed=7))  # different weights, same architecture
    ref.load_state_dict(torch.load(path, weights_only=True), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(ref.state_dict()[k], v), k


def test_official_layout_state_dict_loads(tmp_path):
    """A state dict written by the official model (as the released .pth files are) loads strictly."""
    ref = official_twin(random_tiny(seed=8))
    path = tmp_path / "sam_custom.pth"
    torch.save(ref.state_dict(), path)
    model = load_model(path)
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_training_wrapper_and_ddp_prefix_unwrapped(tmp_path):
    model = random_tiny(seed=9)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "train.pt"
    torch.save({"model": state, "step": 10}, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nope.pth")


def test_unknown_preset_name():
    with pytest.raises(CheckpointError, match="neither a file nor a known checkpoint name"):
        load_model("vit_x")


def test_truncated_file(tmp_path):
    model = random_tiny()
    path = save_checkpoint(model, tmp_path / "m.pth")
    data = path.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(bad)


def test_truncated_safetensors(tmp_path):
    path = save_checkpoint(random_tiny(), tmp_path / "m.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(bad)


def test_unsafe_pickle_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)


def test_foreign_model_names_its_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(3), "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"not a SAM checkpoint.*conv1"):
        load_model(path)


def test_missing_and_unexpected_prefixes_named(tmp_path):
    state = random_tiny().state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("mask_decoder.iou_prediction_head")}
    state["mask_decoder.extra_head.weight"] = torch.zeros(2)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "mask_decoder.iou_prediction_head" in message and "mask_decoder.extra_head" in message
    assert "\n" not in message


def test_not_a_checkpoint_at_all(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(CheckpointError):
        load_model(path)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(empty)


def test_registry_mirrors_official(tmp_path):
    from segany import sam_model_registry

    path = save_checkpoint(random_tiny(seed=2), tmp_path / "t.pth")
    model = sam_model_registry["tiny"](checkpoint=path)
    assert model.config.name == "tiny"
    with pytest.raises(CheckpointError, match="not vit_b"):
        sam_model_registry["vit_b"](checkpoint=path)
