"""ONNX export of SAM-HQ models: the encoder graph outputs the HQ embedding, decoder.onnx has the official
SAM-HQ export's interface and options and agrees with the official ``SamOnnxModel`` of
``segment-anything-hq`` (run in PyTorch on the same random weights) and with our model, for both
``hq_token_only`` values; the onnxruntime predictor runs an HQ export with PyTorch prompts, refuses
without them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sam_testing import randomize_
from test_families import TINY_HQ, reference_hq

ort = pytest.importorskip("onnxruntime")

from segany.errors import CheckpointError  # noqa: E402
from segany.export.onnx import ExportError, export_onnx  # noqa: E402
from segany.inference.fast_decoder import embed_points  # noqa: E402
from segany.model import build_sam  # noqa: E402

TOL = 1e-4
INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]


@pytest.fixture(scope="module")
def model():
    return randomize_(build_sam(TINY_HQ), seed=13).eval()


@pytest.fixture(scope="module")
def official(model):
    ref = reference_hq(TINY_HQ)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval()


@pytest.fixture(scope="module", params=[(False, False), (True, True)], ids=["sam+hq,single", "hq-only,multimask"])
def exported(model, tmp_path_factory, request):
    """Exports with (hq_token_only, multimask_output); the export itself checks each graph against the
    PyTorch module it traced (1e-4)."""
    hq_token_only, multimask = request.param
    folder = tmp_path_factory.mktemp("hq")
    result = export_onnx(model, folder, hq_token_only=hq_token_only, hq_multimask_output=multimask)
    return folder, result, hq_token_only, multimask


def _feeds(model, n_points: int, has_mask: bool, orig: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    c = model.prompt_encoder.embed_dim + model.mask_decoder.early_dim
    gh, gw = model.prompt_encoder.image_embedding_size
    labels = torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0][:n_points]])
    return {
        "image_embeddings": torch.randn(1, c, gh, gw, generator=g).numpy(),
        "point_coords": (torch.rand(1, n_points, 2, generator=g) * model.image_size).numpy(),
        "point_labels": labels.numpy(),
        "mask_input": (3 * torch.randn(1, 1, 4 * gh, 4 * gw, generator=g)).numpy(),
        "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
        "orig_im_size": np.array(orig, dtype=np.float32),
    }


def _official_outputs(model, official, feeds, **options):
    from segment_anything_hq.utils.onnx import SamOnnxModel

    ref = SamOnnxModel(official, **options).eval()
    x = {k: torch.from_numpy(v) for k, v in feeds.items()}
    d = model.prompt_encoder.embed_dim
    embedding, early = x["image_embeddings"][:, :d], x["image_embeddings"][:, d:]
    interm = early.permute(0, 2, 3, 1).unsqueeze(0)  # the official input: [(1, g, g, early_dim)]
    with torch.no_grad():
        out = ref(embedding, interm, *(x[name] for name in INPUTS[1:]))
    return [o.numpy() for o in out]


@pytest.mark.parametrize(
    "n_points,has_mask,orig", [(1, False, (300, 450)), (3, True, (200, 120)), (5, False, (256, 256))]
)
def test_hq_decoder_graph_matches_the_official_hq_export(exported, model, official, n_points, has_mask, orig):
    folder, _, hq_token_only, multimask = exported
    session = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == INPUTS
    feeds = _feeds(model, n_points, has_mask, orig, seed=n_points)
    got = session.run(None, feeds)
    want = _official_outputs(model, official, feeds, hq_token_only=hq_token_only, multimask_output=multimask)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert got[0].shape == (1, 1, *orig) and got[2].shape == (1, 1, 64, 64)
    for g, w in zip(got, want):
        scale = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, atol=TOL * scale, rtol=0)
    # And our model's own HQ decoder gives the same low-resolution logits and score.
    x = {k: torch.from_numpy(v) for k, v in feeds.items()}
    before = model.mask_decoder.hq_token_only
    model.mask_decoder.hq_token_only = hq_token_only
    try:
        with torch.no_grad():
            pe = model.prompt_encoder
            sparse = embed_points(model, x["point_coords"], x["point_labels"])
            dense = pe.mask_downscaling(x["mask_input"]) if has_mask else pe.no_mask_embed.weight.view(1, -1, 1, 1)
            dense = dense.expand(1, -1, *pe.image_embedding_size)
            low, iou = model.mask_decoder(x["image_embeddings"], pe.get_dense_pe(), sparse, dense, multimask)
    finally:
        model.mask_decoder.hq_token_only = before
    np.testing.assert_allclose(got[2], low.numpy(), atol=TOL * max(1.0, float(low.abs().max())), rtol=0)
    np.testing.assert_allclose(got[1], iou.numpy(), atol=TOL, rtol=0)


def test_hq_export_files_manifest_and_encoder(exported, model):
    folder, result, hq_token_only, multimask = exported
    manifest = json.loads((folder / "segany_onnx.json").read_text())
    assert set(manifest["files"]) == {"encoder", "decoder"}  # no decoder split for SAM-HQ
    assert manifest["hq"] == {"hq_token_only": hq_token_only, "multimask_output": multimask}
    assert manifest["embedding_channels"] == 64 + 64
    assert max(result.max_abs_diff.values()) < TOL
    image = np.random.default_rng(2).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": image})
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1).float()[None]
        want = model.image_encoder(model.preprocess(x)).numpy()
    assert got.shape == want.shape == (1, 128, 16, 16)
    np.testing.assert_allclose(got, want, atol=TOL * max(1.0, float(np.abs(want).max())), rtol=0)


def test_onnx_predictor_runs_hq_prompts_in_pytorch_and_refuses_without(exported, model):
    from segany import SamPredictor
    from segany.inference.onnx_backend import OnnxPredictor

    folder = exported[0]
    with pytest.raises(CheckpointError, match="SAM-HQ export has no onnxruntime decoder split"):
        OnnxPredictor(folder)
    image = np.random.default_rng(3).integers(0, 256, (120, 150, 3), dtype=np.uint8)
    onnx_predictor = OnnxPredictor(folder, decoder_model=model)
    torch_predictor = SamPredictor(model)
    for p in (onnx_predictor, torch_predictor):
        p.set_image(image)
    prompt = dict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1]), return_logits=True)
    got, want = onnx_predictor.predict(**prompt), torch_predictor.predict(**prompt)
    assert got[2].shape == want[2].shape == (1, 64, 64)
    np.testing.assert_allclose(got[2], want[2], atol=1e-3 * max(1.0, float(np.abs(want[2]).max())), rtol=0)


def test_hq_options_are_refused_for_sam_and_cli_exports_hq(tmp_path, capsys):
    from segany.cli.main import main
    from segany.io.checkpoint import save_checkpoint
    from segany.model import PRESETS

    with pytest.raises(ExportError, match="^hq_token_only and hq_multimask_output apply to SAM-HQ models only$"):
        export_onnx(build_sam(PRESETS["tiny"]), tmp_path / "sam", hq_token_only=True)
    assert not (tmp_path / "sam").exists()
    path = save_checkpoint(randomize_(build_sam(TINY_HQ), seed=4).eval(), tmp_path / "hq.safetensors")
    assert main(["export", str(path), "-o", str(tmp_path / "out"), "--no-encoder", "--hq-token-only"]) == 0
    manifest = json.loads((tmp_path / "out" / "segany_onnx.json").read_text())
    assert manifest["hq"] == {"hq_token_only": True, "multimask_output": False}
    assert "decoder.onnx" in capsys.readouterr().out
    assert main(["export", "tiny", "-o", str(tmp_path / "x"), "--hq-token-only"]) == 2
    err = capsys.readouterr().err
    assert "SAM-HQ models only" in err and "Traceback" not in err


def test_annotation_server_model_service_takes_hq_and_tiny_vit_models(tmp_path):
    """The annotation server's model service states the embedding shape its encoder writes (SAM-HQ: C +
    early_dim channels; TinyViT: no ViT patch embedding to read the grid off) and exports HQ decoders."""
    from PIL import Image

    from segany.annotate.modelsvc import ModelService
    from test_families import TINY_MOBILE

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(image)
    for config in (TINY_HQ, TINY_MOBILE):
        service = ModelService(randomize_(build_sam(config), seed=5), tmp_path / config.encoder)
        embedding = np.load(service.ensure_embedding("0" * 64, image))
        assert list(embedding.shape) == service.info()["embedding_shape"]
        if config.hq:
            decoder = ort.InferenceSession(str(service.decoder_path()), providers=["CPUExecutionProvider"])
            assert decoder.get_inputs()[0].shape == list(embedding.shape)
