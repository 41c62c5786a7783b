"""The click-decoder interface: every ``decoder=`` choice against the model's own decoder, "auto", thread
safety, inference options, model identity of saved embeddings, and prompt checks."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch

from sam_testing import random_tiny
from segany import ImageEmbedding, SamPredictor
from segany.errors import ImageError, PromptError
from segany.inference.decoders import DECODERS, build_decoder, resolve_decoder
from segany.inference.options import InferenceOptions, OptionsError, recommendations
from segany.io.identity import model_id
from segany.model import Sam

TOL = 1e-4


@pytest.fixture(scope="module")
def model() -> Sam:
    return random_tiny(seed=21)


@pytest.fixture(scope="module")
def embedding(model: Sam) -> torch.Tensor:
    gh, gw = model.prompt_encoder.image_embedding_size
    return torch.randn(1, model.prompt_encoder.embed_dim, gh, gw, generator=torch.Generator().manual_seed(3))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


PROMPTS = [
    dict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1])),
    dict(point_coords=np.array([[30.0, 40.0], [90.0, 20.0], [10.0, 100.0]]), point_labels=np.array([1, 0, 1])),
    dict(box=np.array([5.0, 8.0, 100.0, 90.0]), point_coords=np.array([[50.0, 50.0]]), point_labels=np.array([0])),
    dict(box=np.array([5.0, 8.0, 100.0, 90.0]), multimask_output=False),
]


@pytest.mark.parametrize("name", DECODERS)
def test_every_decoder_gives_the_reference_masks(model, embedding, name):
    """Exact decoders give the model's own logits to 1e-4; the bfloat16 one masks with IoU >= 0.97.
    Points, boxes, single- and multi-mask output, a mask prompt, and a batch through predict_low_res."""
    if name == "bf16" and not torch.backends.mkldnn.is_available():
        pytest.skip("bfloat16 products need oneDNN")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bf16 on a CPU without bfloat16 instructions
        ours = SamPredictor(model, decoder=name)
    ref = SamPredictor(model, decoder="reference")
    assert ours.decoder.name == name and ref.decoder.name == "reference"
    assert ours.decoder.exact == (name != "bf16")
    for p in (ours, ref):
        p.set_image_embedding(embedding, (120, 150))
    previous = ref.predict(**PROMPTS[0])[2][:1]
    for prompt in PROMPTS + [dict(PROMPTS[0], mask_input=previous, multimask_output=False)]:
        want, want_scores, want_low = ref.predict(**prompt, return_logits=True)
        got, got_scores, got_low = ours.predict(**prompt, return_logits=True)
        assert got.shape == want.shape and got_scores.shape == want_scores.shape
        if name == "bf16":
            for a, b in zip(got > 0, want > 0):
                assert _iou(a, b) >= 0.97
            np.testing.assert_allclose(got_scores, want_scores, atol=0.05)
        else:
            scale = max(1.0, float(np.abs(want_low).max()) / 10)
            np.testing.assert_allclose(got_low, want_low, atol=TOL * scale, rtol=0)
            np.testing.assert_allclose(got_scores, want_scores, atol=TOL, rtol=0)
    coords = torch.rand(6, 2, 2, generator=torch.Generator().manual_seed(5)) * model.image_size
    labels = torch.tensor([[1, 0]] * 6)
    want_low, want_iou = ref.predict_low_res(coords, labels)
    got_low, got_iou = ours.predict_low_res(coords, labels)
    if name != "bf16":
        torch.testing.assert_close(got_low, want_low, atol=TOL * max(1.0, float(want_low.abs().max()) / 10), rtol=0)
        torch.testing.assert_close(got_iou, want_iou, atol=TOL, rtol=0)
    # Skipped upscaling keeps the computed prompts' logits.
    threshold = float(got_iou.max(dim=1).values.median())
    skipped_low, _ = ours.predict_low_res(coords, labels, skip_below=threshold)
    kept = (got_iou > threshold).any(dim=1)
    torch.testing.assert_close(skipped_low[kept], got_low[kept])


def test_auto_and_reference_resolution(model):
    """"auto" is exact everywhere: the fast decoder on a CPU, the model's own elsewhere or for a replaced
    decoder; a decoder that cannot reproduce the model's is refused, not silently swapped."""
    assert resolve_decoder("auto", model, torch.device("cpu")) == "fast"
    assert resolve_decoder("auto", model, torch.device("cuda")) == "reference"
    assert SamPredictor(model).decoder.name == "fast"
    import copy

    from segany.model.mask_decoder import MaskDecoder

    class Replaced(MaskDecoder):  # research code: a decoder the rewrites do not know
        pass

    odd = copy.deepcopy(model)
    odd.mask_decoder.__class__ = Replaced
    assert resolve_decoder("auto", odd, torch.device("cpu")) == "reference"
    assert SamPredictor(odd).decoder.name == "reference"
    for name in ("fast", "lowrank", "bf16"):
        with pytest.raises(ValueError, match="standard"):
            build_decoder(name, odd)
    with pytest.raises(ValueError, match="decoder must be"):
        resolve_decoder("turbo", model, torch.device("cpu"))


