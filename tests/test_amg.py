"""Automatic mask generator: the same masks and records as the official generator, and our additions.

Random weights give texture-like masks that cover the whole image, so box NMS, the crop-edge filter and
the small-region clean-up would hardly be exercised by them. Most parity tests therefore also use a
synthetic decoder (:class:`BlobMaskDecoder`) that answers each point with three smooth, ragged discs
around it, given to both generators: then every stage of the pipeline keeps and drops real masks.
A test with the fully random tiny model covers the real decoder.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment
from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator
from torch import nn

import segany.inference.automatic as automatic
from segany.inference.automatic import GENERATOR_PRESETS, GeneratorSettingsError, SamAutomaticMaskGenerator
from segany import load_model
from segany.io.checkpoint import save_checkpoint
from segany.io.image import read_image
from segany.io.rle import decode_rle, encode_mask, to_coco_rle
from segany.model import PRESETS
from sam_testing import official_twin, random_tiny

TEST_IMAGES = Path(__file__).parent / "data" / "images"


# --- a decoder with smooth masks, shared by both generators ---------------------------------------


class BlobPromptEncoder(nn.Module):
    """Passes the point (x, y, label) through as the sparse embedding."""

    def __init__(self, image_embedding_size: tuple[int, int]) -> None:
        super().__init__()
        self.image_embedding_size = image_embedding_size

    def forward(self, points: Any, boxes: Any, masks: Any) -> tuple[torch.Tensor, torch.Tensor]:
        coords, labels = points
        sparse = torch.cat([coords.float(), labels[..., None].float()], dim=-1)
        h, w = self.image_embedding_size
        return sparse, torch.zeros(coords.shape[0], 1, h, w, device=coords.device)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, 1, *self.image_embedding_size)


class BlobMaskDecoder(nn.Module):
    """Three concentric discs around the point (radius 8%, 20%, 35% of the input side), roughened by
    the image embedding so that they get holes, islands and unstable edges; IoU scores vary with the
    point's position."""

    def __init__(self, image_size: int, low_res: int) -> None:
        super().__init__()
        self.image_size, self.low_res = image_size, low_res

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.low_res
        xy = sparse_prompt_embeddings[:, 0, :2] / self.image_size
        centres = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        dx = centres[None, None, :] - xy[:, 0, None, None]
        dy = centres[None, :, None] - xy[:, 1, None, None]
        dist = torch.sqrt(dx * dx + dy * dy)
        emb = image_embeddings.mean(1)
        emb = (emb - emb.mean()) / (emb.std() + 1e-6)
        rep = n // emb.shape[-1]
        texture = emb.repeat_interleave(rep, -1).repeat_interleave(rep, -2)
        radii = torch.tensor([0.03, 0.08, 0.2, 0.35])[None, :, None, None]
        slopes = torch.tensor([60.0, 50.0, 30.0, 20.0])[None, :, None, None]
        logits = (radii - dist[:, None]) * slopes + 0.6 * texture[:, None]
        phase = 13 * xy[:, 0] + 7 * xy[:, 1]
        iou = 0.5 + 0.45 * torch.sin(phase[:, None] + 2.1 * torch.arange(4.0)[None])
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return logits[:, keep], iou[:, keep]


