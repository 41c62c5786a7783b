"""ONNX export: graphs run in onnxruntime and agree with PyTorch and with the official export.

Everything uses the tiny preset with every weight randomised. The official comparison builds the
official package's model with identical weights and runs its own ``SamOnnxModel`` in PyTorch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sam_testing import official_twin, random_tiny

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from segany.inference.fast_decoder import DecoderImageCache, FastMaskDecoder, embed_points  # noqa: E402
from segany.export.onnx import ExportError, export_onnx  # noqa: E402
from segany.io.image import read_image  # noqa: E402
from segany.ops.transforms import ResizeLongestSide  # noqa: E402

TOL = 1e-4
OFFICIAL_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]


@pytest.fixture(scope="module")
def model():
    return random_tiny(seed=3)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    result = export_onnx(model, folder, quantize="int8")
    return folder, result


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _decoder_inputs(
    model, n_points: int, has_mask: bool, orig: tuple[int, int], seed: int = 0
) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    c = model.prompt_encoder.embed_dim
    gh, gw = model.prompt_encoder.image_embedding_size
    s = model.image_encoder.img_size
    coords = torch.rand(1, n_points, 2, generator=g) * s
    # Every label the official export knows: fg, bg, box corners and the padding point.
    labels = torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0, 1.0, 0.0][:n_points]])
    return {
        "image_embeddings": torch.randn(1, c, gh, gw, generator=g).numpy(),
        "point_coords": coords.numpy(),
        "point_labels": labels.numpy(),
        "mask_input": (3 * torch.randn(1, 1, 4 * gh, 4 * gw, generator=g)).numpy(),
        "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
        "orig_im_size": np.array(orig, dtype=np.float32),
    }


def _official_outputs(model, feeds, **options):
    from segment_anything.utils.onnx import SamOnnxModel

    ref = SamOnnxModel(official_twin(model), **options).eval()
    with torch.no_grad():
        out = ref(*(torch.from_numpy(feeds[name]) for name in OFFICIAL_INPUTS))
    return [o.numpy() for o in out]


# -- files ---------------------------------------------------------------------------------------


def test_export_writes_every_graph_and_a_manifest(exported, model):
    folder, result = exported
    manifest = json.loads((folder / "segany_onnx.json").read_text())
    for role in (
        "encoder",
        "decoder",
        "image_cache",
        "decoder_lowres",
        "encoder.int8",
        "image_cache.int8",
        "decoder_lowres.int8",
    ):
        assert (folder / manifest["files"][role]).is_file(), role
        onnx.checker.check_model(str(folder / manifest["files"][role]))
    assert manifest["image_size"] == model.image_encoder.img_size
    assert manifest["embedding_size"] == list(model.prompt_encoder.image_embedding_size)
    assert manifest["config"]["encoder_embed_dim"] == model.config.encoder_embed_dim
    assert not list(folder.glob(".export-*")), "temporary folder left behind"
    assert max(result.max_abs_diff.values()) < TOL


def test_official_decoder_has_the_official_interface(exported):
    folder, _ = exported
    graph = onnx.load(str(folder / "decoder.onnx")).graph
    assert [i.name for i in graph.input] == OFFICIAL_INPUTS
    assert [o.name for o in graph.output] == ["masks", "iou_predictions", "low_res_masks"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert isinstance(dims["point_coords"][1], str) and dims["point_coords"][1] == dims["point_labels"][1]
    assert dims["point_coords"][2] == 2 and dims["orig_im_size"] == [2] and dims["has_mask_input"] == [1]
    float_type = onnx.TensorProto.FLOAT
    assert all(i.type.tensor_type.elem_type == float_type for i in graph.input)


# -- agreement with PyTorch ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(480, 640), (640, 427)])
def test_encoder_graph_matches_pytorch(exported, model, test_images, size):
    folder, _ = exported
    from PIL import Image

    image = np.asarray(Image.fromarray(read_image(test_images[0])).resize((size[1], size[0])))
    resized = ResizeLongestSide(model.image_encoder.img_size).apply_image(image)
    (got,) = _session(folder / "encoder.onnx").run(None, {"image": resized})
    with torch.no_grad():
        x = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
        want = model.image_encoder(model.preprocess(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_fast_decoder_equals_mask_decoder(model):
    """The reassociated decoder (used by every decoder graph) against the model's own decoder."""
    g = torch.Generator().manual_seed(5)
    c = model.prompt_encoder.embed_dim
    gh, gw = model.prompt_encoder.image_embedding_size
    embedding = torch.randn(1, c, gh, gw, generator=g)
    coords = torch.rand(4, 3, 2, generator=g) * model.image_encoder.img_size
    labels = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, -1, -1]])
    masks = torch.randn(4, 1, 4 * gh, 4 * gw, generator=g)
    cache, fast = DecoderImageCache(model), FastMaskDecoder(model)
    with torch.no_grad():
        for mask in (None, masks):
            sparse, dense = model.prompt_encoder((coords, labels), None, mask)
            want_masks, want_iou = model.mask_decoder.predict_masks(
                embedding, model.prompt_encoder.get_dense_pe(), sparse, dense
            )
            got_masks, got_iou = fast(*cache(embedding, mask), sparse)
            torch.testing.assert_close(got_masks, want_masks, atol=TOL, rtol=0)
            torch.testing.assert_close(got_iou, want_iou, atol=TOL, rtol=0)


