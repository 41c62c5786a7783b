"""Hostile and broken checkpoints are refused before any model is built: shapes that describe a huge
model in a tiny file, views that claim more values than they store, gaps in block numbering, foreign,
mixed and truncated files. Every refusal is one line; on the CLI, exit status 2 under a memory limit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sam_testing import random_tiny

from segany import load_model
from segany.errors import CheckpointError
from segany.io.checkpoint import save_checkpoint
from segany.model import PRESETS, build_sam

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in random_tiny(seed).state_dict().items()}


def _refused(path: Path, pattern: str) -> str:
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_model(path)
    assert time.perf_counter() - start < 20  # refused before anything large is built
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def _inflate(tmp_path: Path, width: int) -> Path:
    """The audit's case: real tiny weights, but zero-size tensors whose other dimensions describe a
    model ``width`` wide with a ``width * 150``-wide MLP (``width`` 6000000: ~100 GB)."""
    state = _tiny_state()
    state["image_encoder.patch_embed.proj.weight"] = torch.empty(1024, 0, 16, 16)
    state["image_encoder.blocks.0.mlp.lin1.weight"] = torch.empty(width, 0)
    path = tmp_path / f"inflate_{width}.safetensors"
    save_file(state, str(path))
    assert path.stat().st_size < 2_000_000  # the tiny model's real weights, and nothing for the rest
    return path


@pytest.mark.parametrize("width", [150_000, 6_000_000])
def test_inflated_shapes_are_refused_before_building(tmp_path, width):
    _refused(_inflate(tmp_path, width), "does not match|unexpected shapes")


def test_expanded_view_is_refused(tmp_path):
    """A .pth whose tensor is a stride-0 view: right shape, one stored value."""
    state = _tiny_state()
    key = "image_encoder.blocks.0.mlp.lin1.weight"
    state[key] = torch.zeros(1).expand(state[key].shape)
    path = tmp_path / "expanded.pth"
    torch.save(state, path)
    _refused(path, "fewer values than its shape")


def test_gapped_block_numbering_is_refused(tmp_path):
    state = _tiny_state()
    for k in [k for k in state if k.startswith("image_encoder.blocks.3.")]:
        state[k.replace("blocks.3.", "blocks.900000.")] = state.pop(k)
    path = tmp_path / "gaps.pth"
    torch.save(state, path)
    _refused(path, r"encoder blocks are not numbered 0\.\.900000")


def test_non_finite_and_integer_weights_are_refused(tmp_path):
    state = _tiny_state()
    state["mask_decoder.iou_prediction_head.layers.0.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    _refused(tmp_path / "nan.pth", "iou_prediction_head.layers.0.weight holds NaN")
    state = _tiny_state()
    state["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"].to(torch.int8)
    torch.save(state, tmp_path / "int.pth")
    _refused(tmp_path / "int.pth", "dtype torch.int8 where floating-point")


def test_unknown_family_names_what_was_expected(tmp_path):
    state = _tiny_state()
    state = {k: v for k, v in state.items() if not k.startswith("image_encoder.")}
    state["image_encoder.trunk.patch_embed.proj.weight"] = torch.zeros(8, 3, 7, 7)  # e.g. SAM 2's Hiera
    torch.save(state, tmp_path / "hiera.pt")
    _refused(tmp_path / "hiera.pt", "expected SAM's ViT .* or MobileSAM's TinyViT .*image_encoder.trunk")


def test_mixed_checkpoints_are_refused(tmp_path):
    # A ViT encoder with a TinyViT stage in the same file.
    state = _tiny_state()
    state["image_encoder.layers.0.blocks.0.conv1.c.weight"] = torch.zeros(4, 4, 1, 1)
    torch.save(state, tmp_path / "mixed.pth")
    _refused(tmp_path / "mixed.pth", r"unexpected 1 keys \(image_encoder\.layers\.0")
    # An HQ decoder made for another encoder width.
    other = build_sam(PRESETS["tiny"].replace(hq=True, encoder_embed_dim=96, encoder_num_heads=4)).state_dict()
    state = build_sam(PRESETS["tiny"].replace(hq=True)).state_dict()
    state["mask_decoder.compress_vit_feat.0.weight"] = other["mask_decoder.compress_vit_feat.0.weight"]
    torch.save(state, tmp_path / "hq_mixed.pth")
    _refused(tmp_path / "hq_mixed.pth", r"compress_vit_feat.0.weight: \(96, 64, 2, 2\) where \(64, 64, 2, 2\).*SAM-HQ")


def test_truncated_mobile_sam_is_refused(tmp_path):
    config = PRESETS["mobile_sam"].replace(
        tiny_vit_dims=(8, 16, 24, 32), tiny_vit_depths=(1, 1, 1, 1), tiny_vit_heads=(2, 2, 2, 2)
    )
    path = save_checkpoint(build_sam(config), tmp_path / "mobile_sam.pt")
    cut = tmp_path / "mobile_cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    _refused(cut, "truncated or corrupt")


def test_files_are_read_by_content_not_by_name(tmp_path):
    model = random_tiny(seed=3)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    renamed = tmp_path / "m.pth"
    renamed.write_bytes(path.read_bytes())
    assert torch.equal(load_model(renamed).mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight)
    # And the other way round: a torch.save file named .safetensors.
    path = save_checkpoint(model, tmp_path / "p.pth")
    renamed = tmp_path / "p.safetensors"
    renamed.write_bytes(path.read_bytes())
    assert torch.equal(load_model(renamed).mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight)


def _cli(args: list[str], cwd: Path, memory_gb: float = 6.0) -> subprocess.CompletedProcess:
    """Run the CLI with an address-space limit, so a regression that builds the huge model fails here
    (MemoryError, exit 1) instead of exhausting the machine."""
    limit = int(memory_gb * 2**30)
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (%d, %d)); "
        "from segany.cli.main import main; sys.exit(main(sys.argv[1:]))" % (limit, limit)
    )
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_info_refuses_inflated_file_with_exit_2_under_a_memory_limit(tmp_path):
    path = _inflate(tmp_path, 6_000_000)
    done = _cli(["info", str(path), "--json"], tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segany info: error:") and "unexpected shapes" in lines[0]


def test_tensors_of_the_wrong_rank_are_refused(tmp_path):
    for key in ("image_encoder.blocks.0.attn.rel_pos_h", "mask_decoder.mask_tokens.weight", "image_encoder.pos_embed"):
        state = _tiny_state()
        state[key] = torch.tensor(1.0)  # a scalar where a table was expected
        torch.save(state, tmp_path / "rank.pth")
        _refused(tmp_path / "rank.pth", "cannot infer the architecture|unexpected shapes|does not match")
