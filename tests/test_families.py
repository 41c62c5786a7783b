"""MobileSAM (TinyViT) and SAM-HQ: the official checkpoint layouts, parity with the reference packages
(``mobilesam-mirror``, ``segment-anything-hq``) on random weights, and the model at work in the predictor,
the automatic generator, training and ONNX export."""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import pytest
import torch
from sam_testing import randomize_

from segany.io.checkpoint import infer_config, load_checkpoint, save_checkpoint
from segany.model import PRESETS, SamConfig, build_sam

# MobileSAM's reference hard-codes a 64x64 output grid (1024-pixel input) and the stride-1 last merge for a
# last stage 320 wide: the smallest TinyViT it can run.
REF_MOBILE = PRESETS["mobile_sam"].replace(
    tiny_vit_dims=(8, 16, 24, 320), tiny_vit_depths=(1, 1, 2, 1), tiny_vit_heads=(2, 2, 3, 10), tiny_vit_classes=4,
    decoder_mlp_dim=128,
)
# Our own TinyViT runs any input that is a multiple of 16: a tiny one for the generator and export.
TINY_MOBILE = PRESETS["tiny"].replace(
    encoder="tiny_vit", tiny_vit_dims=(16, 24, 32, 48), tiny_vit_depths=(1, 1, 2, 1),
    tiny_vit_heads=(2, 2, 2, 2), tiny_vit_windows=(7, 4, 4, 4), tiny_vit_classes=10, name="custom",
)
TINY_HQ = PRESETS["tiny"].replace(hq=True, name="custom")


def _quiet_import(module: str):
    with warnings.catch_warnings():  # the reference packages re-register timm models, noisily
        warnings.simplefilter("ignore")
        return __import__(module, fromlist=["modeling"])


def _ref_parts(pkg, config: SamConfig, decoder_cls, **decoder_kwargs):
    m = pkg.modeling
    grid = config.image_embedding_size
    prompt = m.PromptEncoder(
        embed_dim=config.prompt_embed_dim, image_embedding_size=(grid, grid),
        input_image_size=(config.image_size, config.image_size), mask_in_chans=config.mask_in_chans,
    )
    decoder = decoder_cls(
        num_multimask_outputs=config.num_multimask_outputs,
        transformer=m.TwoWayTransformer(
            depth=config.decoder_depth, embedding_dim=config.prompt_embed_dim,
            mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_num_heads,
        ),
        transformer_dim=config.prompt_embed_dim, iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim, **decoder_kwargs,
    )
    return prompt, decoder


def reference_mobile(config: SamConfig):
    pkg = _quiet_import("mobile_sam")
    encoder = pkg.modeling.TinyViT(
        img_size=config.image_size, num_classes=config.tiny_vit_classes, embed_dims=list(config.tiny_vit_dims),
        depths=list(config.tiny_vit_depths), num_heads=list(config.tiny_vit_heads),
        window_sizes=list(config.tiny_vit_windows), drop_path_rate=0.0,
    )
    prompt, decoder = _ref_parts(pkg, config, pkg.modeling.MaskDecoder)
    return pkg.modeling.Sam(encoder, prompt, decoder, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]).eval()


def reference_hq(config: SamConfig):
    pkg = _quiet_import("segment_anything_hq")
    encoder = pkg.modeling.ImageEncoderViT(
        depth=config.encoder_depth, embed_dim=config.encoder_embed_dim, img_size=config.image_size,
        mlp_ratio=config.mlp_ratio, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=config.encoder_num_heads, patch_size=config.patch_size, qkv_bias=True, use_rel_pos=True,
        global_attn_indexes=tuple(config.encoder_global_attn_indexes), window_size=config.window_size,
        out_chans=config.prompt_embed_dim,
    )
    prompt, decoder = _ref_parts(pkg, config, pkg.modeling.MaskDecoderHQ, vit_dim=config.encoder_embed_dim)
    return pkg.modeling.Sam(encoder, prompt, decoder, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]).eval()


