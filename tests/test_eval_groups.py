"""Per-group results with bootstrap intervals (``segany eval ... --group-by``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segany.cli.main import main
from segany.eval.grouped import grouped_metrics
from segany.eval.groups import (
    MISSING,
    GroupError,
    GroupKey,
    bootstrap_ci,
    bootstrap_stat,
    group_records,
    read_group_csv,
    resolve_group_key,
    size_bucket,
)
from segany.eval.points import ObjectRecord, PointsResult, PointsSettings
from segany.io.datasets import SegmentationDataset
from test_eval_protocols import GT, make_bsds, make_dataset, square


# --------------------------------------------------------------------------- intervals


def test_bootstrap_matches_hand_computed_distribution() -> None:
    # Mean of 4 draws from {0, 0, 0, 1}: k ones ~ Binomial(4, 1/4), so P(mean <= 0) = 0.316,
    # P(<= 1/4) = 0.738, P(<= 1/2) = 0.949, P(<= 3/4) = 0.996: the 2.5% quantile is 0, the 97.5% is 3/4.
    mean, lo, hi = bootstrap_ci([0.0, 0.0, 0.0, 1.0], n_boot=20000, seed=3)
    assert mean == 0.25
    assert lo == 0.0 and hi == 0.75


def test_bootstrap_width_follows_standard_error() -> None:
    values = np.random.default_rng(0).normal(0.6, 0.2, size=400)
    mean, lo, hi = bootstrap_ci(values, n_boot=4000, seed=1)
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert lo < mean < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_bootstrap_is_seeded_and_degenerate_cases() -> None:
    v = np.linspace(0, 1, 37)
    assert bootstrap_ci(v, seed=5) == bootstrap_ci(v, seed=5)
    assert bootstrap_ci(v, seed=5) != bootstrap_ci(v, seed=6)
    assert bootstrap_ci([0.4] * 9) == (0.4, 0.4, 0.4)
    assert all(np.isnan(x) for x in bootstrap_ci([]))
    with pytest.raises(ValueError):
        bootstrap_ci(v, level=1.5)
    # A statistic of resampled indices: the sum of the resampled items' weights.
    w = np.array([1.0, 2.0, 3.0])
    lo, hi = bootstrap_stat(3, lambda idx: float(w[idx].sum()), n_boot=3000)
    assert 3.0 <= lo < 6.0 < hi <= 9.0


# --------------------------------------------------------------------------- groups


def test_group_records_flags_small_missing_and_separated_groups() -> None:
    groups = ["a"] * 30 + ["b"] * 30 + ["c"] * 3 + [MISSING] * 2
    vals = [0.9] * 30 + [0.2] * 30 + [0.5, 0.6, 0.7] + [0.1, 0.3]
    gm = group_records("k", groups, {"mIoU": vals}, "mIoU", declared=["a", "d"], min_size=20, n_boot=200)
    assert list(gm.groups) == ["a", "b", "c", "d", MISSING]  # missing values last, never dropped
    assert {g: s.n for g, s in gm.groups.items()} == {"a": 30, "b": 30, "c": 3, "d": 0, MISSING: 2}
    assert gm.groups["c"].metrics["mIoU"][0] == pytest.approx(0.6)
    assert sorted(gm.too_small()) == sorted(["c", "d", MISSING])
    assert gm.separated() == [("a", "b")]
    js = gm.to_json()
    assert js["groups"]["d"]["n"] == 0 and js["non_overlapping"] == [["a", "b"]]
    with pytest.raises(ValueError, match="values for"):
        group_records("k", ["a"], {"m": [1.0, 2.0]}, "m")


def test_size_buckets() -> None:
    assert [size_bucket(a) for a in (10, 32**2 - 1, 32**2, 96**2, 96**2 + 1)] == [
        "small", "small", "medium", "medium", "large"]


@pytest.fixture()
def attributed(tmp_path: Path) -> Path:
    """Three images; objects carry a 'kind' key, images a 'site' key (one image has none)."""
    disk = np.hypot(*np.mgrid[:64, :64] - np.array([45, 45])[:, None, None]) < 9
    root = make_dataset(tmp_path / "data", [[GT, disk], [square(5, 30, 30, 60)], [square(40, 60, 5, 25)]])
    coco = json.loads((root / "annotations.json").read_text())
    for ann, kind in zip(coco["annotations"], ["leaf", "stem", "leaf", "stem"]):
        ann["attributes"] = {"kind": kind}
    coco["images"][0]["site"] = "north"
    coco["images"][1]["site"] = "south"
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_keys_resolve_and_unknown_key_lists_existing(attributed: Path) -> None:
    ds = SegmentationDataset(attributed)
    key = resolve_group_key("kind", ds)
    sample = ds[0]
    assert [key.of(sample, a) for a in sample.annotations] == ["leaf", "stem"]
    site = resolve_group_key("site", ds)
    assert [site.of(s) for s in ds] == ["north", "south", MISSING]
    assert resolve_group_key("size", ds).of(sample, sample.annotations[0]) == "small"
    with pytest.raises(GroupError, match=r"no group key 'colour'.*category, size, kind, site"):
        resolve_group_key("colour", ds)
    with pytest.raises(GroupError, match="image keys there: site"):
        resolve_group_key("kind", ds, image_level=True)


def test_group_csv_checks(attributed: Path, tmp_path: Path) -> None:
    ds = SegmentationDataset(attributed)
    good = tmp_path / "g.csv"
    good.write_text("file_name,light\n1.png,day\n2.png,night\n")
    table = read_group_csv(good, ds)
    assert table == {"light": {1: "day", 2: "night"}}
    key = resolve_group_key("light", ds, good)
    assert key.declared == ("day", "night") and key.of(ds[2]) == MISSING
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,light\n1,day\n9,night\n2,day\n1,night\n")
    with pytest.raises(GroupError, match=r"images not in the data: row 3 \(image_id 9\)"):
        read_group_csv(bad, ds)
    bad.write_text("image_id,light\n1,day\n2,day\n1,night\n")
    with pytest.raises(GroupError, match=r"images named twice: rows 2 and 4 \(image_id 1\)"):
        read_group_csv(bad, ds)
    bad.write_text("name,light\nx,y\n")
    with pytest.raises(GroupError, match="image_id or file_name"):
        read_group_csv(bad, ds)


def test_points_groups_from_records(attributed: Path) -> None:
    ds = SegmentationDataset(attributed)
    samples = {s.image_id: s for s in ds}
    objs = []
    for s in ds:
        for a in s.annotations:
            good = a.attributes["attributes"]["kind"] == "leaf"
            ious = [0.9, 0.95] if good else [0.1, 0.2, 0.4]  # a stopped run keeps its last IoU
            objs.append(ObjectRecord(s.image_id, a.id, s.file_name, a.area, ious, ious, [], [], [], {}, {}))
    res = PointsResult("m", PointsSettings(max_clicks=5), objs, len(ds), 0)
    gm = grouped_metrics("points", res, samples, GroupKey("kind"), min_size=1, n_boot=100)
    assert {g: s.n for g, s in gm.groups.items()} == {"leaf": 2, "stem": 2}
    assert gm.groups["leaf"].metrics["mIoU@3"][0] == pytest.approx(0.95)
    assert gm.groups["stem"].metrics["mIoU@1"][0] == pytest.approx(0.1)
    assert gm.groups["stem"].metrics["mIoU@5"][0] == pytest.approx(0.4)
    assert gm.separated("mIoU@1") == [("leaf", "stem")]


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sam_testing import random_tiny

    from segany.io.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(random_tiny(), path)
    return path


def _eval(*argv: object) -> int:
    return main(["eval", *[str(a) for a in argv], "--quiet", "--bootstrap", "100"])


@pytest.mark.parametrize("protocol", ["points", "boxes", "proposals"])
def test_cli_group_by_every_object_protocol(protocol: str, attributed: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    extra = (
        ["--max-clicks", "3"] if protocol == "points" else ["--points-per-side", "4"] if protocol == "proposals" else []
    )
    assert _eval(protocol, "--data", attributed, "-c", tiny_ckpt, "-o", out, "--group-by", "kind",
                 "--group-by", "site", "--min-group", "2", *extra) == 0
    res = json.loads((out / "results.json").read_text())
    kind = res["groups"]["kind"]["tiny"]
    assert {g: v["n"] for g, v in kind["groups"].items()} == {"leaf": 2, "stem": 2}
    site = res["groups"]["site"]["tiny"]["groups"]
    assert {g: v["n"] for g, v in site.items()} == {"north": 2, "south": 1, MISSING: 1}
    primary = res["groups"]["kind"]["tiny"]["primary"]
    for g in kind["groups"].values():
        v = g[primary]
        assert v["low"] <= v["value"] <= v["high"]
    md = (out / "report.md").read_text()
    assert "## Results by kind" in md and "## Results by site" in md
    assert (out / "groups_kind.png").stat().st_size > 1000


def test_cli_group_by_edges_uses_images(tmp_path: Path, tiny_ckpt: Path) -> None:
    from test_eval_protocols import _outline

    root = make_bsds(tmp_path / "bsds", [_outline(GT)])
    out = tmp_path / "r"
    table = tmp_path / "g.csv"
    table.write_text("image_id,camera\n1,old\n")
    assert _eval("edges", "--data", root, "-c", tiny_ckpt, "-o", out, "--groups", table, "--group-by", "camera",
                 "--points-per-side", "4", "--nthresh", "9") == 0
    res = json.loads((out / "results.json").read_text())
    entry = res["groups"]["camera"]["tiny"]
    assert entry["unit"] == "images" and entry["groups"]["old"]["n"] == 1
    assert entry["too_small"] == ["old"]
    assert entry["groups"]["old"]["ODS"]["value"] == pytest.approx(res["methods"]["tiny"]["metrics"]["ODS"])


@pytest.mark.parametrize("case", ["unknown_key", "bad_csv", "csv_without_key"])
def test_cli_group_errors_are_one_line(case: str, attributed: Path, tiny_ckpt: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "g.csv"
    table.write_text("image_id,light\n1,day\n77,night\n")
    args = {"unknown_key": ["--group-by", "colour"], "bad_csv": ["--groups", table, "--group-by", "light"],
            "csv_without_key": ["--groups", table]}[case]
    out = tmp_path / "r"
    assert _eval("points", "--data", attributed, "-c", tiny_ckpt, "-o", out, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert {"unknown_key": "kind, site", "bad_csv": "row 3 (image_id 77)", "csv_without_key": "--group-by"}[case] in err
    assert not out.exists()  # nothing written before the inputs are checked
