"""Model components: shapes, bad input, gradients, and behaviour that does not need the reference."""

from __future__ import annotations

import pytest
import torch

from sam_testing import random_tiny
from segany.model import PRESETS, build_sam
from segany.model.image_encoder import (
    _relative_table,
    relative_position_bias,
    window_partition,
    window_unpartition,
)


def test_encoder_shapes():
    model = random_tiny()
    x = torch.randn(2, 3, 256, 256)
    out = model.image_encoder(x)
    assert out.shape == (2, 64, 16, 16)


def test_window_partition_round_trip_with_padding():
    x = torch.randn(2, 10, 7, 5)
    windows, padded = window_partition(x, 4)
    assert windows.shape == (2 * 3 * 2, 4, 4, 5)
    assert padded == (12, 8)
    assert torch.equal(window_unpartition(windows, 4, padded, (10, 7)), x)


def test_relative_bias_depends_only_on_offsets():
    g = torch.Generator().manual_seed(0)
    table_h, table_w = torch.randn(7, 8, generator=g), torch.randn(7, 8, generator=g)
    q = torch.randn(1, 16, 8, generator=g)
    bias = relative_position_bias(q, table_h, table_w, (4, 4)).view(4, 4, 4, 4)
    # For a fixed query, moving the key by one row changes only the row term: check against a direct
    # formula bias[qh, qw, kh, kw] = q . table_h[qh - kh + 3] + q . table_w[qw - kw + 3].
    qg = q.view(4, 4, 8)
    for qh, qw, kh, kw in [(0, 0, 3, 3), (2, 1, 0, 3), (3, 3, 3, 0)]:
        expected = qg[qh, qw] @ table_h[qh - kh + 3] + qg[qh, qw] @ table_w[qw - kw + 3]
        assert torch.allclose(bias[qh, qw, kh, kw], expected, atol=1e-5)


def test_relative_table_resamples_other_lengths():
    table = torch.arange(5, dtype=torch.float32)[:, None].repeat(1, 2)
    out = _relative_table(5, 5, table)  # needs 9 entries: linearly resampled
    assert out.shape == (5, 5, 2)
    assert torch.all(out[:, :, 0].diff(dim=0) >= 0)


def test_encoder_accepts_other_resolution():
    model = random_tiny()
    out = model.image_encoder(torch.randn(1, 3, 320, 320))
    assert out.shape == (1, 64, 20, 20)


def test_prompt_encoder_tokens():
    model = random_tiny()
    pe = model.prompt_encoder
    pts = torch.rand(3, 2, 2) * 256
    labels = torch.tensor([[1, 0], [1, 1], [0, -1]])
    sparse, dense = pe((pts, labels), None, None)
    assert sparse.shape == (3, 3, 64)  # two points + padding token
    assert dense.shape == (3, 64, 16, 16)
    # A padding point carries no location: the same token wherever it is.
    moved = pts.clone()
    moved[2, 1] += 50
    sparse2, _ = pe((moved, labels), None, None)
    assert torch.equal(sparse[2, 1], sparse2[2, 1])
    assert not torch.equal(sparse[2, 0], pe((moved + 10, labels), None, None)[0][2, 0])
    boxes = torch.tensor([[10.0, 20.0, 100.0, 200.0]])
    sparse, _ = pe(None, boxes, None)
    assert sparse.shape == (1, 2, 64)
    masks = torch.randn(2, 1, 64, 64)
    _, dense = pe(None, None, masks)
    assert dense.shape == (2, 64, 16, 16)


def test_decoder_outputs_and_multimask_slices():
    model = random_tiny()
    emb = torch.randn(1, 64, 16, 16)
    sparse, dense = model.prompt_encoder((torch.rand(4, 1, 2) * 256, torch.ones(4, 1)), None, None)
    pe = model.prompt_encoder.get_dense_pe()
    multi, iou_multi = model.mask_decoder(emb, pe, sparse, dense, multimask_output=True)
    single, iou_single = model.mask_decoder(emb, pe, sparse, dense, multimask_output=False)
    assert multi.shape == (4, 3, 64, 64) and iou_multi.shape == (4, 3)
    assert single.shape == (4, 1, 64, 64) and iou_single.shape == (4, 1)
    full, iou_full = model.mask_decoder.predict_masks(emb, pe, sparse, dense)
    assert torch.allclose(full[:, 1:], multi) and torch.allclose(full[:, :1], single)


def test_gradients_reach_every_parameter():
    """forward must not disable gradients: the same model trains."""
    model = random_tiny().train()
    image = torch.rand(3, 256, 192) * 255
    batch = [{
        "image": image,
        "original_size": (256, 192),
        "point_coords": torch.tensor([[[50.0, 60.0]]]),
        "point_labels": torch.ones(1, 1),
        "boxes": torch.tensor([[10.0, 10.0, 150.0, 200.0]]),
        "mask_inputs": torch.randn(1, 1, 64, 64),
    }]
    out = model(batch, multimask_output=True)
    loss = out[0]["low_res_logits"].square().mean() + out[0]["iou_predictions"].sum()
    loss.backward()
    # Padding ("not a point") is unused when a box is present; unused kinds get no gradient.
    unused = {"prompt_encoder.not_a_point_embed.weight", "prompt_encoder.point_embeddings.0.weight",
              "prompt_encoder.no_mask_embed.weight", "mask_decoder.output_hypernetworks_mlps.0",
              "mask_decoder.iou_prediction_head.layers.2"}
    missing = [n for n, p in model.named_parameters()
               if p.grad is None and not any(n.startswith(u) for u in unused)]
    assert not missing, missing


def test_drop_path_and_checkpointing_train_mode():
    config = PRESETS["tiny"].replace(drop_path_rate=0.5)
    model = build_sam(config).train()
    model.image_encoder.gradient_checkpointing = True
    x = torch.randn(2, 3, 256, 256, requires_grad=True)
    out = model.image_encoder(x)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    model.eval()
    with torch.no_grad():
        a = model.image_encoder(x)
        b = model.image_encoder(x)
    assert torch.equal(a, b)  # drop path is off in eval


def test_presets_parameter_counts():
    counts = {}
    for name in ("vit_b", "vit_l", "vit_h"):
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in build_sam(PRESETS[name]).parameters())
    # The published sizes: 91M, 308M, 636M parameters.
    assert abs(counts["vit_b"] / 1e6 - 93.7) < 1.0
    assert abs(counts["vit_l"] / 1e6 - 312.3) < 1.5
    assert abs(counts["vit_h"] / 1e6 - 641.1) < 2.0


@pytest.mark.parametrize("bad", [torch.randn(3, 256, 256), torch.randn(1, 4, 256, 256)])
def test_encoder_rejects_bad_input(bad):
    model = random_tiny()
    with pytest.raises((RuntimeError, ValueError)):
        model.image_encoder(bad)