def _batched_input(size: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, size, size - 32), generator=g).float()
    return [
        {
            "image": image,
            "original_size": (size + 40, size - 10),
            "point_coords": torch.tensor(
                [[[40.0, 60.0], [size * 0.6, size * 0.3]], [[size * 0.5, size * 0.5], [5.0, 9.0]]]
            ),
            "point_labels": torch.tensor([[1, 0], [1, 1]]),
            "boxes": torch.tensor([[10.0, 20.0, size * 0.7, size * 0.8], [0.0, 0.0, size * 0.4, size * 0.5]]),
        }
    ]


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-4) -> None:
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= tol * max(1.0, b.abs().max().item()), f"{what}: max difference {diff}"


@pytest.mark.parametrize("name", ["mobile_sam", "sam_hq_vit_tiny", "sam_hq_vit_b"])
def test_official_layouts_match_the_reference_builders(name):
    """Same parameter names and shapes as the reference's own full-size builders, so the released files load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "mobile_sam":
            ref = _quiet_import("mobile_sam").sam_model_registry["vit_t"]()
        elif name == "sam_hq_vit_tiny":
            ref = _quiet_import("segment_anything_hq").sam_model_registry["vit_tiny"]()
        else:
            ref = _quiet_import("segment_anything_hq").sam_model_registry["vit_b"]()
    with torch.device("meta"):
        ours = build_sam(PRESETS[name])
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes
    # And the architecture is read back off those shapes, named as the release.
    assert infer_config(ref.state_dict()) == PRESETS[name]
    assert infer_config(ref.state_dict()).name == name


@torch.no_grad()
def test_mobile_sam_matches_reference_end_to_end(tmp_path):
    ours = randomize_(build_sam(REF_MOBILE), seed=1).eval()
    # The reference loads our file as it is (its own strict load), and we load its state dict.
    path = save_checkpoint(ours, tmp_path / "mobile.pth")
    ref = reference_mobile(REF_MOBILE)
    ref.load_state_dict(torch.load(path, weights_only=True), strict=True)
    ref.eval()  # the reference caches its attention biases when switched to eval: after loading
    loaded = load_checkpoint(path)
    assert loaded.config.encoder == "tiny_vit" and loaded.config.tiny_vit_dims == REF_MOBILE.tiny_vit_dims
    batch = _batched_input(1024)[0]
    x = ours.preprocess(batch["image"])[None]
    embedding, ref_embedding = ours.image_encoder(x), ref.image_encoder(x)
    _assert_close(embedding, ref_embedding, "embedding")
    points = (batch["point_coords"], batch["point_labels"])
    for multimask in (True, False):
        sparse, dense = ours.prompt_encoder(points, batch["boxes"], None)
        low, iou = ours.mask_decoder(embedding, ours.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
        sparse, dense = ref.prompt_encoder(points, batch["boxes"], None)
        want_low, want_iou = ref.mask_decoder(
            ref_embedding, ref.prompt_encoder.get_dense_pe(), sparse, dense, multimask
        )
        _assert_close(low, want_low, "low-res logits")
        _assert_close(iou, want_iou, "IoU")


@torch.no_grad()
@pytest.mark.parametrize("hq_token_only", [False, True])
def test_sam_hq_matches_reference_end_to_end(hq_token_only):
    ours = randomize_(build_sam(TINY_HQ), seed=2).eval()
    ours.mask_decoder.hq_token_only = hq_token_only
    ref = reference_hq(TINY_HQ)
    ref.load_state_dict(ours.state_dict(), strict=True)
    batch = _batched_input(256, seed=3)
    for multimask in (True, False):
        out = ours(batch, multimask)[0]
        want = ref(batch, multimask, hq_token_only=hq_token_only)[0]
        assert out["low_res_logits"].shape == want["low_res_logits"].shape == (2, 1, 64, 64)
        _assert_close(out["low_res_logits"], want["low_res_logits"], "low-res logits")
        _assert_close(out["iou_predictions"], want["iou_predictions"], "IoU")
    x = ours.preprocess(batch[0]["image"])[None]
    emb, early = ref.image_encoder(x)
    packed = ours.image_encoder(x)
    _assert_close(packed[:, :64], emb, "embedding")
    _assert_close(packed[:, 64:], early[0].permute(0, 3, 1, 2), "early features")


@torch.no_grad()
def test_sam_hq_predictor_matches_reference_predictor():
    """segany's SamPredictor runs an HQ model as the official HQ predictor does (one mask per prompt)."""
    from segany.inference.predictor import SamPredictor

    ours = randomize_(build_sam(TINY_HQ), seed=4).eval()
    ref_model = reference_hq(TINY_HQ)
    ref_model.load_state_dict(ours.state_dict(), strict=True)
    ref = _quiet_import("segment_anything_hq").SamPredictor(ref_model)
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    predictor = SamPredictor(ours)
    predictor.set_image(image)
    ref.set_image(image)
    points, labels = np.array([[100.0, 80.0], [20.0, 150.0]]), np.array([1, 0])
    for multimask in (True, False):
        masks, scores, low = predictor.predict(points, labels, multimask_output=multimask, return_logits=True)
        want = ref.predict(points, labels, multimask_output=multimask, return_logits=True)
        assert masks.shape == want[0].shape == (1, 200, 300)
        _assert_close(torch.as_tensor(low), torch.as_tensor(want[2]), "low-res logits")
        _assert_close(torch.as_tensor(scores), torch.as_tensor(want[1]), "IoU")


