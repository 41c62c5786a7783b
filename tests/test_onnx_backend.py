"""The onnxruntime predictor against the PyTorch one, ``predictor_for``, and the fast post-processing
it uses (``segany.ops.postprocess``) against the reference resize chain and the official predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sam_testing import official_twin, random_tiny

ort = pytest.importorskip("onnxruntime")

from segany import SamPredictor  # noqa: E402
from segany.errors import CheckpointError, ImageError, PromptError  # noqa: E402
from segany.export.onnx import export_onnx  # noqa: E402
from segany.export.backend import predictor_for  # noqa: E402
from segany.inference.decoders.compile import CompiledCall  # noqa: E402
from segany.inference.onnx_backend import OnnxPredictor  # noqa: E402
from segany.io.image import read_image  # noqa: E402
from segany.model import PRESETS  # noqa: E402
from segany.ops.postprocess import axis_resize, reference_upscale_logits, upscale_logits, upscale_masks  # noqa: E402
from segany.ops.transforms import preprocess_shape  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return random_tiny(seed=11)


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(model, out, quantize="int8")
    return out


@pytest.fixture(scope="module")
def image(test_images):
    return read_image(test_images[0])


@pytest.fixture(scope="module")
def pair(model, folder, image):
    ours, onnx = SamPredictor(model), OnnxPredictor(folder, precision="fp32")
    ours.set_image(image)
    onnx.set_image(image)
    return ours, onnx


def _mask_prompt(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(1, *model.prompt_encoder.mask_input_size, generator=g)).numpy()


def _prompts(model, h, w):
    return {
        "point": dict(point_coords=np.array([[w * 0.4, h * 0.3]]), point_labels=np.array([1])),
        "points": dict(point_coords=np.array([[w * 0.4, h * 0.3], [w * 0.8, h * 0.9]]), point_labels=np.array([1, 0])),
        "box": dict(box=np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9])),
        "box_points": dict(
            point_coords=np.array([[w * 0.4, h * 0.3]]), point_labels=np.array([0]),
            box=np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9]),
        ),
        "mask_only": dict(mask_input=_mask_prompt(model)),
        "point_mask": dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1]),
                           mask_input=_mask_prompt(model, 1)),
    }


def _assert_same_masks(a: np.ndarray, b: np.ndarray, logits: np.ndarray) -> None:
    differ = a != b
    assert not (differ & (np.abs(logits) > TOL)).any(), f"{int(differ.sum())} mask pixels differ"


# -- OnnxPredictor -----------------------------------------------------------------------------------


def test_embedding_matches_pytorch(pair):
    ours, onnx = pair
    torch.testing.assert_close(onnx.get_image_embedding(), ours.get_image_embedding(), atol=TOL, rtol=0)
    assert onnx.original_size == ours.original_size and onnx.input_size == ours.input_size


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("name", ["point", "points", "box", "box_points", "mask_only", "point_mask"])
def test_predict_matches_pytorch(pair, model, image, name, multimask):
    ours, onnx = pair
    prompt = _prompts(model, *image.shape[:2])[name]
    a_masks, a_scores, a_low = ours.predict(**prompt, multimask_output=multimask)
    b_masks, b_scores, b_low = onnx.predict(**prompt, multimask_output=multimask)
    assert b_masks.shape == a_masks.shape and b_masks.dtype == a_masks.dtype == bool
    np.testing.assert_allclose(b_low, a_low, atol=TOL, rtol=0)
    np.testing.assert_allclose(b_scores, a_scores, atol=TOL, rtol=0)
    logits, _, _ = ours.predict(**prompt, multimask_output=multimask, return_logits=True)
    b_logits, _, _ = onnx.predict(**prompt, multimask_output=multimask, return_logits=True)
    np.testing.assert_allclose(b_logits, logits, atol=TOL, rtol=0)
    _assert_same_masks(b_masks, a_masks, logits)


def test_batched_prompts_match_pytorch(pair, model):
    """predict_torch / predict_low_res with B prompt sets, as the automatic generator uses them."""
    ours, onnx = pair
    g = torch.Generator().manual_seed(2)
    h, w = ours.input_size
    coords = torch.rand(5, 1, 2, generator=g) * torch.tensor([w, h])
    labels = torch.ones(5, 1, dtype=torch.int)
    a = ours.predict_torch(coords, labels, multimask_output=True, return_logits=True)
    b = onnx.predict_torch(coords, labels, multimask_output=True, return_logits=True)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, atol=TOL, rtol=0)
    boxes = torch.tensor([[10.0, 20.0, 100.0, 150.0], [0.0, 0.0, 50.0, 60.0]])
    masks = torch.randn(2, 1, *model.prompt_encoder.mask_input_size, generator=g)
    a = ours.predict_torch(None, None, boxes, masks, multimask_output=False)
    b = onnx.predict_torch(None, None, boxes, masks, multimask_output=False)
    torch.testing.assert_close(b[1], a[1], atol=TOL, rtol=0)
    torch.testing.assert_close(b[2], a[2], atol=TOL, rtol=0)
    low, iou = onnx.predict_low_res(coords, labels, multimask_output=True)
    with torch.no_grad():
        sparse, dense = model.prompt_encoder((coords, labels), None, None)
        want_low, want_iou = model.mask_decoder(
            ours.features, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True
        )
    torch.testing.assert_close(low, want_low, atol=TOL, rtol=0)
    torch.testing.assert_close(iou, want_iou, atol=TOL, rtol=0)


def test_embedding_round_trip_between_backends(pair, model, image, tmp_path):
    ours, onnx = pair
    path = tmp_path / "emb.safetensors"
    onnx.get_embedding().save(path)
    from segany.inference.predictor import ImageEmbedding

    torch_pred = SamPredictor(model)
    torch_pred.set_image_embedding(ImageEmbedding.load(path))
    onnx2 = OnnxPredictor(onnx.folder, precision="fp32")
    onnx2.set_image_embedding(ours.get_embedding())
    prompt = _prompts(model, *image.shape[:2])["point"]
    _, s1, l1 = torch_pred.predict(**prompt)
    _, s2, l2 = onnx2.predict(**prompt)
    np.testing.assert_allclose(l2, l1, atol=TOL, rtol=0)
    np.testing.assert_allclose(s2, s1, atol=TOL, rtol=0)


def test_int8_precision_runs_and_stays_close(folder, pair, image, model):
    ours, _ = pair
    q = OnnxPredictor(folder)  # auto: the export has an int8 encoder
    assert q.precision == "int8"
    q.set_image(image)
    a, b = ours.get_image_embedding().numpy(), q.get_image_embedding().numpy()
    assert float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)) > 0.95
    masks, scores, low = q.predict(**_prompts(model, *image.shape[:2])["point"])
    assert masks.shape == (3, *image.shape[:2]) and np.isfinite(low).all()


def test_bgr_and_path_inputs(folder, image, test_images):
    p = OnnxPredictor(folder, precision="fp32")
    p.set_image(test_images[0])
    from_path = p.get_image_embedding().clone()
    p.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    torch.testing.assert_close(p.get_image_embedding(), from_path)


def test_errors(folder, tmp_path, image):
    p = OnnxPredictor(folder, precision="fp32")
    with pytest.raises(RuntimeError):
        p.predict(point_coords=np.array([[1, 2]]), point_labels=np.array([1]))
    p.set_image(image)
    with pytest.raises(PromptError):
        p.predict(point_coords=np.array([[1, 2]]))
    with pytest.raises(PromptError):
        p.predict(point_coords=np.array([1, 2]), point_labels=np.array([1]))
    with pytest.raises(PromptError):
        p.predict(mask_input=np.zeros((1, 8, 8), np.float32))
    with pytest.raises(ImageError):
        p.set_image_embedding(torch.zeros(1, 3, 4, 4), (10, 10))
    with pytest.raises(CheckpointError):
        OnnxPredictor(tmp_path)
    (tmp_path / "segany_onnx.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError):
        OnnxPredictor(tmp_path)


def test_predictor_for(model, folder, tmp_path):
    assert isinstance(predictor_for(model), SamPredictor)
    assert isinstance(predictor_for("tiny"), SamPredictor)
    assert isinstance(predictor_for(folder, backend="onnx"), OnnxPredictor)
    with pytest.raises(CheckpointError):
        predictor_for(folder, backend="torch")
    with pytest.raises(ValueError):
        predictor_for(model, backend="tensorrt")
    p = predictor_for(model, backend="onnx", export_dir=tmp_path / "exp")
    assert isinstance(p, OnnxPredictor) and p.precision == "fp32"
    assert (tmp_path / "exp" / "decoder.onnx").is_file()


def test_cached_int8_export_is_redone_for_a_cpu_that_wants_other_weights(model, tmp_path, monkeypatch):
    """An int8 export cached on one CPU (say signed weights, for VNNI) is exported again where the
    other weight type suits the CPU; a suitable one is reused."""
    from segany.export import quantize
    from segany.io.checkpoint import save_checkpoint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(model, checkpoint)

    def manifest():
        (folder,) = (tmp_path / "cache" / "segany" / "onnx").iterdir()
        return folder, json.loads((folder / "segany_onnx.json").read_text())

    monkeypatch.setattr(quantize, "cpu_has_int8_dot", lambda: True)
    assert predictor_for(checkpoint, backend="onnx", quantize="int8").precision == "int8"
    folder, first = manifest()
    assert first["int8_weights"] == "s8"
    stamp = (folder / "encoder.int8.onnx").stat().st_mtime_ns
    predictor_for(checkpoint, backend="onnx", quantize="int8")  # suits this CPU: reused
    assert (folder / "encoder.int8.onnx").stat().st_mtime_ns == stamp
    monkeypatch.setattr(quantize, "cpu_has_int8_dot", lambda: False)
    with pytest.warns(RuntimeWarning, match="VNNI"):  # loading the signed one here would be risky
        from segany.inference import onnx_backend

        monkeypatch.setattr(onnx_backend, "cpu_has_int8_dot", lambda: False)
        OnnxPredictor(folder, precision="int8")
    predictor_for(checkpoint, backend="onnx", quantize="int8")
    assert manifest()[1]["int8_weights"] == "u8"


# -- fast post-processing ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(480, 640), (1500, 1000), (77, 301), (1024, 1024), (5, 3)])
def test_upscale_logits_matches_reference(size):
    g = torch.Generator().manual_seed(size[0])
    low = 10 * torch.randn(2, 3, 256, 256, generator=g)
    input_size = preprocess_shape(*size, 1024)
    want = reference_upscale_logits(low, input_size, size, 1024)
    got = upscale_logits(low, input_size, size, 1024)
    assert got.shape == want.shape == (2, 3, *size)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert torch.equal((got > 0)[want.abs() > 1e-4], (want > 0)[want.abs() > 1e-4])


@pytest.mark.parametrize(
    "size,lead", [((480, 640), (1, 3)), ((1500, 2250), (1, 3)), ((333, 97), (2, 1)), ((700, 700), ())]
)
def test_upscale_masks_thresholds_without_full_size_logits(size, lead):
    """Blockwise resampling + thresholding gives exactly ``upscale_logits(...) > t`` (blocks of output
    lines cross mask boundaries when the line count is not a multiple of the block)."""
    g = torch.Generator().manual_seed(size[1])
    low = 10 * torch.randn(*lead, 256, 256, generator=g)
    input_size = preprocess_shape(*size, 1024)
    for threshold in (0.0, 1.5):
        want = upscale_logits(low, input_size, size, 1024) > threshold
        got = upscale_masks(low, input_size, size, 1024, threshold)
        assert got.dtype == torch.bool and got.shape == want.shape == (*lead, *size)
        assert torch.equal(got, want)


def test_axis_resize_is_a_banded_interpolation_matrix():
    axis = axis_resize(256, 1024, 768, 480)
    dense = axis.dense(256)
    assert axis.taps <= 3
    torch.testing.assert_close(dense.sum(dim=1), torch.ones(480))  # rows of an interpolation sum to 1
    assert (dense >= 0).all()
    # Rows are valid-region only: nothing reads the padding (low-res rows >= 768 / 4 + 1).
    assert (dense[:, 193:] == 0).all()


def test_fast_postprocess_gives_the_official_predictor_masks(model, image):
    """The official predictor's masks from its own post-processing, and ours from upscale_logits."""
    from segment_anything import SamPredictor as OfficialPredictor

    ref = OfficialPredictor(official_twin(model))
    ref.set_image(image)
    prompt = dict(point_coords=np.array([[100.0, 80.0]]), point_labels=np.array([1]))
    masks, _, low = ref.predict(**prompt)
    logits, _, _ = ref.predict(**prompt, return_logits=True)
    ours = upscale_logits(torch.from_numpy(low)[None], ref.input_size, ref.original_size, 256)[0]
    np.testing.assert_allclose(ours.numpy(), logits, atol=TOL, rtol=0)
    _assert_same_masks((ours > 0).numpy(), masks, logits)


