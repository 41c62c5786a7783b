"""Exports decode to exactly the stored masks (pycocotools), polygons keep parts and refuse holes,
and the CLI exports and pre-fills without a server."""

from __future__ import annotations

import copy
import json

import numpy as np
from annotate_helpers import write_images
from pycocotools.coco import COCO

from segany.io.rle import decode_rle, encode_mask


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _fill(client) -> dict[int, np.ndarray]:  # type: ignore[no-untyped-def]
    """Objects on image 1 (80x120): a disc, two blobs, a donut, a 1-pixel speck; returns id -> mask."""
    h, w = 80, 120
    disc = _disc(h, w, 30, 30, 20)
    blobs = _disc(h, w, 80, 20, 8) | _disc(h, w, 100, 60, 10)
    donut = _disc(h, w, 60, 55, 18) & ~_disc(h, w, 60, 55, 8)
    speck = np.zeros((h, w), bool)
    speck[5, 110] = True
    masks = {}
    for mask, category in ((disc, "ball"), (blobs, "blobs"), (donut, "donut"), (speck, None)):
        body = {"rle": encode_mask(mask), "category": category, "seconds": 2.0}
        obj = client.post("/api/images/1/objects", json=body).json()
        masks[obj["id"]] = mask
    return masks


def test_coco_rle_export_decodes_exactly(make_sqlite_client, tmp_path) -> None:
    c = make_sqlite_client(sizes=[(80, 120), (30, 30)])
    masks = _fill(c)
    from segany.annotate.export import export_coco

    server = c.app.state.server
    report = export_coco(server.db, 1, tmp_path / "coco.json")
    assert report.objects == 4 and report.images == 2
    coco = COCO(str(tmp_path / "coco.json"))
    assert sorted(coco.getAnnIds()) == sorted(masks)
    for ann_id, mask in masks.items():
        ann = coco.loadAnns(ann_id)[0]
        assert isinstance(ann["segmentation"]["counts"], str)
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
        assert ann["area"] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["source"] == "manual" and ann["user"] == "local"
    names = {cat["name"] for cat in coco.loadCats(coco.getCatIds())}
    assert names == {"ball", "blobs", "donut", "object"}
    # Filtering by state.
    assert export_coco(server.db, 1, tmp_path / "none.json", states=("accepted",)).objects == 0


def test_coco_polygons(make_sqlite_client, tmp_path) -> None:
    c = make_sqlite_client(sizes=[(80, 120)])
    masks = _fill(c)
    from segany.annotate.export import export_coco

    report = export_coco(c.app.state.server.db, 1, tmp_path / "poly.json", polygons=True)
    coco = COCO(str(tmp_path / "poly.json"))
    by_category = {coco.loadCats(a["category_id"])[0]["name"]: a for a in coco.loadAnns(coco.getAnnIds())}
    assert len(by_category["blobs"]["segmentation"]) == 2  # one ring per connected part
    assert isinstance(by_category["ball"]["segmentation"], list)
    # The donut keeps its hole as RLE; even a one-pixel speck makes a ring (its pixel's outline).
    assert isinstance(by_category["donut"]["segmentation"], dict)
    assert isinstance(by_category["object"]["segmentation"], list)
    assert report.kept_rle == [by_category["donut"]["id"]] and report.polygons == 3
    for ann in coco.loadAnns(coco.getAnnIds()):
        if isinstance(ann["segmentation"], list):
            assert all(len(ring) >= 6 and len(ring) % 2 == 0 for ring in ann["segmentation"])
        got = coco.annToMask(ann).astype(bool)
        want = masks[ann["id"]]
        iou = (got & want).sum() / (got | want).sum()
        assert iou >= (1.0 if isinstance(ann["segmentation"], dict) else 0.98), (ann["id"], iou)
    donut = by_category["donut"]
    assert coco.annToMask(donut).sum() == masks[donut["id"]].sum()  # the hole is kept


