"""Interactive point protocol (SAM paper §D.1, the RITM-style click simulation).

Per object: the first click is the interior point farthest from the object boundary
(:func:`segany.ops.clicks.center_point`); every later click goes to the centre of the largest error
region (:func:`segany.ops.clicks.next_click`, positive in a false negative, negative in a false
positive), or uniformly into the error region with ``click_mode="random"`` (paper Fig. 9d; the
first click is then uniform over the object). The first click asks for three masks; from the
second click on one mask is asked for, and the low-resolution logits of the mask kept at the
previous click are fed back as ``mask_input`` (official SAM usage).

Two tracks are scored per object, sharing the first click:

* ``top``: at click 1 the mask with the highest predicted IoU is kept;
* ``oracle``: at click 1 the mask with the best IoU against the ground truth is kept (the paper's
  "oracle"); later clicks follow that mask. When both choices agree the tracks are identical and
  are computed once.

Ignored pixels (COCO ``iscrowd`` regions, or a per-image ignore mask) count neither in the IoU nor
as errors to click on. All objects of an image advance click by click together, so each image is
encoded once and every click is one batched decoder call.

Early stopping: a track stops once no error pixel is left, or once it has made
``max(miou_clicks)`` clicks and has reached the highest NoC threshold -- from then on nothing
reported can change (mIoU@k for k <= max(miou_clicks), NoC@T), so later IoUs are carried forward.
``full_run=True`` makes every track run to ``max_clicks``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np

from segany.eval.metrics import DEFAULT_MIOU_CLICKS, InteractiveScores, mask_iou
from segany.eval.prompting import Segmenter, as_segmenter, stack_or_none
from segany.eval.report import (
    Panel,
    ReportWriter,
    case_picture,
    context_box,
    pick_extremes,
    plot_curves,
    method_entries,
)
from segany.io.datasets import Instance, Sample, SegmentationDataset
from segany.io.rle import decode_rle, encode_mask
from segany.ops.clicks import Click, center_point, next_click

__all__ = [
    "PointsSettings",
    "ObjectRecord",
    "PointsResult",
    "select_objects",
    "evaluate_points",
    "write_points_report",
]


# --------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class PointsSettings:
    """Knobs of the point protocol (defaults: SAM §D.1 / RITM conventions)."""

    max_clicks: int = 20
    click_mode: Literal["center", "random"] = "center"
    miou_clicks: tuple[int, ...] = DEFAULT_MIOU_CLICKS
    noc_thresholds: tuple[float, ...] = (0.85, 0.90)
    feed_logits: bool = True
    full_run: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {self.max_clicks}")
        if self.click_mode not in ("center", "random"):
            raise ValueError(f"click_mode must be 'center' or 'random', got {self.click_mode!r}")

    @property
    def curve_clicks(self) -> int:
        """Clicks up to which every track's IoU is exact (beyond, early-stopped tracks carry forward)."""
        return self.max_clicks if self.full_run else min(self.max_clicks, max(self.miou_clicks))


@dataclass
class ObjectRecord:
    """One evaluated object: per-click IoUs of both tracks, the top track's clicks and masks."""

    image_id: int
    annotation_id: int
    file_name: str
    area: float
    top: list[float]
    oracle: list[float]
    clicks: list[tuple[int, int, bool]]
    first_scores: list[float]
    first_ious: list[float]
    mask_first: dict[str, Any] = field(repr=False)  # COCO RLE of the top mask after click 1
    mask_last: dict[str, Any] = field(repr=False)  # COCO RLE of the top mask after the last click

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("mask_first")
        d.pop("mask_last")
        return d