def test_embed_points_follows_the_prompt_encoder(model):
    coords = torch.tensor([[[10.0, 20.0], [30.0, 5.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0, -1]])
    sparse, _ = model.prompt_encoder((coords[:, :2], labels[:, :2]), None, None)  # pads by itself
    torch.testing.assert_close(embed_points(model, coords, labels.float()), sparse)
    box = torch.tensor([[3.0, 4.0, 50.0, 60.0]])
    sparse, _ = model.prompt_encoder(None, box, None)
    corners = embed_points(model, box.view(1, 2, 2), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(corners, sparse)


# -- agreement with the official export ------------------------------------------------------------


@pytest.mark.parametrize(
    "n_points,has_mask,orig", [(3, False, (300, 450)), (5, True, (500, 200)), (1, False, (256, 256))]
)
def test_decoder_graph_matches_official_samonnxmodel(exported, model, n_points, has_mask, orig):
    folder, _ = exported
    feeds = _decoder_inputs(model, n_points, has_mask, orig, seed=n_points)
    got = _session(folder / "decoder.onnx").run(None, feeds)
    want = _official_outputs(model, feeds, return_single_mask=False)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert got[0].shape[-2:] == orig
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=TOL, rtol=0)


def test_decoder_options_match_official(model, tmp_path):
    export_onnx(
        model, tmp_path, encoder=False, return_single_mask=True, use_stability_score=True, return_extra_metrics=True
    )
    session = _session(tmp_path / "decoder.onnx")
    assert [o.name for o in session.get_outputs()] == [
        "masks", "iou_predictions", "stability_scores", "areas", "low_res_masks"
    ]
    for n_points in (2, 4):  # below and above the official single-mask switch (2.5 points)
        feeds = _decoder_inputs(model, n_points, False, (200, 300), seed=10 + n_points)
        got = session.run(None, feeds)
        want = _official_outputs(
            model, feeds, return_single_mask=True, use_stability_score=True, return_extra_metrics=True
        )
        np.testing.assert_allclose(got[0], want[0], atol=TOL, rtol=0)
        np.testing.assert_allclose(got[1], want[1], atol=1e-3, rtol=0)  # stability: counts of pixels
        # Pixel counts may differ only where a logit sits within float rounding of a threshold.
        np.testing.assert_allclose(got[2], want[2], atol=1e-3, rtol=0)
        assert np.abs(got[3] - want[3]).max() <= 2
        np.testing.assert_allclose(got[4], want[4], atol=TOL, rtol=0)


def test_lowres_decoder_is_batched(exported, model):
    folder, _ = exported
    cache = _session(folder / "image_cache.onnx")
    dec = _session(folder / "decoder_lowres.onnx")
    g = torch.Generator().manual_seed(7)
    c = model.prompt_encoder.embed_dim
    gh, gw = model.prompt_encoder.image_embedding_size
    embedding = torch.randn(1, c, gh, gw, generator=g)
    fields = cache.run(None, {
        "image_embeddings": embedding.numpy(),
        "mask_input": np.zeros((1, 1, 4 * gh, 4 * gw), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
    })
    coords = torch.rand(6, 2, 2, generator=g) * model.image_encoder.img_size
    labels = torch.tensor([[1, -1]] * 6)
    low, iou = dec.run(None, dict(zip(["src", "k1", "v1", "q1"], fields), point_coords=coords.numpy(),
                                  point_labels=labels.float().numpy()))
    with torch.no_grad():
        sparse, dense = model.prompt_encoder((coords[:, :1], labels[:, :1]), None, None)
        want_low, want_iou = model.mask_decoder.predict_masks(
            embedding, model.prompt_encoder.get_dense_pe(), sparse, dense
        )
    np.testing.assert_allclose(low, want_low.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(iou, want_iou.numpy(), atol=TOL, rtol=0)


def test_int8_graphs_stay_close_to_float(exported, model, test_images):
    folder, _ = exported
    resized = ResizeLongestSide(model.image_encoder.img_size).apply_image(read_image(test_images[0]))
    (fp32,) = _session(folder / "encoder.onnx").run(None, {"image": resized})
    (int8,) = _session(folder / "encoder.int8.onnx").run(None, {"image": resized})
    cosine = float((fp32 * int8).sum() / np.linalg.norm(fp32) / np.linalg.norm(int8))
    assert cosine > 0.95
    assert not np.array_equal(fp32, int8)  # it really is a different (quantised) graph
    assert (folder / "encoder.int8.onnx").stat().st_size < 0.8 * (folder / "encoder.onnx").stat().st_size


def test_bad_arguments_raise_export_error(model, tmp_path):
    with pytest.raises(ExportError):
        export_onnx(model, tmp_path, quantize="int4")
    with pytest.raises(ExportError):
        export_onnx(model, tmp_path, opset=9)


@pytest.mark.slow
def test_opset_18_uses_the_torch_export_exporter(model, tmp_path):
    result = export_onnx(model, tmp_path, opset=18, encoder=False)
    assert onnx.load(str(tmp_path / "decoder.onnx")).opset_import[0].version == 18
    feeds = _decoder_inputs(model, 4, True, (320, 240))
    got = _session(tmp_path / "decoder.onnx").run(None, feeds)
    want = _official_outputs(model, feeds, return_single_mask=False)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=TOL, rtol=0)
    assert max(result.max_abs_diff.values()) < TOL


def test_cli_export(tmp_path, capsys):
    from segany.cli.main import main

    assert main(["export", "tiny", "-o", str(tmp_path / "out"), "--no-encoder", "--return-single-mask"]) == 0
    manifest = json.loads((tmp_path / "out" / "segany_onnx.json").read_text())
    assert manifest["decoder_options"]["return_single_mask"] is True
    assert "encoder" not in manifest["files"]
    assert "decoder.onnx" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "x")]) == 2
    assert "error" in capsys.readouterr().err