def test_sa1b_export_and_reimport(make_sqlite_client, tmp_path) -> None:
    c = make_sqlite_client(sizes=[(80, 120), (30, 30)])
    masks = _fill(c)
    from segany.annotate.export import export_sa1b
    from segany.io.sa1b import read_sa1b

    report = export_sa1b(c.app.state.server.db, 1, tmp_path / "sa1b")
    assert report.images == 2 and report.objects == 4
    data = read_sa1b(tmp_path / "sa1b" / "img000.json")
    assert data.image.width == 120 and data.image.height == 80
    for ann in data.annotations:
        np.testing.assert_array_equal(decode_rle(ann.segmentation), masks[ann.id])
        assert ann.crop_box == [0, 0, 120, 80]


def test_cli_export_prefill_user(tmp_path, tiny_model, capsys) -> None:
    """The offline commands on a database made by a server run."""
    from segany.annotate.server import Server, Settings
    from segany.cli.main import main
    from segany.io.coco import coco_instances_from_records, write_coco

    root = tmp_path / "photos"
    write_images(root, [(40, 60), (30, 30)])
    assert main(["annotate", "export", str(root), "-o", str(tmp_path / "x.json")]) == 2  # no database yet
    server = Server(Settings(root=root, model=tiny_model, background=False))
    server.close()
    # Pre-fill from a COCO file of 'segany auto' style records (one per image).
    m = np.zeros((40, 60), bool)
    m[5:20, 5:30] = True
    rec = {"segmentation": m, "predicted_iou": 0.9, "stability_score": 0.96, "crop_box": [0, 0, 60, 40],
           "point_coords": [[10.0, 10.0]]}
    coco = coco_instances_from_records([({"id": 1, "width": 60, "height": 40, "file_name": "img000.png"}, [rec]),
                                        ({"id": 2, "width": 30, "height": 30, "file_name": "other.png"}, [])])
    write_coco(tmp_path / "auto.json", coco)
    assert main(["annotate", "prefill", str(root), str(tmp_path / "auto.json")]) == 0
    assert "1 automatic masks added" in capsys.readouterr().out
    assert main(["annotate", "prefill", str(root), str(tmp_path / "auto.json")]) == 0
    assert "0 automatic masks added, 1 already there" in capsys.readouterr().out
    assert main(["annotate", "user", str(root), "alice", "--roles", "annotator,reviewer"]) == 0
    assert "token" in capsys.readouterr().out
    assert main(["annotate", "user", str(root), "alice"]) == 2  # exists
    assert main(["annotate", "user", str(root), "bob", "--roles", "wizard"]) == 2
    out = tmp_path / "export.json"
    assert main(["annotate", "export", str(root), "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["annotations"]) == 1 and data["annotations"][0]["source"] == "auto"
    np.testing.assert_array_equal(decode_rle(data["annotations"][0]["segmentation"]), m)
    assert main(["annotate", "export", str(root), "-o", str(tmp_path / "s"), "--format", "sa1b"]) == 0
    assert (tmp_path / "s" / "img000.json").is_file()
    assert (
        main(["annotate", "export", str(root), "-o", str(tmp_path / "p.json"), "--format", "sa1b", "--polygons"]) == 2
    )


def test_prefill_generate_strict(make_sqlite_client, tiny_model) -> None:
    c = make_sqlite_client(sizes=[(48, 64)])
    from segany.annotate import prefill

    server = c.app.state.server
    report = prefill.generate(server.db, 1, server.local, server.root, tiny_model, server.service.id,
                              settings={"points_per_side": 4, "pred_iou_thresh": -10.0, "stability_score_thresh": 0.0},
                              progress=False)
    objs = c.get("/api/images/1").json()["objects"]
    assert report.added == len(objs) > 0
    assert all(o["source"] == "auto" and 0 <= o["extra"]["stability_score"] <= 1 for o in objs)


def test_prefill_is_stricter_than_the_models_own_thresholds(tiny_model) -> None:
    from segany.annotate import prefill

    # SAM's 0.88 / 0.95 give the paper's strict pre-fill 0.92 / 0.95
    assert prefill.strict_settings(tiny_model) == {"pred_iou_thresh": 0.92, "stability_score_thresh": 0.95}
    own = copy.deepcopy(tiny_model)
    own.config = own.config.replace(auto_mask_thresholds=(0.6, 0.5))  # a model with its own (the default)
    assert prefill.strict_settings(own) == {"pred_iou_thresh": 0.64, "stability_score_thresh": 0.5}