@pytest.mark.parametrize("config", [TINY_MOBILE, TINY_HQ], ids=["mobile", "hq"])
def test_automatic_generator_runs_each_family(config):
    from segany.inference.automatic import SamAutomaticMaskGenerator

    model = randomize_(build_sam(config), seed=5).eval()
    generator = SamAutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=-10, stability_score_thresh=-10)
    image = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    records = generator.generate(image)
    assert records, "nothing generated"
    for r in records:
        assert r["segmentation"].shape == (120, 160)
        assert np.isfinite(r["predicted_iou"])


@pytest.mark.parametrize("config", [TINY_MOBILE, TINY_HQ], ids=["mobile", "hq"])
def test_each_family_trains(config):
    """Gradients reach every encoder and decoder parameter that the output depends on."""
    model = randomize_(build_sam(config), seed=6).train()
    batch = _batched_input(256)
    out = model(batch, multimask_output=False)[0]
    (out["low_res_logits"].square().mean() + out["iou_predictions"].sum()).backward()
    unused = ("image_encoder.head.", "image_encoder.norm_head.")  # MobileSAM's kept, never-run classifier
    if config.hq:  # SAM-HQ's output is SAM's single-mask token plus the HQ token: the others go unused
        unused += ("mask_decoder.output_hypernetworks_mlps.1.", "mask_decoder.output_hypernetworks_mlps.2.",
                   "mask_decoder.output_hypernetworks_mlps.3.")
    for name, p in model.named_parameters():
        if name.startswith(unused) or name.startswith("prompt_encoder."):  # (no mask prompt here)
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_tiny_vit_family_round_trips_through_safetensors(tmp_path):
    model = randomize_(build_sam(TINY_MOBILE), seed=7).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.config == TINY_MOBILE  # the input size (not in the shapes) comes from the metadata
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_hq_decoder_refuses_a_plain_embedding():
    model = build_sam(TINY_HQ).eval()
    sparse, dense = model.prompt_encoder(None, torch.tensor([[0.0, 0.0, 50.0, 50.0]]), None)
    with pytest.raises(ValueError, match="HQ encoder"):
        model.mask_decoder(torch.zeros(1, 64, 16, 16), model.prompt_encoder.get_dense_pe(), sparse, dense, True)


def test_onnx_export_of_mobile_sam_and_light_hq_matches(tmp_path):
    """Both TinyViT families export; SAM-HQ's own export tests are in test_hq_export.py."""
    pytest.importorskip("onnxruntime")
    from segany.export.onnx import export_onnx

    model = randomize_(build_sam(TINY_MOBILE), seed=8).eval()
    result = export_onnx(model, tmp_path / "mobile")  # checks every graph against PyTorch (1e-4)
    assert {"encoder", "decoder"} <= set(result.files)
    light_hq = randomize_(build_sam(TINY_MOBILE.replace(hq=True)), seed=9).eval()
    result = export_onnx(light_hq, tmp_path / "light_hq")
    assert set(result.files) == {"encoder", "decoder", "manifest"}
    assert max(result.max_abs_diff.values()) < 1e-4


def test_tiny_vit_refuses_widths_its_heads_do_not_divide():
    with pytest.raises(ValueError, match="stage 2: width 32 is not a multiple of its 5 heads"):
        build_sam(TINY_MOBILE.replace(tiny_vit_heads=(2, 2, 5, 2)))
