"""The low-rank click decoder (opt-in, ``decoder="lowrank"``): same logits as the model's decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_testing import random_tiny
from segany import SamPredictor
from segany.inference.decoders.fast import DecoderImageCache, FastMaskDecoder
from segany.inference.decoders.lowrank import LowRankClickDecoder, LowRankDecoder, supports_lowrank
from segany.model import PRESETS

TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return random_tiny(seed=11)


def _embedding(model, seed: int, offset: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = model.prompt_encoder.embed_dim
    gh, gw = model.prompt_encoder.image_embedding_size
    return offset + scale * torch.randn(1, c, gh, gw, generator=g)


# Embeddings whose rows have a large mean or spread stress the variances that the decoder derives from
# inner products (mean square minus squared mean).
@pytest.mark.parametrize("offset,scale", [(0.0, 1.0), (3.0, 1.0), (0.0, 8.0)])
def test_equals_the_model_decoder(model, offset, scale):
    embedding = _embedding(model, seed=1, offset=offset, scale=scale)
    s = model.image_encoder.img_size
    g = torch.Generator().manual_seed(2)
    decoder = LowRankClickDecoder(model)
    cache = decoder.cache(DecoderImageCache(model).cache(embedding))
    prompts = [
        ((torch.rand(1, 1, 2, generator=g) * s, torch.tensor([[1]])), None),  # one click (+ padding point)
        ((torch.rand(3, 4, 2, generator=g) * s, torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]])), None),
        (None, torch.tensor([[4.0, 5.0, 90.0, 120.0], [0.0, 0.0, 10.0, 10.0]])),  # boxes only
        (
            (torch.rand(2, 2, 2, generator=g) * s, torch.tensor([[1, 0], [0, 0]])),
            torch.tensor([[4.0, 5.0, 90.0, 120.0]] * 2),
        ),
    ]
    with torch.no_grad():
        for points, boxes in prompts:
            sparse, dense = model.prompt_encoder(points, boxes, None)
            want_low, want_iou = model.mask_decoder.predict_masks(
                embedding, model.prompt_encoder.get_dense_pe(), sparse, dense
            )
            got_low, got_iou = decoder(cache, sparse)
            assert got_low.shape == want_low.shape and got_iou.shape == want_iou.shape
            torch.testing.assert_close(got_low, want_low, atol=TOL * max(1.0, float(want_low.abs().max()) / 10), rtol=0)
            torch.testing.assert_close(got_iou, want_iou, atol=TOL, rtol=0)


def test_upscaling_a_subset_of_prompts(model):
    """Upscaling only some prompts (the generator's predicted-IoU skip) gives those prompts' logits."""
    embedding = _embedding(model, seed=3)
    decoder = LowRankClickDecoder(model)
    cache = decoder.cache(DecoderImageCache(model).cache(embedding))
    coords = torch.rand(5, 1, 2, generator=torch.Generator().manual_seed(4)) * model.image_encoder.img_size
    sparse, _ = model.prompt_encoder((coords, torch.ones(5, 1, dtype=torch.int)), None, None)
    rows, hyper, _ = decoder.run_transformer(cache, sparse)
    full = decoder.upscale(cache, rows, hyper)
    index = torch.tensor([3, 0])
    torch.testing.assert_close(decoder.upscale(cache, rows.take(index), hyper[index]), full[index])


def test_supports_only_the_standard_two_layer_decoder(model):
    assert supports_lowrank(model)
    one_layer = random_tiny(seed=1, config=PRESETS["tiny"].replace(decoder_depth=1))
    assert not supports_lowrank(one_layer)
    with pytest.raises(ValueError):
        LowRankClickDecoder(one_layer)


def _count_calls(monkeypatch) -> dict[str, int]:
    calls = {"lowrank": 0, "fast": 0}
    lowrank_run, fast_run = LowRankClickDecoder.run_transformer, FastMaskDecoder.run_transformer

    def counted_lowrank(self, *args, **kwargs):
        calls["lowrank"] += 1
        return lowrank_run(self, *args, **kwargs)

    def counted_fast(self, *args, **kwargs):
        calls["fast"] += 1
        return fast_run(self, *args, **kwargs)

    monkeypatch.setattr(LowRankClickDecoder, "run_transformer", counted_lowrank)
    monkeypatch.setattr(FastMaskDecoder, "run_transformer", counted_fast)
    return calls


def test_predictor_clicks_use_it_and_other_prompts_do_not(model, test_images, monkeypatch):
    predictor = SamPredictor(model, decoder="lowrank")
    assert predictor.decoder.name == "lowrank" and predictor.decoder.exact
    predictor.set_image(test_images[0])
    calls = _count_calls(monkeypatch)
    one = predictor.predict(point_coords=np.array([[20.0, 30.0]]), point_labels=np.array([1]))
    assert calls == {"lowrank": 1, "fast": 0}
    # A mask prompt changes the image side per prompt: the fast decoder answers.
    predictor.predict(point_coords=np.array([[20.0, 30.0]]), point_labels=np.array([1]), mask_input=one[2][:1])
    assert calls == {"lowrank": 1, "fast": 1}
    # So do prompts with more tokens than the low-rank decoder is worth (its max_tokens: 5 output tokens
    # and the points).
    max_points = LowRankDecoder(model).max_tokens - 1 - model.mask_decoder.num_mask_tokens
    many = np.random.default_rng(0).uniform(0, 100, (max_points + 1, 2))
    predictor.predict(point_coords=many, point_labels=np.ones(len(many), dtype=int))
    assert calls == {"lowrank": 1, "fast": 2}


def test_auto_never_picks_it(model, test_images, monkeypatch):
    """Opt-in only: "auto" clicks with the fast decoder on a CPU, whatever the grid."""
    predictor = SamPredictor(model)
    assert predictor.decoder.name == "fast"
    predictor.set_image(test_images[0])
    calls = _count_calls(monkeypatch)
    predictor.predict(point_coords=np.array([[20.0, 30.0]]), point_labels=np.array([1]))
    assert calls == {"lowrank": 0, "fast": 1}