def test_padded_windows_match_official_in_pytorch_and_onnx(tmp_path):
    """A window size that does not divide the token grid (16 tokens, windows of 5) exercises the
    encoder's padding path, which the tiny preset never takes."""
    from segany.model import PRESETS

    model = random_tiny(seed=4, config=PRESETS["tiny"].replace(window_size=5))
    ref = official_twin(model)
    x = torch.randint(0, 256, (192, 256, 3), dtype=torch.uint8)
    with torch.no_grad():
        pixels = model.preprocess(x.permute(2, 0, 1)[None].float())
        want = ref.image_encoder(pixels)
        torch.testing.assert_close(model.image_encoder(pixels), want, atol=TOL, rtol=0)
    export_onnx(model, tmp_path)
    (got,) = _session(tmp_path / "encoder.onnx").run(None, {"image": x.numpy()})
    np.testing.assert_allclose(got, want.numpy(), atol=TOL, rtol=0)


# -- int8 weight type ------------------------------------------------------------------------------


def _int8_weight_dtypes(path):
    """Element types of the quantised weight initialisers of a graph."""
    graph = onnx.load(str(path)).graph
    return {init.data_type for init in graph.initializer if init.name.endswith("_quantized")}


def test_int8_weight_type_follows_the_cpu_and_is_recorded(exported, monkeypatch):
    from segany.export import quantize
    from segany.inference import onnx_backend

    folder, _ = exported
    manifest = json.loads((folder / "segany_onnx.json").read_text())
    want = "s8" if onnx_backend.cpu_has_int8_dot() else "u8"
    assert manifest["int8_weights"] == want
    dtype = onnx.TensorProto.INT8 if want == "s8" else onnx.TensorProto.UINT8
    assert _int8_weight_dtypes(folder / "encoder.int8.onnx") == {dtype}
    monkeypatch.setattr(quantize, "cpu_has_int8_dot", lambda: True)
    assert quantize.int8_weight_type("auto") == "s8"
    monkeypatch.setattr(quantize, "cpu_has_int8_dot", lambda: False)
    assert quantize.int8_weight_type("auto") == "u8"
    assert quantize.int8_weight_type("s8") == "s8"
    with pytest.raises(ValueError):
        quantize.int8_weight_type("int4")


