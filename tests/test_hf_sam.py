"""Hugging Face transformers' SAM checkpoints: loaded by key conversion, saved back, and equal to
transformers' own ``SamModel`` on the same random weights (transformers is a test dependency only)."""

from __future__ import annotations

import pytest
import torch
from sam_testing import randomize_

from segany import load_model
from segany.errors import CheckpointError
from segany.io.checkpoint import save_hf_folder
from segany.model import PRESETS

transformers = pytest.importorskip("transformers")


def _hf_model(seed: int = 0):
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    t = PRESETS["tiny"]
    vision = SamVisionConfig(
        hidden_size=t.encoder_embed_dim, num_hidden_layers=t.encoder_depth, num_attention_heads=t.encoder_num_heads,
        image_size=t.image_size, window_size=t.window_size, global_attn_indexes=list(t.encoder_global_attn_indexes),
        output_channels=t.prompt_embed_dim, mlp_dim=int(t.encoder_embed_dim * t.mlp_ratio),
        num_pos_feats=t.prompt_embed_dim // 2,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=t.prompt_embed_dim, image_size=t.image_size, image_embedding_size=t.image_embedding_size,
        mask_input_channels=t.mask_in_chans,
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=t.prompt_embed_dim, mlp_dim=t.decoder_mlp_dim, iou_head_hidden_dim=t.iou_head_hidden_dim,
        num_attention_heads=t.decoder_num_heads,
    )
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    randomize_(model, seed)
    # transformers ties the prompt encoder's positional matrix to the shared one.
    model.prompt_encoder.shared_embedding.positional_embedding.data = (
        model.shared_image_embedding.positional_embedding.data
    )
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Within 1e-4, relative to the larger of 1 and the reference's largest magnitude."""
    return bool((a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item()))


@torch.no_grad()
def _compare(ours, hf) -> None:
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 256, 200), generator=g).float()
    x = ours.preprocess(image)[None]
    embedding = ours.image_encoder(x)
    want = hf.get_image_embeddings(x)
    assert _close(embedding, want)
    points = torch.tensor([[[[30.0, 40.0], [150.0, 90.0]]]])
    labels = torch.tensor([[[1, 0]]])
    for multimask in (True, False):
        out = hf(image_embeddings=want, input_points=points, input_labels=labels, multimask_output=multimask)
        sparse, dense = ours.prompt_encoder((points[0], labels[0]), None, None)
        low, iou = ours.mask_decoder(embedding, ours.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
        assert low.shape == out.pred_masks[0].shape
        assert _close(low, out.pred_masks[0])
        assert _close(iou, out.iou_scores[0])


@pytest.mark.parametrize("as_folder", [True, False], ids=["folder", "safetensors file"])
def test_hf_checkpoint_loads_and_matches_transformers(tmp_path, as_folder):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "sam-tiny")
    source = tmp_path / "sam-tiny" if as_folder else tmp_path / "sam-tiny" / "model.safetensors"
    ours = load_model(source)
    assert ours.config == PRESETS["tiny"] and ours.config.name == "tiny"
    _compare(ours, hf)


def test_pytorch_model_bin_loads(tmp_path):
    hf = _hf_model(seed=2)
    hf.save_pretrained(tmp_path / "bin", safe_serialization=False)
    _compare(load_model(tmp_path / "bin"), hf)


def test_saved_back_loads_in_transformers(tmp_path):
    from transformers import SamModel

    ours = load_model(_hf_save(tmp_path))
    folder = save_hf_folder(ours, tmp_path / "back")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    _compare(ours, SamModel.from_pretrained(folder).eval())
    # And round-trips into segany unchanged.
    again = load_model(folder)
    for k, v in ours.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_save_refuses_non_empty_folder_and_other_families(tmp_path):
    ours = load_model(_hf_save(tmp_path))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty"):
        save_hf_folder(ours, tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
    with pytest.raises(CheckpointError, match="only SAM"):
        save_hf_folder(load_model("mobile_sam", pretrained=False), tmp_path / "m")


def _hf_save(tmp_path):
    _hf_model(seed=3).save_pretrained(tmp_path / "src")
    return tmp_path / "src"
