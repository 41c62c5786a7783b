"""Evaluation protocols on synthetic shapes whose correct clicks, boxes and scores are known.

Test doubles with the official predictor API return scripted masks, so the tests can check where
the protocol clicks, what it feeds back, how it counts NoC, and that ignore regions are left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from scipy import ndimage

from segany.eval.points import PointsSettings, evaluate_points, select_objects
from segany.eval.prompting import PredictorSegmenter, PromptSegmenter
from segany.io.datasets import SegmentationDataset

H = W = 64


def _rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def _ann(i: int, image_id: int, mask: np.ndarray, crowd: int = 0) -> dict:
    r = _rle(mask)
    return {"id": i, "image_id": image_id, "category_id": 1, "segmentation": r, "iscrowd": crowd,
            "area": float(mask.sum()), "bbox": [float(v) for v in mask_utils.toBbox(r)]}


def make_dataset(root: Path, objects: list[list[np.ndarray]], crowd: dict[int, np.ndarray] | None = None) -> Path:
    """A COCO folder with one textured 64x64 image per entry of ``objects`` (a list of masks each)."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for k, masks in enumerate(objects, start=1):
        img = (rng.integers(0, 60, (H, W, 3)) + 40).astype(np.uint8)
        for m in masks:
            img[m] = (200, 80, 40)
        Image.fromarray(img).save(root / "images" / f"{k}.png")
        images.append({"id": k, "file_name": f"{k}.png", "width": W, "height": H})
        for m in masks:
            anns.append(_ann(len(anns) + 1, k, m))
        if crowd and k in crowd:
            anns.append(_ann(len(anns) + 1, k, crowd[k], crowd=1))
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def square(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


GT = square(10, 31, 20, 41)  # 21 x 21: unique centre (x=30, y=20)


class ScriptedPredictor:
    """Official-style predictor returning scripted masks; records every call.

    ``script`` is a list of (masks [M, H, W], scores [M]); call i returns entry i (the last one
    repeats). Low-res logits are filled with ``100 * call + mask index`` so that what is fed back
    can be traced.
    """

    def __init__(self, script: list[tuple[list[np.ndarray], list[float]]]) -> None:
        self.script = script
        self.calls: list[dict] = []

    def set_image(self, image: np.ndarray) -> None:
        self.image_shape = image.shape

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        i = len(self.calls)
        self.calls.append({"points": None if point_coords is None else np.array(point_coords),
                           "labels": None if point_labels is None else np.array(point_labels),
                           "box": box, "mask_input": mask_input, "multimask": multimask_output})
        masks, scores = self.script[min(i, len(self.script) - 1)]
        logits = np.stack([np.full((16, 16), 100.0 * i + j, np.float32) for j in range(len(masks))])
        return np.stack(masks), np.array(scores, np.float32), logits


def _max_dist_pixel_ok(region: np.ndarray, x: int, y: int) -> bool:
    """(x, y) lies in ``region`` at the largest distance from its boundary (image border included)."""
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    return bool(region[y, x]) and np.isclose(dist[y, x], dist.max())


def test_clicks_feedback_and_noc_on_scripted_masks(tmp_path: Path) -> None:
    ds = SegmentationDataset(make_dataset(tmp_path / "d", [[GT]]))
    right = GT & ~square(0, H, 0, 30)  # the left 10 columns are missing: a pure false negative
    blob = square(50, 55, 2, 7)  # 25 px false positive away from the object
    fake = ScriptedPredictor([
        ([right, GT, np.zeros((H, W), bool)], [0.9, 0.1, 0.5]),  # click 1: top = right, oracle = GT
        ([GT | blob], [0.8]),  # click 2
        ([GT], [0.9]),  # click 3: perfect, nothing left to click
    ])
    res = evaluate_points(ds, PromptSegmenter(fake), PointsSettings(max_clicks=20), progress=False)
    (obj,) = res.objects

    first = fake.calls[0]
    assert first["points"].tolist() == [[30, 20]] and first["labels"].tolist() == [1]
    assert first["multimask"] is True and first["mask_input"] is None

    second = fake.calls[1]
    assert second["multimask"] is False
    assert second["labels"].tolist() == [1, 1]
    x, y = second["points"][1].astype(int)
    assert _max_dist_pixel_ok(GT & ~right, x, y)
    # The logits of the mask kept at click 1 (index 0 of call 0) are fed back.
    assert second["mask_input"].shape == (1, 16, 16) and np.all(second["mask_input"] == 0.0)

    third = fake.calls[2]
    assert third["labels"].tolist() == [1, 1, 0]
    x, y = third["points"][2].astype(int)
    assert _max_dist_pixel_ok(blob, x, y)
    assert np.all(third["mask_input"] == 100.0)  # call 1's only mask
    assert len(fake.calls) == 3  # the oracle track was perfect at once: no call of its own

    iou1 = (right & GT).sum() / GT.sum()
    assert obj.top[:3] == pytest.approx([iou1, GT.sum() / (GT | blob).sum(), 1.0])
    assert obj.oracle == [1.0]
    assert obj.first_ious == pytest.approx([iou1, 1.0, 0.0])
    m = res.summary()
    assert m["top"]["miou@1"] == pytest.approx(iou1) and m["top"]["miou@9"] == 1.0
    assert m["top"]["noc@85"] == 2 and m["top"]["noc@90"] == 2
    assert m["oracle"]["miou@1"] == 1.0 and m["oracle"]["noc@90"] == 1


def test_ignore_region_is_left_out_of_iou_and_clicks(tmp_path: Path) -> None:
    left = square(10, 31, 20, 30)
    ds = SegmentationDataset(make_dataset(tmp_path / "d", [[GT]], crowd={1: left}))
    right = GT & ~left
    fake = ScriptedPredictor([([right, right, right], [0.5, 0.4, 0.3])])
    res = evaluate_points(ds, PromptSegmenter(fake), PointsSettings(max_clicks=5), progress=False)
    assert len(res.objects) == 1  # the crowd region is not an object to prompt
    x, y = fake.calls[0]["points"][0].astype(int)
    assert _max_dist_pixel_ok(right, x, y) and not left[y, x]
    assert res.objects[0].top == [1.0]  # the missing part is ignored: nothing to correct
    assert len(fake.calls) == 1


def test_noc_counts_max_clicks_when_never_reached(tmp_path: Path) -> None:
    ds = SegmentationDataset(make_dataset(tmp_path / "d", [[GT]]))
    half = GT & ~square(0, H, 0, 31)
    fake = ScriptedPredictor([([half, half, half], [0.3, 0.2, 0.1]), ([half], [0.5])])
    st = PointsSettings(max_clicks=7, miou_clicks=(1, 2, 3, 5))
    res = evaluate_points(ds, PromptSegmenter(fake), st, progress=False)
    obj = res.objects[0]
    assert len(obj.top) == 7 and len(fake.calls) == 7  # never good enough: all 7 clicks are made
    assert len({(c[0], c[1]) for c in obj.clicks}) == 7  # a click is never repeated
    m = res.summary()["top"]
    assert m["noc@85"] == 7 and m["nof@85"] == 1 and m["nof@90"] == 1


def test_no_feedback_and_early_stop(tmp_path: Path) -> None:
    ds = SegmentationDataset(make_dataset(tmp_path / "d", [[GT]]))
    almost = GT & ~square(10, 11, 20, 41)  # one row missing: IoU 0.952 >= 0.9
    fake = ScriptedPredictor([([almost] * 3, [0.3, 0.2, 0.1])])
    st = PointsSettings(max_clicks=20, feed_logits=False)
    evaluate_points(ds, PromptSegmenter(fake), st, progress=False)
    # Threshold reached at click 1, but mIoU@9 needs 9 clicks; no more afterwards.
    assert len(fake.calls) == 9
    assert all(c["mask_input"] is None for c in fake.calls)
    full = ScriptedPredictor([([almost] * 3, [0.3, 0.2, 0.1])])
    evaluate_points(ds, PromptSegmenter(full), PointsSettings(max_clicks=12, full_run=True), progress=False)
    assert len(full.calls) == 12


def test_random_clicks_lie_in_error_region_and_are_seeded(tmp_path: Path) -> None:
    ds = SegmentationDataset(make_dataset(tmp_path / "d", [[GT]]))
    right = GT & ~square(0, H, 0, 30)

    def run(seed: int) -> list:
        fake = ScriptedPredictor([([right] * 3, [0.3, 0.2, 0.1]), ([right], [0.5])])
        st = PointsSettings(max_clicks=6, click_mode="random", seed=seed)
        return evaluate_points(ds, PromptSegmenter(fake), st, progress=False).objects[0].clicks

    a, b, c = run(0), run(0), run(1)
    assert a == b and a != c
    assert GT[a[0][1], a[0][0]] and a[0][2]  # first click: inside the object, positive
    for x, y, pos in a[1:]:
        assert GT[y, x] and not right[y, x] and pos  # only false negatives exist


def test_method_without_scores_is_its_own_oracle(tmp_path: Path) -> None:
    ds = SegmentationDataset(make_dataset(tmp_path / "d", [[GT]]))

    class OneMask:
        def set_image(self, image):
            pass

        def predict(self, point_coords=None, point_labels=None, box=None):
            return GT & ~square(0, H, 0, 25)

    res = evaluate_points(ds, PromptSegmenter(OneMask(), "one"), PointsSettings(max_clicks=3), progress=False)
    o = res.objects[0]
    assert o.top == o.oracle and np.isnan(o.first_scores[0])


def test_select_objects_limit_and_per_image(tmp_path: Path) -> None:
    objs = [[square(2 * i, 2 * i + 2, 0, 4) for i in range(5)], [square(0, 4, 0, 4)], [square(0, 4, 0, 4)]]
    ds = SegmentationDataset(make_dataset(tmp_path / "d", objs))
    assert [len(o) for _, o in select_objects(ds, limit=6)] == [5, 1]
    picked = [len(o) for _, o in select_objects(ds, max_per_image=2)]
    assert picked == [2, 1, 1]
    a = [i.id for _, o in select_objects(ds, max_per_image=2, seed=3) for i in o]
    assert a == [i.id for _, o in select_objects(ds, max_per_image=2, seed=3) for i in o]


def test_batched_predictor_matches_one_call_per_prompt(tmp_path: Path) -> None:
    from sam_testing import random_tiny

    from segany.inference.predictor import SamPredictor

    disk = np.hypot(*np.mgrid[:H, :W] - np.array([40, 40])[:, None, None]) < 12
    ds = SegmentationDataset(make_dataset(tmp_path / "d", [[GT, disk, square(45, 60, 2, 20)]]))
    predictor = SamPredictor(random_tiny())
    st = PointsSettings(max_clicks=3, miou_clicks=(1, 3))
    batched = evaluate_points(ds, PredictorSegmenter(predictor, max_masks=4), st, progress=False)
    single = evaluate_points(ds, PromptSegmenter(predictor), st, progress=False)
    assert len(batched.objects) == 3
    for a, b in zip(batched.objects, single.objects):
        assert a.clicks == b.clicks
        assert a.top == pytest.approx(b.top, abs=1e-3) and a.oracle == pytest.approx(b.oracle, abs=1e-3)


# --------------------------------------------------------------------------- boxes


class BoxFiller:
    """Returns the filled rectangle of each box prompt (with the box as given, inclusive pixels)."""

    def __init__(self) -> None:
        self.boxes: list[list[float]] = []

    def set_image(self, image):
        pass

    def predict(self, point_coords=None, point_labels=None, box=None):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        self.boxes.append([x0, y0, x1, y1])
        return square(y0, y1 + 1, x0, x1 + 1)


def test_boxes_from_ground_truth(tmp_path: Path) -> None:
    from segany.eval.boxes import evaluate_boxes

    disk = np.hypot(*np.mgrid[:H, :W] - np.array([45, 45])[:, None, None]) <= 8.5
    ds = SegmentationDataset(make_dataset(tmp_path / "d", [[GT, disk]]))
    fake = BoxFiller()
    res = evaluate_boxes(ds, PromptSegmenter(fake), progress=False)
    assert fake.boxes[0] == [20, 10, 40, 30]  # inclusive pixel box of the 21 x 21 square
    sq, dk = res.objects
    assert sq.iou == 1.0
    assert dk.iou == pytest.approx(disk.sum() / 17 ** 2)  # the disk inside its 17 x 17 box
    assert res.coco["AP50"] == pytest.approx(1.0)  # both masks overlap their object by > 0.5
    assert 0.4 < res.coco["AP"] < 1.0  # ... but the disk's box-shaped mask misses IoU >= 0.85
    assert res.to_json()["metrics"]["mIoU"] == pytest.approx((1.0 + dk.iou) / 2)


def test_boxes_from_detections_file(tmp_path: Path) -> None:
    from segany.errors import SeganyError
    from segany.eval.boxes import evaluate_boxes, load_detections

    other = square(40, 60, 5, 25)
    ds = SegmentationDataset(make_dataset(tmp_path / "d", [[GT, other]]))
    dets = [{"image_id": 1, "bbox": [20, 10, 20, 20], "score": 0.9, "category_id": 1},
            {"image_id": 1, "bbox": [50, 50, 5, 5], "score": 0.95, "category_id": 1}]  # a false positive
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    loaded = load_detections(path)
    assert [d["score"] for d in loaded[1]] == [0.95, 0.9]
    res = evaluate_boxes(ds, PromptSegmenter(BoxFiller()), detections=loaded, progress=False)
    ious = {o.annotation_id: o.iou for o in res.objects}
    assert ious[1] == 1.0 and ious[2] == 0.0
    # One of two objects found, ranked below a false positive: precision 0.5 at recall 0.5.
    assert res.coco["AP50"] == pytest.approx(0.5 * 51 / 101, abs=1e-6)
    path.write_text(json.dumps([{"image_id": 1}]))
    with pytest.raises(SeganyError):
        load_detections(path)


# --------------------------------------------------------------------------- proposals


class FakeGenerator:
    def __init__(self, records: list[dict]) -> None:
        self.records = records

    def generate(self, image):
        return self.records


def test_proposals_are_ranked_and_cut(tmp_path: Path) -> None:
    from segany.eval.proposals import ProposalSettings, evaluate_proposals

    a, b = square(5, 25, 5, 25), square(35, 60, 30, 60)
    ds = SegmentationDataset(make_dataset(tmp_path / "d", [[a, b]]))
    junk = square(0, 3, 60, 64)
    records = [  # scores are mean(predicted_iou, stability): junk 0.9, b 0.8, a 0.7
        {"segmentation": _rle(a), "predicted_iou": 0.6, "stability_score": 0.8},
        {"segmentation": junk, "predicted_iou": 0.9, "stability_score": 0.9},
        {"segmentation": _rle(b), "predicted_iou": 1.0, "stability_score": 0.6},
    ]
    st = ProposalSettings(max_proposals=2, budgets=(1, 2))
    res = evaluate_proposals(ds, FakeGenerator(records), st, progress=False)
    assert res.images[0].scores == pytest.approx([0.9, 0.8])  # a fell off the end
    assert res.recall["AR@1"] == 0.0 and res.recall["AR@2"] == pytest.approx(0.5)
    full = evaluate_proposals(ds, FakeGenerator(records), ProposalSettings(budgets=(1, 100, 1000)), progress=False)
    assert full.recall["AR@1000"] == pytest.approx(1.0) and full.images[0].abo == pytest.approx(1.0)


# --------------------------------------------------------------------------- edges


def make_bsds(root: Path, boundaries: list[np.ndarray]) -> Path:
    """A BSDS500-style folder: one image, its COCO file, and gt/1.mat with the given annotators."""
    import scipy.io

    make_dataset(root, [[GT]])
    (root / "gt").mkdir()
    cell = np.empty((1, len(boundaries)), dtype=object)
    for i, b in enumerate(boundaries):
        cell[0, i] = {"Boundaries": b.astype(np.uint8), "Segmentation": np.ones((H, W), np.uint16)}
    scipy.io.savemat(root / "gt" / "1.mat", {"groundTruth": cell})
    return root


def _outline(mask: np.ndarray) -> np.ndarray:
    """A 1-px boundary that the benchmark's thinning leaves unchanged."""
    from segany.eval.edges import thin

    return thin(mask & ~ndimage.binary_erosion(mask))


def test_point_grid_and_canny() -> None:
    from segany.eval.edge_protocol import canny_edge_map, point_grid

    g = point_grid(4, 40, 80)
    assert g.shape == (16, 2)
    assert sorted(set(g[:, 0].tolist())) == [10, 30, 50, 70] and sorted(set(g[:, 1].tolist())) == [5, 15, 25, 35]
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, 20:] = 200
    e = canny_edge_map(img)
    assert e.min() >= 0 and e.max() == 1.0
    assert set(np.nonzero(e == 1.0)[1]) <= {19, 20}  # the strongest edge is the step