@pytest.mark.parametrize("weights", ["s8", "u8"])
def test_both_int8_weight_types_stay_close_to_float(model, tmp_path, weights, test_images):
    export_onnx(model, tmp_path, quantize="int8", int8_weights=weights, check=False)
    manifest = json.loads((tmp_path / "segany_onnx.json").read_text())
    assert manifest["int8_weights"] == weights
    dtype = onnx.TensorProto.INT8 if weights == "s8" else onnx.TensorProto.UINT8
    for role in ("encoder", "decoder_lowres"):
        assert _int8_weight_dtypes(tmp_path / f"{role}.int8.onnx") == {dtype}, role
    assert _int8_weight_dtypes(tmp_path / "image_cache.int8.onnx") <= {dtype}
    resized = ResizeLongestSide(model.image_encoder.img_size).apply_image(read_image(test_images[0]))
    (fp32,) = _session(tmp_path / "encoder.onnx").run(None, {"image": resized})
    (int8,) = _session(tmp_path / "encoder.int8.onnx").run(None, {"image": resized})
    assert float((fp32 * int8).sum() / np.linalg.norm(fp32) / np.linalg.norm(int8)) > 0.95
    with pytest.raises(ExportError):
        export_onnx(model, tmp_path / "bad", quantize="int8", int8_weights="s4")


def test_signed_int8_on_a_cpu_without_int8_dot_warns(exported, monkeypatch):
    from segany.inference import onnx_backend

    folder, _ = exported
    manifest = json.loads((folder / "segany_onnx.json").read_text())
    monkeypatch.setattr(onnx_backend, "cpu_has_int8_dot", lambda: False)
    if manifest["int8_weights"] == "s8":
        with pytest.warns(RuntimeWarning, match="VNNI"):
            onnx_backend.OnnxPredictor(folder, precision="int8")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnx_backend.OnnxPredictor(folder, precision="fp32")  # float graphs never warn
