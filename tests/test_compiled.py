"""torch.compile for the click decoders and the image encoder (opt-in): same masks and embeddings as
eager code, one compilation for any prompt size or image, kept across images, rebuilt on new weights,
eager fallback when compiling fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_testing import random_tiny
from segany import SamPredictor
from segany.inference.decoders import compile as compiled_module
from segany.inference.decoders.compile import CompiledCall, EncoderCall, tensors_key, weights_key
from segany.model import Sam

PROMPTS = [
    dict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1])),
    dict(point_coords=np.array([[30.0, 40.0], [90.0, 20.0], [10.0, 100.0]]), point_labels=np.array([1, 0, 1])),
    dict(box=np.array([5.0, 8.0, 100.0, 90.0])),
]


@pytest.fixture(scope="module")
def model() -> Sam:
    return random_tiny(seed=5)


def _embedding(model: Sam, seed: int) -> torch.Tensor:
    gh, gw = model.prompt_encoder.image_embedding_size
    return torch.randn(1, model.prompt_encoder.embed_dim, gh, gw, generator=torch.Generator().manual_seed(seed))


def _broken_compile(fn, **kwargs):
    """``torch.compile`` on a machine where compiling fails (no C++ compiler, ...)."""

    def run(*args):
        raise RuntimeError("no working C++ compiler\ndetails")

    return run


def _unique_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_clicks_match_eager(model, precision):
    """Logits as eager decoding's (float32: to rounding; bfloat16: fused kernels round differently), for
    points, more points, a box and a mask prompt, all from one compilation."""
    if precision == "bf16" and not torch.backends.mkldnn.is_available():
        pytest.skip("bfloat16 products need oneDNN")
    decoder = "bf16" if precision == "bf16" else "fast"
    eager = SamPredictor(model, decoder=decoder)
    fast = SamPredictor(model, decoder=decoder, compile_decoder=True)
    embedding = _embedding(model, 0)
    for p in (eager, fast):
        p.set_image_embedding(embedding, (120, 150))
    tol = 1e-4 if precision == "fp32" else 0.05
    graphs = None
    for prompt in PROMPTS + [dict(PROMPTS[0], mask_input=None)]:
        if "mask_input" in prompt:  # a mask prompt: the previous answer's low-resolution logits
            prompt = dict(prompt, mask_input=eager.predict(**PROMPTS[1])[2][:1])
        want = eager.predict(**prompt, return_logits=True)
        got = fast.predict(**prompt, return_logits=True)
        if graphs is None:
            graphs = _unique_graphs()  # after the first compilation
        scale = float(np.abs(want[0]).max())
        assert np.abs(got[0] - want[0]).max() <= tol * scale
        assert np.abs(got[1] - want[1]).max() <= tol * max(1.0, float(np.abs(want[1]).max()))
        assert ((got[0] > 0) == (want[0] > 0)).mean() > 0.99
    assert _unique_graphs() == graphs, "a new prompt size recompiled the decoder"
    compiled = fast.decoder.module.run_transformer
    assert isinstance(compiled, CompiledCall) and compiled.failed is None


def test_kept_across_images_and_rebuilt_on_new_weights(model):
    """Compiled decoders live from image to image (compiling is slow) and are rebuilt when the weights
    change, in place (an optimizer step, load_state_dict) or by replacement."""
    p = SamPredictor(model, compile_decoder=True)
    p.set_image_embedding(_embedding(model, 1), (64, 64))
    first = p.decoder
    p.set_image_embedding(_embedding(model, 2), (80, 64))
    assert p.decoder is first
    key = weights_key(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for weight in model.mask_decoder.parameters():  # in place: same tensors, new values
                weight.mul_(1.25)
        assert weights_key(model) != key
        p.set_image_embedding(_embedding(model, 2), (80, 64))
        assert p.decoder is not first
        # The rebuilt decoder compiled anew: no graph frozen with the old values was reused.
        eager = SamPredictor(model)
        eager.set_image_embedding(_embedding(model, 2), (80, 64))
        got, want = p.predict(**PROMPTS[0], return_logits=True), eager.predict(**PROMPTS[0], return_logits=True)
        assert np.abs(got[0] - want[0]).max() <= 1e-4 * float(np.abs(want[0]).max())
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
        model.load_state_dict(state)
        assert weights_key(model) != key  # restored values, but written in place: rebuilt to be safe
    finally:
        model.load_state_dict(state)
    # Eager predictors keep theirs too, and build nothing compiled.
    eager = SamPredictor(model)
    eager.set_image_embedding(_embedding(model, 1), (64, 64))
    assert not isinstance(eager.decoder.module.run_transformer, CompiledCall)


def test_failed_compilation_falls_back_to_eager(model, monkeypatch):
    """No C++ compiler, an unsupported operation...: one warning, then eager decoding with the same masks;
    a bad prompt still raises the eager error, not the compiler's."""

    monkeypatch.setattr(compiled_module.torch, "compile", _broken_compile)
    p = SamPredictor(model, compile_decoder=True)
    eager = SamPredictor(model)
    for q in (p, eager):
        q.set_image_embedding(_embedding(model, 3), (100, 100))
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no working C\\+\\+ compiler"):
        got = p.predict(**PROMPTS[0])
    np.testing.assert_array_equal(got[0], eager.predict(**PROMPTS[0])[0])
    assert p.decoder.module.run_transformer.failed.startswith("RuntimeError")
    got = p.predict(**PROMPTS[1])  # no second warning: eager from now on
    np.testing.assert_array_equal(got[0], eager.predict(**PROMPTS[1])[0])

    call = CompiledCall(lambda x: x.reshape(3, -1))  # the eager function itself rejects the input
    with pytest.raises(RuntimeError, match="shape"):
        call(torch.zeros(4))
    assert call.failed is None