def test_int8_decoder_graphs_stay_close_to_float(folder, pair, image, model):
    """The int8 decoder split (image cache + low-res decoder) on the same float embedding: masks close
    to the float32 graphs'."""
    ours, _ = pair
    assert (folder / "decoder_lowres.int8.onnx").is_file() and (folder / "image_cache.int8.onnx").is_file()
    q, f = OnnxPredictor(folder, precision="int8"), OnnxPredictor(folder, precision="fp32")
    for p in (q, f):
        p.set_image_embedding(ours.get_embedding())
    for prompt in _prompts(model, *image.shape[:2]).values():
        mq, _, lq = q.predict(**prompt)
        mf, _, lf = f.predict(**prompt)
        assert not np.array_equal(lq, lf)  # really a different (quantised) graph
        iou = (mq & mf).sum() / max((mq | mf).sum(), 1)
        assert iou > 0.9, iou


def test_onnx_encoder_with_the_pytorch_decoder(model, folder, image, tmp_path):
    """``decoder_model``: the embedding comes from onnxruntime, prompts go through segany's PyTorch
    decoder, so masks equal SamPredictor's on that embedding; ``predictor_for`` uses it when the model
    is at hand and the exported graphs for a bare export folder."""
    hybrid = OnnxPredictor(folder, precision="int8", decoder_model=model)
    hybrid.set_image(image)
    reference = SamPredictor(model)
    reference.set_image_embedding(hybrid.get_embedding())
    h, w = image.shape[:2]
    for prompt in _prompts(model, h, w).values():
        for got, want in zip(hybrid.predict(**prompt), reference.predict(**prompt)):
            np.testing.assert_array_equal(got, want)
    coords = torch.tensor([[[30.0, 40.0]], [[100.0, 60.0]]])
    low, iou = hybrid.predict_low_res(coords, torch.ones(2, 1, dtype=torch.int), skip_below=10.0)
    assert low.shape[0] == 2 and bool((low < -1000).all())  # skipped, like SamPredictor
    with pytest.raises(CheckpointError):
        OnnxPredictor(folder, decoder_model=random_tiny(seed=1, config=PRESETS["tiny"].replace(prompt_embed_dim=128)))
    assert predictor_for(model, backend="onnx", export_dir=tmp_path / "a").decoder is not None
    assert predictor_for(model, backend="onnx", export_dir=tmp_path / "b", decoder="onnx").decoder is None
    assert predictor_for(folder, backend="onnx").decoder is None
    with pytest.raises(ValueError):
        predictor_for(model, backend="onnx", decoder="tensorrt")