@dataclass
class PointsResult:
    """All objects of a run and the aggregated scores of both tracks."""

    method: str
    settings: PointsSettings
    objects: list[ObjectRecord]
    num_images: int
    skipped: int  # objects with no pixel left outside the ignore region
    seconds: float = 0.0

    def scores(self, track: Literal["top", "oracle"]) -> InteractiveScores:
        s = InteractiveScores()
        for o in self.objects:
            s.add(getattr(o, track), name=str(o.annotation_id))
        return s

    def summary(self) -> dict[str, dict[str, float | int]]:
        """``{"top": {...}, "oracle": {...}}`` with num_objects, miou@k, noc@T and nof@T."""
        st = self.settings
        return {
            t: self.scores(t).to_dict(  # type: ignore[arg-type]
                [k for k in st.miou_clicks if k <= st.max_clicks], st.noc_thresholds, st.max_clicks
            )
            for t in ("top", "oracle")
        }

    def curve(self, track: Literal["top", "oracle"]) -> list[float]:
        """mIoU after 1..``settings.curve_clicks`` clicks."""
        s = self.scores(track)
        return [s.miou_at(k) for k in range(1, self.settings.curve_clicks + 1)] if len(s) else []

    def to_json(self) -> dict[str, Any]:
        """The method's entry in ``results.json``."""
        return {
            "metrics": self.summary(),
            "curves": {"clicks": list(range(1, self.settings.curve_clicks + 1)), "top": self.curve("top"),
                       "oracle": self.curve("oracle")},
            "num_images": self.num_images,
            "skipped_objects": self.skipped,
            "seconds": round(self.seconds, 2),
        }


def select_objects(
    dataset: SegmentationDataset | Sequence[Sample],
    limit: int | None = None,
    max_per_image: int | None = None,
    seed: int = 0,
) -> Iterator[tuple[Sample, list[Instance]]]:
    """Images with the objects to evaluate on them, in data set order.

    Crowd regions are never prompted. ``max_per_image`` keeps a seeded random subset of an image's
    objects (in their original order); ``limit`` stops after that many objects in all.
    """
    rng = np.random.default_rng(seed)
    total = 0
    for sample in dataset:
        if limit is not None and total >= limit:
            return
        objs = [inst for inst in sample.annotations if not inst.iscrowd]
        if max_per_image is not None and len(objs) > max_per_image:
            keep = np.sort(rng.choice(len(objs), size=max_per_image, replace=False))
            objs = [objs[i] for i in keep]
        if limit is not None:
            objs = objs[: limit - total]
        if objs:
            total += len(objs)
            yield sample, objs


_OBJECTS_AT_ONCE = 32  # objects of one image that advance together


@dataclass
class _Track:
    obj: int
    rng: np.random.Generator
    clicks: list[Click]
    ious: list[float]
    pred: np.ndarray
    logits: np.ndarray | None
    done: bool = False


def _top_index(scores: np.ndarray) -> int:
    """Highest predicted IoU; the first mask when the method gives no scores."""
    return 0 if np.all(np.isnan(scores)) else int(np.nanargmax(scores))


def _first_click(gt: np.ndarray, ignore: np.ndarray | None, mode: str, rng: np.random.Generator) -> Click | None:
    if mode == "random":  # uniform over the object: the error region of an empty prediction
        return next_click(np.zeros_like(gt), gt, ignore, mode="random", rng=rng)
    xy = center_point(gt, ignore)
    return None if xy is None else Click(xy[0], xy[1], True)


def _advance(tracks: list[_Track], gts: list[np.ndarray], ignore: np.ndarray | None, st: PointsSettings) -> None:
    """Add the next click to every unfinished track, or mark it done."""
    last_needed = max(st.miou_clicks)
    top_thr = max(st.noc_thresholds) if st.noc_thresholds else 0.0
    for t in tracks:
        if t.done:
            continue
        k = len(t.clicks)
        if k >= st.max_clicks or (not st.full_run and k >= last_needed and max(t.ious) >= top_thr):
            t.done = True
            continue
        c = next_click(t.pred, gts[t.obj], ignore, mode=st.click_mode, rng=t.rng, avoid=t.clicks)
        if c is None:  # nothing left to correct: the IoU stays as it is
            t.done = True
        else:
            t.clicks.append(c)