class CachedEncoder(nn.Module):
    """The image encoder, remembering its answers: the two generators encode the same crops."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.img_size = encoder.img_size
        self.cache: dict[bytes, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = hashlib.sha1(x.detach().cpu().numpy().tobytes()).digest() + bytes(str(tuple(x.shape)), "ascii")
        if key not in self.cache:
            self.cache[key] = self.encoder(x)
        return self.cache[key].clone()


def blob_pair(seed: int = 1, cache: bool = True) -> tuple[nn.Module, nn.Module]:
    """Our model and the official one sharing one image encoder (``cache``: remembering its outputs)
    and the synthetic decoder, so both generators see bit-identical logits."""
    # The encoder only roughens the discs here: a 2-block one keeps the crop tests quick.
    model = random_tiny(seed, PRESETS["tiny"].replace(encoder_depth=2, encoder_global_attn_indexes=(1,)))
    ref = official_twin(model)
    grid = model.config.image_size // model.config.patch_size
    model.prompt_encoder = ref.prompt_encoder = BlobPromptEncoder((grid, grid))
    model.mask_decoder = ref.mask_decoder = BlobMaskDecoder(model.config.image_size, 4 * grid)
    ref.image_encoder = model.image_encoder = CachedEncoder(model.image_encoder) if cache else model.image_encoder
    return model, ref


def small_image(name: str = "chelsea.jpg", long_side: int = 240) -> np.ndarray:
    image = read_image(TEST_IMAGES / name)
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    return np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR))


# --- comparing records ----------------------------------------------------------------------------


def _rle(seg: Any) -> dict[str, Any]:
    if isinstance(seg, np.ndarray):
        rle = encode_mask(seg)
    else:
        rle = to_coco_rle(seg)
    return {"size": rle["size"], "counts": rle["counts"].encode()}


def assert_same_records(ours: list[dict], theirs: list[dict], exact: bool) -> None:
    """Same number of masks, matched one to one with IoU >= 0.99, and the same record fields:
    exactly (``exact``, same logits on both sides) or within the tolerances of float differences
    between the two models."""
    assert len(ours) == len(theirs)
    if not ours:
        return
    assert list(ours[0]) == list(theirs[0])  # same keys, same order
    a, b = [_rle(r["segmentation"]) for r in ours], [_rle(r["segmentation"]) for r in theirs]
    ious = np.asarray(mask_utils.iou(a, b, [0] * len(b))).reshape(len(a), len(b))
    rows, cols = linear_sum_assignment(-ious)
    matched = ious[rows, cols]
    assert matched.min() >= 0.99, f"worst matched IoU {matched.min()}"
    for i, j in zip(rows, cols):
        a, b = ours[i], theirs[j]
        assert a["crop_box"] == b["crop_box"]
        assert a["point_coords"][0] == pytest.approx(b["point_coords"][0], abs=1e-9)
        assert abs(a["predicted_iou"] - b["predicted_iou"]) <= (0 if exact else 1e-4)
        assert abs(a["stability_score"] - b["stability_score"]) <= (0 if exact else 1e-3)
        if exact:
            assert a["bbox"] == b["bbox"] and a["area"] == b["area"]
        else:
            assert np.abs(np.subtract(a["bbox"], b["bbox"])).max() <= 1
            assert abs(a["area"] - b["area"]) <= 0.01 * b["area"] + 1
    if exact:  # also the same order
        assert list(rows) == list(cols)


def both(model: nn.Module, ref: nn.Module, image: np.ndarray, **knobs: Any) -> tuple[list[dict], list[dict]]:
    ours = SamAutomaticMaskGenerator(model, **knobs).generate(image)
    theirs = OfficialGenerator(ref, **knobs).generate(image)
    return ours, theirs


BLOB_KNOBS = dict(points_per_side=12, pred_iou_thresh=0.3, stability_score_thresh=0.2)


# --- parity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_mode", ["binary_mask", "uncompressed_rle", "coco_rle"])
def test_same_masks_as_official_in_every_output_mode(output_mode: str) -> None:
    model, ref = blob_pair()
    image = small_image()
    ours, theirs = both(model, ref, image, output_mode=output_mode, **BLOB_KNOBS)
    assert len(ours) >= 10  # NMS kept a real set, not one survivor
    assert_same_records(ours, theirs, exact=True)
    seg = ours[0]["segmentation"]
    if output_mode == "binary_mask":
        assert isinstance(seg, np.ndarray) and seg.dtype == bool and seg.shape == image.shape[:2]
    elif output_mode == "uncompressed_rle":
        assert seg == theirs[0]["segmentation"]  # the official run-length layout, bit for bit
    else:
        assert isinstance(seg["counts"], str) and seg == theirs[0]["segmentation"]


def test_same_masks_as_official_with_crops_and_clean_up() -> None:
    model, ref = blob_pair(seed=2)
    image = small_image("coffee.jpg")
    knobs = dict(BLOB_KNOBS, points_per_side=10, crop_n_layers=1, min_mask_region_area=40, output_mode="coco_rle")
    ours, theirs = both(model, ref, image, **knobs)
    assert len({tuple(r["crop_box"]) for r in ours}) > 1  # masks from crops survived
    assert_same_records(ours, theirs, exact=True)


def test_same_masks_as_official_with_two_crop_layers_and_downscaled_grids() -> None:
    model, ref = blob_pair(seed=3)
    image = small_image("rocket.jpg", long_side=160)
    knobs = dict(
        points_per_side=8, crop_n_layers=2, crop_n_points_downscale_factor=2, pred_iou_thresh=0.2,
        stability_score_thresh=0.1, min_mask_region_area=25, box_nms_thresh=0.5,
    )
    ours, theirs = both(model, ref, image, **knobs)
    assert ours
    assert_same_records(ours, theirs, exact=True)


def test_same_masks_as_official_with_the_random_model() -> None:
    model = random_tiny(1)
    ref = official_twin(model)
    image = small_image("grey_camera.jpg", long_side=160)
    knobs = dict(points_per_side=4, pred_iou_thresh=-10.0, stability_score_thresh=0.05, output_mode="coco_rle")
    ours, theirs = both(model, ref, image, **knobs)
    assert ours
    assert_same_records(ours, theirs, exact=False)
    # Crops and the clean-up with the real decoder too.
    knobs.update(points_per_side=2, crop_n_layers=1, min_mask_region_area=20, stability_score_thresh=0.0)
    ours, theirs = both(model, ref, image, **knobs)
    assert_same_records(ours, theirs, exact=False)


def test_same_masks_on_a_shared_data_image(shared_data: Path) -> None:
    model, ref = blob_pair(seed=4)
    image = read_image(shared_data / "SUIM_sample" / "images" / "d_r_598.jpg")[::2, ::2]
    ours, theirs = both(model, ref, image, min_mask_region_area=50, **BLOB_KNOBS)
    assert len(ours) >= 10
    assert_same_records(ours, theirs, exact=True)


def test_default_thresholds_drop_random_masks_like_the_official() -> None:
    model = random_tiny(0)
    ours, theirs = both(model, official_twin(model), small_image(long_side=120), points_per_side=6)
    assert_same_records(ours, theirs, exact=False)


# --- behaviour --------------------------------------------------------------------------------------


def test_chunked_upsampling_gives_the_same_records(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = blob_pair()
    image = small_image(long_side=160)
    knobs = dict(BLOB_KNOBS, points_per_side=8, min_mask_region_area=30, output_mode="coco_rle")
    whole = SamAutomaticMaskGenerator(model, **knobs).generate(image)
    monkeypatch.setattr(automatic, "_CHUNK_ELEMENTS", 1)  # one mask at a time
    assert SamAutomaticMaskGenerator(model, **knobs).generate(image) == whole


def test_path_input_and_record_types(tmp_path: Path) -> None:
    model, _ = blob_pair()
    image = small_image()
    path = tmp_path / "im.png"
    Image.fromarray(image).save(path)
    gen = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **BLOB_KNOBS)
    records = gen.generate(path)
    assert records == gen.generate(image)
    for r in records:
        assert isinstance(r["area"], int) and all(isinstance(v, int) for v in r["bbox"] + r["crop_box"])
        assert r["area"] == int(decode_rle(r["segmentation"]).sum())
        x, y, w, h = r["bbox"]
        mask = decode_rle(r["segmentation"])
        ys, xs = np.nonzero(mask)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max(), ys.max())
    assert set(gen.last_timings) >= {"encoder", "decoder", "filter", "nms", "encode", "total"}


def test_max_mask_region_fraction_drops_large_masks() -> None:
    model, _ = blob_pair()
    image = small_image()
    h, w = image.shape[:2]
    knobs = dict(BLOB_KNOBS, box_nms_thresh=0.95, output_mode="coco_rle")
    unlimited = SamAutomaticMaskGenerator(model, **knobs).generate(image)
    assert max(r["area"] for r in unlimited) >= 0.2 * h * w  # the test needs large masks
    limited = SamAutomaticMaskGenerator(model, max_mask_region_fraction=0.2, **knobs).generate(image)
    assert limited and all(r["area"] < 0.2 * h * w for r in limited)
    # 1.0 drops only masks covering every pixel: none here.
    assert max(r["area"] for r in unlimited) < h * w
    assert SamAutomaticMaskGenerator(model, max_mask_region_fraction=1.0, **knobs).generate(image) == unlimited


def test_presets() -> None:
    model = random_tiny(0)
    sa1b = SamAutomaticMaskGenerator.from_preset(model, "sa1b")
    assert (sa1b.crop_n_layers, sa1b.crop_n_points_downscale_factor, sa1b.min_mask_region_area) == (2, 2, 100)
    assert (sa1b.pred_iou_thresh, sa1b.stability_score_thresh, sa1b.box_nms_thresh, sa1b.crop_nms_thresh) == (
        0.88, 0.95, 0.7, 0.7,
    )
    assert sa1b.max_mask_region_fraction == 0.95
    assert [len(g) for g in sa1b.point_grids] == [32 * 32, 16 * 16, 8 * 8]
    tuned = SamAutomaticMaskGenerator.from_preset(model, "sa1b", pred_iou_thresh=0.5, output_mode="coco_rle")
    assert (tuned.pred_iou_thresh, tuned.output_mode, tuned.crop_n_layers) == (0.5, "coco_rle", 2)
    grids = SamAutomaticMaskGenerator.from_preset(model, "sa1b", point_grids=[np.array([[0.5, 0.5]])] * 3)
    assert [len(g) for g in grids.point_grids] == [1, 1, 1]
    with pytest.raises(GeneratorSettingsError, match="unknown preset"):
        SamAutomaticMaskGenerator.from_preset(model, "nope")
    assert set(GENERATOR_PRESETS) == {"default", "sa1b"}


def test_default_preset_and_signature_match_the_official() -> None:
    ours = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    theirs = inspect.signature(OfficialGenerator.__init__).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    model_own = ("pred_iou_thresh", "stability_score_thresh")  # None: the model's own, else the official
    for name, param in theirs.items():
        if name not in ("self", "model", *model_own):
            assert ours[name].default == param.default, name
    default = SamAutomaticMaskGenerator.from_preset(random_tiny(0), "default")
    assert default.max_mask_region_fraction is None and default.crop_n_layers == 0
    for name in model_own:  # a model without thresholds of its own gets the official ones
        assert ours[name].default is None and getattr(default, name) == theirs[name].default, name


def test_a_model_that_carries_its_own_thresholds_is_filtered_with_them(tmp_path: Path) -> None:
    model = random_tiny(0)
    model.config = model.config.replace(auto_mask_thresholds=(0.3, 0.6))
    generator = SamAutomaticMaskGenerator(model)
    assert (generator.pred_iou_thresh, generator.stability_score_thresh) == (0.3, 0.6)
    explicit = SamAutomaticMaskGenerator(model, pred_iou_thresh=0.9, stability_score_thresh=0.0)
    assert (explicit.pred_iou_thresh, explicit.stability_score_thresh) == (0.9, 0.0)
    sa1b = SamAutomaticMaskGenerator.from_preset(model, "sa1b")  # the paper's settings stay the paper's
    assert (sa1b.pred_iou_thresh, sa1b.stability_score_thresh) == (0.88, 0.95)
    # the thresholds travel in the checkpoint and in ONNX exports' configuration
    path = save_checkpoint(model, tmp_path / "own.safetensors")
    loaded = load_model(path)
    assert automatic.model_mask_thresholds(loaded) == (0.3, 0.6)
    info = SimpleNamespace(model=SimpleNamespace(config=model.config.to_dict()))
    assert automatic.model_mask_thresholds(info) == (0.3, 0.6)
    assert automatic.model_mask_thresholds(random_tiny(0)) == automatic.SAM_MASK_THRESHOLDS
    # and the filter is really applied: at the median predicted IoU of the unfiltered masks, fewer are kept
    # (the disc decoder gives many masks with varied scores; the random one, a single image-wide mask)
    blobs, _ = blob_pair()
    image = small_image(long_side=160)
    unfiltered = SamAutomaticMaskGenerator(blobs, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                           points_per_side=12).generate(image)
    median = float(np.median([m["predicted_iou"] for m in unfiltered]))
    blobs.config = blobs.config.replace(auto_mask_thresholds=(median, 0.0))
    kept = SamAutomaticMaskGenerator(blobs, points_per_side=12).generate(image)
    assert 0 < len(kept) < len(unfiltered)
    assert all(m["predicted_iou"] > median for m in kept)


@pytest.mark.parametrize(
    "knobs, message",
    [
        (dict(points_per_side=None), "exactly one"),
        (dict(point_grids=[np.zeros((1, 2))]), "exactly one"),
        (dict(output_mode="png"), "output_mode"),
        (dict(points_per_batch=0), "points_per_batch"),
        (dict(max_mask_region_fraction=1.5), "max_mask_region_fraction"),
        (dict(box_nms_thresh=float("nan")), r"box_nms_thresh must be in \[0, 1\], got nan"),
        (dict(crop_nms_thresh=1.5), "crop_nms_thresh"),
        (dict(crop_overlap_ratio=-3), r"crop_overlap_ratio must be in \[0, 1\)"),
        (dict(pred_iou_thresh=float("inf")), "pred_iou_thresh must be a finite number"),
        (dict(stability_score_offset=-1.0), "stability_score_offset must be >= 0"),
        (dict(min_mask_region_area=-5), "min_mask_region_area"),
        (dict(points_per_side=None, point_grids=[np.zeros((1, 2))], crop_n_layers=1), "one grid per layer"),
        (dict(points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=2), "no points"),
    ],
)
def test_bad_settings_are_reported(knobs: dict, message: str) -> None:
    with pytest.raises(GeneratorSettingsError, match=message):
        SamAutomaticMaskGenerator(random_tiny(0), **knobs)


def test_accepts_a_predictor_that_decodes_low_resolution_logits() -> None:
    from segany.inference.predictor import SamPredictor

    class LowResPredictor(SamPredictor):
        """Stands in for OnnxPredictor: the generator asks it for decoder outputs only."""

        calls = 0

        def predict_low_res(
            self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True, skip_below=None
        ):
            LowResPredictor.calls += 1
            sparse, dense = self.model.prompt_encoder((point_coords, point_labels), None, None)
            pe = self.model.prompt_encoder.get_dense_pe()
            return self.model.mask_decoder(self.features, pe, sparse, dense, multimask_output)

    model, _ = blob_pair()
    image = small_image(long_side=160)
    knobs = dict(BLOB_KNOBS, points_per_side=8, output_mode="coco_rle")
    expected = SamAutomaticMaskGenerator(model, **knobs).generate(image)
    assert SamAutomaticMaskGenerator(LowResPredictor(model), **knobs).generate(image) == expected
    assert LowResPredictor.calls == 1
    with pytest.raises(GeneratorSettingsError, match="Sam model or a predictor"):
        SamAutomaticMaskGenerator(object())


def test_paper_clean_up_rule_drops_masks_with_only_small_regions() -> None:
    """With min_mask_region_area above every mask's area, the official rule keeps each mask's largest
    island; the paper's rule (sa1b preset) drops them all."""
    model, _ = blob_pair()
    image = small_image(long_side=160)
    knobs = dict(BLOB_KNOBS, points_per_side=6, min_mask_region_area=160 * 160)
    official_rule = SamAutomaticMaskGenerator(model, **knobs).generate(image)
    assert official_rule and all(r["area"] > 0 for r in official_rule)
    paper_rule = SamAutomaticMaskGenerator(model, **knobs, drop_masks_with_only_small_regions=True).generate(image)
    assert paper_rule == []
    assert SamAutomaticMaskGenerator.from_preset(model, "sa1b").drop_masks_with_only_small_regions