def test_bf16_decoder_with_the_onnx_encoder(model, folder, test_images, tmp_path):
    """``decoder_precision`` reaches the PyTorch decoder of the hybrid predictor; the exported decoder
    graphs (an export folder, ``decoder="onnx"``) have no bfloat16 variant, so asking for one is refused."""
    # As in test_bf16_decoder: with random weights the bf16 masks' IoU depends on the photo (0.96 on
    # chelsea.jpg); on this one it stays above the 0.97 asserted here.
    image = read_image(next(p for p in test_images if p.name == "rocket.jpg"))
    hybrid = OnnxPredictor(folder, decoder_model=model, decoder_precision="bf16")
    assert hybrid.decoder is not None and hybrid.decoder.name == "bf16" and not hybrid.decoder.exact
    hybrid.set_image(image)
    exact = OnnxPredictor(folder, decoder_model=model)
    exact.set_image(image)
    prompt = dict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1]))
    for a, b in zip(hybrid.predict(**prompt)[0], exact.predict(**prompt)[0]):
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.97
    p = predictor_for(model, decoder_precision="bf16")
    assert isinstance(p, SamPredictor) and p.decoder_precision == "bf16"
    p = predictor_for(model, backend="onnx", export_dir=tmp_path / "a", decoder_precision="bf16")
    assert p.decoder is not None and p.decoder.name == "bf16"
    with pytest.raises(ValueError, match="decoder_model"):
        OnnxPredictor(folder, decoder_precision="bf16")
    with pytest.raises(ValueError, match="ONNX export"):
        predictor_for(folder, backend="onnx", decoder_precision="bf16")
    with pytest.raises(ValueError, match="PyTorch decoder"):
        predictor_for(model, backend="onnx", decoder="onnx", decoder_precision="bf16")


