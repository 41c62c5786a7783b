"""segany against the official ``segment_anything`` package with identical random weights.

Embeddings and logits must agree to 1e-4 in float32; binary masks must be identical except where a logit
lies within 1e-4 of the threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam_testing import official_twin, random_tiny, randomize_

segment_anything = pytest.importorskip("segment_anything")
from segment_anything import SamPredictor as OfficialPredictor  # noqa: E402

from segany import SamPredictor  # noqa: E402
from segany.io.image import read_image  # noqa: E402

TOL = 1e-4


def assert_masks_match(ours: np.ndarray, theirs: np.ndarray, logits: np.ndarray) -> None:
    differ = ours != theirs
    assert not (differ & (np.abs(logits) > TOL)).any(), f"{int(differ.sum())} mask pixels differ"


def compare(ours: SamPredictor, ref: OfficialPredictor, **prompt: object) -> None:
    a_masks, a_scores, a_low = ours.predict(**prompt)
    b_masks, b_scores, b_low = ref.predict(**prompt)
    np.testing.assert_allclose(a_low, b_low, atol=TOL, rtol=0)
    np.testing.assert_allclose(a_scores, b_scores, atol=TOL, rtol=0)
    logits, _, _ = ref.predict(**prompt, return_logits=True)
    a_logits, _, _ = ours.predict(**prompt, return_logits=True)
    np.testing.assert_allclose(a_logits, logits, atol=TOL, rtol=0)
    assert a_masks.dtype == b_masks.dtype == bool
    assert_masks_match(a_masks, b_masks, logits)


@pytest.fixture(scope="module", params=["fast", "lowrank"])
def tiny_pair(request):
    """The tiny model, its official twin and the exact decoder to click with: the fast decoder (what
    ``decoder="auto"`` picks on a CPU) and the opt-in low-rank one."""
    model = random_tiny(seed=1)
    return model, official_twin(model), request.param


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A real photo resized to (h, w) so embeddings see natural statistics."""
    from PIL import Image

    TEST_DATA = Path(__file__).resolve().parent / "data"  # (two conftest modules exist: name no import)

    im = Image.open(TEST_DATA / "images" / "rocket.jpg").convert("RGB")
    return np.asarray(im.resize((w, h), Image.BILINEAR))


PROMPTS = {
    "one_point": dict(point_coords=np.array([[120.0, 90.0]]), point_labels=np.array([1])),
    "fg_bg_points": dict(
        point_coords=np.array([[120.0, 90.0], [40.0, 200.0], [300.0, 30.0]]), point_labels=np.array([1, 0, 1])
    ),
    "box": dict(box=np.array([30.0, 40.0, 260.0, 300.0])),
    "box_and_points": dict(
        point_coords=np.array([[120.0, 90.0], [200.0, 250.0]]),
        point_labels=np.array([1, 0]),
        box=np.array([30.0, 40.0, 260.0, 300.0]),
    ),
}


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (1500, 1000), (333, 333)])
@pytest.mark.parametrize("multimask", [True, False])
def test_predict_matches_official(tiny_pair, size, multimask):
    model, ref_model, decoder = tiny_pair
    image = _image(*size)
    ours, ref = SamPredictor(model, decoder=decoder), OfficialPredictor(ref_model)
    ours.set_image(image)
    ref.set_image(image)
    torch.testing.assert_close(ours.get_image_embedding(), ref.get_image_embedding(), atol=TOL, rtol=0)
    for prompt in PROMPTS.values():
        compare(ours, ref, multimask_output=multimask, **prompt)


def test_mask_input_matches_official(tiny_pair):
    model, ref_model, decoder = tiny_pair
    image = _image(480, 640)
    ours, ref = SamPredictor(model, decoder=decoder), OfficialPredictor(ref_model)
    ours.set_image(image)
    ref.set_image(image)
    _, scores, low = ref.predict(**PROMPTS["one_point"])
    previous = low[np.argmax(scores)][None]
    prompt = dict(
        point_coords=np.array([[120.0, 90.0], [60.0, 60.0]]),
        point_labels=np.array([1, 0]),
        mask_input=previous,
        multimask_output=False,
    )
    compare(ours, ref, **prompt)


def test_bgr_input_matches_official(tiny_pair):
    model, ref_model, decoder = tiny_pair
    image = _image(300, 400)[..., ::-1].copy()
    ours, ref = SamPredictor(model, decoder=decoder), OfficialPredictor(ref_model)
    ours.set_image(image, image_format="BGR")
    ref.set_image(image, image_format="BGR")
    compare(ours, ref, **PROMPTS["one_point"])


