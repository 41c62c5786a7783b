"""Per-group results of each protocol (``segany eval ... --group-by KEY``) and their report section.

Which per-item values each protocol splits (means over the group's items, with bootstrap intervals):

* points: the top mask's IoU after 1, 3 and 5 clicks, per object (the paper's §6 reports 1 and 3);
* boxes: the IoU of each object's mask (COCO AP is computed for the whole set only);
* proposals: per object, the best IoU among the top 100 proposals (ABO@100) and its recall averaged
  over the IoU thresholds 0.5:0.05:0.95 (AR@100 by best overlap, without COCO's one-to-one matching);
* edges: ODS from the group's summed per-image counts, resampling images (an image-level key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from segany.eval.groups import GroupedMetrics, GroupKey, group_records
from segany.eval.report import ReportWriter, plot_intervals

__all__ = ["grouped_metrics", "write_groups_section", "IMAGE_LEVEL_PROTOCOLS"]

IMAGE_LEVEL_PROTOCOLS = ("edges",)
_AR_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def _instances(sample: Any) -> dict[int, Any]:
    return {int(a.id): a for a in sample.annotations}


def _points(result: Any, samples: Mapping[int, Any], key: GroupKey) -> tuple[list[str], dict[str, list[float]], dict]:
    max_clicks = result.settings.max_clicks
    ks = [k for k in (1, 3, 5) if k <= max_clicks]
    groups, values = [], {f"mIoU@{k}": [] for k in ks}
    for o in result.objects:
        sample = samples[o.image_id]
        groups.append(key.of(sample, _instances(sample).get(o.annotation_id)))
        for k in ks:
            values[f"mIoU@{k}"].append(o.top[min(k, len(o.top)) - 1])  # a stopped run keeps its last IoU
    return groups, values, {}


def _boxes(result: Any, samples: Mapping[int, Any], key: GroupKey) -> tuple[list[str], dict[str, list[float]], dict]:
    groups, ious = [], []
    for o in result.objects:
        sample = samples[o.image_id]
        groups.append(key.of(sample, _instances(sample).get(o.annotation_id)))
        ious.append(o.iou)
    return groups, {"mIoU": ious}, {}


def _proposals(
    result: Any, samples: Mapping[int, Any], key: GroupKey
) -> tuple[list[str], dict[str, list[float]], dict]:
    from pycocotools import mask as mask_utils

    groups: list[str] = []
    best_all: list[float] = []
    for im in result.images:
        sample = samples[im.image_id]
        objs = [a for a in sample.annotations if not a.iscrowd]
        if not objs:
            continue
        rles = im.rles[:100]
        if rles:
            ious = np.asarray(mask_utils.iou(rles, [a.rle for a in objs], [0] * len(objs))).reshape(
                len(rles), len(objs)
            )
            best = ious.max(axis=0)
        else:
            best = np.zeros(len(objs))
        groups += [key.of(sample, a) for a in objs]
        best_all += [float(b) for b in best]
    b = np.asarray(best_all, np.float64)
    recall = (b[:, None] >= _AR_THRESHOLDS[None, :]).mean(axis=1) if b.size else b
    return groups, {"AR@100": recall.tolist(), "ABO@100": best_all}, {}


def _edges(result: Any, samples: Mapping[int, Any], key: GroupKey) -> tuple[list[str], dict[str, list[float]], dict]:
    from segany.eval.edges import summarize_edges

    images = result.images
    groups = [key.of(samples[im.image_id]) for im in images]

    def ods(idx: np.ndarray) -> float:
        return float(summarize_edges([images[i].counts for i in idx]).ods)

    return groups, {}, {"ODS": ods}


_EXTRACT = {"points": (_points, "mIoU@1", "objects"), "boxes": (_boxes, "mIoU", "objects"),
            "proposals": (_proposals, "AR@100", "objects"), "edges": (_edges, "ODS", "images")}


def grouped_metrics(
    protocol: str,
    result: Any,
    samples: Mapping[int, Any],
    key: GroupKey,
    min_size: int = 20,
    n_boot: int = 1000,
    seed: int = 0,
) -> GroupedMetrics:
    """One method's results of ``protocol`` split by ``key``, each group with 95% intervals."""
    extract, primary, unit = _EXTRACT[protocol]
    groups, values, custom = extract(result, samples, key)
    return group_records(key.name, groups, values, primary, unit, key.declared, min_size, n_boot, seed, custom)


def write_groups_section(writer: ReportWriter, key: str, by_method: Mapping[str, GroupedMetrics]) -> dict[str, Any]:
    """A table, a side-by-side plot and the flags of one grouping; returns its ``results.json`` entry."""
    first = next(iter(by_method.values()))
    metrics = list(next(iter(first.groups.values())).metrics) if first.groups else [first.primary]
    headers = ["method", key, first.unit, *metrics]
    rows: list[list[Any]] = []
    for method, gm in by_method.items():
        for g, st in gm.groups.items():
            cells = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(v) else "-" for v, lo, hi in
                     (st.metrics.get(m, (float("nan"),) * 3) for m in metrics)]
            rows.append([method, g, st.n, *cells])
    notes = [f"Mean [95% bootstrap interval, {first.unit} resampled]."]
    for method, gm in by_method.items():
        small = gm.too_small()
        if small:
            notes.append(f"{method}: too few {gm.unit} to say anything (< {gm.min_size}): {', '.join(small)}.")
        empty = [g for g, s in gm.groups.items() if s.n == 0]
        if empty:
            notes.append(f"{method}: groups with no evaluated {gm.unit}: {', '.join(empty)}.")
        sep = gm.separated()
        if sep:
            pairs = "; ".join(f"{a} vs {b}" for a, b in sep)
            notes.append(f"**{method}: {gm.primary} intervals do not overlap** for {pairs}.")
        else:
            notes.append(f"{method}: every pair of large-enough groups overlaps in {gm.primary}.")
    writer.table(f"Results by {key}", headers, rows, note="\n\n".join(notes))
    series = {m: {g: s.metrics.get(gm.primary, (float("nan"),) * 3) for g, s in gm.groups.items() if s.n > 0}
              for m, gm in by_method.items()}
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
    writer.plot(f"groups_{safe}.png", plot_intervals(series, key, first.primary, f"{first.primary} by {key}"),
                f"{first.primary} by {key}, with 95% intervals")
    return {m: gm.to_json() for m, gm in by_method.items()}