@pytest.mark.slow  # one compilation of the low-rank decoder: ~35 s
def test_compiled_lowrank_clicks_match_eager(model):
    """The float32 low-rank decoder (SAM's large grids; forced here on the tiny one) compiles too."""
    eager, fast = SamPredictor(model, decoder="lowrank"), SamPredictor(model, decoder="lowrank", compile_decoder=True)
    for p in (eager, fast):
        p.set_image_embedding(_embedding(model, 4), (90, 130))
    for prompt in PROMPTS[:2]:
        want = eager.predict(**prompt, return_logits=True)
        got = fast.predict(**prompt, return_logits=True)
        assert np.abs(got[0] - want[0]).max() <= 1e-4 * float(np.abs(want[0]).max())
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
    assert fast.decoder.name == "lowrank" and fast.decoder.module.run_transformer.failed is None


def _images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        rng.integers(0, 256, (int(rng.integers(40, 120)), int(rng.integers(40, 120)), 3), dtype=np.uint8)
        for _ in range(count)
    ]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_encoder_matches_eager(model, precision):
    """The same embedding as the eager encoder (float32: to rounding; bfloat16: fused kernels round
    differently) for images of any size, from one compilation, kept across images."""
    if precision == "bf16" and not torch.backends.mkldnn.is_available():
        pytest.skip("bfloat16 products need oneDNN")
    eager = SamPredictor(model, encoder_precision=precision)
    fast = SamPredictor(model, encoder_precision=precision, compile_encoder=True)
    graphs = None
    kept = None
    for image in _images(3):
        eager.set_image(image)
        fast.set_image(image)
        if graphs is None:
            graphs, kept = _unique_graphs(), fast.encoder
        want, got = eager.features, fast.features
        assert got.dtype == torch.float32 and got.shape == want.shape
        tol = 1e-4 if precision == "fp32" else 0.03
        assert (got - want).abs().max() <= tol * want.abs().max()
        masks, scores, _ = fast.predict(**PROMPTS[0])
        assert masks.shape[1:] == image.shape[:2]
    assert _unique_graphs() == graphs, "a new image recompiled the encoder"
    assert fast.encoder is kept and isinstance(kept, CompiledCall) and kept.failed is None
    assert isinstance(eager.encoder, EncoderCall)


def test_compiled_encoder_rebuilt_on_new_weights(model):
    """Weights changed in place (same tensors, so Dynamo's guards pass): the encoder is compiled anew, with
    its own code object, not served from the graph frozen with the old values."""
    p = SamPredictor(model, compile_encoder=True)
    image = _images(1)[0]
    p.set_image(image)
    first, before = p.encoder, p.features.clone()
    key = tensors_key(model.image_encoder)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for weight in model.image_encoder.parameters():  # in place: same tensors, new values
                weight.mul_(1.25)
        assert tensors_key(model.image_encoder) != key
        p.set_image(image)
        assert p.encoder is not first
        eager = SamPredictor(model)
        eager.set_image(image)
        assert (eager.features - before).abs().max() > 0.1 * before.abs().max()
        torch.testing.assert_close(p.features, eager.features, rtol=1e-4, atol=1e-4 * float(eager.features.abs().max()))
    finally:
        model.load_state_dict(state)


def test_failed_encoder_compilation_encodes_eagerly(model, monkeypatch):
    monkeypatch.setattr(compiled_module.torch, "compile", _broken_compile)
    p, eager = SamPredictor(model, compile_encoder=True), SamPredictor(model)
    image = _images(1)[0]
    with pytest.warns(RuntimeWarning, match="torch.compile failed, encoding without it"):
        p.set_image(image)
    eager.set_image(image)
    torch.testing.assert_close(p.features, eager.features, rtol=0, atol=0)
