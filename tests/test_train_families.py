"""Training MobileSAM (TinyViT) and SAM-HQ: TinyViT's layer-wise lr decay, SAM-HQ's per-token masks that
training scores, and ``segany train`` running a step with each family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sam_testing import randomize_
from test_families import TINY_HQ, TINY_MOBILE

from segany.io.checkpoint import load_checkpoint
from segany.model import build_sam
from segany.train.config import OptimSection
from segany.train.optim import decay_depths, param_groups


def test_tiny_vit_layer_decay_follows_block_depth() -> None:
    model = build_sam(TINY_MOBILE)  # stages of 1, 1, 2, 1 blocks
    depth, stages = decay_depths(model)
    assert (depth, stages) == (5, (1, 1, 2, 1))
    groups = param_groups(model, OptimSection(lr=1.0, layer_decay=0.5, weight_decay=0.1), depth, stages)
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    enc = "image_encoder."
    expected = {
        "patch_embed.seq.0.c.weight": 0.5**5,  # with block 0, as TinyViT's recipe
        "layers.0.blocks.0.conv1.c.weight": 0.5**5,
        "layers.0.downsample.conv1.c.weight": 0.5**5,  # with its stage's last block
        "layers.1.blocks.0.attn.qkv.weight": 0.5**4,
        "layers.2.blocks.0.attn.qkv.weight": 0.5**3,
        "layers.2.blocks.1.mlp.fc1.weight": 0.5**2,
        "layers.2.downsample.conv1.c.weight": 0.5**2,
        "layers.3.blocks.0.attn.qkv.weight": 0.5,
        "neck.0.weight": 1.0,
    }
    for name, want in expected.items():
        assert lr[enc + name] == pytest.approx(want), name
    assert lr["mask_decoder.iou_token.weight"] == 1.0 and lr["prompt_encoder.no_mask_embed.weight"] == 1.0
    # Every block's parameters share one rate, and the rate grows with the block's global index.
    per_block: dict[int, set[float]] = {}
    for name, value in lr.items():
        parts = name.split(".")
        if name.startswith(enc + "layers.") and parts[3] == "blocks":
            per_block.setdefault(sum(stages[: int(parts[2])]) + int(parts[4]), set()).add(value)
    assert sorted(per_block) == list(range(depth))
    rates = [per_block[i] for i in range(depth)]
    assert all(len(r) == 1 for r in rates)
    flat = [r.pop() for r in rates]
    assert flat == sorted(flat) and flat[0] < flat[-1]
    # Off (1.0) means one rate everywhere.
    off = param_groups(model, OptimSection(lr=1.0, layer_decay=1.0), depth, stages)
    assert {g["lr"] for g in off} == {1.0}


def test_vit_depths_are_unchanged() -> None:
    model = build_sam(TINY_HQ)
    assert decay_depths(model) == (4, ())


@torch.no_grad()
def test_hq_predict_masks_are_the_outputs_forward_chooses_from() -> None:
    model = randomize_(build_sam(TINY_HQ), seed=12).eval()
    dec = model.mask_decoder
    embedding = torch.randn(1, 128, 16, 16, generator=torch.Generator().manual_seed(1))
    points = (torch.tensor([[[30.0, 40.0]], [[200.0, 10.0]]]), torch.ones(2, 1))
    sparse, dense = model.prompt_encoder(points, None, None)
    pe = model.prompt_encoder.get_dense_pe()
    for hq_token_only in (False, True):
        dec.hq_token_only = hq_token_only
        masks, iou = dec.predict_masks(embedding, pe, sparse, dense)
        assert masks.shape == (2, 4, 64, 64) and iou.shape == (2, 4)
        single, single_iou = dec(embedding, pe, sparse, dense, False)
        torch.testing.assert_close(single, masks[:, :1])
        torch.testing.assert_close(single_iou, iou[:, :1])
        multi, multi_iou = dec(embedding, pe, sparse, dense, True)
        best = iou[:, 1:].argmax(dim=1) + 1
        torch.testing.assert_close(multi[:, 0], masks[torch.arange(2), best])
        torch.testing.assert_close(multi_iou[:, 0], iou[torch.arange(2), best])
    dec.hq_token_only = False


def _architecture(config) -> str:
    """The TOML inline table of ``config``'s fields that differ from the tiny preset."""
    from segany.model import PRESETS

    base = PRESETS["tiny"].to_dict()
    items = []
    for key, value in config.to_dict().items():
        if key == "name" or base[key] == value:
            continue
        text = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
        items.append(f"{key} = {text}")
    return "{" + ", ".join(items) + "}"


@pytest.mark.parametrize("config", [TINY_MOBILE, TINY_HQ], ids=["tiny_vit", "hq"])
def test_cli_train_runs_a_step_with_each_family(tmp_path: Path, shapes_data: Path, config) -> None:
    from segany.cli.main import main

    recipe = tmp_path / "recipe.toml"
    recipe.write_text("\n".join([
        "[model]", 'preset = "tiny"', f"architecture = {_architecture(config)}",
        "[data]", f'datasets = ["{shapes_data}"]', "masks_per_image = 2", f'cache_dir = "{tmp_path / "cache"}"',
        "[optim]", "lr = 2e-3", "warmup_steps = 1", "layer_decay = 0.8",
        "[loop]", "steps = 1", "global_batch = 1", "num_rounds = 2", "threads = 1", "checkpoint_every = 100",
    ]) + "\n")
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--output", str(out), "--no-progress"]) == 0
    trained = load_checkpoint(out / "model.safetensors")
    assert trained.config.family == config.family
    assert trained.config.encoder == config.encoder and trained.config.hq == config.hq