def _evaluate_image(
    segmenter: Segmenter,
    sample: Sample,
    instances: list[Instance],
    ignore: np.ndarray | None,
    st: PointsSettings,
) -> tuple[list[ObjectRecord], int]:
    """Run both tracks for every object of one (already set) image; returns records and skips."""
    gts, objs, firsts, seeds = [], [], [], []
    for inst in instances:
        gt = inst.mask()
        seq = [st.seed, int(sample.image_id), int(inst.id)]
        c = _first_click(gt, ignore, st.click_mode, np.random.default_rng(seq))
        if c is not None:
            gts.append(gt)
            objs.append(inst)
            firsts.append(c)
            seeds.append(seq)
    skipped = len(instances) - len(objs)
    if not objs:
        return [], skipped

    pts = np.array([[[c.x, c.y]] for c in firsts], dtype=np.float32)
    pred = segmenter.predict_batch(pts, np.ones((len(objs), 1), np.int64), None, None, multimask=True)
    top_tracks: list[_Track] = []
    oracle_of: dict[int, _Track] = {}
    first_ious: list[list[float]] = []
    for i, gt in enumerate(gts):
        ious = [mask_iou(m, gt, ignore) for m in pred.masks[i]]
        first_ious.append(ious)
        choices = {"top": _top_index(pred.scores[i]), "oracle": int(np.argmax(ious))}
        for track, j in choices.items():
            if track == "oracle" and j == choices["top"]:
                continue  # same mask: the oracle track is the top track
            logit = None if pred.logits is None else pred.logits[i, j]
            # Each track draws its own clicks; same seed so that equal tracks would stay equal.
            t = _Track(i, np.random.default_rng(seeds[i] + [1]), [firsts[i]], [ious[j]], pred.masks[i, j], logit)
            if track == "top":
                top_tracks.append(t)
            else:
                oracle_of[i] = t
    tracks = top_tracks + list(oracle_of.values())
    mask_first = [encode_mask(t.pred) for t in top_tracks]

    while True:
        _advance(tracks, gts, ignore, st)
        active = [t for t in tracks if not t.done]
        if not active:
            break
        points = np.array([[[c.x, c.y] for c in t.clicks] for t in active], dtype=np.float32)
        labels = np.array([[int(c.is_positive) for c in t.clicks] for t in active], dtype=np.int64)
        feed = stack_or_none([t.logits[None] if t.logits is not None else None for t in active])
        out = segmenter.predict_batch(points, labels, None, feed if st.feed_logits else None, multimask=False)
        for b, t in enumerate(active):
            t.pred = out.masks[b, 0]
            t.logits = None if out.logits is None else out.logits[b, 0]
            t.ious.append(mask_iou(t.pred, gts[t.obj], ignore))

    records = []
    for i, (inst, top) in enumerate(zip(objs, top_tracks)):
        oracle = oracle_of.get(i, top)
        records.append(
            ObjectRecord(
                image_id=int(sample.image_id),
                annotation_id=int(inst.id),
                file_name=sample.file_name,
                area=float(inst.area),
                top=list(top.ious),
                oracle=list(oracle.ious),
                clicks=[(c.x, c.y, c.is_positive) for c in top.clicks],
                first_scores=[float(s) for s in pred.scores[i]],
                first_ious=first_ious[i],
                mask_first=mask_first[i],
                mask_last=encode_mask(top.pred),
            )
        )
    return records, skipped


def evaluate_points(
    dataset: SegmentationDataset | Sequence[Sample],
    method: Any,
    settings: PointsSettings | None = None,
    limit: int | None = None,
    max_per_image: int | None = None,
    progress: bool = True,
) -> PointsResult:
    """Run the interactive point protocol.

    Args:
        dataset: images with instance annotations (crowd instances become ignore regions).
        method: a :class:`Segmenter`, a ``SamPredictor``, or any official-style predictor.
        settings: protocol knobs (defaults: SAM §D.1).
        limit: evaluate at most this many objects (the first ones, in data set order).
        max_per_image: at most this many (seeded random) objects per image.
        progress: show a tqdm bar over images.
    """
    import time

    from tqdm import tqdm

    start = time.perf_counter()
    st = settings or PointsSettings()
    seg = as_segmenter(method)
    records: list[ObjectRecord] = []
    skipped = images = 0
    chosen = list(select_objects(dataset, limit, max_per_image, st.seed))
    for sample, instances in tqdm(chosen, desc=f"points ({seg.name})", unit="img", disable=not progress):
        seg.set_image(sample.load_image())
        ignore = sample.ignore_mask()
        for s in range(0, len(instances), _OBJECTS_AT_ONCE):  # bounds the memory of full-size masks
            recs, skip = _evaluate_image(seg, sample, instances[s : s + _OBJECTS_AT_ONCE], ignore, st)
            records.extend(recs)
            skipped += skip
        images += 1
    return PointsResult(seg.name, st, records, images, skipped, time.perf_counter() - start)