def _clicks(count: int, seed: int) -> list[dict]:
    """``count`` prompts of 1-3 random points each."""
    rng = np.random.default_rng(seed)
    clicks = []
    for _ in range(count):
        points = rng.uniform(0, 120, (int(rng.integers(1, 4)), 2))
        clicks.append(dict(point_coords=points, point_labels=(rng.uniform(size=len(points)) > 0.3).astype(int)))
    return clicks


@pytest.mark.parametrize("name", ["fast", "reference"])
def test_concurrent_predicts_equal_sequential_ones(model, embedding, name):
    """Several threads clicking on one predictor get the answers of one thread clicking alone: the same
    masks, and logits and IoUs equal to float rounding (a race would be far off). Not bit for bit: with one
    intra-op thread (OMP_NUM_THREADS=1) each thread's own buffers, aligned differently, can round
    differently in the BLAS kernels (~1e-6)."""
    p = SamPredictor(model, decoder=name)
    p.set_image_embedding(embedding, (120, 150))
    clicks = _clicks(12, seed=1)
    want = [p.predict(**c, return_logits=True) for c in clicks]
    got: list[object] = [None] * len(clicks)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(offset, len(clicks), 4):
                got[i] = p.predict(**clicks[i], return_logits=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for w, g in zip(want, got):
        for a, b in zip(w, g):  # type: ignore[arg-type]
            if a.dtype == bool:
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_concurrent_set_image_on_separate_predictors_and_swaps(model, test_images):
    """set_image on different predictors of one model from several threads gives the sequential
    embeddings and masks; on one predictor, a click during set_image answers for one image or the other,
    never a mix."""
    images = list(test_images[:3])
    click = dict(point_coords=np.array([[20.0, 30.0]]), point_labels=np.array([1]))
    want = []
    for path in images:
        q = SamPredictor(model)
        q.set_image(path)
        want.append((q.get_image_embedding().clone(), q.predict(**click)))
    predictors = [SamPredictor(model) for _ in images]
    results: list[object] = [None] * len(images)

    def work(i: int) -> None:
        predictors[i].set_image(images[i])
        results[i] = (predictors[i].get_image_embedding(), predictors[i].predict(**click))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (w_emb, w_pred), (g_emb, g_pred) in zip(want, results):  # type: ignore[misc]
        assert torch.equal(w_emb, g_emb)
        for a, b in zip(w_pred, g_pred):
            np.testing.assert_array_equal(a, b)
    # One predictor, images swapped while another thread clicks: each answer is one image's own.
    shared = SamPredictor(model)
    shared.set_image_embedding(want[0][0], (100, 100))
    expected = {}
    for k in (0, 1):
        shared.set_image_embedding(want[k][0], (100, 100))
        expected[k] = shared.predict(**click)[1]
    stop = threading.Event()

    def swap() -> None:
        k = 0
        while not stop.is_set():
            shared.set_image_embedding(want[k][0], (100, 100))
            k = 1 - k

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        for _ in range(30):
            scores = shared.predict(**click)[1]
            assert any(np.array_equal(scores, e) for e in expected.values())
    finally:
        stop.set()
        swapper.join()


# -- options -----------------------------------------------------------------------------------------


def test_options_validate_once_and_refuse_what_does_not_apply(model):
    assert SamPredictor(model).options == InferenceOptions()
    p = SamPredictor(model, compile_encoder=True, options=InferenceOptions(decode_chunk=3))
    assert p.options.compile_encoder and p.options.decode_chunk == 3 and p.compile_encoder
    assert InferenceOptions.build(decoder_precision="bf16").decoder == "bf16"
    bad = [
        (dict(decoder="turbo"), "decoder must be one of"),
        (dict(encoder_precision="fp16"), "encoder_precision must be one of"),
        (dict(compile_decoder=1), "compile_decoder must be one of"),
        (dict(decode_chunk=0), "decode_chunk must be a positive integer"),
        (dict(backend="torch", onnx_precision="int8"), "onnx_precision='int8' .*applies to the onnx backend"),
        (dict(backend="torch", decoder="onnx"), "decoder='onnx'"),
        (dict(backend="onnx", encoder_precision="bf16"), "applies to the torch backend"),
        (dict(backend="onnx", compile_encoder=True), "applies to the torch backend"),
        (dict(backend="onnx", decoder="onnx", compile_decoder=True), "PyTorch decoder"),
    ]
    for kwargs, message in bad:
        with pytest.raises(OptionsError, match=message) as info:
            InferenceOptions(**kwargs)  # type: ignore[arg-type]
        assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    with pytest.raises(OptionsError, match="unknown inference option"):
        InferenceOptions.build(colour="red")
    with pytest.raises(ValueError, match="torch backend"):
        SamPredictor(model, options=InferenceOptions(backend="onnx"))
    with pytest.raises(TypeError, match="needs a SAM model"):
        SamPredictor("vit_b")  # type: ignore[arg-type]


def test_recommendations_follow_the_cpu_features():
    plain = recommendations(frozenset({"avx2"}))
    assert [r.exact for r in plain] == [True, True] and plain[0].options == InferenceOptions()
    amx = recommendations(frozenset({"avx2", "avx512_bf16", "amx_bf16", "amx_int8"}))
    fastest = amx[-1]
    assert not fastest.exact and fastest.options.decoder == "bf16" and "AMX" in fastest.why
    assert "--decoder bf16" in fastest.flags and "decoder='bf16'" in fastest.python
    vnni = recommendations(frozenset({"avx2", "avx512_vnni"}))[-1]
    assert vnni.options.backend == "onnx" and vnni.options.onnx_precision == "int8"
    assert "--backend onnx --onnx-precision int8" == vnni.flags


# -- model identity ----------------------------------------------------------------------------------


def test_saved_embeddings_carry_the_model_identity(model, embedding, tmp_path):
    other = random_tiny(seed=22)  # same architecture and embedding shape, other weights
    assert model_id(model) != model_id(other) and model_id(model).startswith("tiny-")
    assert model_id(model) == model_id(random_tiny(seed=21))  # equal weights, equal identity
    p = SamPredictor(model)
    p.set_image_embedding(embedding, (120, 150))
    path = tmp_path / "e.safetensors"
    p.get_embedding().save(path)
    loaded = ImageEmbedding.load(path)
    assert loaded.model_id == model_id(model)
    SamPredictor(model).set_image_embedding(loaded)  # the same model takes it
    with pytest.raises(ImageError, match=f"made by model {model_id(model)}.*runs {model_id(other)}"):
        SamPredictor(other).set_image_embedding(loaded)
    # Weights changed in place: a new identity.
    before = model_id(other)
    with torch.no_grad():
        next(other.mask_decoder.parameters()).add_(1.0)
    assert model_id(other) != before
    # A file that is not an embedding: a clear ImageError, not a KeyError.
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    for bad in (tmp_path / "foreign.safetensors", tmp_path / "missing.safetensors"):
        with pytest.raises(ImageError):
            ImageEmbedding.load(bad)


# -- prompts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt,message",
    [
        (dict(point_coords=np.array([[np.nan, 2.0]]), point_labels=np.array([1])), "finite"),
        (dict(point_coords=np.array([[np.inf, 2.0]]), point_labels=np.array([1])), "finite"),
        (dict(point_coords=np.array([[None, 2.0]], dtype=object), point_labels=np.array([1])), "finite|numbers"),
        (dict(box=np.array([np.nan, 0.0, 10.0, 10.0])), "finite"),
        (dict(mask_input=np.full((1, 64, 64), np.nan, np.float32)), "finite"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([7])), "one of"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([0.7])), "whole numbers"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([np.nan])), "finite"),
        (dict(point_labels=np.array([1])), "point_coords are required"),
    ],
)
def test_bad_numpy_prompts(model, embedding, prompt, message):
    p = SamPredictor(model)
    p.set_image_embedding(embedding, (120, 150))
    with pytest.raises(PromptError, match=message) as info:
        p.predict(**prompt)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_bad_torch_prompts_and_batch_bound(model, embedding):
    p = SamPredictor(model)
    p.set_image_embedding(embedding, (120, 150))
    pts, labels = torch.zeros(2, 1, 2), torch.ones(2, 1, dtype=torch.int)
    cases = [
        ((torch.zeros(1, 2), torch.ones(1, 1)), {}, "point_coords must have shape"),
        ((pts, torch.ones(2, 2)), {}, "point_labels must have shape"),
        ((pts, labels), dict(boxes=torch.zeros(4, 4)), "batch sizes differ"),
        ((pts, labels), dict(boxes=torch.zeros(2, 3)), "boxes must have shape"),
        ((pts * np.nan, labels), {}, "finite"),
        ((pts, labels * 5), {}, "one of"),
        ((None, None), dict(mask_input=torch.zeros(2, 64, 64)), "mask_input must have shape"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(PromptError, match=message):
            p.predict_torch(*args, **kwargs)
    # Too many prompts for max_mask_bytes: refused up front, saying how many fit.
    small = SamPredictor(model, options=InferenceOptions(max_mask_bytes=10 * 3 * (64 * 64 * 4 + 120 * 150)))
    small.set_image_embedding(embedding, (120, 150))
    many = torch.zeros(11, 1, 2), torch.ones(11, 1, dtype=torch.int)
    with pytest.raises(PromptError, match="pass at most 10 per call"):
        small.predict_torch(*many)
    masks, scores, low = small.predict_torch(many[0][:10], many[1][:10])
    assert masks.shape == (10, 3, 120, 150) and scores.shape == (10, 3) and low.shape == (10, 3, 64, 64)