def test_batched_boxes_match_official(tiny_pair):
    """100 boxes of one image in one predict_torch call."""
    model, ref_model, decoder = tiny_pair
    image = _image(480, 640)
    ours, ref = SamPredictor(model, decoder=decoder), OfficialPredictor(ref_model)
    ours.set_image(image)
    ref.set_image(image)
    g = torch.Generator().manual_seed(0)
    xy0 = torch.rand(100, 2, generator=g) * torch.tensor([400.0, 300.0])
    wh = 20 + torch.rand(100, 2, generator=g) * 200
    boxes = torch.cat([xy0, xy0 + wh], dim=1)
    a_boxes = ours.transform.apply_boxes_torch(boxes, image.shape[:2])
    b_boxes = ref.transform.apply_boxes_torch(boxes, image.shape[:2])
    torch.testing.assert_close(a_boxes, b_boxes)
    a = ours.predict_torch(None, None, boxes=a_boxes, multimask_output=False, return_logits=True)
    b = ref.predict_torch(None, None, boxes=b_boxes, multimask_output=False, return_logits=True)
    assert a[0].shape == (100, 1, 480, 640)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=TOL, rtol=0)
    masks, _, _ = ours.predict_torch(None, None, boxes=a_boxes, multimask_output=False)
    assert_masks_match(masks.numpy(), (b[0] > 0).numpy(), b[0].numpy())


def test_batched_points_match_official(tiny_pair):
    model, ref_model, decoder = tiny_pair
    image = _image(640, 480)
    ours, ref = SamPredictor(model, decoder=decoder), OfficialPredictor(ref_model)
    ours.set_image(image)
    ref.set_image(image)
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(16, 2, 2, generator=g) * torch.tensor([480.0, 640.0])
    labels = torch.randint(0, 2, (16, 2), generator=g)
    pts_t = ours.transform.apply_coords_torch(pts, image.shape[:2])
    a = ours.predict_torch(pts_t, labels, multimask_output=True, return_logits=True)
    b = ref.predict_torch(pts_t, labels, multimask_output=True, return_logits=True)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=TOL, rtol=0)


def test_sam_forward_matches_official(tiny_pair):
    """The batched end-to-end ``Sam.forward`` (two images, each with its own prompts)."""
    model, ref_model, decoder = tiny_pair
    from segany.ops.transforms import ResizeLongestSide

    t = ResizeLongestSide(model.image_size)
    batch = []
    for size in [(300, 400), (400, 250)]:
        img = _image(*size)
        x = torch.as_tensor(t.apply_image(img)).permute(2, 0, 1).float()
        pts = t.apply_coords_torch(torch.tensor([[[50.0, 60.0]], [[100.0, 120.0]]]), size)
        batch.append({"image": x, "original_size": size, "point_coords": pts, "point_labels": torch.ones(2, 1)})
    with torch.no_grad():
        ours = model(batch, multimask_output=True)
        theirs = ref_model(batch, multimask_output=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a["low_res_logits"], b["low_res_logits"], atol=TOL, rtol=0)
        torch.testing.assert_close(a["iou_predictions"], b["iou_predictions"], atol=TOL, rtol=0)


def test_real_file_formats_match_official(tiny_pair, test_images):
    """Every repo test image (greyscale, RGBA, 16-bit included) through read_image, both packages."""
    model, ref_model, decoder = tiny_pair
    ours, ref = SamPredictor(model, decoder=decoder), OfficialPredictor(ref_model)
    for path in test_images:
        image = read_image(path)
        ours.set_image(path)
        ref.set_image(image)
        torch.testing.assert_close(ours.get_image_embedding(), ref.get_image_embedding(), atol=TOL, rtol=0)
        h, w = image.shape[:2]
        compare(ours, ref, point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))


@pytest.mark.slow
def test_vit_b_matches_official():
    """Full-size ViT-B: one image, a point and a box (about a minute on 2 cores)."""
    from segany.model import PRESETS, build_sam

    model = randomize_(build_sam(PRESETS["vit_b"]), seed=3).eval()
    ref_model = official_twin(model)
    image = _image(480, 640)
    ours, ref = SamPredictor(model), OfficialPredictor(ref_model)
    ours.set_image(image)
    ref.set_image(image)
    torch.testing.assert_close(ours.get_image_embedding(), ref.get_image_embedding(), atol=TOL, rtol=0)
    compare(ours, ref, **PROMPTS["one_point"])
    compare(ours, ref, multimask_output=False, **PROMPTS["box_and_points"])


@pytest.mark.slow
def test_vit_b_bf16_decoder_close_to_official():
    """Full-size ViT-B with the opt-in bfloat16 decoder: the official masks to mask IoU > 0.97."""
    from segany.model import PRESETS, build_sam

    model = randomize_(build_sam(PRESETS["vit_b"]), seed=3).eval()
    ref = OfficialPredictor(official_twin(model))
    ours = SamPredictor(model, decoder="bf16")
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    size = (480, 640)
    ours.set_image_embedding(embedding, size)
    ref.features, ref.original_size, ref.is_image_set = embedding, size, True
    ref.input_size = ref.transform.get_preprocess_shape(*size, ref.model.image_encoder.img_size)
    for name in ("one_point", "box_and_points"):
        got, got_scores, _ = ours.predict(**PROMPTS[name])
        want, want_scores, _ = ref.predict(**PROMPTS[name])
        for a, b in zip(got, want):
            assert (a & b).sum() / max((a | b).sum(), 1) > 0.97
        np.testing.assert_allclose(got_scores, want_scores, atol=0.05)