# --------------------------------------------------------------------------- report


def write_points_report(
    writer: ReportWriter,
    results: Sequence[PointsResult],
    samples: Mapping[int, Sample],
    compare: Sequence[Mapping[str, Any]] = (),
    num_cases: int = 3,
) -> None:
    """Tables, the mIoU-vs-clicks plot (paper Fig. 9c) and best/worst cases into ``writer``."""
    if not results:
        return
    st = results[0].settings
    ks = tuple(k for k in st.miou_clicks if k <= st.max_clicks)
    thr = [f"{round(t * 100):d}" for t in st.noc_thresholds]
    headers = ["method", "mask", "objects", *[f"mIoU@{k}" for k in ks], *[f"NoC@{t}" for t in thr],
               *[f"NoF@{t}" for t in thr]]
    rows: list[list[Any]] = []
    curves: dict[str, tuple[list[int], list[float]]] = {}
    entries = method_entries(results, compare)
    for name, js, tag in entries:
        for track in ("top", "oracle"):
            m = js["metrics"][track]
            rows.append([name + tag, track, m["num_objects"], *[m.get(f"miou@{k}", float("nan")) for k in ks],
                         *[m.get(f"noc@{t}", float("nan")) for t in thr], *[m.get(f"nof@{t}", 0) for t in thr]])
            same = js["curves"]["oracle"] == js["curves"]["top"]
            if track == "top" or not same:
                curves[f"{name}{tag}" + (" oracle" if track == "oracle" else "")] = (
                    js["curves"]["clicks"],
                    js["curves"][track],
                )
    writer.table(
        "Results", headers, rows,
        note=(f"mIoU@k: mean IoU after k clicks; NoC@T: mean clicks to reach IoU T% (at most {st.max_clicks}); "
              f"NoF@T: objects that never reach it. 'top' keeps the mask with the highest predicted IoU at the "
              f"first click, 'oracle' the best of the three against the ground truth. Click mode: {st.click_mode}; "
              f"previous logits fed back: {'yes' if st.feed_logits else 'no'}."),
    )
    marks = [k for k in ks if k <= st.curve_clicks]
    writer.plot("miou_vs_clicks.png", plot_curves(curves, "number of points", "mIoU", "mIoU vs. number of points",
                                                  marks=marks), "mIoU vs. number of points (as in SAM Fig. 9c)")
    pictures = []
    for res in results:
        best, worst = pick_extremes(res.objects, lambda o: o.top[0], num_cases)
        for kind, group in (("best", best), ("worst", worst)):
            for o in group:
                pictures.append(_points_case(res, o, samples[o.image_id], kind))
    writer.cases(f"Best and worst objects by IoU after one click ({num_cases} each)", pictures)


def _points_case(res: PointsResult, o: ObjectRecord, sample: Sample, kind: str) -> tuple[str, np.ndarray, str]:
    inst = next(i for i in sample.annotations if i.id == o.annotation_id)
    gt = inst.mask()
    first, last = decode_rle(o.mask_first), decode_rle(o.mask_last)
    n = len(o.clicks)
    picture = case_picture(sample.load_image(), [
        Panel("ground truth", masks=[gt]),
        Panel(f"1 click: IoU {o.top[0]:.3f}", masks=[first], outline=gt, clicks=o.clicks[:1]),
        Panel(f"{n} clicks: IoU {o.top[-1]:.3f}", masks=[last], outline=gt, clicks=o.clicks),
    ], crop=context_box(inst.bbox, sample.height, sample.width))
    name = f"{res.method}_{kind}_ann{o.annotation_id}".replace("/", "_")
    caption = f"{res.method}, {kind}: {o.file_name}, object {o.annotation_id}, IoU@1 {o.top[0]:.3f}"
    return name, picture, caption