def test_edges_perfect_map_scores_one(tmp_path: Path) -> None:
    from segany.eval.edge_protocol import EdgeSettings, evaluate_edges

    root = make_bsds(tmp_path / "b", [_outline(GT), _outline(GT)])
    ds = SegmentationDataset(root)
    st = EdgeSettings(nthresh=9)
    good = evaluate_edges(ds, root, lambda im: _outline(GT).astype(np.float32), "perfect", st, progress=False)
    sc = good.scores()
    assert sc.ods == pytest.approx(1.0) and sc.ois == pytest.approx(1.0) and good.images[0].best_f == pytest.approx(1.0)
    far = _outline(square(45, 60, 45, 60)).astype(np.float32)
    bad = evaluate_edges(ds, root, lambda im: far, "wrong", st, progress=False)
    assert bad.scores().ods == 0.0


def test_edges_missing_ground_truth_is_a_user_error(tmp_path: Path) -> None:
    from segany.eval.edge_protocol import EdgeDataError, evaluate_edges

    root = make_dataset(tmp_path / "d", [[GT]])
    with pytest.raises(EdgeDataError):
        evaluate_edges(SegmentationDataset(root), root, lambda im: np.zeros((H, W)), "x", progress=False)


def test_sam_edge_map_with_tiny_model() -> None:
    from sam_testing import random_tiny

    from segany.eval.edge_protocol import EdgeSettings, sam_edge_map
    from segany.inference.predictor import SamPredictor

    img = (np.random.default_rng(0).integers(0, 255, (48, 40, 3))).astype(np.uint8)
    e = sam_edge_map(SamPredictor(random_tiny()), img, EdgeSettings(points_per_side=3, points_per_batch=4))
    assert e.shape == (48, 40) and e.dtype == np.float32
    assert 0.0 <= e.min() and e.max() <= 1.0 and e.max() > 0


def test_batched_boxes_match_one_call_per_box(tmp_path: Path) -> None:
    from sam_testing import random_tiny

    from segany.eval.boxes import evaluate_boxes
    from segany.inference.predictor import SamPredictor

    disk = np.hypot(*np.mgrid[:H, :W] - np.array([40, 40])[:, None, None]) < 12
    ds = SegmentationDataset(make_dataset(tmp_path / "d", [[GT, disk, square(45, 60, 2, 20)]]))
    predictor = SamPredictor(random_tiny())
    batched = evaluate_boxes(ds, PredictorSegmenter(predictor, max_masks=2), progress=False)
    single = evaluate_boxes(ds, PromptSegmenter(predictor), progress=False)
    assert [o.iou for o in batched.objects] == pytest.approx([o.iou for o in single.objects], abs=1e-3)
    assert [o.score for o in batched.objects] == pytest.approx([o.score for o in single.objects], abs=1e-4)