def test_compile_decoder_reaches_the_pytorch_decoder(model, folder, tmp_path):
    """``compile_decoder`` reaches the PyTorch decoder wherever one runs prompts, and is refused where
    onnxruntime decodes (no PyTorch decoder to compile)."""
    hybrid = OnnxPredictor(folder, decoder_model=model, decoder_precision="bf16", compile_decoder=True)
    assert hybrid.decoder is not None and hybrid.decoder.name == "bf16" and hybrid.options.compile_decoder
    assert isinstance(hybrid.decoder.module.run_transformer, CompiledCall)
    p = predictor_for(model, compile_decoder=True)
    assert isinstance(p, SamPredictor) and p.compile_decoder and not predictor_for(model).compile_decoder
    p = predictor_for(model, backend="onnx", export_dir=tmp_path / "a", compile_decoder=True)
    assert p.decoder is not None and p.options.compile_decoder
    with pytest.raises(ValueError, match="decoder_model"):
        OnnxPredictor(folder, compile_decoder=True)
    with pytest.raises(ValueError, match="ONNX export.*compile_decoder"):
        predictor_for(folder, backend="onnx", compile_decoder=True)
    with pytest.raises(ValueError, match="PyTorch decoder"):
        predictor_for(model, backend="onnx", decoder="onnx", compile_decoder=True)
    assert predictor_for(model, encoder_precision="bf16").encoder_precision == "bf16"
    with pytest.raises(ValueError, match="encoder_precision='bf16' .*applies to the torch backend"):
        predictor_for(model, backend="onnx", export_dir=tmp_path / "c", encoder_precision="bf16")
    assert predictor_for(model, compile_encoder=True).compile_encoder and not predictor_for(model).compile_encoder
    with pytest.raises(ValueError, match="compile_encoder=True .*applies to the torch backend"):
        predictor_for(model, backend="onnx", export_dir=tmp_path / "c", compile_encoder=True)


def test_exports_carry_the_model_identity(model, folder, image):
    """The manifest names the exported model (segany.io.identity.model_id): another model is refused as the
    hybrid predictor's decoder, and the export's embeddings carry the identity too."""
    from segany.io.identity import model_id

    manifest = json.loads((folder / "segany_onnx.json").read_text())
    assert manifest["model_id"] == model_id(model)
    other = random_tiny(seed=12)  # same architecture and shapes, other weights
    with pytest.raises(CheckpointError, match="not the exported model"):
        OnnxPredictor(folder, decoder_model=other)
    p = OnnxPredictor(folder)
    p.set_image(image)
    embedding = p.get_embedding()
    assert embedding.model_id == model_id(model)
    SamPredictor(model).set_image_embedding(embedding)
    with pytest.raises(ImageError, match="made by model"):
        SamPredictor(other).set_image_embedding(embedding)
